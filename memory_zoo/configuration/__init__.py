"""Model configurations (plain data with documented fields), one module per architecture."""

from .configuration_masked_mixer import MaskedMixerConfig
from .configuration_memory_layers import MemoryLayersConfig
from .configuration_memory_mosaics import MemoryMosaicsConfig

__all__ = ["MaskedMixerConfig", "MemoryLayersConfig", "MemoryMosaicsConfig"]
