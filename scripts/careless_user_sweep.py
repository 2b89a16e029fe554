"""Careless-user sweep (issues #15 and #21): bad inputs and faults on the real CLI, classified
OK/weak/bad.

Usage: .venv/bin/python scripts/careless_user_sweep.py [COMMAND …]   (SWEEP_NAMES=a|b filters
cases by name). Each case runs in a fresh temp folder; about 15-35 minutes on 2 CPU cores.
Issue #21's cases (the OpenAI-compatible server, a faulty remote endpoint, kills, a nearly full
disk, hostile recipes and model folders) are custom checks at the end: a `serve` shared by the
HTTP cases, a faulty server (tests/patches/fake_openai.py) for `backend=openai`. Issue #21's
run: 118 cases (78 of #15, 40 new); before its fixes 80 OK / 8 weak / 30 bad (all 78 old ones
OK), after 118 OK.

OK: as promised (exit 2 + one stderr line naming the fix, nothing written / state intact; or a
successful run where the input is valid). weak: refused but not as promised (several lines,
another exit status, vague). bad: traceback, data lost, or a write outside the output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from budgetthinker.preparation.models import default_prepared_dir

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
RECIPE = str(REPO / "configs/eval/default.yaml")
TINY = ["methods=[control]", "budgets=[16]", "data.synthetic.n=2", "grading.workers=1"]
PREPARED = default_prepared_dir("8ratio")


def snap(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def run(argv, cwd, env=None, timeout=900, limit=None):
    """One CLI run; `limit`: a file-size limit in bytes (`ulimit -f`) for it."""

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [PY, "-m", "budgetthinker.cli", *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        preexec_fn=preexec if limit else None,
    )


CASES = []


def case(cmd, name, argv, expect="error", setup=None, needle=None, env=None, state="same",
         limit=None, check=None):  # fmt: skip
    """A case: `argv` on the CLI, judged by the rules above; or `check(folder)` → (verdict,
    note), a custom judge for what one command line cannot show (HTTP, signals, two runs)."""
    CASES.append(
        dict(
            cmd=cmd,
            name=name,
            argv=argv,
            expect=expect,
            setup=setup,
            needle=needle,
            env=env,
            state=state,
            limit=limit,
            check=check,
        )
    )


def bad_config(d):
    (d / "base").mkdir()
    (d / "base/config.json").write_text('{"model_type": ')


def nonempty_out(d):
    (d / "out").mkdir()
    (d / "out/mine.txt").write_text("keep")


def nospec_model(d):
    (d / "m").mkdir()
    (d / "m/config.json").write_text("{}")


def fake_vllm(d):
    (d / "site/vllm").mkdir(parents=True)
    (d / "site/vllm/__init__.py").write_text("raise ImportError('libcudart.so.12: missing')\n")


def user_file_next_to_runs(d):
    (d / "config.yaml").write_text("mine: keep\n")


def empty_data(d):
    (d / "data").mkdir()
    (d / "data/test.jsonl").write_text("")


def badjson_data(d):
    (d / "data").mkdir()
    (d / "data/test.jsonl").write_text('{"problem": "1+1", "answer": "2"}\n{oops\n')


def latin1_data(d):
    (d / "data").mkdir()
    (d / "data/test.jsonl").write_bytes(b'{"problem": "caf\xe9", "answer": "2"}\n')


def traces_file(d, extra=b""):
    subprocess.run(
        [PY, "-m", "budgetthinker.cli", "sft-traces", "--out", str(d / "t.jsonl"), "--n", "4"],
        check=True,
        capture_output=True,
    )
    (d / "t.jsonl").write_bytes((d / "t.jsonl").read_bytes() + extra)


def good_dataset(d):
    subprocess.run(
        [
            PY,
            "-m",
            "budgetthinker.cli",
            "sft-data",
            "--model",
            "default",
            "--traces",
            "synthetic",
            "--out",
            str(d / "ds"),
        ],
        check=True,
        capture_output=True,
    )
    traces_file(d)


def bad_info(d):
    (d / "ds").mkdir()
    (d / "ds/dataset_info.json").write_text("{broken")
    traces_file(d)


def finished_eval(d, damage=None):
    p = run(["eval", "--config", RECIPE, "output_dir=runs", "experiment=e", *TINY], d)
    assert p.returncode == 0, p.stderr
    if damage:
        damage(d / "runs/e")


def corrupt_middle(e):
    lines = (e / "samples.jsonl").read_bytes().splitlines(keepends=True)
    (e / "samples.jsonl").write_bytes(lines[0] + b"{garbage\n" + b"".join(lines[1:]))


def corrupt_fingerprint(e):
    (e / "fingerprint.json").write_text("{")


def stale_tmp(d):
    (d / f".t.jsonl.tmp-{dead_pid()}-x").write_text("left over")


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


RO = "/sys/fs/bt-sweep/out"  # unwritable even for root
E = ["eval", "--config", RECIPE, "output_dir=runs"]
G = ["generate", "--prompt", "2+2?"]

# prepare
case("prepare", "unknown mode", ["prepare", "--base", "default", "--mode", "9x", "--out", "o"])
case("prepare", "base missing", ["prepare", "--base", "nope", "--out", "o"])
case(
    "prepare",
    "base config.json not JSON",
    ["prepare", "--base", "base", "--out", "o"],
    setup=bad_config,
)
case(
    "prepare",
    "out is a non-empty folder",
    ["prepare", "--base", "default", "--out", "out"],
    setup=nonempty_out,
)
case("prepare", "out not writable", ["prepare", "--base", "default", "--out", RO])
case(
    "prepare",
    "out prepared with another mode",
    ["prepare", "--base", "default", "--mode", "4ratio", "--out", str(PREPARED)],
    state="any",
)
case(
    "prepare",
    "base prepared with another mode",
    ["prepare", "--base", str(PREPARED), "--mode", "4ratio", "--out", "o"],
)
case("prepare", "negative --noise", ["prepare", "--base", "default", "--noise", "-1", "--out", "o"])
# generate
for b in ("0", "-5", "abc", "1.5", "4", "9000"):
    case("generate", f"--budget {b}", [*G, "--budget", b])
case("generate", "--max-new-tokens 0", [*G, "--budget", "64", "--max-new-tokens", "0"])
case("generate", "--max-new-tokens -3", [*G, "--budget", "64", "--max-new-tokens", "-3"])
case("generate", "--temperature -1", [*G, "--budget", "64", "--temperature", "-1"])
case("generate", "--top-p 5", [*G, "--budget", "64", "--top-p", "5"])
case("generate", "--top-p 0", [*G, "--budget", "64", "--top-p", "0"])
case("generate", "model missing", [*G, "--budget", "64", "--model", "nope"])
case("generate", "model without spec", [*G, "--budget", "64", "--model", "m"], setup=nospec_model)
case(
    "generate",
    "model config.json not JSON",
    [*G, "--budget", "64", "--model", "base"],
    setup=bad_config,
)
case(
    "generate",
    "vLLM present but broken",
    [*G, "--budget", "64", "--backend", "vllm"],
    setup=fake_vllm,
    env={"PYTHONPATH": "site"},
)
# eval: names and values
for name in ("..", ".", "a/b", ".hidden", ""):
    case(
        "eval",
        f"experiment={name!r}",
        [*E, f"experiment={name}", *TINY],
        setup=user_file_next_to_runs,
    )
for o in (
    "budgets=[]",
    "budgets=[0]",
    "budgets=[abc]",
    "budgets=[9000]",
    "chunk_size=0",
    "batch_size=0",
    "max_new_tokens=0",
    "sampling.temperature=-1",
    "sampling.top_p=5",
    "sampling.n=0",
    "data.limit=0",
    "backend=foo",
    "nokey=1",
    "grading.workers=-1",
    "grading.timeout=-1",
    "methods=[nope]",
    "model=nope",
    "sampling.n=2",
):
    case("eval", o, [*E, "experiment=x", *TINY, o])
# valid, if unusual: synthetic problems 1000.. exist; 0 grader workers = grade in-process
for o in ("data.offset=1000", "grading.workers=0"):
    case("eval", o + " (valid)", [*E, "experiment=x", *TINY, o], expect="ok", state="any")
case("eval", "--config missing", ["eval", "--config", "nope.yaml"])
case(
    "eval",
    "model config.json not JSON",
    [*E, "experiment=x", *TINY, "model=base"],
    setup=bad_config,
)
case("eval", "output_dir not writable", ["eval", "--config", RECIPE, f"output_dir={RO}", *TINY])
case("eval", "missing local data file", [*E, *TINY, "data.benchmarks=[data/none.jsonl]"])
case("eval", "empty data file", [*E, *TINY, "data.benchmarks=[data/test.jsonl]"], setup=empty_data)
case(
    "eval",
    "data file with a bad JSON line",
    [*E, *TINY, "data.benchmarks=[data/test.jsonl]"],
    setup=badjson_data,
)
case(
    "eval",
    "data file not UTF-8",
    [*E, *TINY, "data.benchmarks=[data/test.jsonl]"],
    setup=latin1_data,
)
case(
    "eval",
    "corrupt line in the middle of samples.jsonl",
    [*E, "experiment=e", *TINY],
    setup=lambda d: finished_eval(d, corrupt_middle),
)
case(
    "eval",
    "fingerprint.json damaged",
    [*E, "experiment=e", *TINY],
    setup=lambda d: finished_eval(d, corrupt_fingerprint),
)
case(
    "eval",
    "changed settings, same experiment",
    [*E, "experiment=e", *TINY, "max_new_tokens=8"],
    setup=finished_eval,
)
# grade
case("grade", "--timeout 0", ["grade", "1", "1", "--timeout", "0"])
case("grade", "--timeout -1", ["grade", "1", "1", "--timeout", "-1"])
# sft-traces
case("sft-traces", "--n 0", ["sft-traces", "--out", "t.jsonl", "--n", "0"])
case("sft-traces", "--checks abc", ["sft-traces", "--out", "t.jsonl", "--checks", "abc"])
case("sft-traces", "out not writable", ["sft-traces", "--out", RO + "/t.jsonl"])
case("sft-traces", "out is a folder", ["sft-traces", "--out", "out"], setup=nonempty_out)
case(
    "sft-traces",
    "stale temp file of a killed run",
    ["sft-traces", "--out", "t.jsonl"],
    expect="ok",
    setup=stale_tmp,
    state="no-hidden",
)
# sft-data
SD = ["sft-data", "--model", "default"]
case("sft-data", "traces missing", [*SD, "--traces", "nope.jsonl", "--out", "ds"])
case(
    "sft-data",
    "all rows bad into a good dataset",
    [*SD, "--traces", "t.jsonl", "--out", "ds", "--max-thinking", "3"],
    setup=good_dataset,
    needle="--max-thinking",
)
case(
    "sft-data",
    "no row kept, fresh folder",
    [*SD, "--traces", "t.jsonl", "--out", "new", "--max-thinking", "3"],
    setup=traces_file,
)
case(
    "sft-data",
    "non-UTF-8 row",
    [*SD, "--traces", "t.jsonl", "--out", "ds"],
    expect="ok",
    setup=lambda d: traces_file(d, b'{"question": "caf\xe9"}\n'),
    needle="bad_encoding",
    state="any",
)
case(
    "sft-data",
    "--max-thinking 0",
    [*SD, "--traces", "synthetic", "--out", "ds", "--max-thinking", "0"],
)
case(
    "sft-data", "--batch-size 0", [*SD, "--traces", "synthetic", "--out", "ds", "--batch-size", "0"]
)
case("sft-data", "--name ../x", [*SD, "--traces", "synthetic", "--out", "ds", "--name", "../x"])
case("sft-data", "out not writable", [*SD, "--traces", "synthetic", "--out", RO])
case(
    "sft-data",
    "dataset_info.json damaged",
    [*SD, "--traces", "t.jsonl", "--out", "ds"],
    setup=bad_info,
)
case(
    "sft-data",
    "model without spec",
    ["sft-data", "--model", "m", "--traces", "synthetic", "--out", "ds"],
    setup=nospec_model,
)
# rl
case("rl", "unknown recipe", ["rl", "--config", "nope"])
case(
    "rl",
    "experiment=..",
    ["rl", "--config", "cpu_smoke", "experiment=.."],
    setup=user_file_next_to_runs,
)
case("rl", "unknown key", ["rl", "--config", "cpu_smoke", "nokey=1"])


# -- issue #21: hostile input ----------------------------------------------------------------

sys.path.insert(0, str(REPO))
from tests.patches.fake_openai import FakeServer  # noqa: E402 (the checkout's test helper)


def _knows(key: str) -> bool:
    import dataclasses

    from budgetthinker.evaluation.config import EvalConfig

    return key in {f.name for f in dataclasses.fields(EvalConfig)}


# retried once, a second per request: where the checkout has these keys (older ones do not)
FAST = ["retries=1", "request_timeout=1"] if _knows("request_timeout") else []


def err_lines(p):
    return [x for x in p.stderr.replace("\r", "\n").splitlines() if x.strip()]


def one_error(p, *needles):
    """OK: exit 2, one error line (the last stderr line; eval's progress lines may precede it)
    naming the needles, no traceback; bad: a traceback; weak: anything else."""
    lines = err_lines(p)
    if "Traceback" in p.stderr:
        return "bad", "traceback: " + (lines[-1] if lines else "")[:150]
    errors = [x for x in lines if ": error: " in x]
    notes = []
    if p.returncode != 2:
        notes.append(f"exit {p.returncode}")
    if len(errors) != 1 or not lines or lines[-1] != errors[0]:
        notes.append(f"{len(errors)} error lines of {len(lines)}")
    if any(not (x.startswith("[eval] ") or "generate+grade" in x) for x in lines[:-1]):
        notes.append(f"{len(lines)} stderr lines")
    notes += [f"no {n!r}" for n in needles if n not in p.stderr]
    return ("weak" if notes else "OK"), "; ".join([*notes, (lines or [""])[-1][:150]])


class SharedServe:
    """One `budgetthinker serve default` for the HTTP cases, started on first use."""

    def __init__(self):
        self.lock, self.proc, self.url = threading.Lock(), None, None

    def get(self):
        with self.lock:
            if self.url is None:
                self.proc, self.url = start_serve()
            return self.url

    def stop(self):
        if self.proc is not None:
            stop_group(self.proc)


def start_serve(port="0"):
    proc = subprocess.Popen(
        [PY, "-m", "budgetthinker.cli", "serve", "default", "--port", port, "--",
         "--max-model-len", "1024", "--max-num-seqs", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    for line in proc.stdout:
        if line.startswith("[serve] ready:"):
            return proc, line.split(":", 1)[1].strip()
    proc.wait()
    raise RuntimeError(f"serve did not start (exit {proc.returncode})")


def proc_table():
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                f = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            yield int(entry), f[0], int(f[1]), int(f[2])


def group_of(pgid):
    return [pid for pid, state, _, g in proc_table() if g == pgid and state != "Z"]


def stop_group(proc, kids=()):
    """End what the sweep started: serve's group and its child's (by their ids; `kids`: the
    children recorded while serve was alive, for when it has died and they were orphaned)."""
    kids = {*kids, *(pid for pid, _, parent, _ in proc_table() if parent == proc.pid)}
    for pgid in [proc.pid, *kids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    proc.wait()


SERVER = SharedServe()


def http_case(xargs, message):
    def check(d):
        url = SERVER.get()
        name = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0]["id"]
        body = {"model": name, "prompt": "Explain 2+2 step by step.", "max_tokens": 24,
                "skip_special_tokens": False, "ignore_eos": True, "vllm_xargs": xargs}  # fmt: skip
        request = urllib.request.Request(
            url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            answer = json.loads(urllib.request.urlopen(request, timeout=300).read())
        except urllib.error.HTTPError as e:
            text = e.read().decode(errors="replace")
            if message is None:
                return "weak", f"HTTP {e.code} for a valid request: {text[:120]}"
            return ("OK" if e.code == 400 and message in text else "weak"), f"HTTP {e.code}"
        text = answer["choices"][0]["text"]
        if message is None:
            forced = "<remaining>7/8</remaining>" in text
            return ("OK" if forced else "bad"), "forced" if forced else "not forced"
        forced = "<remaining>" in text
        return "bad", f"HTTP 200, {'forced' if forced else 'unforced'}: accepted silently"

    return check


class Foreign(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = json.dumps({"data": [{"id": "smollm2-135m-instruct-8ratio"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def port_taken(d):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    proc = subprocess.Popen([PY, "-m", "budgetthinker.cli", "serve", "default", "--port",
                             str(port)], cwd=d, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        stop_group(proc)
        return "bad", "still running after 300 s"
    finally:
        httpd.shutdown()
        httpd.server_close()
    if "[serve] ready:" in out:
        return "bad", "printed ready for another process's server"
    return one_error(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "port")


def dies_with_serve(sig):
    def check(d):
        proc, url = start_serve()
        kids = [pid for pid, _, parent, _ in proc_table() if parent == proc.pid]
        try:
            os.kill(proc.pid, sig)
            deadline = time.monotonic() + 30
            while any(group_of(k) for k in kids) and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [p for k in kids for p in group_of(k)]
            with socket.socket() as s:
                held = s.connect_ex(("127.0.0.1", int(url.rsplit(":", 1)[1]))) == 0
            if left or held:
                return "bad", f"orphaned: {len(left)} processes, port {'held' if held else 'free'}"
            return "OK", "child gone, port free"
        finally:
            stop_group(proc, kids)

    return check


def fault_case(mode):
    def check(d):
        if mode == "slow" and not FAST:
            return "weak", "no request_timeout to set: a silent server is waited on for 600 s"
        with FakeServer(mode, delay=2.5) as server:
            p = run([*E, "experiment=e", *TINY, "backend=openai", f"endpoint={server.url}",
                     *FAST], d)  # fmt: skip
        samples = d / "runs/e/samples.jsonl"
        saved = samples.is_file() and samples.read_text().strip()
        if saved or p.returncode == 0:
            return "bad", f"exit {p.returncode}, a fault saved as a sample: {bool(saved)}"
        verdict, note = one_error(p, server.url)
        if verdict == "OK" and (d / "runs/e").exists():
            return "weak", "left an experiment folder without samples"
        return verdict, note

    return check


def retry_after_ok(d):
    with FakeServer("retry_after", busy=1) as server:
        p = run([*E, "experiment=e", *TINY, "backend=openai", f"endpoint={server.url}"], d)
        # two requests: one gets 429 with Retry-After: 1, its retry comes a second later
        waited = server.completions == 3 and server.times[-1] - server.times[0] >= 1.0
    if p.returncode != 0:
        return one_error(p)
    return ("OK" if waited else "weak"), "ran" + ("" if waited else "; Retry-After not honoured")


def resume_changed(change):
    def check(d):
        with FakeServer("good") as first, FakeServer("good") as second:
            base = [*E, "experiment=e", *TINY, "backend=openai"]
            p = run([*base, f"endpoint={first.url}"], d)
            if p.returncode != 0:
                return "setup", p.stderr[-200:]
            before = snap(d / "runs")
            extra = [f"endpoint={second.url}"] if change == "endpoint" else [
                f"endpoint={first.url}", change]
            p = run([*base, *extra, "budgets=[16,24]"], d)
        if p.returncode == 0:
            return "bad", "resumed: samples of two settings in one file"
        verdict, note = one_error(p, "different")
        return (verdict if snap(d / "runs") == before else "bad"), note

    return check


def report_pools(d):
    with FakeServer("good") as server:
        for name, extra in (("rA", "max_new_tokens=16"), ("rB", "max_new_tokens=12")):
            p = run([*E, f"experiment={name}", *TINY, "backend=openai",
                     f"endpoint={server.url}", extra], d)  # fmt: skip
            if p.returncode != 0:
                return "setup", p.stderr[-200:]
    p = run(["report", "runs/rA", "runs/rB", "--out", "cmp"], d)
    if p.returncode != 0:
        return one_error(p)
    rows = [x for x in (d / "cmp/report.md").read_text().splitlines() if "control | 16 |" in x]
    if len(rows) < 2:
        return "bad", f"{len(rows)} row for two runs: pooled silently"
    return ("OK" if "differ in max_new_tokens" in p.stdout else "weak"), f"{len(rows)} rows"


BOMB = (
    'delimiters:\n  end: "</think>"\n  start:\n    - &a0 ["<think>", "<think>", "<think>"]\n'
    + "".join(f"    - &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}]\n" for i in range(1, 10))
)  # 0.4 kB of YAML that stands for 3^10 strings


def alias_bomb(d):
    (d / "bomb.yaml").write_text(BOMB)
    p = run(["eval", "--config", "bomb.yaml", "output_dir=runs", *TINY], d)
    fingerprint = d / "runs/default/fingerprint.json"
    if fingerprint.exists():
        return "bad", f"accepted: a {fingerprint.stat().st_size / 1e6:.1f} MB fingerprint.json"
    return one_error(p, "alias") if not (d / "runs").exists() else ("weak", "wrote runs/")


def linked_model(d, spec_change=None, drop=(), truncate=False):
    """The prepared model linked into d/m (big files not copied), with a change."""
    (d / "m").mkdir()
    for f in PREPARED.iterdir():
        if f.name in drop or (spec_change and f.name == "budgetthinker_spec.json"):
            continue
        if truncate and f.suffix == ".safetensors":
            with f.open("rb") as src:
                (d / "m" / f.name).write_bytes(src.read(f.stat().st_size // 50))
            continue
        (d / "m" / f.name).symlink_to(f)
    if spec_change:
        spec = json.loads((PREPARED / "budgetthinker_spec.json").read_text())
        spec_change(spec)
        (d / "m/budgetthinker_spec.json").write_text(json.dumps(spec))


def wrong_spec(change):
    def check(d):
        linked_model(d, spec_change=change)
        p = run([*G, "--budget", "64", "--model", "m", "--json"], d)
        if p.returncode == 0:
            shown = json.loads(p.stdout)["control_positions"]
            return "bad", f"forced {len(shown)} wrong tokens under the control tokens' names"
        return one_error(p, "prepare")

    return check


def big_info(d):
    traces_file(d)
    p = run(["sft-data", "--model", "default", "--traces", "t.jsonl", "--out", "ds"], d)
    assert p.returncode == 0, p.stderr
    info = json.loads((d / "ds/dataset_info.json").read_text())
    info.update({f"other_{i}": {"file_name": f"o{i}.jsonl", "note": "x" * 200} for i in range(300)})
    (d / "ds/dataset_info.json").write_text(json.dumps(info, indent=2))


def sft_data_efbig(d):
    big_info(d)
    before = snap(d / "ds")
    limit = (d / "ds/dataset_info.json").stat().st_size - 1000
    p = run(["sft-data", "--model", "default", "--traces", "t.jsonl", "--out", "ds", "--name",
             "new"], d, limit=limit)  # fmt: skip
    if snap(d / "ds") != before:
        new = sorted(set(snap(d / "ds")) - set(before))
        return "bad" if p.returncode == 0 else "weak", f"published part of the run: {new}"
    return one_error(p, "File too large")


def sft_data_enospc(d):
    disk = d / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                      capture_output=True).returncode:  # fmt: skip
        return "setup", "cannot mount a tmpfs"
    try:
        (disk / "ds").mkdir()
        (disk / "ds/dataset_info.json").write_text('{"older": {"file_name": "older.jsonl"}}')
        before = snap(disk)
        p = run(["sft-data", "--model", "default", "--traces", "synthetic", "--out", disk / "ds"],
                d)  # fmt: skip
        if snap(disk) != before:
            return "weak", f"published part of the run: {sorted(set(snap(disk)) - set(before))}"
        return one_error(p, "No space left")
    finally:
        subprocess.run(["umount", str(disk)])


def tilde(argv_of, where):
    def check(d):
        (d / "home").mkdir()
        (d / "work").mkdir()
        env = {"HOME": str(d / "home"), "BUDGETTHINKER_CACHE": str(PREPARED.parent.parent)}
        for argv in argv_of(d):
            p = run(argv, d / "work", env)
            if p.returncode != 0:
                return one_error(p) if "Traceback" in p.stderr else ("weak", p.stderr[-150:])
        literal = (d / "work/~").exists()
        home = (d / "home" / where).exists()
        return ("OK" if home and not literal else "weak"), (
            "a folder named ~ in the working folder" if literal else "ran")

    return check


def prepare_twice(d):
    for name in ("a", "b"):
        p = run(["prepare", "--base", "default", "--out", name], d)
        if p.returncode != 0:
            return one_error(p)
    same = snap(d / "a") == snap(d / "b")
    return ("OK" if same else "weak"), "same bytes" if same else "different weights"


def dollar_label(d):
    with FakeServer("good") as server:
        p = run([*E, "experiment=e", *TINY[1:], "backend=openai", f"endpoint={server.url}",
                 'methods=[{name: control, label: "$\\\\frac{a$"}]'], d)  # fmt: skip
    if p.returncode == 0:
        return "OK", "ran; report written"
    return one_error(p)


S = "serve"
case(S, "vllm_xargs budget 5 on 8ratio", [], check=http_case({"budget": 5}, "too small"))
case(S, "vllm_xargs budget true", [], check=http_case({"budget": True}, "positive integer"))
case(S, "vllm_xargs unknown key budgett", [], check=http_case({"budgett": 100}, "unknown"))
case(S, "vllm_xargs budget 5 + two_stage", [],
     check=http_case({"budget": 5, "two_stage": 1}, "too small"))  # fmt: skip
case(S, "vllm_xargs budget 16 (valid)", [], check=http_case({"budget": 16}, None))
case(S, "port already taken", [], check=port_taken)
case(S, "SIGHUP of serve", [], check=dies_with_serve(signal.SIGHUP))
case(S, "SIGKILL of serve", [], check=dies_with_serve(signal.SIGKILL))
for mode in ("abort", "finish_null", "truncated_json", "short_body", "no_choices", "error_200",
             "html", "text_null", "ids_out_of_vocab", "too_many_tokens", "slow"):  # fmt: skip
    case("eval", f"openai server: {mode}", [], check=fault_case(mode))
case("eval", "openai server: Retry-After (valid)", [], check=retry_after_ok)
case("eval", "resume with another endpoint", [], check=resume_changed("endpoint"))
case("eval", "resume with grading.extraction", [],
     check=resume_changed("grading.extraction=qwen"))  # fmt: skip
case("report", "two runs of default, other settings", [], check=report_pools)
case("eval", "YAML alias bomb in a recipe", [], check=alias_bomb)
case("eval", "YAML alias in an override", [*E, "experiment=x", *TINY, "budgets=[&a 16, *a]"])
case("generate", "spec ids reversed", [],
     check=wrong_spec(lambda s: s["token_ids"].reverse()))  # fmt: skip
case("generate", "spec ids ordinary tokens", [],
     check=wrong_spec(lambda s: s.update(token_ids=list(range(100, 107)))))  # fmt: skip
case("generate", "spec levels out of order", [],
     check=wrong_spec(lambda s: (s["token_ids"].reverse(), s["token_strings"].reverse())))
case("sft-data", "file-size limit at dataset_info.json", [], check=sft_data_efbig)
case("sft-data", "disk full (64 kB tmpfs)", [], check=sft_data_enospc)
case("sft-traces", "file-size limit (ulimit -f)", ["sft-traces", "--out", "t.jsonl", "--n", "200"],
     limit=4096)  # fmt: skip
case("prepare", "file-size limit (ulimit -f)", ["prepare", "--base", "default", "--out", "o"],
     limit=1 << 20)  # fmt: skip
case("sft-traces", "~ in --out", [],
     check=tilde(lambda d: [["sft-traces", "--out", "~/t.jsonl", "--n", "4"]], "t.jsonl"))
case("sft-data", "~ in --out and --traces", [], check=tilde(lambda d: [
    ["sft-traces", "--out", "~/t.jsonl", "--n", "4"],
    ["sft-data", "--model", "default", "--traces", "~/t.jsonl", "--out", "~/ds"]], "ds"))
case("report", "~ in --out", [], check=tilde(lambda d: [
    ["eval", "--config", RECIPE, "output_dir=~/runs", "experiment=e", *TINY],
    ["report", "~/runs/e", "--out", "~/cmp"]], "cmp/report.md"))
case("eval", "methods=[.]", [*E, "experiment=x", *TINY, "methods=[.]"])
case("eval", "invalid $…$ in a method label", [], check=dollar_label)
case("generate", "truncated safetensors", [*G, "--budget", "64", "--model", "m"],
     setup=lambda d: linked_model(d, truncate=True))  # fmt: skip
case("generate", "missing tokenizer", [*G, "--budget", "64", "--model", "m"],
     setup=lambda d: linked_model(d, drop=("tokenizer.json", "tokenizer_config.json")))
case("prepare", "twice: the same bytes", [], check=prepare_twice, expect="ok")


def judge(c):
    d = Path(tempfile.mkdtemp(prefix="sweep-"))
    try:
        if c["setup"]:
            c["setup"](d)
        if c["check"]:
            return c["check"](d)
        before = snap(d)
        env = dict(c["env"] or {})
        if "PYTHONPATH" in env:
            env["PYTHONPATH"] = str(d / env["PYTHONPATH"])
        p = run(c["argv"], d, env, limit=c["limit"])
        after = snap(d)
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        notes = []
        if "Traceback" in p.stderr:
            return "bad", "traceback: " + (lines[-1] if lines else "")[:160]
        if c["expect"] == "error":
            if c["state"] == "same" and after != before:
                gone = [k for k in before if k not in after or after[k] != before[k]]
                new = [k for k in after if k not in before]
                return "bad" if gone else "weak", f"state changed: changed {gone[:3]} new {new[:3]}"
            if p.returncode == 0:
                return "weak", "accepted silently"
            if p.returncode != 2:
                notes.append(f"exit {p.returncode}")
            if len(lines) != 1:
                notes.append(f"{len(lines)} stderr lines")
            if c["needle"] and c["needle"] not in p.stderr:
                notes.append(f"no {c['needle']!r}")
            last = lines[-1] if lines else ""
            return ("weak" if notes else "OK"), "; ".join([*notes, last[:170]])
        if p.returncode != 0:
            return "weak", f"exit {p.returncode}: {(lines or [''])[-1][:160]}"
        if c["state"] == "no-hidden" and any(Path(k).name.startswith(".") for k in after):
            return "weak", f"leftover {[k for k in after if Path(k).name.startswith('.')]}"
        if c["needle"] and c["needle"] not in p.stdout + p.stderr:
            return "weak", f"no {c['needle']!r} in output"
        return "OK", "ran"
    except Exception as e:  # a setup failure is the sweep's, not the CLI's
        return "setup", repr(e)[:200]
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    only = sys.argv[1:]
    names = [n for n in os.environ.get("SWEEP_NAMES", "").split("|") if n]
    todo = [
        c
        for c in CASES
        if (not only or c["cmd"] in only) and (not names or any(n in c["name"] for n in names))
    ]
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(judge, todo))
    finally:
        SERVER.stop()
    counts: dict = {}
    for c, (verdict, note) in zip(todo, results, strict=True):
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:5} {c['cmd']:10} {c['name']:45} {note}")
    print(json.dumps(counts), len(todo), "cases")
