"""The memory-zoo release (setup.cfg holds the same number; a test checks)."""

__version__ = "0.1.0"
