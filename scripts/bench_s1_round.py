"""Cost of one extra s1 round on vLLM: the same tokens generated in one round, or in two rounds
where the second continues the first (prompt + round 1 as its prompt, as s1 does after "Wait").

    .venv/bin/python scripts/bench_s1_round.py [--batch 16] [--tokens 128] [--no-prefix-caching]

Prints the wall time of the single round and of each of the two rounds, and the ratio
(round 1 + round 2) / single. With automatic prefix caching the second round's prefill reuses
the cached KV of the prompt and round 1.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--no-prefix-caching", action="store_true")
    args = parser.parse_args()

    from budgetthinker.generation import GenRequest
    from budgetthinker.patches.vllm_backend import VLLMBackend
    from budgetthinker.preparation.models import default_prepared_dir

    model = str(default_prepared_dir("8ratio"))
    backend = VLLMBackend(model, max_model_len=1024, max_num_seqs=args.batch,
                          enable_prefix_caching=not args.no_prefix_caching)  # fmt: skip
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": f"Count from {i} on."}],
                                           tokenize=False, add_generation_prompt=True),
                   add_special_tokens=False)
        for i in range(args.batch)
    ]  # fmt: skip
    n, half = args.tokens, args.tokens // 2

    def timed(requests):
        start = time.perf_counter()
        results = backend.run(requests)
        return time.perf_counter() - start, results

    timed([GenRequest(p, max_new_tokens=8, min_tokens=8) for p in prompts])  # warm-up
    single, _ = timed([GenRequest(p, max_new_tokens=n, min_tokens=n) for p in prompts])
    first, res = timed([GenRequest(p, max_new_tokens=half, min_tokens=half) for p in prompts])
    second, _ = timed([
        GenRequest(p, max_new_tokens=n - half, min_tokens=n - half, prefix_ids=r.token_ids)
        for p, r in zip(prompts, res, strict=True)
    ])  # fmt: skip
    backend.close()
    caching = "off" if args.no_prefix_caching else "on"
    print(f"prefix caching {caching}: single round of {n} tokens × {args.batch}: {single:.2f} s; "
          f"two rounds of {half}: {first:.2f} s + {second:.2f} s; ratio "
          f"{(first + second) / single:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
