"""memory-zoo: research architectures for memory in language models as first-class Hugging Face models.

Importing the package registers every architecture with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code` wherever memory-zoo is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .configuration import (
    LSWTConfig,
    MaskedMixerConfig,
    MemoryLayersConfig,
    MemoryMixerConfig,
    MemoryMosaicsConfig,
    MixerAutoencoderConfig,
    RetrievalMixerConfig,
    TransformerAutoencoderConfig,
    VariableMemoryMixerConfig,
    VariableMemoryTransformerConfig,
)
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
    MemoryMixerCache,
    MemoryMixerForCausalLM,
    MemoryMosaicsCache,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsModel,
    MixerAutoencoderModel,
    RetrievalMixerModel,
    RetrievalMixerOutput,
    TransformerAutoencoderModel,
    VariableMemoryMixerForCausalLM,
    VariableMemoryTransformerCache,
    VariableMemoryTransformerForCausalLM,
    memory_layers_param_groups,
    pool_hidden_states,
)

__version__ = "0.1.0"

# (config class, AutoModel class, AutoModelForCausalLM class or None) of every architecture. Autoencoders have no
# causal-LM class; memory models are one model, registered for both Auto classes.
ARCHITECTURES = [
    (MaskedMixerConfig, MaskedMixerModel, MaskedMixerForCausalLM),
    (MemoryMosaicsConfig, MemoryMosaicsModel, MemoryMosaicsForCausalLM),
    (MemoryLayersConfig, MemoryLayersModel, MemoryLayersForCausalLM),
    (LSWTConfig, LSWTModel, LSWTForCausalLM),
    (MixerAutoencoderConfig, MixerAutoencoderModel, None),
    (VariableMemoryMixerConfig, VariableMemoryMixerForCausalLM, VariableMemoryMixerForCausalLM),
    (MemoryMixerConfig, MemoryMixerForCausalLM, MemoryMixerForCausalLM),
    (TransformerAutoencoderConfig, TransformerAutoencoderModel, None),
    (VariableMemoryTransformerConfig, VariableMemoryTransformerForCausalLM, VariableMemoryTransformerForCausalLM),
]

# (config class, AutoModel class) of the models that are not language models over tokens: the retrieval mixer reads
# embeddings made by a Masked Mixer's `embed(...)` and scores candidates.
TASK_MODELS = [
    (RetrievalMixerConfig, RetrievalMixerModel),
]

for _config, _base, _causal_lm in ARCHITECTURES:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)
    if _causal_lm is not None:
        AutoModelForCausalLM.register(_config, _causal_lm, exist_ok=True)
for _config, _base in TASK_MODELS:
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _base, exist_ok=True)

# PEFT's default LoRA targets for our model types, when PEFT is installed (guarded; see memory_zoo/lora.py).
from .lora import register_peft_target_modules  # noqa: E402

register_peft_target_modules()

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
    "MemoryMixerCache",
    "MemoryMixerConfig",
    "MemoryMixerForCausalLM",
    "MemoryMosaicsCache",
    "MemoryMosaicsConfig",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsModel",
    "MixerAutoencoderConfig",
    "MixerAutoencoderModel",
    "RetrievalMixerConfig",
    "RetrievalMixerModel",
    "RetrievalMixerOutput",
    "TASK_MODELS",
    "TransformerAutoencoderConfig",
    "TransformerAutoencoderModel",
    "VariableMemoryMixerConfig",
    "VariableMemoryMixerForCausalLM",
    "VariableMemoryTransformerCache",
    "VariableMemoryTransformerConfig",
    "VariableMemoryTransformerForCausalLM",
    "memory_layers_param_groups",
    "pool_hidden_states",
]
