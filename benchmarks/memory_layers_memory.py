"""Forward+backward time and peak memory of one product-key memory layer against a dense SwiGLU FFN of equal FLOPs.

The memory layer is a standalone PK+ `MemoryLayersProductKeyMemory` (`memory_swilu_projection=True`) that owns its
`MemoryLayersValueTable` (`memory_n_keys ** 2` slots of width `hidden`, bfloat16 by default); the dense layer is a
`MemoryLayersMLP` whose intermediate size gives it the same multiply-adds per token as the memory layer at each
memory size (see `memory_macs`). Three paths:

* `memory_fallback`: the memory layer with `use_kernels=False` - the value read is `F.embedding_bag`;
* `memory_kernel`: the memory layer with the Triton `embedding_bag` Hub kernel (needs `--device cuda`; skipped on the
  CPU);
* `dense_ffn`: the equal-FLOPs SwiGLU feed-forward.

    python benchmarks/memory_layers_memory.py              # default run (CPU), writes benchmarks/results/*
    python benchmarks/memory_layers_memory.py --quick      # smoke test (a few seconds), writes to the temp dir
    python benchmarks/memory_layers_memory.py --device cuda --output /tmp/ml_cuda.json   # adds the kernel path

Loss = mean of the squared layer output over a random `[sequences, tokens / sequences, hidden]` input that requires
grad; the backward produces the gradients of every parameter (the dense `[slots, hidden]` value-table gradient
included) and of the input. Parameter gradients are set to None before every step (what `optimizer.zero_grad()` does
by default), so the measured peak includes allocating them. On the CPU every (path, size) cell runs in a fresh
subprocess (this script with a hidden `--worker` flag; `--quick` runs them in-process) and its peak memory is the
increase of the peak resident set size over a baseline taken just before the measured step; on CUDA it is the
increase of `torch.cuda.max_memory_allocated`. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULT_TAG,
    fmt_bytes,
    kernel_skip_reason,
    load_average,
    machine_info,
    mark_peak,
    maxrss_bytes,
    read_peak,
    run_cell,
    run_worker,
)

from memory_zoo import MemoryLayersConfig, MemoryLayersModel

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "memory_layers_memory.json"
QUICK_OUTPUT = Path(tempfile.gettempdir()) / "memory_layers_memory_quick.json"
PATHS = ("memory_fallback", "memory_kernel", "dense_ffn")
MEMORY_PATHS = ("memory_fallback", "memory_kernel")
VALUE_DTYPES = ("bfloat16", "float32", "float16")

# Values used when a flag is not given; `--quick` swaps in the second set (explicit flags still win).
DEFAULTS = {
    "n_keys": [256, 512, 1024, 2048], "tokens": 2048, "sequences": 4, "hidden": 512, "memory_heads": 4,
    "knn": 32, "k_dim": 256, "repeats": 5, "time_budget": 15.0,
}
QUICK = {
    "n_keys": [64, 128], "tokens": 128, "sequences": 2, "hidden": 64, "memory_heads": 4,
    "knn": 16, "k_dim": 32, "repeats": 1, "time_budget": 5.0,
}
WARMUP_TOKENS = 32  # the tiny warm-up's length (first-call setup; its gradients are dropped before the measurement)


# --------------------------------------------------------------------------------------------------------------------
# Equal FLOPs and parameter counts.
# --------------------------------------------------------------------------------------------------------------------


def memory_macs(hidden: int, heads: int, k_dim: int, n_keys: int, knn: int, value_width: int) -> dict:
    """Forward multiply-adds per token of a PK+ memory layer (notation of the spec, §3).

    Counted (one MAC = one multiply and one add):
      query    d * H * D         the query projection `Linear(d -> H * D)`
      scoring  H * 2 * K * D/2   each head's two query halves against its two sets of K sub-keys (= H * K * D)
      read     H * k * v         the weighted sum of the H * k value rows read (the embedding bag)
      proj     2 * d * v         PK+: `swilu_projection` (d -> v) and `value_proj` (v -> d)
    Not counted (reported under `not_counted`): the k x k candidate sums (H * k^2 additions), the top-k selections
    (comparisons over 2K sub-key scores and k^2 candidates per head), the softmax over H * k scores, the SiLU and the
    elementwise product of PK+ (v each), biases. The scoring term is the only one that grows with the memory size.
    """
    terms = {
        "query": hidden * heads * k_dim,
        "scoring": heads * 2 * n_keys * (k_dim // 2),
        "read": heads * knn * value_width,
        "projections": 2 * hidden * value_width,
    }
    return {
        **terms, "total": sum(terms.values()),
        "not_counted": {"candidate_sum_adds": heads * knn * knn,
                        "topk_elements_scanned": heads * (2 * n_keys + knn * knn),
                        "softmax_exps": heads * knn, "swilu_elementwise": 2 * value_width},
    }


def dense_intermediate(macs: int, hidden: int) -> int:
    """The SwiGLU intermediate size I with 3 * d * I (gate, up, down projections) closest to `macs`."""
    return max(1, round(macs / (3 * hidden)))


def parameter_counts(cell: dict) -> dict:
    """Parameters of the cell's layer, from the formulas (checked against the built module in `measure`)."""
    d, heads, k_dim, n_keys = cell["hidden"], cell["memory_heads"], cell["k_dim"], cell["n_keys"]
    if cell["path"] == "dense_ffn":
        return {"total": 3 * d * cell["intermediate"], "value_table": 0}
    keys = 2 * heads * n_keys * (k_dim // 2)
    query = d * heads * k_dim + heads * k_dim
    table = n_keys**2 * d
    projections = 2 * d * d + 2 * d  # value_proj and swilu_projection, with biases (v = d)
    return {"total": keys + query + table + projections, "value_table": table, "keys": keys, "query": query,
            "projections": projections}


def estimate_bytes(cell: dict) -> int:
    """Rough peak of a cell (parameters, their gradients, the largest activations): a guard, not a prediction."""
    counts = parameter_counts(cell)
    table_bytes = counts["value_table"] * torch.empty((), dtype=getattr(torch, cell["value_dtype"])).element_size()
    other = (counts["total"] - counts["value_table"]) * 4
    if cell["path"] == "dense_ffn":
        activations = cell["tokens"] * cell["intermediate"] * 4 * 6
    else:
        # [N, H, 2, K] scores and [N, H, k, k] candidates (values and indices), a few alive at once
        activations = cell["tokens"] * cell["memory_heads"] * (2 * cell["n_keys"] + cell["knn"] ** 2) * 8 * 4
    return 2 * (table_bytes + other) + activations


# --------------------------------------------------------------------------------------------------------------------
# Building and running one cell.
# --------------------------------------------------------------------------------------------------------------------


def build(cell: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """(layer, input) for the cell: weights from the cell's seed (research initialisation), input from seed + 1."""
    memory = cell["path"] in MEMORY_PATHS
    config = MemoryLayersConfig(
        vocab_size=16, hidden_size=cell["hidden"], num_hidden_layers=1, num_attention_heads=1, head_dim=2,
        intermediate_size=cell["intermediate"], memory_layers=[0] if memory else [], memory_n_keys=cell["n_keys"],
        memory_heads=cell["memory_heads"], memory_knn=cell["knn"], memory_k_dim=cell["k_dim"],
        memory_share_values=False, memory_swilu_projection=True, memory_gated=False,
        memory_value_dtype=cell["value_dtype"], use_kernels=cell["path"] == "memory_kernel", use_cache=False,
    )
    torch.manual_seed(cell["seed"])
    # A one-block model only to get the research initialisation (value table N(0, 1/v), xavier query, uniform keys,
    # N(0, 1/d) projections; truncated normals for the SwiGLU); the benchmark keeps its feed-forward slot. Built on
    # the CPU so that every device and path gets the same weights.
    layer = MemoryLayersModel(config).layers[0].mlp
    layer = layer.to(cell["device"]).train()
    generator = torch.Generator().manual_seed(cell["seed"] + 1)
    x = torch.randn(cell["sequences"], cell["tokens"] // cell["sequences"], cell["hidden"], generator=generator)
    return layer, x.to(cell["device"]).requires_grad_()


def fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, sync) -> tuple[float, float, float]:
    """One forward+backward, parameter and input gradients set to None first: (seconds, forward seconds, loss)."""
    for parameter in layer.parameters():
        parameter.grad = None
    x.grad = None
    sync()
    start = time.perf_counter()
    loss = layer(x).float().square().mean()
    sync()
    forward = time.perf_counter() - start
    loss.backward()
    sync()
    return time.perf_counter() - start, forward, float(loss.detach())


def measure(cell: dict) -> dict:
    """Time and peak memory of one (path, memory size) cell, in this process."""
    cuda = cell["device"] == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    t0 = time.perf_counter()
    layer, x = build(cell)
    build_seconds = time.perf_counter() - t0
    counted = sum(p.numel() for p in layer.parameters())
    expected = parameter_counts(cell)["total"]
    if counted != expected:
        raise RuntimeError(f"parameter count {counted} != the formula's {expected}: update parameter_counts")
    parameter_bytes = sum(p.numel() * p.element_size() for p in layer.parameters())
    small = x[:1, :WARMUP_TOKENS].detach().requires_grad_()
    fwd_bwd(layer, small, sync)  # tiny warm-up: first-call setup (thread pools, oneDNN, kernel loading)
    for parameter in layer.parameters():
        parameter.grad = None
    gc.collect()
    method, baseline, maxrss_before = mark_peak(cuda)
    warmup, _, loss = fwd_bwd(layer, x, sync)  # the warm-up at full size; its peak memory is measured
    peak = read_peak(method) - baseline
    maxrss_increase = maxrss_bytes() - maxrss_before
    gradient_bytes = sum(p.grad.numel() * p.grad.element_size() for p in layer.parameters() if p.grad is not None)
    # Cells whose warm-up is slow get fewer repeats, so that a cell costs about `time_budget` seconds.
    repeats = max(1, min(cell["repeats"], int(cell["time_budget"] // max(warmup, 1e-9))))
    runs = [fwd_bwd(layer, x, sync) for _ in range(repeats)]
    times, forwards = [r[0] for r in runs], [r[1] for r in runs]
    return {
        "status": "ok", "seconds": statistics.median(times), "seconds_all": times,
        "forward_seconds": statistics.median(forwards), "forward_seconds_all": forwards, "warmup_seconds": warmup,
        "repeats": repeats, "peak_bytes": int(peak), "baseline_bytes": int(baseline), "peak_method": method,
        "loss": loss, "parameter_bytes": int(parameter_bytes), "gradient_bytes": int(gradient_bytes),
        "build_seconds": build_seconds,
        **({} if cuda else {"ru_maxrss_increase_bytes": int(maxrss_increase)}),
    }


# --------------------------------------------------------------------------------------------------------------------
# Checks, skips, the whole run.
# --------------------------------------------------------------------------------------------------------------------


def kernel_agreement(base: dict) -> dict:
    """Loss, output and gradients of `memory_kernel` against `memory_fallback` at the smallest size, in-process."""
    results = {}
    for path in MEMORY_PATHS:
        cell = dict(base, path=path)
        layer, x = build(cell)
        out = layer(x)
        loss = out.float().square().mean()
        loss.backward()
        grads = {name: p.grad.detach().double().cpu() for name, p in layer.named_parameters()}
        grads["input"] = x.grad.detach().double().cpu()
        results[path] = (float(loss.detach()), out.detach().double().cpu(), grads)
        del layer, x, out, loss
    (ref_loss, ref_out, ref_grads), (loss, out, grads) = results["memory_fallback"], results["memory_kernel"]
    diffs = {name: float((grads[name] - ref_grads[name]).abs().max()) for name in ref_grads}
    scales = {name: max(float(ref_grads[name].abs().max()), 1e-30) for name in ref_grads}
    return {
        "n_keys": base["n_keys"], "loss": {"memory_fallback": ref_loss, "memory_kernel": loss},
        "max_abs_loss_diff": abs(loss - ref_loss), "max_abs_output": float(ref_out.abs().max()),
        "max_abs_output_diff": float((out - ref_out).abs().max()),
        "max_grad_diff_relative_to_largest_grad": {name: diffs[name] / scales[name] for name in ref_grads},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                        help="default: all three (`dense_ffn` always runs: it is the reference of every ratio)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--n-keys", type=int, nargs="+", default=None,
                       help=f"sub-keys per half and head K; the memory has K^2 slots (default: {DEFAULTS['n_keys']})")
    sizes.add_argument("--slots", type=int, nargs="+", default=None,
                       help="memory sizes in slots, each a perfect square (alternative to --n-keys)")
    parser.add_argument("--tokens", type=int, default=None,
                        help=f"tokens per step, all sequences together (default: {DEFAULTS['tokens']})")
    parser.add_argument("--sequences", type=int, default=None,
                        help=f"sequences the tokens are split into (default: {DEFAULTS['sequences']})")
    parser.add_argument("--hidden", type=int, default=None, help=f"model width d (default: {DEFAULTS['hidden']})")
    parser.add_argument("--memory-heads", type=int, default=None, help=f"default: {DEFAULTS['memory_heads']}")
    parser.add_argument("--knn", type=int, default=None, help=f"slots read per head (default: {DEFAULTS['knn']})")
    parser.add_argument("--k-dim", type=int, default=None, help=f"query/key width per head (default: {DEFAULTS['k_dim']})")
    parser.add_argument("--value-dtype", choices=VALUE_DTYPES, default="bfloat16",
                        help="dtype of the value table (default: bfloat16, as in research training)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed fwd+bwd per cell after one warm-up, the median is reported "
                             f"(default: {DEFAULTS['repeats']})")
    parser.add_argument("--time-budget", type=float, default=None,
                        help=f"seconds of timed repeats a cell aims at: a cell whose warm-up took w seconds gets "
                             f"min(repeats, max(1, budget // w)) repeats (default: {DEFAULTS['time_budget']})")
    parser.add_argument("--max-gb", type=float, default=None,
                        help="skip cells whose estimated peak exceeds this many GB (default: 75%% of the RAM on the "
                             "CPU, 90%% of the GPU memory on CUDA)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the CPU cells in this process instead of one subprocess each (default with --quick; "
                             "peaks are then less isolated)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON output (default: benchmarks/results/memory_layers_memory.json next to this "
                             f"script; with --quick: {QUICK_OUTPUT})")
    parser.add_argument("--plot", type=Path, default=None, help="PNG output (default: the JSON path with .png)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test settings: 4K and 16K slots, 128 tokens, width 64, 1 repeat, cells "
                             "in-process; writes to the temp dir")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args

    if args.slots is not None:
        roots = [math.isqrt(s) for s in args.slots]
        bad = [s for s, r in zip(args.slots, roots, strict=True) if s < 1 or r * r != s]
        if bad:
            parser.error(f"--slots must be perfect squares (slots = n_keys^2), got {bad}")
        args.n_keys = roots
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.in_process = args.in_process or args.quick
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT
    if args.plot is None:
        args.plot = args.output.with_suffix(".png")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    for name in ("tokens", "sequences", "hidden", "memory_heads", "knn", "k_dim", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.tokens % args.sequences:
        parser.error(f"--tokens ({args.tokens}) must be divisible by --sequences ({args.sequences})")
    if args.memory_heads < 2:
        parser.error("--memory-heads must be at least 2 (as in the research code)")
    if args.k_dim % 2:
        parser.error("--k-dim must be even (queries and keys are split in two halves)")
    if min(args.n_keys) < args.knn:
        parser.error(f"every n_keys must be at least --knn ({args.knn}): the top-k runs over the sub-keys of a half")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.max_gb is None:
        if args.device == "cuda":
            args.max_gb = 0.9 * torch.cuda.get_device_properties(0).total_memory / 1e9
        else:
            args.max_gb = 0.75 * machine_info("cpu").get("memory_total_bytes", 16e9) / 1e9
    args.paths = [p for p in PATHS if p in args.paths]
    if "dense_ffn" not in args.paths:
        args.paths.append("dense_ffn")  # every ratio is against it
    args.n_keys = sorted(set(args.n_keys))
    return args


def _fmt_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def _fmt_slots(slots: int) -> str:
    """Slot counts as powers of two: 4K, 64K, 1M, ..."""
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if slots >= size and slots % size == 0:
            return f"{slots // size}{unit}"
    return str(slots)


def _row(rows: list[dict], path: str, n_keys: int) -> dict | None:
    return next((r for r in rows if (r["path"], r["n_keys"]) == (path, n_keys)), None)


def _ok(row: dict | None) -> bool:
    return row is not None and row["status"] == "ok"


def _table_line(n_keys: int, cells: dict[str, dict | None]) -> str:
    """One line of the timing table: times, forward times and peaks of the paths in `cells`, memory / dense ratios."""
    dense = cells["dense_ffn"]
    memory = [p for p in cells if p in MEMORY_PATHS]

    def value(p: str, key: str) -> str:
        if _ok(cells[p]):
            return f"{cells[p][key]:.3f}" if key.endswith("seconds") else fmt_bytes(cells[p][key])
        status = cells[p]["status"] if cells[p] is not None else "failed"
        return "skipped" if status.startswith("skipped") else "failed"

    def ratio(p: str, key: str) -> str:
        if not (_ok(cells[p]) and _ok(dense)) or dense[key] <= 0:
            return "-"
        return f"{cells[p][key] / dense[key]:.1f}x"

    line = f"{_fmt_slots(n_keys**2):>6} |"
    line += "".join(f" {value(p, 'seconds'):>10} {value(p, 'forward_seconds'):>10}" for p in cells)
    line += "".join(f" {ratio(p, 'seconds'):>11}" for p in memory) + " |"
    line += "".join(f" {value(p, 'peak_bytes'):>14}" for p in cells)
    return line + "".join(f" {ratio(p, 'peak_bytes'):>11}" for p in memory)


def print_tables(rows: list[dict], settings: dict, sizes: dict) -> None:
    s = settings
    print(f"\nequal FLOPs: forward multiply-adds per token, d={s['hidden']}, H={s['memory_heads']}, k={s['knn']}, "
          f"D={s['k_dim']}, v=d (query d*H*D + scoring H*K*D + read H*k*v + PK+ projections 2*d*v; "
          f"top-k/softmax not counted); dense SwiGLU I = round(MACs / 3d)")
    header = (f"{'slots':>6} {'K':>5} | {'query':>6} {'scoring':>7} {'read':>6} {'proj':>6} {'memory':>7} | "
              f"{'dense I':>7} {'dense':>7} {'mismatch':>8} | {'params memory':>13} {'of it values':>12} "
              f"{'params dense':>12}")
    print(header)
    print("-" * len(header))
    for n_keys in s["n_keys"]:
        size = sizes[n_keys]
        macs = size["memory_macs_per_token"]
        print(f"{_fmt_slots(n_keys**2):>6} {n_keys:>5} | {_fmt_count(macs['query']):>6} "
              f"{_fmt_count(macs['scoring']):>7} {_fmt_count(macs['read']):>6} {_fmt_count(macs['projections']):>6} "
              f"{_fmt_count(macs['total']):>7} | {size['dense_intermediate_size']:>7} "
              f"{_fmt_count(size['dense_macs_per_token']):>7} {size['mac_mismatch']:>+8.1e} | "
              f"{_fmt_count(size['memory_parameters']):>13} {_fmt_count(size['memory_value_table_parameters']):>12} "
              f"{_fmt_count(size['dense_parameters']):>12}")

    shown = [p for p in s["paths"] if p != "memory_kernel" or any(_ok(r) for r in rows if r["path"] == p)]
    memory = [p for p in shown if p in MEMORY_PATHS]
    short = {"memory_fallback": "mem-fb", "memory_kernel": "mem-kern", "dense_ffn": "dense"}
    print(f"\nforward+backward of one layer, {s['tokens']} tokens ({s['sequences']} x "
          f"{s['tokens'] // s['sequences']}), {s['device']}, {s['num_threads']} threads, value table "
          f"{s['value_dtype']}, the rest float32; peak = increase during the step (gradients included); "
          f"ratios = memory / dense, same run")
    header = f"{'slots':>6} |" + "".join(f" {short[p] + ' s':>10} {short[p] + ' fwd':>10}" for p in shown)
    header += "".join(f" {short[p][4:] + '/dense':>11}" for p in memory) + " |"
    header += "".join(f" {short[p] + ' peak':>14}" for p in shown)
    header += "".join(f" {short[p][4:] + '/dense':>11}" for p in memory)
    print(header)
    print("-" * len(header))
    for n_keys in s["n_keys"]:
        print(_table_line(n_keys, {p: _row(rows, p, n_keys) for p in shown}))
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        print("\nmissing cells:")
        seen = set()
        for r in missing:
            key = (r["path"], r["status"] if r["path"] == "memory_kernel" else r["n_keys"])
            if key in seen:
                continue
            seen.add(key)
            where = "all sizes" if r["path"] == "memory_kernel" else f"{_fmt_slots(r['slots'])} slots"
            print(f"  {r['path']:<16} {where:<10} {r['status']}")


def _tick(value: float) -> str:
    """A log-axis tick label: 0.05, 0.2, 1, 20, 5000 (no exponents)."""
    return f"{value:.0f}" if value >= 1 else f"{value:.2g}"


def plot(rows: list[dict], settings: dict, sizes: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the plot.")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, FuncFormatter, NullFormatter, NullLocator

    s = settings
    styles = {"memory_fallback": ("C0", "o-", "PK+ memory layer, F.embedding_bag (use_kernels=False)"),
              "memory_kernel": ("C2", "^-", "PK+ memory layer, Triton embedding_bag kernel"),
              "dense_ffn": ("C3", "s--", "dense SwiGLU FFN of equal FLOPs (intermediate size I below)")}
    slots = [n**2 for n in s["n_keys"]]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.4))
    handles = {}
    for ax, (key, label) in zip(axes, (("seconds", "forward+backward time (s)"),
                                       ("peak_bytes", "peak memory increase (MiB)")), strict=True):
        scale = 1.0 if key == "seconds" else 1 / 2**20
        notes, values = [], []
        dense = {r["n_keys"]: r for r in rows if r["path"] == "dense_ffn" and _ok(r)}
        for p in s["paths"]:
            color, style, name = styles[p]
            points = [r for r in rows if r["path"] == p and _ok(r) and r[key] > 0]
            if points:
                xs, ys = [r["slots"] for r in points], [r[key] * scale for r in points]
                values += ys
                (handles[p],) = ax.plot(xs, ys, style, color=color, label=name)
                for r in points:  # each memory point labelled with its ratio to the dense FFN at that size
                    base = dense.get(r["n_keys"])
                    if p != "dense_ffn" and base is not None and base[key] > 0:
                        ax.annotate(f"{r[key] / base[key]:.1f}x", (r["slots"], r[key] * scale), fontsize=8.5,
                                    color=color, textcoords="offset points", xytext=(0, 8), ha="center")
            missing = [r for r in rows if r["path"] == p and r["status"] != "ok"]
            if missing and p == "memory_kernel" and len(missing) == len(slots):
                notes.append(f"kernel: skipped ({'needs a GPU' if s['device'] == 'cpu' else 'see JSON'})")
            elif missing:
                notes.append(f"{p}: no result at {', '.join(_fmt_slots(r['slots']) for r in missing)} slots (see JSON)")
        if key == "peak_bytes":  # the value table's size, which is also the size of its dense gradient
            table = [sizes[n]["value_table_bytes"] * scale for n in s["n_keys"]]
            values += table
            (handles["table"],) = ax.plot(slots, table, ":", color="0.45",
                                          label=f"value-table size = its dense gradient ({s['value_dtype']})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        if values:
            ax.set_ylim(min(values) / 1.8, max(values) * 2.5)  # room for the ratio labels and the notes
        ax.set_xlim(min(slots) / 1.5, max(slots) * 1.5)
        ax.xaxis.set_major_locator(FixedLocator(slots))
        ax.xaxis.set_major_formatter(FixedFormatter(
            [f"{_fmt_slots(n**2)}\nK={n}\nI={sizes[n]['dense_intermediate_size']}" for n in s["n_keys"]]))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick(v)))
        if values and max(values) / min(values) < 100:  # few decades: label the 2s and 5s too
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: _tick(v) if f"{v:.1e}"[0] in "25" else ""))
        else:
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("memory slots (K = sub-keys per half; I = dense FFN intermediate size)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        if notes:
            ax.text(0.98, 0.03, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                    color="0.3")
    methods = {r.get("peak_method") for r in rows if _ok(r)}
    memory = {"vm_hwm_after_reset": "peak RSS (VmHWM) increase", "ru_maxrss": "ru_maxrss increase",
              "cuda_max_memory_allocated": "max_memory_allocated increase"}
    memory_label = ", ".join(memory.get(m, str(m)) for m in sorted(methods, key=str)) or "-"
    fig.suptitle(f"one PK+ memory layer vs an equal-FLOPs dense SwiGLU, forward+backward, {s['tokens']} tokens, "
                 f"d={s['hidden']}, H={s['memory_heads']}, k={s['knn']}, D={s['k_dim']}, values {s['value_dtype']}; "
                 f"{s['device']}, {s['num_threads']} threads\nmemory: {memory_label} (gradients included); "
                 f"labels: memory / dense ratio", fontsize=10)
    order = [p for p in s["paths"] if p in handles] + (["table"] if "table" in handles else [])
    fig.legend([handles[p] for p in order], [handles[p].get_label() for p in order], loc="upper center", ncol=2,
               fontsize=8.5, bbox_to_anchor=(0.5, 0.92), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(RESULT_TAG + json.dumps(run_worker(json.loads(args.worker), measure)), flush=True)
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.getLogger("memory_zoo.kernels").setLevel(logging.WARNING)
    settings = {
        "paths": args.paths, "n_keys": args.n_keys, "slots": [n**2 for n in args.n_keys], "tokens": args.tokens,
        "sequences": args.sequences, "hidden": args.hidden, "memory_heads": args.memory_heads, "knn": args.knn,
        "k_dim": args.k_dim, "value_width": args.hidden, "value_dtype": args.value_dtype, "device": args.device,
        "repeats": args.repeats, "time_budget": args.time_budget, "max_gb": args.max_gb, "seed": args.seed,
        "num_threads": torch.get_num_threads(), "quick": args.quick,
        "cells": "in-process" if args.in_process and args.device == "cpu" else
                 ("in-process (CUDA)" if args.device == "cuda" else "one subprocess per cell"),
        "memory_layer": "standalone MemoryLayersProductKeyMemory, PK+ (memory_swilu_projection=True), owning its "
                        "MemoryLayersValueTable, not gated, memory_v_dim=None (v = hidden); float32 except the table",
        "dense_layer": "MemoryLayersMLP (SwiGLU, no biases), float32",
        "loss": "mean of the squared layer output (float32); gradients of every parameter and of the input",
        "equal_flops": "forward multiply-adds per token: memory = query d*H*D + scoring H*2*K*(D/2) + value read "
                       "H*k*v + PK+ projections 2*d*v (top-k, candidate sums, softmax, SiLU, biases not counted); "
                       "dense SwiGLU = 3*d*I with I = round(memory MACs / (3*d))",
        "timing": "tiny warm-up (32 tokens), one full-size warm-up (its peak memory is measured), then "
                  "min(repeats, max(1, time_budget // warm-up seconds)) timed forward+backward calls with "
                  "time.perf_counter (parameter gradients set to None before each); the median is reported",
        "peak_memory": ("increase of the peak RSS (VmHWM after /proc/self/clear_refs) over a baseline taken after the "
                        "layer and the input exist, the tiny warm-up ran and its gradients were dropped"
                        if args.device == "cpu" else
                        "torch.cuda.max_memory_allocated during the warm-up minus memory_allocated before it"),
        "value_read_note": ("F.embedding_bag gets the softmax weights cast to the table's dtype (bf16 by default); "
                            "its output is in the table's dtype and is cast back to float32"),
    }
    print(f"settings: {json.dumps({k: v for k, v in settings.items() if len(str(v)) < 80})}", flush=True)
    base = {key: settings[key] for key in ("device", "tokens", "sequences", "hidden", "memory_heads", "knn", "k_dim",
                                           "value_dtype", "repeats", "time_budget", "seed")}
    base.update(threads=args.threads, worker_timeout=1800, in_process=args.in_process)

    sizes = {}
    for n_keys in args.n_keys:
        macs = memory_macs(args.hidden, args.memory_heads, args.k_dim, n_keys, args.knn, args.hidden)
        intermediate = dense_intermediate(macs["total"], args.hidden)
        memory_params = parameter_counts(dict(base, path="memory_fallback", n_keys=n_keys, intermediate=1))
        table_bytes = memory_params["value_table"] * torch.empty((), dtype=getattr(torch, args.value_dtype)).element_size()
        sizes[n_keys] = {
            "n_keys": n_keys, "slots": n_keys**2, "memory_macs_per_token": macs,
            "dense_intermediate_size": intermediate, "dense_macs_per_token": 3 * args.hidden * intermediate,
            "mac_mismatch": 3 * args.hidden * intermediate / macs["total"] - 1,
            "memory_parameters": memory_params["total"], "memory_value_table_parameters": memory_params["value_table"],
            "memory_parameter_breakdown": memory_params, "value_table_bytes": table_bytes,
            "dense_parameters": 3 * args.hidden * intermediate,
        }

    load_before = load_average()
    start = time.perf_counter()
    kernel_reason = kernel_skip_reason(args.device, "embedding_bag", MemoryLayersConfig) if "memory_kernel" in args.paths else None
    agreement = None
    if "memory_kernel" in args.paths and not kernel_reason:
        n_keys = args.n_keys[0]
        try:
            agreement = kernel_agreement(dict(base, n_keys=n_keys,
                                              intermediate=sizes[n_keys]["dense_intermediate_size"]))
        except Exception as error:  # noqa: BLE001 - the kernel rows then say why
            kernel_reason = f"failed: the kernel agreement check raised {type(error).__name__}: {error}"
            print(f"  {kernel_reason}", flush=True)
        else:
            worst = max(agreement["max_grad_diff_relative_to_largest_grad"].values())
            print(f"  agreement kernel vs fallback at K={n_keys}: |dloss| {agreement['max_abs_loss_diff']:.1e}, "
                  f"max |doutput| {agreement['max_abs_output_diff']:.1e}, worst gradient diff {worst:.1e} of its "
                  f"largest value", flush=True)

    rows = []
    for n_keys in args.n_keys:
        for path in args.paths:
            cell = dict(base, path=path, n_keys=n_keys, intermediate=sizes[n_keys]["dense_intermediate_size"])
            row = {"path": path, "n_keys": n_keys, "slots": n_keys**2,
                   "intermediate_size": cell["intermediate"] if path == "dense_ffn" else None,
                   "parameters": parameter_counts(cell)["total"], "estimate_bytes": estimate_bytes(cell)}
            if path == "memory_kernel" and kernel_reason:
                row["status"] = kernel_reason
            elif row["estimate_bytes"] > args.max_gb * 1e9:
                row["status"] = (f"skipped: would need ~{row['estimate_bytes'] / 1e9:.1f} GB (> --max-gb "
                                 f"{args.max_gb:.1f})")
            else:
                t0 = time.perf_counter()
                row.update(run_cell(cell, measure, __file__))
                row["wall_seconds"] = time.perf_counter() - t0
            row.setdefault("status", "ok")
            for key in ("seconds", "seconds_all", "forward_seconds", "peak_bytes", "loss"):
                row.setdefault(key, None)
            rows.append(row)
            if row["status"] == "ok":
                print(f"  {path:<16} K={n_keys:<5} {row['seconds']:8.3f} s (x{row['repeats']}, forward "
                      f"{row['forward_seconds']:.3f} s) peak +{fmt_bytes(row['peak_bytes'])} "
                      f"[{row['wall_seconds']:.1f} s]", flush=True)
            elif path != "memory_kernel" or n_keys == args.n_keys[0]:
                print(f"  {path:<16} K={n_keys:<5} {row['status']}", flush=True)
    total = time.perf_counter() - start

    ratios = {}
    for n_keys in args.n_keys:
        dense = _row(rows, "dense_ffn", n_keys)
        for path in MEMORY_PATHS:
            row = _row(rows, path, n_keys)
            if _ok(row) and _ok(dense):
                ratios.setdefault(path, {})[str(n_keys**2)] = {
                    "seconds": row["seconds"] / dense["seconds"],
                    "peak_bytes": row["peak_bytes"] / dense["peak_bytes"] if dense["peak_bytes"] > 0 else None,
                    "parameters": row["parameters"] / dense["parameters"],
                }

    machine = machine_info(args.device)
    # Other processes on the same cores make the timings noisy; the load averages let a reader judge that.
    machine["load_average_before"] = load_before
    machine["load_average_after"] = load_average()
    report = {"machine": machine, "settings": settings, "sizes": {str(n**2): sizes[n] for n in args.n_keys},
              "kernel_agreement": agreement, "rows": rows, "ratios_to_dense": ratios, "total_seconds": total}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(rows, settings, sizes)
    if agreement is not None:
        print(f"kernel vs fallback at K={agreement['n_keys']}: |loss diff| {agreement['max_abs_loss_diff']:.1e}, max "
              f"|output diff| {agreement['max_abs_output_diff']:.1e} (largest |value| {agreement['max_abs_output']:.2f})")
    print(f"\ntotal {total:.1f} s; wrote {args.output}")
    plot(rows, settings, sizes, args.plot)

    failed = [f"{r['path']}/K={r['n_keys']}" for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"WARNING: cells failed (see their status in the JSON): {failed}", file=sys.stderr)
    if agreement is not None:
        # bf16/fp16 tables: the kernel accumulates in float32, F.embedding_bag may not; allow a few 16-bit ulps.
        tolerance = 1e-3 if args.value_dtype == "float32" else 5e-2
        worst = max(agreement["max_grad_diff_relative_to_largest_grad"].values())
        if not math.isfinite(agreement["max_abs_loss_diff"]) or not math.isfinite(worst) or worst > tolerance:
            print(f"ERROR: the kernel disagrees with the fallback (gradient diff {worst:.1e} of the largest, "
                  f"tolerance {tolerance:g})", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
