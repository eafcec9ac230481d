"""Models of every architecture at a matched parameter budget, for the scoreboard benchmarks.

`build(model_type, params, context, vocab)` returns a randomly initialised model of that architecture whose
parameter count *outside the token embeddings and output head* is as close as the width grid allows to `params`,
built for sequences of `context` tokens. Widths move in steps of 64 (one attention / mixing head of 64 features),
depth is fixed per budget (`depth_for`), so every architecture gets the same depth and a width that spends the budget.

Besides the zoo's architectures, `YARDSTICKS` are the models a user would pick instead, built the same way and
reported in every table: transformers' `LlamaForCausalLM` (research Llama settings, heads of 64 features) and
`MambaForCausalLM` (its pure-torch path on the CPU: the sequential selective scan transformers falls back to without
the `mamba_ssm` kernels).

Fixed-context architectures (the Masked Mixer family) carry `context x context` mixing matrices per block: at long
contexts those alone exceed small budgets. They are still built at the width the budget would give at a reference
context (`REFERENCE_CONTEXT`), and the report states their real parameter count, rather than shrinking them to nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, MambaConfig, MambaForCausalLM

from memory_zoo import (
    ARCHITECTURES,
    LSWTConfig,
    MaskedMixerConfig,
    MemoryLayersConfig,
    MemoryMixerConfig,
    MemoryMosaicsConfig,
    MixerAutoencoderConfig,
    VariableMemoryMixerConfig,
)
from memory_zoo.configuration.configuration_memory_transformer import (
    TransformerAutoencoderConfig,
    VariableMemoryTransformerConfig,
    research_llama_config,
)

REFERENCE_CONTEXT = 512
MEMORY_CHUNKS = 4  # chunks of the variable-memory models (research: 4)
AUTOENCODERS = {config.model_type for config, _, causal in ARCHITECTURES if causal is None}


def depth_for(params: int) -> int:
    """Blocks per stack for a budget: 4 up to ~20M non-embedding parameters, 8 above."""
    return 4 if params <= 20_000_000 else 8


def _llama(hidden: int, layers: int, vocab: int, context: int) -> dict:
    config = research_llama_config(hidden, layers, num_attention_heads=max(1, hidden // 64), vocab_size=vocab)
    config.max_position_embeddings = max(context, 2048)
    return config.to_dict()


# model_type -> function(hidden, layers, context, vocab) -> config. Two-stack models (encoder + decoder) split the
# depth between the stacks so that they spend the same budget as a one-stack model.
CONFIGS: dict[str, Callable[[int, int, int, int], object]] = {
    "masked_mixer": lambda h, n, c, v: MaskedMixerConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n,
                                                         max_position_embeddings=c),
    "memory_mosaics": lambda h, n, c, v: MemoryMosaicsConfig(
        vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=max(1, h // 64),
        pmem_size=h * 7 // 2, block_size=c),
    "memory_layers": lambda h, n, c, v: MemoryLayersConfig(
        vocab_size=v, hidden_size=h, num_hidden_layers=n, num_attention_heads=max(1, h // 64),
        memory_layers=[n // 2], memory_n_keys=128, memory_k_dim=min(256, h), max_position_embeddings=max(c, 2048)),
    "lswt": lambda h, n, c, v: LSWTConfig(vocab_size=v, embedding_size=h, hidden_size=h, intermediate_size=4 * h,
                                          num_attention_heads=max(1, h // 64), num_hidden_layers=n,
                                          max_position_embeddings=max(c, 2048)),
    "mixer_autoencoder": lambda h, n, c, v: MixerAutoencoderConfig(
        vocab_size=v, hidden_size=h, encoder_layers=max(1, n // 2), decoder_layers=max(1, n // 2), window_length=c),
    "variable_memory_mixer": lambda h, n, c, v: VariableMemoryMixerConfig(
        vocab_size=v, encoder_hidden_size=h, hidden_size=h, encoder_layers=max(1, n // 2),
        decoder_layers=max(1, n // 2), chunk_length=max(1, c // MEMORY_CHUNKS), num_chunks=MEMORY_CHUNKS,
        compression=1),
    "memory_mixer": lambda h, n, c, v: MemoryMixerConfig(
        vocab_size=v, encoder_hidden_size=h, hidden_size=h, encoder_layers=max(1, n // 2),
        decoder_layers=max(1, n // 2), chunk_length=max(1, c // MEMORY_CHUNKS), compression=1,
        memory_source="previous_chunk"),
    "transformer_autoencoder": lambda h, n, c, v: TransformerAutoencoderConfig(
        vocab_size=v, encoder_config=_llama(h, max(1, n // 2), v, c), decoder_config=_llama(h, max(1, n // 2), v, c),
        window_length=c),
    "variable_memory_transformer": lambda h, n, c, v: VariableMemoryTransformerConfig(
        vocab_size=v, encoder_config=_llama(h, max(1, n // 2), v, c), decoder_config=_llama(h, max(1, n // 2), v, c),
        chunk_length=max(1, c // MEMORY_CHUNKS), num_chunks=MEMORY_CHUNKS),
    # the yardsticks
    "llama": lambda h, n, c, v: LlamaConfig(**_llama(h, n, v, c)),
    # Mamba's defaults (state 16, expand 2, conv 4); tied embeddings as in the Mamba checkpoints
    "mamba": lambda h, n, c, v: MambaConfig(vocab_size=v, hidden_size=h, num_hidden_layers=n, state_size=16,
                                            expand=2, conv_kernel=4),
}

# model_type -> class of the models a user would pick instead, reported next to the zoo's in every table
YARDSTICKS: dict[str, type] = {"llama": LlamaForCausalLM, "mamba": MambaForCausalLM}
YARDSTICK = "llama"  # the one every ratio is taken against
ZOO_ARCHITECTURES = [config.model_type for config, _, _ in ARCHITECTURES]
ALL_ARCHITECTURES = ZOO_ARCHITECTURES + list(YARDSTICKS)
# What the scoreboard runs unless told otherwise: Mamba's pure-torch scan (a Python loop over the tokens on the CPU)
# would take over an hour of the default scale's training tasks; `--architectures ... mamba` adds it.
DEFAULT_ARCHITECTURES = ZOO_ARCHITECTURES + [YARDSTICK]


def yardstick(hidden: int, layers: int, context: int, vocab: int) -> nn.Module:
    """A `LlamaForCausalLM` of the width and depth the zoo's models get (heads of 64 features, MLP 4 x wide)."""
    return _instantiate(YARDSTICK, hidden, layers, context, vocab, device="cpu")


def model_class(model_type: str) -> type:
    """The class the scoreboard uses: the causal LM, the AutoModel class of an autoencoder, or a yardstick's."""
    if model_type in YARDSTICKS:
        return YARDSTICKS[model_type]
    for config, base, causal in ARCHITECTURES:
        if config.model_type == model_type:
            return causal or base
    raise KeyError(f"Unknown architecture {model_type!r}; known: {sorted(CONFIGS)}.")


def _embedding_parameters(model: nn.Module) -> int:
    """Parameters of token embeddings and output heads (vocabulary-sized matrices), counted once if tied."""
    seen, total = set(), 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        is_vocab = isinstance(module, nn.Embedding) or (isinstance(module, nn.Linear) and module is getattr(
            model, "lm_head", None))
        if is_vocab and weight is not None and id(weight) not in seen:
            seen.add(id(weight))
            total += weight.numel()
    return total


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total parameters and those outside the token embeddings / output head."""
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    return {"total": total, "non_embedding": total - _embedding_parameters(model)}


def _instantiate(model_type: str, hidden: int, layers: int, context: int, vocab: int, device: str = "meta"):
    config = CONFIGS[model_type](hidden, layers, context, vocab)
    with torch.device(device):
        return model_class(model_type)(config)


def width_for(model_type: str, params: int, vocab: int, context: int = REFERENCE_CONTEXT) -> int:
    """The width (multiple of 64) whose non-embedding parameter count at `context` is closest to `params`."""
    layers = depth_for(params)
    best, best_gap = 64, math.inf
    for hidden in range(64, 4097, 64):
        count = count_parameters(_instantiate(model_type, hidden, layers, context, vocab))["non_embedding"]
        gap = abs(math.log(count / params))
        if gap < best_gap:
            best, best_gap = hidden, gap
        if count > params:  # counts grow with width: past the budget nothing gets closer
            break
    return best


def build(model_type: str, params: int, context: int, vocab: int, seed: int = 0,
          hidden: int | None = None) -> tuple[nn.Module, dict]:
    """A random model of `model_type` at the `params` budget, built for `context` tokens, and what it is.

    Returns `(model, info)` with info: `hidden`, `layers`, `context`, `parameters` (total / non_embedding).
    """
    hidden = hidden or width_for(model_type, params, vocab)
    layers = depth_for(params)
    torch.manual_seed(seed)
    model = _instantiate(model_type, hidden, layers, context, vocab, device="cpu")
    return model, {"hidden": hidden, "layers": layers, "context": context, "parameters": count_parameters(model)}


__all__ = ["ALL_ARCHITECTURES", "AUTOENCODERS", "CONFIGS", "DEFAULT_ARCHITECTURES", "REFERENCE_CONTEXT", "YARDSTICK", "YARDSTICKS",
           "ZOO_ARCHITECTURES", "build", "count_parameters", "depth_for",
           "model_class", "width_for", "yardstick"]
