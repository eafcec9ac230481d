"""PyTorch Long-Short-Working Transformer (LSWT): a transformer with a Transformer-XL key/value memory.

Research code: Avelina9X/memory-transformer-pt4 (`src/model/`). Same numerics as the research model on GPU (flash
attention semantics: scale `head_dim ** -0.5`, causal mask aligned bottom-right once a cache or registers lengthen the
keys), reversed rotate-half RoPE recomputed from the cached length on every call, raw keys/values cached before
normalisation and rotation and trimmed to `max_key_values` after attention. Differences, all deliberate:

* the cache is a transformers `Cache` ([`LSWTCache`]), so `generate`, beam search and pipelines work under
  transformers 5 (the research code indexed a list of tuples);
* attention runs through SDPA with an explicit bottom-right mask on every device (the research CPU fallback scaled by
  `n_heads ** -0.5`), or a flash-attention Hub kernel on GPUs when it loads;
* `attention_mask` is honoured: padding is never attended to, so left-padded batches work (exactly when the model
  is shift-invariant: no registers, no dynamic RoPE);
* `labels` give the usual shifted next-token loss; frozen embeddings keep the model dtype.
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

from ..configuration.configuration_lswt import LSWTConfig
from ..ops.zoo_kernels import dispatch
from .zoo_attention import attention_with_weights, recorded_weights
from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooCausalLMOutput, ZooModelOutput, answers_to_every_cache_name
from .zoo_forward import embed_inputs, kept_positions, resolve_cache
from .zoo_rollback import RollbackMixin

logger = logging.get_logger(__name__)


class LSWTCacheLayer(DynamicLayer):
    """One block's memory: raw keys and values `[batch, heads, positions, head_dim]` (before q/k normalisation and
    rotation), or, for `recompute_kv` training, the attention inputs `[batch, 1, positions, hidden]` in `keys`."""

    def trim(self, max_positions: int | None) -> None:
        """Keep the last `max_positions` positions (`None` or 0 keeps everything, as in the research code)."""
        if max_positions and self.is_initialized and self.keys.shape[-2] > max_positions:
            self.keys = self.keys[..., -max_positions:, :]
            self.values = self.values[..., -max_positions:, :]


class LSWTCache(RollbackMixin, DynamicCache):
    """Transformer-XL memory of an [`LSWTForCausalLM`]: one [`LSWTCacheLayer`] per block.

    It can be carried from segment to segment (`detach()` it between optimizer steps, as the research training
    does) and is trimmed to `max_key_values` positions after every call.
    """

    def __init__(self, config: LSWTConfig):
        Cache.__init__(self, layers=[LSWTCacheLayer() for _ in range(config.num_hidden_layers)])
        self.holds_states = False  # True for a recompute_kv (training) cache

    def trim(self, max_positions: int | None) -> None:
        for layer in self.layers:
            layer.trim(max_positions)

    def detach(self) -> LSWTCache:
        """Cut the autograd graph (truncated backpropagation through time between segments); returns `self`."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys, layer.values = layer.keys.detach(), layer.values.detach()
        return self

    def reset(self) -> None:
        super().reset()
        self.holds_states = False


@dataclass
class LSWTRotary:
    """Rotary angles `[total, head_dim]` (rotate-half layout) and the YaRN scale of one call."""

    angles: torch.Tensor
    scale: float

    @classmethod
    def for_length(cls, config: LSWTConfig, total: int, device: torch.device) -> LSWTRotary:
        dim = config.head_dim
        ntk, scale = config.rope_ntk_scale, 1.0
        if config.rope_dynamic:
            stretch = max(total / config.max_position_embeddings, 1.0)
            ntk = config.rope_ntk_scale * stretch**2
            scale = config.rope_yarn_a * math.log(stretch) + config.rope_yarn_b
        base = config.rope_base_freq * ntk ** (dim / (dim - 2))
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, device=device).float() / dim))
        positions = torch.arange(total, device=device).float()
        if config.rope_reversed:  # the newest token is position 0
            positions = positions.flip(0)
        angles = torch.outer(positions, inv_freq)
        return cls(torch.cat((angles, angles), dim=-1), scale)

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate `x [B, H, n, head_dim]` by the angles of the last `n` positions (and apply the YaRN scale)."""
        angles = self.angles[-x.shape[-2]:]
        half = x.shape[-1] // 2
        rotated_half = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        out = (x * angles.cos()).to(x.dtype) + (rotated_half * angles.sin()).to(x.dtype)
        return out * self.scale if self.scale != 1.0 else out


@dataclass
class LSWTAttentionMask:
    """The attention mask of one call, shared by every layer: `None` where SDPA's own causal mask is exact (no
    memory, no registers, no padding), else the bottom-right aligned boolean mask `[B or 1, 1, new, registers +
    total]` (SDPA's `is_causal` aligns top-left). `padded` rules out the flash kernel, which has no padding mask."""

    mask: torch.Tensor | None
    padded: bool

    @classmethod
    def for_call(cls, registers: int, length: int, total: int, key_valid: torch.Tensor | None,
                 device: torch.device) -> LSWTAttentionMask:
        keys = registers + total
        if key_valid is None and keys == length:
            return cls(None, False)
        mask = torch.ones(length, keys, dtype=torch.bool, device=device).tril(keys - length)[None, None]
        if key_valid is not None:  # registers are always visible
            mask = mask & F.pad(key_valid, (registers, 0), value=True)[:, None, None, :]
            mask = mask | ~mask.any(-1, keepdim=True)  # padding queries see something; their outputs are unused
        return cls(mask, key_valid is not None)


class LSWTHeadNorm(nn.Module):
    """Per-head RMS normalisation `x / (rms(x) + eps) * weight[h]` (eps after the square root, research numerics)."""

    def __init__(self, num_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / (x.square().mean(-1, keepdim=True).sqrt() + self.eps)
        return x * self.weight.to(x.dtype)[None, :, None, :]


class LSWTAttention(nn.Module):
    """Causal self-attention over the XL memory and the new tokens, with optional registers and q/k norms."""

    def __init__(self, config: LSWTConfig, layer_idx: int):
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        width, bias = config.hidden_size, config.attention_bias
        self.q_proj = nn.Linear(width, width, bias=bias)
        self.k_proj = nn.Linear(width, width, bias=bias)
        self.v_proj = nn.Linear(width, width, bias=bias)
        self.o_proj = nn.Linear(width, width, bias=bias)
        self.q_norm = LSWTHeadNorm(self.num_heads, self.head_dim, config.layer_norm_eps) if config.qk_norm else None
        self.k_norm = LSWTHeadNorm(self.num_heads, self.head_dim, config.layer_norm_eps) if config.qk_norm else None
        shape = (1, self.num_heads, config.num_registers, self.head_dim)
        self.registers_k = nn.Parameter(torch.empty(shape)) if config.num_registers else None
        self.registers_v = nn.Parameter(torch.empty(shape)) if config.num_registers else None
        self.dropout = nn.Dropout(config.dropout_att_out)
        self.kernel = (config.kernel_repo_id, config.kernel_revision) if config.use_kernels else None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(*x.shape[:2], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, hidden_states: torch.Tensor, rotary: LSWTRotary, mask: LSWTAttentionMask,
                cache: LSWTCache | None, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The block's attention output and, with `output_attentions`, its weights `[B, heads, new, registers +
        memory + new]` (registers first, then the cached positions oldest first, then the call's tokens)."""
        batch, length, _ = hidden_states.shape
        query = self._heads(self.q_proj(hidden_states))
        if cache is not None and cache.holds_states:  # recompute_kv: the memory holds attention inputs
            states, _ = cache.update(hidden_states[:, None], hidden_states.new_zeros(batch, 1, length, 0),
                                     self.layer_idx)
            key, value = self._heads(self.k_proj(states[:, 0])), self._heads(self.v_proj(states[:, 0]))
        else:
            key, value = self._heads(self.k_proj(hidden_states)), self._heads(self.v_proj(hidden_states))
            if cache is not None:
                key, value = cache.update(key, value, self.layer_idx)  # raw: before norm and rotation
        if self.q_norm is not None:
            query, key = self.q_norm(query), self.k_norm(key)
        query, key = rotary.rotate(query), rotary.rotate(key)
        if self.registers_k is not None:  # unrotated, uncached, seen by every query
            key = torch.cat([(self.registers_k * rotary.scale).to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
            value = torch.cat([(self.registers_v * rotary.scale).to(value.dtype).expand(batch, -1, -1, -1), value], 2)
        weights = None
        if output_attentions:
            out, weights = attention_with_weights(query, key, value, attn_mask=mask.mask, is_causal=mask.mask is None,
                                                  dropout_p=self.config.dropout_att_mat if self.training else 0.0)
        else:
            out = self._attend(query, key, value, mask)
        return self.dropout(self.o_proj(out.transpose(1, 2).reshape(batch, length, -1))), weights

    def _attend(self, query, key, value, mask: LSWTAttentionMask):
        dropout = self.config.dropout_att_mat if self.training else 0.0
        def sdpa() -> torch.Tensor:
            return F.scaled_dot_product_attention(query, key, value, attn_mask=mask.mask, is_causal=mask.mask is None,
                                                  dropout_p=dropout)

        def flash(kernel) -> torch.Tensor:  # flash attention aligns its causal mask bottom-right, as the research needs
            out = kernel.flash_attn_func(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                         dropout_p=dropout, causal=True)
            return (out[0] if isinstance(out, tuple) else out).transpose(1, 2)

        usable = not mask.padded and query.is_cuda and query.dtype in (torch.float16, torch.bfloat16)
        return dispatch("flash_attn", self.kernel if usable else None, query, flash, sdpa)


class LSWTMLP(nn.Module):
    """Feed-forward with biases: SwiGLU `down(up(x) * act(gate(x)))`, or `down(act(up(x)))`; research `fc1`/`fc2`
    (fc1's first half is `up`, its second half `gate`)."""

    def __init__(self, config: LSWTConfig):
        super().__init__()
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size)
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size) if config.gated_ffn else None
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act_fn = ACT2FN[config.hidden_act]
        self.dropout_inner = nn.Dropout(config.dropout_ffn_int)
        self.dropout_out = nn.Dropout(config.dropout_ffn_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            inner = self.up_proj(x) * self.act_fn(self.gate_proj(x))
        else:
            inner = self.act_fn(self.up_proj(x))
        return self.dropout_out(self.down_proj(self.dropout_inner(inner)))


class LSWTDecoderLayer(GradientCheckpointingLayer):
    """Pre-LN block: attention over memory and segment, then the feed-forward, each with a residual."""

    def __init__(self, config: LSWTConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = LSWTAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = LSWTMLP(config)

    def forward(self, hidden_states, rotary, mask, cache=None, output_attentions: bool = False) -> torch.Tensor:
        attended, _ = self.self_attn(self.input_layernorm(hidden_states), rotary, mask, cache, output_attentions)
        hidden_states = hidden_states + attended
        return hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))


class LSWTPreTrainedModel(ZooPreTrainedModel):
    """Weight initialisation (research: N(0, 0.02), registers N(0, 1/sqrt(head_dim))), loading and remote code."""

    config_class = LSWTConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LSWTDecoderLayer"]
    _supports_sdpa = True
    _auto_map_classes = {"AutoModel": "LSWTModel", "AutoModelForCausalLM": "LSWTForCausalLM"}

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, LSWTHeadNorm):
            init.ones_(module.weight)
        elif isinstance(module, LSWTAttention) and module.registers_k is not None:
            init.normal_(module.registers_k, mean=0.0, std=module.head_dim**-0.5)
            init.normal_(module.registers_v, mean=0.0, std=module.head_dim**-0.5)

    _cache_class = LSWTCache

    def decodes_token_by_token(self, cache: LSWTCache, length: int) -> bool:
        """Whether `length` new tokens in one call compute otherwise than in `length` calls of one token (assisted
        decoding then verifies its draft one token per call, see `zoo_rollback`): a later token of the call would
        still see memory that one-token calls trim away, or dynamic RoPE would rescale for the call's length."""
        past, limit = cache.get_seq_length(), self.config.max_key_values
        trimmed = bool(limit) and past + length - 1 > limit
        rescaled = self.config.rope_dynamic and past + length > (self.config.max_position_embeddings or 0)
        return trimmed or rescaled


class LSWTModel(LSWTPreTrainedModel):
    """Embeddings (projected to the model width), blocks and the output LayerNorm."""

    _keys_to_ignore_on_load_unexpected = [r"^head_proj\.", r"^pooler\."]

    def __init__(self, config: LSWTConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embedding_size)
        self.input_proj = nn.Linear(config.embedding_size, config.hidden_size, bias=False)
        self.input_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([LSWTDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()
        if not config.trainable_embeddings:
            self.embed_tokens.requires_grad_(False)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LSWTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        max_key_values: int | None = None,
        **kwargs,
    ) -> ZooModelOutput:
        r"""
        inputs_embeds: token embeddings of width `embedding_size` (the rows of `get_input_embeddings()`); they are
            projected like `input_ids` embeddings.
        max_key_values: positions of memory to keep after this call (default `config.max_key_values`; 0 or None
            keeps everything).
        Hidden states (with `output_hidden_states`) are the research list: the normed input, every block's output
        and the final normed state (`num_hidden_layers + 2` tensors). Attentions (with `output_attentions`) are one
        `[batch, heads, new tokens, registers + cached + new tokens]` tensor per block (see `LSWTAttention`).
        """
        embeddings = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        hidden_states = self.input_norm(self.input_proj(embeddings.to(self.input_proj.weight.dtype)))
        if self.gradient_checkpointing and self.training and cache is not None:
            raise ValueError("Gradient checkpointing cannot carry an XL memory through the checkpointed blocks; "
                             "train segments without cache, or turn activation checkpointing off.")
        cache = resolve_cache(self, cache, use_cache, "the XL memory")
        states_mode = self.training and self.config.recompute_kv
        if cache is not None:
            if cache.get_seq_length() == 0:
                cache.holds_states = states_mode
            elif cache.holds_states != states_mode:
                raise ValueError(
                    "This cache holds " + ("attention inputs (recompute_kv training)" if cache.holds_states
                                           else "keys and values") + " but the model is in "
                    + ("recompute_kv training" if states_mode else "key/value") + " mode; the two cannot be mixed "
                    "(call model.train()/eval() consistently, or start a new cache)."
                )
        past = cache.get_seq_length() if cache is not None else 0
        total = past + hidden_states.shape[1]
        key_valid = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[-1] < total:
                raise ValueError(f"attention_mask must be [batch, tokens so far] covering the {total} cached and new "
                                 f"tokens, got {tuple(attention_mask.shape)}.")
            valid = attention_mask[:, -total:].bool()
            key_valid = None if bool(valid.all()) else valid
        rotary = LSWTRotary.for_length(self.config, total, hidden_states.device)
        mask = LSWTAttentionMask.for_call(self.config.num_registers, hidden_states.shape[1], total, key_valid,
                                          hidden_states.device)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        with recorded_weights([layer.self_attn for layer in self.layers], output_attentions) as attentions:
            for layer in self.layers:
                hidden_states = layer(hidden_states, rotary, mask, cache, output_attentions)
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
        all_attentions = tuple(attentions) if output_attentions else None
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        if cache is not None:
            cache.trim(max_key_values if max_key_values is not None else self.config.max_key_values)
        return ZooModelOutput(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states, attentions=all_attentions
        )


class LSWTForCausalLM(LSWTPreTrainedModel, GenerationMixin):
    """LSWT with its language-modelling head: `logits = head_proj(h) @ embed_tokens.weight^T` (tied to the input
    embedding through `head_proj`, so there is no separate output matrix). Loading a preference-head checkpoint into
    it keeps the language model and leaves the reward heads behind."""

    _keys_to_ignore_on_load_unexpected = [r"^pooler\."]

    def __init__(self, config: LSWTConfig):
        super().__init__(config)
        self.model = LSWTModel(config)
        self.head_proj = nn.Linear(config.hidden_size, config.embedding_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> None:
        return None  # the output matrix is the input embedding itself; resizing it resizes both

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: LSWTCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        max_key_values: int | None = None,
        **kwargs,
    ) -> ZooCausalLMOutput:
        r"""
        labels: targets for the next-token loss (shifted inside; -100 ignored).
        max_key_values: memory positions kept after this call (default `config.max_key_values`).
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, cache=cache,
            inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states,
            output_attentions=output_attentions, max_key_values=max_key_values,
        )
        projected = self.head_proj(kept_positions(outputs.last_hidden_state, logits_to_keep))
        logits = F.linear(projected, self.model.embed_tokens.weight.to(projected.dtype))
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return ZooCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def _group_cumsum(x: torch.Tensor, restart: torch.Tensor) -> torch.Tensor:
    """Running sums over time `[B, T, D]` that restart at every position where `restart [B, T]` is True."""
    total = x.cumsum(1)
    before = total - x
    start = (torch.arange(x.shape[1], device=x.device) * restart).cummax(1).values  # last restart at or before t
    return total - before.gather(1, start[..., None].expand_as(x))


def sgpt_pooling(states: torch.Tensor, restart: torch.Tensor) -> torch.Tensor:
    """SGPT position-weighted running mean `sum_{j<=t} c_j x_j / c_t` within groups that start at each CLS token
    (`c` = 1-based index in the group), computed in float32."""
    x = states.float()
    count = _group_cumsum(torch.ones_like(x[..., :1]), restart)
    return (_group_cumsum(x * count, restart) / count).to(states.dtype)


class LSWTAdapterLinear(nn.Module):
    """A `Linear` shared by every round of the attention pooler, plus per round `i` a LoRA update
    `(x @ lora_A_list[i]^T) @ lora_B_list[i]^T * alpha / r` and a bias `bias_list[i]` (research `AdaLinear`)."""

    def __init__(self, in_features: int, out_features: int, rounds: int, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.scale = alpha / rank if rank else 0.0
        self.lora_A_list = nn.ParameterList(
            [nn.Parameter(nn.init.kaiming_uniform_(torch.empty(rank, in_features), a=math.sqrt(5.0)))
             for _ in range(rounds)]) if rank else None
        self.lora_B_list = nn.ParameterList(
            [nn.Parameter(torch.zeros(out_features, rank)) for _ in range(rounds)]) if rank else None
        self.bias_list = nn.ParameterList([nn.Parameter(torch.zeros(out_features)) for _ in range(rounds)])
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, round_index: int) -> torch.Tensor:
        out = self.linear(x)
        if self.lora_A_list is not None:
            low_rank = F.linear(F.linear(self.dropout(x), self.lora_A_list[round_index]), self.lora_B_list[round_index])
            out = out + low_rank * self.scale
        return out + self.bias_list[round_index]


class LSWTQueryRegister(nn.Module):
    """The learned per-head query of a "pool" self-attention round (research `AdaRegister`)."""

    def __init__(self, num_heads: int, head_dim: int, rounds: int):
        super().__init__()
        self.register = nn.Parameter(torch.zeros(1, num_heads, 1, head_dim))
        self.bias_list = nn.ParameterList([nn.Parameter(torch.zeros(1, num_heads, 1, head_dim)) for _ in range(rounds)])

    def forward(self, x: torch.Tensor, round_index: int) -> torch.Tensor:
        query = self.register + self.bias_list[round_index]
        return query.expand(x.shape[0], -1, x.shape[1], -1)


class LSWTPoolerAttention(nn.Module):
    """Attention of the token pooler, with adapted projections; `pool=True` uses a learned query register."""

    def __init__(self, config: LSWTConfig, rounds: int, rank: int, alpha: float, dropout: float, pool: bool = False):
        super().__init__()
        width, self.num_heads, self.head_dim = config.hidden_size, config.num_attention_heads, config.head_dim
        self.q_regs = LSWTQueryRegister(self.num_heads, self.head_dim, rounds) if pool else None
        self.q_proj = None if pool else LSWTAdapterLinear(width, width, rounds, rank, alpha, dropout)
        self.k_proj = LSWTAdapterLinear(width, width, rounds, rank, alpha, dropout)
        self.v_proj = LSWTAdapterLinear(width, width, rounds, rank, alpha, dropout)
        self.o_proj = LSWTAdapterLinear(width, width, rounds, rank, alpha, dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor, round_index: int, bias: torch.Tensor) -> torch.Tensor:
        query = self.q_regs(x, round_index) if self.q_regs is not None else self._heads(self.q_proj(x, round_index))
        out = F.scaled_dot_product_attention(query, self._heads(self.k_proj(x, round_index)),
                                             self._heads(self.v_proj(x, round_index)), attn_mask=bias)
        return self.o_proj(out.transpose(1, 2).flatten(2), round_index)


class LSWTPoolerFeedForward(nn.Module):
    """SwiGLU of the token pooler (`silu`, width `intermediate_size`), with adapted projections."""

    def __init__(self, config: LSWTConfig, rounds: int, rank: int, alpha: float, dropout: float):
        super().__init__()
        width, inner = config.hidden_size, config.intermediate_size
        self.up_proj = LSWTAdapterLinear(width, inner, rounds, rank, alpha, dropout)
        self.gate_proj = LSWTAdapterLinear(width, inner, rounds, rank, alpha, dropout)
        self.down_proj = LSWTAdapterLinear(inner, width, rounds, rank, alpha, dropout)

    def forward(self, x: torch.Tensor, round_index: int) -> torch.Tensor:
        inner = self.up_proj(x, round_index) * F.silu(self.gate_proj(x, round_index))
        return self.down_proj(inner, round_index)


class LSWTAttentionTokenPooler(nn.Module):
    """Research `LSWTTokenPoolerAttention`: `n_repeats` pre-LN residual rounds of self-attention (within a segment,
    causal, padding excluded), cross-attention to earlier class tokens and a SwiGLU, with ALiBi-like distance biases
    scaled per head by `head_scale` (`2 ** (-(h + 1) * alibi_slope / heads)`, kept as a frozen parameter because
    checkpoints store its rounded values)."""

    def __init__(self, config: LSWTConfig):
        super().__init__()
        options = config.pooler_config["token_pooling_config"]
        for name in ("sep_token_id", "cls_token_id", "pad_token_id", "self_type", "n_repeats", "lora_r", "lora_alpha",
                     "alibi_slope"):
            if name not in options:
                raise ValueError(f"token_pooling='attn' needs pooler_config['token_pooling_config'][{name!r}].")
        if options["self_type"] not in ("self", "pool"):
            raise ValueError(f"token_pooling_config['self_type'] must be 'self' or 'pool', got {options['self_type']!r}.")
        self.sep_id, self.cls_id, self.pad_id = (int(options[k]) for k in ("sep_token_id", "cls_token_id", "pad_token_id"))
        rounds, rank = int(options["n_repeats"]), int(options["lora_r"])
        alpha, dropout = float(options["lora_alpha"]), float(options.get("lora_dropout", 0.0))
        heads = config.num_attention_heads
        scale = torch.exp2(-(torch.arange(heads) + 1.0) * float(options["alibi_slope"]) / heads)
        self.head_scale = nn.Parameter(scale, requires_grad=False)
        self.self_layer = LSWTPoolerAttention(config, rounds, rank, alpha, dropout, pool=options["self_type"] == "pool")
        self.cross_layer = LSWTPoolerAttention(config, rounds, rank, alpha, dropout)
        self.ffn_layer = LSWTPoolerFeedForward(config, rounds, rank, alpha, dropout)
        norms = lambda: nn.ModuleList(nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) for _ in range(rounds))  # noqa: E731
        self.self_norm, self.cross_norm, self.ffn_norm = norms(), norms(), norms()

    def _bias(self, allowed: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
        causal = torch.ones(allowed.shape[-1], allowed.shape[-1], dtype=torch.bool, device=allowed.device).tril()
        bias = distance.float().where(allowed & causal, float("-inf"))
        return bias[:, None] * self.head_scale.float()[None, :, None, None]

    def forward(self, states: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        eye = torch.eye(length, dtype=torch.bool, device=input_ids.device)[None]
        segment = (input_ids == self.sep_id).int().cumsum(-1)
        real = input_ids != self.pad_id
        positions = torch.arange(length, device=input_ids.device)
        same_segment = (segment[:, :, None] == segment[:, None, :]) & real[:, :, None] & real[:, None, :]
        self_bias = self._bias(same_segment | eye, (positions[None, :] - positions[:, None])[None])
        cross_bias = self._bias((input_ids == self.cls_id)[:, None, :] | eye, segment[:, None, :] - segment[:, :, None])
        for i in range(len(self.self_norm)):
            states = states + self.self_layer(self.self_norm[i](states), i, self_bias.to(states.dtype))
            states = states + self.cross_layer(self.cross_norm[i](states), i, cross_bias.to(states.dtype))
            states = states + self.ffn_layer(self.ffn_norm[i](states), i)
        return states


class LSWTPreferencePooler(nn.Module):
    """Direct preference heads (research `LSWTPooler`): pool the hidden states, read them at the last CLS token and
    score them with one `Linear(hidden, 1)` per reward head."""

    def __init__(self, config: LSWTConfig):
        super().__init__()
        pooler = config.pooler_config
        if pooler["reward_heads"] is None:
            raise ValueError("config.pooler_config['reward_heads'] must list the reward heads (an empty list for none).")
        if "cls_token_id" not in pooler["token_pooling_config"]:
            raise ValueError("config.pooler_config['token_pooling_config'] needs 'cls_token_id': rewards are read at the "
                             "last such token (research: <|im_end|>).")
        self.cls_token_id = int(pooler["token_pooling_config"]["cls_token_id"])
        self.select = pooler["layer_pooling_select"]
        width = config.hidden_size
        self.layer_weighting = None
        if pooler["layer_pooling"] == "weighted_sum":
            self.select = sorted(i for i in self.select if i >= 0)  # research: ascending, negative indices dropped
            self.layer_weighting = nn.Parameter(torch.ones(len(self.select), 1, 1, 1))
        self.layer_dropout = nn.Dropout(pooler["layer_pooling_dropout"])
        post = pooler["layer_pooling_norm"] == "post"
        self.layer_norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps) if post else None
        self.token_norm_post = nn.LayerNorm(width, eps=config.layer_norm_eps) if post else None
        self.token_pooler = LSWTAttentionTokenPooler(config) if pooler["token_pooling"] == "attn" else None
        self.sgpt = pooler["embedding_pooling"] == "sgpt"
        legacy = pooler["legacy_pipeline"]
        self.legacy_dense = nn.Linear(width, width) if legacy in ("bert", "t5") else None
        self.legacy_up = nn.Linear(width, 2 * config.intermediate_size) if legacy in ("swiglu_bert", "swiglu_t5") else None
        self.legacy_down = nn.Linear(config.intermediate_size, width) if self.legacy_up is not None else None
        self.legacy = legacy
        self.dropout = nn.Dropout(pooler["embedding_dropout"])
        self.reward_heads = nn.ModuleDict({name: nn.Linear(width, 1, bias=pooler["reward_head_bias"])
                                           for name in pooler["reward_heads"]})

    def pooled_states(self, hidden_states: tuple[torch.Tensor, ...], input_ids: torch.Tensor) -> torch.Tensor:
        """The per-token embeddings `[B, T, hidden]` before the class token is picked (layer, token and embedding
        pooling applied)."""
        if self.layer_weighting is None:
            states = hidden_states[self.select]
        else:
            stacked = torch.stack([hidden_states[i] for i in self.select])
            keep = self.layer_dropout(stacked.new_ones(stacked.shape[0], stacked.shape[1], 1, 1))
            states = (self.layer_weighting.softmax(0) * keep * stacked).sum(0)
        if self.layer_norm_post is not None:
            states = self.layer_norm_post(states)
        if self.token_pooler is not None:  # "cls" token pooling is the identity
            states = self.token_pooler(states, input_ids)
        if self.token_norm_post is not None:
            states = self.token_norm_post(states)
        if self.sgpt:
            states = sgpt_pooling(states, input_ids == self.cls_token_id)
        return states

    def forward(self, hidden_states: tuple[torch.Tensor, ...], input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        states = self.pooled_states(hidden_states, input_ids)
        is_cls = input_ids == self.cls_token_id
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        last_cls = torch.where(is_cls, positions, -1).max(-1).values  # -1 (the last token) where a row has none
        pooled = states[torch.arange(input_ids.shape[0], device=input_ids.device), last_cls]
        if self.legacy_dense is not None:
            pooled = torch.tanh(self.legacy_dense(pooled))
        elif self.legacy_up is not None:
            value, gate = self.legacy_up(pooled).chunk(2, dim=-1)
            pooled = torch.tanh(self.legacy_down(value * F.silu(gate)))
        pooled = self.dropout(pooled)
        return {name: head(pooled) for name, head in self.reward_heads.items()}


@answers_to_every_cache_name
@dataclass
class LSWTPreferenceOutput(ZooCausalLMOutput):
    """[`ZooCausalLMOutput`] plus `rewards`: `{head name: [batch, 1]}` read at each row's last CLS token."""

    rewards: dict[str, torch.Tensor] | None = None


class LSWTForPreferenceHeads(LSWTForCausalLM):
    """LSWT language model with direct preference heads (research `LSWTForDPH`): one forward returns the LM logits
    and a reward per head, read at the last `pooler_config["token_pooling_config"]["cls_token_id"]` token."""

    _auto_map_classes = {"AutoModel": "LSWTModel", "AutoModelForCausalLM": "LSWTForPreferenceHeads"}

    def __init__(self, config: LSWTConfig):
        super().__init__(config)
        self.pooler = LSWTPreferencePooler(config)
        self.post_init()

    def forward(self, input_ids: torch.LongTensor | None = None, output_hidden_states: bool | None = None,
                **kwargs) -> LSWTPreferenceOutput:
        if input_ids is None:
            raise ValueError("LSWTForPreferenceHeads needs input_ids: rewards are read at the last CLS token.")
        outputs = super().forward(input_ids=input_ids, output_hidden_states=True, **kwargs)
        if outputs.cache is not None and outputs.cache.get_seq_length() > input_ids.shape[1]:
            logger.warning_once("Rewards are computed from the current call's tokens only, not from the memory.")
        rewards = self.pooler(outputs.hidden_states, input_ids)
        return LSWTPreferenceOutput(
            loss=outputs.loss, logits=outputs.logits, cache=outputs.cache,
            hidden_states=outputs.hidden_states if output_hidden_states else None, rewards=rewards,
        )


def warm_start_embeddings(model: LSWTPreTrainedModel, parent: str, **from_pretrained_kwargs) -> torch.Tensor:
    """Copy the token embeddings of `parent` into `model`, as the research code warm-starts from `facebook/opt-125m`.

    `parent` is a local model folder or a Hub id (the research default is `"facebook/opt-125m"`: 50272 x 768, which
    needs `vocab_size=50272, embedding_size=768`). Only the input embedding matrix is read; the parent's blocks are
    not even built (`num_hidden_layers=0`). Returns the copied matrix.
    """
    from transformers import AutoModel

    kwargs = {"num_hidden_layers": 0, **from_pretrained_kwargs}
    source = AutoModel.from_pretrained(parent, **kwargs).get_input_embeddings().weight
    target = model.get_input_embeddings().weight
    if source.shape != target.shape:
        raise ValueError(
            f"{parent} has {source.shape[0]} x {source.shape[1]} token embeddings but this LSWT needs "
            f"{target.shape[0]} x {target.shape[1]} (config.vocab_size x config.embedding_size); build the LSWT with "
            "the parent's sizes (facebook/opt-125m: vocab_size=50272, embedding_size=768)."
        )
    with torch.no_grad():
        target.copy_(source.to(target.dtype))
    return target


__all__ = ["LSWTCache", "LSWTCacheLayer", "LSWTForCausalLM", "LSWTForPreferenceHeads", "LSWTModel",
           "LSWTPreTrainedModel", "LSWTPreferenceOutput", "warm_start_embeddings"]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooForSequenceClassification  # noqa: E402


class LSWTForSequenceClassification(ZooForSequenceClassification, LSWTPreTrainedModel):
    """LSWT with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    A bias-free `score` head reads the output LayerNorm's states (model width); each row is classified at its last
    token that is not `config.pad_token_id`, with transformers' loss for `config.problem_type` (see
    `zoo_classification`). Padding is never attended to: right padding is exact, left padding too where the model is
    shift-invariant (no registers, no dynamic RoPE). A causal-LM, preference-head or bare checkpoint loads into it
    (`from_pretrained(folder, num_labels=N)`): the transformer is kept, `head_proj` and the pooler are left behind,
    `score` starts random. Only the current call's tokens are classified; with `use_cache=True` the XL memory of
    earlier segments is read and returned.
    """

    def __init__(self, config: LSWTConfig):
        super().__init__(config)
        self.model = LSWTModel(config)
        self._add_score(config.hidden_size)
        self.post_init()


# Every saved LSWT names its classifier in auto_map, so that a causal-LM folder or Hub repository fine-tunes into a
# classifier with trust_remote_code=True where memory-zoo is not installed.
LSWTPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = "LSWTForSequenceClassification"
__all__.append("LSWTForSequenceClassification")
