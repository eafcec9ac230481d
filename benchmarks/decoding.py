"""Decoding speed of every causal LM of memory-zoo against a KV-cached Llama of the same width and depth.

For each context `C` every model is built for `C` (as `scoreboard_models` configures it: a Masked Mixer with
`max_position_embeddings = C`, a Memory Mosaic with `block_size = C`, chunk models with 4 chunks of `C / 4` tokens),
given the same prompt of `C - new_tokens` random tokens and asked for a greedy
`generate(max_new_tokens=new_tokens, do_sample=False, use_cache=True)`. Per call a logits processor timestamps every
step, so one call yields both the prefill time (start of `generate` to the first step's logits) and the time of
each of its `new_tokens - 1` decode steps (between consecutive timestamps); the decode rate is one over the median
step of the timed calls. The clock is this thread's CPU time (`time.thread_time`) by default: with
`--threads 1` all of torch's work runs on the calling thread, so it counts the whole step, page faults included, but
not the time other processes hold the core. On a shared machine (load ~3 on 2 cores) the wall time of the same Llama
step at 8192 tokens ranged 17-41 ms, its CPU time 16-22 ms; worse, the wall clock is biased: a step longer than the
scheduler's time slice is nearly always cut by other processes while a 2 ms step often runs through, so the median
wall step favours the fast models (wall ratios up to 1.4x the CPU ones in our run). `--clock wall` (the default with
more threads) reports wall time; both clocks are in the JSON.

The yardstick is transformers' `LlamaForCausalLM` with its default `DynamicCache`; the ratio is our decode tokens/s
over Llama's at that context. The other yardsticks of `scoreboard_models` (`MambaForCausalLM`, pure-torch on the
CPU) are timed alike. Next to it: the bytes of each model's cache after `generate` and whether it is smaller than
Llama's KV cache.

    python benchmarks/decoding.py                 # contexts 256 ... 8192; writes benchmarks/results/decoding.{json,png}
    python benchmarks/decoding.py --quick --output /tmp/decoding.json      # tiny models, contexts 64 128, seconds
    python benchmarks/decoding.py --models masked_mixer llama --contexts 1024 4096 --repeats 5

Per context the models are timed round robin (one warm-up each, then `--repeats` rounds, the order rotated every
round) so that load from other processes hits all of them alike; medians are reported. Nothing asserts on time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from transformers import LogitsProcessor, LogitsProcessorList

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

import scoreboard_models  # noqa: E402
from bench_common import fmt_bytes, load_average, machine_info, maxrss_bytes, tensor_bytes  # noqa: E402
from scoreboard_models import YARDSTICK  # noqa: E402

from memory_zoo import ARCHITECTURES  # noqa: E402
from memory_zoo.modeling.zoo_compat import CACHE_NAME  # noqa: E402

RESULTS = ROOT / "results"
# Every causal LM of the zoo, from the architecture records (autoencoders have no causal class), then the yardsticks
# scoreboard_models offers (Llama, against which every ratio is taken, and Mamba, a constant-size recurrent cache).
CAUSAL_LMS = [config.model_type for config, _, causal in ARCHITECTURES if causal is not None]
MODELS = list(dict.fromkeys([*CAUSAL_LMS, YARDSTICK, *getattr(scoreboard_models, "YARDSTICKS", {})]))

# Values used when a flag is not given; `--quick` swaps in the second set (explicit flags still win).
DEFAULTS = {"contexts": [256, 512, 1024, 2048, 4096, 8192], "new_tokens": 32, "hidden_size": 256, "layers": 4,
            "vocab": 4096, "repeats": 3, "exact_max_context": 1024}
QUICK = {"contexts": [64, 128], "new_tokens": 8, "hidden_size": 64, "layers": 2, "vocab": 512, "repeats": 1}


class StepClock(LogitsProcessor):
    """Records the wall clock and this thread's CPU clock each time `generate` has the next-token logits of a step;
    changes nothing.

    The first stamp comes right after the prefill forward, each later one after one decode step (forward, cache
    update, greedy pick and stopping checks included), so consecutive stamps bracket exactly one decode step each:
    no second, prefill-only call to subtract, whose noise would swamp the decode time at long contexts (at 8192
    tokens a 2-4 s prefill against 31 decode steps of ~20 ms).
    """

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.thread_time())
        return scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings, with the defaults (or the `--quick` set) filled in and checked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=MODELS, metavar="MODEL_TYPE",
                        help=f"models to time (default: every causal LM and yardstick: {' '.join(MODELS)}; "
                             f"{YARDSTICK} is always added)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help=f"context lengths (prompt + new tokens) (default: {DEFAULTS['contexts']}; --quick: "
                             f"{QUICK['contexts']})")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens generated per call (default: {DEFAULTS['new_tokens']})")
    parser.add_argument("--hidden-size", type=int, default=None,
                        help=f"width of every model (default: {DEFAULTS['hidden_size']})")
    parser.add_argument("--layers", type=int, default=None,
                        help=f"blocks per model; two-stack models split them (default: {DEFAULTS['layers']})")
    parser.add_argument("--vocab", type=int, default=None, help=f"vocabulary size (default: {DEFAULTS['vocab']})")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed rounds after the warm-up, medians reported (default: {DEFAULTS['repeats']})")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default: 1)")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="clock of the reported rates: `cpu`, this thread's CPU time (not counting the time "
                             "other processes hold the core; only complete with one thread), or `wall` (default "
                             "auto: cpu with --threads 1, else wall)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and prompts (default: 0)")
    parser.add_argument("--exact-max-context", type=int, default=None,
                        help="check cached == uncached greedy tokens (`tokens_exact`) up to this context; the "
                             "uncached call re-runs the whole sequence per token (default: "
                             f"{DEFAULTS['exact_max_context']}; --quick: every context; 0: never)")
    parser.add_argument("--max-gb", type=float, default=None,
                        help="skip a model at a context whose memory estimate exceeds this many GB (default: half "
                             "of the memory available when the run starts)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: contexts 64 128, hidden 64, 2 layers, vocab 512, 8 new tokens, 1 repeat")
    parser.add_argument("--profile", nargs="+", choices=MODELS, default=None, metavar="MODEL_TYPE",
                        help="instead of the benchmark: profile the decode steps of these models at --contexts "
                             "(torch.profiler ops and cProfile functions) and write the tables to --output")
    parser.add_argument("--profile-steps", type=int, default=16, help="decode steps profiled per model (default: 16)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON output (default: benchmarks/results/decoding.json; --quick: the temp dir)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG output (default: the JSON path with .png)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.exact_max_context is None:  # --quick: uncached calls are cheap at its sizes, check every context
        args.exact_max_context = max(args.contexts)
    if args.output is None:
        name = "decoding_profile.txt" if args.profile else "decoding_quick.json" if args.quick else None
        args.output = Path(tempfile.gettempdir()) / name if name else RESULTS / "decoding.json"
    if args.plot is None:
        args.plot = args.output.with_suffix(".png")
    for name in ("new_tokens", "hidden_size", "layers", "vocab", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.new_tokens < 2:
        parser.error("--new-tokens must be at least 2 (the decode rate needs two steps)")
    bad = [c for c in args.contexts if c <= args.new_tokens or c % scoreboard_models.MEMORY_CHUNKS]
    if bad:
        parser.error(f"contexts must exceed --new-tokens and be multiples of {scoreboard_models.MEMORY_CHUNKS} "
                     f"(chunk models cut them into that many chunks), got {bad}")
    if args.clock == "auto":
        args.clock = "cpu" if args.threads == 1 else "wall"
    elif args.clock == "cpu" and args.threads > 1:
        parser.error("--clock cpu measures one thread; with --threads > 1 use --clock wall")
    args.models = list(dict.fromkeys(args.models))
    if YARDSTICK not in args.models:
        args.models.append(YARDSTICK)  # every ratio is against it
    return args


def build_model(model_type: str, context: int, args: argparse.Namespace, device: str = "cpu") -> nn.Module:
    """A random-weight model of `model_type` built for `context` tokens, as the scoreboard configures it.

    Uses `scoreboard_models._instantiate` for every type its `CONFIGS` knows (the zoo's and the yardsticks) and
    falls back to `scoreboard_models.yardstick` for Llama where `CONFIGS` does not list it (older versions of that
    file). `device="meta"` builds no weights (for estimates).
    """
    torch.manual_seed(args.seed)
    if model_type in scoreboard_models.CONFIGS:
        model = scoreboard_models._instantiate(model_type, args.hidden_size, args.layers, context, args.vocab,
                                               device=device)
    else:  # Llama from a scoreboard_models that has `yardstick()` but no "llama" entry in CONFIGS
        with torch.device(device):
            model = scoreboard_models.yardstick(args.hidden_size, args.layers, context, args.vocab)
    return model.eval()


def estimate_bytes(model_type: str, context: int, args: argparse.Namespace) -> int:
    """A generous estimate of the memory one model needs at `context`: built on the meta device (no weights).

    Weights, plus three copies of the largest parameter (the fixed-context mixers' `L x L` mixing matrices are
    masked / copied during the prefill; measured at 8192 tokens, hidden 256, 4 layers: +0.75 GiB peak for 1 GiB of
    matrices), plus 16 float32 values per token, layer and feature for prefill activations and the cache (Llama at
    8192 tokens: +0.4 GiB peak, estimate 0.5 GiB).
    """
    model = build_model(model_type, context, args, device="meta")
    params = [p.numel() * p.element_size() for p in model.parameters()]
    return int(sum(params) + 3 * max(params) + 16 * 4 * context * args.layers * args.hidden_size)


def cache_positions(cache: object) -> int | None:
    """Positions the cache has read, or None where it cannot say (recurrent-only caches such as Mamba's refuse)."""
    try:
        return cache.get_seq_length()
    except (AttributeError, ValueError):
        return None


def timed_generate(model: nn.Module, ids: torch.Tensor, new_tokens: int, **extra) -> tuple[dict, object]:
    """One greedy cached `generate` call: prefill seconds, decode seconds per token, total seconds; and its output."""
    clock = StepClock()
    start, start_cpu = time.perf_counter(), time.thread_time()
    out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                         logits_processor=LogitsProcessorList([clock]), **extra)
    end = time.perf_counter()
    if len(clock.wall) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} generate steps, the clock saw {len(clock.wall)}")
    timing = {"total_s": end - start}
    for name, stamps, origin in (("wall", clock.wall, start), ("cpu", clock.cpu, start_cpu)):
        timing[f"{name}_prefill_s"] = stamps[0] - origin
        timing[f"{name}_mean_step_s"] = (stamps[-1] - stamps[0]) / (new_tokens - 1)
        timing[f"{name}_step_s"] = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return timing, out


def bench_context(context: int, args: argparse.Namespace, max_bytes: int) -> dict[str, dict]:
    """Every model of `args.models` at `context`: one warm-up each, then `args.repeats` round-robin rounds."""
    prompt = torch.randint(0, args.vocab, (1, context - args.new_tokens),
                           generator=torch.Generator().manual_seed(args.seed + context))
    cells: dict[str, dict] = {}
    models: dict[str, nn.Module] = {}
    for model_type in args.models:
        estimate = estimate_bytes(model_type, context, args)
        cells[model_type] = {"context": context, "model": model_type, "estimate_bytes": estimate}
        if estimate > max_bytes:
            cells[model_type]["status"] = (f"skipped: needs ~{fmt_bytes(estimate)} by estimate, over the limit of "
                                           f"{fmt_bytes(max_bytes)} (--max-gb)")
            continue
        try:
            models[model_type] = build_model(model_type, context, args)
        except Exception as error:  # noqa: BLE001 - a model that cannot be built at this size is reported, not fatal
            cells[model_type]["status"] = f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"

    references: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for model_type, model in list(models.items()):
            cell = cells[model_type]
            try:
                timing, out = timed_generate(model, prompt, args.new_tokens, return_dict_in_generate=True)
            except Exception as error:  # noqa: BLE001 - one failing model must not end the run
                cell["status"] = f"failed: {type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
                del models[model_type]
                continue
            cache = getattr(out, CACHE_NAME)  # `cache` since transformers 5.24, `past_key_values` before
            references[model_type] = out.sequences
            cell.update(status="ok", warmup=timing, cache_bytes=tensor_bytes(cache),
                        cache_class=type(cache).__name__,
                        cache_positions=cache_positions(cache),
                        parameters=scoreboard_models.count_parameters(model))
            del out, cache
            if context <= args.exact_max_context:
                # Without the cache every step re-runs the whole sequence: the tokens any cache must reproduce.
                uncached = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                          do_sample=False, use_cache=False)
                cell["tokens_exact"] = bool(torch.equal(uncached, references[model_type]))

        runs: dict[str, list[dict]] = {model_type: [] for model_type in models}
        order = list(models)
        for round_index in range(args.repeats):
            # Rotate who goes first so that slow drift of the machine's load favours no model.
            shift = round_index % max(1, len(order))
            for model_type in order[shift:] + order[:shift]:
                timing, sequences = timed_generate(models[model_type], prompt, args.new_tokens)
                timing["same_tokens"] = bool(torch.equal(sequences, references[model_type]))
                runs[model_type].append(timing)

    clock = args.clock
    for model_type, timings in runs.items():
        # The rate is the median of all decode steps of the timed calls: on a shared machine a step now and then
        # takes 2-3x longer, which moves a per-call mean by tens of percent. The steps of one call do the same work
        # (no chunk boundary falls inside the decode window at the default sizes, and 31 more tokens barely change
        # a cache of thousands), so their median is the typical cost; the per-call mean is kept next to it
        # (`mean_decode_tokens_per_s`) and `step_spread` is their ratio.
        rates = {name: 1.0 / statistics.median(step for t in timings for step in t[f"{name}_step_s"])
                 for name in ("wall", "cpu")}
        mean = statistics.median(t[f"{clock}_mean_step_s"] for t in timings)
        cells[model_type].update(
            decode_tokens_per_s=rates[clock], decode_s_per_token=1.0 / rates[clock],
            wall_decode_tokens_per_s=rates["wall"], cpu_decode_tokens_per_s=rates["cpu"],
            mean_decode_tokens_per_s=1.0 / mean, step_spread=rates[clock] * mean,
            prefill_s=statistics.median(t[f"{clock}_prefill_s"] for t in timings),
            wall_prefill_s=statistics.median(t["wall_prefill_s"] for t in timings),
            total_s=statistics.median(t["total_s"] for t in timings),
            deterministic=all(t["same_tokens"] for t in timings), runs=timings)
    del models, references
    gc.collect()
    return cells


def add_ratios(cells: dict[str, dict]) -> None:
    """Decode tokens/s and cache bytes of each model relative to the Llama yardstick at the same context."""
    llama = cells.get(YARDSTICK, {})
    for cell in cells.values():
        if cell.get("status") != "ok" or llama.get("status") != "ok":
            cell["ratio_to_llama"] = cell["wall_ratio_to_llama"] = cell["smaller_cache"] = None
            continue
        cell["ratio_to_llama"] = cell["decode_tokens_per_s"] / llama["decode_tokens_per_s"]
        cell["wall_ratio_to_llama"] = cell["wall_decode_tokens_per_s"] / llama["wall_decode_tokens_per_s"]
        cell["llama_cache_bytes"] = llama["cache_bytes"]
        cell["smaller_cache"] = cell["cache_bytes"] < llama["cache_bytes"]


def print_tables(report: dict) -> None:
    """Ratio table (rows models, columns contexts; `*` marks a cache smaller than Llama's), then caches and rates."""
    contexts = report["settings"]["contexts"]
    cells = {(c["model"], c["context"]): c for c in report["cells"]}
    models = report["settings"]["models"]

    def table(title: str, show) -> None:
        print(f"\n{title}")
        header = f"{'model':28s}" + "".join(f"{c:>10}" for c in contexts)
        print(header)
        print("-" * len(header))
        for model in models:
            print(f"{model:28s}" + "".join(f"{show(cells[(model, c)]):>10}" for c in contexts))

    def ok(cell: dict) -> bool:
        return cell.get("status") == "ok"

    table("decode tokens/s relative to Llama (ours / Llama; * = cache smaller than Llama's KV cache):",
          lambda c: f"{c['ratio_to_llama']:.2f}{'*' if c['smaller_cache'] else ' '}" if ok(c) else c["status"][:8])
    table("the same ratio on the wall clock (inflated for fast steps on a busy machine, see the docstring):",
          lambda c: f"{c['wall_ratio_to_llama']:.2f}" if ok(c) else "-")
    table("cache bytes after generate (MiB):",
          lambda c: f"{c['cache_bytes'] / 2**20:.2f}" if ok(c) else "-")
    table("decode tokens/s:", lambda c: f"{c['decode_tokens_per_s']:.1f}" if ok(c) else "-")
    table("prefill seconds:", lambda c: f"{c['prefill_s']:.3f}" if ok(c) else "-")
    exact = [(c["model"], c["context"]) for c in report["cells"] if c.get("tokens_exact") is False]
    checked = sum("tokens_exact" in c for c in report["cells"])
    print(f"\ntokens_exact (cached == uncached greedy tokens): {checked - len(exact)}/{checked} cells"
          + (f"; DIFFERENT: {exact}" if exact else ""))
    for cell in report["cells"]:
        if not ok(cell):
            print(f"  {cell['model']} at {cell['context']}: {cell['status']}")


def plot(report: dict, path: Path) -> None:
    """Decode tokens/s against context (log-log, one line per model) and the ratio to Llama."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the plot.")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    settings = report["settings"]
    fig, (rate_ax, ratio_ax) = plt.subplots(1, 2, figsize=(13, 5))
    for model in settings["models"]:
        cells = [c for c in report["cells"] if c["model"] == model and c.get("status") == "ok"]
        if not cells:
            continue
        style = ({"color": "black", "linewidth": 2.5, "linestyle": "--"} if model == YARDSTICK
                 else {"color": "grey", "linestyle": ":"} if model in getattr(scoreboard_models, "YARDSTICKS", {})
                 else {})
        smaller = all(c["smaller_cache"] for c in cells)
        label = f"{model}{' (cache < KV cache)' if smaller and model != YARDSTICK else ''}"
        contexts = [c["context"] for c in cells]
        rate_ax.plot(contexts, [c["decode_tokens_per_s"] for c in cells], marker="o", label=label, **style)
        ratio_ax.plot(contexts, [c["ratio_to_llama"] for c in cells], marker="o", label=label, **style)
    for ax in (rate_ax, ratio_ax):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(settings["contexts"])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("context (prompt + new tokens)")
        ax.grid(True, which="both", alpha=0.3)
    rate_ax.set_ylabel(f"decode tokens / s ({'thread CPU' if settings['clock'] == 'cpu' else 'wall'} clock)")
    rate_ax.set_title(f"greedy decoding, hidden {settings['hidden_size']}, {settings['layers']} layers, batch 1, "
                      f"{settings['num_threads']} thread(s)", fontsize=10)
    ratio_ax.axhline(1.0, color="grey", linewidth=1)
    ratio_ax.set_ylabel("decode tokens/s relative to Llama (KV cache)")
    ratio_ax.set_title("ratio to LlamaForCausalLM (above 1: faster)", fontsize=10)
    handles, labels = rate_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))  # room below the axes for the legend
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


class DecodeProfiler(LogitsProcessor):
    """Profiles the decode steps of one `generate` call only: starts `torch.profiler` and `cProfile` at the first
    step's logits (the prefill is done) and stops them at the last one."""

    def __init__(self, steps: int) -> None:
        import cProfile

        from torch.profiler import ProfilerActivity, profile

        self.steps, self.calls = steps, 0
        self.torch_profile = profile(activities=[ProfilerActivity.CPU])
        self.python_profile = cProfile.Profile()
        self.start = self.stop = 0.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.calls += 1
        if self.calls == 1:
            self.torch_profile.start()
            self.python_profile.enable()
            self.start = time.perf_counter()
        elif self.calls == self.steps + 1:
            self.stop = time.perf_counter()
            self.python_profile.disable()
            self.torch_profile.stop()
        return scores


def profile_decoding(args: argparse.Namespace) -> int:
    """Where the time of a decode step goes, per model and context: the top torch ops (self CPU time) and the top
    Python functions (cumulative time, cProfile), over `--profile-steps` steps after a warm-up call."""
    import io
    import pstats

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    say(f"decode-step profiles: hidden {args.hidden_size}, {args.layers} layers, {torch.get_num_threads()} thread(s),"
        f" {args.profile_steps} steps after a prompt of context - {args.profile_steps + 1} tokens")
    for context in args.contexts:
        prompt = torch.randint(0, args.vocab, (1, context - args.profile_steps - 1),
                               generator=torch.Generator().manual_seed(args.seed + context))
        for model_type in args.profile:
            model = build_model(model_type, context, args)
            with torch.inference_mode():
                timed_generate(model, prompt, args.profile_steps + 1)  # warm-up: first-call setup stays out
                profiler = DecodeProfiler(args.profile_steps)
                model.generate(prompt, max_new_tokens=args.profile_steps + 1, min_new_tokens=args.profile_steps + 1,
                               do_sample=False, use_cache=True, logits_processor=LogitsProcessorList([profiler]))
            per_step = (profiler.stop - profiler.start) / args.profile_steps
            say(f"\n===== {model_type} at context {context}: {per_step * 1e3:.2f} ms per decode step (profiled) =====")
            averages = profiler.torch_profile.key_averages()
            total = sum(event.self_cpu_time_total for event in averages) or 1.0
            say(f"{'torch op':48s} {'self ms/step':>12} {'share':>6} {'calls/step':>10}")
            for event in sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
                say(f"{event.key[:48]:48s} {event.self_cpu_time_total / 1e3 / args.profile_steps:>12.3f} "
                    f"{event.self_cpu_time_total / total:>6.1%} {event.count / args.profile_steps:>10.1f}")
            stream = io.StringIO()
            pstats.Stats(profiler.python_profile, stream=stream).sort_stats("cumulative").print_stats(25)
            say("python functions (cProfile, cumulative, all steps; profiler overhead inflates them):")
            say("\n".join(line for line in stream.getvalue().splitlines()[6:] if line.strip()))
            del model
            gc.collect()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.profile:
        return profile_decoding(args)
    machine = machine_info("cpu")
    available = machine.get("memory_total_bytes", 8 * 2**30)
    try:
        with open("/proc/meminfo") as f:
            available = int(next(line.split()[1] for line in f if line.startswith("MemAvailable"))) * 1024
    except (OSError, StopIteration, ValueError):
        pass  # no /proc: fall back to the total (or 8 GiB)
    # Other sessions share this machine's memory: by default take at most half of what is free now.
    max_bytes = int(args.max_gb * 1e9) if args.max_gb is not None else available // 2
    settings = {
        "models": args.models, "contexts": args.contexts, "new_tokens": args.new_tokens,
        "hidden_size": args.hidden_size, "layers": args.layers, "vocab": args.vocab, "batch_size": 1,
        "repeats": args.repeats, "seed": args.seed, "num_threads": torch.get_num_threads(), "quick": args.quick,
        "dtype": str(torch.get_default_dtype()), "exact_max_context": args.exact_max_context,
        "max_bytes": max_bytes, "configs": "benchmarks/scoreboard_models.py",
        "clock": args.clock,
        "timing": "a logits processor stamps each generate step (wall clock and the thread's CPU clock); "
                  "decode_tokens_per_s = 1 / median of all step intervals of the timed calls on `clock`; "
                  "prefill_s = first stamp - call start, median over calls; mean_decode_tokens_per_s = "
                  "(new_tokens - 1) / (last stamp - first stamp), median over calls; wall_* and cpu_* fields give "
                  "both clocks; models round robin",
        "cache_bytes": "bench_common.tensor_bytes: every distinct tensor reachable from the cache after the warm-up "
                       "generate (keys/values, recurrent states, Mamba's conv/recurrent states)",
    }
    print(f"settings: {json.dumps({k: v for k, v in settings.items() if k not in ('timing', 'cache_bytes')})}")
    machine["load_average_before"] = load_average()
    start = time.perf_counter()
    cells = []
    for context in args.contexts:
        t0 = time.perf_counter()
        context_cells = bench_context(context, args, max_bytes)
        add_ratios(context_cells)
        cells.extend(context_cells.values())
        shown = ", ".join(f"{m} {c['ratio_to_llama']:.2f}" for m, c in context_cells.items()
                          if c.get("ratio_to_llama") is not None and m != YARDSTICK)
        print(f"context {context}: {time.perf_counter() - t0:.1f} s; ratio to llama: {shown}", flush=True)
    machine["load_average_after"] = load_average()
    machine["peak_rss_bytes"] = maxrss_bytes()  # of the whole run: every model of a context is resident at once
    report = {"machine": machine, "settings": settings, "total_seconds": time.perf_counter() - start,
              "ratios": {m: {str(c["context"]): c.get("ratio_to_llama") for c in cells if c["model"] == m}
                         for m in args.models},
              "smaller_cache": {m: {str(c["context"]): c.get("smaller_cache") for c in cells if c["model"] == m}
                                for m in args.models if m != YARDSTICK},
              "cells": cells}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_tables(report)
    print(f"\ntotal {report['total_seconds']:.1f} s; wrote {args.output}")
    plot(report, args.plot)
    if any(c.get("tokens_exact") is False or c.get("deterministic") is False for c in cells):
        print("ERROR: some model's cached tokens differ from its uncached ones (or between calls)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
