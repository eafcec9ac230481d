"""PyTorch models, one module per architecture; each module is exported flat as remote code when saved."""

from .modeling_lswt import (
    LSWTCache,
    LSWTForCausalLM,
    LSWTForPreferenceHeads,
    LSWTForSequenceClassification,
    LSWTModel,
    LSWTPreTrainedModel,
)
from .modeling_masked_mixer import (
    MaskedMixerCache,
    MaskedMixerCacheLayer,
    MaskedMixerForCausalLM,
    MaskedMixerForSequenceClassification,
    MaskedMixerModel,
    MaskedMixerPreTrainedModel,
)
from .modeling_memory_layers import (
    MemoryLayersForCausalLM,
    MemoryLayersForSequenceClassification,
    MemoryLayersModel,
    MemoryLayersPreTrainedModel,
    memory_layers_param_groups,
)
from .modeling_memory_mixer import (
    MemoryMixerCache,
    MemoryMixerForCausalLM,
    MemoryMixerForSequenceClassification,
    VariableMemoryMixerForCausalLM,
    VariableMemoryMixerForSequenceClassification,
    VariableMemoryMixerPreTrainedModel,
)
from .modeling_memory_mosaics import (
    MemoryMosaicsCache,
    MemoryMosaicsCacheLayer,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsForSequenceClassification,
    MemoryMosaicsModel,
    MemoryMosaicsPreTrainedModel,
)
from .modeling_memory_transformer import (
    MemoryTransformerPreTrainedModel,
    TransformerAutoencoderModel,
    VariableMemoryTransformerCache,
    VariableMemoryTransformerForCausalLM,
    VariableMemoryTransformerForSequenceClassification,
)
from .modeling_mixer_autoencoder import MixerAutoencoderModel, MixerAutoencoderPreTrainedModel
from .modeling_retrieval_mixer import RetrievalMixerModel, RetrievalMixerOutput, RetrievalMixerPreTrainedModel
from .zoo_classification import ZooForSequenceClassification, ZooSequenceClassifierOutput
from .zoo_common import ZooPreTrainedModel
from .zoo_embedding import pool_hidden_states
from .zoo_loading import CheckpointMismatchError
from .zoo_remote_code import export_remote_code

__all__ = [
    "CheckpointMismatchError",
    "LSWTCache",
    "LSWTForCausalLM",
    "LSWTForPreferenceHeads",
    "LSWTForSequenceClassification",
    "LSWTModel",
    "LSWTPreTrainedModel",
    "MaskedMixerCache",
    "MaskedMixerCacheLayer",
    "MaskedMixerForCausalLM",
    "MaskedMixerForSequenceClassification",
    "MaskedMixerModel",
    "MaskedMixerPreTrainedModel",
    "MemoryLayersForCausalLM",
    "MemoryLayersForSequenceClassification",
    "MemoryLayersModel",
    "MemoryLayersPreTrainedModel",
    "MemoryMosaicsCache",
    "MemoryMosaicsCacheLayer",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsForSequenceClassification",
    "MemoryMosaicsModel",
    "MemoryMosaicsPreTrainedModel",
    "MemoryMixerForCausalLM",
    "MemoryMixerForSequenceClassification",
    "MixerAutoencoderModel",
    "MixerAutoencoderPreTrainedModel",
    "RetrievalMixerModel",
    "RetrievalMixerOutput",
    "RetrievalMixerPreTrainedModel",
    "MemoryMixerCache",
    "VariableMemoryMixerForCausalLM",
    "VariableMemoryMixerForSequenceClassification",
    "VariableMemoryMixerPreTrainedModel",
    "MemoryTransformerPreTrainedModel",
    "TransformerAutoencoderModel",
    "VariableMemoryTransformerCache",
    "VariableMemoryTransformerForCausalLM",
    "VariableMemoryTransformerForSequenceClassification",
    "ZooPreTrainedModel",
    "ZooForSequenceClassification",
    "ZooSequenceClassifierOutput",
    "export_remote_code",
    "memory_layers_param_groups",
    "pool_hidden_states",
]
