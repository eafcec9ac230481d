"""Strict loading: what `from_pretrained` of a memory-zoo model refuses or warns about, in words a user can act on.

Another architecture's folder, missing / unexpected / mismatched tensors, damaged safetensors files and non-finite
weights. ``ZooPreTrainedModel.from_pretrained`` calls :func:`load_strictly`. This file travels with every saved model.

Task heads (``TASK_HEADS``) are the one exception to strictness, as in transformers: a language-model checkpoint
loaded into a sequence classifier has no ``score`` yet (it starts from random weights, and transformers' loading report
says so), and a classifier's checkpoint loaded into a model without that head leaves the head behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging

from ..configuration.zoo_config import OtherArchitectureError

logger = logging.get_logger(__name__)

# Module names of the task heads a model may add to a language model (transformers' names: `score` for sequence
# classification). Fine-tuning starts from a checkpoint without them, so their absence is no mismatch.
TASK_HEADS = ("score",)


class CheckpointMismatchError(ValueError):
    """Raised when a checkpoint's tensors do not fit the model built from its config."""


def non_finite_tensors(tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinite value (meta tensors are skipped)."""
    return [name for name, tensor in tensors
            if tensor.is_floating_point() and tensor.device.type != "meta" and not bool(torch.isfinite(tensor).all())]


def warn_non_finite(model: nn.Module, where: str) -> list[str]:
    """Log a warning naming every parameter or buffer of `model` that holds NaN or infinite values."""
    bad = non_finite_tensors(chain(model.named_parameters(), model.named_buffers()))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        logger.warning(
            f"{len(bad)} tensor(s) of {where} hold NaN or infinite values ({shown}); every output that reads them "
            "will be NaN. The checkpoint was saved after training diverged or was damaged: use an earlier one."
        )
    return bad


def _damaged_weights(location, error: Exception) -> OSError:
    """The error for weights safetensors cannot read, naming the damaged file where it is on this disk."""
    folder = Path(location)
    damaged = None
    if folder.is_dir():
        from safetensors import safe_open

        for file in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(str(file), framework="pt"):
                    pass
            except Exception:
                damaged = file
                break
    where = damaged or f"the weights of {location}"
    fix = ("copy or download it again" if damaged else
           "download them again (from_pretrained(..., force_download=True)) or copy them again")
    return OSError(f"Could not read {where}: {error}. The file is damaged or incomplete (an interrupted download or "
                   f"copy): {fix}.")


def _mismatch(entry) -> tuple:
    """transformers reports a size mismatch as (key, checkpoint shape, model shape)."""
    if isinstance(entry, (tuple, list)) and len(entry) == 3:
        return tuple(entry)
    return entry, (), ()


def _without_task_heads(model: nn.Module, missing: Iterable[str], unexpected: Iterable[str]) -> tuple[set, set]:
    """`missing` and `unexpected` keys less those of task heads (`TASK_HEADS`) that are new or left behind.

    A head of the model none of whose tensors the checkpoint holds is new (initialised randomly, reported by
    transformers); a head the checkpoint holds but the model lacks is left behind. A head only partly present stays
    an error: that checkpoint is damaged, or belongs to another head.
    """
    missing, unexpected = set(missing), set(unexpected)
    own = set(model.state_dict())
    for head in TASK_HEADS:
        prefix = f"{head}."
        head_keys = {key for key in own if key.startswith(prefix)}
        if not head_keys:
            unexpected = {key for key in unexpected if not key.startswith(prefix)}
        elif head_keys <= missing:
            missing -= head_keys
    return missing, unexpected


def load_strictly(cls: type, load, pretrained_model_name_or_path, *model_args, strict: bool = True, **kwargs):
    """transformers' ``from_pretrained``, refusing what it would let through silently.

    * A folder saved by another architecture is refused before anything is built, naming both architectures.
    * With ``strict=True`` (the default) missing or unexpected tensors are an error listing them; ``strict=False``
      initialises missing tensors randomly and ignores unexpected ones, as transformers does. A task head (`score`)
      the checkpoint lacks entirely is new, and one the model lacks is left behind: neither is an error.
    * Tensors whose shape differs from the model's are an error unless ``ignore_mismatched_sizes=True``
      (transformers' own flag), which re-initialises them.
    * Weights holding NaN or infinite values load, with a warning naming the tensors.
    """
    want_info = kwargs.pop("output_loading_info", False)
    allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
    # Let transformers finish loading so that every problem can be reported at once, in our own words.
    try:
        model, info = load(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, ignore_mismatched_sizes=True,
            **kwargs,
        )
    except OtherArchitectureError as error:
        # Raised by the config class while transformers reads config.json; say which model class refused it.
        raise OtherArchitectureError(error.location, error.found, error.expected, cls.__name__) from None
    except Exception as error:
        if type(error).__name__ != "SafetensorError":  # safetensors' own error type, without importing it here
            raise
        raise _damaged_weights(pretrained_model_name_or_path, error) from error
    mismatched = [] if allow_mismatch else [
        f"{key} (checkpoint {tuple(saved)} vs model {tuple(built)})" if isinstance(key, str) else str(key)
        for key, saved, built in (_mismatch(entry) for entry in info.get("mismatched_keys") or [])
    ]
    problems = {"mismatched_keys": sorted(mismatched)}
    if strict:
        missing, unexpected = _without_task_heads(model, info.get("missing_keys") or [], info.get("unexpected_keys") or [])
        problems["missing_keys"] = sorted(missing)
        problems["unexpected_keys"] = sorted(unexpected)
    if any(problems.values()):
        lines = [f"The checkpoint at {pretrained_model_name_or_path!s} does not match {cls.__name__} built from its config:"]
        for key, values in problems.items():
            if values:
                shown = ", ".join(str(v) for v in values[:20]) + (" ..." if len(values) > 20 else "")
                lines.append(f"  {key.replace('_', ' ')} ({len(values)}): {shown}")
        fixes = ["Check that config.json belongs to these weights (research checkpoints must go through "
                 "`memory-zoo convert` first)"]
        if problems.get("missing_keys") or problems.get("unexpected_keys"):
            fixes.append("pass strict=False to initialise missing tensors randomly and ignore unexpected ones")
        if problems["mismatched_keys"]:
            fixes.append("pass ignore_mismatched_sizes=True to initialise the mismatched tensors randomly")
        lines.append(", or ".join(fixes) + ".")
        raise CheckpointMismatchError("\n".join(lines))
    warn_non_finite(model, f"the weights of {pretrained_model_name_or_path}")
    return (model, info) if want_info else model


__all__ = ["TASK_HEADS", "CheckpointMismatchError", "load_strictly", "non_finite_tensors", "warn_non_finite"]
