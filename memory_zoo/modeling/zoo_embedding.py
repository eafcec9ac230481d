"""Text embeddings from a causal model's last hidden states, at the position the Masked Mixer research reads.

A causal model's hidden state at position `t` has seen tokens `0 ... t` and nothing after, so one position can stand
for a whole text. The research (blbadger/maskedmixers, `mixer_lm/infonce_retrieval.py`) reads the **second-to-last
real token** (`pooling="second_to_last"`): index `-2` of a left-padded window, `first pad - 2` of a right-padded row.
Its Fineweb embedding files read the **last real token** instead (`pooling="last"`, `first pad - 1`).

The padding side decides where that token is, and reading a padded row with the wrong convention silently returns
the vector of a pad position, so it is never guessed from token ids: it is read off the `attention_mask` (ones then
zeros: right padding; zeros then ones: left padding) and, when `padding_side` is also given, checked against it.

This file travels with saved models as remote code; it may only import `torch` and `transformers`.
"""

from __future__ import annotations

import json
import os
from typing import Literal

import torch
import torch.nn.functional as F

EmbeddingPooling = Literal["second_to_last", "last"]
EMBEDDING_POOLINGS: dict[str, int] = {"second_to_last": 2, "last": 1}  # pooling -> positions back from the end


def detect_padding_side(attention_mask: torch.Tensor) -> Literal["left", "right"] | None:
    """`"right"` if every row is ones then zeros, `"left"` if zeros then ones, None if nothing is padded.

    Raises a `ValueError` for masks that are neither (holes inside a row, or both sides in one batch) and for rows
    without a single real token.
    """
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be a 2-D [batch, seq_len] 0/1 mask, got shape {tuple(attention_mask.shape)}.")
    mask = attention_mask.bool()
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"Rows {empty} of attention_mask have no real token; an empty text has no embedding.")
    if bool(mask.all()):
        return None
    if bool((mask[:, 1:] <= mask[:, :-1]).all()):
        return "right"
    if bool((mask[:, 1:] >= mask[:, :-1]).all()):
        return "left"
    raise ValueError(
        "attention_mask is neither left- nor right-padded (a row has padding inside it, or the batch mixes both "
        "sides); tokenize the batch with one padding side (tokenizer.padding_side = 'right' or 'left')."
    )


def embedding_indices(
    attention_mask: torch.Tensor | None,
    seq_len: int,
    *,
    batch_size: int | None = None,
    pooling: EmbeddingPooling = "second_to_last",
    padding_side: Literal["left", "right"] | None = None,
) -> torch.LongTensor:
    """The window position `[batch]` whose hidden state is each row's embedding (see the module docstring).

    Without an `attention_mask` every position is a real token. `padding_side`, when given, must agree with the mask.
    """
    if pooling not in EMBEDDING_POOLINGS:
        raise ValueError(f"Unknown pooling {pooling!r}; choose one of {sorted(EMBEDDING_POOLINGS)}.")
    if padding_side not in (None, "left", "right"):
        raise ValueError(f"padding_side must be 'left', 'right' or None, got {padding_side!r}.")
    back = EMBEDDING_POOLINGS[pooling]
    if attention_mask is None:
        if batch_size is None:
            raise ValueError("embedding_indices needs batch_size when there is no attention_mask.")
        real = torch.full((batch_size,), seq_len, dtype=torch.long)
        detected = None
    else:
        if attention_mask.shape[-1] != seq_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions but the input has {seq_len}.")
        detected = detect_padding_side(attention_mask)
        real = attention_mask.bool().sum(-1).long()
    if padding_side is not None and detected is not None and detected != padding_side:
        raise ValueError(
            f"padding_side={padding_side!r} but the attention_mask is {detected}-padded; embeddings read from the "
            f"wrong side would be pad positions. Tokenize with tokenizer.padding_side = {padding_side!r} or pass "
            f"padding_side={detected!r}."
        )
    short = (real < back).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"Rows {short} have fewer than {back} real tokens, so pooling={pooling!r} has no position to read "
            "(the research reads the second-to-last token). Embed longer texts, or use pooling='last'."
        )
    if detected == "left":
        return torch.full_like(real, seq_len - back)
    return real - back


def pool_hidden_states(
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    pooling: EmbeddingPooling = "second_to_last",
    padding_side: Literal["left", "right"] | None = None,
    normalize: bool = False,
) -> torch.Tensor:
    """One vector per row of `hidden_states [batch, seq_len, hidden]`: the hidden state at `embedding_indices`."""
    batch, seq_len, _ = hidden_states.shape
    indices = embedding_indices(attention_mask, seq_len, batch_size=batch, pooling=pooling, padding_side=padding_side)
    pooled = hidden_states[torch.arange(batch, device=hidden_states.device), indices.to(hidden_states.device)]
    return F.normalize(pooled, dim=-1) if normalize else pooled


class EmbeddingMixin:
    """Adds [`embed`] to a causal model whose base model returns `last_hidden_state`, and makes every folder it saves
    a sentence-transformers model too.

    The default pooling is `config.embedding_pooling`, so a checkpoint carries its convention (sentence-transformers
    calls this same method and never passes `pooling`).
    """

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs):
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True) and os.path.isdir(save_directory):
            write_sentence_transformers_config(save_directory, getattr(self.config, "max_position_embeddings", None))
        return result

    def embed(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        *,
        pooling: EmbeddingPooling | None = None,
        padding_side: Literal["left", "right"] | None = None,
        normalize: bool = False,
    ) -> torch.Tensor:
        r"""Embed a batch of texts: `[batch, hidden_size]`, one vector per row.

        Args:
            input_ids / inputs_embeds: the tokenized texts `[batch, seq_len]` (or their embeddings).
            attention_mask: the tokenizer's mask. Required whenever the batch is padded: it tells which positions
                are real and on which side the padding is. Left padding is exact (each row is run as if alone);
                to reproduce research vectors computed with the pad tokens as input, pass `torch.ones_like(ids)`.
            pooling: `"second_to_last"` (research default: the hidden state of the second-to-last real token) or
                `"last"` (the last real token); defaults to `config.embedding_pooling`.
            padding_side: optional assertion of the padding side; a mask padded on the other side raises.
            normalize: L2-normalise the vectors (cosine similarity becomes a dot product).
        """
        if attention_mask is None and input_ids is not None:
            pad = getattr(self.config, "pad_token_id", None)
            if pad is not None and bool((input_ids == pad).any()):
                raise ValueError(
                    f"input_ids contain the pad token (id {pad}) but no attention_mask was given, so the padding "
                    "side is unknown and embeddings could be read at pad positions. Pass the tokenizer's "
                    "attention_mask, or torch.ones_like(input_ids) to embed the pad tokens as text."
                )
        outputs = self.base_model(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, use_cache=False
        )
        pooling = pooling if pooling is not None else getattr(self.config, "embedding_pooling", "second_to_last")
        return pool_hidden_states(
            outputs.last_hidden_state, attention_mask, pooling=pooling, padding_side=padding_side, normalize=normalize
        )


def write_sentence_transformers_config(save_directory: str | os.PathLike, max_length: int | None) -> None:
    """Make a saved model folder load as `SentenceTransformer(folder, trust_remote_code=True)`.

    One sentence-transformers module: its `Transformer`, told to call the model's `embed` (so `encode` returns
    exactly what `embed` returns) and to truncate texts to the model's context. The folder still needs a tokenizer.
    """
    files = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.transformer.Transformer"}
        ],
        "sentence_bert_config.json": {
            "transformer_task": "feature-extraction",
            "modality_config": {"text": {"method": "embed", "method_output_name": None}},
            "module_output_name": "sentence_embedding",
            **({"processing_kwargs": {"text": {"max_length": max_length, "truncation": True}}} if max_length else {}),
        },
        "config_sentence_transformers.json": {
            "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    }
    for name, content in files.items():
        with open(os.path.join(save_directory, name), "w", encoding="utf-8") as handle:
            json.dump(content, handle, indent=2)
            handle.write("\n")


__all__ = [
    "EMBEDDING_POOLINGS",
    "EmbeddingMixin",
    "detect_padding_side",
    "embedding_indices",
    "pool_hidden_states",
    "write_sentence_transformers_config",
]
