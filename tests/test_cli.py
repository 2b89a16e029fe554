"""The command line: real runs on the embedded model, and one clear error per user mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from budgetthinker.cli import main
from tests.conftest import LONG_PROMPTS, REPO


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    "budget,needle",
    [
        ("0", "positive"),
        ("-5", "positive"),
        ("abc", "integer"),
        ("1.5", "integer"),
        ("4", "at least 8"),
    ],
)
def test_bad_budget(capsys, prepared_model, budget, needle):
    code, out, err = run_cli(
        capsys, "generate", "--model", str(prepared_model), "--prompt", "x", "--budget", budget
    )
    assert_one_line_error(code, err, needle)
    assert out == ""


def test_model_without_spec(capsys, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    code, _, err = run_cli(
        capsys, "generate", "--model", str(tmp_path), "--prompt", "x", "--budget", "64"
    )
    assert_one_line_error(code, err, "no control-token spec", "budgetthinker prepare")


def test_unknown_mode_writes_nothing(capsys, tmp_path):
    code, _, err = run_cli(
        capsys, "prepare", "--base", "default", "--mode", "9x", "--out", str(tmp_path / "m")
    )
    assert_one_line_error(code, err, "unknown mode")
    assert not (tmp_path / "m").exists()


def test_vllm_missing(capsys, prepared_model, monkeypatch):
    # A None entry in sys.modules makes `vllm` unimportable, as in an environment without it.
    monkeypatch.setitem(sys.modules, "vllm", None)
    code, _, err = run_cli(
        capsys,
        "generate",
        "--model",
        str(prepared_model),
        "--prompt",
        "x",
        "--budget",
        "64",
        "--backend",
        "vllm",
    )
    assert_one_line_error(code, err, "vLLM", "--backend hf")


def test_error_from_console_script_has_no_traceback(prepared_model):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "budgetthinker.cli",
            "generate",
            "--model",
            str(prepared_model),
            "--prompt",
            "x",
            "--budget",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("budgetthinker generate: error:")
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_generate_json_shows_forced_control_tokens(capsys, prepared_model, spec):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--model",
        str(prepared_model),
        "--prompt",
        LONG_PROMPTS[0],
        "--budget",
        "64",
        "--max-new-tokens",
        "60",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    delta = 64 // 8 + 1
    ids = result["output_token_ids"]
    assert result["control_positions"], (
        "nothing was forced: the test prompt must produce longer output"
    )
    for index, string in result["control_positions"]:
        assert ids[index] == spec.token_ids[spec.token_strings.index(string)]
    expected = [k * delta + k - 1 for k in range(1, 8) if k * delta + k - 1 < len(ids)]
    if result["finished_thinking"]:
        expected = [p for p in expected if p < result["thinking_tokens"]]
    assert [p for p, _ in result["control_positions"]] == expected
    assert result["control_positions"][0][1] == "\n<remaining>7/8</remaining>\n"
    assert "<remaining>7/8</remaining>" in result["text"]
    assert len(ids) <= 60


@pytest.mark.slow
def test_generate_two_stage_forces_suffix(capsys, prepared_model, spec):
    code, out, _ = run_cli(
        capsys,
        "generate",
        "--model",
        str(prepared_model),
        "--prompt",
        LONG_PROMPTS[0],
        "--budget",
        "16",
        "--two-stage",
        "--max-new-tokens",
        "40",
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    ids = result["output_token_ids"]
    # Greedy and deterministic: the untrained model never closes thinking by itself here.
    assert not result["finished_thinking"] and len(ids) > 16
    suffix = list(spec.suffix_ids["eval"])
    assert ids[16 : 16 + len(suffix)] == suffix
    assert result["suffix_forced"] is True
    assert "</think>\n\n**Final Answer**\\boxed" in result["text"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--top-p", "5"], "--top-p must be in (0, 1]"),
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--budget", "9000"], "exceed the model's context length 8192"),
        (["--max-new-tokens", "9000"], "exceed the model's context length 8192"),
    ],
)
def test_generate_values_out_of_range(capsys, prepared_model, extra, needle):
    argv = ["generate", "--model", str(prepared_model), "--prompt", "x", "--budget", "64"]
    code, out, err = run_cli(capsys, *argv, *extra)
    assert_one_line_error(code, err, needle)
    assert out == ""


@pytest.mark.parametrize(
    "override,needle",
    [
        ("chunk_size=0", "chunk_size must be a positive integer"),
        ("batch_size=-1", "batch_size must be a positive integer"),
        ("max_new_tokens=0", "max_new_tokens must be a positive integer"),
        ("sampling.temperature=-1", "sampling.temperature must be >= 0"),
        ("sampling.top_p=5", "sampling.top_p must be in (0, 1]"),
        ("budgets=[64,9000]", "budget 9000: 9180 new tokens = 9180 tokens exceed"),
        ("experiment=..", "experiment must be a plain folder name"),
        ("grading.timeout=-1", "grading.timeout must be a positive number of seconds"),
        ("grading.workers=-2", "grading.workers must be >= 0"),
    ],
)
def test_eval_values_out_of_range_write_nothing(capsys, tmp_path, override, needle):
    recipe = str(REPO / "configs" / "eval" / "default.yaml")
    runs = tmp_path / "runs"
    code, _, err = run_cli(capsys, "eval", "--config", recipe, f"output_dir={runs}", override)
    assert_one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_is_one_line_and_exit_130(capsys, monkeypatch):
    import budgetthinker.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    add_args, _, help_text = cli.COMMANDS["grade"]
    monkeypatch.setitem(cli.COMMANDS, "grade", (add_args, interrupted, help_text))
    code, out, err = run_cli(capsys, "grade", "1", "1")
    assert code == 130 and out == ""
    assert err.strip() == "budgetthinker grade: interrupted; rerun the same command to resume"


def test_negative_noise_is_refused(capsys, tmp_path):
    out = tmp_path / "m"
    code, _, err = run_cli(
        capsys, "prepare", "--base", "default", "--noise", "-1", "--out", str(out)
    )
    assert_one_line_error(code, err, "--noise must be >= 0")
    assert not out.exists()


# ── help, version, dry runs (issue #26) ──────────────────────────────────────────────────────


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("budgetthinker ")


@pytest.mark.parametrize("command", sorted(__import__("budgetthinker.cli").cli.COMMANDS))
def test_every_help_shows_the_defaults(capsys, command):
    from budgetthinker.cli import build_parser

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    for action in sub._actions:
        if not action.option_strings or action.default in (None, False, "==SUPPRESS=="):
            continue
        if action.default is True or "--help" in action.option_strings:
            continue
        shown = str(action.default)
        if "default" in (action.help or "").lower():  # the help text words it itself
            continue
        assert shown in out, f"{command} --help does not show {action.dest}'s default {shown!r}"


def test_eval_help_lists_every_recipe_key_with_its_default(capsys):
    from budgetthinker.config import format_default, recipe_keys
    from budgetthinker.evaluation.config import EvalConfig

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    keys = recipe_keys(EvalConfig)
    assert len(keys) > 30
    for key in keys:
        assert f"  {key.key}={format_default(key.default)}" in out, key.key
    assert "  sampling.temperature=0.0\n      0 = greedy" in out  # the field's own comment


def test_eval_dry_run_checks_and_writes_nothing(tmp_path, capsys, prepared_model):
    out_dir = tmp_path / "runs"
    code, out, err = run_cli(capsys, "eval", "--dry-run", f"output_dir={out_dir}",
                             "experiment=dry", "budgets=[32,64]", "data.synthetic.n=3")  # fmt: skip
    assert code == 0, err
    assert "dry run: dry: 18 samples (3 problems × 3 methods" in out and "nothing written" in out
    assert not out_dir.exists()
    # a GPU recipe on this CPU machine: checked, not refused for the missing GPUs
    release = str(REPO / "configs" / "eval" / "math500_release.yaml")
    code, out, err = run_cli(capsys, "eval", "--dry-run", "--config", release,
                             f"output_dir={out_dir}", "backend=vllm", "budgets=[100]",
                             "engine.tensor_parallel_size=8",
                             "data.benchmarks=[synthetic]")  # fmt: skip
    assert code == 0, err
    assert not out_dir.exists()
    # a mistake is still the one-line error
    code, _, err = run_cli(capsys, "eval", "--dry-run", f"output_dir={out_dir}", "budgets=[4]")
    assert_one_line_error(code, err, "at least 8")
    assert not out_dir.exists()


LAUNCHERS = ["evaluation/Eval.sh", "sft/train.sh", "rl/8ratio_v1.sh", "scripts/demo.sh",
             "scripts/test.sh", "scripts/experiment_cpu.sh", "scripts/release_pipeline.sh",
             "scripts/setup_env.sh"]  # fmt: skip


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launchers_read_help_before_any_setup(tmp_path, launcher):
    """`--help` prints the launcher's usage and exits 0 before any environment is set up: in a
    copy of the launcher without any venv or pip next to it, nothing is created."""
    copy = tmp_path / "repo"
    (copy / Path(launcher).parent).mkdir(parents=True)
    (copy / "scripts").mkdir(exist_ok=True)
    for name in (launcher, "scripts/setup_env.sh"):
        (copy / name).write_text((REPO / name).read_text())
    env = {"PATH": "/usr/bin:/bin", "PYTHON": "/nonexistent/python3"}  # no pip reachable
    for flag in ("--help", "-h"):
        done = subprocess.run(["bash", str(copy / launcher), flag], capture_output=True, text=True,
                              env=env, timeout=60, cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "bash " in done.stdout and "[setup_env]" not in done.stdout + done.stderr
    assert sorted(p.name for p in copy.iterdir()) == sorted({Path(launcher).parts[0], "scripts"})
