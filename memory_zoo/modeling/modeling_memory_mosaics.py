"""PyTorch Memory Mosaics: a language model built from associative memories instead of attention and MLPs.

Research code: facebookresearch/MemoryMosaics (`Library/memory_mosaics/models/`). Same numerics as its pure-torch
model (no attention scaling, norms without epsilon, clamped key temperatures, look-ahead values, zero read-out for
the first `value_shift` positions). Differences, all deliberate:

* the causal leaky average of the keys is a recurrence, computed by the Triton `leaky_average` Hub kernel where it can
  run and otherwise by a chunked pure-torch scan with O(T) memory ([`leaky_average`]) — never a T x T matrix — so
  any length works, on any device, with exact gradients (the research CUDA kernel scales the decay gradient wrongly);
* incremental decoding with [`MemoryMosaicsCache`] (leaky states, keys, finished values and the few inputs a value
  still needs), so a new token costs one step instead of a full re-run;
* left- and right-padded batches are exact (padding never enters a leaky average, a value or a read-out);
* inputs longer than `block_size` are accepted (`long_context="extend"`) or refused (`"crop"`, which reproduces the
  research generation window); the research model crashed on them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import can_return_tuple, logging

from ..configuration.configuration_memory_mosaics import MemoryMosaicsConfig
from ..ops.leaky_average import leaky_average
from .zoo_attention import attention_with_weights, recorded_weights
from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooCausalLMOutput, ZooModelOutput, cache_argument
from .zoo_forward import embed_inputs, kept_positions, resolve_cache
from .zoo_rollback import RollbackMixin

logger = logging.get_logger(__name__)

# Every per-head scalar parameter is multiplied by this before use (research `exp_param_scale`).
PARAM_SCALE = 10.0
# Query rows per block of the CPU read-out with dropout (see `causal_read_with_dropout`).
READ_BLOCK = 512
# Key temperatures are clamped at exp(5) before use (research `kernel_beta_upbound`: keeps fp16 scores finite).
KERNEL_BETA_MAX = 5.0


class MemoryMosaicsCacheLayer(DynamicLayer):
    """Decoding state of one block.

    `keys` are the in-context memory's keys of every past position and `values` its finished values (a value needs
    `value_shift` tokens of look-ahead, so there are `value_shift` fewer), both `[batch, heads, seq, head_dim]`.
    `states` holds the recurrent parts, batch first: the float32 leaky sums of both memories (`*_leaky`,
    `[batch, heads, head_dim]`) and the last few block inputs the feature extractors still need (`*_inputs`,
    `[batch, n, hidden]`). The leaky sums cannot be cut token by token: the cache takes tokens back by snapshot and
    replay ([`RollbackMixin`]).
    """

    def __init__(self):
        super().__init__()
        self.states: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        super().reset()
        self.states = {}

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self.states = {k: v.index_select(0, beam_idx.to(v.device)) for k, v in self.states.items()}

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self.states = {k: v.repeat_interleave(repeats, dim=0) for k, v in self.states.items()}

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self.states = {k: v[indices, ...] for k, v in self.states.items()}


class MemoryMosaicsCache(RollbackMixin, DynamicCache):
    """Cache of a [`MemoryMosaicsForCausalLM`]: one [`MemoryMosaicsCacheLayer`] per block.

    Per sequence it holds, per block, `2 * seq * hidden_size` numbers (keys and values of the in-context memory, as a
    transformer's key/value cache) plus `O(hidden_size)` of recurrent state.
    """

    def __init__(self, config: MemoryMosaicsConfig):
        Cache.__init__(self, layers=[MemoryMosaicsCacheLayer() for _ in range(config.num_hidden_layers)])
        # Set once a padded batch went through: later calls then need the full attention mask.
        self.is_padded = False

    def reset(self) -> None:
        super().reset()
        self.is_padded = False


@dataclass
class MosaicsStep:
    """What every memory needs to know about the current call.

    `past_length` tokens are already in the cache; `valid` is `None` when every token is real, else `[batch, past +
    new]` booleans (False for padding) covering the cached and the new tokens.
    """

    past_length: int
    valid: torch.Tensor | None = None
    # The in-context read-out mask, built once per call for every block; None on the causal fast path
    read_allowed: torch.Tensor | None = None
    read_has_any: torch.Tensor | None = None
    # One new token after cached ones, no padding: it reads every finished value, no mask needed (decoding steps)
    reads_all: bool = False

    def valid_span(self, start: int, stop: int) -> torch.Tensor | None:
        return None if self.valid is None else self.valid[:, start:stop]


class MemoryMosaicsFeatureExtractor(nn.Module):
    """Key or value features: a linear map of a short window of tokens, `[B, N, C] -> [B, N, C]`.

    `linearconv` (research `Conv1d` over time, here the window is flattened into one `Linear(kernel_size * C, C)`,
    oldest token first): output `t` reads tokens `t - (kernel_size - 1 - shift) ... t + shift`.
    `lowrlinearconv`: `z = proj(x)`, then per head `(1 - coef) z_{t+shift} + coef z_t`.
    Tokens outside the given window count as zeros (research zero padding); so do padding tokens.
    """

    def __init__(self, kind: str, hidden_size: int, num_heads: int, kernel_size: int, shift: int, bias: bool):
        super().__init__()
        self.kind, self.kernel_size, self.shift, self.num_heads = kind, kernel_size, shift, num_heads
        if kind == "linearconv":
            self.proj = nn.Linear(kernel_size * hidden_size, hidden_size, bias=bias)
            self.coef = None
        else:
            self.proj = nn.Linear(hidden_size, hidden_size, bias=bias)
            self.coef = nn.Parameter(torch.empty(num_heads))

    @property
    def context(self) -> int:
        """How many tokens before the first new output position the window reaches back (or the shift spans)."""
        if self.kind == "linearconv":
            return max(self.kernel_size - 1, self.shift)
        return self.shift

    def forward(self, inputs: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        batch, length, channels = inputs.shape
        if self.kind == "linearconv":
            if valid is not None:
                inputs = inputs * valid[..., None].to(inputs.dtype)
            if self.kernel_size == 1 and self.shift == 0:
                return self.proj(inputs)
            left = self.kernel_size - 1 - self.shift
            # A negative left pad crops (research nn.ZeroPad1d): the window then starts after t.
            padded = F.pad(inputs, (0, 0, max(left, 0), self.shift))[:, max(-left, 0):]
            windows = padded.unfold(1, self.kernel_size, 1)  # [B, N, C, K]
            return self.proj(windows.transpose(-1, -2).reshape(batch, length, self.kernel_size * channels))
        z = self.proj(inputs)
        if valid is not None:
            z = z * valid[..., None].to(z.dtype)
        if self.shift == 0:
            return z
        ahead = F.pad(z[:, self.shift:], (0, 0, 0, min(self.shift, length)))
        coef = self.coef.repeat_interleave(channels // self.num_heads).to(z.dtype)
        return ahead * (1 - coef) + z * coef


def _normalize(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dim without epsilon (research numerics), except that an all-zero vector stays zero.

    Zero vectors only arise where nothing real was seen (padding, or a value window that lies entirely beyond the
    sequence); the research code turned them into NaNs that spread through the attention product.
    """
    norm = features.norm(dim=-1, keepdim=True)
    return features / torch.where(norm == 0, torch.ones_like(norm), norm)


class MemoryMosaicsAssociativeMemory(nn.Module):
    """What both memories share: keys that are normalised leaky averages of key features, times a temperature."""

    def __init__(self, config: MemoryMosaicsConfig, layer_idx: int, name: str, key_temperature_power: int):
        super().__init__()
        self.layer_idx, self.name = layer_idx, name
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.key_temperature_power = key_temperature_power
        self.chunk_size = config.leaky_chunk_size
        self.kernel = (config.kernel_repo_id, config.kernel_revision) if config.use_kernels else None
        self.key_features = MemoryMosaicsFeatureExtractor(
            config.key_feature_extractor, config.hidden_size, self.num_heads, config.key_kernel_size, 0, config.bias
        )
        self.leaky_key_beta = nn.Parameter(torch.empty(self.num_heads))
        self.kernel_beta = nn.Parameter(torch.empty(self.num_heads))
        self.value_beta = nn.Parameter(torch.empty(self.num_heads))
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size, bias=config.bias)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.read_dropout = config.attention_dropout

    def _leaky(self, features: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        decay = self.leaky_key_beta.abs() * PARAM_SCALE
        return leaky_average(features, decay, state, self.chunk_size, self.kernel)

    def keys(self, inputs: torch.Tensor, states: dict, step: MosaicsStep, cache: dict | None) -> torch.Tensor:
        """Scaled keys `[B, H, T, d]` of the new tokens; updates the leaky state and the input window in `cache`."""
        batch, length, _ = inputs.shape
        past = step.past_length
        window, start = self._window(inputs, self.key_features.context, states, past)
        features = self.key_features(window, step.valid_span(start, past + length))[:, window.shape[1] - length:]
        valid = step.valid_span(past, past + length)
        if valid is not None:
            features = features * valid[..., None].to(features.dtype)
        summed, final = self._leaky(features.view(batch, length, self.num_heads, self.head_dim),
                                    states.get(f"{self.name}_leaky"))
        temperature = torch.exp(torch.clamp(self.kernel_beta * PARAM_SCALE, max=KERNEL_BETA_MAX))
        temperature = temperature**self.key_temperature_power
        keys = _normalize(summed) * temperature[:, None].to(summed.dtype)
        if cache is not None:
            cache[f"{self.name}_leaky"] = final
        return keys.transpose(1, 2)

    def _window(self, inputs: torch.Tensor, context: int, states: dict, past: int) -> tuple[torch.Tensor, int]:
        """`inputs` preceded by the last `context` cached inputs (fewer at the start): (window, its first position)."""
        cached = states.get(f"{self.name}_inputs")
        if cached is None or context == 0:
            return inputs, past
        cached = cached[:, max(cached.shape[1] - context, 0):]
        return torch.cat([cached, inputs], dim=1), past - cached.shape[1]

    def remember_inputs(self, inputs: torch.Tensor, states: dict, past: int, context: int, cache: dict) -> None:
        """Keep the last `context` block inputs (padding already zeroed) for the next call's feature windows."""
        if context > 0:
            window, _ = self._window(inputs, context, states, past)
            cache[f"{self.name}_inputs"] = window[:, max(window.shape[1] - context, 0):]

    def project(self, read_out: torch.Tensor) -> torch.Tensor:
        """Scale the `[B, H, T, d]` read-out by exp(s * value_beta), merge heads, project, dropout."""
        scale = torch.exp(self.value_beta * PARAM_SCALE).to(read_out.dtype)
        read_out = read_out * scale[:, None, None]
        batch, _, length, _ = read_out.shape
        return self.dropout(self.o_proj(read_out.transpose(1, 2).reshape(batch, length, -1)))


class MemoryMosaicsContextMemory(MemoryMosaicsAssociativeMemory):
    """In-context associative memory (research `InContextAssoMemBlock`): kernel regression over past key/values.

    Token `t` reads the values `u <= t - value_shift` (those whose look-ahead it has already seen) with weights
    `softmax_u(<key_t, key_u>)` (no `1/sqrt(d)`); tokens with nothing to read get zeros.
    """

    def __init__(self, config: MemoryMosaicsConfig, layer_idx: int):
        super().__init__(config, layer_idx, "context", key_temperature_power=1)
        self.shift = config.value_shift
        self.value_features = MemoryMosaicsFeatureExtractor(
            config.value_feature_extractor, config.hidden_size, self.num_heads, config.value_kernel_size,
            config.value_shift, config.bias,
        )

    def forward(
        self, hidden_states: torch.Tensor, step: MosaicsStep, cache_layer: MemoryMosaicsCacheLayer | None = None,
        output_attentions: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The memory's projected read-out and, with `output_attentions`, its read weights (see `read`)."""
        batch, length, _ = hidden_states.shape
        past, shift = step.past_length, self.shift
        states = cache_layer.states if cache_layer is not None and past > 0 else {}
        new_states = {} if cache_layer is not None else None
        valid_new = step.valid_span(past, past + length)
        if valid_new is not None:
            hidden_states = hidden_states * valid_new[..., None].to(hidden_states.dtype)
        keys = self.keys(hidden_states, states, step, new_states)

        # Values finished by this call: positions max(0, past - shift) ... past + length - 1 - shift.
        context = self.value_features.context
        window, start = self._window(hidden_states, context, states, past)
        first, stop = max(past - shift, 0), past + length - shift
        values = keys.new_zeros(batch, self.num_heads, 0, self.head_dim)
        if stop > first:
            features = self.value_features(window, step.valid_span(start, past + length))[:, first - start:stop - start]
            features = features.reshape(batch, stop - first, self.num_heads, self.head_dim)
            values = _normalize(features).transpose(1, 2)

        all_keys, all_values = keys, values
        if cache_layer is not None:
            if past == 0:
                cache_layer.reset()
            # the cache's concatenation is the read's: one copy of the past per step, not two
            all_keys, all_values = cache_layer.update(keys, values)
            self.remember_inputs(hidden_states, states, past, max(context, self.key_features.context), new_states)
            cache_layer.states.update(new_states)
        read_out, weights = self.read(keys, all_keys, all_values, step, output_attentions)
        return self.project(read_out), weights

    def read(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: MosaicsStep,
             output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kernel regression of the new queries `[B, H, T, d]` over the readable `values` (`[B, H, Nv, d]`).

        With `output_attentions` also the read weights `[B, H, T, Nv]`: entry `(t, u)` is how much token `t` reads the
        value of position `u` (cached positions first; rows that can read nothing yet are zero).
        """
        batch, heads, length, dim = queries.shape
        shift, readable = self.shift, values.shape[-2]
        dropout = self.read_dropout if self.training else 0.0
        attend = attention_with_weights if output_attentions else F.scaled_dot_product_attention
        if readable == 0:
            weights = queries.new_zeros(batch, heads, length, 0) if output_attentions else None
            return queries.new_zeros(batch, heads, length, dim), weights
        # dropout on the CPU: SDPA's math path, replaced by `read_with_dropout` (in checkpointed blocks when long)
        explicit = dropout > 0 and not output_attentions and queries.device.type == "cpu"
        blockwise = explicit and torch.is_grad_enabled() and length - shift > READ_BLOCK
        if step.reads_all:
            out = attend(queries, keys[:, :, :readable], values, dropout_p=dropout, scale=1.0)
            return out if output_attentions else (out, None)
        if step.read_allowed is None and explicit:
            rows = length - shift
            if blockwise:
                out = causal_read_with_dropout(queries[:, :, shift:], keys[:, :, :readable], values, dropout)
            else:
                causal = torch.ones(rows, readable, dtype=torch.bool, device=queries.device).tril()
                out = read_with_dropout(queries[:, :, shift:], keys[:, :, :readable], values, dropout, causal)
            return torch.cat([queries.new_zeros(batch, heads, shift, dim), out], dim=2), None
        if step.read_allowed is None:
            # Query t reads keys 0 .. t - shift: an ordinary causal problem on rows shift.. (flash/SDPA friendly).
            out = attend(
                queries[:, :, shift:], keys[:, :, :readable], values, dropout_p=dropout, is_causal=True, scale=1.0
            )
            out, weights = out if output_attentions else (out, None)
            if weights is not None:
                weights = F.pad(weights, (0, 0, shift, 0))
            return torch.cat([queries.new_zeros(batch, heads, shift, dim), out], dim=2), weights
        out = attend(
            queries, keys[:, :, :readable], values, attn_mask=step.read_allowed, dropout_p=dropout, scale=1.0
        )
        out, weights = out if output_attentions else (out, None)
        has_any = step.read_has_any.to(out.dtype)
        return out * has_any, None if weights is None else weights * has_any


def read_with_dropout(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, dropout: float,
                      allowed: torch.Tensor | None = None) -> torch.Tensor:
    """`SDPA(queries, keys, values, attn_mask=allowed, dropout_p=dropout, scale=1)`, written out for the CPU.

    With dropout SDPA can only take its math path on the CPU, which guards its softmax against fully masked rows
    (`where` / `isneginf` / `all` over every score: about a tenth of a Memory Mosaics training step) and draws its
    mask with `bernoulli_`. Here every row reads at least one key (the memories never ask otherwise), so the softmax
    is plain, and the mask is `rand >= dropout` (the same distribution, drawn in half the time). Kept entries are
    scaled by `1 / (1 - dropout)`, as `F.dropout` does.
    """
    scores = torch.matmul(queries, keys.transpose(-1, -2))
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    dropped = torch.rand_like(probs) < dropout
    return torch.matmul(probs.masked_fill(dropped, 0.0).mul_(1.0 / (1.0 - dropout)), values)


def causal_read_with_dropout(queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, dropout: float,
                             block: int = READ_BLOCK) -> torch.Tensor:
    """`SDPA(queries, keys, values, is_causal=True, dropout_p=dropout, scale=1)` for a square causal read, in blocks.

    With dropout, SDPA has no fused CPU kernel and materialises every `T x T` probability (and keeps it for the
    backward): the read-out's memory grew quadratically with T (benchmarks/slopes.py). Here blocks of `block` query
    rows each read the keys up to their last row, and each block is recomputed in the backward pass (activation
    checkpointing replays the same dropout mask), so at most `block x T` probabilities exist at a time.
    """
    length = queries.shape[-2]
    outputs = []
    for start in range(0, length, block):
        stop = min(start + block, length)
        mask = torch.ones(stop - start, stop, dtype=torch.bool, device=queries.device).tril(start)

        def part(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, m: torch.Tensor = mask) -> torch.Tensor:
            return read_with_dropout(q, k, v, dropout, m)

        outputs.append(checkpoint(part, queries[:, :, start:stop], keys[:, :, :stop], values[:, :, :stop],
                                  use_reentrant=False))
    return torch.cat(outputs, dim=2)


class MemoryMosaicsPersistentMemory(MemoryMosaicsAssociativeMemory):
    """Persistent associative memory (research `PersistentAssoMemBlock`): the key reads `pmem_count` learned tables.

    `out_t = mean_i sum_j softmax_j(<key_t, memory_keys[i, h, j]>) memory_values[i, h, j]`, then scaled and projected.
    Its keys use the squared temperature. This plays the role of a transformer's MLP.
    """

    def __init__(self, config: MemoryMosaicsConfig, layer_idx: int):
        super().__init__(config, layer_idx, "persistent", key_temperature_power=2)
        shape = (config.pmem_count, self.num_heads, config.pmem_size, self.head_dim)
        self.memory_keys = nn.Parameter(torch.empty(shape))
        self.memory_values = nn.Parameter(torch.empty(shape))

    def forward(
        self, hidden_states: torch.Tensor, step: MosaicsStep, cache_layer: MemoryMosaicsCacheLayer | None = None
    ) -> torch.Tensor:
        batch = hidden_states.shape[0]
        past = step.past_length
        states = cache_layer.states if cache_layer is not None and past > 0 else {}
        new_states = {} if cache_layer is not None else None
        valid_new = step.valid_span(past, past + hidden_states.shape[1])
        if valid_new is not None:
            hidden_states = hidden_states * valid_new[..., None].to(hidden_states.dtype)
        keys = self.keys(hidden_states, states, step, new_states)
        dropout = self.read_dropout if self.training else 0.0
        # Every token of every sequence reads the same tables: the batch joins the query axis ([1, H, B * T, d], a
        # view of the keys' [B, T, H, d] storage) rather than the tables being expanded to the batch, whose gradients
        # SDPA would then allocate, zero and sum batch-sized.
        heads, length = keys.shape[1], keys.shape[2]
        queries = keys.transpose(0, 1).reshape(1, heads, batch * length, self.head_dim)
        read_out = 0
        for table in range(self.memory_keys.shape[0]):
            table_keys, table_values = self.memory_keys[table][None], self.memory_values[table][None]
            if dropout > 0 and queries.device.type == "cpu":  # SDPA's math path otherwise, see read_with_dropout
                read_out = read_out + read_with_dropout(queries, table_keys, table_values, dropout)
            else:
                read_out = read_out + F.scaled_dot_product_attention(
                    queries, table_keys, table_values, dropout_p=dropout, scale=1.0
                )
        if self.memory_keys.shape[0] > 1:
            read_out = read_out / self.memory_keys.shape[0]
        read_out = read_out.view(heads, batch, length, self.head_dim).transpose(0, 1)
        if cache_layer is not None:
            self.remember_inputs(hidden_states, states, past, self.key_features.context, new_states)
            cache_layer.states.update(new_states)
        return self.project(read_out)


class MemoryMosaicsBlock(GradientCheckpointingLayer):
    """In-context memory then persistent memory, each with a residual connection (pre- or post-LayerNorm)."""

    def __init__(self, config: MemoryMosaicsConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.pre_layernorm = config.pre_layernorm
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = MemoryMosaicsContextMemory(config, layer_idx)
        self.post_attention_layernorm = None
        self.pmem = None
        if not config.attn_only:
            self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)
            self.pmem = MemoryMosaicsPersistentMemory(config, layer_idx)

    def forward(
        self, hidden_states: torch.Tensor, step: MosaicsStep, cache: MemoryMosaicsCache | None = None,
        output_attentions: bool = False,
    ) -> torch.Tensor:
        cache_layer = cache.layers[self.layer_idx] if cache is not None else None
        if self.pre_layernorm:
            read_out, _ = self.attn(self.input_layernorm(hidden_states), step, cache_layer, output_attentions)
            hidden_states = hidden_states + read_out
            if self.pmem is not None:
                hidden_states = hidden_states + self.pmem(self.post_attention_layernorm(hidden_states), step, cache_layer)
            return hidden_states
        hidden_states = self.input_layernorm(hidden_states)
        read_out, _ = self.attn(hidden_states, step, cache_layer, output_attentions)
        hidden_states = hidden_states + read_out
        if self.pmem is not None:
            hidden_states = self.post_attention_layernorm(hidden_states)
            hidden_states = hidden_states + self.pmem(hidden_states, step, cache_layer)
        return hidden_states


class MemoryMosaicsPreTrainedModel(ZooPreTrainedModel):
    """Weight initialisation (the research recipe), checkpoint loading and remote-code export."""

    config_class = MemoryMosaicsConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["MemoryMosaicsBlock"]
    _auto_map_classes = {"AutoModel": "MemoryMosaicsModel", "AutoModelForCausalLM": "MemoryMosaicsForCausalLM"}

    def _init_weights(self, module: nn.Module) -> None:
        config = self.config
        if isinstance(module, nn.Linear):
            # Research init: std 1/sqrt(fan_in); output projections additionally / sqrt(num_hidden_layers).
            std = module.in_features**-0.5
            if getattr(module, "is_residual_output", False):
                std /= math.sqrt(config.num_hidden_layers)
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            # Research: N(0, 1), but with tied weights the head's init (std 1/sqrt(hidden)) runs last and wins.
            init.normal_(module.weight, mean=0.0, std=config.hidden_size**-0.5 if config.tie_word_embeddings else 1.0)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, MemoryMosaicsFeatureExtractor) and module.coef is not None:
            init.uniform_(module.coef, 0.0, 1.0)
        if isinstance(module, MemoryMosaicsAssociativeMemory):
            heads = module.num_heads
            init.copy_(module.leaky_key_beta, torch.linspace(0.5, 5.0, heads) / PARAM_SCALE)
            init.constant_(module.kernel_beta, 1.0 / PARAM_SCALE)
            init.constant_(module.value_beta, -0.5 / PARAM_SCALE)
        if isinstance(module, MemoryMosaicsPersistentMemory):
            init.normal_(module.memory_keys, mean=0.0, std=module.head_dim**-0.5)
            init.normal_(module.memory_values, mean=0.0, std=module.head_dim**-0.5)

    _cache_class = MemoryMosaicsCache


def _check_padding(mask: torch.Tensor) -> None:
    """Padding may precede and/or follow the real tokens of a row, never sit between them."""
    count = mask.sum(-1, keepdim=True)
    first = mask.int().argmax(-1, keepdim=True)
    positions = torch.arange(mask.shape[-1], device=mask.device)
    if not bool(((positions >= first) & (positions < first + count) | (count == 0)).eq(mask).all()):
        raise ValueError(
            "attention_mask has padding between real tokens. Memory Mosaics supports left- and right-padded batches "
            "(zeros before and/or after each row's tokens); remove the gaps, or run such rows separately."
        )


class MemoryMosaicsModel(MemoryMosaicsPreTrainedModel):
    """The bare Memory Mosaics: token embeddings (no positions), blocks and the final LayerNorm."""

    # Loading the bare model from a causal-LM checkpoint leaves its head behind, by design.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MemoryMosaicsConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MemoryMosaicsBlock(config, i) for i in range(config.num_hidden_layers)])
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, bias=config.bias)
        for layer in self.layers:
            for memory in (layer.attn, layer.pmem):
                if memory is not None:
                    memory.o_proj.is_residual_output = True
        self.gradient_checkpointing = False
        self.post_init()

    def _step(self, attention_mask: torch.Tensor | None, past: MemoryMosaicsCache | None, length: int,
              device: torch.device) -> MosaicsStep:
        past_length = past.get_seq_length() if past is not None else 0
        total = past_length + length
        if self.config.long_context == "crop" and total > self.config.block_size:
            raise ValueError(
                f"This model has long_context='crop' (the research behaviour): it only reads block_size="
                f"{self.config.block_size} tokens, but this call covers {total}. Crop the input to the last "
                f"{self.config.block_size} tokens (generate() does so itself), or set config.long_context='extend' "
                "to let the memories keep every past token."
            )
        valid = None
        if attention_mask is not None:
            if attention_mask.dim() != 2 or attention_mask.shape[-1] != total:
                raise ValueError(
                    f"attention_mask must have shape [batch, past + new tokens] = [*, {total}] (a 2-D 0/1 mask over the "
                    f"cached and the new tokens), got {tuple(attention_mask.shape)}."
                )
            mask = attention_mask.bool()
            if not bool(mask.all()) or (past is not None and past.is_padded):
                _check_padding(mask)
                valid = mask
        if past is not None:
            if valid is None and past.is_padded:
                raise ValueError(
                    "This cache was filled from a padded batch; pass the full attention_mask (past and new tokens) "
                    "with every later call so padding stays out of the memories."
                )
            past.is_padded = past.is_padded or valid is not None
        step = MosaicsStep(past_length, valid)
        readable = total - self.config.value_shift
        if past_length > 0 and valid is None and length == 1:
            step.reads_all = True
        elif (past_length > 0 or valid is not None) and readable > 0:
            # Query t reads values u <= t - value_shift among the real ones; built once for every block.
            positions = torch.arange(past_length, total, device=device)
            allowed = torch.arange(readable, device=device)[None, :] <= positions[:, None] - self.config.value_shift
            allowed = allowed[None, None]
            if valid is not None:
                allowed = allowed & valid[:, None, None, :readable]
            step.read_has_any = allowed.any(-1, keepdim=True)
            # Rows with nothing to read attend everywhere (no 0/0) and are zeroed afterwards.
            step.read_allowed = allowed | ~step.read_has_any
        return step

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MemoryMosaicsCache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ZooModelOutput:
        r"""
        output_attentions: also return every block's in-context memory read weights, the counterpart of attention
            weights: `[batch, heads, new tokens, finished values]`, where value `u` (cached ones first) is readable from
            token `u + value_shift` on (see `MemoryMosaicsContextMemory.read`); the persistent memory has none.
        """
        inputs_embeds = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        cache = resolve_cache(self, cache, use_cache, "the leaky averages")
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )

        step = self._step(attention_mask, cache, inputs_embeds.shape[1], inputs_embeds.device)
        hidden_states = inputs_embeds
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        with recorded_weights([layer.attn for layer in self.layers], output_attentions) as attentions:
            for layer in self.layers:
                hidden_states = layer(hidden_states, step, cache=cache, output_attentions=output_attentions)
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
        all_attentions = tuple(attentions) if output_attentions else None
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return ZooModelOutput(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states, attentions=all_attentions
        )


class MemoryMosaicsForCausalLM(MemoryMosaicsPreTrainedModel, GenerationMixin):
    """Memory Mosaics with a language-modelling head (no bias), its logits scaled by `1/sqrt(hidden_size)`."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MemoryMosaicsConfig):
        super().__init__(config)
        self.model = MemoryMosaicsModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def prepare_inputs_for_generation(
        self, input_ids: torch.LongTensor, next_sequence_length: int | None = None,
        cache: MemoryMosaicsCache | None = None, attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None, **kwargs,
    ) -> dict:
        window = self.config.block_size
        if self.config.long_context == "crop" and input_ids.shape[1] > window:
            # Research generation: every token is predicted from the last block_size tokens, so once the window
            # slides the state is rebuilt from the window's first token (a full forward, as the research code does).
            if inputs_embeds is not None:
                raise ValueError("long_context='crop' generation past block_size needs input_ids, not inputs_embeds.")
            input_ids, next_sequence_length = input_ids[:, -window:], None
            if attention_mask is not None:
                attention_mask = attention_mask[:, -window:]
            if cache is not None:
                cache.reset()
        return super().prepare_inputs_for_generation(
            input_ids, next_sequence_length=next_sequence_length, **cache_argument(cache),
            attention_mask=attention_mask, inputs_embeds=inputs_embeds, **kwargs,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: MemoryMosaicsCache | None = None,
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
            are shifted inside (position `t` predicts `labels[t + 1]`), `-100` is ignored. Pass `shift_labels`
            (already aligned with the logits, as the research `targets`) instead to score every position. The first
            `config.skip_tokens` positions' predictions are left out of the loss.
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
        if self.config.scale_logits:
            logits = logits * (1.0 / math.sqrt(self.config.hidden_size))
        loss = None
        shift_labels = kwargs.pop("shift_labels", None)
        if labels is not None or shift_labels is not None:
            skip = self.config.skip_tokens
            if skip and shift_labels is not None:
                shift_labels = shift_labels.clone()
                shift_labels[:, :skip] = -100
            elif skip:
                labels = labels.clone()
                labels[:, : skip + 1] = -100
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, shift_labels=shift_labels, **kwargs
            )
        return ZooCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


__all__ = [
    "MemoryMosaicsCache",
    "MemoryMosaicsCacheLayer",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsModel",
    "MemoryMosaicsPreTrainedModel",
    "leaky_average",
]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooForSequenceClassification  # noqa: E402


class MemoryMosaicsForSequenceClassification(ZooForSequenceClassification, MemoryMosaicsPreTrainedModel):
    """Memory Mosaics with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    A bias-free `score` head reads the final LayerNorm's output (not scaled like the LM logits); each row is
    classified at its last token that is not `config.pad_token_id`, with transformers' loss for
    `config.problem_type` (see `zoo_classification`). Right- and left-padded batches (with their `attention_mask`)
    give every row what it gives alone. A causal-LM or bare checkpoint loads into it (`from_pretrained(folder,
    num_labels=N)`): the model is kept, `score` starts random.
    """

    def __init__(self, config: MemoryMosaicsConfig):
        super().__init__(config)
        self.model = MemoryMosaicsModel(config)
        self._add_score(config.hidden_size)
        self.post_init()


# Every saved Memory Mosaics names its classifier in auto_map, so that a causal-LM folder or Hub repository fine-tunes
# into a classifier with trust_remote_code=True where memory-zoo is not installed.
MemoryMosaicsPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = (
    "MemoryMosaicsForSequenceClassification"
)
__all__.append("MemoryMosaicsForSequenceClassification")
