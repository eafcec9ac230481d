"""PyTorch transformer text-compression models of blbadger/memorymodels (Badger, arXiv 2602.13466), on Llama blocks.

* [`TransformerAutoencoderModel`] (research `UnrolledAutoencodingTransformer` with `AbbreviatedModel` or plain
  `LlamaModel` parts): a window of tokens -> one memory vector -> per-position reconstruction logits.
* [`VariableMemoryTransformerForCausalLM`] (research `VariableMemoryTransformer` / `ObjectiveMemoryTransformer`): a
  causal LM whose context is cut into chunks; every finished chunk is encoded into one vector that later chunks read
  from memory slots in front of their tokens.

Same numerics as the research models (Llama decoder layers of transformers, causal SDPA, positions 0..S-1 per pass).
Differences, all deliberate:

* the research `AbbreviatedModel` indexes `[0]` on each layer's output, which slices the BATCH on transformers 5; here
  an encoder or decoder is a plain stack of the first `num_hidden_layers` Llama layers, with or without the final norm;
* unused research tensors (the AbbreviatedModel's `embed_tokens`/`norm`, layers beyond its depth, the memory
  transformer's `encoder.embed_tokens`) are dropped at conversion;
* the memory transformer accepts any length up to `num_chunks * chunk_length` (the last chunk may be partial),
  returns one logit row per input token, honours left/right padding exactly (each row as if run alone) and decodes
  incrementally with [`VariableMemoryTransformerCache`]; the research attention mask had the wrong length.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaConfig
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.utils import can_return_tuple, logging

from ..configuration.configuration_memory_transformer import (
    TransformerAutoencoderConfig,
    VariableMemoryTransformerConfig,
)
from .zoo_attention import recorded_weights
from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooCausalLMOutput, cache_argument
from .zoo_compression import (
    AutoencoderOutput,
    attentions_requested,
    cached_pass_weights,
    chunk_pieces,
    chunked_causal_loss,
    memory_slots,
    parallel_pass_weights,
    require_input_ids,
    unroll_memory,
)
from .zoo_forward import kept_positions, resolve_cache
from .zoo_rollback import RollbackMixin

logger = logging.get_logger(__name__)


class MemoryTransformerStack(nn.Module):
    """A causal stack of Llama decoder layers fed with embeddings (research `AbbreviatedModel` / `LlamaModel` body).

    Positions are `past_length .. past_length + S - 1`. `norm` is the final RMSNorm, or None where the research model
    did not apply it (`AbbreviatedModel`). Key/values go to `cache` layers `0 .. num_hidden_layers - 1`.
    """

    def __init__(self, config: LlamaConfig, final_norm: bool):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps) if final_norm else None
        self.rotary_emb = LlamaRotaryEmbedding(config=config)

    def _causal_mask(self, length: int, past_length: int, reference: torch.Tensor) -> torch.Tensor | None:
        """None where SDPA's own causal flag is exact (no past, or one query); else an additive bottom-right mask."""
        # Without an implementation set, transformers' Llama attention falls back to eager, which needs the mask.
        sdpa = self.config._attn_implementation == "sdpa"
        if sdpa and (past_length == 0 or length == 1):
            return None
        total = past_length + length
        visible = torch.ones(length, total, dtype=torch.bool, device=reference.device).tril(past_length)
        mask = torch.zeros(length, total, dtype=reference.dtype, device=reference.device)
        return mask.masked_fill(~visible, torch.finfo(reference.dtype).min)[None, None]

    def forward(
        self,
        hidden_states: torch.Tensor,
        past_length: int = 0,
        cache: Cache | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run `hidden_states [B, S, D]`; returns the output and, if asked, the input plus every layer's output (the
        last one after the final norm, where there is one)."""
        length = hidden_states.shape[1]
        position_ids = torch.arange(past_length, past_length + length, device=hidden_states.device)[None]
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        mask = self._causal_mask(length, past_length, hidden_states)
        all_hidden = [hidden_states] if output_hidden_states else None
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask=mask, position_ids=position_ids,
                                  position_embeddings=position_embeddings, **cache_argument(cache))
            if output_hidden_states:
                all_hidden.append(hidden_states)
        if self.norm is not None:
            hidden_states = self.norm(hidden_states)
            if output_hidden_states:
                all_hidden[-1] = hidden_states
        return hidden_states, tuple(all_hidden) if output_hidden_states else None


class MemoryTransformerPreTrainedModel(ZooPreTrainedModel):
    """Initialisation, checkpoint loading and remote-code export shared by the transformer compression models.

    Init (per module, as transformers 5 calls it): linear and embedding weights N(0, `initializer_range`), biases
    zero, RMSNorm weights one, rotary frequencies recomputed from each stack's Llama config.
    """

    config_class = VariableMemoryTransformerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    # Masks are built here for SDPA and eager attention only (flash kernels would need their own padding handling).
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False

    def __init__(self, config, *args, **kwargs):
        super().__init__(config, *args, **kwargs)
        # PreTrainedModel resolves the attention implementation of the top-level config only; the Llama stacks read
        # their sub-configs, so hand it down where the sub-config has none of its own.
        for sub_config in (self.config.encoder_config, self.config.decoder_config):
            if sub_config is not None and sub_config._attn_implementation is None:
                sub_config._attn_implementation_internal = self.config._attn_implementation

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, LlamaRMSNorm):
            init.ones_(module.weight)
        else:  # the rotary frequencies: non-persistent buffers, recomputed from each stack's Llama config
            super()._init_weights(module)


def _too_long(owner: str, limit: int, needed: int, field: str, fix: str) -> ValueError:
    return ValueError(f"{owner} reads at most {limit} tokens ({field}) but got {needed}. {fix}")


class TransformerAutoencoderModel(MemoryTransformerPreTrainedModel):
    """Transformer autoencoder: a window of tokens -> one memory vector -> reconstruction logits for every position.

    `encode(input_ids)` gives the memory (the bottleneck code when `compression > 1`), `decode(memory)` the logits,
    and `forward` both, plus the research reconstruction loss (cross-entropy over all positions, no shift).
    """

    config_class = TransformerAutoencoderConfig
    _auto_map_classes = {"AutoModel": "TransformerAutoencoderModel"}
    # The loss is a mean of the model's own (research) form and ignores the Trainer's `num_items_in_batch`: the Trainer
    # must then scale it for gradient accumulation and devices itself (else it is multiplied by the world size).
    accepts_loss_kwargs = False

    def __init__(self, config: TransformerAutoencoderConfig):
        super().__init__(config)
        config = self.config
        encoder_width, decoder_width = config.encoder_hidden_size, config.decoder_hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, encoder_width)
        self.encoder = MemoryTransformerStack(config.encoder_config, config.encoder_final_norm)
        self.bridge_proj = nn.Linear(encoder_width, decoder_width) if config.has_bridge else None
        compress = config.compression > 1
        self.down = nn.Linear(encoder_width, config.memory_size) if compress else None
        self.up = nn.Linear(config.memory_size, encoder_width) if compress else None
        unroll = config.decoder_input == "unroll"
        self.projection = nn.Linear(decoder_width // 2, decoder_width) if unroll else None
        self.decoder = MemoryTransformerStack(config.decoder_config, config.decoder_final_norm)
        self.lm_head = nn.Linear(decoder_width, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def _check_input_ids(self, input_ids: torch.LongTensor | None) -> None:
        require_input_ids(self, input_ids)
        window = self.config.window_length
        if input_ids.shape[1] > window:
            raise _too_long(
                type(self).__name__, window, input_ids.shape[1], "config.window_length",
                f"Split the text into windows of {window} tokens (e.g. tokenizer(..., truncation=True, "
                f"max_length={window}), or one window per row) and encode each window separately.",
            )

    def encode(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The memory of each window `[B, memory_size]`: the encoder's output at `config.memory_position` (the last
        position, the only one that has seen the whole window), or its bottleneck code `down(...)` when
        `compression > 1`. See `forward` for `attention_mask`."""
        self._check_input_ids(input_ids)
        self._check_attention_mask(attention_mask)
        if input_ids.shape[1] < -self.config.memory_position:
            raise ValueError(f"config.memory_position={self.config.memory_position} needs windows of at least "
                             f"{-self.config.memory_position} tokens, got {input_ids.shape[1]}.")
        hidden, _ = self.encoder(self.embed_tokens(input_ids))
        memory = hidden[:, self.config.memory_position]
        # contiguous: a code is often stored (safetensors refuses strided views)
        return self.down(memory) if self.down is not None else memory.contiguous()

    def _decode(self, memory: torch.Tensor, length: int, output_hidden_states: bool):
        if memory.dim() != 2 or memory.shape[-1] != self.config.memory_size:
            raise ValueError(f"memory must be [batch, {self.config.memory_size}] (what encode returns), "
                             f"got {tuple(memory.shape)}.")
        if not 1 <= length <= self.config.window_length:
            raise ValueError(f"length must be between 1 and config.window_length={self.config.window_length}, "
                             f"got {length}.")
        if self.up is not None:
            memory = self.up(memory)
        if self.bridge_proj is not None:
            memory = self.bridge_proj(memory)
        if self.projection is not None:
            rows = self.projection(unroll_memory(memory, length))
        else:
            rows = memory[:, None, :].expand(-1, length, -1)
        hidden, all_hidden = self.decoder(rows, output_hidden_states=output_hidden_states)
        return self.lm_head(hidden), all_hidden

    def decode(self, memory: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Reconstruction logits `[B, length, V]` from `memory [B, memory_size]` (what `encode` returns); `length`
        defaults to `config.window_length`. The decoder is causal: a shorter `length` gives the first rows."""
        return self._decode(memory, length or self.config.window_length, False)[0]

    def _check_attention_mask(self, attention_mask: torch.Tensor | None) -> None:
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            # The research models were trained on padded windows with the padding as ordinary tokens (no mask);
            # masking it would compute a different model.
            logger.warning_once(
                "TransformerAutoencoderModel reads every position of its window, padding included, as the research "
                "model was trained (left-padded windows, no attention mask); attention_mask zeros are not applied. "
                "Set the labels of padding positions to -100 to leave them out of the loss."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        **kwargs,
    ) -> AutoencoderOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `[batch, seq_len]`): one window per row, `seq_len <=
            config.window_length`. A shorter window is encoded from its own last token and reconstructed at `seq_len`
            positions.
        attention_mask (`torch.Tensor`, *optional*): accepted for API compatibility; the window is always read whole
            (the research model attends to padding as ordinary tokens), with a warning when it holds zeros.
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): reconstruction targets, normally
            `input_ids`; NOT shifted (position `t` reconstructs token `t`); `-100` is ignored.
        output_hidden_states (`bool`, *optional*): return the decoder's input and per-layer hidden states.
        """
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        memory = self.encode(input_ids, attention_mask)
        logits, hidden_states = self._decode(memory, input_ids.shape[1], output_hidden_states)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}.")
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                                   ignore_index=-100)
        return AutoencoderOutput(loss=loss, logits=logits, memory=memory, hidden_states=hidden_states)


class VariableMemoryTransformerCache(RollbackMixin, DynamicCache):
    """Decoding state of a [`VariableMemoryTransformerForCausalLM`], all in [`DynamicLayer`]s (batch first), so that
    beam-search reordering, batch repetition and selection work unchanged:

    * layers `0 .. num_decoder_layers - 1`: the decoder's keys/values of the CURRENT chunk's pass (its memory slots and
      the chunk's tokens so far); they start afresh at every chunk boundary;
    * `memory_layer`: the memories of the finished chunks, `keys [B, 1, k, decoder width]`, each computed once;
    * `pending_layer`: the encoder input embeddings of the current chunk's tokens `keys [B, 1, t, encoder width]`,
      encoded into its memory once the chunk is complete and the next token arrives.

    `get_seq_length()` is the number of tokens seen. A memory cannot be taken back once computed: assisted decoding
    takes tokens back by snapshot and replay ([`RollbackMixin`]).
    """

    def __init__(self, config: VariableMemoryTransformerConfig):
        self.num_decoder_layers = config.decoder_config.num_hidden_layers
        Cache.__init__(self, layers=[DynamicLayer() for _ in range(self.num_decoder_layers + 2)])
        self.seen_tokens = 0

    @property
    def memory_layer(self) -> DynamicLayer:
        return self.layers[self.num_decoder_layers]

    @property
    def pending_layer(self) -> DynamicLayer:
        return self.layers[self.num_decoder_layers + 1]

    @staticmethod
    def _read(layer: DynamicLayer) -> torch.Tensor | None:
        return layer.keys[:, 0] if layer.get_seq_length() > 0 else None

    @staticmethod
    def _append(layer: DynamicLayer, states: torch.Tensor) -> None:
        states = states[:, None]
        layer.update(states, states.new_zeros(*states.shape[:-1], 0))

    def memories(self) -> torch.Tensor | None:
        """Memories of the finished chunks `[B, k, decoder width]`, or None before the first is computed."""
        return self._read(self.memory_layer)

    def add_memory(self, memory: torch.Tensor) -> None:
        self._append(self.memory_layer, memory[:, None])

    def pending(self) -> torch.Tensor | None:
        """Encoder input embeddings of the current chunk's tokens `[B, t, encoder width]`."""
        return self._read(self.pending_layer)

    def add_pending(self, embeddings: torch.Tensor) -> None:
        self._append(self.pending_layer, embeddings)

    def start_chunk(self) -> None:
        """Forget the decoder keys/values and the pending embeddings of the previous chunk."""
        for layer in self.layers[: self.num_decoder_layers]:
            layer.reset()
        self.pending_layer.reset()

    def decoder_length(self) -> int:
        """Positions (memory slots and tokens) in the decoder's key/value cache of the current chunk."""
        return self.layers[0].get_seq_length() if self.num_decoder_layers else 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    def reset(self) -> None:
        super().reset()
        self.seen_tokens = 0


class VariableMemoryTransformerForCausalLM(MemoryTransformerPreTrainedModel, GenerationMixin):
    """Variable-memory transformer: a causal LM whose finished chunks are encoded into memory vectors read by later
    chunks (see [`VariableMemoryTransformerConfig`] for the layout). Loss: the research per-chunk next-token loss."""

    config_class = VariableMemoryTransformerConfig
    _auto_map_classes = {"AutoModel": "VariableMemoryTransformerForCausalLM",
                         "AutoModelForCausalLM": "VariableMemoryTransformerForCausalLM"}
    _tied_weights_keys = {"lm_head.weight": "embed_tokens.weight"}
    _cache_class = VariableMemoryTransformerCache
    # The loss is a mean of the model's own (research) form and ignores the Trainer's `num_items_in_batch`: the Trainer
    # must then scale it for gradient accumulation and devices itself (else it is multiplied by the world size).
    accepts_loss_kwargs = False

    def __init__(self, config: VariableMemoryTransformerConfig):
        super().__init__(config)
        config = self.config
        decoder_width = config.decoder_hidden_size
        self.encoder_embed_tokens = self.encoder = self.down = self.up = self.decoder_proj = None
        if not config.no_memory:
            encoder_width = config.encoder_hidden_size
            self.encoder_embed_tokens = nn.Embedding(config.vocab_size, encoder_width)
            self.encoder = MemoryTransformerStack(config.encoder_config, config.encoder_final_norm)
            if config.compression > 1:
                self.down = nn.Linear(encoder_width, config.memory_size)
                self.up = nn.Linear(config.memory_size, encoder_width)
            if encoder_width != decoder_width:
                self.decoder_proj = nn.Linear(encoder_width, decoder_width)
        self.embed_tokens = nn.Embedding(config.vocab_size, decoder_width)
        self.decoder = MemoryTransformerStack(config.decoder_config, config.decoder_final_norm)
        self.lm_head = nn.Linear(decoder_width, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    # ----------------------------------------------------------------------------------------------------------------
    # memories

    def _stores_memory(self, chunk: int) -> bool:
        """Whether chunk `chunk` is ever encoded: every chunk but the last one of a full context (research)."""
        return not self.config.no_memory and chunk < self.config.num_chunks - 1

    def memory_from_embeddings(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Memories `[N, decoder width]` of complete chunks given as encoder input embeddings `[N, chunk_length, De]`:
        the encoder's output at `config.memory_position`, then `down`/`up` and `decoder_proj` where present."""
        hidden, _ = self.encoder(embeddings)
        memory = hidden[:, self.config.memory_position]
        if self.down is not None:
            memory = self.up(self.down(memory))
        return self.decoder_proj(memory) if self.decoder_proj is not None else memory

    def encode_chunks(self, chunk_ids: torch.LongTensor) -> torch.Tensor:
        """Memories `[B, K, decoder width]` of complete chunks `chunk_ids [B, K, chunk_length]`."""
        batch, chunks, length = chunk_ids.shape
        embeddings = self.encoder_embed_tokens(chunk_ids.reshape(batch * chunks, length))
        return self.memory_from_embeddings(embeddings).view(batch, chunks, -1)

    def _slots(self, chunk: int) -> int:
        return self.config.num_chunks if self.config.fixed_memory else chunk

    # ----------------------------------------------------------------------------------------------------------------
    # the two ways through the model

    def _forward_parallel(self, input_ids: torch.LongTensor, output_hidden_states: bool):
        """All chunks at once (training and uncached calls): one encoder batch for the memories, one decoder batch for
        the chunk passes. Returns the decoder outputs at the token positions `[B, T, D]` (and per-layer states)."""
        batch, total = input_ids.shape
        length = self.config.chunk_length
        chunks = -(-total // length)
        # The last chunk is right-padded to a full chunk: every pass is causal, so padding after a token never
        # reaches it, and the padded rows are cut off below.
        padded = F.pad(input_ids, (0, chunks * length - total)).view(batch, chunks, length)
        tokens = self.embed_tokens(padded)
        memories = self.encode_chunks(padded[:, : chunks - 1]) if chunks > 1 and not self.config.no_memory else None
        slots = [self._slots(c) for c in range(chunks)]
        width = max(slots) + length
        passes = []
        for c in range(chunks):
            done = memories[:, :c] if memories is not None and c > 0 else None
            x = torch.cat([memory_slots(done, slots[c], self.config.memory_fill_value, tokens[:, c]), tokens[:, c]], 1)
            passes.append(F.pad(x, (0, 0, 0, width - x.shape[1])))  # variable memory: right-pad shorter passes
        hidden, all_hidden = self.decoder(torch.stack(passes, 1).view(batch * chunks, width, -1),
                                          output_hidden_states=output_hidden_states)
        index = (torch.tensor(slots, device=input_ids.device)[:, None]
                 + torch.arange(length, device=input_ids.device)[None, :])  # [chunks, length]

        def tokens_only(states: torch.Tensor) -> torch.Tensor:
            states = states.view(batch, chunks, width, -1)
            states = states.gather(2, index[None, :, :, None].expand(batch, -1, -1, states.shape[-1]))
            return states.reshape(batch, chunks * length, -1)[:, :total]

        return tokens_only(hidden), tuple(tokens_only(h) for h in all_hidden) if all_hidden else None

    def _forward_cached(self, input_ids: torch.LongTensor, cache: VariableMemoryTransformerCache,
                        output_hidden_states: bool):
        """Tokens after the `cache.seen_tokens` already seen: chunk by chunk, with the decoder's key/value cache within
        a chunk. At a chunk boundary the finished chunk is encoded once and the decoder pass starts afresh."""
        config, length = self.config, self.config.chunk_length
        past = cache.seen_tokens
        end = past + input_ids.shape[1]
        outputs, per_layer = [], []
        position = past
        while position < end:
            chunk, offset = divmod(position, length)
            stop = min((chunk + 1) * length, end)
            segment = input_ids[:, position - past: stop - past]
            tokens = self.embed_tokens(segment)
            if offset == 0:
                if chunk > 0 and self._stores_memory(chunk - 1):
                    cache.add_memory(self.memory_from_embeddings(cache.pending()))
                cache.start_chunk()
                slots = memory_slots(cache.memories(), self._slots(chunk), config.memory_fill_value, tokens)
                x, start = torch.cat([slots, tokens], 1), 0
            else:
                x, start = tokens, cache.decoder_length()
            hidden, all_hidden = self.decoder(x, past_length=start, cache=cache,
                                              output_hidden_states=output_hidden_states)
            outputs.append(hidden[:, -segment.shape[1]:])
            if all_hidden:
                per_layer.append([h[:, -segment.shape[1]:] for h in all_hidden])
            if self._stores_memory(chunk):
                cache.add_pending(self.encoder_embed_tokens(segment))
            position = stop
        cache.seen_tokens = end
        hidden_states = tuple(torch.cat(layer, 1) for layer in zip(*per_layer, strict=True)) if per_layer else None
        return torch.cat(outputs, 1), hidden_states

    # ----------------------------------------------------------------------------------------------------------------
    # attentions: each token's weights over its chunk's decoder pass (memory slots, then the chunk's tokens)

    def _attention_width(self) -> int:
        """Keys of the attention maps returned: the widest decoder pass (most memory slots plus a chunk)."""
        return max(self._slots(chunk) for chunk in range(self.config.num_chunks)) + self.config.chunk_length

    @contextmanager
    def _recorded_decoder_attentions(self, enabled: bool) -> Iterator[list[torch.Tensor] | None]:
        """Record the decoder layers' attention weights; SDPA returns none, so eager attention runs meanwhile."""
        if not enabled:
            yield None
            return
        config = self.config.decoder_config
        saved = config._attn_implementation_internal
        config._attn_implementation_internal = "eager"
        try:
            with recorded_weights([layer.self_attn for layer in self.decoder.layers], True) as recorded:
                yield recorded
        finally:
            config._attn_implementation_internal = saved

    def _parallel_attentions(self, recorded: list[torch.Tensor], shape: torch.Size) -> tuple[torch.Tensor, ...]:
        batch, total = shape
        chunks = -(-total // self.config.chunk_length)
        return parallel_pass_weights(recorded, batch, total, self.config.chunk_length,
                                     [self._slots(c) for c in range(chunks)], self._attention_width())

    def _cached_attentions(self, recorded: list[torch.Tensor], past: int, new_tokens: int) -> tuple[torch.Tensor, ...]:
        return cached_pass_weights(recorded, len(self.decoder.layers),
                                   chunk_pieces(past, new_tokens, self.config.chunk_length), self._attention_width())

    @staticmethod
    def _row_starts(attention_mask: torch.Tensor, length: int) -> torch.Tensor | None:
        """Offset of each row's first real token, for a mask whose ones are one contiguous run per row (left and/or
        right padding); None when no row is left-padded."""
        if attention_mask.dim() != 2 or attention_mask.shape[-1] != length:
            raise ValueError(f"attention_mask must be [batch, seq_len] = [*, {length}] (a 2-D 0/1 mask over the "
                             f"input tokens), got {tuple(attention_mask.shape)}.")
        mask = attention_mask.bool()
        if bool(mask.all()):
            return None
        starts = mask.long().argmax(-1)
        positions = torch.arange(length, device=mask.device)[None]
        run = (positions >= starts[:, None]) & (positions < (starts + mask.sum(-1))[:, None])
        if not torch.equal(run, mask):
            raise ValueError(
                "attention_mask must mark one contiguous run of real tokens per row (left and/or right padding). "
                "Packed rows with padding in between cannot be chunked the way the model was trained; pass one "
                "sequence per row."
            )
        return starts if bool(starts.any()) else None

    @staticmethod
    def _rotate(x: torch.Tensor, starts: torch.Tensor, inverse: bool = False) -> torch.Tensor:
        """Rotate every row of `x [B, T, ...]` left by its start offset (inverse: right), along dim 1."""
        positions = torch.arange(x.shape[1], device=x.device)[None]
        index = (positions - starts[:, None] if inverse else positions + starts[:, None]) % x.shape[1]
        index = index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x)
        return x.gather(1, index)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, *args,
                                      attention_mask: torch.Tensor | None = None,
                                      cache: VariableMemoryTransformerCache | None = None, **kwargs) -> dict:
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            # Padded rows keep no cache (their chunk boundaries fall at different steps): every step runs the whole
            # sequence on the exact per-row path, as forward(use_cache=False) does, instead of refusing the batch.
            return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
        return super().prepare_inputs_for_generation(input_ids, *args, attention_mask=attention_mask,
                                                     **cache_argument(cache), **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: VariableMemoryTransformerCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ZooCausalLMOutput:
        r"""
        input_ids (`torch.LongTensor` of shape `[batch, seq_len]`): at most `num_chunks * chunk_length` tokens in
            all (cached and new); chunk boundaries are counted from the first token.
        attention_mask (`torch.Tensor`, *optional*): 0/1 mask. Without a cache, each row's real tokens must form one
            contiguous run (left and/or right padding): every row is computed exactly as if run alone (its first real
            token starts chunk 0) and padding positions get meaningless logits. With a cache it must be all ones.
        cache ([`VariableMemoryTransformerCache`], *optional*): state of the tokens seen so far.
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): targets, shifted INSIDE each chunk as in
            the research code (position `t` predicts `labels[t + 1]`; a chunk's last token predicts nothing): the
            mean of each chunk's targets, summed over chunks and divided by `num_chunks` (chunks without targets, or
            beyond a shorter input, count as zero, as in the research); `-100` is ignored. Only with the sequence's
            first token (no filled cache).
        use_cache (`bool`, *optional*): defaults to `config.use_cache` in eval mode and to False in training (the
            parallel path computes all chunks at once).
        output_hidden_states (`bool`, *optional*): the decoder's input and per-layer states at the token positions.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `n` positions (0 = all), or for the
            given position indices.
        """
        require_input_ids(self, input_ids, inputs_embeds)
        output_attentions = attentions_requested(self, kwargs)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        if use_cache is None and cache is None and self.training:
            use_cache = False
        cache = resolve_cache(self, cache, use_cache, "the chunk memories")
        past = cache.seen_tokens if cache is not None else 0
        limit = self.config.context_length
        if past + input_ids.shape[1] > limit:
            raise _too_long(
                type(self).__name__, limit, past + input_ids.shape[1],
                f"config.num_chunks * config.chunk_length = {self.config.num_chunks} * {self.config.chunk_length}",
                f"Truncate the input to {limit} tokens, and keep prompt length + max_new_tokens <= {limit} when "
                "generating.",
            )
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, "
                                 f"got {tuple(labels.shape)}.")
            if past:
                raise ValueError("labels need the whole sequence from its first token (the loss is computed per "
                                 "chunk); call without a filled cache.")

        starts = None
        if cache is not None:
            if attention_mask is not None and not bool(attention_mask.bool().all()):
                raise ValueError(
                    "VariableMemoryTransformerForCausalLM keeps no cache for padded rows: their chunk boundaries "
                    "would fall at different steps. Use use_cache=False for padded batches (exact, each row as if "
                    "alone), or generate one sequence (or equal-length prompts) at a time."
                )
            past = cache.seen_tokens
            with self._recorded_decoder_attentions(output_attentions) as recorded:
                hidden, all_hidden = self._forward_cached(input_ids, cache, output_hidden_states)
            attentions = self._cached_attentions(recorded, past, input_ids.shape[1]) if output_attentions else None
        else:
            if attention_mask is not None:
                starts = self._row_starts(attention_mask, input_ids.shape[1])
            ids = self._rotate(input_ids, starts) if starts is not None else input_ids
            with self._recorded_decoder_attentions(output_attentions) as recorded:
                hidden, all_hidden = self._forward_parallel(ids, output_hidden_states)
            attentions = self._parallel_attentions(recorded, ids.shape) if output_attentions else None

        loss = None
        if labels is not None:
            targets = self._rotate(labels, starts) if starts is not None else labels
            length = self.config.chunk_length
            loss = chunked_causal_loss(self.lm_head(hidden), targets.to(hidden.device), length, self.config.num_chunks)
        if starts is not None:  # back to the caller's layout
            hidden = self._rotate(hidden, starts, inverse=True)
            all_hidden = tuple(self._rotate(h, starts, inverse=True) for h in all_hidden) if all_hidden else None
            if attentions is not None:
                attentions = tuple(self._rotate(a.transpose(1, 2), starts, inverse=True).transpose(1, 2)
                                   for a in attentions)
        logits = self.lm_head(kept_positions(hidden, logits_to_keep))
        return ZooCausalLMOutput(loss=loss, logits=logits, cache=cache, hidden_states=all_hidden,
                                 attentions=attentions)


__all__ = [
    "MemoryTransformerPreTrainedModel",
    "MemoryTransformerStack",
    "TransformerAutoencoderModel",
    "VariableMemoryTransformerCache",
    "VariableMemoryTransformerForCausalLM",
]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooCausalLMForSequenceClassification  # noqa: E402


class VariableMemoryTransformerForSequenceClassification(
    ZooCausalLMForSequenceClassification, VariableMemoryTransformerForCausalLM
):
    """Variable-memory transformer with a sequence-classification head, as transformers'
    `LlamaForSequenceClassification`.

    The causal LM without its `lm_head`: a bias-free `score` head reads the decoder's final hidden states (each chunk
    decoded from the memories of the chunks before it), and each row is classified at its last token that is not
    `config.pad_token_id`, with transformers' loss for `config.problem_type` (see `zoo_classification`). Right- and
    left-padded batches (with their `attention_mask`) give every row what it gives alone (the classifier runs without
    a cache by default, the path that handles padded rows); rows hold at most `num_chunks * chunk_length` tokens. A
    causal-LM checkpoint loads into it (`from_pretrained(folder, num_labels=N)`): encoder and decoder are kept,
    `score` starts random.
    """


# Every saved variable-memory transformer names its classifier in auto_map, so that a causal-LM folder or Hub
# repository fine-tunes into a classifier with trust_remote_code=True where memory-zoo is not installed.
VariableMemoryTransformerForCausalLM._auto_map_classes["AutoModelForSequenceClassification"] = (
    "VariableMemoryTransformerForSequenceClassification"
)
__all__.append("VariableMemoryTransformerForSequenceClassification")
