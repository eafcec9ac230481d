"""memory-zoo: research architectures for memory in language models as first-class Hugging Face models.

Importing the package registers every architecture with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code` wherever memory-zoo is installed.
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from . import architectures as _records  # noqa: E402
from ._version import __version__  # noqa: E402
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

# (config class, AutoModel class, AutoModelForCausalLM class or None) of every language-model architecture, and
# (config class, AutoModel class) of the task models (the retrieval mixer reads embeddings, not tokens): both derived
# from the records in memory_zoo/architectures.py, which also drive the Auto-class registration below.
ARCHITECTURES = [
    (record.config_class, record.model_class(),
     record.model_class("AutoModelForCausalLM") if record.causal_lm_class_name else None)
    for record in _records.ARCHITECTURES if record.role != "task"
]
TASK_MODELS = [(record.config_class, record.model_class()) for record in _records.ARCHITECTURES if record.role == "task"]

_AUTO_CLASSES = {"AutoModel": AutoModel, "AutoModelForCausalLM": AutoModelForCausalLM}
for _record in _records.ARCHITECTURES:
    AutoConfig.register(_record.model_type, _record.config_class, exist_ok=True)
    for _auto, _class_name in _record.auto_classes.items():
        _AUTO_CLASSES[_auto].register(_record.config_class, _record.model_class(_auto), exist_ok=True)

# PEFT's default LoRA targets for our model types, when PEFT is installed (guarded; see memory_zoo/lora.py).
from .lora import register_peft_target_modules  # noqa: E402

register_peft_target_modules()

__all__ = [
    "ARCHITECTURES",
    "__version__",
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
