"""Cost of the input checks every memory-zoo forward runs (memory_zoo/modeling/zoo_inputs.py), side by side.

For each causal LM of the contract (tests/test_contract.py builds the same small random models), the forward pass is
timed with the checks on and with them replaced by a no-op, alternating the two in one process, on one token (where a
fixed per-call cost weighs most, as in a decoding step) and on a full forward of `--length` tokens; then the same for
a few architectures at the research papers' base sizes, where the fixed cost is what a user actually pays.
Prints the ratios and writes JSON.

    python benchmarks/input_checks.py                 # writes benchmarks/results/input_checks.json
    python benchmarks/input_checks.py --repeats 50 --output /tmp/checks.json
    python benchmarks/input_checks.py --research-size          # the small models only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from bench_common import machine_info  # noqa: E402
from test_contract import CASES, build  # noqa: E402

from memory_zoo.modeling import zoo_inputs  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def median_seconds(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def research_size(architecture: str) -> torch.nn.Module:
    """The model at its config's defaults, which are the research papers' base sizes (e.g. 12 x 768 Memory Mosaics)."""
    import memory_zoo

    config_class, _, model_class = next(entry for entry in memory_zoo.ARCHITECTURES
                                        if entry[0].model_type == architecture)
    torch.manual_seed(0)
    return model_class(config_class(use_kernels=False)).eval()


def measure(architecture: str, length: int, repeats: int, model: torch.nn.Module | None = None) -> dict:
    model = model if model is not None else build(architecture)
    context = CASES[architecture].context
    length = min(length, context) if context else length
    input_ids = torch.randint(3, 100, (1, length), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        def full():
            model(input_ids, use_cache=False)

        def one_token():
            model(input_ids[:, :1], use_cache=False)

        results = {}
        original = zoo_inputs.check_model_inputs
        for name, call in (("full_forward", full), ("one_token", one_token)):
            on, off = [], []
            for _ in range(5):  # alternate, so drift of the shared machine hits both sides alike
                on.append(median_seconds(call, repeats))
                zoo_inputs.check_model_inputs = lambda *args, **kwargs: None
                try:
                    off.append(median_seconds(call, repeats))
                finally:
                    zoo_inputs.check_model_inputs = original
            results[name] = {"with_checks_s": statistics.median(on), "without_checks_s": statistics.median(off),
                             "ratio": statistics.median(on) / statistics.median(off)}
    parameters = sum(p.numel() for p in model.parameters())
    return {"length": length, "parameters": parameters, **results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--research-size", nargs="*", default=["masked_mixer", "memory_mosaics"], metavar="ARCH",
                        help="architectures also measured at their config defaults, the research base sizes")
    parser.add_argument("--output", type=Path, default=RESULTS / "input_checks.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    report = {"machine": machine_info(), "repeats": args.repeats, "architectures": {}}
    for architecture in sorted(CASES):
        row = measure(architecture, args.length, args.repeats)
        report["architectures"][architecture] = row
        print(f"{architecture:30s} full forward ({row['length']} tokens) x{row['full_forward']['ratio']:.3f}   "
              f"one token x{row['one_token']['ratio']:.3f}", flush=True)
    report["research_size"] = {}
    for architecture in args.research_size:
        row = measure(architecture, args.length, max(args.repeats // 6, 3), research_size(architecture))
        report["research_size"][architecture] = row
        print(f"{architecture + ' (research size)':30s} full forward ({row['length']} tokens) "
              f"x{row['full_forward']['ratio']:.4f}   one token x{row['one_token']['ratio']:.4f}   "
              f"({row['parameters'] / 1e6:.0f}M parameters)", flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
