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
from .modeling_memory_mixer import (
    MemoryMixerCache,
    MemoryMixerForCausalLM,
    VariableMemoryMixerForCausalLM,
    VariableMemoryMixerPreTrainedModel,
)
from .modeling_memory_mosaics import (
    MemoryMosaicsCache,
    MemoryMosaicsCacheLayer,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsModel,
    MemoryMosaicsPreTrainedModel,
)
from .modeling_memory_transformer import (
    MemoryTransformerPreTrainedModel,
    TransformerAutoencoderModel,
    VariableMemoryTransformerCache,
    VariableMemoryTransformerForCausalLM,
)
from .modeling_mixer_autoencoder import MixerAutoencoderModel, MixerAutoencoderPreTrainedModel
from .modeling_retrieval_mixer import RetrievalMixerModel, RetrievalMixerOutput, RetrievalMixerPreTrainedModel
from .zoo_common import ZooPreTrainedModel
from .zoo_embedding import pool_hidden_states
from .zoo_loading import CheckpointMismatchError
from .zoo_remote_code import export_remote_code

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
    "MemoryMixerForCausalLM",
    "MixerAutoencoderModel",
    "MixerAutoencoderPreTrainedModel",
    "RetrievalMixerModel",
    "RetrievalMixerOutput",
    "RetrievalMixerPreTrainedModel",
    "MemoryMixerCache",
    "VariableMemoryMixerForCausalLM",
    "VariableMemoryMixerPreTrainedModel",
    "MemoryTransformerPreTrainedModel",
    "TransformerAutoencoderModel",
    "VariableMemoryTransformerCache",
    "VariableMemoryTransformerForCausalLM",
    "ZooPreTrainedModel",
    "export_remote_code",
    "memory_layers_param_groups",
    "pool_hidden_states",
]
