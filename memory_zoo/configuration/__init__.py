"""Model configurations (plain data with documented fields), one module per architecture."""

from .configuration_lswt import LSWTConfig
from .configuration_masked_mixer import MaskedMixerConfig
from .configuration_memory_layers import MemoryLayersConfig
from .configuration_memory_mosaics import MemoryMosaicsConfig

__all__ = ["LSWTConfig", "MaskedMixerConfig", "MemoryLayersConfig", "MemoryMosaicsConfig"]
