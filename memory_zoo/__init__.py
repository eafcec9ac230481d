"""memory-zoo: research architectures for memory in language models as first-class Hugging Face models.

Importing the package registers every architecture with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code` wherever memory-zoo is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import LSWTConfig, MaskedMixerConfig, MemoryLayersConfig, MemoryMosaicsConfig
from .modeling import (
    CheckpointMismatchError,
    LSWTCache,
    LSWTForCausalLM,
    LSWTForPreferenceHeads,
    LSWTModel,
    MaskedMixerCache,
    MaskedMixerForCausalLM,
    MaskedMixerModel,
    MemoryLayersForCausalLM,
    MemoryLayersModel,
    MemoryMosaicsCache,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsModel,
    memory_layers_param_groups,
)

__version__ = "0.1.0"

# (config class, base model, causal-LM model) of every architecture.
ARCHITECTURES = [
    (MaskedMixerConfig, MaskedMixerModel, MaskedMixerForCausalLM),
    (MemoryMosaicsConfig, MemoryMosaicsModel, MemoryMosaicsForCausalLM),
    (MemoryLayersConfig, MemoryLayersModel, MemoryLayersForCausalLM),
    (LSWTConfig, LSWTModel, LSWTForCausalLM),
]

for _config, _base, _causal_lm in ARCHITECTURES:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    AutoModelForCausalLM.register(_config, _causal_lm, exist_ok=True)

__all__ = [
    "ARCHITECTURES",
    "CheckpointMismatchError",
    "LSWTCache",
    "LSWTConfig",
    "LSWTForCausalLM",
    "LSWTForPreferenceHeads",
    "LSWTModel",
    "MaskedMixerCache",
    "MaskedMixerConfig",
    "MaskedMixerForCausalLM",
    "MaskedMixerModel",
    "MemoryLayersConfig",
    "MemoryLayersForCausalLM",
    "MemoryLayersModel",
    "MemoryMosaicsCache",
    "MemoryMosaicsConfig",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsModel",
    "memory_layers_param_groups",
]
