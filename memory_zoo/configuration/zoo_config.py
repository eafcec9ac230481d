"""Validation helpers shared by every memory-zoo config (travels with saved models as remote code)."""

from __future__ import annotations

from collections.abc import Iterable


def check_integers(config: object, names: Iterable[str], minimum: int = 1) -> None:
    """Raise a ValueError naming the field unless every ``config.<name>`` is an int (not a bool) >= ``minimum``."""
    kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}" if minimum else "a non-negative integer"
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{type(config).__name__}.{name} must be {kind}, got {value!r}.")


__all__ = ["check_integers"]
