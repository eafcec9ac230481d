"""PyTorch memory-augmented masked mixers: causal LMs whose context is extended by compressed chunks.

Research code: blbadger/memorymodels, `VariableMemoryMixer` (`memorymodels/mixer_autoencoder.py`). Encoder and
decoder are [`MaskedMixerModel`]s. Differences from the research code, all deliberate:

* any length up to `num_chunks * chunk_length` is accepted (the last chunk may be partial), not exactly that;
* logits are `[batch, seq_len, vocab]` aligned with `input_ids`; memory slots are never part of the output;
* generation: [`MemoryMixerCache`] keeps the memories of finished chunks (each computed once, when its
  chunk is complete) and the decoder's mixing state inside the current chunk, so a new token costs one matrix row
  per decoder block; it gives exactly the tokens of uncached generation;
* the memory-token mixer (research `MemoryMixer`, an "oracle" model whose encoder reads the window it predicts)
  can also run causally, decoding each chunk from the memory of the previous one (`memory_source`);
* the copy-task rewriting of training batches (`copy`, `blank_copy`) lives in `memory_zoo.metrics`, not in the
  model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GenerationMixin
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.utils import can_return_tuple

from ..configuration.configuration_memory_mixer import MemoryMixerConfig, VariableMemoryMixerConfig
from .modeling_masked_mixer import MaskedMixerCache, MaskedMixerModel, MaskedMixerPreTrainedModel
from .zoo_attention import recorded_weights
from .zoo_compat import ZooCausalLMOutput, cache_argument
from .zoo_compression import (
    attentions_requested,
    cached_pass_weights,
    chunk_pieces,
    chunked_causal_loss,
    memory_slots,
    parallel_pass_weights,
    refuse_hidden_states,
    require_input_ids,
)
from .zoo_forward import kept_positions, resolve_cache
from .zoo_rollback import RollbackMixin


class ChunkMemoryLayer(DynamicLayer):
    """What a memory model remembers across chunks, in [`DynamicLayer`]'s batch-first layout so that beam search
    reordering and batch expansion treat it like any key/value layer.

    `keys [batch, 1, finished chunks, hidden]` hold the memories of the finished chunks; `values
    [batch, 1, tokens, 1]` the token ids of the current chunk (encoded once the chunk is complete).
    """

    def append_memory(self, memory: torch.Tensor) -> None:
        memory = memory[:, None, None, :]
        self.keys = memory if self.keys is None or self.keys.numel() == 0 else torch.cat([self.keys, memory], -2)
        self.is_initialized = True

    def memories(self) -> torch.Tensor | None:
        return None if self.keys is None or self.keys.numel() == 0 else self.keys[:, 0]

    def append_tokens(self, input_ids: torch.Tensor) -> None:
        ids = input_ids[:, None, :, None]
        self.values = ids if self.values is None or self.values.numel() == 0 else torch.cat([self.values, ids], -2)
        self.is_initialized = True

    def take_tokens(self) -> torch.Tensor:
        """The finished chunk's ids `[batch, chunk_length]`, cleared for the next chunk."""
        ids, self.values = self.values[:, 0, :, 0], None
        return ids

    # Memories and chunk tokens fill up independently (either may be empty), so the batch operations of
    # DynamicLayer, which look at the keys only, are redone for whichever is present.
    def _apply(self, function) -> None:
        self.keys = function(self.keys) if self.keys is not None and self.keys.numel() else self.keys
        self.values = function(self.values) if self.values is not None and self.values.numel() else self.values

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply(lambda t: t[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply(lambda t: t.index_select(0, beam_idx.to(t.device)))


class MemoryMixerCache(RollbackMixin, DynamicCache):
    """Cache of the memory mixers ([`VariableMemoryMixerForCausalLM`], [`MemoryMixerForCausalLM`]).

    Holds the decoder's [`MaskedMixerCache`] for the current chunk (its layers come first in `layers`) and a
    [`ChunkMemoryLayer`] with the memories of the finished chunks. `get_seq_length()` is the number of tokens read
    so far. Memories of finished chunks cannot be un-read: assisted decoding takes tokens back by snapshot and replay
    ([`RollbackMixin`]).
    """

    def __init__(self, config: VariableMemoryMixerConfig | MemoryMixerConfig):
        self.decoder = MaskedMixerCache(config.decoder_stack_config())
        self.memory = ChunkMemoryLayer()
        Cache.__init__(self, layers=[*self.decoder.layers, self.memory])
        self.tokens_seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.tokens_seen

    def start_chunk(self) -> None:
        """Forget the decoder state of the finished chunk (the next chunk's decoder pass starts afresh)."""
        for layer in self.decoder.layers:
            layer.reset()

    def reset(self) -> None:
        super().reset()
        self.memory.keys = self.memory.values = None
        self.tokens_seen = 0

    def _snapshot_parts(self) -> list:
        return [self, *self.layers, self.decoder]


@contextmanager
def recorded_mixing(decoder: MaskedMixerModel, enabled: bool) -> Iterator[list[torch.Tensor] | None]:
    """Record the decoder's mixing matrices (`MaskedMixerTokenMixer` returns them when its stack is asked for
    attentions) over every decoder call inside; the decoder calls themselves stay as they are."""
    if not enabled:
        yield None
        return
    asked = decoder.config.output_attentions
    decoder.config.output_attentions = True
    try:
        with recorded_weights([layer.token_mixer for layer in decoder.layers], True) as recorded:
            yield recorded
    finally:
        decoder.config.output_attentions = asked


def walk_chunks(
    input_ids: torch.LongTensor, cache: MemoryMixerCache, chunk_length: int,
    remember: Callable[[torch.Tensor], None], decode: Callable[[torch.Tensor, bool], torch.Tensor],
) -> torch.Tensor:
    """Feed new tokens through a memory model's cache, one chunk piece at a time; returns their hidden states.

    When a piece starts a new chunk, the finished chunk's ids go to `remember` (which writes its memory) and the
    decoder state is reset; `decode(piece, starts_chunk)` then runs the decoder on the piece.
    """
    outputs = []
    start = 0
    while start < input_ids.shape[1]:
        position = cache.tokens_seen
        offset = position % chunk_length
        piece = input_ids[:, start:start + chunk_length - offset]
        if offset == 0:
            if position > 0:
                remember(cache.memory.take_tokens())
            cache.start_chunk()
        outputs.append(decode(piece, offset == 0))
        cache.memory.append_tokens(piece)
        cache.tokens_seen += piece.shape[1]
        start += piece.shape[1]
    return torch.cat(outputs, dim=1)


class VariableMemoryMixerPreTrainedModel(MaskedMixerPreTrainedModel):
    """Weight initialisation, checkpoint loading and remote-code export of the memory mixers."""

    config_class = VariableMemoryMixerConfig
    base_model_prefix = "memory_mixer"
    _no_split_modules = ["MaskedMixerBlock"]
    _auto_map_classes = {"AutoModel": "VariableMemoryMixerForCausalLM",
                         "AutoModelForCausalLM": "VariableMemoryMixerForCausalLM"}
    _cache_class = MemoryMixerCache


def _right_padded_only(attention_mask: torch.Tensor | None, total: int) -> None:
    if attention_mask is None:
        return
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != total:
        raise ValueError(f"attention_mask must be [batch, past + new tokens] = [*, {total}], got "
                         f"{tuple(attention_mask.shape)}.")
    mask = attention_mask.bool()
    if not bool((mask[:, 1:] <= mask[:, :-1]).all()):
        raise ValueError(
            "This memory model cuts every row into chunks at fixed positions, so left padding would move the chunk "
            "boundaries of padded rows (the research treats padding as tokens). Use right padding "
            "(tokenizer.padding_side = 'right'), or generate from prompts of equal length (e.g. one at a time)."
        )


class VariableMemoryMixerForCausalLM(VariableMemoryMixerPreTrainedModel, GenerationMixin):
    """Masked-mixer language model with compressed memories of earlier chunks (research `VariableMemoryMixer`).

    `forward(input_ids)` accepts up to `num_chunks * chunk_length` tokens and returns next-token logits for every
    position; with `labels` the loss is the research per-chunk loss (`chunked_causal_loss`). `encode_chunks` gives
    the memory vectors themselves.
    """

    _tied_weights_keys = {"lm_head.weight": "decoder.embed_tokens.weight"}
    # The loss is a mean of the model's own (research) form and ignores the Trainer's `num_items_in_batch`: the Trainer
    # must then scale it for gradient accumulation and devices itself (else it is multiplied by the world size).
    accepts_loss_kwargs = False

    def __init__(self, config: VariableMemoryMixerConfig):
        super().__init__(config)
        width, encoder_width = config.hidden_size, config.encoder_hidden_size
        with_memory = not config.no_memory
        self.encoder = MaskedMixerModel(config.encoder_stack_config()) if with_memory else None
        self.down = nn.Linear(encoder_width, encoder_width // config.compression) if (
            with_memory and config.compression > 1) else None
        self.up = nn.Linear(encoder_width // config.compression, encoder_width) if self.down is not None else None
        self.decoder_proj = nn.Linear(encoder_width, width) if with_memory and encoder_width != width else None
        self.decoder = MaskedMixerModel(config.decoder_stack_config())
        self.lm_head = nn.Linear(width, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def encode_chunks(self, chunk_ids: torch.LongTensor) -> torch.Tensor:
        """Memories `[..., hidden_size]` of complete chunks `chunk_ids [..., chunk_length]` (as placed in the slots)."""
        if self.encoder is None:
            raise ValueError("This model was built with no_memory=True: it has no encoder.")
        config = self.config
        if chunk_ids.shape[-1] != config.chunk_length:
            raise ValueError(f"encode_chunks takes whole chunks of {config.chunk_length} tokens, got "
                             f"{chunk_ids.shape[-1]}.")
        flat = chunk_ids.reshape(-1, config.chunk_length)
        if config.encoder_context is not None:
            # The research right-pads each chunk for an encoder built for longer windows and reads at its end.
            flat = nn.functional.pad(flat, (0, config.encoder_context - config.chunk_length),
                                     value=config.encoder_pad_token_id)
        hidden = self.encoder(input_ids=flat, use_cache=False).last_hidden_state[:, config.memory_position]
        if self.down is not None:
            hidden = self.up(self.down(hidden))
        if self.decoder_proj is not None:
            hidden = self.decoder_proj(hidden)
        return hidden.reshape(*chunk_ids.shape[:-1], -1)

    def _check_length(self, total: int) -> None:
        if total > self.config.context_length:
            raise ValueError(
                f"This memory model reads at most num_chunks * chunk_length = {self.config.num_chunks} * "
                f"{self.config.chunk_length} = {self.config.context_length} tokens (one memory slot per chunk) but the "
                f"input needs {total}. Truncate inputs (max_length={self.config.context_length}) and keep prompt length "
                f"+ max_new_tokens <= {self.config.context_length} when generating."
            )

    def _decode_all(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """Hidden states of every position, all chunks decoded in parallel (training and uncached inference)."""
        config = self.config
        batch, length = input_ids.shape
        chunk = config.chunk_length
        chunks = -(-length // chunk)
        # Right-padding the last chunk cannot change earlier positions: every mixing is lower-triangular.
        ids = nn.functional.pad(input_ids, (0, chunks * chunk - length)).view(batch, chunks, chunk)
        embeds = self.decoder.embed_tokens(ids)
        slots = embeds.new_zeros(batch, chunks, config.num_chunks, config.hidden_size)
        if self.encoder is not None and chunks > 1:
            memories = self.encode_chunks(ids[:, :-1]).to(embeds.dtype)  # [B, chunks - 1, D]
            # Chunk c sees the memories of chunks 0 .. c-1 in its first slots; later slots stay empty (zeros).
            visible = torch.arange(chunks - 1, device=ids.device)[None, :] < torch.arange(chunks, device=ids.device)[:, None]
            slots[:, :, : chunks - 1] = memories[:, None] * visible[None, :, :, None].to(embeds.dtype)
        inputs = torch.cat([slots, embeds], dim=2).flatten(0, 1)
        hidden = self.decoder(inputs_embeds=inputs, use_cache=False).last_hidden_state
        return hidden[:, config.num_chunks:].reshape(batch, chunks * chunk, -1)[:, :length]

    def _decode_cached(self, input_ids: torch.LongTensor, cache: MemoryMixerCache) -> torch.Tensor:
        """Hidden states of the new tokens, walking chunk by chunk through `cache` (prefill and decoding)."""

        def remember(finished: torch.Tensor) -> None:
            if self.encoder is not None:
                cache.memory.append_memory(self.encode_chunks(finished))

        def decode(piece: torch.Tensor, first: bool) -> torch.Tensor:
            embeds = self.decoder.embed_tokens(piece)
            if first:  # the decoder pass of a new chunk starts with the memory slots
                slots = memory_slots(cache.memory.memories(), self.config.num_chunks, 0.0, embeds)
                embeds = torch.cat([slots, embeds], dim=1)
            hidden = self.decoder(inputs_embeds=embeds, cache=cache.decoder, use_cache=True).last_hidden_state
            return hidden[:, -piece.shape[1]:]

        return walk_chunks(input_ids, cache, self.config.chunk_length, remember, decode)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MemoryMixerCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> ZooCausalLMOutput:
        r"""
        attention_mask (`torch.Tensor`, *optional*): `[batch, past + new tokens]`; right padding is allowed (it
            cannot reach earlier positions), left padding is refused (it would move the chunk boundaries).
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): next-token targets, shifted inside;
            the loss is the research per-chunk loss (a chunk's last token predicts nothing; mean over chunks).
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `n` positions (0 = all).
        """
        require_input_ids(self, input_ids, inputs_embeds)
        refuse_hidden_states(self, kwargs)
        cache = resolve_cache(self, cache, use_cache, "memories of earlier chunks")
        past = cache.tokens_seen if cache is not None else 0
        self._check_length(past + input_ids.shape[1])
        _right_padded_only(attention_mask, past + input_ids.shape[1])
        output_attentions = attentions_requested(self, kwargs)
        with recorded_mixing(self.decoder, output_attentions) as recorded:
            hidden = self._decode_all(input_ids) if cache is None else self._decode_cached(input_ids, cache)
        attentions = None
        if output_attentions:  # every decoder pass: num_chunks memory slots, then the chunk's tokens
            batch, new, length = *input_ids.shape, self.config.chunk_length
            width = self.config.num_chunks + length
            attentions = (
                parallel_pass_weights(recorded, batch, new, length, [self.config.num_chunks] * -(-new // length), width)
                if cache is None else
                cached_pass_weights(recorded, len(self.decoder.layers), chunk_pieces(past, new, length), width)
            )
        logits = self.lm_head(kept_positions(hidden, logits_to_keep))
        loss = None
        if labels is not None:
            if past:
                raise ValueError("labels cannot be combined with a filled cache: compute the loss on a full forward.")
            loss = chunked_causal_loss(logits, labels.to(logits.device), self.config.chunk_length,
                                       self.config.num_chunks)
        return ZooCausalLMOutput(loss=loss, logits=logits, cache=cache, attentions=attentions)


class MemoryMixerPreTrainedModel(MaskedMixerPreTrainedModel):
    """Weight initialisation, checkpoint loading and remote-code export of the memory-token mixer."""

    config_class = MemoryMixerConfig
    base_model_prefix = "memory_mixer"
    _no_split_modules = ["MaskedMixerBlock"]
    _auto_map_classes = {"AutoModel": "MemoryMixerForCausalLM", "AutoModelForCausalLM": "MemoryMixerForCausalLM"}
    _cache_class = MemoryMixerCache


class MemoryMixerForCausalLM(MemoryMixerPreTrainedModel, GenerationMixin):
    """Masked-mixer language model conditioned on one memory vector per chunk (research `MemoryMixer`).

    With `memory_source="window"` (research) the memory is the encoding of the very window being predicted: the
    forward reproduces the research model on inputs of up to `chunk_length` tokens. With
    `memory_source="previous_chunk"` each chunk is decoded from the memory of the chunk before it, which makes a
    causal LM of any length that `generate` can run.
    """

    _tied_weights_keys = {"lm_head.weight": "decoder_embed_tokens.weight"}

    def __init__(self, config: MemoryMixerConfig):
        super().__init__(config)
        encoder_width, code = config.encoder_hidden_size, config.memory_size
        token = config.combination == "token"
        self.encoder = MaskedMixerModel(config.encoder_stack_config())
        self.down = nn.Linear(encoder_width, code) if config.compression > 1 else None
        self.up = nn.Linear(code, encoder_width) if config.compression > 1 and token else None
        self.decoder_proj = nn.Linear(encoder_width, config.hidden_size) if (
            token and encoder_width != config.hidden_size) else None
        self.decoder_embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.decoder = MaskedMixerModel(config.decoder_stack_config())
        self.decoder.embed_tokens = None  # the decoder reads embeddings built here (token + memory)
        self.lm_head = nn.Linear(config.decoder_width, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.decoder_embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.decoder_embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def encode(self, input_ids: torch.LongTensor) -> torch.Tensor:
        """The memory of `input_ids [..., T <= chunk_length]` as the decoder receives it: `[..., hidden_size]`
        (token combination) or the `[..., memory_size]` code (embedding combination)."""
        flat = input_ids.reshape(-1, input_ids.shape[-1])
        hidden = self.encoder(input_ids=flat, use_cache=False).last_hidden_state[:, -1]
        if self.down is not None:
            hidden = self.down(hidden)
        if self.up is not None:
            hidden = self.up(hidden)
        if self.decoder_proj is not None:
            hidden = self.decoder_proj(hidden)
        return hidden.reshape(*input_ids.shape[:-1], -1)

    def _combine(self, memory: torch.Tensor | None, embeds: torch.Tensor, first: bool) -> torch.Tensor:
        """Decoder input of a chunk piece: `memory [B, M]` (None = empty) with token embeddings `[B, t, D]`.

        `first` says whether the piece starts its chunk (only then does the memory token precede it)."""
        if self.config.combination == "token":
            if not first:
                return embeds
            slot = memory_slots(None if memory is None else memory[:, None], 1, 0.0, embeds)
            return torch.cat([slot, embeds], dim=1)
        width = self.config.memory_size
        code = embeds.new_zeros(embeds.shape[0], width) if memory is None else memory.to(embeds.dtype)
        return torch.cat([code[:, None, :].expand(-1, embeds.shape[1], -1), embeds], dim=-1)

    def _strip(self, hidden: torch.Tensor, first: bool) -> torch.Tensor:
        return hidden[:, 1:] if first and self.config.combination == "token" else hidden

    def _decode_all(self, input_ids: torch.LongTensor) -> torch.Tensor:
        config = self.config
        batch, length = input_ids.shape
        chunk = config.chunk_length
        if config.memory_source == "window":
            hidden = self._combine(self.encode(input_ids), self.decoder_embed_tokens(input_ids), first=True)
            return self._strip(self.decoder(inputs_embeds=hidden, use_cache=False).last_hidden_state, first=True)
        chunks = -(-length // chunk)
        ids = nn.functional.pad(input_ids, (0, chunks * chunk - length)).view(batch, chunks, chunk)
        embeds = self.decoder_embed_tokens(ids).flatten(0, 1)
        width = config.hidden_size if config.combination == "token" else config.memory_size
        memories = embeds.new_zeros(batch, chunks, width)
        if chunks > 1:  # chunk c reads the memory of chunk c - 1; chunk 0 an empty one
            memories[:, 1:] = self.encode(ids[:, :-1]).to(embeds.dtype)
        inputs = self._combine(memories.flatten(0, 1), embeds, first=True)
        hidden = self._strip(self.decoder(inputs_embeds=inputs, use_cache=False).last_hidden_state, first=True)
        return hidden.reshape(batch, chunks * chunk, -1)[:, :length]

    def _decode_cached(self, input_ids: torch.LongTensor, cache: MemoryMixerCache) -> torch.Tensor:
        def remember(finished: torch.Tensor) -> None:  # only the last chunk's memory is kept
            cache.memory.keys = None
            cache.memory.append_memory(self.encode(finished))

        def decode(piece: torch.Tensor, first: bool) -> torch.Tensor:
            memories = cache.memory.memories()
            inputs = self._combine(None if memories is None else memories[:, -1], self.decoder_embed_tokens(piece),
                                   first=first)
            hidden = self.decoder(inputs_embeds=inputs, cache=cache.decoder, use_cache=True).last_hidden_state
            return self._strip(hidden, first=first)

        return walk_chunks(input_ids, cache, self.config.chunk_length, remember, decode)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MemoryMixerCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> ZooCausalLMOutput:
        r"""
        attention_mask (`torch.Tensor`, *optional*): right padding only (see [`VariableMemoryMixerForCausalLM`]).
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): next-token targets, shifted inside
            over the whole sequence (research loss for `memory_source="window"`), `-100` ignored.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `n` positions (0 = all).
        """
        require_input_ids(self, input_ids, inputs_embeds)
        refuse_hidden_states(self, kwargs)
        config = self.config
        if config.memory_source == "window":
            if input_ids.shape[1] > config.chunk_length:
                raise ValueError(
                    f"With memory_source='window' the encoder reads the window it predicts, so inputs are limited to "
                    f"one window of {config.chunk_length} tokens (got {input_ids.shape[1]}). For longer text use "
                    "memory_source='previous_chunk' (each chunk decoded from the memory of the one before it)."
                )
            cache = None
        else:
            cache = resolve_cache(self, cache, use_cache, "the memory of the last chunk")
        past = cache.tokens_seen if cache is not None else 0
        _right_padded_only(attention_mask, past + input_ids.shape[1])
        output_attentions = attentions_requested(self, kwargs)
        with recorded_mixing(self.decoder, output_attentions) as recorded:
            hidden = self._decode_all(input_ids) if cache is None else self._decode_cached(input_ids, cache)
        attentions = None
        if output_attentions:  # every decoder pass: the memory token (token combination), then the chunk's tokens
            batch, new, length = *input_ids.shape, config.chunk_length
            slot = 1 if config.combination == "token" else 0
            if config.memory_source == "window":  # one pass over the window, like one cached piece
                attentions = cached_pass_weights(recorded, len(self.decoder.layers), [new], slot + length)
            elif cache is None:
                attentions = parallel_pass_weights(recorded, batch, new, length, [slot] * -(-new // length),
                                                   slot + length)
            else:
                attentions = cached_pass_weights(recorded, len(self.decoder.layers), chunk_pieces(past, new, length),
                                                 slot + length)
        logits = self.lm_head(kept_positions(hidden, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=config.vocab_size, **kwargs)
        return ZooCausalLMOutput(loss=loss, logits=logits, cache=cache, attentions=attentions)

    def prepare_inputs_for_generation(self, *args, cache: MemoryMixerCache | None = None, **kwargs):
        if self.config.memory_source == "window":
            raise ValueError(
                "This memory mixer uses memory_source='window': its encoder reads the whole window it predicts, "
                "including tokens not generated yet, so it cannot generate left to right (research 'oracle' memory "
                "model). Use it for scoring, or load it with memory_source='previous_chunk' to decode each chunk "
                "from the memory of the previous one (a different use than the research trained for)."
            )
        return super().prepare_inputs_for_generation(*args, **cache_argument(cache), **kwargs)


__all__ = [
    "ChunkMemoryLayer",
    "MemoryMixerForCausalLM",
    "MemoryMixerPreTrainedModel",
    "MemoryMixerCache",
    "VariableMemoryMixerForCausalLM",
    "VariableMemoryMixerPreTrainedModel",
]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooCausalLMForSequenceClassification  # noqa: E402


class VariableMemoryMixerForSequenceClassification(ZooCausalLMForSequenceClassification, VariableMemoryMixerForCausalLM):
    """Variable-memory mixer with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    The causal LM without its `lm_head`: a bias-free `score` head reads the decoder's final hidden states (each chunk
    decoded from the memories of the chunks before it), and each row is classified at its last token that is not
    `config.pad_token_id`, with transformers' loss for `config.problem_type` (see `zoo_classification`). Chunks sit at
    fixed positions, so batches must be right-padded (`tokenizer.padding_side = "right"`; a left-padded
    `attention_mask` is refused) and rows hold at most `num_chunks * chunk_length` tokens. A causal-LM checkpoint
    loads into it (`from_pretrained(folder, num_labels=N)`): encoder and decoder are kept, `score` starts random.
    """


class MemoryMixerForSequenceClassification(ZooCausalLMForSequenceClassification, MemoryMixerForCausalLM):
    """Memory mixer with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    The causal LM without its `lm_head`: a bias-free `score` head reads the decoder's final hidden states (conditioned
    on the memory of the window, or of the previous chunk: `memory_source`), and each row is classified at its last
    token that is not `config.pad_token_id`, with transformers' loss for `config.problem_type` (see
    `zoo_classification`). Batches must be right-padded (`tokenizer.padding_side = "right"`; a left-padded
    `attention_mask` is refused). A causal-LM checkpoint loads into it (`from_pretrained(folder, num_labels=N)`):
    encoder and decoder are kept, `score` starts random.
    """


# Every saved memory mixer names its classifier in auto_map, so that a causal-LM folder or Hub repository fine-tunes
# into a classifier with trust_remote_code=True where memory-zoo is not installed.
VariableMemoryMixerPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = (
    "VariableMemoryMixerForSequenceClassification"
)
MemoryMixerPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = (
    "MemoryMixerForSequenceClassification"
)
__all__ += ["MemoryMixerForSequenceClassification", "VariableMemoryMixerForSequenceClassification"]
