"""Pieces shared by the text-compression models: autoencoders and memory-augmented causal LMs.

Both the mixer and the transformer families (blbadger/memorymodels) read one vector per token window, turn it
back into a decoder input the same way, and train memory models with the same per-chunk loss; those conventions
are written once here. This file travels with saved models as remote code, so it imports only torch/transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.utils import ModelOutput

from .zoo_inputs import check_model_inputs


@dataclass
class AutoencoderOutput(ModelOutput):
    """Output of an autoencoder's forward pass.

    Args:
        loss (`torch.FloatTensor`, *optional*): reconstruction cross-entropy in nats per token (no shift: position
            `t` reconstructs token `t`), when `labels` were given.
        logits (`torch.FloatTensor` of shape `[batch, seq_len, vocab_size]`): reconstruction logits.
        memory (`torch.FloatTensor` of shape `[batch, memory_size]`): the code the window was compressed to (what
            `encode` returns and `decode` accepts).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): decoder hidden states, when requested.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    memory: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


def require_input_ids(model, input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None = None) -> None:
    """Refuse what a compression model cannot read: it embeds token ids itself (encoder and decoder each with their
    own matrix), so `inputs_embeds` are refused, and `input_ids` must pass the checks every forward makes
    (`check_model_inputs`: integer, non-empty `[batch, seq_len]`, inside the vocabulary), also in `encode`."""
    name = type(model).__name__
    if inputs_embeds is not None:
        raise ValueError(f"{name} needs input_ids: its encoder and decoder embed each token with their own "
                         "embedding matrices (inputs_embeds is not supported).")
    if input_ids is None:
        raise ValueError(f"{name} needs input_ids [batch, seq_len].")
    check_model_inputs(model, input_ids)


def refuse_hidden_states(model, kwargs: dict) -> None:
    """Refuse `output_hidden_states` where a memory mixer does not return it, rather than silently return None."""
    if kwargs.get("output_hidden_states") or (kwargs.get("output_hidden_states") is None
                                              and model.config.output_hidden_states):
        raise ValueError(
            f"{type(model).__name__} does not return hidden_states: its decoder runs chunk by chunk and only the "
            "logits are assembled. Call it without output_hidden_states=True (and set config.output_hidden_states = "
            "False)."
        )


def attentions_requested(model, kwargs: dict) -> bool:
    """Whether a memory model's forward must return attentions (its `output_attentions` travels in `**kwargs`)."""
    value = kwargs.get("output_attentions")
    return bool(value if value is not None else model.config.output_attentions)


def chunk_pieces(past: int, new_tokens: int, chunk_length: int) -> list[int]:
    """The sizes of the pieces a cached call of `new_tokens` after `past` tokens is cut into: up to each chunk end."""
    pieces, position, end = [], past, past + new_tokens
    while position < end:
        stop = min((position // chunk_length + 1) * chunk_length, end)
        pieces.append(stop - position)
        position = stop
    return pieces


def parallel_pass_weights(
    recorded: list[torch.Tensor], batch: int, total: int, chunk_length: int, slots: list[int], width: int
) -> tuple[torch.Tensor, ...]:
    """Per-token weights over each token's chunk pass, from a decoder run on all chunk passes as one batch.

    `recorded` holds one `[batch * chunks, heads, W, W]` map per decoder layer, pass `c` holding `slots[c]` memory
    slots then the chunk's tokens; returns `[batch, heads, total, width]` per layer (keys right-padded with zeros).
    """
    chunks = len(slots)
    offsets = torch.tensor(slots, device=recorded[0].device)
    rows = offsets[:, None] + torch.arange(chunk_length, device=offsets.device)[None, :]  # [chunks, chunk_length]
    maps = []
    for weights in recorded:
        weights = weights.view(batch, chunks, *weights.shape[1:])  # [B, C, H, W, W]
        index = rows[None, :, None, :, None].expand(batch, -1, weights.shape[2], -1, weights.shape[-1])
        weights = weights.gather(3, index).permute(0, 2, 1, 3, 4)  # [B, H, C, chunk_length, W]
        weights = weights.reshape(batch, weights.shape[1], chunks * chunk_length, -1)[:, :, :total]
        maps.append(F.pad(weights, (0, width - weights.shape[-1])))
    return tuple(maps)


def cached_pass_weights(recorded: list[torch.Tensor], layers: int, pieces: list[int], width: int
                        ) -> tuple[torch.Tensor, ...]:
    """Per-token weights over each token's chunk pass, from a cached call: one decoder call per piece (`pieces`, see
    `chunk_pieces`), each recording `[batch, heads, rows, keys]` per layer whose last rows are the piece's tokens;
    returns `[batch, heads, new tokens, width]` per layer."""
    calls = [recorded[i:i + layers] for i in range(0, len(recorded), layers)]
    return tuple(
        torch.cat([F.pad(call[layer][:, :, -size:], (0, width - call[layer].shape[-1]))
                   for call, size in zip(calls, pieces, strict=True)], dim=2)
        for layer in range(layers)
    )


def unroll_memory(memory: torch.Tensor, length: int) -> torch.Tensor:
    """Spread a memory vector `[batch, D]` over `length` rows of `D // 2` features (research "unrolled" input).

    Row `i` holds the `D // 2` consecutive features starting at `i mod D`, wrapping around cyclically, so
    neighbouring positions see overlapping, shifted views of the code; a `Linear(D // 2, D)` follows.
    """
    width = memory.shape[-1]
    rows = torch.arange(length, device=memory.device)[:, None] % width
    index = (rows + torch.arange(width // 2, device=memory.device)[None, :]) % width
    return memory[:, index]


def chunked_causal_loss(
    logits: torch.Tensor, labels: torch.Tensor, chunk_length: int, num_chunks: int | None = None
) -> torch.Tensor:
    """Research loss of the variable-memory models: next-token cross-entropy inside each chunk, averaged over chunks.

    Position `t` predicts `labels[t + 1]` only within its chunk (a chunk's last token predicts nothing). Each chunk
    contributes the mean over its non-ignored (`-100`) targets in the whole batch; the sum is divided by
    `num_chunks` (default: the chunks in the input), counting chunks without any target, as the research code does.
    Passing the model's chunk count makes a shorter input score like the same input right-padded with ignored
    labels (the research always filled every chunk).
    """
    total = logits.new_zeros((), dtype=torch.float32)
    chunks = 0
    for start in range(0, labels.shape[1], chunk_length):
        chunks += 1
        end = min(start + chunk_length, labels.shape[1])
        targets = labels[:, start + 1:end]
        if not bool((targets != -100).any()):
            continue
        predictions = logits[:, start:end - 1].float()
        total = total + F.cross_entropy(predictions.reshape(-1, predictions.shape[-1]), targets.reshape(-1),
                                        ignore_index=-100)
    return total / (num_chunks if num_chunks is not None else max(chunks, 1))


def memory_slots(memories: torch.Tensor | None, slots: int, fill: float, like: torch.Tensor) -> torch.Tensor:
    """The decoder's memory positions: the memories of the finished chunks first, then `fill` in the empty slots.

    `memories [batch, k, D]` (or None for k = 0) become `[batch, slots, D]`; `like` gives batch, width, dtype and
    device. The research fills empty slots with zeros (mixers) or ones (transformers).
    """
    batch, width = like.shape[0], like.shape[-1]
    done = 0 if memories is None else memories.shape[1]
    empty = like.new_full((batch, slots - done, width), fill)
    return empty if memories is None else torch.cat([memories.to(like.dtype), empty], dim=1)


__all__ = [
    "AutoencoderOutput",
    "attentions_requested",
    "cached_pass_weights",
    "chunk_pieces",
    "chunked_causal_loss",
    "memory_slots",
    "parallel_pass_weights",
    "refuse_hidden_states",
    "require_input_ids",
    "unroll_memory",
]
