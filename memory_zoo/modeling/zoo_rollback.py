"""Taking tokens back out of a recurrent cache, exactly: what assisted and prompt-lookup decoding need.

Assisted (speculative) and prompt-lookup decoding feed a few draft tokens at once, keep the ones the model agrees
with and call ``cache.crop(-n)`` to forget the rest. A key/value cache drops its last ``n`` positions; the caches of
the mixers with chunk memories, Memory Mosaics and LSWT cannot: their state is a leaky sum, a memory already
written for a finished chunk, or a window already trimmed. transformers (5.24+) keeps the per-step recurrent
states of its linear-attention layers for this; here one mechanism serves every such cache:

* ``activate_past_recording()`` (called by ``generate`` for assisted decoding) makes the cache remember, at the
  first call after each ``crop``, a snapshot of its state (references to its tensors: cache updates never write into a
  tensor, they build new ones) and the ids of every token fed since;
* ``crop(-n)`` puts the snapshot back and keeps the accepted ids as *replay*; ``crop(0)`` accepts everything;
* the next forward pass feeds the replay ids first, in the same call, and returns outputs for the new tokens only
  (``replays_rolled_back_tokens`` wraps every model ``forward``).

Every cached model computes a call of several tokens exactly as the same tokens one call at a time (the contract's
``test_cache_chunks``), so the result equals plain decoding; models for which that does not hold in some
configuration say so through ``decodes_token_by_token`` and are then fed one token per call while recording. This
file travels with every saved model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch

_Function = TypeVar("_Function", bound=Callable[..., Any])
# Attributes of the mechanism itself, never part of a snapshot.
_OWN = ("record_past", "_snapshot", "_recorded", "_replay", "_in_call")


def _copy_state(obj: Any) -> dict[str, Any]:
    """A shallow copy of `obj`'s attributes, containers copied one level down (the layers update dicts in place)."""
    return {key: (dict(value) if isinstance(value, dict) else list(value) if isinstance(value, list) else value)
            for key, value in vars(obj).items() if key not in _OWN}


def _put_back(obj: Any, state: dict[str, Any]) -> None:
    for key in [key for key in vars(obj) if key not in _OWN]:
        delattr(obj, key)
    vars(obj).update(state)


class RollbackMixin:
    """Mixin for a transformers ``Cache`` whose state cannot be cut token by token (see the module docstring).

    Subclasses list in ``_snapshot_parts()`` every object holding their state (the cache itself and its layers by
    default; add nested caches). The model's forward must be wrapped by :func:`replays_rolled_back_tokens`.
    """

    record_past: bool = False
    _snapshot: list[dict[str, Any]] | None = None
    _recorded: torch.Tensor | None = None
    _replay: torch.Tensor | None = None
    _in_call: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A cache counting its tokens itself still counts the replayed ones: generate slices its inputs by it.
        own = cls.__dict__.get("get_seq_length")
        if own is not None and not getattr(own, "_counts_replay", False):
            @functools.wraps(own)
            def get_seq_length(self, layer_idx: int = 0) -> int:
                return own(self, layer_idx) + self.pending_replay

            get_seq_length._counts_replay = True
            cls.get_seq_length = get_seq_length

    def _snapshot_parts(self) -> list[Any]:
        return [self, *self.layers]

    def activate_past_recording(self, *args, **kwargs) -> None:
        """Remember enough from now on to take back any number of the tokens fed since the last ``crop``."""
        self.record_past = True

    @property
    def is_croppable(self) -> bool:
        return bool(self.record_past)

    @property
    def pending_replay(self) -> int:
        """Accepted tokens taken back by ``crop`` and fed again at the start of the next call."""
        return 0 if self._replay is None else self._replay.shape[1]

    def begin_call(self, input_ids: torch.Tensor | None) -> tuple[torch.Tensor | None, int]:
        """The ids a forward pass must run (replay first) and how many of them are replayed; records them."""
        replay, self._replay = self._replay, None
        if replay is not None:
            if input_ids is None:
                raise ValueError(
                    "This cache holds tokens taken back by crop() that must be fed again, which needs input_ids; "
                    "pass input_ids instead of inputs_embeds after an assisted-decoding step."
                )
            input_ids = torch.cat([replay.to(input_ids.device), input_ids], dim=1)
        if self.record_past:
            if self._snapshot is None:
                self._snapshot = [_copy_state(part) for part in self._snapshot_parts()]
                self._recorded = input_ids
            elif input_ids is not None and self._recorded is not None:
                self._recorded = torch.cat([self._recorded, input_ids], dim=1)
            else:
                self._recorded = None  # embeddings fed while recording: nothing can be replayed
        return input_ids, 0 if replay is None else replay.shape[1]

    def crop(self, tokens_to_remove: int) -> None:
        """Forget the last ``-tokens_to_remove`` tokens (transformers' convention: a negative count; 0 accepts all)."""
        if tokens_to_remove > 0:
            raise ValueError(
                f"crop({tokens_to_remove}): pass a negative number of tokens to remove, as transformers does."
            )
        remove = -tokens_to_remove
        if remove and not self.record_past:
            raise RuntimeError(
                f"{type(self).__name__} can only take tokens back after activate_past_recording() (generate calls it "
                "for assisted and prompt-lookup decoding)."
            )
        snapshot, recorded = self._snapshot, self._recorded
        self._snapshot = self._recorded = None
        if remove == 0 or snapshot is None:
            return
        if recorded is None:
            raise RuntimeError("Tokens fed as embeddings cannot be taken back out of this cache: feed input_ids.")
        if remove > recorded.shape[1]:
            raise ValueError(f"crop(-{remove}): only {recorded.shape[1]} tokens were fed since the last crop.")
        for part, state in zip(self._snapshot_parts(), snapshot, strict=True):
            _put_back(part, state)
        kept = recorded[:, : recorded.shape[1] - remove]
        self._replay = kept if kept.shape[1] else None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return super().get_seq_length(layer_idx) + self.pending_replay

    def reset(self) -> None:
        super().reset()
        self._snapshot = self._recorded = self._replay = None


def _last(value: Any, length: int, dim: int) -> Any:
    """`value` cut to its last `length` positions along `dim` (tuples of tensors element-wise; None kept)."""
    if isinstance(value, torch.Tensor):
        if value.dim() <= dim or value.shape[dim] <= length:  # e.g. logits_to_keep already kept fewer
            return value
        return value.narrow(dim, value.shape[dim] - length, length)
    if isinstance(value, tuple):
        return tuple(_last(item, length, dim) for item in value)
    return value


def _set(output: Any, name: str, value: Any) -> None:
    """Set a `ModelOutput` field, in its mapping too (attribute assignment alone skips the mapping for None)."""
    if value is None and getattr(output, name, None) is None:
        return
    if hasattr(output, "keys") and name in output.keys():
        output[name] = value
    else:
        setattr(output, name, value)


def _one_token_per_call(forward: Callable, model: Any, input_ids: torch.Tensor, kwargs: dict) -> Any:
    """Run `input_ids [B, L]` as L calls of one token (the attention mask cut to each call's end); outputs joined."""
    length, mask = input_ids.shape[1], kwargs.get("attention_mask")
    outputs = []
    for i in range(length):
        if mask is not None:
            kwargs["attention_mask"] = mask[:, : mask.shape[1] - (length - 1 - i)]
        outputs.append(forward(model, input_ids[:, i:i + 1], **kwargs))
    output = outputs[-1]
    for name in ("logits", "hidden_states", "last_hidden_state"):
        parts = [getattr(out, name, None) for out in outputs]
        if all(isinstance(part, torch.Tensor) for part in parts):
            _set(output, name, torch.cat(parts, dim=1))
        elif all(isinstance(part, tuple) and part for part in parts):
            _set(output, name, tuple(torch.cat(layer, dim=1) for layer in zip(*parts, strict=True)))
    _set(output, "attentions", None)  # each call saw a different number of keys: nothing to stack
    return output


def replays_rolled_back_tokens(forward: _Function) -> _Function:
    """Wrap a model ``forward(input_ids, ..., cache=...)`` for caches with a :class:`RollbackMixin`.

    On the outermost call with such a cache, replayed ids are fed first and the outputs (logits, hidden states,
    attentions) cut back to the tokens the caller passed; while recording, a model whose ``decodes_token_by_token``
    says so is fed one token per call. Calls without such a cache are untouched.
    """

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        cache = kwargs.get("cache")
        if not isinstance(cache, RollbackMixin) or cache._in_call:
            return forward(self, *args, **kwargs)
        if len(args) > 1:
            raise TypeError(f"{type(self).__name__}.forward takes its arguments after input_ids by keyword.")
        input_ids = args[0] if args else kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        new_length = input_ids.shape[1] if input_ids is not None else embeds.shape[1] if embeds is not None else 0
        if cache.pending_replay and kwargs.get("labels") is not None:
            raise ValueError("labels cannot be given while the cache replays tokens taken back by crop().")
        cache._in_call = True
        try:
            input_ids, replayed = cache.begin_call(input_ids)
            if replayed:
                # Positions are the cache's to know; the caller's only cover the new tokens.
                kwargs.pop("position_ids", None)
                kwargs.pop("cache_position", None)
            step = getattr(self, "decodes_token_by_token", None)
            length = input_ids.shape[1] if input_ids is not None else new_length
            if cache.record_past and step is not None and input_ids is not None and length > 1 \
                    and step(cache, length):
                output = _one_token_per_call(forward, self, input_ids, kwargs)
            else:
                output = forward(self, input_ids, **kwargs)
        finally:
            cache._in_call = False
        if replayed:
            for name, dim in (("logits", 1), ("hidden_states", 1), ("last_hidden_state", 1), ("attentions", 2)):
                _set(output, name, _last(getattr(output, name, None), new_length, dim))
        return output

    return wrapper  # type: ignore[return-value]


__all__ = ["RollbackMixin", "replays_rolled_back_tokens"]
