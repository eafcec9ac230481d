"""The scoreboard: efficiency and in-context memory tasks of every architecture, from one command.

    python benchmarks/scoreboard.py                       # default scale, all architectures
    python benchmarks/scoreboard.py --full                # ~10M and ~50M budgets, contexts to 8192
    python benchmarks/scoreboard.py --quick               # smoke scale (seconds); writes to the temp dir
    python benchmarks/scoreboard.py --only efficiency --architectures masked_mixer lswt

Writes `scoreboard.json` (machine, settings, efficiency, tasks) and the PNG plots to `--output-dir` (default
benchmarks/results/scoreboard/; with --quick a temp dir) and prints the tables. The parts are the modules
`scoreboard_efficiency` and `scoreboard_tasks`, each with `add_arguments(parser)`, `run(args, architectures)`,
`report(results)` and `plot(results, out_dir)`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scoreboard_efficiency  # noqa: E402
from bench_common import load_average, machine_info  # noqa: E402
from scoreboard_models import ALL_ARCHITECTURES, DEFAULT_ARCHITECTURES  # noqa: E402

PARTS = ("efficiency", "tasks")
RESULTS = Path(__file__).resolve().parent / "results" / "scoreboard"


def load_part(name: str):
    """The module of a scoreboard part, or None (with the reason) where it is not available."""
    if name == "efficiency":
        return scoreboard_efficiency, None
    try:
        return importlib.import_module("scoreboard_tasks"), None
    except ModuleNotFoundError as error:
        if error.name != "scoreboard_tasks":
            raise
        return None, "benchmarks/scoreboard_tasks.py does not exist yet (run with --only efficiency)"


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    scale = parser.add_mutually_exclusive_group()
    scale.add_argument("--quick", action="store_true", help="smoke-test scale (seconds); output to a temp dir")
    scale.add_argument("--full", action="store_true", help="full scale: two budgets, long contexts (long)")
    parser.add_argument("--only", choices=PARTS, default=None, help="run one part only (default: both)")
    parser.add_argument("--architectures", nargs="+", choices=ALL_ARCHITECTURES, default=DEFAULT_ARCHITECTURES,
                        metavar="MODEL_TYPE", help=f"architectures (default: {' '.join(DEFAULT_ARCHITECTURES)}; "
                                                   f"also: {' '.join(sorted(set(ALL_ARCHITECTURES) - set(DEFAULT_ARCHITECTURES)))})")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where scoreboard.json and the PNGs go (default: benchmarks/results/scoreboard/, "
                             "with --quick a temp dir)")
    parser.add_argument("--seed", type=int, default=0, help="seed of models and data (default: 0)")
    parts = {}
    pre = argparse.ArgumentParser(add_help=False)  # which parts, before their flags are known (--help included)
    pre.add_argument("--only", choices=PARTS, default=None)
    only = pre.parse_known_args(argv)[0].only
    for name in PARTS if only is None else [only]:
        module, reason = load_part(name)
        if module is None:
            parser.error(f"the {name} part cannot run: {reason}")
        module.add_arguments(parser)
        parts[name] = module
    args = parser.parse_args(argv)
    if args.output_dir is None:
        args.output_dir = Path(tempfile.mkdtemp(prefix="scoreboard_quick_")) if args.quick else RESULTS
    return args, parts


def main(argv: list[str] | None = None) -> int:
    args, parts = parse_args(argv)
    architectures = list(dict.fromkeys(args.architectures))
    machine = machine_info("cpu")
    machine["load_average_before"] = load_average()
    report = {"machine": machine,
              "settings": {"scale": "quick" if args.quick else "full" if args.full else "default",
                           "architectures": architectures, "parts": list(parts), "seed": args.seed,
                           "command": " ".join(["python", "benchmarks/scoreboard.py", *(argv or sys.argv[1:])])},
              "efficiency": None, "tasks": None}
    start = time.perf_counter()
    tables, figures = [], []
    for name, module in parts.items():
        t0 = time.perf_counter()
        print(f"== {name} ==", flush=True)
        results = module.run(args, architectures)
        results.setdefault("seconds", time.perf_counter() - t0)
        report[name] = results
        tables.append(module.report(results))
        figures += module.plot(results, args.output_dir)
    report["machine"]["load_average_after"] = load_average()
    report["total_seconds"] = time.perf_counter() - start
    args.output_dir.mkdir(parents=True, exist_ok=True)
    output = args.output_dir / "scoreboard.json"
    output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(f"machine: {machine['processor']}, {machine['cpu_count']} CPUs, {machine['num_threads']} threads, "
          f"torch {machine['torch']}, transformers {machine['transformers']}")
    for table in tables:
        print()
        print(table)
    print(f"\ntotal {report['total_seconds']:.0f} s; wrote {output}")
    for path in figures:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
