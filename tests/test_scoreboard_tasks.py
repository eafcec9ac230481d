"""The scoreboard's in-context memory tasks: generators, and run/report/plot at smoke scale."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scoreboard_tasks as tasks  # noqa: E402

VOCAB = 64
KEYS = (VOCAB - tasks.FIRST_DATA_TOKEN) // 2


def test_mqar_batch_shapes_labels_and_values():
    input_ids, labels = tasks.mqar_batch(8, 40, 5, VOCAB, generator=3)
    assert input_ids.shape == labels.shape == (8, 40)
    assert input_ids.dtype == labels.dtype == torch.long
    for row, target in zip(input_ids.tolist(), labels.tolist(), strict=True):
        keys, values = row[0:10:2], row[1:10:2]
        assert len(set(keys)) == 5
        assert all(tasks.FIRST_DATA_TOKEN <= k < tasks.FIRST_DATA_TOKEN + KEYS for k in keys)
        assert all(tasks.FIRST_DATA_TOKEN + KEYS <= v < VOCAB for v in values)
        assert all(t == -100 for t in target[:10])  # nothing scored inside the pairs
        scored = [t for t, y in enumerate(target) if y != -100]
        assert len(scored) == 5  # every key queried once
        queried = []
        for t in scored:
            key = row[t - 1]  # the query key precedes its value, which is the label (predicted from position t - 1)
            assert key in keys and target[t] == row[t] == values[keys.index(key)]
            queried.append(key)
        assert sorted(queried) == sorted(keys)
        others = set(range(10, 40)) - set(scored) - {t - 1 for t in scored}
        assert all(row[t] == tasks.PAD for t in others)


def test_mqar_batch_is_deterministic_by_seed_and_validates():
    a = tasks.mqar_batch(4, 32, 4, VOCAB, generator=1)
    b = tasks.mqar_batch(4, 32, 4, VOCAB, generator=1)
    c = tasks.mqar_batch(4, 32, 4, VOCAB, generator=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    with pytest.raises(ValueError, match="needs length"):
        tasks.mqar_batch(2, 15, 4, VOCAB)
    with pytest.raises(ValueError, match="num_pairs"):
        tasks.mqar_batch(2, 1024, KEYS + 1, VOCAB)


def test_copy_batch():
    input_ids, labels = tasks.copy_batch(3, 12, VOCAB, generator=0)
    span = (12 - 1) // 2
    assert input_ids.shape == labels.shape == (3, 12)
    assert torch.equal(input_ids[:, span + 1:2 * span + 1], input_ids[:, :span])
    assert (input_ids[:, span] == tasks.SEP).all() and (input_ids[:, 2 * span + 1:] == tasks.PAD).all()
    assert (input_ids[:, :span] >= tasks.FIRST_DATA_TOKEN).all()
    assert torch.equal(labels[:, span + 1:2 * span + 1], input_ids[:, :span])
    assert (labels[:, :span + 1] == -100).all() and (labels[:, 2 * span + 1:] == -100).all()
    assert torch.equal(tasks.copy_batch(3, 12, VOCAB, generator=0)[0], input_ids)
    assert not torch.equal(tasks.copy_batch(3, 12, VOCAB, generator=1)[0], input_ids)


def test_reconstruction_batch():
    input_ids, labels = tasks.reconstruction_batch(2, 16, VOCAB, generator=0)
    assert input_ids.shape == (2, 16) and torch.equal(input_ids, labels)
    assert ((input_ids >= tasks.FIRST_DATA_TOKEN) & (input_ids < VOCAB)).all()
    assert torch.equal(tasks.reconstruction_batch(2, 16, VOCAB, generator=0)[0], input_ids)


def test_accuracy_alignment():
    """Causal: logits at t are scored against labels at t + 1; autoencoders: same position."""
    labels = torch.tensor([[-100, -100, 5, 7]])
    logits = torch.zeros(1, 4, 10)
    logits[0, 1, 5] = logits[0, 2, 3] = 1.0  # right at t=1 (-> label 5), wrong at t=2 (label 7)
    assert tasks.accuracy_counts(logits, labels, causal=True) == (1, 2)
    logits = torch.zeros(1, 4, 10)
    logits[0, 2, 5] = logits[0, 3, 7] = 1.0
    assert tasks.accuracy_counts(logits, labels, causal=False) == (2, 2)


def test_run_report_plot_quick(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true")
    tasks.add_arguments(parser)
    args = parser.parse_args(["--quick", "--task-steps", "3", "--task-eval-size", "8"])
    results = tasks.run(args, ["lswt", "mixer_autoencoder", "llama", "mamba"])  # with the two yardsticks
    results = json.loads(json.dumps(results))  # JSON-serialisable
    assert results["config"]["scale"] == "quick" and results["config"]["steps"] == 3
    cells = {(c["architecture"], c["task"], c["length"]): c for c in results["cells"]}
    assert len(cells) == 4 * len(tasks.TASKS)  # one quick length
    assert cells[("lswt", "reconstruction", 32)]["status"] == "n/a"
    assert cells[("mixer_autoencoder", "mqar", 32)]["status"] == "n/a"
    assert cells[("mixer_autoencoder", "copy", 32)]["status"] == "n/a"
    mqar = cells[("lswt", "mqar", 32)]
    assert mqar["status"] == "ok" and set(mqar["accuracy"]) == {"2", "4"}
    assert all(0 <= a <= 1 for a in mqar["accuracy"].values())
    for yardstick in ("llama", "mamba"):
        assert cells[(yardstick, "mqar", 32)]["status"] == "ok"
        assert cells[(yardstick, "reconstruction", 32)]["status"] == "n/a"
    for key in (("lswt", "copy", 32), ("mixer_autoencoder", "reconstruction", 32), ("llama", "copy", 32),
                ("mamba", "copy", 32)):
        assert cells[key]["status"] == "ok" and 0 <= cells[key]["accuracy"] <= 1
        assert cells[key]["parameters"]["non_embedding"] > 0
    text = tasks.report(results)
    assert "MQAR" in text and "L=32 N=4" in text and "n/a" in text and "reconstruction" in text
    paths = tasks.plot(results, tmp_path)
    assert paths and all(p.exists() and p.stat().st_size > 0 for p in paths)


def test_variable_memory_model_scores_targets_across_chunks():
    """The variable-memory transformer (4 chunks) trains and is scored on copy targets in every chunk."""
    cfg = dict(tasks.SCALES["quick"], steps=2, eval_size=4, batch_size=4)
    record = tasks.train_and_evaluate("variable_memory_transformer", "copy", 16, cfg, seed=0)
    # 7 copied tokens per row (positions 8..14) span the last two 4-token chunks, chunk starts included.
    assert record["scored"] == 4 * 7 and 0 <= record["accuracy"] <= 1 and record["eval_loss"] > 0
