#!/usr/bin/env python
"""`budgetthinker serve` throughput with and without its budget middleware (`serve_guard`:
dialect resolution, admission checks, headers, usage accounting), same requests.

Two servers on the embedded model run side by side: the default `serve` (processor and
middleware) and `serve … -- --logits-processors <the same processor>` (a user's own
`--logits-processors` turns the middleware off). Both get the same requests, budgeted through
`vllm_xargs` so both force the same tokens, `ignore_eos` so every output has `--tokens`
tokens, `--concurrency` in flight; rounds alternate between the servers and the medians are
compared → `with_over_without` (requests/s). On a shared machine the ratio is the figure to
read, not the absolute rates. The last stdout line is one JSON object.

    python scripts/bench_serve.py --requests 32 --rounds 3

Issue #23's figure (`--requests 16 --tokens 48 --concurrency 8 --rounds 3`, measured under heavy
load from other processes, load average 15–25 on 2 cores): medians 0.146 requests/s with the
middleware, 0.124 without (rounds ranged 0.12–0.25 in both arms): no cost above the noise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from budgetthinker.patches.serve import READY_PREFIX
from budgetthinker.patches.vllm_select import vllm_processor_fqcn


def start(extra: list[str]) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "budgetthinker.cli", "serve", "default", "--port", "0", "--",
            "--max-model-len", "1024", "--max-num-seqs", "16", *extra]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    for line in proc.stdout:
        if line.startswith(READY_PREFIX):
            return proc, line[len(READY_PREFIX) :].strip()
    raise SystemExit(f"serve did not start (exit {proc.wait()})")


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def round_rate(url: str, bodies: list[dict], concurrency: int) -> float:
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: post(url, b), bodies))
    return len(bodies) / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    servers = {"with": start([]), "without": start(["--logits-processors", vllm_processor_fqcn()])}
    try:
        name = json.loads(urllib.request.urlopen(servers["with"][1] + "/v1/models").read())
        name = name["data"][0]["id"]
        bodies = [
            {"model": name, "prompt": f"Explain step by step how to compute {17 + i} times 23.",
             "max_tokens": args.tokens, "temperature": 0.0, "ignore_eos": True,
             "vllm_xargs": {"budget": 32 + 8 * (i % 4)}}
            for i in range(args.requests)
        ]  # fmt: skip
        rates: dict[str, list[float]] = {"with": [], "without": []}
        for _proc, url in servers.values():  # warm-up
            round_rate(url, bodies[:4], 4)
        for r in range(args.rounds):
            order = ("with", "without") if r % 2 == 0 else ("without", "with")
            for key in order:
                rates[key].append(round_rate(servers[key][1], bodies, args.concurrency))
                print(f"round {r} {key:>8}: {rates[key][-1]:.2f} requests/s", file=sys.stderr)
    finally:
        for proc, _ in servers.values():
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    result = {k: statistics.median(v) for k, v in rates.items()}
    result["with_over_without"] = result["with"] / result["without"]
    print(f"requests/s with middleware {result['with']:.2f}, without {result['without']:.2f}, "
          f"ratio {result['with_over_without']:.3f}")  # fmt: skip
    print(json.dumps({**result, **vars(args), "rates": rates}))


if __name__ == "__main__":
    main()
