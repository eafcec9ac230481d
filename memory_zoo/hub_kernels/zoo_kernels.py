"""Loading Hub kernels with a pure-torch fallback, shared by every memory-zoo model.

A model asks for a kernel by name; it gets the kernel module, loaded through the `kernels` package from the copy
packaged with memory-zoo (`memory_zoo/hub_kernels/<name>/`) or, where memory-zoo is not installed (remote code), from
the Hub repository its config names — or `None`, after one log line, when that is impossible (no GPU, no Triton,
offline, no `kernels` package). It never raises: the model's own pure-torch path is the reference implementation and
always works. This file travels with saved models as remote code, so it imports only the standard library and torch.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger("memory_zoo.kernels")

_LOADED: dict[tuple[str, str | None, str | None], ModuleType | None] = {}
_FALLBACK_LOGGED: set[tuple[str, str]] = set()


def kernel_runs_on(tensor: torch.Tensor) -> bool:
    """Whether a Triton kernel can run on ``tensor``: a GPU tensor, or any tensor under ``TRITON_INTERPRET=1``."""
    return tensor.device.type in ("cuda", "xpu") or os.environ.get("TRITON_INTERPRET") == "1"


def _log_fallback_once(name: str, reason: str, level: int) -> None:
    if (name, reason) not in _FALLBACK_LOGGED:
        _FALLBACK_LOGGED.add((name, reason))
        logger.log(level, "memory-zoo: %s kernel not used (%s); running the pure-torch path.", name, reason)


def load_hub_kernel(name: str, repo_id: str | None = None, revision: str | None = None) -> ModuleType | None:
    """The kernel module ``name`` (a folder under ``memory_zoo/hub_kernels``), or ``None`` if it cannot be loaded.

    Args:
        name: python name of the kernel (``masked_mixing``).
        repo_id: Hub kernel repository to fetch it from when there is no packaged copy.
        revision: branch (``v1``), tag or commit of ``repo_id``; pin a commit for reproducibility.
    """
    key = (name, repo_id, revision)
    if key in _LOADED:
        return _LOADED[key]
    module = None
    try:
        import kernels

        packaged = Path(__file__).parent / name
        if (packaged / "build").is_dir():
            module, where = kernels.get_local_kernel(packaged), f"packaged copy {packaged}"
        elif repo_id:
            module = kernels.get_kernel(repo_id, revision=revision, trust_remote_code=[repo_id])
            where = f"{repo_id}@{revision}"
        else:
            raise FileNotFoundError("no packaged copy and no kernel repository configured")
        if hasattr(module, "triton_available") and not module.triton_available():
            raise ImportError("Triton is not installed")
        logger.info("memory-zoo: using the %s kernel from %s.", name, where)
    except Exception as error:  # noqa: BLE001 - any failure means: use the reference path
        module = None
        _log_fallback_once(name, f"{type(error).__name__}: {error}", logging.WARNING)
    _LOADED[key] = module
    return module


def kernel_for(tensor: torch.Tensor, name: str, repo_id: str | None, revision: str | None) -> ModuleType | None:
    """The kernel to use for ``tensor``, or ``None`` for the pure-torch path (logged once per reason)."""
    if not kernel_runs_on(tensor):
        _log_fallback_once(name, f"tensors on {tensor.device.type}", logging.INFO)
        return None
    return load_hub_kernel(name, repo_id, revision)
