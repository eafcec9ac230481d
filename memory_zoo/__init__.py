"""memory-zoo: research architectures for memory in language models as first-class Hugging Face models.

Importing the package registers every architecture with the transformers Auto classes, so
`AutoModelForCausalLM.from_pretrained(folder)` works without `trust_remote_code` wherever memory-zoo is installed.
"""

import transformers
from transformers import AutoConfig

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
    LSWTForSequenceClassification,
    LSWTModel,
    MaskedMixerCache,
    MaskedMixerForCausalLM,
    MaskedMixerForSequenceClassification,
    MaskedMixerModel,
    MemoryLayersForCausalLM,
    MemoryLayersForSequenceClassification,
    MemoryLayersModel,
    MemoryMixerCache,
    MemoryMixerForCausalLM,
    MemoryMixerForSequenceClassification,
    MemoryMosaicsCache,
    MemoryMosaicsForCausalLM,
    MemoryMosaicsForSequenceClassification,
    MemoryMosaicsModel,
    MixerAutoencoderModel,
    RetrievalMixerModel,
    RetrievalMixerOutput,
    TransformerAutoencoderModel,
    VariableMemoryMixerForCausalLM,
    VariableMemoryMixerForSequenceClassification,
    VariableMemoryTransformerCache,
    VariableMemoryTransformerForCausalLM,
    VariableMemoryTransformerForSequenceClassification,
    memory_layers_param_groups,
    pool_hidden_states,
)
from .modeling.memory_layers_tensor_parallel import clip_grad_norm_, parallelize_memory_layers  # noqa: E402

# (config class, AutoModel class, AutoModelForCausalLM class or None) of every language-model architecture, and
# (config class, AutoModel class) of the task models (the retrieval mixer reads embeddings, not tokens): both derived
# from the records in memory_zoo/architectures.py, which also drive the Auto-class registration below.
ARCHITECTURES = [
    (record.config_class, record.model_class(),
     record.model_class("AutoModelForCausalLM") if record.causal_lm_class_name else None)
    for record in _records.ARCHITECTURES if record.role != "task"
]
TASK_MODELS = [(record.config_class, record.model_class()) for record in _records.ARCHITECTURES if record.role == "task"]

# Each record's Auto roles name the transformers Auto class itself (AutoModel, AutoModelForCausalLM,
# AutoModelForSequenceClassification, ...), so a role added to a record is registered here without a list to update.
for _record in _records.ARCHITECTURES:
    AutoConfig.register(_record.model_type, _record.config_class, exist_ok=True)
    for _auto, _class_name in _record.auto_classes.items():
        getattr(transformers, _auto).register(_record.config_class, _record.model_class(_auto), exist_ok=True)

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
    "LSWTForSequenceClassification",
    "LSWTModel",
    "MaskedMixerCache",
    "MaskedMixerConfig",
    "MaskedMixerForCausalLM",
    "MaskedMixerForSequenceClassification",
    "MaskedMixerModel",
    "MemoryLayersConfig",
    "MemoryLayersForCausalLM",
    "MemoryLayersForSequenceClassification",
    "MemoryLayersModel",
    "MemoryMixerCache",
    "MemoryMixerConfig",
    "MemoryMixerForCausalLM",
    "MemoryMixerForSequenceClassification",
    "MemoryMosaicsCache",
    "MemoryMosaicsConfig",
    "MemoryMosaicsForCausalLM",
    "MemoryMosaicsForSequenceClassification",
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
    "VariableMemoryMixerForSequenceClassification",
    "VariableMemoryTransformerCache",
    "VariableMemoryTransformerConfig",
    "VariableMemoryTransformerForCausalLM",
    "VariableMemoryTransformerForSequenceClassification",
    "clip_grad_norm_",
    "memory_layers_param_groups",
    "parallelize_memory_layers",
    "pool_hidden_states",
]
