"""Careless-user sweep (issue #15): bad inputs and faults on the real CLI, classified OK/weak/bad.

Usage: .venv/bin/python scripts/careless_user_sweep.py [COMMAND …]   (SWEEP_NAMES=a|b filters
cases by name). Each case runs in a fresh temp folder; about 10-25 minutes on 2 CPU cores.

OK: as promised (exit 2 + one stderr line naming the fix, nothing written / state intact; or a
successful run where the input is valid). weak: refused but not as promised (several lines,
another exit status, vague). bad: traceback, data lost, or a write outside the output folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
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


def run(argv, cwd, env=None, timeout=900):
    return subprocess.run(
        [PY, "-m", "budgetthinker.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


CASES = []


def case(cmd, name, argv, expect="error", setup=None, needle=None, env=None, state="same"):
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


def judge(c):
    d = Path(tempfile.mkdtemp(prefix="sweep-"))
    try:
        if c["setup"]:
            c["setup"](d)
        before = snap(d)
        env = dict(c["env"] or {})
        if "PYTHONPATH" in env:
            env["PYTHONPATH"] = str(d / env["PYTHONPATH"])
        p = run(c["argv"], d, env)
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
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(judge, todo))
    counts: dict = {}
    for c, (verdict, note) in zip(todo, results, strict=True):
        counts[verdict] = counts.get(verdict, 0) + 1
        print(f"{verdict:5} {c['cmd']:10} {c['name']:45} {note}")
    print(json.dumps(counts), len(todo), "cases")
