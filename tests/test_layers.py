"""The house rules, checked: imports only run down the layers (import-linter's contracts in
pyproject.toml, deferred imports included), no sibling modules import each other both ways, and
the tests mirror the package (tests/<room>/test_<module>[_<topic>].py for
budgetthinker/<room>/<module>.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "budgetthinker"

# Tests about several rooms at once, named for what they check rather than for one module.
CROSS_CUTTING = {
    "tests/test_cross_engine.py": "transformers and vLLM force the same tokens",
    "tests/test_cross_engine_soft.py": "each engine adapter follows the soft ending",
    "tests/test_faults.py": "kill/crash/resume faults across the stages",
    "tests/test_layers.py": "this file",
    "tests/test_docs.py": "the manual builds and names every module",
    "tests/test_docs_blocks.py": "every block of the README and docs/ runs as written",
    "tests/evaluation/test_conformance.py": "the grader against other projects' cases",
    "tests/evaluation/methods/test_custom_method.py": "the methods package's plugin API",
}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "lint-imports"
    if not exe.is_file():
        pytest.skip("import-linter is not installed (bash scripts/setup_env.sh core)")
    return subprocess.run(
        [str(exe), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(exe.parent)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_imports_only_run_down_the_layers():
    done = lint_imports(REPO)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout
    assert "imports only run down the layers KEPT" in done.stdout
    assert "no import cycles between sibling modules or packages KEPT" in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        # core reaching up into a room, even deferred inside a function
        ("forcing.py", "def _late():\n    import budgetthinker.rl.reward\n", "layers"),
        # a room reaching up (evaluation → sft)
        ("evaluation/metrics.py", "import budgetthinker.sft.loss\n", "layers"),
        # two modules of one room importing each other
        ("evaluation/metrics.py", "import budgetthinker.evaluation.report\n", "cycles"),
    ],
)
def test_the_contracts_catch_a_violation(tmp_path, module, line, contract):
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(PACKAGE, tmp_path / "budgetthinker", ignore=skip)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "budgetthinker" / module
    target.write_text(target.read_text() + "\n" + line)
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout[-3000:]
    name = {
        "layers": "imports only run down the layers BROKEN",
        "cycles": "no import cycles between sibling modules or packages BROKEN",
    }[contract]
    assert name in done.stdout, done.stdout[-3000:]


def _modules(package: Path) -> set[str]:
    names = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    return names | {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}


def test_tests_mirror_the_package():
    strays = []
    for test in sorted((REPO / "tests").rglob("test_*.py")):
        rel = test.relative_to(REPO).as_posix()
        if rel in CROSS_CUTTING:
            continue
        package = PACKAGE / test.parent.relative_to(REPO / "tests")
        stem = test.stem.removeprefix("test_")
        if not package.is_dir():
            strays.append(f"{rel}: no package budgetthinker/{package.relative_to(PACKAGE)}")
        elif not any(stem == m or stem.startswith(m + "_") for m in _modules(package)):
            strays.append(f"{rel}: names no module of {package.relative_to(REPO).as_posix()}")
    assert not strays, "\n".join(strays)


def test_every_room_has_tests():
    rooms = [p for p in PACKAGE.rglob("__init__.py") if p.parent != PACKAGE]
    missing = [
        p.parent.relative_to(REPO).as_posix()
        for p in rooms
        if not (REPO / "tests" / p.parent.relative_to(PACKAGE)).is_dir()
    ]
    assert not missing, missing
