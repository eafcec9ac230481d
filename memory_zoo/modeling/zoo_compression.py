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


def refuse_chunkwise_outputs(model, kwargs: dict, names: tuple[str, ...] = ("output_attentions",)) -> None:
    """Refuse `output_attentions` (and the other `names`) where a memory model cannot answer them, rather than return
    None: its decoder reads each chunk on its own, over that chunk's memory slots and tokens, so there are no
    per-token weights (or states) over the sequence to return."""
    for name in names:
        if kwargs.get(name) or (kwargs.get(name) is None and getattr(model.config, name, False)):
            raise ValueError(
                f"{type(model).__name__} does not return {name.removeprefix('output_')}: its decoder reads every chunk "
                "on its own, over that chunk's memory slots and tokens, so there is no per-token matrix over the "
                f"sequence to return. Call it without {name}=True (and set config.{name} = False)."
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
    "chunked_causal_loss",
    "memory_slots",
    "refuse_chunkwise_outputs",
    "require_input_ids",
    "unroll_memory",
]
