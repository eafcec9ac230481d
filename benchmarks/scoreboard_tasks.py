"""Scoreboard, in-context memory part: synthetic tasks that measure what memory architectures are for.

Every architecture is trained briefly from random weights at a matched non-embedding parameter budget
(`scoreboard_models.build`), with the same steps, batch size, learning rate and data seeds, on tasks generated on
the fly from a seed (nothing is downloaded):

* `mqar` (multi-query associative recall, Arora et al., "Zoology"): `N` key-value pairs `k1 v1 ... kN vN`, then the
  `N` keys queried again in random order at random 2-token slots of the rest of the sequence (gaps are padding),
  each followed by its value. The target of a query key is its value; only those positions carry a label. One model
  per sequence length is trained on a mixture of the pair counts that fit (`4 N <= length`, batches cycle through
  them) and evaluated per pair count, as Zoology does.
* `copy`: a random span of `(length - 1) // 2` tokens, a separator, then the span again; the copied half is scored.
* `reconstruction` (autoencoders only): a random window of `length` tokens is encoded to one vector and decoded;
  token accuracy of the reconstruction.

Causal LMs run `mqar` and `copy` (`reconstruction` is n/a); autoencoders run `reconstruction` (the others are n/a).
Accuracy is the fraction of scored positions whose argmax is right, computed from the logits (causal models:
position `t` predicts token `t + 1`). Training uses the same loss for every causal LM, cross-entropy of the shifted
logits on the labelled positions only. For the variable-memory models this is not their research per-chunk loss
(which never trains a chunk's last position to predict the next chunk's first token): here every labelled position
is trained and scored, whichever chunk it falls in, so no target is lost at chunk boundaries.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine_info  # noqa: E402
from scoreboard_models import AUTOENCODERS, CONFIGS, build, width_for  # noqa: E402

from memory_zoo.metrics import IGNORE_INDEX  # noqa: E402

TASKS = ("mqar", "copy", "reconstruction")
PAD, SEP = 0, 1  # special tokens; data tokens are 2 .. vocab - 1
FIRST_DATA_TOKEN = 2

# Scales: flags given explicitly win over these (their argparse defaults are None).
SCALES = {
    "quick": {"params": 200_000, "steps": 10, "lengths": [32], "pairs": [2, 4], "batch_size": 8, "eval_size": 16,
              "vocab": 64, "lr": 2e-3},
    "default": {"params": 1_000_000, "steps": 200, "lengths": [32, 64], "pairs": [2, 4, 8], "batch_size": 16,
                "eval_size": 128, "vocab": 64, "lr": 2e-3},
    "full": {"params": 4_000_000, "steps": 2000, "lengths": [64, 128, 256, 512], "pairs": [4, 8, 16, 32, 64],
             "batch_size": 32, "eval_size": 512, "vocab": 256, "lr": 1e-3},
}


# ----------------------------------------------------------------------------------------------------------------
# Task generators: plain seeded functions returning (input_ids, labels), labels aligned with input_ids as in
# transformers (labels[t] is the token at t, predicted from position t - 1 by a causal LM), -100 where not scored.
# ----------------------------------------------------------------------------------------------------------------


def _generator(generator: torch.Generator | int | None) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(0 if generator is None else int(generator))
    return g


def mqar_batch(batch: int, length: int, num_pairs: int, vocab: int,
               generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-query associative recall rows `[batch, length]`.

    Keys are tokens `2 .. 2 + K - 1` and values the next `K` tokens (`K = (vocab - 2) // 2`). A row holds
    `num_pairs` pairs with distinct keys (values drawn with replacement), then every key once more, in random
    order, at random 2-token slots of the remaining `length - 2 * num_pairs` positions, each followed by its value;
    other positions are `PAD`. Labels are the values after the query keys, `-100` elsewhere. Needs
    `4 * num_pairs <= length` and `num_pairs <= K`.
    """
    keys_available = (vocab - FIRST_DATA_TOKEN) // 2
    if num_pairs < 1 or num_pairs > keys_available:
        raise ValueError(f"num_pairs must be in 1..{keys_available} for vocab {vocab}, got {num_pairs}.")
    if 4 * num_pairs > length:
        raise ValueError(f"MQAR with {num_pairs} pairs needs length >= {4 * num_pairs} (pairs, then one 2-token "
                         f"query slot per key), got {length}.")
    g = _generator(generator)
    rows = torch.arange(batch)[:, None]
    keys = torch.rand(batch, keys_available, generator=g).argsort(dim=1)[:, :num_pairs] + FIRST_DATA_TOKEN
    values = torch.randint(0, keys_available, (batch, num_pairs), generator=g) + FIRST_DATA_TOKEN + keys_available
    input_ids = torch.full((batch, length), PAD, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    input_ids[:, 0:2 * num_pairs:2] = keys
    input_ids[:, 1:2 * num_pairs:2] = values
    slots = (length - 2 * num_pairs) // 2
    order = torch.rand(batch, num_pairs, generator=g).argsort(dim=1)  # which pair each query asks for
    where = torch.rand(batch, slots, generator=g).argsort(dim=1)[:, :num_pairs]  # which slot it goes to
    positions = 2 * num_pairs + 2 * where
    input_ids[rows, positions] = keys.gather(1, order)
    input_ids[rows, positions + 1] = values.gather(1, order)
    labels[rows, positions + 1] = values.gather(1, order)
    return input_ids, labels


def copy_batch(batch: int, length: int, vocab: int,
               generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Span-copy rows `[batch, length]`: a random span of `S = (length - 1) // 2` data tokens, `SEP`, the span again
    (then `PAD` if `length` is even). Labels are the copied span (positions `S + 1 .. 2 S`), `-100` elsewhere."""
    span = (length - 1) // 2
    if span < 1:
        raise ValueError(f"The copy task needs length >= 3, got {length}.")
    g = _generator(generator)
    tokens = torch.randint(FIRST_DATA_TOKEN, vocab, (batch, span), generator=g)
    input_ids = torch.full((batch, length), PAD, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    input_ids[:, :span] = tokens
    input_ids[:, span] = SEP
    input_ids[:, span + 1:2 * span + 1] = tokens
    labels[:, span + 1:2 * span + 1] = tokens
    return input_ids, labels


def reconstruction_batch(batch: int, length: int, vocab: int,
                         generator: torch.Generator | int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows `[batch, length]` of data tokens; labels are the windows themselves (every position scored,
    unshifted: an autoencoder reconstructs token `t` at position `t`)."""
    g = _generator(generator)
    input_ids = torch.randint(FIRST_DATA_TOKEN, vocab, (batch, length), generator=g)
    return input_ids, input_ids.clone()


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------


def _logits(model, input_ids: torch.Tensor, causal: bool) -> torch.Tensor:
    kwargs = {"use_cache": False} if causal else {}
    return model(input_ids=input_ids, **kwargs).logits.float()


def _aligned(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return (logits[:, :-1], labels[:, 1:]) if causal else (logits, labels)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """Cross-entropy on the labelled positions: shifted for causal LMs, same-position for autoencoders."""
    logits, labels = _aligned(logits, labels, causal)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX)


def accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, causal: bool) -> tuple[int, int]:
    """(correct, scored): argmax predictions on the labelled positions."""
    logits, labels = _aligned(logits, labels, causal)
    valid = labels != IGNORE_INDEX
    return int(((logits.argmax(-1) == labels) & valid).sum()), int(valid.sum())


def _evaluate(model, batches: list[tuple[torch.Tensor, torch.Tensor]], causal: bool) -> dict:
    was_training = model.training
    model.eval()
    correct = scored = 0
    nats = 0.0
    with torch.no_grad():
        for input_ids, labels in batches:
            logits = _logits(model, input_ids, causal)
            hits, count = accuracy_counts(logits, labels, causal)
            correct, scored = correct + hits, scored + count
            nats += task_loss(logits, labels, causal).item() * count
    model.train(was_training)
    return {"accuracy": correct / scored if scored else math.nan, "loss": nats / scored if scored else math.nan,
            "scored": scored}


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of `lr`."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _make_batch(task: str, batch: int, length: int, vocab: int, g: torch.Generator, pairs: int | None):
    if task == "mqar":
        return mqar_batch(batch, length, pairs, vocab, g)
    if task == "copy":
        return copy_batch(batch, length, vocab, g)
    return reconstruction_batch(batch, length, vocab, g)


def _cell_seed(seed: int, task: str, length: int, salt: int = 0) -> int:
    """Data seed of one (task, length): the same for every architecture."""
    return seed * 1_000_003 + TASKS.index(task) * 10_007 + length * 101 + salt


def train_and_evaluate(model_type: str, task: str, length: int, cfg: dict, seed: int, hidden: int | None = None,
                       pairs: list[int] | None = None) -> dict:
    """Train one random model of `model_type` built for `length` tokens on `task`, then evaluate it.

    Returns `accuracy` (for `mqar`: a dict pair count -> accuracy), `final_train_loss`, `seconds`, `parameters`.
    """
    causal = model_type not in AUTOENCODERS
    model, info = build(model_type, cfg["params"], length, cfg["vocab"], seed=seed, hidden=hidden)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.0)
    g = _generator(_cell_seed(seed, task, length))
    started = time.perf_counter()
    losses = []
    for step in range(cfg["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg["steps"], cfg["lr"])
        n = pairs[step % len(pairs)] if task == "mqar" else None
        input_ids, labels = _make_batch(task, cfg["batch_size"], length, cfg["vocab"], g, n)
        loss = task_loss(_logits(model, input_ids, causal), labels, causal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    train_seconds = time.perf_counter() - started
    eval_g = _generator(_cell_seed(seed, task, length, salt=7))  # held-out rows, same for every architecture
    eval_batch = min(cfg["batch_size"] * 2, cfg["eval_size"])
    n_batches = max(1, cfg["eval_size"] // eval_batch)
    record = {"final_train_loss": sum(losses[-10:]) / max(1, len(losses[-10:])), "train_seconds": train_seconds,
              "hidden": info["hidden"], "layers": info["layers"], "parameters": info["parameters"]}
    if task == "mqar":
        record["accuracy"] = {}
        record["eval_loss"] = {}
        for n in pairs:
            result = _evaluate(model, [mqar_batch(eval_batch, length, n, cfg["vocab"], eval_g)
                                       for _ in range(n_batches)], causal)
            record["accuracy"][str(n)], record["eval_loss"][str(n)] = result["accuracy"], result["loss"]
    else:
        result = _evaluate(model, [_make_batch(task, eval_batch, length, cfg["vocab"], eval_g, None)
                                   for _ in range(n_batches)], causal)
        record["accuracy"], record["eval_loss"], record["scored"] = result["accuracy"], result["loss"], result["scored"]
    record["seconds"] = time.perf_counter() - started
    return record


# ----------------------------------------------------------------------------------------------------------------
# Scoreboard interface: add_arguments / run / report / plot
# ----------------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the in-context memory tasks (unset ones take the --quick / default / --full scale)."""
    group = parser.add_argument_group("in-context memory tasks (scoreboard_tasks)")
    group.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS),
                       help="tasks to run (default: all; causal LMs run mqar/copy, autoencoders reconstruction)")
    group.add_argument("--task-params", type=int, default=None,
                       help="non-embedding parameter budget per model (default 1M; quick 200K; full 4M)")
    group.add_argument("--task-steps", type=int, default=None, help="training steps per model (default 200)")
    group.add_argument("--task-lengths", type=int, nargs="+", default=None,
                       help="sequence / window lengths; one model per length (default 32 64)")
    group.add_argument("--task-pairs", type=int, nargs="+", default=None,
                       help="MQAR key-value pair counts; those with 4*N <= length are used (default 2 4 8)")
    group.add_argument("--task-batch-size", type=int, default=None, help="training batch size (default 16)")
    group.add_argument("--task-lr", type=float, default=None, help="peak AdamW learning rate (default 2e-3)")
    group.add_argument("--task-vocab", type=int, default=None,
                       help="vocabulary: 2 specials, then MQAR keys and values split evenly (default 64)")
    group.add_argument("--task-eval-size", type=int, default=None, help="held-out rows per evaluation (default 128)")
    group.add_argument("--task-threads", type=int, default=None,
                       help="torch.set_num_threads for the task runs (default: leave torch's setting)")


def resolve_config(args) -> dict:
    """The scale (--quick / default / --full) with the explicit --task-* flags applied."""
    scale = "quick" if getattr(args, "quick", False) else "full" if getattr(args, "full", False) else "default"
    cfg = dict(SCALES[scale], scale=scale)
    for key in ("params", "steps", "lengths", "pairs", "batch_size", "lr", "vocab", "eval_size"):
        value = getattr(args, f"task_{key}", None)
        if value is not None:
            cfg[key] = list(value) if isinstance(value, (list, tuple)) else value
    cfg["tasks"] = list(getattr(args, "tasks", None) or TASKS)
    cfg["seed"] = int(getattr(args, "seed", 0) or 0)
    cfg["threads"] = getattr(args, "task_threads", None)
    return cfg


def applicable(model_type: str, task: str) -> bool:
    return (task == "reconstruction") == (model_type in AUTOENCODERS)


def run(args, architectures: list[str]) -> dict:
    """Train and evaluate every architecture on every task and length; JSON-serialisable results."""
    cfg = resolve_config(args)
    unknown = [a for a in architectures if a not in CONFIGS]
    if unknown:
        raise ValueError(f"Unknown architectures {unknown}; known: {sorted(CONFIGS)}.")
    keys_available = (cfg["vocab"] - FIRST_DATA_TOKEN) // 2
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    cfg["threads"] = torch.get_num_threads()
    cells = []
    started = time.perf_counter()
    for model_type in architectures:
        # The budget is matched at the longest task length: a fixed-context mixer's L x L matrices are part of its
        # parameters, and matching them at a longer reference context would starve it of width here.
        hidden = width_for(model_type, cfg["params"], cfg["vocab"], max(cfg["lengths"]))
        for task in cfg["tasks"]:
            for length in cfg["lengths"]:
                cell = {"architecture": model_type, "task": task, "length": length}
                if not applicable(model_type, task):
                    cells.append(dict(cell, status="n/a"))
                    continue
                pairs = None
                if task == "mqar":
                    pairs = [n for n in cfg["pairs"] if 4 * n <= length and n <= keys_available]
                    if not pairs:
                        cells.append(dict(cell, status="skipped", reason=f"no pair count fits length {length}"))
                        continue
                    cell["pairs"] = pairs
                try:
                    cell.update(train_and_evaluate(model_type, task, length, cfg, cfg["seed"], hidden, pairs))
                    cell["status"] = "ok"
                except Exception as error:  # one failing architecture must not sink the scoreboard
                    cell.update(status="error", reason=f"{type(error).__name__}: {error}")
                cells.append(cell)
                if cell["status"] == "ok":
                    acc = cell["accuracy"]
                    shown = " ".join(f"{v:.2f}" for v in acc.values()) if isinstance(acc, dict) else f"{acc:.2f}"
                    print(f"[tasks] {model_type:28s} {task:14s} L={length:<4d} acc {shown}  "
                          f"({cell['seconds']:.1f}s)", flush=True)
                else:
                    print(f"[tasks] {model_type:28s} {task:14s} L={length:<4d} {cell['status']} "
                          f"{cell.get('reason', '')}", flush=True)
    chance = {"mqar": 1 / keys_available, "copy": 1 / (cfg["vocab"] - FIRST_DATA_TOKEN),
              "reconstruction": 1 / (cfg["vocab"] - FIRST_DATA_TOKEN)}
    return {"config": cfg, "machine": machine_info("cpu"), "chance": chance, "architectures": list(architectures),
            "cells": cells,
            "wall_seconds": time.perf_counter() - started}


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths, strict=True)))
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _columns(results: dict, task: str) -> list[tuple[int, int | None]]:
    cfg = results["config"]
    if task != "mqar":
        return [(length, None) for length in cfg["lengths"]]
    columns = []
    for length in cfg["lengths"]:
        for cell in results["cells"]:
            if cell["task"] == "mqar" and cell["length"] == length and cell.get("pairs"):
                columns.extend((length, n) for n in cell["pairs"])
                break
    return columns


def _value(results: dict, model_type: str, task: str, length: int, pairs: int | None) -> str:
    for cell in results["cells"]:
        if cell["architecture"] == model_type and cell["task"] == task and cell["length"] == length:
            if cell["status"] != "ok":
                return cell["status"]
            acc = cell["accuracy"]
            return _fmt(acc.get(str(pairs)) if isinstance(acc, dict) else acc)
    return "-"


def report(results: dict) -> str:
    """Plain-text tables: accuracy per architecture x task x length (and MQAR pair count)."""
    cfg = results["config"]
    out = [f"In-context memory tasks ({cfg['scale']} scale): {cfg['steps']} steps, batch {cfg['batch_size']}, "
           f"lr {cfg['lr']}, budget {cfg['params']:,} non-embedding parameters, vocabulary {cfg['vocab']}, "
           f"seed {cfg['seed']}; wall time {results.get('wall_seconds', 0):.0f} s. Accuracy on held-out rows "
           f"(argmax of the scored positions); n/a: task not defined for the architecture."]
    titles = {"mqar": "MQAR accuracy (L = sequence length, N = key-value pairs; chance {:.3f})",
              "copy": "Span copy accuracy on the copied half (L = sequence length; chance {:.3f})",
              "reconstruction": "Autoencoder reconstruction token accuracy (L = window length; chance {:.3f})"}
    for task in cfg["tasks"]:
        columns = _columns(results, task)
        if not columns:
            continue
        header = ["architecture", "params"] + [f"L={length}" + (f" N={n}" if n else "") for length, n in columns]
        rows = []
        for model_type in results["architectures"]:
            params = next((c["parameters"]["non_embedding"] for c in results["cells"]
                           if c["architecture"] == model_type and c["task"] == task and c["status"] == "ok"
                           and c["length"] == columns[0][0]), None)
            rows.append([model_type, f"{params / 1e6:.2f}M" if params else "-"]
                        + [_value(results, model_type, task, length, n) for length, n in columns])
        out += ["", titles[task].format(results["chance"][task]), _table(header, rows)]
    return "\n".join(out)


def plot(results: dict, out_dir: Path) -> list[Path]:
    """One PNG: MQAR accuracy vs pair count (a panel per length), copy and reconstruction accuracy vs length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = results["config"]
    ok = [c for c in results["cells"] if c["status"] == "ok"]
    panels = [("mqar", length) for length in cfg["lengths"] if any(c["task"] == "mqar" and c["length"] == length
                                                                  for c in ok)]
    panels += [(task, None) for task in ("copy", "reconstruction") if any(c["task"] == task for c in ok)]
    if not panels:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (task, length) in zip(axes[0], panels, strict=True):
        for index, model_type in enumerate(results["architectures"]):
            if task == "mqar":
                cell = next((c for c in ok if c["architecture"] == model_type and c["task"] == "mqar"
                             and c["length"] == length), None)
                if cell is None:
                    continue
                xs = [int(n) for n in cell["accuracy"]]
                ys = [cell["accuracy"][str(n)] for n in xs]
            else:
                mine = sorted((c["length"], c["accuracy"]) for c in ok
                              if c["architecture"] == model_type and c["task"] == task)
                if not mine:
                    continue
                xs, ys = zip(*mine, strict=True)
            ax.plot(xs, ys, marker="o", label=model_type, color=f"C{index % 10}")
        ax.axhline(results["chance"][task], color="gray", linestyle=":", linewidth=1, label="chance")
        if task == "mqar":
            ax.set(title=f"MQAR, length {length}", xlabel="key-value pairs", xscale="log")
            ax.set_xticks(sorted({int(n) for c in ok if c["task"] == "mqar" for n in c["accuracy"]}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        else:
            ax.set(title="span copy" if task == "copy" else "reconstruction (autoencoders)",
                   xlabel="sequence length" if task == "copy" else "window length", xscale="log")
            ax.set_xticks(cfg["lengths"])
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8)
    fig.suptitle(f"In-context memory tasks: {cfg['steps']} steps, {cfg['params'] / 1e6:g}M non-embedding "
                 f"parameters ({cfg['scale']} scale)")
    fig.tight_layout(rect=(0, 0.1 + 0.04 * (len(labels) // 5), 1, 1))
    path = out_dir / "tasks_accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return [path]


def main(argv: list[str] | None = None) -> None:  # standalone use; the scoreboard entry point calls run/report/plot
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--architectures", nargs="+", default=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--full", action="store_true")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).parent / "results" / "scoreboard")
    add_arguments(parser)
    args = parser.parse_args(argv)
    results = run(args, args.architectures)
    print(report(results))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "tasks.json").write_text(json.dumps(results, indent=1))
    print("wrote", args.output_dir / "tasks.json", *plot(results, args.output_dir))


if __name__ == "__main__":
    main()


__all__ = ["SCALES", "TASKS", "add_arguments", "copy_batch", "mqar_batch", "plot", "reconstruction_batch", "report",
           "resolve_config", "run", "task_loss", "train_and_evaluate"]
