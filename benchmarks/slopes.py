"""How training cost grows with the sequence length, per architecture's pure-torch path: the log-log slopes.

For every causal LM of the zoo and a same-size `LlamaForCausalLM` (the yardstick), one forward + backward of a
batch of one sequence (`labels = input_ids`) is timed at each length of `--lengths` (512 ... 8192 by default) and its
peak memory measured above the resident model, each cell in a worker process of its own (peak RSS with the kernel's
high-water mark reset right before the step; `bench_common.run_cell`). Then, per architecture, the least-squares
slope of log(time), of log(peak memory) and of log(saved activations: the bytes the forward keeps for the backward,
counted exactly with saved-tensor hooks, where peak RSS also carries allocator noise) against log(length): 1 is
linear, 2 quadratic. Each architecture has an
order it cannot beat (`ORDER`: linear for leaky averages, chunked memories and product-key lookups; quadratic where
the model itself is, for in-context reads over all past tokens or L x L mixing); a slope clearly above it is a hidden
quadratic to find. On the CPU no kernel loads: this is the pure-torch path every CPU and every fallback runs.

    python benchmarks/slopes.py                      # writes benchmarks/results/slopes.json and slopes.png
    python benchmarks/slopes.py --quick --output /tmp/slopes.json     # seconds: short lengths, in-process
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import scoreboard_models  # noqa: E402
from bench_common import RESULT_TAG, machine_info, mark_peak, read_peak, run_cell, run_worker  # noqa: E402

RESULTS = ROOT / "results"
VOCAB = 512
HIDDEN = 128  # two heads of 64 features
LAYERS = 2  # two-stack models: one block per stack
# The growth of a training step no implementation of the architecture can avoid, as a log-log slope of time and of
# memory against the sequence length (1 linear, 2 quadratic). Attention reads every past token (time quadratic; its
# memory stays linear with SDPA's fused kernels); L x L mixing is quadratic in both (the matrices themselves).
ORDER = {
    "llama": {"time": 2, "memory": 1},
    "mamba": {"time": 1, "memory": 1},  # a recurrence: its pure-torch scan is a Python loop over the tokens
    "lswt": {"time": 2, "memory": 1},
    "memory_layers": {"time": 2, "memory": 1},
    "memory_mosaics": {"time": 2, "memory": 1},
    "masked_mixer": {"time": 2, "memory": 2},
    "variable_memory_mixer": {"time": 2, "memory": 2},
    "memory_mixer": {"time": 2, "memory": 2},
    "variable_memory_transformer": {"time": 2, "memory": 1},
}
# Mamba's pure-torch path on the CPU scans token by token in Python: one training step at 8192 tokens takes minutes,
# so it runs only when asked for (`--architectures ... mamba`; the quick run includes it).
DEFAULT_ARCHITECTURES = sorted(set(ORDER) - {"mamba"})
# Slack for a slope fitted over a short range (constant costs flatten the start): above order + SLACK is reported.
SLACK = 0.25
# Slopes are fitted over the longest lengths measured: at short ones constant costs and the allocator's reuse of freed
# memory (a few MiB either way) dominate, and a fit through them swings by +-0.8 from run to run.
FIT_POINTS = 3


def build(architecture: str, length: int) -> torch.nn.Module:
    """A small random model of `architecture` (or a yardstick) that reads `length` tokens, configured as the
    scoreboard configures it (`scoreboard_models`; fixed-context models are built for `length`)."""
    torch.manual_seed(0)
    return scoreboard_models._instantiate(architecture, HIDDEN, LAYERS, length, VOCAB, device="cpu")


def measure(cell: dict) -> dict:
    """Time and peak memory of `cell["repeats"]` forward + backward steps (median time, largest peak)."""
    model = build(cell["architecture"], cell["length"]).train()
    ids = torch.randint(3, VOCAB, (1, cell["length"]), generator=torch.Generator().manual_seed(0))
    times, peaks = [], []
    for _ in range(cell["repeats"] + 1):  # the first step warms up (allocator, lazy initialisation)
        model.zero_grad(set_to_none=True)
        gc.collect()
        method, baseline, _ = mark_peak(False)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        times.append(time.perf_counter() - start)
        peaks.append(read_peak(method) - baseline)
    return {"status": "ok", "seconds": statistics.median(times[1:]), "peak_bytes": int(max(peaks[1:])),
            "peak_method": method, "saved_bytes": saved_activation_bytes(model, ids)}


def saved_activation_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    """Bytes of the distinct tensors a forward saves for its backward, parameters excluded: the memory a training
    step holds between its forward and backward, counted exactly (peak RSS also sees the allocator's reuse and
    transient buffers, which swing it by 2x from step to step at long lengths)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(input_ids=ids, labels=ids).loss
    del loss
    return sum(storages.values())


def fit(lengths: list[int], values: list[float]) -> float | None:
    """Least-squares slope of log(value) against log(length); None with fewer than two positive points."""
    points = [(math.log(x), math.log(y)) for x, y in zip(lengths, values, strict=True) if y and y > 0]
    if len(points) < 2:
        return None
    mean_x = statistics.fmean(x for x, _ in points)
    mean_y = statistics.fmean(y for _, y in points)
    return (sum((x - mean_x) * (y - mean_y) for x, y in points)
            / sum((x - mean_x) ** 2 for x, _ in points))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 4.5))
    for ax, quantity, field, unit in ((axes[0], "time", "seconds", "s"), (axes[1], "memory", "peak_bytes", "MiB"),
                                      (axes[2], "saved", "saved_bytes", "MiB")):
        for architecture, row in report["architectures"].items():
            cells = [c for c in row["cells"] if c["status"] == "ok"]
            if not cells:
                continue
            scale = 1 if unit == "s" else 2**20
            slope = row["slopes"][quantity]
            ax.loglog([c["length"] for c in cells], [max(c[field], 1) / scale for c in cells], marker="o",
                      label=f"{architecture} ({'-' if slope is None else format(slope, '.2f')})")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(f"forward + backward {quantity} ({unit})")
        ax.set_title(f"{quantity}: log-log slope (last {FIT_POINTS} lengths) in the legend")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--architectures", nargs="+", default=DEFAULT_ARCHITECTURES, choices=sorted(ORDER),
                        help=f"default: {' '.join(DEFAULT_ARCHITECTURES)} (add mamba for the Mamba yardstick)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="lengths 64 and 128, one repeat, in this process")
    parser.add_argument("--output", type=Path, default=RESULTS / "slopes.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(RESULT_TAG + json.dumps(run_worker(json.loads(args.worker), measure)), flush=True)
        return 0
    if args.quick:
        args.lengths, args.repeats = [64, 128], 1
        if args.architectures == DEFAULT_ARCHITECTURES:
            args.architectures = sorted(ORDER)
    report = {"machine": machine_info("cpu"), "settings": {
        "hidden_size": HIDDEN, "layers": LAYERS, "configs": "benchmarks/scoreboard_models.py", "batch": 1, "repeats": args.repeats,
        "threads": args.threads, "lengths": args.lengths, "cells": "in-process" if args.quick else "one worker each",
        "kernels": "none on the CPU (pure torch)"}, "architectures": {}}
    for architecture in args.architectures:
        cells = []
        for length in args.lengths:
            cell = {"architecture": architecture, "length": length, "repeats": args.repeats, "device": "cpu",
                    "threads": args.threads, "in_process": args.quick, "worker_timeout": 1800}
            result = {**cell, **run_cell(cell, measure, __file__)}
            cells.append(result)
            shown = (f"{result['seconds'] * 1e3:9.1f} ms {result['peak_bytes'] / 2**20:9.1f} MiB peak "
                     f"{result['saved_bytes'] / 2**20:9.1f} MiB saved"
                     if result["status"] == "ok" else result["status"])
            print(f"{architecture:28s} T={length:5d}  {shown}", flush=True)
        ok = [c for c in cells if c["status"] == "ok"][-FIT_POINTS:]
        slopes = {"time": fit([c["length"] for c in ok], [c["seconds"] for c in ok]),
                  "memory": fit([c["length"] for c in ok], [c["peak_bytes"] for c in ok]),
                  "saved": fit([c["length"] for c in ok], [c["saved_bytes"] for c in ok])}
        order = ORDER[architecture]
        # saved activations have the order of the memory
        above = [q for q, s in slopes.items() if s is not None and s > order.get(q, order["memory"]) + SLACK]
        report["architectures"][architecture] = {"cells": cells, "slopes": slopes, "order": order,
                                                 "above_order": above}
    print("\nlog-log slopes (time; peak memory; saved activations) against the architecture's order:")
    for architecture, row in report["architectures"].items():
        shown = {q: "-" if v is None else format(v, ".2f") for q, v in row["slopes"].items()}
        flag = f"   ABOVE ORDER: {', '.join(row['above_order'])}" if row["above_order"] else ""
        print(f"  {architecture:28s} time {shown['time']:>5} (order {row['order']['time']})  memory "
              f"{shown['memory']:>5} saved {shown['saved']:>5} (order {row['order']['memory']}){flag}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output.with_suffix(".png"))
    print(f"wrote {args.output} and {args.output.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
