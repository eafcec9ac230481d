"""Convert blbadger/maskedmixers ``RetrievalMixer`` checkpoints (source ``retrieval-mixer``).

The research class is defined three times, with the same weights, in ``mixer_lm/retrieval_mixer_tinystories.py``,
``fineweb_retrieval.py`` and ``optimized_train_retrieval.py``: ``RetrievalMixer(dim, depth, n_samples)``, blocks
``mixerblocks.<i>.{seq_layernorm, conv, patch_layernorm, patch_ff.0, patch_ff.2}`` and ``retrieval_head``. Its
checkpoints are HF Trainer ``model.safetensors`` (or ``pytorch_model.bin``) files of that module. The slot mixing
``conv`` is a ``Conv1d(n, n, 1)`` used without a mask, stored here as its ``[n, n]`` matrix.
"""

from __future__ import annotations

import torch

from ..architectures import sources_of
from ..configuration.configuration_retrieval_mixer import RetrievalMixerConfig
from .common import ConversionError, TensorMapper, load_state_dict, reconcile, research_init_kwargs, warn_unknown_keys
from .masked_mixer import block_indices, move_norms_and_mlp

SOURCES = sources_of("retrieval_mixer")  # the `memory-zoo convert` names of memory_zoo/architectures.py

# Research names --config may carry: the constructor arguments, and the `device` global the scripts set.
RESEARCH_NAMES = {"dim", "depth", "n_samples", "device"}


def convert_retrieval_mixer_state_dict(
    state_dict: dict[str, torch.Tensor], research_config: dict | None = None
) -> tuple[RetrievalMixerConfig, dict[str, torch.Tensor], list[str]]:
    """Map a research ``RetrievalMixer`` state dict to a [`RetrievalMixerConfig`] and our state dict."""
    research_config = research_init_kwargs(dict(research_config or {}))
    warn_unknown_keys(research_config, RESEARCH_NAMES | {"class", "module"}, "retrieval-mixer")
    if research_config.get("class", "RetrievalMixer") != "RetrievalMixer":
        raise ConversionError(
            f"--config describes a research {research_config['class']}, not a RetrievalMixer. (The research "
            "RetrievalTransformer cannot be built: its code misspells nn.MultiheadAttention, so it has no checkpoints.)"
        )
    if any(key.startswith("wte.") or key.startswith("lm_head.") for key in state_dict):
        raise ConversionError("The checkpoint has token embeddings (wte / lm_head): it is a language model, not a "
                              "RetrievalMixer. Convert it with SOURCE masked-mixer; its embed() makes the embeddings "
                              "a retrieval mixer scores.")
    mapper = TensorMapper(state_dict)
    blocks = block_indices(state_dict, "RetrievalMixer")

    head = mapper.move("retrieval_head.weight", "score_head.weight")
    mapper.move("retrieval_head.bias", "score_head.bias")
    if head.dim() != 2 or head.shape[0] != 1:
        raise ConversionError(f"retrieval_head.weight should be [1, dim], got {tuple(head.shape)}.")
    hidden = reconcile(research_config, ["dim"], head.shape[1], "embedding width (retrieval_head columns)")
    reconcile(research_config, ["depth"], len(blocks), "number of mixerblocks")

    num_slots = None
    for i in blocks:
        old, new = f"mixerblocks.{i}.", f"layers.{i}."
        move_norms_and_mlp(mapper, old, new, mixing_norm="slot_norm")
        weight = mapper.move(old + "conv.weight", new + "slot_mixing.weight")
        if weight.dim() != 3 or weight.shape[0] != weight.shape[1] or weight.shape[2] != 1:
            raise ConversionError(f"{old}conv.weight should be a Conv1d(n, n, 1) weight [n, n, 1], "
                                  f"got {tuple(weight.shape)}.")
        mapper.target[new + "slot_mixing.weight"] = weight[..., 0].contiguous()
        mapper.move(old + "conv.bias", new + "slot_mixing.bias")
        if num_slots is not None and weight.shape[0] != num_slots:
            raise ConversionError(f"Block {i} mixes {weight.shape[0]} slots but block 0 mixes {num_slots}.")
        num_slots = weight.shape[0]
        if mapper.target[new + "channel_norm.weight"].shape[0] != hidden:
            raise ConversionError(f"{old}patch_layernorm has width {mapper.target[new + 'channel_norm.weight'].shape[0]}"
                                  f" but retrieval_head reads {hidden} features.")
    reconcile(research_config, ["n_samples"], num_slots, "number of slots (conv channels)")
    if mapper.source:
        raise ConversionError(
            f"The checkpoint has tensors a RetrievalMixer does not have: {', '.join(sorted(mapper.source))}."
        )
    config = RetrievalMixerConfig(
        hidden_size=hidden, num_hidden_layers=len(blocks), num_slots=num_slots,
        intermediate_size=mapper.target["layers.0.mlp.up_proj.weight"].shape[0],
    )
    notes = ["scores are returned as logits [batch, n_samples - 1] (research: [batch, n - 1, 1], or [batch, n, 1] "
             "with the query slot in optimized_train_retrieval.py)"]
    return config, mapper.target, notes


def convert_retrieval_mixer_checkpoint(file, source: str, research_config: dict):
    """`memory-zoo convert retrieval-mixer`: read the weights file and map it."""
    return convert_retrieval_mixer_state_dict(load_state_dict(file), research_config)


__all__ = ["SOURCES", "convert_retrieval_mixer_checkpoint", "convert_retrieval_mixer_state_dict"]

# The converter entry point `memory_zoo.conversion.convert` calls.
convert_checkpoint = convert_retrieval_mixer_checkpoint
