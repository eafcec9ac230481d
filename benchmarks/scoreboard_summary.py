"""The scoreboard in one table, every architecture next to the matched Llama: what README.md and docs/benchmarks.md
show between their `<!-- scoreboard -->` markers.

    python benchmarks/scoreboard_summary.py                  # print the table of the committed scoreboard.json
    python benchmarks/scoreboard_summary.py --write          # rewrite the marked blocks of README.md and the docs

`benchmarks/scoreboard.py` writes the blocks itself after a default-scale run (`--write-summary`); a test checks that
the committed blocks are this table of the committed `results/scoreboard/scoreboard.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scoreboard" / "scoreboard.json"
DOCUMENTS = (ROOT / "README.md", ROOT / "docs" / "benchmarks.md")
BEGIN, END = "<!-- scoreboard -->\n", "<!-- /scoreboard -->"
YARDSTICK = "llama"  # as scoreboard_models.YARDSTICK; not imported, so that this file runs without torch


def _ok(cells: list[dict], **where) -> dict | None:
    for cell in cells:
        if cell.get("status") == "ok" and all(cell.get(k) == v for k, v in where.items()):
            return cell
    return None


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f} MiB"


def _times(value: float | None) -> str:
    return "" if value is None else f" (×{value:.2f})"


def summary_table(report: dict) -> str:
    """Markdown: per architecture, training and decoding speed, cache size (each also as a ratio to the matched
    Llama) and the in-context recall and copy accuracies, at the largest budget, context and task length run."""
    efficiency, tasks = report.get("efficiency") or {}, report.get("tasks") or {}
    cells = efficiency.get("cells", [])
    settings = efficiency.get("settings", {})
    budget = settings.get("budgets", ["?"])[0]
    train_context = max(settings.get("train_contexts", [0]))
    generate_context = max(settings.get("generate_contexts", [0]))
    ratios = efficiency.get("ratios", {}).get(budget, {})
    task_cells = tasks.get("cells", [])
    length = max(tasks.get("config", {}).get("lengths", [0]))
    architectures = list(dict.fromkeys(report["settings"]["architectures"]))
    lines = [
        f"| architecture | train tok/s @{train_context} | decode tok/s @{generate_context} | "
        f"cache / sequence @{generate_context} | MQAR L={length}, most pairs | copy L={length} |",
        "|---|---|---|---|---|---|",
    ]
    for architecture in architectures:
        mine = [c for c in cells if c["architecture"] == architecture and c["budget"] == budget]
        ratio = ratios.get(architecture, {})
        train = _ok(mine, kind="train", context=train_context)
        train_text = "–" if train is None else (
            f"{train['tokens_per_s']:.0f}{_times(ratio.get('train_tokens_per_s', {}).get(str(train_context)))}")
        generate = _ok(mine, kind="generate", context=generate_context)
        autoencode = _ok(mine, kind="autoencode", context=generate_context)
        if generate is not None:
            decode = generate.get("decode_tokens_per_s")
            decode_text = "–" if decode is None else (
                f"{decode:.0f}{_times(ratio.get('decode_tokens_per_s', {}).get(str(generate_context)))}")
            cache_text = _mib(generate.get("cache_bytes_per_sequence")) + _times(
                ratio.get("cache_bytes_per_sequence", {}).get(str(generate_context)))
        elif autoencode is not None:
            decode_text, cache_text = f"encode+decode {autoencode['tokens_per_s']:.0f}", "–"
        else:
            decode_text = cache_text = "–"
        mqar = _ok(task_cells, architecture=architecture, task="mqar", length=length)
        if mqar is not None:
            pairs = max(mqar["accuracy"], key=int)
            mqar_text = f"{mqar['accuracy'][pairs]:.2f} (N={pairs})"
        else:
            reconstruction = _ok(task_cells, architecture=architecture, task="reconstruction", length=length)
            mqar_text = "–" if reconstruction is None else f"reconstruction {reconstruction['accuracy']:.2f}"
        copy = _ok(task_cells, architecture=architecture, task="copy", length=length)
        copy_text = "–" if copy is None else f"{copy['accuracy']:.2f}"
        name = f"**{architecture}** (yardstick)" if architecture == YARDSTICK else architecture
        lines.append(f"| {name} | {train_text} | {decode_text} | {cache_text} | {mqar_text} | {copy_text} |")
    machine = report.get("machine", {})
    lines.append("")
    lines.append(
        f"Budget {budget} non-embedding parameters (widths matched per architecture), {machine.get('cpu_count', '?')} "
        f"CPU cores, torch {machine.get('torch', '?')}, transformers {machine.get('transformers', '?')}; (×r) is the "
        f"ratio to the matched `LlamaForCausalLM` measured in the same run. Task models: "
        f"{tasks.get('config', {}).get('params', '?'):,} parameters, {tasks.get('config', {}).get('steps', '?')} "
        f"steps. Every cell: `benchmarks/results/scoreboard/scoreboard.json`."
    )
    return "\n".join(lines) + "\n"


def replace_block(text: str, table: str, path: Path) -> str:
    """`text` with its marked block replaced by `table`; a document without the markers is an error."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"{path} has no {BEGIN.strip()} ... {END} block to write the scoreboard into.")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + table + END + rest.split(END, 1)[1]


def write(report: dict, documents: tuple[Path, ...] = DOCUMENTS) -> list[Path]:
    """Rewrite the marked block of every document with the table of `report`."""
    table = summary_table(report)
    for path in documents:
        path.write_text(replace_block(path.read_text(), table, path))
    return list(documents)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="a scoreboard.json (default: the committed)")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks of README.md and docs/benchmarks.md")
    args = parser.parse_args(argv)
    report = json.loads(args.results.read_text())
    if args.write:
        for path in write(report):
            print(f"wrote the scoreboard block of {path}")
    else:
        print(summary_table(report), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
