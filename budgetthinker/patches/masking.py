"""The one way a forced token is imposed on a batch of logits, shared by every engine adapter."""

from __future__ import annotations

import torch


def force_tokens(logits: torch.Tensor, rows: list[int], tokens: list[int]) -> torch.Tensor:
    """In place: every logit of row `rows[i]` becomes −inf except `tokens[i]`, which becomes 0.

    Done before sampling, so greedy and sampled decoding pick the forced token alike and the
    distribution sampled from (and its logprobs) is the forced one.
    """
    if rows:
        r = torch.tensor(rows, device=logits.device)
        t = torch.tensor(tokens, device=logits.device)
        logits[r] = float("-inf")
        logits[r, t] = 0.0
    return logits
