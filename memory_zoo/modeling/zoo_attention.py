"""Scaled dot-product attention that also returns its weights, for ``output_attentions=True``.

``F.scaled_dot_product_attention`` never returns the attention probabilities. transformers' models answer
``output_attentions=True`` only under ``attn_implementation="eager"``; memory-zoo's own attention layers instead take
this explicit path for the calls that ask for weights (and SDPA, or a kernel, for the others), with the same mask
conventions as SDPA, so the outputs agree to rounding. This file travels with every saved model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def attention_with_weights(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
    is_causal: bool = False, dropout_p: float = 0.0, scale: float | None = None, enable_gqa: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's output `[B, H, Lq, d]` and the attention weights `[B, H, Lq, Lk]` (after dropout, as transformers'
    eager attention returns them), for `query [B, H, Lq, d]`, `key`/`value [B, H_kv, Lk, d]`.

    `attn_mask` is SDPA's: boolean (True = may attend) or additive float, broadcastable to `[B, H, Lq, Lk]`;
    `is_causal` aligns the causal mask top-left, as SDPA does. Scores are computed in float32.
    """
    if enable_gqa and key.shape[1] != query.shape[1]:
        repeat = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(repeat, dim=1), value.repeat_interleave(repeat, dim=1)
    scale = scale if scale is not None else 1.0 / math.sqrt(query.shape[-1])
    scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) * scale
    if is_causal:
        causal = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    # A query that may read nothing (all -inf) gets zero weights and a zero output, not NaN.
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0).to(query.dtype)
    if dropout_p:
        weights = F.dropout(weights, p=dropout_p)
    return torch.matmul(weights, value), weights


@contextmanager
def recorded_weights(modules: Sequence[nn.Module], enabled: bool) -> Iterator[list[torch.Tensor] | None]:
    """Collect the weights every module in `modules` returns second (`(output, weights)`), in call order, as
    transformers 5 records attentions with hooks: the blocks keep returning their hidden states alone."""
    if not enabled:
        yield None
        return
    recorded: list[torch.Tensor] = []
    handles = [module.register_forward_hook(lambda _module, _args, output: recorded.append(output[1]))
               for module in modules]
    try:
        yield recorded
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["attention_with_weights", "recorded_weights"]
