"""Validation helpers shared by every memory-zoo config (travels with saved models as remote code)."""

from __future__ import annotations

from collections.abc import Iterable

from transformers.activations import ACT2FN

from .zoo_versions import SUPPORTED_RANGE  # noqa: F401  (the import refuses an unsupported transformers by name)

# Hub kernel repositories: one per kernel under memory_zoo/hub_kernels/ (its build.toml `repo-id` must agree; a test
# checks), published by `memory-zoo push-kernels`; models pin the major-version branch.
KERNEL_ORGANIZATION = "memory-zoo"
KERNEL_REVISION = "v1"

# Output keys the Trainer leaves out of evaluation logits: the cache, under its name before and since transformers 5.24.
KEYS_TO_IGNORE_AT_INFERENCE = ["cache", "past_key_values"]


def default_kernel_repo(name: str) -> str:
    """The default Hub repository of the kernel `memory_zoo/hub_kernels/<name>` (e.g. "memory-zoo/masked-mixing")."""
    return f"{KERNEL_ORGANIZATION}/{name.replace('_', '-')}"


def check_integers(config: object, names: Iterable[str], minimum: int = 1) -> None:
    """Raise a ValueError naming the field unless every ``config.<name>`` is an int (not a bool) >= ``minimum``."""
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}" if minimum else "a non-negative integer"
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{type(config).__name__}.{name} must be {kind}, got {value!r}.")


def check_activation(config: object, name: str = "hidden_act") -> None:
    """Raise a ValueError naming the choices unless ``config.<name>`` is an activation transformers knows."""
    value = getattr(config, name)
    if value not in ACT2FN:
        raise ValueError(f"Unknown {name} {value!r}; choose one of {sorted(ACT2FN)}.")


__all__ = ["KERNEL_ORGANIZATION", "KERNEL_REVISION", "KEYS_TO_IGNORE_AT_INFERENCE", "check_activation", "check_integers", "default_kernel_repo"]
