"""Token log-probabilities from a reference causal LM, batched across sequences (the CTS scorer).

CTS needs, for many (context, targets) pairs, `log p(target_j | context, target_<j)` for every
target token. This module does exactly that and nothing else, so the selection rule in
`budgetthinker.sft.cts` stays a pure function of scores.

Why it is built this way:

* Sequences are right-padded and batched by a token budget (`batch_tokens` padded tokens per
  forward), longest first, so a GPU stays busy and a CPU does not run out of memory.
* Only the rows of the vocabulary projection that are needed are computed: the decoder's last
  hidden states at the target positions go through the output embedding in chunks. A 5,000-token
  thinking on a 152k-vocabulary model would otherwise need ~3 GB of float32 logits per sequence.
  Models whose logits are post-processed (soft-capping, logit scale) take the plain full-logits
  path, so the numbers are the model's own either way.
* Log-softmax runs in float32 whatever the model's dtype (bf16 on GPU), because selection compares
  small differences of log-probabilities.
* `score_continuing` scores one sequence continuing from the KV cache of an earlier one
  (`KVPrefix`): the keys and values of a prefix depend only on its tokens, so the longest common
  prefix with the cached sequence is not encoded again. CTS's windows use it so window w
  continues from the kept prefix of window w − 1 (`budgetthinker.sft.cts`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from budgetthinker.errors import UserError

# Positions pushed through the output embedding at once (memory: chunk × vocab × 4 bytes).
LOGIT_CHUNK = 1024


def resolve_device(device: str) -> torch.device:
    """`auto` → the first GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise UserError(
            f"--device {device!r} is not a torch device; use auto, cpu or cuda"
        ) from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no GPU is visible; use --device auto or cpu")
    return resolved


def resolve_dtype(device: str, dtype: str | torch.dtype) -> torch.dtype:
    """`auto` → bfloat16 on a GPU, float32 on the CPU; else the torch dtype named."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if resolve_device(device).type == "cuda" else torch.float32
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise UserError(f"--dtype {dtype!r} is not a torch dtype; use auto, bfloat16 …")
    return resolved


def check_model_dir(path: str | Path) -> Path:
    """A reference model folder must hold a transformers config (the one-line error otherwise)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(
            f"reference model {path} not found (no config.json there); pass a Hugging Face "
            "causal-LM folder with --ref-model, or 'default' for the embedded SmolLM2"
        )
    return folder


@dataclass
class ScorerStats:
    """What the model did: forward passes, tokens through the model, wall and process-CPU
    seconds in forward (CPU seconds say what a shared CPU machine's wall clock hides)."""

    forwards: int = 0
    tokens: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass(frozen=True)
class KVPrefix:
    """The KV cache of one sequence: `layers[l] = (keys, values)`, `[1, heads, len(tokens), d]`.
    Never modified: continuing from it slices these tensors into a new cache (the cache's
    update concatenates, so the slices stay as they are)."""

    tokens: tuple[int, ...]
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class TokenScorer:
    """Log-probabilities of target tokens under a causal LM, for many sequences at once."""

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str | torch.dtype = "auto",
        batch_tokens: int = 16384,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = check_model_dir(model_dir)
        if batch_tokens <= 0:
            raise UserError(f"--batch-tokens must be positive, got {batch_tokens}")
        self.device = resolve_device(device)
        torch_dtype = resolve_dtype(device, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        if not getattr(self.tokenizer, "is_fast", False):
            raise UserError(
                f"the tokenizer of {model_dir} is not a fast tokenizer, so it gives no character "
                "offsets and the compressed text could not be cut from the original; use a "
                "reference model with a tokenizer.json"
            )
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        self.model.to(self.device).eval()
        config = self.model.config
        post_processed = getattr(config, "final_logit_softcapping", None) or getattr(
            config, "logit_scale", None
        )
        decoder = getattr(self.model, "get_decoder", lambda: None)()
        self._split = decoder is not None and not post_processed
        self.can_continue = self._plain_cache()
        self.batch_tokens = batch_tokens
        self.stats = ScorerStats()

    def _plain_cache(self) -> bool:
        """Whether every layer keeps a plain (full-attention) cache, so a prefix's keys and
        values can be cut out of a longer sequence's (sliding windows and recurrent layers
        cannot); `score_continuing` is refused otherwise and CTS scores from scratch."""
        try:
            from transformers import DynamicCache
            from transformers.cache_utils import DynamicLayer

            layers = DynamicCache(config=self.model.config).layers
        except Exception:  # a model type without a cache layout transformers knows
            return False
        return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)

    @property
    def max_positions(self) -> int | None:
        """The model's `max_position_embeddings` (None where its config has none)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    @property
    def special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before any text (a BOS for Llama, nothing for Qwen/SmolLM2)."""
        return list(self.tokenizer("", add_special_tokens=True).input_ids)

    def score(self, pairs: list[tuple[list[int], list[int]]]) -> list[torch.Tensor]:
        """`pairs[k] = (context, targets)` → float32 CPU tensor `lp` with
        `lp[j] = log p(targets[j] | context, targets[:j])`. The context must be non-empty."""
        results: list[torch.Tensor | None] = [None] * len(pairs)
        order = sorted(range(len(pairs)), key=lambda k: -(len(pairs[k][0]) + len(pairs[k][1])))
        batch: list[int] = []
        for k in order:
            if not pairs[k][0]:
                raise ValueError("every scored sequence needs at least one context token")
            width = len(pairs[batch[0]][0]) + len(pairs[batch[0]][1]) if batch else 0
            if batch and width * (len(batch) + 1) > self.batch_tokens:
                self._run(pairs, batch, results)
                batch = []
            batch.append(k)
        if batch:
            self._run(pairs, batch, results)
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def score_continuing(
        self, sequence: Sequence[int], n_targets: int, cache: KVPrefix | None
    ) -> tuple[torch.Tensor, KVPrefix]:
        """`lp[j] = log p(t_j | everything before t_j)` for the last `n_targets` tokens `t` of
        `sequence` (at least one token must come before them), and the KV cache of the whole
        sequence. Whatever prefix `sequence` shares with `cache.tokens` is taken from the cache
        instead of being encoded again; with `cache=None` this equals `score` of the same split
        up to floating-point rounding (attention over a cached prefix sums in another order)."""
        from transformers import DynamicCache

        if not self.can_continue:
            raise ValueError(f"{type(self.model).__name__} has no plain KV cache to continue")
        if not 0 <= n_targets < len(sequence):
            raise ValueError("score_continuing needs a token before the first target")
        start, cpu_start = time.perf_counter(), time.process_time()
        # the position before the first target must be fed to get its hidden state
        reuse = common_prefix(cache.tokens, sequence) if cache is not None else 0
        reuse = min(reuse, len(sequence) - n_targets - 1)
        past = DynamicCache(config=self.model.config)
        if reuse > 0:
            for layer, (k, v) in zip(past.layers, cache.layers, strict=True):
                layer.update(k[:, :, :reuse], v[:, :, :reuse])
        ids = torch.tensor([list(sequence[reuse:])], device=self.device)
        if self._split:
            out = self.model.get_decoder()(input_ids=ids, past_key_values=past, use_cache=True)
            states = out.last_hidden_state[0]
            head = self.model.get_output_embeddings()
        else:
            out = self.model(input_ids=ids, past_key_values=past, use_cache=True)
            states = out.logits[0]
        # the state at new position p predicts new token p + 1; targets are the last n
        first = ids.shape[1] - n_targets - 1
        labels = torch.tensor(list(sequence[len(sequence) - n_targets :]), device=self.device)
        lps = []
        for lo in range(0, n_targets, LOGIT_CHUNK):
            rows = states[first + lo : first + min(lo + LOGIT_CHUNK, n_targets)]
            lp = torch.log_softmax((head(rows) if self._split else rows).float(), dim=-1)
            lps.append(lp.gather(1, labels[lo : lo + LOGIT_CHUNK, None])[:, 0])
        layers = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
        self.stats.forwards += 1
        self.stats.tokens += ids.shape[1]
        self.stats.seconds += time.perf_counter() - start
        self.stats.cpu_seconds += time.process_time() - cpu_start
        scores = torch.cat(lps).cpu() if lps else torch.zeros(0)
        return scores, KVPrefix(tuple(sequence), layers)

    @torch.inference_mode()
    def _run(self, pairs, batch: list[int], results: list) -> None:
        start, cpu_start = time.perf_counter(), time.process_time()
        seqs = [pairs[k][0] + pairs[k][1] for k in batch]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        if self._split:
            hidden = self.model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            head = self.model.get_output_embeddings()
        else:
            logits = self.model(input_ids=ids, attention_mask=mask).logits
        for row, k in enumerate(batch):
            context, targets = pairs[k]
            # the hidden state at position p predicts token p + 1
            positions = torch.arange(len(context) - 1, len(context) + len(targets) - 1)
            labels = torch.tensor(targets, device=self.device)
            out = []
            for lo in range(0, len(targets), LOGIT_CHUNK):
                pos = positions[lo : lo + LOGIT_CHUNK].to(self.device)
                rows = head(hidden[row, pos]) if self._split else logits[row, pos]
                lp = torch.log_softmax(rows.float(), dim=-1)
                out.append(lp.gather(1, labels[lo : lo + LOGIT_CHUNK, None])[:, 0])
            results[k] = torch.cat(out).cpu() if out else torch.zeros(0)
        self.stats.forwards += 1
        self.stats.tokens += int(mask.sum())
        self.stats.seconds += time.perf_counter() - start
        self.stats.cpu_seconds += time.process_time() - cpu_start
