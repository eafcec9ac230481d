"""Forward+backward time and peak memory of Memory Mosaics: our O(T) paths against the research T x T formulation.

Two levels: one `MemoryMosaicsBlock` (in-context + persistent memory, research width by default) and a whole small
`MemoryMosaicsForCausalLM` (loss on labels = input_ids). Three paths:

* `fallback`: the model with `use_kernels=False` - chunked pure-torch leaky average (O(T) memory) and an SDPA
  read-out with the shift trick;
* `kernel`: the model with the Triton `leaky_average` Hub kernel (needs `--device cuda`; skipped on the CPU);
* `naive`: the research code's quadratic formulation, re-implemented here: the leaky average as an `[H, T, T]` decay
  matrix times the features, and the in-context read-out through explicit `[B, H, T, T]` scores, a `-inf` mask,
  softmax, zeroed first rows and a matmul. It is swapped in by monkeypatching, so everything else is the same code.

    python benchmarks/memory_mosaics_leaky_average.py            # default run (CPU), writes benchmarks/results/*
    python benchmarks/memory_mosaics_leaky_average.py --quick    # smoke test (a few seconds), writes to the temp dir
    python benchmarks/memory_mosaics_leaky_average.py --device cuda   # on a GPU machine, adds the `kernel` path

Before timing, the script checks at a small length that `naive` (and `kernel` where it runs) and `fallback` give the
same loss and gradients, so the comparison is of equal computations. On the CPU every (level, path, length) cell runs
in a fresh subprocess (this script with a hidden `--worker` flag) and its peak memory is the increase of the peak
resident set size (`ru_maxrss`) over a baseline taken just before the measured step; on CUDA it is the increase of
`torch.cuda.max_memory_allocated`. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
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
import torch.nn.functional as F

import memory_zoo.modeling.modeling_memory_mosaics as mm

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

from memory_zoo import MemoryMosaicsConfig, MemoryMosaicsForCausalLM, MemoryMosaicsModel

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "memory_mosaics_leaky_average.json"
QUICK_OUTPUT = Path(tempfile.gettempdir()) / "memory_mosaics_leaky_average_quick.json"
LEVELS = ("layer", "model")
PATHS = ("fallback", "kernel", "naive")

# Values used when a flag is not given; `--quick` swaps in the second set (explicit flags still win).
DEFAULTS = {
    "lengths": [512, 1024, 2048, 4096, 8192], "repeats": 3, "time_budget": 20.0, "check_length": 256,
    "layer_hidden": 768, "layer_heads": 12, "layer_pmem": 2688,
    "model_hidden": 256, "model_heads": 8, "model_layers": 4, "model_pmem": 512, "vocab": 4096,
}
QUICK = {
    "lengths": [64, 128], "repeats": 1, "time_budget": 20.0, "check_length": 64,
    "layer_hidden": 64, "layer_heads": 4, "layer_pmem": 96,
    "model_hidden": 64, "model_heads": 4, "model_layers": 2, "model_pmem": 64, "vocab": 256,
}

# Estimate of the naive path's memory, in `[B, H, T, T]` float32 tensors: per block about six are kept for the
# backward (the decay matrix before and after its causal mask, for each of the two leaky averages; the softmax output
# and the zero-rowed probabilities of the read-out) and a few more are alive at once while one block runs its
# backward. Fitted to ru_maxrss measurements on this machine (see the README); it is a guard, not a prediction.
NAIVE_TT_PER_BLOCK = 6
NAIVE_TT_TRANSIENT = 4


# --------------------------------------------------------------------------------------------------------------------
# The naive T x T formulation (written for this benchmark after the description in the Memory Mosaics spec, §5-§6).
# --------------------------------------------------------------------------------------------------------------------


def naive_leaky_average(
    x: torch.Tensor, decay: torch.Tensor, initial_state: torch.Tensor | None = None, chunk_size: int = 64,
    kernel: tuple | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as `mm.leaky_average`, computed as one `[H, T, T]` decay matrix `exp(-beta (t - s)) [s <= t]`."""
    if initial_state is not None:
        raise NotImplementedError("the naive benchmark path has no recurrent state (run without a cache)")
    length = x.shape[1]
    position = torch.arange(length, device=x.device, dtype=torch.float32)
    lag = position[:, None] - position[None, :]  # [T, T], t - s
    causal = lag >= 0
    # clamp: above the diagonal exp(+beta * lag) would overflow, and inf * 0 is NaN.
    matrix = torch.exp(-decay.float()[:, None, None] * lag.clamp(min=0)) * causal  # [H, T, T]
    y = torch.einsum("hts,bshd->bthd", matrix, x.float())
    return y.to(x.dtype), y[:, -1]


def naive_read(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step,
               output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Same contract as `MemoryMosaicsContextMemory.read` for a whole unpadded sequence, through `[B, H, T, T]`."""
    if step.past_length != 0 or step.valid is not None:
        raise NotImplementedError("the naive benchmark read-out handles past_length == 0 without padding only")
    batch, heads, length, dim = queries.shape
    shift, readable = self.shift, values.shape[-2]
    if readable == 0:
        return queries.new_zeros(batch, heads, length, dim), None
    scores = queries @ keys.transpose(-1, -2)  # [B, H, T, T], no 1/sqrt(d)
    position = torch.arange(length, device=queries.device)
    hidden = position[None, :] > position[:, None] - shift  # key s is not readable from query t
    has_any = position[:, None] >= shift  # rows t < shift read nothing
    # Rows with nothing to read are left unmasked (no all -inf softmax row and no NaN gradient) and zeroed below.
    scores = scores.masked_fill(hidden & has_any, float("-inf"))
    probs = torch.softmax(scores, dim=-1) * has_any.to(scores.dtype)
    probs = F.dropout(probs, self.read_dropout, self.training)
    # The last `shift` keys are never readable; their value slots are zeros.
    return probs @ F.pad(values, (0, 0, 0, length - readable)), probs[..., :readable] if output_attentions else None


@contextlib.contextmanager
def use_path(path: str):
    """Swap the naive formulation into the model code for the duration of the block (nothing for other paths)."""
    if path != "naive":
        yield
        return
    leaky, read = mm.leaky_average, mm.MemoryMosaicsContextMemory.read
    mm.leaky_average, mm.MemoryMosaicsContextMemory.read = naive_leaky_average, naive_read
    try:
        yield
    finally:
        mm.leaky_average, mm.MemoryMosaicsContextMemory.read = leaky, read


def naive_estimate_bytes(cell: dict) -> int:
    blocks = 1 if cell["level"] == "layer" else cell["model_layers"]
    heads = cell["layer_heads"] if cell["level"] == "layer" else cell["model_heads"]
    return (NAIVE_TT_PER_BLOCK * blocks + NAIVE_TT_TRANSIENT) * cell["batch_size"] * heads * cell["T"] ** 2 * 4


# --------------------------------------------------------------------------------------------------------------------
# Building and running one cell.
# --------------------------------------------------------------------------------------------------------------------


def build(cell: dict, length: int | None = None):
    """(module, loss function of a length) for the cell's level and path, weights and inputs from the cell's seed."""
    level, device = cell["level"], torch.device(cell["device"])
    common = {"attention_dropout": 0.0, "hidden_dropout": 0.0, "use_cache": False,
              "use_kernels": cell["path"] == "kernel", "block_size": max(cell["T"], 64)}
    torch.manual_seed(cell["seed"])
    if level == "layer":
        config = MemoryMosaicsConfig(vocab_size=16, hidden_size=cell["layer_hidden"], num_hidden_layers=1,
                                     num_attention_heads=cell["layer_heads"], pmem_size=cell["layer_pmem"], **common)
        # A one-block model only to get the research initialisation; the benchmark keeps its block.
        module = MemoryMosaicsModel(config).layers[0]
    else:
        config = MemoryMosaicsConfig(vocab_size=cell["vocab"], hidden_size=cell["model_hidden"],
                                     num_hidden_layers=cell["model_layers"], num_attention_heads=cell["model_heads"],
                                     pmem_size=cell["model_pmem"], **common)
        module = MemoryMosaicsForCausalLM(config)
    module = module.to(device).train()

    inputs = {}

    def make_inputs(n: int):
        if n not in inputs:
            generator = torch.Generator().manual_seed(cell["seed"] + n)
            if level == "layer":
                x = torch.randn(cell["batch_size"], n, config.hidden_size, generator=generator)
                inputs[n] = x.to(device).requires_grad_()
            else:
                inputs[n] = torch.randint(0, config.vocab_size, (cell["batch_size"], n), generator=generator).to(device)
        return inputs[n]

    def loss_fn(n: int, outputs: dict | None = None) -> torch.Tensor:
        """The loss at length n; `outputs["output"]` gets what the memories produced (block output minus its
        input, or the logits), for the agreement check."""
        if level == "layer":
            x = make_inputs(n)
            out = module(x, mm.MosaicsStep(0))
            if outputs is not None:
                outputs["output"] = (out - x).detach()
            return out.float().square().mean()
        ids = make_inputs(n)
        out = module(input_ids=ids, labels=ids)
        if outputs is not None:
            outputs["output"] = out.logits.detach()
        return out.loss

    if length is not None:
        make_inputs(length)
    return module, loss_fn


def fwd_bwd(module: torch.nn.Module, loss_fn, length: int, sync) -> tuple[float, float]:
    """One forward+backward (parameter gradients zeroed in place first): (seconds, loss)."""
    for parameter in module.parameters():
        if parameter.grad is not None:
            parameter.grad.zero_()
    sync()
    start = time.perf_counter()
    loss = loss_fn(length)
    loss.backward()
    sync()
    return time.perf_counter() - start, float(loss.detach())


def measure(cell: dict) -> dict:
    """Time and peak memory of one (level, path, T) cell, in this process."""
    length, cuda = cell["T"], cell["device"] == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with use_path(cell["path"]):
        module, loss_fn = build(cell, length)
        fwd_bwd(module, loss_fn, min(length, 32), sync)  # tiny warm-up: allocates the gradients, first-call setup
        gc.collect()
        method, baseline, maxrss_before = mark_peak(cuda)
        warmup, loss = fwd_bwd(module, loss_fn, length, sync)  # the warm-up at full size; its peak is measured
        peak = read_peak(method) - baseline
        maxrss_increase = maxrss_bytes() - maxrss_before
        # Cells whose warm-up is slow get fewer repeats, so that a cell costs about `time_budget` seconds.
        repeats = max(1, min(cell["repeats"], int(cell["time_budget"] // max(warmup, 1e-9))))
        times = [fwd_bwd(module, loss_fn, length, sync)[0] for _ in range(repeats)]
    return {
        "status": "ok", "seconds": statistics.median(times), "seconds_all": times, "warmup_seconds": warmup,
        "repeats": repeats, "peak_bytes": int(peak), "baseline_bytes": int(baseline), "peak_method": method,
        "loss": loss, **({} if cuda else {"ru_maxrss_increase_bytes": int(maxrss_increase)}),
    }


# --------------------------------------------------------------------------------------------------------------------
# Checks, skips, the whole run.
# --------------------------------------------------------------------------------------------------------------------


def agreement(base: dict, level: str, paths: list[str]) -> dict:
    """Loss and gradients of every runnable path against `fallback` at `check_length`, in this process."""
    length = base["check_length"]
    results = {}
    for path in paths:
        cell = dict(base, level=level, path=path, T=length)
        outputs = {}
        with use_path(path):
            module, loss_fn = build(cell, length)
            loss = loss_fn(length, outputs)
            loss.backward()
        grads = {name: p.grad.detach().double().cpu() for name, p in module.named_parameters() if p.grad is not None}
        results[path] = (float(loss.detach()), outputs["output"].double().cpu(), grads)
        del module, loss
    reference_loss, reference_output, reference_grads = results["fallback"]
    report = {"length": length, "loss": {path: loss for path, (loss, _, _) in results.items()},
              "output": "block output minus block input" if level == "layer" else "logits",
              "max_abs_output": float(reference_output.abs().max())}
    for path, (loss, output, grads) in results.items():
        if path == "fallback":
            continue
        abs_diff = max(float((grads[n] - reference_grads[n]).abs().max()) for n in reference_grads)
        scale = max(float(g.abs().max()) for g in reference_grads.values())
        report[f"{path}_max_abs_loss_diff"] = abs(loss - reference_loss)
        report[f"{path}_max_abs_output_diff"] = float((output - reference_output).abs().max())
        report[f"{path}_max_abs_grad_diff"] = abs_diff
        report[f"{path}_max_grad_diff_relative_to_largest_grad"] = abs_diff / scale
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS),
                        help="one Memory Mosaics block (`layer`) and/or a whole small model (`model`) (default: both)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS), help="default: all three")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help=f"sequence lengths T (default: {DEFAULTS['lengths']})")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed fwd+bwd per cell after one warm-up, the median is reported "
                             f"(default: {DEFAULTS['repeats']})")
    parser.add_argument("--time-budget", type=float, default=None,
                        help=f"seconds of timed repeats a cell aims at: a cell whose warm-up took w seconds gets "
                             f"min(repeats, max(1, budget // w)) repeats (default: {DEFAULTS['time_budget']})")
    parser.add_argument("--max-naive-gb", type=float, default=None,
                        help="skip naive cells whose estimated T x T tensors exceed this many GB "
                             "(default: 13 on the CPU, 85%% of the GPU memory on CUDA)")
    parser.add_argument("--check-length", type=int, default=None,
                        help=f"length of the naive/kernel vs fallback agreement check (default: "
                             f"{DEFAULTS['check_length']})")
    parser.add_argument("--batch-size", type=int, default=1, help="default: 1")
    parser.add_argument("--layer-hidden", type=int, default=None, help=f"default: {DEFAULTS['layer_hidden']}")
    parser.add_argument("--layer-heads", type=int, default=None, help=f"default: {DEFAULTS['layer_heads']}")
    parser.add_argument("--layer-pmem", type=int, default=None, help=f"default: {DEFAULTS['layer_pmem']}")
    parser.add_argument("--model-hidden", type=int, default=None, help=f"default: {DEFAULTS['model_hidden']}")
    parser.add_argument("--model-heads", type=int, default=None, help=f"default: {DEFAULTS['model_heads']}")
    parser.add_argument("--model-layers", type=int, default=None, help=f"default: {DEFAULTS['model_layers']}")
    parser.add_argument("--model-pmem", type=int, default=None, help=f"default: {DEFAULTS['model_pmem']}")
    parser.add_argument("--vocab", type=int, default=None, help=f"model vocabulary (default: {DEFAULTS['vocab']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default: 0)")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"JSON output (default: benchmarks/results/memory_mosaics_leaky_average.json next to "
                             f"this script; with --quick: {QUICK_OUTPUT})")
    parser.add_argument("--plot", type=Path, default=None, help="PNG output (default: the JSON path with .png)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test settings: T = 64 128, small widths, 1 repeat; writes to the temp dir")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return args

    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        args.output = QUICK_OUTPUT if args.quick else DEFAULT_OUTPUT
    if args.plot is None:
        args.plot = args.output.with_suffix(".png")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available to this torch")
    if args.max_naive_gb is None:
        args.max_naive_gb = 13.0
        if args.device == "cuda":
            args.max_naive_gb = 0.85 * torch.cuda.get_device_properties(0).total_memory / 1e9
    for name in ("repeats", "batch_size", "layer_hidden", "layer_heads", "layer_pmem", "model_hidden", "model_heads",
                 "model_layers", "model_pmem", "vocab", "check_length"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.lengths) < 2:
        parser.error("every length must be at least 2")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    for level, hidden, heads in (("layer", args.layer_hidden, args.layer_heads),
                                 ("model", args.model_hidden, args.model_heads)):
        if hidden % heads:
            parser.error(f"--{level}-hidden ({hidden}) must be divisible by --{level}-heads ({heads})")
    args.paths = [p for p in PATHS if p in args.paths]
    if "fallback" not in args.paths:
        args.paths.insert(0, "fallback")  # every ratio and the agreement check are against it
    args.levels = [lv for lv in LEVELS if lv in args.levels]
    args.lengths = sorted(set(args.lengths))
    return args


def _row(rows: list[dict], level: str, path: str, length: int) -> dict | None:
    return next((r for r in rows if (r["level"], r["path"], r["T"]) == (level, path, length)), None)


def _table_line(length: int, cells: dict[str, dict | None]) -> str:
    """One table line: times, peaks, their ratios to `fallback` and the loss differences of the paths in `cells`."""
    ok = {p: r is not None and r["status"] == "ok" for p, r in cells.items()}
    base = cells["fallback"]
    others = [p for p in cells if p != "fallback"]

    def value(p: str, key: str) -> str:
        if ok[p]:
            return f"{cells[p][key]:.3f}" if key == "seconds" else fmt_bytes(cells[p][key])
        status = cells[p]["status"] if cells[p] is not None else "failed"
        return "skipped" if status.startswith("skipped") else "failed"

    def ratio(p: str, key: str) -> str:
        if not (ok[p] and ok["fallback"]) or not base[key]:
            return "-"
        return f"{cells[p][key] / base[key]:.2f}x"

    def loss_diff(p: str) -> str:
        return f"{abs(cells[p]['loss'] - base['loss']):.1e}" if ok[p] and ok["fallback"] else "-"

    line = f"{length:>6} |" + "".join(f" {value(p, 'seconds'):>11}" for p in cells)
    line += "".join(f" {ratio(p, 'seconds'):>8}" for p in others) + " |"
    line += "".join(f" {value(p, 'peak_bytes'):>14}" for p in cells)
    line += "".join(f" {ratio(p, 'peak_bytes'):>8}" for p in others) + " |"
    return line + "".join(f" {loss_diff(p):>13}" for p in others)


def print_table(rows: list[dict], settings: dict, checks: dict) -> None:
    paths = settings["paths"]
    for level in settings["levels"]:
        title = {"layer": f"layer: one MemoryMosaicsBlock, C={settings['layer_hidden']}, H={settings['layer_heads']}, "
                          f"pmem {settings['layer_pmem']}",
                 "model": f"model: MemoryMosaicsForCausalLM, {settings['model_layers']} layers, "
                          f"C={settings['model_hidden']}, H={settings['model_heads']}, pmem {settings['model_pmem']}, "
                          f"vocab {settings['vocab']}"}[level]
        print(f"\n{title}, batch {settings['batch_size']}, forward+backward")
        # Paths without a single result at this level (the kernel on a CPU) only appear under "missing cells".
        shown = [p for p in paths if p == "fallback" or any(
            r["level"] == level and r["path"] == p and r["status"] == "ok" for r in rows)]
        others = shown[1:]
        header = f"{'T':>6} |" + "".join(f" {p + ' s':>11}" for p in shown)
        header += "".join(f" {p[:5] + '/fb':>8}" for p in others) + " |"
        header += "".join(f" {p + ' peak':>14}" for p in shown)
        header += "".join(f" {p[:5] + '/fb':>8}" for p in others) + " |"
        header += "".join(f" {'|dloss| ' + p[:5]:>13}" for p in others)
        print(header)
        print("-" * len(header))
        for length in settings["lengths"]:
            print(_table_line(length, {p: _row(rows, level, p, length) for p in shown}))
        check = checks.get(level, {})
        for path in paths[1:]:
            if f"{path}_max_abs_loss_diff" in check:
                print(f"agreement at T={check['length']}: {path} vs fallback |loss diff| "
                      f"{check[f'{path}_max_abs_loss_diff']:.1e}, max |{check['output']} diff| "
                      f"{check[f'{path}_max_abs_output_diff']:.1e} (largest |value| {check['max_abs_output']:.2f}), "
                      f"max |grad diff| {check[f'{path}_max_abs_grad_diff']:.1e} "
                      f"({check[f'{path}_max_grad_diff_relative_to_largest_grad']:.1e} of the largest gradient)")
    missing = [r for r in rows if r["status"] != "ok"]
    if missing:
        print("\nmissing cells:")
        seen = set()
        for r in missing:
            key = (r["level"], r["path"], r["status"] if r["path"] == "kernel" else r["T"])
            if key in seen:
                continue
            seen.add(key)
            where = "all T" if r["path"] == "kernel" else f"T={r['T']}"
            print(f"  {r['level']:<5} {r['path']:<8} {where:<7} {r['status']}")


def plot(rows: list[dict], settings: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the plot.")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    styles = {"fallback": ("C0", "o-", "fallback: chunked leaky average + SDPA read-out"),
              "kernel": ("C2", "^-", "kernel: Triton leaky average + SDPA read-out"),
              "naive": ("C3", "s--", "naive: T x T decay matrix + T x T scores")}
    levels = settings["levels"]
    fig, axes = plt.subplots(2, len(levels), figsize=(5.8 * len(levels), 8.6), squeeze=False)
    handles = {}
    for column, level in enumerate(levels):
        fallback = {r["T"]: r for r in rows
                    if r["level"] == level and r["path"] == "fallback" and r["status"] == "ok"}
        for row_index, (key, label) in enumerate((("seconds", "forward+backward time (s)"),
                                                  ("peak_bytes", "peak memory increase (MiB)"))):
            ax = axes[row_index][column]
            scale = 1.0 if key == "seconds" else 1 / 2**20
            notes, values = [], []
            for p in settings["paths"]:
                color, style, name = styles[p]
                points = [r for r in rows if r["level"] == level and r["path"] == p and r["status"] == "ok"
                          and r[key] > 0]
                if points:
                    xs, ys = [r["T"] for r in points], [r[key] * scale for r in points]
                    values += ys
                    (handles[p],) = ax.plot(xs, ys, style, color=color, label=name)
                    for r in points:  # label every other path's point with its ratio to the fallback
                        base = fallback.get(r["T"])
                        if p != "fallback" and base is not None and base[key] > 0:
                            ax.annotate(f"{r[key] / base[key]:.1f}x", (r["T"], r[key] * scale), fontsize=8,
                                        color=color, textcoords="offset points", xytext=(-4, 7), ha="right")
                missing = [r for r in rows if r["level"] == level and r["path"] == p and r["status"] != "ok"]
                lengths = ", ".join(str(r["T"]) for r in missing)
                if missing and len(missing) == len(settings["lengths"]) and p == "kernel":
                    notes.append(f"kernel: skipped ({'needs a GPU' if settings['device'] == 'cpu' else 'see JSON'})")
                elif missing and all("would need" in r["status"] for r in missing):
                    notes.append(f"{p}: skipped at T = {lengths} (est. > {settings['max_naive_gb']:g} GB)")
                elif missing:
                    notes.append(f"{p}: no result at T = {lengths} (see JSON)")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            if values:
                ax.set_ylim(min(values) / 1.6, max(values) * 2.2)  # room for the ratio labels and the notes
            ax.set_xlim(min(settings["lengths"]) / 1.35, max(settings["lengths"]) * 1.25)
            ax.set_xticks(settings["lengths"])
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("sequence length T")
            ax.set_ylabel(label)
            ax.grid(True, which="both", alpha=0.3)
            if notes:
                ax.text(0.98, 0.03, "\n".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
                        color="0.3")
            if row_index == 0:
                ax.set_title({"layer": f"one block: C={settings['layer_hidden']}, H={settings['layer_heads']}, "
                                       f"pmem {settings['layer_pmem']}",
                              "model": f"model: {settings['model_layers']} layers, C={settings['model_hidden']}, "
                                       f"H={settings['model_heads']}, pmem {settings['model_pmem']}, "
                                       f"vocab {settings['vocab']}"}[level], fontsize=10)
    methods = {r.get("peak_method") for r in rows if r["status"] == "ok"}
    memory = {"vm_hwm_after_reset": "peak RSS (VmHWM) increase", "ru_maxrss": "ru_maxrss increase",
              "cuda_max_memory_allocated": "max_memory_allocated increase"}
    memory_label = ", ".join(memory.get(m, str(m)) for m in sorted(methods, key=str)) or "-"
    fig.suptitle(f"Memory Mosaics forward+backward, batch {settings['batch_size']}, {settings['device']}, "
                 f"{settings['num_threads']} threads, float32; memory: {memory_label}; labels: ratio to fallback",
                 fontsize=10.5)
    fig.legend([handles[p] for p in settings["paths"] if p in handles],
               [styles[p][2] for p in settings["paths"] if p in handles],
               loc="upper center", ncol=3, fontsize=9, bbox_to_anchor=(0.5, 0.965), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
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
        "levels": args.levels, "paths": args.paths, "lengths": args.lengths, "device": args.device,
        "batch_size": args.batch_size, "repeats": args.repeats, "time_budget": args.time_budget,
        "max_naive_gb": args.max_naive_gb, "check_length": args.check_length,
        "layer_hidden": args.layer_hidden, "layer_heads": args.layer_heads, "layer_pmem": args.layer_pmem,
        "model_hidden": args.model_hidden, "model_heads": args.model_heads, "model_layers": args.model_layers,
        "model_pmem": args.model_pmem, "vocab": args.vocab, "seed": args.seed, "num_threads": torch.get_num_threads(),
        "quick": args.quick, "dtype": "float32", "dropout": 0.0, "leaky_chunk_size": 64,
        "timing": "one full-size warm-up (its peak memory is measured), then min(repeats, max(1, time_budget // "
                  "warm-up seconds)) timed forward+backward calls with time.perf_counter; the median is reported",
        "peak_memory": ("increase of ru_maxrss in a fresh subprocess per cell over a baseline taken after the model, "
                        "the inputs and the gradients exist and a T<=32 warm-up ran" if args.device == "cpu" else
                        "torch.cuda.max_memory_allocated during the warm-up minus memory_allocated before it"),
        "naive_estimate": f"({NAIVE_TT_PER_BLOCK} * blocks + {NAIVE_TT_TRANSIENT}) * batch * heads * T^2 * 4 bytes",
    }
    print(f"settings: {json.dumps({k: v for k, v in settings.items() if k not in ('timing', 'peak_memory')})}")
    base = {key: settings[key] for key in ("device", "batch_size", "repeats", "time_budget", "layer_hidden",
                                           "layer_heads", "layer_pmem", "model_hidden", "model_heads", "model_layers",
                                           "model_pmem", "vocab", "seed", "check_length")}
    base.update(threads=args.threads, worker_timeout=1800)

    load_before = load_average()
    start = time.perf_counter()
    kernel_reason = kernel_skip_reason(args.device, "leaky_average", MemoryMosaicsConfig) if "kernel" in args.paths else None
    runnable = [p for p in args.paths if not (p == "kernel" and kernel_reason)]
    checks = {}
    for level in args.levels:
        t0 = time.perf_counter()
        checks[level] = agreement(base, level, runnable)
        diffs = ", ".join(f"{p}: |dloss| {checks[level][f'{p}_max_abs_loss_diff']:.1e}, max |doutput| "
                          f"{checks[level][f'{p}_max_abs_output_diff']:.1e}" for p in runnable[1:])
        print(f"  agreement check {level} at T={args.check_length}: {diffs} ({time.perf_counter() - t0:.1f} s)",
              flush=True)

    rows = []
    for level in args.levels:
        for length in args.lengths:
            for path in args.paths:
                cell = dict(base, level=level, path=path, T=length)
                row = {"level": level, "path": path, "T": length}
                if path == "naive":
                    row["naive_estimate_bytes"] = naive_estimate_bytes(cell)
                if path == "kernel" and kernel_reason:
                    row["status"] = kernel_reason
                elif path == "naive" and row["naive_estimate_bytes"] > args.max_naive_gb * 1e9:
                    row["status"] = (f"skipped: would need ~{row['naive_estimate_bytes'] / 1e9:.0f} GB of T x T tensors "
                                     f"(> --max-naive-gb {args.max_naive_gb:g})")
                else:
                    t0 = time.perf_counter()
                    row.update(run_cell(cell, measure, __file__))
                    row["wall_seconds"] = time.perf_counter() - t0
                row.setdefault("status", "ok")
                for key in ("seconds", "seconds_all", "peak_bytes", "loss"):
                    row.setdefault(key, None)
                rows.append(row)
                if row["status"] == "ok":
                    print(f"  {level:<5} {path:<8} T={length:<5} {row['seconds']:8.3f} s (x{row['repeats']}) "
                          f"peak +{fmt_bytes(row['peak_bytes'])} [{row['wall_seconds']:.1f} s]", flush=True)
                elif path != "kernel" or length == args.lengths[0]:
                    print(f"  {level:<5} {path:<8} T={length:<5} {row['status']}", flush=True)
    total = time.perf_counter() - start

    machine = machine_info(args.device)
    # Other processes on the same cores make the timings noisy; the load averages let a reader judge that.
    machine["load_average_before"] = load_before
    machine["load_average_after"] = load_average()
    report = {"machine": machine, "settings": settings, "agreement": checks, "rows": rows, "total_seconds": total}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows, settings, checks)
    print(f"\ntotal {total:.1f} s; wrote {args.output}")
    plot(rows, settings, args.plot)

    failed = [f"{r['level']}/{r['path']}/T={r['T']}" for r in rows if r["status"].startswith("failed")]
    if failed:
        print(f"WARNING: cells failed (see their status in the JSON): {failed}", file=sys.stderr)
    bad = [(lv, p) for lv, c in checks.items() for p in runnable[1:] if not math.isfinite(c[f"{p}_max_abs_loss_diff"])
           or c[f"{p}_max_grad_diff_relative_to_largest_grad"] > 1e-3
           or c[f"{p}_max_abs_output_diff"] > 1e-4 * max(c["max_abs_output"], 1.0)]
    if bad:
        print(f"ERROR: paths disagree with the fallback: {bad}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
