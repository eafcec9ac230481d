"""Perplexity evaluation (`memory_zoo.evaluation`, `memory-zoo eval`) against hand computations."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import TEXT, tiny_lswt, tiny_model, train_tokenizer
from test_integration import AUTOENCODER_BUILDERS

from memory_zoo import ARCHITECTURES, MemoryMixerConfig
from memory_zoo.cli import main
from memory_zoo.evaluation import (
    evaluate_dataset,
    evaluate_file,
    load_texts,
    model_context,
    perplexity,
    perplexity_of_ids,
    sliding_windows,
)
from memory_zoo.metrics import reconstruction_metrics

IDS = torch.randint(3, 300, (50,), generator=torch.Generator().manual_seed(0))


def next_token_nats(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of tokens 1.. of `window` given the tokens before them in the window."""
    with torch.no_grad():
        logits = model(input_ids=window[None], use_cache=False).logits[0]
    return F.cross_entropy(logits[:-1], window[1:], reduction="none")


@pytest.mark.parametrize(("num_tokens", "context", "stride"), [(50, 24, 24), (50, 24, 8), (50, 24, 23), (7, 24, 5),
                                                               (49, 24, 24), (100, 10, 1)])
def test_sliding_windows_score_every_token_once_with_the_most_context(num_tokens, context, stride):
    windows = sliding_windows(num_tokens, context, stride)
    scored = [t for w in windows for t in range(w.score_from, w.end)]
    assert len(scored) == len(set(scored))
    for w in windows:
        assert w.end - w.begin <= context and w.begin < w.score_from < w.end + 1
    if stride < context:
        assert scored == list(range(1, num_tokens))
    else:  # no overlap: the first token of every window has nothing before it
        assert set(scored) == set(range(num_tokens)) - set(range(0, num_tokens, context))
    for token in scored:  # scored in the earliest window that can predict it: the one with the most context before it
        begin = next(w.begin for w in windows if w.score_from <= token < w.end)
        assert begin == min(b for b in range(0, num_tokens, stride) if b < token < b + context)


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_windows(10, 1, 1)
    with pytest.raises(ValueError, match="stride must be between 1 and context"):
        sliding_windows(10, 4, 5)


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_non_overlapping_windows_match_a_hand_computation(batch_size):
    model = tiny_model()  # context 24
    result = perplexity_of_ids(model, IDS, batch_size=batch_size)
    nats = torch.cat([next_token_nats(model, IDS[begin:begin + 24]) for begin in (0, 24, 48)])
    assert nats.numel() == 47 == result["tokens"]
    assert (result["windows"], result["context"], result["stride"], result["text_tokens"]) == (3, 24, 24, 50)
    assert result["loss_nats"] == pytest.approx(nats.mean().item(), rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(nats.mean().item()), rel=1e-6)
    assert result["bits_per_token"] == pytest.approx(nats.mean().item() / math.log(2), rel=1e-6)


def test_strided_windows_score_each_token_once_with_the_most_context():
    model = tiny_model()
    context, stride = 24, 8
    expected = []
    for token in range(1, len(IDS)):  # the earliest window start that still sees `token` inside the context
        begin = min(b for b in range(0, len(IDS), stride) if b < token < b + context)
        expected.append(next_token_nats(model, IDS[begin:token + 1])[-1])
    result = perplexity_of_ids(model, IDS, context=context, stride=stride, batch_size=3)
    assert result["tokens"] == len(IDS) - 1
    assert result["loss_nats"] == pytest.approx(torch.stack(expected).mean().item(), rel=1e-6)
    # Overlap really changes what is computed (it is not the non-overlapping loss under another name).
    assert result["loss_nats"] != pytest.approx(perplexity_of_ids(model, IDS)["loss_nats"], rel=1e-6)


@pytest.mark.parametrize("model_type", [c.model_type for c, _, causal in ARCHITECTURES if causal is not None])
def test_every_causal_architecture_matches_the_hand_computation(model_type):
    from test_integration import BUILDERS

    torch.manual_seed(0)
    model = BUILDERS[model_type]().eval()
    context = model_context(model.config) or 16  # a previous_chunk memory mixer has no fixed context
    context = min(context, 24)
    result = perplexity_of_ids(model, IDS, context=context, stride=context, batch_size=2)
    nats = torch.cat([next_token_nats(model, IDS[begin:begin + context]) for begin in range(0, len(IDS), context)])
    assert result["tokens"] == nats.numel()
    assert result["loss_nats"] == pytest.approx(nats.mean().item(), rel=1e-5)


def test_memory_model_and_text_entry_point(tokenizer):
    from test_integration import BUILDERS

    model = BUILDERS["variable_memory_mixer"]().eval()  # context num_chunks * chunk_length = 24
    ids = tokenizer(TEXT[:400])["input_ids"]
    result = perplexity(model, tokenizer, TEXT[:400], stride=16)
    batched = perplexity_of_ids(model, ids, stride=16, batch_size=3)
    assert result["loss_nats"] == pytest.approx(batched["loss_nats"], rel=1e-6)
    assert result["context"] == 24 and result["tokens"] == batched["tokens"] == len(ids) - 1


def test_autoencoder_reconstruction_over_windows():
    model = AUTOENCODER_BUILDERS["mixer_autoencoder"]().eval()  # window_length 24
    result = perplexity_of_ids(model, IDS, batch_size=2)
    full = reconstruction_metrics(model, IDS[:48].view(2, 24), labels=IDS[:48].view(2, 24))
    last = reconstruction_metrics(model, IDS[None, 48:], labels=IDS[None, 48:])
    loss = (full["loss_nats"] * 48 + last["loss_nats"] * 2) / 50
    assert (result["kind"], result["tokens"], result["windows"], result["context"]) == ("reconstruction", 50, 3, 24)
    assert result["loss_nats"] == pytest.approx(loss, rel=1e-6)
    assert result["bits_per_token"] == pytest.approx(loss / math.log(2), rel=1e-6)
    assert result["token_accuracy"] == pytest.approx((full["token_accuracy"] * 48 + last["token_accuracy"] * 2) / 50)
    assert result["compression_ratio"] == 24 / 16  # window_length / memory_size
    with pytest.raises(ValueError, match="do not overlap"):
        perplexity_of_ids(model, IDS, stride=8)
    with pytest.raises(ValueError, match="window_length = 24"):
        perplexity_of_ids(model, IDS, context=32)


def test_model_context_of_every_architecture():
    expected = {"masked_mixer": 512, "memory_mosaics": 512, "memory_layers": 1024, "lswt": None,
                "mixer_autoencoder": 512, "variable_memory_mixer": 1024, "memory_mixer": 512,
                "transformer_autoencoder": 512, "variable_memory_transformer": 1024}
    assert {config.model_type: model_context(config()) for config, _, _ in ARCHITECTURES} == expected
    assert model_context(MemoryMixerConfig(memory_source="previous_chunk")) is None


def test_clear_errors():
    with pytest.raises(ValueError, match="no fixed context"):
        perplexity_of_ids(tiny_lswt(max_position_embeddings=None), IDS)
    assert perplexity_of_ids(tiny_lswt(max_position_embeddings=None), IDS, context=16)["tokens"] == 50 - 4
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity_of_ids(tiny_model(), IDS, context=1)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity_of_ids(tiny_model(), IDS[:1])
    with pytest.raises(ValueError, match="does not belong to this model"):
        perplexity_of_ids(tiny_model(vocab_size=100), IDS)
    with pytest.raises(ValueError, match="empty"):
        perplexity(tiny_model(), train_tokenizer(), " \n")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny Masked Mixer (context 24) saved with the test tokenizer, and a text file."""
    root = tmp_path_factory.mktemp("eval")
    tokenizer = train_tokenizer()
    model = tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    model.save_pretrained(root / "bare")  # no tokenizer
    (root / "text.txt").write_text(TEXT[:600], encoding="utf-8")
    (root / "empty.txt").write_text("\n", encoding="utf-8")
    return root


def test_cli_subprocess(saved_model):
    root = saved_model
    command = [sys.executable, "-m", "memory_zoo.cli", "eval", str(root / "model"), str(root / "text.txt"),
               "--stride", "12", "--batch-size", "4", "--json", str(root / "out.json")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "perplexity" in result.stdout and "nats/token" in result.stdout and "stride 12" in result.stdout
    written = json.loads((root / "out.json").read_text())
    expected = evaluate_file(root / "model", root / "text.txt", stride=12, batch_size=4, device="cpu")
    assert written["tokens"] == expected["tokens"] and written["windows"] == expected["windows"]
    assert written["loss_nats"] == pytest.approx(expected["loss_nats"], rel=1e-6)
    assert written["model_class"] == "MaskedMixerForCausalLM"


def test_cli_errors(saved_model, capsys):
    root = saved_model
    cases = [
        ([str(root / "bare"), str(root / "text.txt")], "has no tokenizer"),
        ([str(root / "bare"), str(root / "text.txt"), "--tokenizer", str(root / "model")], None),
        ([str(root / "model"), str(root / "empty.txt")], "is empty"),
        ([str(root / "model"), str(root / "missing.txt")], "missing.txt does not exist"),
        ([str(root / "model"), str(root / "text.txt"), "--context", "1"], "at least 2 tokens"),
        ([str(root / "model"), str(root / "text.txt"), "--context", "32"], "24"),  # the model's own limit
        ([str(root / "model"), str(root / "text.txt"), "--stride", "30"], "stride must be between"),
    ]
    for args, message in cases:
        code = main(["eval", *args, "--device", "cpu"])
        err = capsys.readouterr().err
        if message is None:
            assert code == 0, err
        else:  # the error is the last line (a slow machine may have shown a progress line before it)
            last = err.strip().splitlines()[-1]
            assert code == 2 and message in last and last.startswith("memory-zoo eval: error:"), (args, err)


def test_cli_autoencoder(saved_model, capsys):
    root = saved_model
    model = AUTOENCODER_BUILDERS["mixer_autoencoder"]()
    model.save_pretrained(root / "autoencoder")
    train_tokenizer().save_pretrained(root / "autoencoder")
    assert main(["eval", str(root / "autoencoder"), str(root / "text.txt"), "--json", str(root / "ae.json")]) == 0
    out = capsys.readouterr().out
    assert "token accuracy" in out and "MixerAutoencoderModel" in out
    written = json.loads((root / "ae.json").read_text())
    assert written["kind"] == "reconstruction" and written["window_length"] == 24


# --- several documents, and `datasets` datasets (memory-zoo eval --dataset) ------------------------------------------

DOCUMENTS = [TEXT[:300], "A stitch in time saves nine.", TEXT[100:500], "The", ""]


def test_documents_are_scored_apart_and_token_weighted(tokenizer):
    model = tiny_model(vocab_size=len(tokenizer))
    assert len(tokenizer(DOCUMENTS[3])["input_ids"]) == 1
    alone = [perplexity(model, tokenizer, text, stride=8) for text in DOCUMENTS[:3]]
    together = perplexity(model, tokenizer, DOCUMENTS, stride=8, batch_size=3)
    tokens = sum(r["tokens"] for r in alone)
    assert together["tokens"] == tokens and together["windows"] == sum(r["windows"] for r in alone)
    assert together["documents"] == 4  # the empty text is left out; "The" (one token) is read but predicts nothing
    assert together["loss_nats"] == pytest.approx(sum(r["loss_nats"] * r["tokens"] for r in alone) / tokens, rel=1e-6)
    with pytest.raises(ValueError, match="Every text is empty"):
        perplexity(model, tokenizer, ["", " "])


def test_autoencoder_documents_are_reconstructed_apart(tokenizer):
    model = AUTOENCODER_BUILDERS["mixer_autoencoder"]().eval()
    texts = [TEXT[:200], TEXT[300:420]]
    alone = [perplexity(model, tokenizer, text) for text in texts]
    together = perplexity(model, tokenizer, texts, batch_size=2)
    tokens = sum(r["tokens"] for r in alone)
    assert together["tokens"] == tokens and together["windows"] == sum(r["windows"] for r in alone)
    assert together["loss_nats"] == pytest.approx(sum(r["loss_nats"] * r["tokens"] for r in alone) / tokens, rel=1e-6)


@pytest.fixture(scope="module")
def datasets_on_disk(saved_model):
    """The same rows as a save_to_disk folder (two splits), a one-split folder, a JSON-lines file and a CSV file."""
    import datasets

    root = saved_model / "datasets"
    rows = {"text": DOCUMENTS[:3], "label": [0, 1, 2]}
    full = datasets.Dataset.from_dict(rows)
    datasets.DatasetDict({"train": full.select([0]), "test": full}).save_to_disk(str(root / "splits"))
    full.save_to_disk(str(root / "one"))
    full.to_json(str(root / "rows.jsonl"))
    full.rename_column("text", "body").to_csv(str(root / "rows.csv"), index=False)
    return root


def test_every_kind_of_local_dataset_gives_the_same_texts(datasets_on_disk):
    root = datasets_on_disk
    expected = DOCUMENTS[:3]
    assert load_texts(root / "splits") == (expected, "test")  # several splits: `test` by default
    assert load_texts(root / "splits", split="train") == (expected[:1], "train")
    assert load_texts(root / "one") == (expected, None)
    assert load_texts(root / "rows.jsonl") == (expected, None)
    assert load_texts(root / "rows.csv", column="body") == (expected, None)
    assert load_texts(str(root / "rows.jsonl"), split="ignored for one file")[0] == expected


@pytest.mark.parametrize(("arguments", "message"), [
    ({"dataset": "splits", "split": "validation"}, "no split 'validation'; its splits: train, test"),
    ({"dataset": "rows.csv"}, "no column 'text'; its columns: body, label"),
    ({"dataset": "one", "column": "label"}, "holds Value('int64'), not text"),
    ({"dataset": "missing/"}, "does not exist"),
    ({"dataset": "rows.unknown"}, "is not a data file"),
])
def test_dataset_errors_name_the_fix(datasets_on_disk, arguments, message):
    (datasets_on_disk / "rows.unknown").write_text("x")
    arguments = {**arguments, "dataset": datasets_on_disk / arguments["dataset"]}
    with pytest.raises(ValueError, match=re.escape(message)):
        load_texts(**arguments)


CONFIGURATIONS = """---
configs:
- config_name: short
  data_files:
  - {split: test, path: short/test.jsonl}
- config_name: long
  data_files:
  - {split: train, path: long/train.jsonl}
  - {split: test, path: long/test.jsonl}
---
"""


def test_a_folder_of_data_files_with_configurations(tmp_path):
    """A folder `datasets.load_dataset` reads (here with two configurations in its README): --subset picks one."""
    import datasets

    for name, split, texts in (("short", "test", DOCUMENTS[1:2]), ("long", "train", DOCUMENTS[:1]),
                               ("long", "test", DOCUMENTS[2:3])):
        datasets.Dataset.from_dict({"text": texts}).to_json(str(tmp_path / name / f"{split}.jsonl"))
    (tmp_path / "README.md").write_text(CONFIGURATIONS)
    assert load_texts(tmp_path, subset="short") == (DOCUMENTS[1:2], "test")
    assert load_texts(tmp_path, subset="long") == (DOCUMENTS[2:3], "test")
    assert load_texts(tmp_path, subset="long", split="train") == (DOCUMENTS[:1], "train")
    with pytest.raises(ValueError, match="several configurations: choose one with --subset"):
        load_texts(tmp_path)


def test_cli_dataset(saved_model, datasets_on_disk, capsys, tokenizer):
    root, data = saved_model, datasets_on_disk
    argv = ["eval", str(root / "model"), "--dataset", str(data / "splits"), "--stride", "8", "--json",
            str(root / "ds.json"), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"on {data / 'splits'}[test] (column text, 3 documents)" in out
    written = json.loads((root / "ds.json").read_text())
    assert (written["dataset"], written["split"], written["column"], written["documents"]) == (
        str(data / "splits"), "test", "text", 3)
    expected = evaluate_dataset(root / "model", data / "rows.jsonl", stride=8, device="cpu")
    assert written["loss_nats"] == pytest.approx(expected["loss_nats"], rel=1e-6)
    assert main(["eval", str(root / "model"), "--dataset", str(data / "rows.csv"), "--device", "cpu"]) == 2
    assert "no column 'text'" in capsys.readouterr().err
