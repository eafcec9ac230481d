"""How long `memory-zoo --help` takes, side by side with `python -c "import torch"` (the floor of any command that runs).

    python benchmarks/cli_startup.py [--runs 7] [--output benchmarks/results/cli_startup.json]

Each measurement is a fresh process, timed from start to exit (wall clock). The commands take turns, run by run, so
that a busy machine slows them alike; one untimed warm-up of each fills the page cache first. The medians and the
ratio `memory-zoo --help` / `import torch` go to stdout and, with every single time, to the JSON file. For reference
it also times `python -m memory_zoo.cli --help`, which imports the package first: what `memory-zoo --help` cost before
the console script moved to the launcher (memory_zoo_cli). Only the standard library is imported here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def console_script() -> str:
    """The `memory-zoo` script pip wrote beside this interpreter (a PATH shim, such as pyenv's, would add its own
    start-up to every run); the one on PATH otherwise."""
    beside = Path(sysconfig.get_path("scripts")) / "memory-zoo"
    found = str(beside) if beside.is_file() else shutil.which("memory-zoo")
    if found is None:
        sys.exit("the `memory-zoo` command is not installed: pip install -e .")
    return found


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-2000:]}")
    return seconds


def versions() -> dict[str, str | None]:
    found = {}
    for package in ("torch", "transformers", "memory-zoo"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command (default: 7)")
    parser.add_argument("--output", type=Path, default=RESULTS / "cli_startup.json", help="JSON file to write")
    args = parser.parse_args()

    commands = {
        "memory-zoo --help": [console_script(), "--help"],
        "python -c 'import torch'": [sys.executable, "-c", "import torch"],
        "python -m memory_zoo.cli --help": [sys.executable, "-m", "memory_zoo.cli", "--help"],
    }
    load_before = os.getloadavg()
    for command in commands.values():  # warm-up: the page cache, .pyc files
        timed(command)
    seconds: dict[str, list[float]] = {name: [] for name in commands}
    for run in range(args.runs):
        for name, command in commands.items():
            seconds[name].append(timed(command))
        print(f"run {run + 1}/{args.runs}: " + ", ".join(f"{n} {s[-1]:.3f} s" for n, s in seconds.items()),
              file=sys.stderr)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    report = {
        "settings": {"runs": args.runs, "commands": commands, "order": "alternating, after one warm-up of each"},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg(), **versions()},
        "results": {name: {"median_s": medians[name], "min_s": min(values), "max_s": max(values), "seconds": values}
                    for name, values in seconds.items()},
        "ratio_help_to_import_torch": medians["memory-zoo --help"] / medians["python -c 'import torch'"],
        "ratio_package_help_to_help": medians["python -m memory_zoo.cli --help"] / medians["memory-zoo --help"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    width = max(map(len, commands))
    for name in commands:
        print(f"{name:<{width}}  median {medians[name]:.3f} s  (min {min(seconds[name]):.3f}, max "
              f"{max(seconds[name]):.3f}, {args.runs} runs)")
    print(f"memory-zoo --help takes {report['ratio_help_to_import_torch']:.2f}x the time of `import torch` "
          f"(python -m memory_zoo.cli --help: {report['ratio_package_help_to_help']:.1f}x memory-zoo --help); "
          f"written to {args.output}")


if __name__ == "__main__":
    main()
