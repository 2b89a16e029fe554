"""Recipe loading: YAML → typed dataclasses, overrides, env aliases, and clear errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from budgetthinker.config import build, load_config, parse_overrides
from budgetthinker.errors import UserError
from budgetthinker.evaluation.config import EvalConfig

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "configs" / "eval").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_loads(recipe):
    cfg = load_config(EvalConfig, recipe)
    assert cfg.experiment == recipe.stem
    assert all(b > 0 for b in cfg.budgets)


def test_release_recipe_is_the_original_sweep():
    cfg = load_config(EvalConfig, REPO / "configs/eval/math500_release.yaml")
    assert cfg.budgets == [100, 250, 500, 1000, 2000, 4000, 6000, 10000]
    assert cfg.data.benchmarks == ["math500"]
    assert (cfg.sampling.temperature, cfg.sampling.n) == (0.0, 1)


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        EvalConfig,
        REPO / "configs/eval/default.yaml",
        [
            "budgets=[10,20]",
            "sampling.temperature=0.6",
            "sampling.n=4",
            "data.limit=5",
            "backend=vllm",
        ],
    )
    assert cfg.budgets == [10, 20]
    assert cfg.sampling.temperature == 0.6 and cfg.sampling.n == 4
    assert cfg.data.limit == 5 and cfg.backend == "vllm"
    assert load_config(EvalConfig, None, ["budgets=64"]).budgets == [64]


@pytest.mark.parametrize(
    "override,message",
    [
        ("budgte=[1]", "unknown config key 'budgte'"),
        ("sampling.temprature=1", "unknown config key 'sampling.temprature'"),
        ("budgets=[a]", "budgets[0] must be an integer"),
        ("two_stage=maybe", "two_stage must be true or false"),
        ("backend=tpu", "unknown backend=tpu; choose from hf, vllm, openai"),
        ("sampling.n=4", "needs sampling.temperature > 0"),
        ("noequals", "key=value"),
        ("data.limit=0", "limit must be positive"),
    ],
)
def test_bad_overrides_fail_clearly(override, message):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(EvalConfig, None, [override])


def test_unknown_key_in_file(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("experiment: x\nbudgest: [1]\n")
    with pytest.raises(UserError, match=r"unknown config key 'budgest'; known keys: .*budgets"):
        load_config(EvalConfig, recipe)
    with pytest.raises(UserError, match="does not exist"):
        load_config(EvalConfig, tmp_path / "missing.yaml")


def test_env_aliases(monkeypatch):
    monkeypatch.setenv("MODEL_NAME_OR_PATH", "ckpt/model")
    monkeypatch.setenv("DATA_NAME", "math500,aime24")
    monkeypatch.setenv("remaining", "8ratio")
    monkeypatch.setenv("stage", "2")
    cfg = load_config(EvalConfig, None, [], aliases_of="eval")
    assert cfg.model == "ckpt/model"
    assert cfg.data.benchmarks == ["math500", "aime24"]
    assert cfg.methods == ["control"] and cfg.two_stage is True
    # command-line overrides win over env aliases
    assert load_config(EvalConfig, None, ["two_stage=false"], aliases_of="eval").two_stage is False


def test_env_tip_without_forcing(monkeypatch):
    monkeypatch.setenv("remaining", "default")
    monkeypatch.setenv("tip", "prompt_v1")
    assert load_config(EvalConfig, None, [], aliases_of="eval").methods == ["prompt_v1"]
    monkeypatch.setenv("stage", "add")
    with pytest.raises(UserError, match="stage"):
        load_config(EvalConfig, None, [], aliases_of="eval")


def test_parse_overrides_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]", "e=null"]) == {
        "a": {"b": 1, "c": "x"},
        "d": [1, 2],
        "e": None,
    }


def test_build_rejects_non_mapping():
    with pytest.raises(UserError, match="must be a mapping"):
        build(EvalConfig, {"data": [1]})


def test_named_recipes_resolve_from_any_folder(tmp_path, monkeypatch):
    """Names and the documented `configs/<stage>/…` paths find the shipped recipes wherever the
    command runs; a user's own file wins; unknown names list what ships."""
    from budgetthinker.config import recipes_root, resolve_recipe

    monkeypatch.chdir(tmp_path)
    shipped = recipes_root() / "rl" / "cpu_smoke.yaml"
    assert shipped.is_file()
    assert resolve_recipe("rl", "cpu_smoke") == shipped
    assert resolve_recipe("rl", "configs/rl/cpu_smoke.yaml") == shipped
    assert resolve_recipe("sft", "configs/sft/cpu_smoke.yaml").parent == recipes_root() / "sft"
    own = tmp_path / "configs" / "rl" / "cpu_smoke.yaml"
    own.parent.mkdir(parents=True)
    own.write_text("experiment: mine\n")
    assert resolve_recipe("rl", "configs/rl/cpu_smoke.yaml") == Path("configs/rl/cpu_smoke.yaml")
    with pytest.raises(UserError, match="unknown rl recipe 'nope'; shipped recipes: .*cpu_smoke"):
        resolve_recipe("rl", "nope")
    with pytest.raises(UserError, match="rl recipe elsewhere/x.yaml does not exist"):
        resolve_recipe("rl", "elsewhere/x.yaml")


def test_installed_wheel_ships_the_recipes(tmp_path):
    """A non-editable install (the wheel, unpacked) finds its recipes inside the package."""
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = Path(__file__).resolve().parent.parent
    src = tmp_path / "src"
    for name in ("budgetthinker", "configs"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, src / name)
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(tmp_path / "dist"), str(src)], check=True, cwd=src)
    (wheel,) = (tmp_path / "dist").glob("budgetthinker-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "from budgetthinker.rl.config import RECIPE_DIR, resolve_recipe; "
        "print(RECIPE_DIR); print(resolve_recipe('8ratio_v1'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [
        str(site / "budgetthinker" / "configs" / "rl"),
        str(site / "budgetthinker" / "configs" / "rl" / "8ratio_v1.yaml"),
    ]
    assert (site / "budgetthinker" / "configs" / "deepspeed" / "ds_z0_config.json").is_file()
    # every module and data file of the package is in the wheel (the packages list is complete)
    ignore = {"__pycache__"}
    files = {
        p.relative_to(repo).as_posix()
        for p in (repo / "budgetthinker").rglob("*")
        if p.is_file() and not ignore & set(p.parts) and p.suffix in (".py", ".yaml")
    }
    missing = sorted(f for f in files if not (site / f).is_file())
    assert not missing, missing


BOMB = """experiment: bomb
delimiters:
  end: "</think>"
  start:
    - &a ["<think>", "<think>", "<think>", "<think>"]
    - &b [*a, *a, *a, *a]
    - &c [*b, *b, *b, *b]
    - [*c, *c, *c, *c]
"""


def test_a_yaml_alias_bomb_is_refused_in_one_line_and_writes_nothing(tmp_path):
    """Issue #21: 1.3 kB of aliases under `delimiters.start` wrote a 31.9 MB fingerprint. Now
    the recipe is refused before anything runs (the real CLI; nothing is created)."""
    from tests.clirun import cli, one_line, snapshot

    (tmp_path / "bomb.yaml").write_text(BOMB)
    before = snapshot(tmp_path)
    proc = cli("eval", "--config", tmp_path / "bomb.yaml", f"output_dir={tmp_path / 'runs'}")
    one_line(proc, "bomb.yaml uses the YAML alias *a (line 6)", "spell every value out")
    assert snapshot(tmp_path) == before


def test_aliases_are_refused_in_overrides_and_anchors_alone_are_fine():
    with pytest.raises(UserError, match=r"override 'budgets=\[&a 100, \*a\]' uses the YAML alias"):
        parse_overrides(["budgets=[&a 100, *a]"])
    assert parse_overrides(["budgets=[&a 100, 200]"]) == {"budgets": [100, 200]}



@dataclasses.dataclass
class _Inner:
    """Inner block.

    Args:
        depth (`int`): how deep, from the docstring.
    """

    depth: int = 2


@dataclasses.dataclass
class _Outer:
    name: str = "x"  # the name
    # a list, explained above the field
    items: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    late: str | None = None

    def __post_init__(self):
        self.late = self.late or "set later"


def test_recipe_keys_come_from_the_dataclasses_with_their_comments_and_defaults():
    """`recipe_keys` (what `eval --help` and docs/configuration.md list): nested dataclasses as
    dotted keys, defaults as `cls()` has them (`__post_init__` included), the field's comment on
    its line or above it, else its `Args:` entry."""
    from budgetthinker.config import format_default, keys_markdown, recipe_keys

    keys = {k.key: k for k in recipe_keys(_Outer)}
    assert list(keys) == ["name", "items", "inner.depth", "late"]
    assert keys["name"].doc == "the name"
    assert keys["items"].doc == "a list, explained above the field"
    assert keys["inner.depth"].doc == "how deep, from the docstring."
    assert keys["inner.depth"].type == "int"
    assert format_default(keys["items"].default) == "[1, 2]" and keys["late"].default == "set later"
    assert format_default(None) == "null" and format_default(True) == "true"
    table = keys_markdown(_Outer, "budgetthinker.")
    assert "| `budgetthinker.late` | str \\| None | `set later` |  |" in table
