"""Model configurations (plain data with documented fields), one module per architecture."""

from .configuration_masked_mixer import MaskedMixerConfig

__all__ = ["MaskedMixerConfig"]
