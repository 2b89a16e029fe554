"""The manual: it builds with `mkdocs build --strict` (no broken link, no page missing from the
nav), docs/layout.md names every module and script (and only paths that exist), the README stays a
front door that points to docs/, and every section of the specification that the code cites
exists in docs/spec.md."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
LAYOUT = DOCS / "layout.md"
SPEC = DOCS / "spec.md"
README = REPO / "README.md"
README_MAX_LINES = 260

# Top-level folders and files whose paths docs/layout.md may name (as inline code).
ROOTS = ("budgetthinker", "scripts", "configs", "tests", "docs", ".ci")
ROOTS += ("preparation", "sft", "rl", "evaluation")  # the original launchers' folders
TOP_FILES = ("pyproject.toml", "mkdocs.yml", "README.md")

_CODE_SPAN = re.compile(r"`([^`\n]+)`")
# "docs/spec.md §2", "docs/spec.md §5.3", "docs/spec.md §7.4" (and a named section such as
# "docs/spec.md §CTS"; the older spelling "SPEC §2" is accepted too).
_CITATION = re.compile(r"(?:\bSPEC|docs/spec\.md) §(\d+(?:\.\d+)*|[A-Za-z][\w-]*)")
_HEADING_NUMBER = re.compile(r"^#{1,6}\s+§(\d+(?:\.\d+)*)\b(.*)$")


def layout_paths(text: str) -> set[str]:
    """Repository paths named in inline code: `budgetthinker/forcing.py`, `configs/eval/`, …"""
    paths = set()
    for span in _CODE_SPAN.findall(text):
        span = span.strip()
        if " " in span or any(c in span for c in "<>*{}[]…$="):
            continue  # a command, a pattern or a placeholder, not a path
        if span in TOP_FILES or ("/" in span and span.split("/", 1)[0] in ROOTS):
            paths.add(span.rstrip("/"))
    return paths


def spec_sections(text: str) -> tuple[set[str], list[str]]:
    """Section numbers of docs/spec.md's headings (`## §5 …`, `### §5.3 …`) and their titles."""
    numbers, titles = set(), []
    for line in text.splitlines():
        if m := _HEADING_NUMBER.match(line):
            numbers.add(m.group(1))
            titles.append(m.group(2))
    return numbers, titles


def spec_citations() -> dict[str, list[str]]:
    """Every cited section → where it is cited (`file:line`), over budgetthinker/, tests/,
    scripts/ (this file excepted: its patterns would cite themselves)."""
    cited: dict[str, list[str]] = {}
    for root in ("budgetthinker", "tests", "scripts"):
        for path in sorted((REPO / root).rglob("*")):
            if not path.is_file() or path.suffix not in {".py", ".sh", ".yaml", ".md"}:
                continue
            if path.resolve() == Path(__file__).resolve():
                continue
            for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for section in _CITATION.findall(line):
                    cited.setdefault(section, []).append(f"{path.relative_to(REPO)}:{i}")
    return cited


def test_mkdocs_build_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (bash scripts/setup_env.sh core)")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def test_layout_paths_exist():
    listed = layout_paths(LAYOUT.read_text())
    assert len(listed) > 50, "docs/layout.md lists (almost) no paths: is the table format intact?"
    missing = sorted(p for p in listed if not (REPO / p).exists())
    assert not missing, f"docs/layout.md names paths that do not exist: {missing}"


def test_layout_lists_every_module_and_script():
    listed = layout_paths(LAYOUT.read_text())
    modules = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "budgetthinker").rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    scripts = {
        p.relative_to(REPO).as_posix()
        for p in (REPO / "scripts").iterdir()
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert modules and scripts
    missing = sorted((modules | scripts) - listed)
    assert not missing, f"docs/layout.md does not list: {missing} (one line each)"


def test_readme_is_a_front_door():
    text = README.read_text()
    n = len(text.splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): move the details to docs/"
    )
    assert "](docs/" in text, "README.md must link to the manual in docs/"
    assert "bash scripts/test.sh" in text  # the test command CI runs (.ci/run)


def test_spec_citations_resolve():
    numbers, titles = spec_sections(SPEC.read_text())
    assert {str(n) for n in range(1, 8)} <= numbers, "docs/spec.md must keep sections §1–§7"
    cited = spec_citations()
    assert cited, "no 'docs/spec.md §…' citation found: has the pattern changed?"

    def resolves(section: str) -> bool:
        if section[0].isdigit():
            return section in numbers
        # a named section ("docs/spec.md §CTS") resolves to the numbered heading of that name
        return any(re.search(rf"\b{re.escape(section)}\b", title) for title in titles)

    unresolved = {section: where for section, where in cited.items() if not resolves(section)}
    assert not unresolved, f"cited sections missing from docs/spec.md: {unresolved}"


def test_configuration_reference_is_up_to_date():
    """docs/configuration.md's key tables are generated from the recipe dataclasses
    (scripts/config_reference.py): a key added, removed or changed in a dataclass fails here
    until the page is regenerated."""
    import os

    run = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "config_reference.py"), "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + " — run: python scripts/config_reference.py"
    text = (DOCS / "configuration.md").read_text()
    assert "| `sampling.temperature` | float | `0.0` | 0 = greedy |" in text
    assert "| `budgetthinker.special_token_loss` | str | `T` |" in text  # the SFT block
