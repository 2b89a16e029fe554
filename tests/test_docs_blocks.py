"""Executable docs: every `bash`/`sh`/`python` block of README.md and docs/ runs as written.

Each such block carries an annotation on the line right above its fence, which this file reads:

    <!-- doc-test: run [slow] [output=exact|table] [append="ARGS"] [timeout=S] -->
        run as written (bash -euo pipefail; python blocks with the venv's python), in a fresh copy
        of the checkout; `output=` compares what it prints with the plain block right after it
        (`exact`: every line; `table`: a Markdown table's header and its rows' first cells);
        `append=` adds ARGS to the block's first command (only where the block as written takes
        longer than CI allows: say so in the prose next to it).
    <!-- doc-test: gpu dry-run="CMD" -->   needs a GPU (or a cluster): CMD, its dry run, runs
                                           (`dry-run=next`: the next block is that dry run)
    <!-- doc-test: long ci="CMD" -->       runs on CPU but longer than CI allows: CMD (the same
                                           steps at smaller sizes, or its dry run) runs
    <!-- doc-test: server url=URL -->      a server: started, polled at URL, then the next
                                           block (annotated `client`) runs against it, then
                                           the server is stopped
    <!-- doc-test: client -->              see `server`
    <!-- doc-test: MODE covered-by=TESTFILE::TEST -->  run (at small sizes) by that test
    <!-- doc-test: ci -->                  the test command itself (this suite): its --help runs

A python block whose first line is `# NAME.py` is also saved as NAME.py in the copy (later
blocks of the page import it). A block without an annotation fails the collection test: every
block is accounted for. Blocks write under runs/ of the copy, never into the checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
RUNNABLE = {"bash", "sh", "python"}
_FENCE = re.compile(r"^```(\w*)\s*$")
_NOTE = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$")
MODES = {"run", "gpu", "long", "server", "client", "covered-by", "ci"}


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    note: str | None  # the annotation's text, None when missing
    output: str | None = None  # the plain block right after it, if any
    options: dict = field(default_factory=dict)

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def mode(self) -> str:
        return self.options.get("mode", "")


def parse_note(text: str) -> dict:
    """`run slow output=exact append="a b"` → {mode: run, slow: True, output: exact, …}."""
    words = shlex.split(text)
    options: dict = {}
    for i, word in enumerate(words):
        key, eq, value = word.partition("=")
        if i == 0:
            options["mode"] = key
            if eq:
                options[key] = value
        else:
            options[key] = value if eq else True
    return options


def blocks_of(page: Path) -> list[Block]:
    """Fenced blocks of a page, with their annotation and the plain block that follows them."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1)
        j = i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        code = "\n".join(lines[start + 1 : j]) + "\n"
        note = _NOTE.match(lines[start - 1]) if start > 0 else None
        block = Block(page, start + 1, lang, code, note.group(1) if note else None)
        if note:
            block.options = parse_note(note.group(1))
        if lang == "" and found and found[-1].lang in RUNNABLE and found[-1].output is None:
            found[-1].output = code  # the plain block after a runnable one: what it printed
        found.append(block)
        i = j + 1
    return found


ALL = [b for page in PAGES for b in blocks_of(page)]
EXECUTABLE = [b for b in ALL if b.lang in RUNNABLE]


def _params(modes: set[str], key: str | None = None) -> list:
    """Blocks of `modes` this file runs itself (with option `key`, if given): not those another
    test covers (`covered-by=`) nor a GPU block whose dry run is the next block (`dry-run=next`)."""

    def selected(b: Block) -> bool:
        if b.mode not in modes or "covered-by" in b.options or b.options.get("dry-run") == "next":
            return False
        return key is None or key in b.options

    marks = lambda b: [pytest.mark.slow] if b.options.get("slow") else []  # noqa: E731
    return [pytest.param(b, id=b.id, marks=marks(b)) for b in EXECUTABLE if selected(b)]


# ── the copy every block runs in ─────────────────────────────────────────────────────────────


@pytest.fixture(scope="module")
def checkout(tmp_path_factory, prepared_model) -> Path:
    """A fresh copy of the checkout (no runs/, no build outputs), its environments linked in, so
    blocks see what a user of a clone sees and write nothing into this checkout. The session's
    prepared embedded model (`prepared_model`) is the one they find in the cache."""
    copy = tmp_path_factory.mktemp("docs") / "BudgetThinker"
    skip = shutil.ignore_patterns(".git", ".venv*", "runs", "site", "__pycache__", "*.egg-info",
                                  ".pytest_cache", ".ruff_cache", ".hypothesis", "models",
                                  "data")  # fmt: skip
    shutil.copytree(REPO, copy, ignore=skip, symlinks=True)
    for env in (".venv", ".venv-sft", ".venv-rl"):
        if (REPO / env).exists():
            (copy / env).symlink_to((REPO / env).resolve())
    return copy


def block_env(copy: Path) -> dict:
    env = dict(os.environ)
    env.update(
        BUDGETTHINKER_ENV_FROZEN="1",  # the linked environments are never reinstalled from here
        PYTHONPATH=str(copy),  # the copy's package, whichever checkout the venv was installed from
        HOME=os.environ.get("HOME", "/root"),
        TRANSFORMERS_VERBOSITY="error",
        VLLM_LOGGING_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    for key in ("PYTEST_CURRENT_TEST", "COV_CORE_SOURCE"):
        env.pop(key, None)
    return env


def with_append(code: str, extra: str | None) -> str:
    if not extra:
        return code
    lines = code.splitlines()
    for i, line in enumerate(lines):
        if line.strip() and not line.lstrip().startswith(("#", "source ", "export ")):
            head, sep, comment = line.partition("  #")
            lines[i] = f"{head.rstrip()} {extra}" + (f"  #{comment}" if sep else "")
            break
    return "\n".join(lines) + "\n"


def run_code(block: Block, copy: Path, code: str | None = None, timeout: float | None = None):
    """Run a block's code (or `code`) in the copy; return the finished process."""
    code = code if code is not None else with_append(block.code, block.options.get("append"))
    timeout = timeout or float(block.options.get("timeout", 1800))  # a hang guard, not a timing
    if block.lang == "python":
        first = code.splitlines()[0] if code.strip() else ""
        m = re.match(r"#\s*(\w+\.py)\s*$", first)
        script = copy / (m.group(1) if m else f"_doc_block_{block.line}.py")
        script.write_text(code)
        argv = [str(copy / ".venv" / "bin" / "python") if (copy / ".venv").exists()
                else sys.executable, str(script)]  # fmt: skip
    else:
        argv = ["bash", "-euo", "pipefail", "-c", code]
    return subprocess.run(argv, cwd=copy, env=block_env(copy), capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def check_ok(block: Block, done: subprocess.CompletedProcess, what: str = "") -> None:
    assert done.returncode == 0, (
        f"{block.id}{what} failed (exit {done.returncode}):\n--- stdout\n{done.stdout[-3000:]}"
        f"\n--- stderr\n{done.stderr[-3000:]}"
    )


def prerequisites(block: Block, copy: Path) -> None:
    """The `# NAME.py` files of the page above this block (a later block imports them)."""
    for other in EXECUTABLE:
        if other.page == block.page and other.line < block.line and other.lang == "python":
            m = re.match(r"#\s*(\w+\.py)\s*$", other.code.splitlines()[0])
            if m:
                (copy / m.group(1)).write_text(other.code)


def normalised(text: str) -> list[str]:
    home = os.path.expanduser("~")
    lines = [line.replace(home, "~").rstrip() for line in text.strip("\n").splitlines()]
    return [line for line in lines if line]


def compare_output(block: Block, printed: str) -> None:
    kind = block.options.get("output")
    if not kind:
        return
    assert block.output is not None, f"{block.id}: output={kind} but no plain block follows it"
    shown = normalised(block.output)
    got = normalised(printed)
    if kind == "exact":
        missing = [line for line in shown if line not in got]
        assert not missing, f"{block.id}: the docs show lines it did not print: {missing}\n" + (
            "\n".join(got[-60:])
        )
        rest = iter(got)  # the shown lines, in order, within what it printed
        assert all(any(line == g for g in rest) for line in shown), f"{block.id}: other order"
    elif kind == "table":
        headers = [line for line in shown if line.startswith("| ") and "---" not in line]
        for header in [h for h in headers if h.split("|")[1].strip() in ("method", "sweep")]:
            assert header in got, f"{block.id}: table header not printed: {header}"
        for row in [h for h in headers if h not in got]:
            if row.split("|")[1].strip() in ("method", "sweep"):
                continue
            key = "|".join(row.split("|")[:2]) + "|"  # its first cell: method, or sweep
            assert any(g.startswith(key) for g in got), f"{block.id}: no row {key!r} printed"
    else:
        raise AssertionError(f"{block.id}: unknown output={kind}")


# ── the tests ────────────────────────────────────────────────────────────────────────────────


def test_every_block_is_accounted_for():
    """Every runnable block has an annotation with a known mode; no page is without its runs."""
    assert len(EXECUTABLE) > 30, "almost no blocks found: has the fence format changed?"
    missing = [b.id for b in EXECUTABLE if b.note is None]
    assert not missing, f"blocks without a <!-- doc-test: … --> line above them: {missing}"
    unknown = [f"{b.id}: {b.mode}" for b in EXECUTABLE if b.mode not in MODES]
    assert not unknown, f"unknown doc-test modes: {unknown} (known: {sorted(MODES)})"
    for b in EXECUTABLE:
        if b.mode in ("gpu", "long"):
            how = {"dry-run", "ci", "covered-by"} & set(b.options)
            assert how, f"{b.id}: a {b.mode} block names its dry-run=CMD, ci=CMD or covered-by="
        if b.options.get("dry-run") == "next":
            after = EXECUTABLE[EXECUTABLE.index(b) + 1]
            assert after.page == b.page and after.mode == "run" and "--dry-run" in after.code, (
                f"{b.id}: dry-run=next, but the next block is not a run of --dry-run"
            )
        if b.mode == "server":
            after = EXECUTABLE[EXECUTABLE.index(b) + 1]
            assert after.page == b.page and after.mode == "client", f"{b.id}: no client block"


def test_examples_never_share_an_experiment():
    """Each example writes its own `experiment=`/run folder; only the quick start uses
    `default`, so examples never resume into (or refuse because of) the quick start's results."""
    seen: dict[str, str] = {}
    for b in EXECUTABLE:
        if b.mode not in ("run", "long"):
            continue
        code = b.code + str(b.options.get("dry-run", ""))
        if "budgetthinker eval" not in code and "Eval.sh" not in code:
            continue
        names = re.findall(r"\bexperiment=([\w.-]+)", code) or ["default"]
        for name in set(names):
            assert name not in seen or (name == "default" and b.page.name == "README.md"), (
                f"{b.id} and {seen.get(name)} both write experiment={name}"
            )
            seen[name] = b.id
    assert seen.get("default", "README.md").startswith("README.md"), seen


def test_blocks_say_which_environment_they_need():
    """A block that calls `budgetthinker` (or `python …`) outside a launcher says where it comes
    from: `source .venv/bin/activate` in the block, or the venv's prefix on the command."""
    for b in EXECUTABLE:
        if b.lang == "python" or b.mode in ("ci", "covered-by", "client"):
            continue
        for line in b.code.splitlines():
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            bare = words[0] in ("budgetthinker", "python", "mkdocs")
            if bare or words[:2] == ["PYTHONPATH=.", "budgetthinker"]:
                assert "source .venv" in b.code, (
                    f"{b.id}: `{line.strip()}` needs `source .venv/bin/activate` (or .venv/bin/…)"
                )


@pytest.mark.parametrize("block", _params({"run"}))
def test_block_runs(block, checkout):
    prerequisites(block, checkout)
    done = run_code(block, checkout)
    check_ok(block, done)
    compare_output(block, done.stdout)


@pytest.mark.parametrize("block", _params({"gpu", "long"}))
def test_gpu_and_long_blocks_dry_run(block, checkout):
    """GPU-only blocks: their dry run; CPU blocks too long for CI: their `ci=` version (smaller
    sizes, or the dry run), as the annotation names it."""
    command = block.options.get("dry-run") or block.options["ci"]
    done = run_code(block, checkout, code=f"source .venv/bin/activate\n{command}\n")
    check_ok(block, done, " (its dry run)" if "dry-run" in block.options else " (its ci= run)")


@pytest.mark.parametrize("block", _params({"server"}))
def test_server_and_client(block, checkout):
    client = EXECUTABLE[EXECUTABLE.index(block) + 1]
    url = block.options["url"]
    log = open(checkout / f"_server_{block.line}.log", "w")  # noqa: SIM115
    server = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block.code], cwd=checkout,
                              env=block_env(checkout), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + float(block.options.get("timeout", 600))
        while True:
            assert server.poll() is None, f"{block.id}: the server exited:\n" + Path(
                log.name
            ).read_text()[-3000:]
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, f"{block.id}: {url} never answered"
                time.sleep(2)
        done = run_code(client, checkout)
        check_ok(client, done)
        compare_output(client, done.stdout)
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()


COVERED = [pytest.param(b, id=b.id) for b in EXECUTABLE if "covered-by" in b.options]


@pytest.mark.parametrize("block", COVERED)
def test_covered_blocks_name_a_real_test(block):
    """A block another test already runs (with small sizes) names that test, which exists."""
    target = block.options["covered-by"]
    path, _, name = target.partition("::")
    assert (REPO / path).is_file(), f"{block.id}: no test file {path}"
    text = (REPO / path).read_text()
    assert re.search(rf"^def {re.escape(name)}\(", text, re.M), f"{block.id}: no test {target}"


@pytest.mark.parametrize("block", _params({"ci"}))
def test_ci_block_parses_its_help(block, checkout):
    done = run_code(block, checkout, code="bash scripts/test.sh --help\n", timeout=60)
    check_ok(block, done, " (--help)")
    assert "bash scripts/test.sh" in done.stdout
