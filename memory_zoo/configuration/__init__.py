"""Model configurations (plain data with documented fields): one module per modeling module."""

from .configuration_lswt import LSWTConfig
from .configuration_masked_mixer import MaskedMixerConfig
from .configuration_memory_layers import MemoryLayersConfig
from .configuration_memory_mixer import MemoryMixerConfig, VariableMemoryMixerConfig
from .configuration_memory_mosaics import MemoryMosaicsConfig
from .configuration_memory_transformer import (
    TransformerAutoencoderConfig,
    VariableMemoryTransformerConfig,
    research_llama_config,
)
from .configuration_mixer_autoencoder import MixerAutoencoderConfig
from .configuration_retrieval_mixer import RetrievalMixerConfig

__all__ = ["LSWTConfig", "MaskedMixerConfig", "MemoryLayersConfig", "MemoryMixerConfig", "MemoryMosaicsConfig", "MixerAutoencoderConfig",
           "RetrievalMixerConfig",
           "TransformerAutoencoderConfig", "VariableMemoryMixerConfig", "VariableMemoryTransformerConfig",
           "research_llama_config"]
