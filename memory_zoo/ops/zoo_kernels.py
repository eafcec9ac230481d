"""Loading Hub kernels, and the one dispatch every op uses: the kernel if it loads and works, else the reference.

A model asks for a kernel by name; it gets the kernel module, loaded through the `kernels` package from the source
packaged with memory-zoo (`memory_zoo/hub_kernels/<name>/torch-ext/`, assembled into a temporary build tree) or,
where memory-zoo is not installed (remote code), from the Hub repository its config names — or `None`, after one log
line, when that is impossible (no GPU, no Triton, offline, no `kernels` package). :func:`dispatch` runs an op through
the kernel and falls back to the op's pure-torch reference (the ground truth, beside it in `memory_zoo/ops/`) when
there is none or when the kernel fails at run time, again with one log line. Nothing here raises. This file travels
with saved models as remote code, so it imports only the standard library and torch.
"""

from __future__ import annotations

import atexit
import importlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import torch

logger = logging.getLogger("memory_zoo.kernels")

_LOADED: dict[tuple[str, str | None, str | None], ModuleType | None] = {}
_FALLBACK_LOGGED: set[tuple[str, str]] = set()
# The kernel sources packaged with memory-zoo (absent in a saved model's remote-code folder).
_PACKAGED = Path(__file__).resolve().parent.parent / "hub_kernels"
_ASSEMBLED: list[Path] = []
_Result = TypeVar("_Result")


def _assembled(kernel_dir: Path) -> Path:
    """A temporary kernel repository holding `kernel_dir`'s published tree (built from its source once per process)."""
    # Only reached where the packaged sources exist; looked up by name so that remote code does not list memory-zoo
    # among its requirements.
    build_kernel = importlib.import_module("memory_zoo.hub_kernels.build").build_kernel

    if not _ASSEMBLED:
        _ASSEMBLED.append(Path(tempfile.mkdtemp(prefix="memory-zoo-kernels-")))
        atexit.register(shutil.rmtree, _ASSEMBLED[0], True)
    repository = _ASSEMBLED[0] / kernel_dir.name
    if not (repository / "build").is_dir():
        build_kernel(kernel_dir, repository / "build")
    return repository


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

        packaged = _PACKAGED / name
        if (packaged / "torch-ext").is_dir():
            module, where = kernels.get_local_kernel(_assembled(packaged)), f"packaged source {packaged}"
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


def dispatch(name: str, kernel_spec: tuple[str | None, str | None] | None, tensor: torch.Tensor,
             run_kernel: Callable[[ModuleType], _Result], run_reference: Callable[[], _Result]) -> _Result:
    """`run_kernel(kernel)` where the `name` kernel is switched on (`kernel_spec` = (repo_id, revision)), loads and
    can run on `tensor`; `run_reference()` otherwise. A kernel that loads but fails when called (an unsupported GPU, a
    Triton compile error) is logged once and not tried again in this process."""
    kernel = kernel_for(tensor, name, *kernel_spec) if kernel_spec is not None else None
    if kernel is None:
        return run_reference()
    try:
        return run_kernel(kernel)
    except Exception as error:  # noqa: BLE001 - the reference is exact; the failure is logged, not hidden
        _LOADED[(name, *kernel_spec)] = None
        _log_fallback_once(name, f"it failed when called: {type(error).__name__}: {error}", logging.WARNING)
        return run_reference()


__all__ = ["dispatch", "kernel_for", "kernel_runs_on", "load_hub_kernel"]
