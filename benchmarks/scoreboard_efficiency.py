"""Efficiency scoreboard: training and generation cost of every architecture at matched parameter budgets.

For each architecture and budget (models from `scoreboard_models.build`: non-embedding parameters matched, depth
fixed per budget) and each context length it measures, every cell in its own worker process (`bench_common.run_cell`:
peak RSS with the kernel's high-water mark reset right before the measured step):

* training: forward + backward of a batch (`labels = input_ids`), tokens/s and peak memory above the resident model;
* generation (causal LMs): greedy `generate` with the cache, prompt `context - new_tokens` tokens. Decode tokens/s
  comes from the difference of a `new_tokens` call and a 1-token call (prefill cancels out), end-to-end tokens/s
  from the `new_tokens` call; bytes of the cache tensors per sequence and the peak memory of the call;
* autoencoders (no generation): `encode` + `decode` throughput and peak memory instead.

Cells that cannot run (a context the chunking does not divide, a model that would not fit in RAM, a worker that
exceeds the per-cell time limit or dies) are reported with a `skipped: ...` status and the reason.
`slopes` fits, per architecture, the least-squares slope of log(time per token) and log(memory) against
log(context): 0 = flat, 1 = linear growth, 2 = quadratic.

Driven by `benchmarks/scoreboard.py` (`--only efficiency`); this file is also the worker script (`--worker CELL`).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import (  # noqa: E402
    RESULT_TAG,
    fmt_bytes,
    mark_peak,
    read_peak,
    run_cell,
    run_worker,
    tensor_bytes,
)
from scoreboard_models import (  # noqa: E402
    AUTOENCODERS,
    MEMORY_CHUNKS,
    YARDSTICK,
    _instantiate,
    build,
    count_parameters,
    depth_for,
    width_for,
)

from memory_zoo.modeling.zoo_compat import CACHE_NAME  # noqa: E402

CHUNKED = {"variable_memory_mixer", "memory_mixer", "variable_memory_transformer"}

# Values used when a flag is not given, per scale; explicit flags win.
SCALES = {
    "quick": {"budgets": ["0.2M"], "train_contexts": [64, 128], "generate_contexts": [64, 128], "train_batch_size": 2,
              "new_tokens": 4, "timing_repeats": 1, "cell_timeout": 120},
    "default": {"budgets": ["10M"], "train_contexts": [256, 512], "generate_contexts": [256, 512, 1024, 2048],
                "train_batch_size": 2, "new_tokens": 16, "timing_repeats": 2, "cell_timeout": 300},
    "full": {"budgets": ["10M", "50M"], "train_contexts": [256, 512, 1024, 2048],
             "generate_contexts": [256, 512, 1024, 2048, 4096, 8192], "train_batch_size": 4, "new_tokens": 32,
             "timing_repeats": 3, "cell_timeout": 600},
}
TIME_BUDGET = 6.0  # seconds of timed repeats per measurement; slow cells get fewer repeats
RAM_FRACTION = 0.7  # skip a cell whose estimated memory exceeds this fraction of MemAvailable


def parse_budget(text: str) -> int:
    """'10M' -> 10_000_000, '0.2M' -> 200_000, '500K' -> 500_000, '1G' -> 10**9, '12345' -> 12345."""
    text = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The efficiency flags (prefixed or specific, so that they do not clash with the tasks module's)."""
    group = parser.add_argument_group("efficiency")
    d = SCALES["default"]
    group.add_argument("--budgets", nargs="+", default=None, metavar="PARAMS",
                       help=f"non-embedding parameter budgets, e.g. 10M 50M (default: {' '.join(d['budgets'])}; "
                            f"--full: {' '.join(SCALES['full']['budgets'])})")
    group.add_argument("--train-contexts", type=int, nargs="+", default=None,
                       help=f"training context lengths (default: {d['train_contexts']})")
    group.add_argument("--generate-contexts", type=int, nargs="+", default=None,
                       help=f"generation / autoencoding context lengths (default: {d['generate_contexts']}; "
                            f"--full: {SCALES['full']['generate_contexts']})")
    group.add_argument("--train-batch-size", type=int, default=None,
                       help=f"sequences per training step (default: {d['train_batch_size']}); generation uses 1")
    group.add_argument("--new-tokens", type=int, default=None,
                       help=f"tokens generated per call; prompt = context - new tokens (default: {d['new_tokens']})")
    group.add_argument("--timing-repeats", type=int, default=None,
                       help=f"timed repeats per measurement, median reported (default: {d['timing_repeats']})")
    group.add_argument("--cell-timeout", type=int, default=None,
                       help=f"seconds one cell's worker may take before it is skipped (default: {d['cell_timeout']})")
    group.add_argument("--efficiency-vocab", type=int, default=4096, help="vocabulary size (default: 4096)")
    group.add_argument("--in-process", action="store_true",
                       help="measure in this process instead of one worker per cell (faster, peak memory less "
                            "clean; implied by --quick)")


def settings_for(args: argparse.Namespace) -> dict:
    scale = "quick" if getattr(args, "quick", False) else "full" if getattr(args, "full", False) else "default"
    settings = {"scale": scale}
    for key, value in SCALES[scale].items():
        given = getattr(args, key, None)
        settings[key] = value if given is None else given
    settings["budgets"] = [str(b) for b in settings["budgets"]]
    settings["vocab"] = getattr(args, "efficiency_vocab", 4096)
    settings["seed"] = getattr(args, "seed", 0)
    settings["in_process"] = bool(getattr(args, "in_process", False) or scale == "quick")
    settings["num_threads"] = torch.get_num_threads()
    settings["dtype"] = str(torch.get_default_dtype())
    settings["timing"] = ("median wall time (time.perf_counter) of --timing-repeats calls after one measured "
                          "warm-up; training: forward+backward; decode tok/s = (new_tokens - 1) / (t(new_tokens) - "
                          "t(1)); generate tok/s = new_tokens / t(new_tokens), prefill included")
    settings["memory"] = ("peak bytes above the resident model: kernel VmHWM reset before the step (Linux), one "
                          "worker process per cell unless in_process")
    for name in ("train_batch_size", "new_tokens", "timing_repeats", "cell_timeout", "vocab"):
        if settings[name] < 1:
            raise SystemExit(f"scoreboard_efficiency: {name} must be at least 1, got {settings[name]}")
    return settings


# --------------------------------------------------------------------------------------------------------------------
# Worker side: one cell.
# --------------------------------------------------------------------------------------------------------------------


def _timed(fn, repeats: int, warmup_seconds: float) -> list[float]:
    repeats = max(1, min(repeats, int(TIME_BUDGET // max(warmup_seconds, 1e-9))))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(cell: dict) -> dict:
    """One cell: build the model for `cell["context"]`, then train / generate / autoencode and time it."""
    context, batch, vocab = cell["context"], cell["batch_size"], cell["vocab"]
    model, info = build(cell["architecture"], cell["params"], context, vocab, cell["seed"], cell["hidden"])
    result = {"status": "ok", "parameters": info["parameters"]}
    generator = torch.Generator().manual_seed(cell["seed"] + context)
    kind = cell["kind"]
    gc.collect()
    if kind == "train":
        model.train()
        ids = torch.randint(0, vocab, (batch, context), generator=generator)

        def step():
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            return float(loss.detach())

        start = time.perf_counter()
        step()  # warm-up: first-call setup (thread pools, oneDNN primitives) stays out of the measurements
        warmup = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        gc.collect()
        method, baseline, _ = mark_peak(False)
        loss = step()  # the measured step: gradients are allocated here
        peak = read_peak(method) - baseline
        times = _timed(step, cell["repeats"], warmup)
        seconds = statistics.median(times)
        result.update(tokens_per_s=batch * context / seconds, seconds=seconds, seconds_all=times, loss=loss,
                      peak_bytes=int(peak), baseline_bytes=int(baseline), peak_method=method)
        return result
    model.eval()
    if kind == "autoencode":
        ids = torch.randint(0, vocab, (batch, context), generator=generator)

        def roundtrip():
            return model.decode(model.encode(ids), context)

        with torch.inference_mode():
            method, baseline, _ = mark_peak(False)
            start = time.perf_counter()
            roundtrip()
            warmup = time.perf_counter() - start
            peak = read_peak(method) - baseline
            times = _timed(roundtrip, cell["repeats"], warmup)
        seconds = statistics.median(times)
        result.update(tokens_per_s=batch * context / seconds, seconds=seconds, seconds_all=times,
                      peak_bytes=int(peak), baseline_bytes=int(baseline), peak_method=method)
        return result
    # generation with the cache
    new = cell["new_tokens"]
    ids = torch.randint(0, vocab, (batch, context - new), generator=generator)

    def generate(tokens: int, **extra):
        return model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, use_cache=True,
                              **extra)

    with torch.inference_mode():
        method, baseline, _ = mark_peak(False)
        start = time.perf_counter()
        out = generate(new, return_dict_in_generate=True)
        warmup = time.perf_counter() - start
        peak = read_peak(method) - baseline
        cache = getattr(out, CACHE_NAME)  # `cache` since transformers 5.24, `past_key_values` before
        cache_total = tensor_bytes(cache)
        try:
            cache_positions = cache.get_seq_length()
        except (AttributeError, ValueError):  # a recurrent cache (Mamba's) holds states, not positions
            cache_positions = None
        generated = out.sequences.shape[1] - ids.shape[1]
        del out, cache
        full = _timed(lambda: generate(new), cell["repeats"], warmup)
        one = _timed(lambda: generate(1), cell["repeats"], warmup / max(1, new))
    t_full, t_one = statistics.median(full), statistics.median(one)
    decode = batch * (new - 1) / (t_full - t_one) if new > 1 and t_full > t_one else None
    result.update(tokens_per_s=batch * new / t_full, decode_tokens_per_s=decode, seconds=t_full, seconds_all=full,
                  one_token_seconds=t_one, one_token_seconds_all=one, generated_tokens=int(generated),
                  cache_bytes_per_sequence=int(cache_total // batch), cache_positions=cache_positions,
                  peak_bytes=int(peak), baseline_bytes=int(baseline), peak_method=method)
    return result


# --------------------------------------------------------------------------------------------------------------------
# Driver side.
# --------------------------------------------------------------------------------------------------------------------


def _mem_available() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            return int(next(line.split()[1] for line in f if line.startswith("MemAvailable"))) * 1024
    except (OSError, StopIteration, ValueError):
        return None


def skip_reason(architecture: str, kind: str, context: int, parameters: int, settings: dict) -> str | None:
    """Why a cell cannot run here, decided before starting it; None if it can."""
    if architecture in CHUNKED and context % MEMORY_CHUNKS:
        return f"skipped: context {context} is not a multiple of the {MEMORY_CHUNKS} memory chunks"
    if kind == "generate" and context <= settings["new_tokens"]:
        return f"skipped: context {context} leaves no prompt for {settings['new_tokens']} new tokens"
    # weights (+ gradients and temporaries when training), float32
    estimate = parameters * 4 * (4 if kind == "train" else 1.5)
    available = _mem_available()
    if available is not None and estimate > RAM_FRACTION * available:
        return (f"skipped: ~{fmt_bytes(int(estimate))} estimated for {parameters:,} parameters exceeds "
                f"{RAM_FRACTION:.0%} of the {fmt_bytes(available)} RAM available")
    return None


def run(args: argparse.Namespace, architectures: list[str]) -> dict:
    """Measure every (architecture, budget, kind, context) cell; JSON-serialisable results."""
    settings = settings_for(args)
    vocab, cells = settings["vocab"], []
    start = time.perf_counter()
    for budget_label in settings["budgets"]:
        params = parse_budget(budget_label)
        for architecture in architectures:
            hidden = width_for(architecture, params, vocab)
            kinds = [("train", c) for c in settings["train_contexts"]]
            second = "autoencode" if architecture in AUTOENCODERS else "generate"
            kinds += [(second, c) for c in settings["generate_contexts"]]
            for kind, context in kinds:
                parameters = count_parameters(_instantiate(architecture, hidden, depth_for(params), context, vocab))
                row = {"architecture": architecture, "budget": budget_label, "budget_params": params,
                       "hidden": hidden, "layers": depth_for(params), "kind": kind, "context": context,
                       "batch_size": settings["train_batch_size"] if kind != "generate" else 1,
                       "parameters": parameters}
                reason = skip_reason(architecture, kind, context, parameters["total"], settings)
                t0 = time.perf_counter()
                if reason is None:
                    cell = {"architecture": architecture, "params": params, "hidden": hidden, "context": context,
                            "vocab": vocab, "seed": settings["seed"], "kind": kind, "batch_size": row["batch_size"],
                            "new_tokens": settings["new_tokens"], "repeats": settings["timing_repeats"],
                            "device": "cpu", "threads": None, "worker_timeout": settings["cell_timeout"],
                            "in_process": settings["in_process"]}
                    measured = run_cell(cell, measure, __file__)
                    status = measured.get("status", "failed: no status")
                    if status.startswith("failed"):  # never crash the run: report the reason
                        measured["status"] = "skipped: " + status[len("failed: "):]
                    row.update(measured)
                else:
                    row["status"] = reason
                row["cell_seconds"] = time.perf_counter() - t0
                cells.append(row)
                note = "" if row["status"] == "ok" else f"  {row['status']}"
                print(f"  efficiency {architecture} {budget_label} {kind} @{context}: "
                      f"{row['cell_seconds']:.1f} s{note}", flush=True)
    results = {"settings": settings, "cells": cells, "total_seconds": time.perf_counter() - start}
    results["slopes"] = slopes(results)
    results["ratios"] = ratios(results)
    return results


# Quantities whose growth with context is fitted: name -> (kind, field, invert: tokens/s -> seconds per token)
SLOPE_FIELDS = {
    "train_time_per_token": ("train", "tokens_per_s", True),
    "train_peak_bytes": ("train", "peak_bytes", False),
    "decode_time_per_token": ("generate", "decode_tokens_per_s", True),
    "generate_time_per_token": ("generate", "tokens_per_s", True),
    "generate_peak_bytes": ("generate", "peak_bytes", False),
    "cache_bytes_per_sequence": ("generate", "cache_bytes_per_sequence", False),
    "autoencode_time_per_token": ("autoencode", "tokens_per_s", True),
    "autoencode_peak_bytes": ("autoencode", "peak_bytes", False),
}


def _fit(points: list[tuple[float, float]]) -> float | None:
    points = [(math.log(x), math.log(y)) for x, y in points if x and y and x > 0 and y > 0]
    if len({x for x, _ in points}) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def slopes(results: dict) -> dict:
    """Least-squares slope of log(quantity) vs log(context), per budget and architecture (ok cells only):
    `{budget: {architecture: {quantity: slope or None}}}`."""
    out: dict = {}
    for row in results["cells"]:
        out.setdefault(row["budget"], {}).setdefault(row["architecture"], {})
    for budget, per_arch in out.items():
        for architecture in per_arch:
            rows = [r for r in results["cells"] if r["budget"] == budget and r["architecture"] == architecture
                    and r["status"] == "ok"]
            for name, (kind, field, invert) in SLOPE_FIELDS.items():
                points = [(r["context"], (1 / r[field] if invert else r[field])) for r in rows
                          if r["kind"] == kind and r.get(field)]
                if any(r["kind"] == kind for r in results["cells"] if r["architecture"] == architecture):
                    per_arch[architecture][name] = _fit(points)
    return out


# Figures compared with the yardstick's at the same budget and context: name -> (kind, field). Ratios are ours /
# Llama's: above 1 is faster (tokens/s) or bigger (bytes).
RATIO_FIELDS = {
    "train_tokens_per_s": ("train", "tokens_per_s"),
    "train_peak_bytes": ("train", "peak_bytes"),
    "decode_tokens_per_s": ("generate", "decode_tokens_per_s"),
    "cache_bytes_per_sequence": ("generate", "cache_bytes_per_sequence"),
}


def ratios(results: dict) -> dict:
    """Every architecture's figures divided by the yardstick's (`YARDSTICK`, Llama) at the same budget and context:
    `{budget: {architecture: {quantity: {context: ratio}}}}`; empty where the yardstick was not run."""
    ok = [r for r in results["cells"] if r["status"] == "ok"]
    reference = {(r["budget"], r["kind"], r["context"]): r for r in ok if r["architecture"] == YARDSTICK}
    out: dict = {}
    for row in ok:
        if row["architecture"] == YARDSTICK:
            continue
        for name, (kind, field) in RATIO_FIELDS.items():
            base = reference.get((row["budget"], kind, row["context"]), {}).get(field)
            if row["kind"] == kind and row.get(field) and base:
                quantity = out.setdefault(row["budget"], {}).setdefault(row["architecture"], {}).setdefault(name, {})
                quantity[str(row["context"])] = row[field] / base
    return out


def _num(value, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def report(results: dict) -> str:
    """Plain-text tables: one per budget (rows: architecture x context), the slopes, the skipped cells."""
    lines = []
    settings = results["settings"]
    lines.append(f"Efficiency ({settings['scale']} scale): training batch {settings['train_batch_size']}, generation "
                 f"batch 1 with {settings['new_tokens']} new tokens, {settings['num_threads']} threads, "
                 f"{settings['dtype']}; memory = peak above the resident model.")
    cells = results["cells"]
    for budget in dict.fromkeys(r["budget"] for r in cells):
        lines.append("")
        lines.append(f"budget {budget} non-embedding parameters")
        header = (f"{'architecture':<28} {'hidden':>6} {'ctx':>5} {'params':>7} {'non-emb':>7} | {'train tok/s':>11} "
                  f"{'train peak':>10} | {'decode tok/s':>12} {'gen tok/s':>9} {'cache/seq':>9} {'gen peak':>9}")
        lines.append(header)
        lines.append("-" * len(header))
        rows = [r for r in cells if r["budget"] == budget]
        for architecture in dict.fromkeys(r["architecture"] for r in rows):
            mine = [r for r in rows if r["architecture"] == architecture]
            for context in sorted({r["context"] for r in mine}):
                at = {r["kind"]: r for r in mine if r["context"] == context}
                train = at.get("train", {})
                other = at.get("generate") or at.get("autoencode") or {}
                params = (train or other)["parameters"]
                ok_train = train.get("status") == "ok"
                ok_other = other.get("status") == "ok"
                if other.get("kind") == "autoencode":
                    gen = (f"{'enc+dec ' + _num(other.get('tokens_per_s')) if ok_other else '-':>22} {'-':>9} "
                           f"{fmt_bytes(other.get('peak_bytes')) if ok_other else '-':>9}")
                else:
                    gen = (f"{_num(other.get('decode_tokens_per_s')) if ok_other else '-':>12} "
                           f"{_num(other.get('tokens_per_s')) if ok_other else '-':>9} "
                           f"{fmt_bytes(other.get('cache_bytes_per_sequence')) if ok_other else '-':>9} "
                           f"{fmt_bytes(other.get('peak_bytes')) if ok_other else '-':>9}")
                lines.append(f"{architecture:<28} {r_hidden(mine):>6} {context:>5} "
                             f"{params['total'] / 1e6:>6.2f}M {params['non_embedding'] / 1e6:>6.2f}M | "
                             f"{_num(train.get('tokens_per_s')) if ok_train else '-':>11} "
                             f"{fmt_bytes(train.get('peak_bytes')) if ok_train else '-':>10} | {gen}")
    lines.append("")
    lines.append("log-log slopes vs context (time per token; memory): 0 flat, 1 linear, 2 quadratic")
    header = (f"{'budget':>6} {'architecture':<28} {'train t/tok':>11} {'train mem':>9} {'decode t/tok':>12} "
              f"{'gen mem':>8} {'cache':>6} {'enc+dec t/tok':>13}")
    lines.append(header)
    lines.append("-" * len(header))
    for budget, per_arch in (results.get("slopes") or slopes(results)).items():
        for architecture, s in per_arch.items():
            lines.append(f"{budget:>6} {architecture:<28} {_num(s.get('train_time_per_token'), '+.2f'):>11} "
                         f"{_num(s.get('train_peak_bytes'), '+.2f'):>9} "
                         f"{_num(s.get('decode_time_per_token'), '+.2f'):>12} "
                         f"{_num(s.get('generate_peak_bytes'), '+.2f'):>8} "
                         f"{_num(s.get('cache_bytes_per_sequence'), '+.2f'):>6} "
                         f"{_num(s.get('autoencode_time_per_token'), '+.2f'):>13}")
    fitted_ratios = results.get("ratios") or ratios(results)
    if fitted_ratios:
        lines.append("")
        lines.append(f"ratios to the matched {YARDSTICK} (same budget and context; tokens/s: above 1 is faster, "
                     f"bytes: above 1 is more)")
        header = f"{'budget':>6} {'architecture':<28} {'quantity':<26} " + " ".join(
            f"{'@' + c:>7}" for c in sorted({c for per in fitted_ratios.values() for q in per.values()
                                            for v in q.values() for c in v}, key=int))
        contexts = header.split()[3:]
        lines.append(header)
        lines.append("-" * len(header))
        for budget, per_arch in fitted_ratios.items():
            for architecture, quantities in per_arch.items():
                for name, by_context in quantities.items():
                    lines.append(f"{budget:>6} {architecture:<28} {name:<26} " + " ".join(
                        f"{_num(by_context.get(c[1:]), '.2f'):>7}" for c in contexts))
    skipped = [r for r in cells if r["status"] != "ok"]
    if skipped:
        lines.append("")
        lines.append("skipped cells:")
        for r in skipped:
            lines.append(f"  {r['architecture']} {r['budget']} {r['kind']} @{r['context']}: {r['status']}")
    lines.append(f"\nefficiency total {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def r_hidden(rows: list[dict]) -> int:
    return rows[0]["hidden"]


def plot(results: dict, out_dir: Path) -> list[Path]:
    """Per budget: throughput vs context and memory vs context (log-log), the fitted slopes in the legends."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the efficiency plots.")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fitted = results.get("slopes") or slopes(results)
    paths = []
    panels = {
        "throughput": [("training (forward+backward)", "train", "tokens_per_s", "train_time_per_token", "tokens / s"),
                       ("generation with cache: decode (autoencoders: encode+decode)", ("generate", "autoencode"),
                        ("decode_tokens_per_s", "tokens_per_s"),
                        ("decode_time_per_token", "autoencode_time_per_token"), "tokens / s")],
        "memory": [("training peak (above the model)", "train", "peak_bytes", "train_peak_bytes", "MiB"),
                   ("generation / enc+dec peak", ("generate", "autoencode"), ("peak_bytes", "peak_bytes"),
                    ("generate_peak_bytes", "autoencode_peak_bytes"), "MiB"),
                   ("cache per sequence", "generate", "cache_bytes_per_sequence", "cache_bytes_per_sequence", "MiB")],
    }
    for budget in dict.fromkeys(r["budget"] for r in results["cells"]):
        rows = [r for r in results["cells"] if r["budget"] == budget and r["status"] == "ok"]
        architectures = list(dict.fromkeys(r["architecture"] for r in results["cells"]))
        colors = {a: plt.cm.tab10(i % 10) for i, a in enumerate(architectures)}
        for name, specs in panels.items():
            fig, axes = plt.subplots(1, len(specs), figsize=(6.2 * len(specs), 4.8), squeeze=False)
            for ax, (title, kinds, fields, slope_names, unit) in zip(axes[0], specs, strict=True):
                kinds = kinds if isinstance(kinds, tuple) else (kinds,)
                fields = fields if isinstance(fields, tuple) else (fields,) * len(kinds)
                slope_names = slope_names if isinstance(slope_names, tuple) else (slope_names,) * len(kinds)
                drawn = False
                for architecture in architectures:
                    for kind, field, slope_name in zip(kinds, fields, slope_names, strict=True):
                        points = sorted((r["context"], r[field]) for r in rows if r["architecture"] == architecture
                                        and r["kind"] == kind and r.get(field) and r[field] > 0)
                        if not points:
                            continue
                        xs, ys = zip(*points, strict=True)
                        if unit == "MiB":
                            ys = [y / 2**20 for y in ys]
                        slope = fitted.get(budget, {}).get(architecture, {}).get(slope_name)
                        label = f"{architecture} ({'-' if slope is None else format(slope, '+.2f')})"
                        ax.plot(xs, ys, "s--" if kind == "autoencode" else "o-", color=colors[architecture],
                                label=label)
                        drawn = True
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_xlabel("context length")
                ax.set_ylabel(unit)
                ax.set_title(title, fontsize=10)
                ax.grid(True, which="both", alpha=0.3)
                if drawn:
                    ax.legend(fontsize=7, title="slope of log " + ("time/token" if unit != "MiB" else "memory"),
                              title_fontsize=7)
            fig.suptitle(f"{name}, budget {budget} non-embedding parameters "
                         f"({results['settings']['num_threads']} threads)", fontsize=11)
            fig.tight_layout()
            path = out_dir / f"efficiency_{budget}_{name}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


__all__ = ["add_arguments", "measure", "parse_budget", "plot", "ratios", "report", "run", "slopes"]


if __name__ == "__main__":  # worker process of `run_cell`
    worker = argparse.ArgumentParser()
    worker.add_argument("--worker", required=True)
    print(RESULT_TAG + json.dumps(run_worker(json.loads(worker.parse_args().worker), measure)), flush=True)
