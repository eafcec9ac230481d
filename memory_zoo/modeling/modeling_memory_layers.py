"""PyTorch Memory Layers at Scale: a Llama-style decoder whose feed-forward, at some blocks, is a product-key memory.

Research code: facebookresearch/memory (`lingua/transformer.py`, `lingua/product_key/`, `apps/main/`). Same numerics
as the research model (interleaved rotary pairs, RMSNorm weight applied in float32, unscaled product-key scores, the
per-head float32 softmax, heads summed, PK+ `swilu` projection, gating after the projection). Differences, all
deliberate:

* one value table shared by every memory layer is one parameter, `model.memory_values.weight`, saved once (the
  research code registered it under every memory layer and its own loader could not read such checkpoints back);
* the table keeps its own dtype (`memory_value_dtype`, bfloat16 as in research training) when the rest is float32;
* the value read is a weighted embedding bag — the Triton `embedding_bag` Hub kernel on GPUs (float32 accumulation),
  `F.embedding_bag` elsewhere — and nothing of size tokens x slots is ever built, so million-slot memories run on CPU;
* Hugging Face generation with the standard `DynamicCache`, grouped-query attention included (the research
  generator crashed there), and left-padded batches (positions restart at each row's first real token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import can_return_tuple, logging

from ..configuration.configuration_memory_layers import MemoryLayersConfig
from ..ops.embedding_bag import embedding_bag_sum
from .zoo_attention import attention_with_weights, recorded_weights
from .zoo_common import ZooPreTrainedModel
from .zoo_compat import ZooCausalLMOutput, ZooModelOutput
from .zoo_forward import embed_inputs, kept_positions
from .zoo_layers import ZooRMSNorm, apply_interleaved_rotary, rotary_angles

logger = logging.get_logger(__name__)


@dataclass
class AttentionLayout:
    """What attention needs about the current call: rotary angles and the mask (`None` with `is_causal`)."""

    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None
    is_causal: bool


class MemoryLayersAttention(nn.Module):
    """Causal self-attention with interleaved rotary embeddings and grouped key/value heads; no biases."""

    def __init__(self, config: MemoryLayersConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.dropout = config.attention_dropout
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, hidden_states: torch.Tensor, layout: AttentionLayout, cache: Cache | None,
                output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attention output and, with `output_attentions`, the weights `[B, heads, new, cached + new]`."""
        batch, length, _ = hidden_states.shape
        # Head counts come from the projections (-1): under tensor parallelism a rank holds a slice of the heads.
        query = self.q_proj(hidden_states).view(batch, length, -1, self.head_dim)
        key = self.k_proj(hidden_states).view(batch, length, -1, self.head_dim)
        value = self.v_proj(hidden_states).view(batch, length, -1, self.head_dim)
        query = apply_interleaved_rotary(query, layout.cos, layout.sin).transpose(1, 2)
        key = apply_interleaved_rotary(key, layout.cos, layout.sin).transpose(1, 2)
        value = value.transpose(1, 2)
        if cache is not None:
            key, value = cache.update(key, value, self.layer_idx)
        attend = attention_with_weights if output_attentions else F.scaled_dot_product_attention
        out = attend(
            query, key, value, attn_mask=layout.mask, is_causal=layout.is_causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.num_kv_heads != self.num_heads,
        )
        out, weights = out if output_attentions else (out, None)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, -1)), weights


class MemoryLayersMLP(nn.Module):
    """SwiGLU feed-forward `down_proj(silu(gate_proj(x)) * up_proj(x))` (research `w2(silu(w1 x) * w3 x)`)."""

    def __init__(self, config: MemoryLayersConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.down_proj.init_role = "ffn_out"

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(hidden_states)) * self.up_proj(hidden_states))


class MemoryLayersValueTable(nn.Module):
    """A memory's value table `[slots, width]` and its weighted read: `out[n] = sum_j w[n, j] * weight[idx[n, j]]`.

    The read runs through the `embedding_bag` Hub kernel where it can, and in pure torch otherwise: `F.embedding_bag`
    for float32 tables, a chunked float32-accumulating gather for half-precision ones (so the fallback is as exact as
    the kernel). Either way the result is in the table's dtype, its gradient is a dense `[slots, width]` tensor like
    the table itself, and nothing of size tokens x slots is ever built.
    """

    def __init__(self, config: MemoryLayersConfig):
        super().__init__()
        dtype = getattr(torch, config.memory_value_dtype) if config.memory_value_dtype else None
        self.weight = nn.Parameter(torch.empty(config.memory_size, config.memory_value_width, dtype=dtype))
        self.kernel = (config.kernel_repo_id, config.kernel_revision) if config.use_kernels else None

    def forward(self, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return embedding_bag_sum(indices, self.weight, weights, self.kernel)


class MemoryLayersProductKeyMemory(nn.Module):
    """Product-key memory in the feed-forward slot (research `HashingMemory`), PK or PK+.

    Each of `memory_heads` heads scores its query halves against two sets of `memory_n_keys` sub-keys, keeps the top
    `memory_knn` of each, then the top `memory_knn` of their `knn x knn` sums (exact, by the product structure), and
    reads those slots of the value table with softmax weights; the heads' reads are summed.
    """

    def __init__(self, config: MemoryLayersConfig, owns_values: bool):
        super().__init__()
        self.heads, self.knn, self.n_keys = config.memory_heads, config.memory_knn, config.memory_n_keys
        self.k_dim = config.memory_k_dim
        width = config.memory_value_width
        # Row h * 2K + s * K + j is sub-key j of half s of head h (research layout).
        self.keys = nn.Parameter(torch.empty(2 * self.heads * self.n_keys, self.k_dim // 2))
        self.query_proj = nn.Linear(config.hidden_size, self.heads * self.k_dim, bias=True)
        self.values = MemoryLayersValueTable(config) if owns_values else None
        projected = config.memory_swilu_projection or config.memory_v_dim is not None
        self.value_proj = nn.Linear(width, config.hidden_size) if projected else None
        self.swilu_projection = nn.Linear(config.hidden_size, width) if config.memory_swilu_projection else None
        self.gating = nn.Linear(config.hidden_size, 1) if config.memory_gated else None
        self.query_proj.init_role = "memory_query"
        for proj in (self.value_proj, self.swilu_projection, self.gating):
            if proj is not None:
                proj.init_role = "memory_projection"

    def lookup(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and slot indices `[N, heads, knn]` (best first) for the flattened inputs `[N, hidden]`."""
        tokens = hidden_states.shape[0]
        query = self.query_proj(hidden_states).view(tokens, self.heads, 2, self.k_dim // 2)
        keys = self.keys.view(self.heads, 2, self.n_keys, self.k_dim // 2)
        scores = torch.einsum("nhsd,hskd->nhsk", query, keys)  # [N, H, 2, K]: at most K scores per half
        best, index = scores.topk(self.knn, dim=-1)  # [N, H, 2, knn]
        grid = best[:, :, 0, :, None] + best[:, :, 1, None, :]  # [N, H, knn, knn]
        slots = index[:, :, 0, :, None] * self.n_keys + index[:, :, 1, None, :]
        top, pick = grid.flatten(2).topk(self.knn, dim=-1)
        return top, slots.flatten(2).gather(-1, pick)

    def forward(self, hidden_states: torch.Tensor, shared_values: MemoryLayersValueTable | None = None):
        batch, length, hidden = hidden_states.shape
        flat = hidden_states.reshape(-1, hidden)
        scores, indices = self.lookup(flat)
        weights = torch.softmax(scores.float(), dim=-1).to(scores.dtype)
        table = self.values if self.values is not None else shared_values
        out = table(indices.flatten(1), weights.flatten(1)).to(flat.dtype)
        if self.swilu_projection is not None:
            out = self.value_proj(out * F.silu(self.swilu_projection(flat)))
        elif self.value_proj is not None:
            out = self.value_proj(out)
        if self.gating is not None:
            out = torch.sigmoid(self.gating(flat)) * out
        return out.view(batch, length, -1)


class MemoryLayersDecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: attention, then a SwiGLU feed-forward or a product-key memory, each with a residual."""

    def __init__(self, config: MemoryLayersConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.is_memory_layer = layer_idx in config.memory_layers
        self.input_layernorm = ZooRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MemoryLayersAttention(config, layer_idx)
        self.post_attention_layernorm = ZooRMSNorm(config.hidden_size, config.rms_norm_eps)
        if self.is_memory_layer:
            self.mlp = MemoryLayersProductKeyMemory(config, owns_values=not config.memory_share_values)
        else:
            self.mlp = MemoryLayersMLP(config)

    def forward(
        self, hidden_states: torch.Tensor, layout: AttentionLayout, cache: Cache | None = None,
        shared_values: MemoryLayersValueTable | None = None, output_attentions: bool = False,
    ) -> torch.Tensor:
        attended, _ = self.self_attn(self.input_layernorm(hidden_states), layout, cache, output_attentions)
        hidden_states = hidden_states + attended
        normed = self.post_attention_layernorm(hidden_states)
        update = self.mlp(normed, shared_values) if self.is_memory_layer else self.mlp(normed)
        return hidden_states + update


class MemoryLayersPreTrainedModel(ZooPreTrainedModel):
    """Weight initialisation (the research recipe), checkpoint loading and remote-code export."""

    config_class = MemoryLayersConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    # The value table is its own FSDP unit: it keeps its dtype (bfloat16 by default) next to float32 weights, and FSDP
    # flattens or all-gathers only parameters of one dtype per unit.
    _no_split_modules = ["MemoryLayersDecoderLayer", "MemoryLayersValueTable"]
    _supports_sdpa = True
    _auto_map_classes = {"AutoModel": "MemoryLayersModel", "AutoModelForCausalLM": "MemoryLayersForCausalLM"}

    def _init_weights(self, module: nn.Module) -> None:
        # transformers initialises children before parents and skips custom modules without parameters of their own,
        # so every Linear carries its research init rule (`init_role`) instead of being set up by its parent.
        config = self.config
        std = config.initializer_range or config.hidden_size**-0.5

        def trunc_normal(weight: torch.Tensor, sigma: float) -> None:
            init.trunc_normal_(weight, mean=0.0, std=sigma, a=-3 * sigma, b=3 * sigma)

        if isinstance(module, nn.Linear):
            role = getattr(module, "init_role", "base")
            if role == "base":  # attention projections, SwiGLU gate/up
                trunc_normal(module.weight, std)
            elif role == "ffn_out":
                trunc_normal(module.weight, config.initializer_range or config.intermediate_size**-0.5)
            elif role == "head":
                trunc_normal(module.weight, config.hidden_size**-0.5)
            elif role == "memory_query":
                init.xavier_uniform_(module.weight)
            else:  # memory projections and gate: N(0, 1/hidden) (the research output/input width)
                init.normal_(module.weight, mean=0.0, std=config.hidden_size**-0.5)
            if module.bias is not None:  # only memory layers have biases; the research code left them uninitialised
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            trunc_normal(module.weight, config.hidden_size**-0.5)
        elif isinstance(module, ZooRMSNorm):
            init.ones_(module.weight)
        elif isinstance(module, MemoryLayersValueTable):
            init.normal_(module.weight, mean=0.0, std=module.weight.shape[1] ** -0.5)
        elif isinstance(module, MemoryLayersProductKeyMemory):
            bound = module.k_dim**-0.5
            init.uniform_(module.keys, -bound, bound)


def _layout(config: MemoryLayersConfig, attention_mask: torch.Tensor | None, past_length: int, length: int,
            device: torch.device) -> AttentionLayout:
    """Rotary angles and mask. Without padding, positions are `past .. past + length - 1` and the mask is causal;
    with padding, every row's positions start at its first real token and padding is never attended to."""
    total = past_length + length
    padded = attention_mask is not None and not bool(attention_mask.bool().all())
    if attention_mask is not None and (attention_mask.dim() != 2 or attention_mask.shape[-1] != total):
        raise ValueError(
            f"attention_mask must have shape [batch, past + new tokens] = [*, {total}] (a 2-D 0/1 mask over the "
            f"cached and the new tokens), got {tuple(attention_mask.shape)}."
        )
    if not padded:
        positions = torch.arange(past_length, total, device=device)[None]
        cos, sin = rotary_angles(positions, config.head_dim, config.rope_theta)
        if past_length == 0:
            return AttentionLayout(cos, sin, None, length > 1)
        if length == 1:
            return AttentionLayout(cos, sin, None, False)
        causal = torch.arange(total, device=device)[None, :] <= positions[0, :, None]
        return AttentionLayout(cos, sin, causal[None, None], False)
    valid = attention_mask.bool()
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    cos, sin = rotary_angles(positions[:, past_length:], config.head_dim, config.rope_theta)
    query_index = torch.arange(past_length, total, device=device)
    allowed = (torch.arange(total, device=device)[None, :] <= query_index[:, None])[None] & valid[:, None, :]
    allowed = allowed | ~allowed.any(-1, keepdim=True)  # padding queries: anything, their outputs are unused
    return AttentionLayout(cos, sin, allowed[:, None], False)


class MemoryLayersModel(MemoryLayersPreTrainedModel):
    """The bare decoder: token embeddings, blocks (some with product-key memories), the shared value table and the
    final RMSNorm."""

    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: MemoryLayersConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList([MemoryLayersDecoderLayer(config, i) for i in range(config.num_hidden_layers)])
        self.memory_values = (
            MemoryLayersValueTable(config) if config.memory_share_values and config.memory_layers else None
        )
        self.norm = ZooRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        **kwargs,
    ) -> ZooModelOutput:
        r"""
        output_attentions: also return every block's attention weights `[batch, heads, new tokens, cached + new
            tokens]` (computed explicitly for that call; SDPA never returns them).
        """
        inputs_embeds = embed_inputs(self.embed_tokens, input_ids, inputs_embeds)
        use_cache = use_cache if use_cache is not None else self.config.use_cache
        if self.gradient_checkpointing and self.training:
            use_cache = False
        if cache is not None and not isinstance(cache, Cache):
            raise TypeError(f"cache must be a transformers Cache (e.g. DynamicCache), got "
                            f"{type(cache).__name__}.")
        if use_cache and cache is None:
            cache = DynamicCache()
        if not use_cache:
            cache = None
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        past_length = cache.get_seq_length() if cache is not None else 0
        layout = _layout(self.config, attention_mask, past_length, inputs_embeds.shape[1], inputs_embeds.device)
        hidden_states = inputs_embeds
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        with recorded_weights([layer.self_attn for layer in self.layers], output_attentions) as attentions:
            for layer in self.layers:
                hidden_states = layer(hidden_states, layout, cache, self.memory_values, output_attentions)
                if output_hidden_states:
                    all_hidden_states += (hidden_states,)
        all_attentions = tuple(attentions) if output_attentions else None
        hidden_states = self.norm(hidden_states)
        if output_hidden_states:
            all_hidden_states = all_hidden_states[:-1] + (hidden_states,)
        return ZooModelOutput(
            last_hidden_state=hidden_states, cache=cache, hidden_states=all_hidden_states, attentions=all_attentions
        )


class MemoryLayersForCausalLM(MemoryLayersPreTrainedModel, GenerationMixin):
    """Memory Layers decoder with an (untied, bias-free) language-modelling head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MemoryLayersConfig):
        super().__init__(config)
        self.model = MemoryLayersModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.lm_head.init_role = "head"
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
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
        logits = self.lm_head(kept_positions(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None or kwargs.get("shift_labels") is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return ZooCausalLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


def memory_layers_param_groups(
    model: nn.Module, lr: float, weight_decay: float = 0.1, value_lr: float | None = None,
    value_weight_decay: float | None = None,
) -> list[dict]:
    """AdamW parameter groups of the research recipe: value tables get their own fixed base learning rate.

    The research training (`lingua/optim.py`) puts the value tables in a group whose base learning rate is
    `value_fixed_lr` (config `memory_value_lr`, 0.001) while every other parameter uses `lr`; a scheduler then scales
    every group alike. It applies `weight_decay` to every parameter, values included; pass `value_weight_decay=0.0`
    to exempt the tables.

    Args:
        model: a `MemoryLayersForCausalLM` / `MemoryLayersModel` (or a wrapper of one, e.g. a PEFT model).
        lr: base learning rate of everything but the value tables.
        weight_decay: weight decay of everything but the value tables.
        value_lr: base learning rate of the value tables (default: `config.memory_value_lr`, or `lr` if that is None).
        value_weight_decay: weight decay of the value tables (default: `weight_decay`, as in the research code).
    """
    config = getattr(model, "config", None)
    if value_lr is None:
        value_lr = getattr(config, "memory_value_lr", None) or lr
    tables = {id(m.weight) for m in model.modules() if isinstance(m, MemoryLayersValueTable)}
    values, others, seen = [], [], set()
    for parameter in model.parameters():
        if not parameter.requires_grad or id(parameter) in seen:
            continue
        seen.add(id(parameter))
        (values if id(parameter) in tables else others).append(parameter)
    groups = [{"params": others, "lr": lr, "weight_decay": weight_decay}]
    if values:
        groups.append({"params": values, "lr": value_lr,
                       "weight_decay": weight_decay if value_weight_decay is None else value_weight_decay})
    return groups


__all__ = [
    "MemoryLayersForCausalLM",
    "MemoryLayersModel",
    "MemoryLayersPreTrainedModel",
    "MemoryLayersProductKeyMemory",
    "MemoryLayersValueTable",
    "memory_layers_param_groups",
]


# Sequence classification (kept at the end of the file: it travels in the remote code with the classes above).
from .zoo_classification import ZooForSequenceClassification  # noqa: E402


class MemoryLayersForSequenceClassification(ZooForSequenceClassification, MemoryLayersPreTrainedModel):
    """Memory Layers decoder with a sequence-classification head, as transformers' `LlamaForSequenceClassification`.

    A bias-free `score` head reads the final RMSNorm's output; each row is classified at its last token that is not
    `config.pad_token_id`, with transformers' loss for `config.problem_type` (see `zoo_classification`). Right- and
    left-padded batches (with their `attention_mask`) give every row what it gives alone. A causal-LM or bare
    checkpoint loads into it (`from_pretrained(folder, num_labels=N)`): the decoder and its memories are kept, `score`
    starts random. `memory_layers_param_groups` gives its value tables their own learning rate as for the causal LM.
    """

    def __init__(self, config: MemoryLayersConfig):
        super().__init__(config)
        self.model = MemoryLayersModel(config)
        self._add_score(config.hidden_size)
        self.post_init()


# Every saved Memory Layers model names its classifier in auto_map, so that a causal-LM folder or Hub repository
# fine-tunes into a classifier with trust_remote_code=True where memory-zoo is not installed.
MemoryLayersPreTrainedModel._auto_map_classes["AutoModelForSequenceClassification"] = (
    "MemoryLayersForSequenceClassification"
)
__all__.append("MemoryLayersForSequenceClassification")
