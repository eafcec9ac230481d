"""PyTorch models, one module per architecture; each module is exported flat as remote code when saved."""

from .modeling_masked_mixer import (
    MaskedMixerCache,
    MaskedMixerCacheLayer,
    MaskedMixerForCausalLM,
    MaskedMixerModel,
    MaskedMixerPreTrainedModel,
)
from .zoo_common import CheckpointMismatchError, ZooPreTrainedModel, export_remote_code

__all__ = [
    "CheckpointMismatchError",
    "MaskedMixerCache",
    "MaskedMixerCacheLayer",
    "MaskedMixerForCausalLM",
    "MaskedMixerModel",
    "MaskedMixerPreTrainedModel",
    "ZooPreTrainedModel",
    "export_remote_code",
]
