"""PyTorch Masked Mixer: causal language model whose attention is a learned, masked position-mixing matrix.

Research code: blbadger/maskedmixers (`mixer_lm/`). Differences from it, all deliberate:

* the causal mask is applied functionally in every forward (the research code overwrote its parameters with
  `tril(W)` in place, so its checkpoints are not triangular and its forward was impure);
* inputs shorter than the context use the leading `T x T` block of every mixing matrix (exactly the first `T`
  outputs of a right-padded full-length run); longer inputs raise a clear error;
* incremental decoding with [`MaskedMixerCache`]: the mixing is linear in past positions, so caching every
  block's mixing inputs makes a new token cost one matrix row per block instead of a full re-run;
* left-padded batches are supported exactly: every row is re-based so its first real token is at position 0;
* `embed(...)` returns one vector per text at the research retrieval position (see `zoo_embedding.py`), and every
  saved model folder is also a sentence-transformers model whose `encode` calls that same method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import can_return_tuple, logging

from ..configuration.configuration_masked_mixer import MaskedMixerConfig
from ..ops.masked_mixing import masked_mixing, tril_matmul
from .zoo_attention import recorded_weights
from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooCausalLMOutput, ZooModelOutput
from .zoo_embedding import EmbeddingMixin
from .zoo_forward import embed_inputs, kept_positions, resolve_cache

logger = logging.get_logger(__name__)


class MaskedMixerCacheLayer(DynamicLayer):
    """Decoding state of one mixer block.

    The token mixing is linear in the past positions, so the only state needed to process a new token is the
    mixing input of every past position. It is stored in [`DynamicLayer`]'s layout `[batch, heads, seq, features]`
    so that beam-search reordering, cropping (assisted decoding), batch selection and offloading work unchanged:
    `keys` hold the mixing inputs (normalised, projected block inputs) and `values` the GELU hidden states of the
    expanded mixing (zero features for the plain mixing).
    """

    @property
    def mixing_inputs(self) -> torch.Tensor | None:
        return self.keys

    @property
    def expanded_hidden(self) -> torch.Tensor | None:
        return self.values


class MaskedMixerCache(DynamicCache):
    """Cache of a [`MaskedMixerForCausalLM`]: one [`MaskedMixerCacheLayer`] per block.

    Memory per sequence is `num_hidden_layers * seq * num_mixing_heads * mixing_width` values (half of a
    same-width transformer's key/value cache, plus as much again for the expanded mixing).
    """

    def __init__(self, config: MaskedMixerConfig):
        Cache.__init__(self, layers=[MaskedMixerCacheLayer() for _ in range(config.num_hidden_layers)])
        # Set once a padded (re-based) batch went through: later calls then need the full attention mask.
        self.is_padded = False

    def reset(self) -> None:
        super().reset()
        self.is_padded = False


@dataclass
class MixingPositions:
    """Where the queried tokens sit in the mixing matrices.

    Unpadded batches only need `past_length` (the queries are rows `past_length ... past_length + T - 1` and every
    key before them is real). Padded batches give every row its own positions: `query_positions [B, Tq]`,
    `key_positions [B, Tk]` and `key_valid [B, Tk]` (False for padding, which is then never mixed in).
    """

    past_length: int
    query_positions: torch.Tensor | None = None
    key_positions: torch.Tensor | None = None
    key_valid: torch.Tensor | None = None


class MaskedMixerPositionMixing(nn.Module):
    """`num_heads` learned `L x L` matrices mixing token positions causally, with one bias per output position.

    Research equivalent: `nn.Conv1d(L, L, kernel_size=K, padding="same")` on `[B, T, D]` activations with `tril`
    applied to its weight: the token axis is the conv's channel axis, so the kernel slides along the *feature*
    axis. With `K = 1` (`weight [H, L, L]`, `weight[h, t, s] = conv.weight[t, s, 0]`) a position mixes its
    predecessors' features one to one; with `K > 1` (`weight [H, K, L, L]`, `weight[h, k] = conv.weight[..., k]`)
    tap `k` reads the features shifted by `k - (K - 1) // 2`, zero beyond the edges ("same" padding puts the
    extra zero of an even kernel on the right).
    """

    def __init__(self, num_heads: int, length: int, bias: bool = True, softmax: bool = False,
                 kernel: tuple[str | None, str | None] | None = None, kernel_size: int = 1):
        super().__init__()
        taps = () if kernel_size == 1 else (kernel_size,)
        self.weight = nn.Parameter(torch.empty(num_heads, *taps, length, length))
        self.bias = nn.Parameter(torch.empty(num_heads, length)) if bias else None
        self.softmax = softmax
        self.kernel_size = kernel_size
        # (Hub repo id, revision) of the `masked_mixing` kernel, or None to always use the pure-torch path. The
        # kernel computes one tap; feature-axis kernels (K > 1) always take the pure-torch path.
        self.kernel = kernel if kernel_size == 1 else None

    def effective_weight(self) -> torch.Tensor:
        """The matrices as the model uses them (entries above the diagonal are masked out later)."""
        if not self.softmax:
            return self.weight
        # Research quirk (see MaskedMixerConfig.mixing_softmax): softmax down each input column over *all* output
        # rows, including the masked zeros; computed in float32 for stability in half precision.
        weight = torch.softmax(torch.tril(self.weight.float()), dim=-2)
        return torch.tril(weight).to(self.weight.dtype)

    def _taps(self, inputs: torch.Tensor) -> torch.Tensor:
        """`inputs [B, H, T, d]` shifted along the features once per tap: `[B, H, K, T, d]`."""
        left = (self.kernel_size - 1) // 2
        padded = F.pad(inputs, (left, self.kernel_size - 1 - left))
        width = inputs.shape[-1]
        return torch.stack([padded[..., k:k + width] for k in range(self.kernel_size)], dim=2)

    def forward(self, inputs: torch.Tensor, positions: MixingPositions) -> torch.Tensor:
        """Mix `inputs [B, H, Tk, d]` (all positions so far) into outputs `[B, H, Tq, d]` for the newest `Tq` rows."""
        weight = self.effective_weight()
        key_length = inputs.shape[-2]
        taps = self.kernel_size > 1
        values = self._taps(inputs) if taps else inputs
        if positions.query_positions is None:
            start = positions.past_length
            rows = weight[..., start:key_length, :key_length]
            bias = self.bias[:, start:key_length] if self.bias is not None else None
            if not taps:
                return masked_mixing(rows, inputs, bias, start, self.kernel)
            out = tril_matmul(rows, values, start).sum(2)  # K taps: no kernel covers them
            return out + bias[..., None] if bias is not None else out
        query, key = positions.query_positions, positions.key_positions
        rows = weight[..., query[:, :, None], key[:, None, :]]  # [H, (K,) B, Tq, Tk]
        rows = rows.movedim(-3, 0)  # [B, H, (K,) Tq, Tk]
        visible = (key[:, None, :] <= query[:, :, None]) & positions.key_valid[:, None, :]
        visible = visible[:, None, None] if taps else visible[:, None]
        out = torch.matmul(rows * visible.to(rows.dtype), values)
        out = out.sum(2) if taps else out
        if self.bias is not None:
            out = out + self.bias[:, query].transpose(0, 1)[..., None]
        return out


    def mixing_weights(self, positions: MixingPositions, key_length: int, batch: int) -> torch.Tensor:
        """The matrix `forward` applies to the call: `[B, H, Tq, Tk]` (`[B, H * K, Tq, Tk]` with `K` feature-axis taps,
        tap-major within each head), zero where a query may not read a key (later positions, padding)."""
        weight = self.effective_weight()
        taps = self.kernel_size > 1
        if positions.query_positions is None:
            start = positions.past_length
            rows = torch.tril(weight[..., start:key_length, :key_length], diagonal=start)
            rows = rows[None].expand(batch, *rows.shape)
        else:
            query, key = positions.query_positions, positions.key_positions
            rows = weight[..., query[:, :, None], key[:, None, :]].movedim(-3, 0)
            visible = (key[:, None, :] <= query[:, :, None]) & positions.key_valid[:, None, :]
            rows = rows * (visible[:, None, None] if taps else visible[:, None]).to(rows.dtype)
        return rows.flatten(1, 2) if taps else rows


class MaskedMixerTokenMixer(nn.Module):
    """The token-mixing branch of a block (the part that replaces attention)."""

    def __init__(self, config: MaskedMixerConfig):
        super().__init__()
        self.num_heads = config.num_mixing_heads
        self.head_dim = config.mixing_width
        width = self.num_heads * self.head_dim
        self.in_proj = nn.Linear(config.hidden_size, width) if config.mixing_head_dim is not None else None
        length = config.max_position_embeddings
        kernel = (config.kernel_repo_id, config.kernel_revision) if config.use_kernels else None
        self.mix = MaskedMixerPositionMixing(self.num_heads, length, config.mixing_bias, config.mixing_softmax, kernel,
                                             config.mixing_kernel_size)
        self.mix_out = (
            MaskedMixerPositionMixing(self.num_heads, length, config.mixing_bias, kernel=kernel)
            if config.mixing_expanded else None
        )
        self.act = nn.GELU() if config.mixing_expanded else None
        self.out_proj = nn.Linear(width, config.hidden_size) if config.mixing_out_proj else None

    def forward(
        self, hidden_states: torch.Tensor, positions: MixingPositions, cache_layer: MaskedMixerCacheLayer | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mixed tokens and, with `output_attentions`, the mixing matrices applied (see
        `MaskedMixerPositionMixing.mixing_weights`; with the expanded mixing, the output mixing's heads follow)."""
        batch, length, _ = hidden_states.shape
        inputs = self.in_proj(hidden_states) if self.in_proj is not None else hidden_states
        inputs = inputs.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)
        has_past = cache_layer is not None and cache_layer.get_seq_length() > 0
        if cache_layer is not None and self.mix_out is None:
            # The plain mixing stores no hidden states (zero features): store the inputs first and mix what the cache
            # returns, one copy of the past per step instead of two.
            all_inputs, _ = cache_layer.update(inputs, inputs[..., :0])
        else:
            all_inputs = torch.cat([cache_layer.mixing_inputs, inputs], dim=-2) if has_past else inputs
        mixed = self.mix(all_inputs, positions)
        weights = None
        if output_attentions:
            weights = self.mix.mixing_weights(positions, all_inputs.shape[-2], batch)
            if self.mix_out is not None:
                weights = torch.cat([weights, self.mix_out.mixing_weights(positions, all_inputs.shape[-2], batch)], 1)
        hidden = mixed[..., :0]
        if self.mix_out is not None:
            hidden = self.act(mixed)
            all_hidden = torch.cat([cache_layer.expanded_hidden, hidden], dim=-2) if has_past else hidden
            mixed = self.mix_out(all_hidden, positions)
        if cache_layer is not None and self.mix_out is not None:
            cache_layer.update(inputs, hidden)
        mixed = mixed.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return (self.out_proj(mixed) if self.out_proj is not None else mixed), weights


class MaskedMixerMLP(nn.Module):
    """Per-token channel mixing: `down_proj(act(up_proj(x)))` (research `patch_ff`)."""

    def __init__(self, config: MaskedMixerConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.up_proj(hidden_states)))


class MaskedMixerBlock(GradientCheckpointingLayer):
    """Pre-norm block: token mixing then channel mixing, each with a residual connection."""

    def __init__(self, config: MaskedMixerConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.token_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.token_mixer = MaskedMixerTokenMixer(config)
        self.channel_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MaskedMixerMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, positions: MixingPositions, cache: MaskedMixerCache | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor:
        cache_layer = cache.layers[self.layer_idx] if cache is not None else None
        mixed, _ = self.token_mixer(self.token_norm(hidden_states), positions, cache_layer, output_attentions)
        hidden_states = hidden_states + mixed
        return hidden_states + self.mlp(self.channel_norm(hidden_states))


class MaskedMixerPreTrainedModel(ZooPreTrainedModel):
    """Weight initialisation, checkpoint loading and remote-code export shared by the Masked Mixer models."""

    config_class = MaskedMixerConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MaskedMixerBlock"]
    _auto_map_classes = {"AutoModel": "MaskedMixerModel", "AutoModelForCausalLM": "MaskedMixerForCausalLM"}

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, MaskedMixerPositionMixing):
            # PyTorch's Conv1d default, as in the research code: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and
            # bias, fan_in = L * kernel size.
            bound = 1.0 / math.sqrt(module.weight.shape[-1] * module.kernel_size)
            init.uniform_(module.weight, -bound, bound)
            if module.bias is not None:
                init.uniform_(module.bias, -bound, bound)

    _cache_class = MaskedMixerCache


def _context_error(length: int, needed: int) -> ValueError:
    return ValueError(
        f"This Masked Mixer has a fixed context of {length} positions (config.max_position_embeddings) but the input "
        f"needs {needed}: its mixing matrices have no weights beyond position {length - 1}. Truncate inputs to at most "
        f"{length} tokens (e.g. tokenizer(..., truncation=True, max_length={length})) and keep prompt length + "
        f"max_new_tokens <= {length} when generating."
    )


class MaskedMixerModel(EmbeddingMixin, MaskedMixerPreTrainedModel):
    """The bare Masked Mixer: token embeddings and mixer blocks, returning the last block's hidden states.

    `AutoModel` on any Masked Mixer checkpoint gives this model; `embed(input_ids, attention_mask)` turns the hidden
    states into one retrieval embedding per text.
    """

    # Loading the bare model from a causal-LM checkpoint leaves its head behind, by design.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MaskedMixerConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MaskedMixerBlock(config, i) for i in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False
        self.post_init()

    def _positions(
        self, attention_mask: torch.Tensor | None, past: MaskedMixerCache | None, query_length: int
    ) -> MixingPositions:
        length = self.config.max_position_embeddings
        past_length = past.get_seq_length() if past is not None else 0
        total = past_length + query_length
        mask = attention_mask
        if mask is not None:
            if mask.dim() != 2 or mask.shape[-1] != total:
                raise ValueError(
                    f"attention_mask must have shape [batch, past + new tokens] = [*, {total}] (a 2-D 0/1 mask "
                    f"over the cached and the new tokens), got {tuple(mask.shape)}."
                )
            mask = mask.bool()
            # Ones followed by zeros in every row (no padding, or right padding): padding never precedes a real
            # token, so every row already starts at position 0 and the shared fast path is exact.
            if bool((mask[:, 1:] <= mask[:, :-1]).all()):
                mask = None
        if mask is None:
            if past is not None and past.is_padded:
                raise ValueError(
                    "This cache was filled from a padded batch; pass the full attention_mask (past and new tokens) "
                    "with every later call so each row keeps its own positions."
                )
            if total > length:
                raise _context_error(length, total)
            return MixingPositions(past_length)
        real_tokens = int(mask.sum(-1).max())
        if real_tokens > length:
            raise _context_error(length, real_tokens)
        if past is not None:
            past.is_padded = True
        # Each row is re-based so that its first real token is at position 0, as if it had been run alone.
        key_positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return MixingPositions(past_length, key_positions[:, past_length:], key_positions, mask)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MaskedMixerCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ZooModelOutput:
        r"""
        output_attentions: also return every block's mixing matrices, the masked mixer's counterpart of attention
            weights: `[batch, mixing heads, new tokens, cached + new tokens]`, the (input-independent) learned weight
            of each position pair, zero where a position may not read another (see `MaskedMixerTokenMixer`).
        """
        inputs_embeds = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        cache = resolve_cache(self, cache, use_cache, "the mixer's state")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        positions = self._positions(attention_mask, cache, inputs_embeds.shape[1])
        hidden_states = inputs_embeds
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        with recorded_weights([layer.token_mixer for layer in self.layers], output_attentions) as attentions:
            for layer in self.layers:
                hidden_states = layer(hidden_states, positions, cache=cache, output_attentions=output_attentions)
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
        all_attentions = tuple(attentions) if output_attentions else None
        return ZooModelOutput(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states, attentions=all_attentions
        )


class MaskedMixerForCausalLM(EmbeddingMixin, MaskedMixerPreTrainedModel, GenerationMixin):
    """Masked Mixer with a language-modelling head (no final norm, no bias, as in the research code)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MaskedMixerConfig):
        super().__init__(config)
        self.model = MaskedMixerModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MaskedMixerCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> ZooCausalLMOutput:
        r"""
        labels (`torch.LongTensor` of shape `[batch, seq_len]`, *optional*): targets for the next-token loss; they
            are shifted inside (position `t` predicts `labels[t + 1]`), `-100` is ignored.
        logits_to_keep (`int` or `torch.Tensor`): compute logits only for the last `n` positions (0 = all), or for
            the given position indices.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
        )
        hidden_states = outputs.last_hidden_state
        logits = self.lm_head(kept_positions(hidden_states, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return ZooCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "MaskedMixerCache",
    "MaskedMixerCacheLayer",
    "MaskedMixerForCausalLM",
    "MaskedMixerModel",
    "MaskedMixerPreTrainedModel",
]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooForSequenceClassification  # noqa: E402


class MaskedMixerForSequenceClassification(ZooForSequenceClassification, MaskedMixerPreTrainedModel):
    """Masked Mixer with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    A bias-free `score` head reads the last block's hidden states; each row is classified at its last token that is
    not `config.pad_token_id`, with transformers' loss for `config.problem_type` (see `zoo_classification`). Right-
    and left-padded batches (with their `attention_mask`) give every row what it gives alone. A causal-LM or bare
    checkpoint loads into it (`from_pretrained(folder, num_labels=N)`): the mixer is kept, `score` starts random.
    """

    def __init__(self, config: MaskedMixerConfig):
        super().__init__(config)
        self.model = MaskedMixerModel(config)
        self._add_score(config.hidden_size)
        self.post_init()


# Every saved Masked Mixer names its classifier in auto_map, so that a causal-LM folder or Hub repository fine-tunes
# into a classifier with trust_remote_code=True where memory-zoo is not installed.
MaskedMixerPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = (
    "MaskedMixerForSequenceClassification"
)
__all__.append("MaskedMixerForSequenceClassification")
