"""PyTorch models, one module per architecture; each module is exported flat as remote code when saved."""

from .modeling_lswt import LSWTCache, LSWTForCausalLM, LSWTForPreferenceHeads, LSWTModel, LSWTPreTrainedModel
from .modeling_masked_mixer import (
    MaskedMixerCache,
    MaskedMixerCacheLayer,
    MaskedMixerForCausalLM,
    MaskedMixerModel,
    MaskedMixerPreTrainedModel,
)
from .modeling_memory_layers import (
    MemoryLayersForCausalLM,
    MemoryLayersModel,
    MemoryLayersPreTrainedModel,
    memory_layers_param_groups,
)
from .modeling_memory_mosaics import (
    MemoryMosaicsCache,
    MemoryMosaicsCacheLayer,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsModel,
    MemoryMosaicsPreTrainedModel,
)
from .zoo_common import CheckpointMismatchError, ZooPreTrainedModel, export_remote_code

__all__ = [
    "CheckpointMismatchError",
    "LSWTCache",
    "LSWTForCausalLM",
    "LSWTForPreferenceHeads",
    "LSWTModel",
    "LSWTPreTrainedModel",
    "MaskedMixerCache",
    "MaskedMixerCacheLayer",
    "MaskedMixerForCausalLM",
    "MaskedMixerModel",
    "MaskedMixerPreTrainedModel",
    "MemoryLayersForCausalLM",
    "MemoryLayersModel",
    "MemoryLayersPreTrainedModel",
    "MemoryMosaicsCache",
    "MemoryMosaicsCacheLayer",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsModel",
    "MemoryMosaicsPreTrainedModel",
    "ZooPreTrainedModel",
    "export_remote_code",
    "memory_layers_param_groups",
]
