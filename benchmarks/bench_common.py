"""Machinery shared by the benchmark scripts: machine description, peak-memory measurement, worker processes.

Peak memory on the CPU: `ru_maxrss` cannot be reset and is inherited through fork/exec (a worker started by a parent
holding 1.5 GB reports >= 1.5 GB from its first instruction), so each measurement runs in a fresh worker process and,
on Linux, resets the per-process high-water mark behind it (`VmHWM`, via /proc/self/clear_refs) right before the
measured step. On CUDA it is `torch.cuda.max_memory_allocated`, in process. See benchmarks/README.md.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

# Prefix of the one stdout line a worker process answers with.
RESULT_TAG = "@@WORKER_RESULT@@ "


def machine_info(device: str | None = None) -> dict:
    """Platform, CPU, library versions, threads, memory (and the GPU on CUDA)."""
    processor = platform.processor()
    try:  # platform.processor() is often empty on Linux
        with open("/proc/cpuinfo") as f:
            processor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor)
    except OSError:
        pass
    info = {
        "platform": platform.platform(),
        "processor": processor,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_count": os.cpu_count(),
        "num_threads": torch.get_num_threads(),
    }
    if device is None:
        return info
    info["device"] = device
    try:
        with open("/proc/meminfo") as f:
            info["memory_total_bytes"] = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration, ValueError):
        pass
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
    return info


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not available on Windows
        return None


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    if abs(n) >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    return f"{n / 2**20:.0f} MiB" if abs(n) >= 100 * 2**20 else f"{n / 2**20:.1f} MiB"


def maxrss_bytes() -> int:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib if sys.platform == "darwin" else kib * 1024  # Linux reports KiB, macOS bytes


def vm_hwm_bytes() -> int:
    """This process's peak resident set size since the last reset (`VmHWM` of /proc/self/status, Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process to its current RSS (Linux >= 4.0); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        vm_hwm_bytes()
    except (OSError, StopIteration, ValueError):
        return False
    return True


def mark_peak(cuda: bool) -> tuple[str, int, int]:
    """Start a peak measurement: (method, baseline bytes, ru_maxrss now)."""
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return "cuda_max_memory_allocated", torch.cuda.memory_allocated(), 0
    if reset_peak_rss():
        return "vm_hwm_after_reset", vm_hwm_bytes(), maxrss_bytes()
    return "ru_maxrss", maxrss_bytes(), maxrss_bytes()


def read_peak(method: str) -> int:
    if method == "cuda_max_memory_allocated":
        return torch.cuda.max_memory_allocated()
    return vm_hwm_bytes() if method == "vm_hwm_after_reset" else maxrss_bytes()


def run_worker(cell: dict, measure: Callable[[dict], dict]) -> dict:
    """`measure(cell)` with the cell's thread count; a failure becomes the cell's status instead of an exception."""
    if cell.get("threads"):
        torch.set_num_threads(cell["threads"])
    try:
        return measure(cell)
    except torch.cuda.OutOfMemoryError as error:
        return {"status": f"failed: CUDA out of memory ({str(error).splitlines()[0]})"}
    except Exception as error:  # noqa: BLE001 - one failing cell (e.g. a kernel that rejects a width) is reported
        return {"status": f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"}


def run_cell(cell: dict, measure: Callable[[dict], dict], script: str | Path) -> dict:
    """On the CPU: `measure` in a fresh `script --worker CELL` process (its own peak RSS) unless `cell["in_process"]`;
    on CUDA: in this process."""
    if cell["device"] == "cuda" or cell.get("in_process"):
        try:
            return run_worker(cell, measure)
        finally:
            gc.collect()
            if cell["device"] == "cuda":
                torch.cuda.empty_cache()
    try:
        result = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", json.dumps(cell)],
                                capture_output=True, text=True, timeout=cell["worker_timeout"])
    except subprocess.TimeoutExpired:
        return {"status": f"failed: worker timed out after {cell['worker_timeout']} s"}
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_TAG)]
    if result.returncode != 0 or not lines:
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"status": f"failed: worker exited with {result.returncode} ({tail[-200:]})"}
    return json.loads(lines[-1][len(RESULT_TAG):])


def tensor_bytes(obj, seen: set | None = None, depth: int = 0) -> int:
    """Bytes of every distinct tensor reachable from a cache object (its layers, their attributes, lists, dicts):
    keys and values, recurrent states, Mamba's conv and recurrent states alike."""
    seen = set() if seen is None else seen
    if depth > 6 or id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in obj)
    if hasattr(obj, "__dict__") and not isinstance(obj, (type, torch.nn.Module)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in vars(obj).values())
    return 0


def kernel_skip_reason(device: str, name: str, config_class: type) -> str | None:
    """Why the Hub kernel `name` (as `config_class` configures it) cannot run here, or None."""
    if device != "cuda":
        return (f"skipped: the Triton {name} kernel needs a GPU; this run is on the CPU (use --device cuda on a "
                "machine with one)")
    from memory_zoo.hub_kernels import load_hub_kernel

    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("memory_zoo.kernels")
    handler = Keep()
    logger.addHandler(handler)
    try:
        defaults = config_class()
        kernel = load_hub_kernel(name, defaults.kernel_repo_id, defaults.kernel_revision)
    finally:
        logger.removeHandler(handler)
    if kernel is None:
        return f"skipped: the {name} kernel could not be loaded ({'; '.join(records) or 'no reason logged'})"
    return None
