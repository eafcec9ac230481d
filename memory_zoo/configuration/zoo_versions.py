"""The transformers releases memory-zoo is proven on, and the check that refuses older ones by name.

Importing this module runs the check. It travels with every saved model and every configuration module imports it
first, so a checkpoint loaded as remote code under a transformers too old for it fails at once with the supported
range, instead of at an import or deep inside a forward pass.
The range is what ``benchmarks/compat_matrix.py`` proved; ``setup.cfg`` declares the same bounds (a test checks).
"""

from __future__ import annotations

import re

import transformers
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Oldest and newest transformers releases (major, minor) on which the model contract passed for every architecture.
OLDEST_SUPPORTED = (5, 20)
NEWEST_PROVEN = (5, 25)
SUPPORTED_RANGE = f">={OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]},<{NEWEST_PROVEN[0]}.{NEWEST_PROVEN[1] + 1}"


def release_of(version: str) -> tuple[int, int]:
    """(major, minor) of a version string such as "5.24.0" or "5.26.0.dev0"."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        raise ValueError(f"Cannot read a transformers version from {version!r}.")
    return int(match[1]), int(match[2])


def check_transformers_version(version: str | None = None) -> None:
    """Refuse a transformers older than the supported range; note once that a newer one has not been proven yet.

    Newer releases only log: they usually work, and refusing them would break every saved model the day a release
    ships. Older ones lack APIs the models use, so they fail here with the fix.
    """
    version = version or transformers.__version__
    release = release_of(version)
    if release < OLDEST_SUPPORTED:
        raise ImportError(
            f"memory-zoo models need transformers{SUPPORTED_RANGE}, but transformers {version} is installed. "
            f"Upgrade it: pip install 'transformers{SUPPORTED_RANGE}'."
        )
    if release > NEWEST_PROVEN:
        logger.warning_once(
            f"memory-zoo models are proven on transformers{SUPPORTED_RANGE}; transformers {version} is newer. If "
            f"something fails, install a proven release: pip install 'transformers{SUPPORTED_RANGE}'."
        )


check_transformers_version()

__all__ = ["NEWEST_PROVEN", "OLDEST_SUPPORTED", "SUPPORTED_RANGE", "check_transformers_version", "release_of"]
