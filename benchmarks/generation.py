"""Greedy generation speed of a memory-zoo model with and without its cache (`--architecture`).

With `use_cache=False` every step re-runs the whole sequence (what the research code does); with `use_cache=True`
a new token costs one step: a Masked Mixer reads one row of each block's `L x L` mixing matrix from its
`MaskedMixerCache`, a Memory Mosaic updates its leaky averages and reads its keys/values from its `MemoryMosaicsCache`.
A variable-memory mixer computes each chunk's memory once, when the chunk is complete, and decodes inside a chunk
like a Masked Mixer (`MemoryMixerCache`). For each context `C` this script builds a random-weight model for that
context (a Masked Mixer with `max_position_embeddings = C`, a Memory Mosaic with `block_size = C`, a variable-memory
mixer with 4 chunks of `C / 4` tokens and an encoder half as wide as the decoder, as in the research), fills it with a random prompt of
`C - new_tokens` tokens and times `generate(..., max_new_tokens=new_tokens)` in both modes, interleaved.

    python benchmarks/generation.py                                   # Masked Mixer; writes benchmarks/results/
    python benchmarks/generation.py --architecture memory-mosaics     # Memory Mosaics (also memory-layers, lswt,
                                                                      # variable-memory-mixer)
    python benchmarks/generation.py --quick    # smoke test (a few seconds), writes to the temp dir

Timings are wall-clock `generate` calls (prompt prefill included), the median of `--repeats`; tokens/s counts the
generated tokens of the whole batch. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import load_average, machine_info, tensor_bytes  # noqa: E402

from memory_zoo import (  # noqa: E402
    LSWTConfig,
    LSWTForCausalLM,
    MaskedMixerConfig,
    MaskedMixerForCausalLM,
    MemoryLayersConfig,
    MemoryLayersForCausalLM,
    MemoryMosaicsConfig,
    MemoryMosaicsForCausalLM,
    VariableMemoryMixerConfig,
    VariableMemoryMixerForCausalLM,
)
from memory_zoo.modeling.zoo_compat import CACHE_NAME  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ARCHITECTURES = ("masked-mixer", "memory-mosaics", "memory-layers", "lswt", "variable-memory-mixer")
TITLES = {"masked-mixer": "Masked Mixer", "memory-mosaics": "Memory Mosaics", "memory-layers": "Memory Layers",
          "lswt": "LSWT", "variable-memory-mixer": "Variable-memory mixer"}
CACHES = {"masked-mixer": "MaskedMixerCache", "memory-mosaics": "MemoryMosaicsCache", "memory-layers": "DynamicCache",
          "lswt": "LSWTCache", "variable-memory-mixer": "MemoryMixerCache"}
MEMORY_CHUNKS = 4  # chunks of the variable-memory mixer (research: 4)

# Values used when a flag is not given; `--quick` swaps in the second set (explicit flags still win).
DEFAULTS = {"contexts": [128, 256, 512, 1024], "new_tokens": 32, "hidden_size": 256, "layers": 4, "repeats": 3}
QUICK = {"contexts": [32, 64], "new_tokens": 8, "hidden_size": 64, "layers": 2, "repeats": 1}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=ARCHITECTURES, default="masked-mixer",
                        help="model to benchmark (default: masked-mixer)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help=f"context lengths L to benchmark (default: {DEFAULTS['contexts']})")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help=f"tokens generated per call; prompt length = context - new tokens "
                             f"(default: {DEFAULTS['new_tokens']})")
    parser.add_argument("--hidden-size", type=int, default=None, help=f"model width (default: {DEFAULTS['hidden_size']})")
    parser.add_argument("--layers", type=int, default=None, help=f"number of blocks (default: {DEFAULTS['layers']})")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size (default: 4096)")
    parser.add_argument("--batch-size", type=int, default=1, help="sequences per generate call (default: 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help=f"timed calls per mode, the median is reported (default: {DEFAULTS['repeats']})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights and prompts (default: 0)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave as is)")
    parser.add_argument("--output", type=Path, default=None,
                        help="JSON output (default: benchmarks/results/<architecture>_generation.json next to this "
                             "script; with --quick: the same name in the temp dir)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG output (default: the JSON path with .png)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny smoke-test settings: contexts 32 64, 8 new tokens, hidden 64, 2 layers, 1 repeat")
    args = parser.parse_args(argv)

    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.output is None:
        name = f"{args.architecture.replace('-', '_')}_generation"
        args.output = Path(tempfile.gettempdir()) / f"{name}_quick.json" if args.quick else RESULTS / f"{name}.json"
    if args.plot is None:
        args.plot = args.output.with_suffix(".png")

    for name in ("new_tokens", "hidden_size", "layers", "vocab", "batch_size", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.architecture == "variable-memory-mixer":
        uneven = [c for c in args.contexts if c % MEMORY_CHUNKS]
        if uneven:
            parser.error(f"variable-memory-mixer contexts must be multiples of {MEMORY_CHUNKS} chunks, got {uneven}")
    too_short = [c for c in args.contexts if c <= args.new_tokens]
    if too_short:
        parser.error(f"every context must exceed --new-tokens={args.new_tokens} (the prompt needs at least one token), "
                     f"got {too_short}")
    return args


def build_model(args: argparse.Namespace, context: int):
    if args.architecture == "memory-mosaics":
        # research proportions: 64-channel heads, persistent memories of 3.5 x hidden slots
        config = MemoryMosaicsConfig(vocab_size=args.vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                     num_attention_heads=max(1, args.hidden_size // 64),
                                     pmem_size=args.hidden_size * 7 // 2, block_size=context)
        return MemoryMosaicsForCausalLM(config).eval()
    heads = max(1, args.hidden_size // 64)
    if args.architecture == "memory-layers":
        # one product-key memory in the middle, 64K slots (research: K = 1024 at width 1024)
        config = MemoryLayersConfig(vocab_size=args.vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                                    num_attention_heads=heads, memory_layers=[args.layers // 2], memory_n_keys=256,
                                    memory_k_dim=min(256, args.hidden_size), max_position_embeddings=context)
        return MemoryLayersForCausalLM(config).eval()
    if args.architecture == "variable-memory-mixer":
        config = VariableMemoryMixerConfig(vocab_size=args.vocab, encoder_hidden_size=max(2, args.hidden_size // 2),
                                           hidden_size=args.hidden_size, encoder_layers=args.layers,
                                           decoder_layers=args.layers, chunk_length=context // MEMORY_CHUNKS,
                                           num_chunks=MEMORY_CHUNKS, compression=1)
        return VariableMemoryMixerForCausalLM(config).eval()
    if args.architecture == "lswt":
        config = LSWTConfig(vocab_size=args.vocab, embedding_size=args.hidden_size, hidden_size=args.hidden_size,
                            intermediate_size=4 * args.hidden_size, num_attention_heads=heads,
                            num_hidden_layers=args.layers, max_position_embeddings=context)
        return LSWTForCausalLM(config).eval()
    config = MaskedMixerConfig(vocab_size=args.vocab, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
                               max_position_embeddings=context)
    return MaskedMixerForCausalLM(config).eval()


def bench_context(args: argparse.Namespace, context: int) -> dict:
    torch.manual_seed(args.seed)
    model = build_model(args, context)
    prompt_length = context - args.new_tokens
    generator = torch.Generator().manual_seed(args.seed + context)
    input_ids = torch.randint(0, args.vocab, (args.batch_size, prompt_length), generator=generator)
    gen_kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    def run(use_cache: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        sequences = model.generate(input_ids, use_cache=use_cache, **gen_kwargs)
        return time.perf_counter() - start, sequences

    with torch.inference_mode():
        # Warm-up of each mode; the cached one also reports the cache it built.
        out = model.generate(input_ids, use_cache=True, return_dict_in_generate=True, **gen_kwargs)
        reference = out.sequences
        cache = getattr(out, CACHE_NAME)  # `cache` since transformers 5.24, `past_key_values` before
        cache_total = tensor_bytes(cache)
        cache_length = cache.get_seq_length()
        del out
        _, uncached_warm = run(False)
        identical = torch.equal(reference, uncached_warm)

        times: dict[bool, list[float]] = {True: [], False: []}
        for repeat in range(args.repeats):
            # Alternate which mode goes first so slow drift does not favour either.
            for use_cache in ((True, False) if repeat % 2 == 0 else (False, True)):
                elapsed, sequences = run(use_cache)
                times[use_cache].append(elapsed)
                identical = identical and torch.equal(reference, sequences)

    generated = args.batch_size * args.new_tokens
    cached_s = statistics.median(times[True])
    uncached_s = statistics.median(times[False])
    return {
        "context": context,
        "prompt_length": prompt_length,
        "new_tokens": args.new_tokens,
        "cached_tokens_per_s": generated / cached_s,
        "uncached_tokens_per_s": generated / uncached_s,
        "speedup": uncached_s / cached_s,
        "cached_seconds": cached_s,
        "uncached_seconds": uncached_s,
        "cached_seconds_all": times[True],
        "uncached_seconds_all": times[False],
        "cache_bytes_per_sequence": cache_total // args.batch_size,
        "cache_positions": cache_length,
        "tokens_identical": bool(identical),
    }


def print_table(results: list[dict]) -> None:
    header = (f"{'context':>7} {'prompt':>6} {'new':>4} {'cached tok/s':>12} {'uncached tok/s':>14} "
              f"{'speedup':>7} {'cache/seq':>10} {'identical':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['context']:>7} {r['prompt_length']:>6} {r['new_tokens']:>4} {r['cached_tokens_per_s']:>12.1f} "
              f"{r['uncached_tokens_per_s']:>14.1f} {r['speedup']:>6.2f}x {r['cache_bytes_per_sequence'] / 2**20:>6.2f} MiB "
              f"{str(r['tokens_identical']):>9}")


def plot(results: list[dict], settings: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: skipping the plot.")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    contexts = [r["context"] for r in results]
    cached = [r["cached_tokens_per_s"] for r in results]
    uncached = [r["uncached_tokens_per_s"] for r in results]

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.plot(contexts, cached, "o-", label=f"use_cache=True ({CACHES[settings['architecture']]})")
    ax.plot(contexts, uncached, "s--", label="use_cache=False (full re-run per token)")
    for r in results:
        ax.annotate(f"{r['speedup']:.1f}x", (r["context"], r["cached_tokens_per_s"]), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=9)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    low, high = min(cached + uncached), max(cached + uncached)
    ax.set_ylim(low / 1.5, high * 2.0)  # room above the top point for its speedup label
    ax.set_xticks(contexts)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("context length L (prompt = L - new tokens)")
    ax.set_ylabel("generated tokens / s")
    ax.set_title(f"{TITLES[settings['architecture']]} greedy generation, {settings['new_tokens']} new tokens\n"
                 f"hidden {settings['hidden_size']}, {settings['layers']} layers, batch {settings['batch_size']}, "
                 f"{settings['num_threads']} threads (labels: speedup)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = {
        "architecture": args.architecture,
        "contexts": args.contexts,
        "new_tokens": args.new_tokens,
        "hidden_size": args.hidden_size,
        "layers": args.layers,
        "vocab": args.vocab,
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "seed": args.seed,
        "num_threads": torch.get_num_threads(),
        "quick": args.quick,
        "dtype": str(torch.get_default_dtype()),
        "timing": "median wall time of model.generate (prefill included); tokens/s = batch_size * new_tokens / time",
    }
    print(f"settings: {json.dumps({k: v for k, v in settings.items() if k != 'timing'})}")

    load_before = load_average()
    results = []
    start = time.perf_counter()
    for context in args.contexts:
        t0 = time.perf_counter()
        results.append(bench_context(args, context))
        print(f"  context {context}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    total = time.perf_counter() - start

    machine = machine_info()
    # Other processes on the same cores make the timings noisy; the load averages let a reader judge that.
    machine["load_average_before"] = load_before
    machine["load_average_after"] = load_average()
    report = {"machine": machine, "settings": settings, "results": results, "total_seconds": total}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print_table(results)
    print(f"\ntotal {total:.2f} s; wrote {args.output}")
    plot(results, settings, args.plot)

    mismatched = [r["context"] for r in results if not r["tokens_identical"]]
    if mismatched:
        print(f"ERROR: cached and uncached generation produced different tokens for contexts {mismatched}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
