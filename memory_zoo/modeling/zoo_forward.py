"""Helpers every model's forward pass shares: embedding the inputs, choosing the cache, keeping the positions logits
are computed for. This file travels with every saved model."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


def embed_inputs(
    embeddings: nn.Embedding, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor | None
) -> torch.Tensor:
    """`inputs_embeds`, or the embeddings of `input_ids [batch, seq_len]`; exactly one of them must be given."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
    if inputs_embeds is not None:
        return inputs_embeds
    return embeddings(input_ids)  # their shape, dtype and range were checked on entry (zoo_inputs)


def resolve_cache(model: PreTrainedModel, cache, use_cache: bool | None, state: str):
    """The cache a forward pass uses: `None` without caching, else `cache` or a new `model._cache_class(config)` (the
    class `generate` builds up front too, see `ZooPreTrainedModel`).

    Caching is off during training with gradient checkpointing. A cache of another class is refused (`state` says
    what it could not hold), since silently starting over would drop the model's memory.
    """
    cache_class = type(model)._cache_class
    use_cache = use_cache if use_cache is not None else model.config.use_cache
    if getattr(model, "gradient_checkpointing", False) and model.training:
        use_cache = False
    if cache is not None and not isinstance(cache, cache_class):
        raise TypeError(
            f"{type(model).__name__} needs a {cache_class.__name__}, got {type(cache).__name__}: a key/value "
            f"cache cannot hold {state}. Pass cache=None (a {cache_class.__name__} is created) or reuse the "
            "cache returned by a previous call."
        )
    if not use_cache:
        return None
    return cache if cache is not None else cache_class(model.config)


def kept_positions(hidden_states: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The hidden states logits are computed for: the last `logits_to_keep` positions (0 = all), or given indices."""
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    return hidden_states[:, keep, :]


__all__ = ["embed_inputs", "kept_positions", "resolve_cache"]
