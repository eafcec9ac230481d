"""memory_zoo.metrics: the research compression metrics (spec section 8) of autoencoders and memory models."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from memory_zoo import (
    MixerAutoencoderConfig,
    MixerAutoencoderModel,
    VariableMemoryMixerConfig,
    VariableMemoryMixerForCausalLM,
)
from memory_zoo.metrics import (
    EncodedTexts,
    copy_accuracy,
    copy_task_batch,
    decode_memories,
    encode_texts,
    reconstruction_metrics,
    token_accuracy,
)

FIXTURE = Path(__file__).parent / "fixtures" / "compression_metrics" / "copy_task.safetensors"
TEXTS = [
    "The quick brown fox jumps over the lazy dog. A stitch in time saves nine.",
    "",
    "All that glitters",
    "The early bird catches the worm. All that glitters is not gold. The quick brown fox.",
]


def tiny_autoencoder(vocab_size: int = 120, window: int = 8, compression: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    config = MixerAutoencoderConfig(vocab_size=vocab_size, hidden_size=16, encoder_layers=1, decoder_layers=1,
                                    window_length=window, encoder_mixing_kernel_size=2, compression=compression,
                                    pad_token_id=0, use_kernels=False)
    return MixerAutoencoderModel(config).eval()


class IdentityAutoencoder(nn.Module):
    """Duck-typed autoencoder (not a memory-zoo class): the code is the window itself, decoded perfectly."""

    def __init__(self, vocab_size: int, window: int):
        super().__init__()
        self.config = SimpleNamespace(window_length=window, memory_size=window, pad_token_id=0)
        self.vocab_size = vocab_size
        self.scale = nn.Parameter(torch.tensor(20.0))

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        return input_ids.float()

    def decode(self, memory: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(memory.round().long(), self.vocab_size).float() * self.scale

    def forward(self, input_ids: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.decode(self.encode(input_ids)))


class NextTokenOracle(nn.Module):
    """Duck-typed causal model that predicts, at position t, the input token at t + 1."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.config = SimpleNamespace(pad_token_id=None)
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.ones(()))

    def forward(self, input_ids: torch.Tensor, use_cache: bool = True) -> SimpleNamespace:
        assert use_cache is False
        following = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)
        return SimpleNamespace(logits=nn.functional.one_hot(following, self.vocab_size).float() * self.weight)


# ---------------------------------------------------------------- token accuracy


def test_token_accuracy_by_hand():
    # argmax per position: [2, 0, 1, 1]
    logits = torch.tensor([[[0.0, 1, 3], [5, 1, 0], [0, 2, 1], [0, 9, 1]]])
    assert token_accuracy(logits, torch.tensor([[2, 0, 0, 1]]), shift=False) == 0.75
    assert token_accuracy(logits, torch.tensor([[2, -100, 0, -100]]), shift=False) == 0.5
    # shifted: predictions [2, 0, 1] against labels [1:] = [2, 1, 1] -> 2 of 3; the first label is never scored
    assert token_accuracy(logits, torch.tensor([[7, 2, 1, 1]]), shift=True) == pytest.approx(2 / 3)
    assert token_accuracy(logits, torch.tensor([[7, -100, 1, 1]]), shift=True) == 0.5  # [0, 1] vs [1, 1]
    assert math.isnan(token_accuracy(logits, torch.full((1, 4), -100), shift=False))
    with pytest.raises(ValueError, match="same batch and length"):
        token_accuracy(logits, torch.zeros(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- reconstruction metrics


def test_reconstruction_metrics_are_token_weighted_and_batch_independent():
    model = tiny_autoencoder()
    torch.manual_seed(1)
    ids = torch.randint(1, 120, (7, 8))
    labels = ids.clone()
    labels[0, :5] = -100  # a left-padded window: unequal token counts per batch
    labels[3, 2] = -100
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    nats = nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100).item()
    accuracy = token_accuracy(logits, labels, shift=False)
    results = [reconstruction_metrics(model, ids, labels, batch_size=size) for size in (1, 3, 16)]
    for metrics in results:
        assert metrics["loss_nats"] == pytest.approx(nats, rel=1e-5)
        assert metrics["bits_per_token"] == pytest.approx(metrics["loss_nats"] / math.log(2), rel=1e-12)
        assert metrics["token_accuracy"] == pytest.approx(accuracy)
        assert metrics["tokens"] == int((labels != -100).sum()) == 50
        assert metrics["windows"] == 7
        assert (metrics["window_length"], metrics["memory_size"], metrics["compression_ratio"]) == (8, 8, 1.0)
    # the model's own loss is the same mean over the non-ignored tokens
    with torch.no_grad():
        assert model(input_ids=ids, labels=labels).loss.item() == pytest.approx(nats, rel=1e-5)


def test_reconstruction_metrics_default_labels_ignore_padding_and_restore_training_flag():
    model = tiny_autoencoder(compression=4)
    ids = torch.randint(1, 120, (4, 8))
    ids[1, :3] = 0  # pad_token_id = 0
    masked = ids.clone()
    masked[ids == 0] = -100
    model.train()
    metrics = reconstruction_metrics(model, ids, progress=False)
    assert model.training
    assert metrics == reconstruction_metrics(model.eval(), ids, masked)
    assert not model.training
    assert metrics["tokens"] == 29 and metrics["memory_size"] == 4 and metrics["compression_ratio"] == 2.0


def test_reconstruction_metrics_of_a_duck_typed_perfect_autoencoder():
    metrics = reconstruction_metrics(IdentityAutoencoder(50, 6), torch.randint(1, 50, (5, 6)), batch_size=2)
    assert metrics["token_accuracy"] == 1.0 and metrics["loss_nats"] < 1e-6
    assert metrics["compression_ratio"] == 1.0 and metrics["tokens"] == 30


# ---------------------------------------------------------------- copy task


@pytest.mark.parametrize("name, options", [
    ("vmm_blank_copy", {"blank": True}),
    ("vmm_copy_frozen_ae", {}),
    ("omt_copy", {"delimiter_token_id": 100}),
])
def test_copy_task_batch_matches_research(name, options):
    tensors = {key: value.long() for key, value in load_file(FIXTURE).items()}

    def get(key):
        return tensors[f"{name}.{key}"]

    input_ids, before = get("input_ids"), get("input_ids").clone()
    inputs, labels = copy_task_batch(input_ids, **options)
    torch.testing.assert_close(inputs, get("input_ids_effective"), rtol=0, atol=0)
    torch.testing.assert_close(labels, get("labels_effective"), rtol=0, atol=0)
    # labels given explicitly (with -100 in the first half): the copied half keeps their -100
    inputs, labels = copy_task_batch(input_ids, labels=get("labels_masked"), **options)
    torch.testing.assert_close(inputs, get("input_ids_effective"), rtol=0, atol=0)
    torch.testing.assert_close(labels, get("labels_masked_effective"), rtol=0, atol=0)
    torch.testing.assert_close(input_ids, before, rtol=0, atol=0)  # new tensors: nothing rewritten in place


def test_copy_task_batch_by_hand_and_errors():
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    inputs, labels = copy_task_batch(ids)
    assert inputs.tolist() == [[5, 6, 7, 8, 5, 6, 7, 8]]
    assert labels.tolist() == [[-100] * 4 + [5, 6, 7, 8]]
    inputs, labels = copy_task_batch(ids, blank=True, blank_token_id=3)
    assert inputs.tolist() == [[5, 6, 7, 8, 3, 3, 3, 3]]
    inputs, labels = copy_task_batch(ids, delimiter_token_id=100)
    assert inputs.tolist() == [[5, 6, 7, 8, 100, 100, 100, 8]]
    assert labels.tolist() == [[-100] * 6 + [7, 8]]
    with pytest.raises(ValueError, match="even length"):
        copy_task_batch(ids[:, :7])
    with pytest.raises(ValueError, match="at least 6"):
        copy_task_batch(ids[:, :4], delimiter_token_id=100)


def test_copy_accuracy_of_an_oracle():
    oracle, ids = NextTokenOracle(30), torch.randint(2, 30, (5, 16))
    assert copy_accuracy(oracle, ids, batch_size=2) == 1.0
    assert copy_accuracy(oracle, ids, blank=True) == 0.0  # it reads blanks (id 1); the labels are the real tokens
    # delimiter: labels at positions 8, 9 are ignored; position 10's input is a delimiter -> 5 of 6 right
    assert copy_accuracy(oracle, ids, delimiter_token_id=0) == pytest.approx(5 / 6)


def test_copy_accuracy_of_a_memory_mixer_is_shifted_token_accuracy():
    torch.manual_seed(0)
    config = VariableMemoryMixerConfig(vocab_size=40, encoder_hidden_size=16, hidden_size=16, encoder_layers=1,
                                       decoder_layers=1, chunk_length=4, num_chunks=4, use_kernels=False)
    model = VariableMemoryMixerForCausalLM(config).train()
    ids = torch.randint(2, 40, (6, 16))
    inputs, labels = copy_task_batch(ids, blank=True)
    with torch.no_grad():
        expected = token_accuracy(model.eval()(input_ids=inputs, use_cache=False).logits, labels, shift=True)
    model.train()
    for size in (1, 4, 16):
        assert copy_accuracy(model, ids, blank=True, batch_size=size) == pytest.approx(expected)
    assert model.training


# ---------------------------------------------------------------- encode_texts / decode_memories


def test_encode_texts_windows_left_pads_and_matches_one_at_a_time(tokenizer, capsys):
    model = tiny_autoencoder(vocab_size=len(tokenizer)).train()
    window, pad = model.config.window_length, tokenizer.pad_token_id
    tokens = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in TEXTS]
    assert len(tokens[0]) > 2 * window and len(tokens[2]) < window  # several windows; a single short one

    encoded = encode_texts(model, tokenizer, TEXTS, batch_size=3, progress=False)
    assert model.training  # restored
    assert capsys.readouterr().err == ""  # progress=False: no bar
    counts = [math.ceil(len(t) / window) for t in tokens]
    assert len(encoded) == sum(counts) and encoded.memories.shape == (sum(counts), model.config.memory_size)
    assert encoded.text_index.tolist() == [i for i, count in enumerate(counts) for _ in range(count)]
    assert encoded.for_text(1).shape == (0, model.config.memory_size)  # the empty text has no window
    for index, text_tokens in enumerate(tokens):
        rows = encoded.input_ids[encoded.text_index == index]
        lengths = encoded.lengths[encoded.text_index == index]
        # windows in reading order; only the last one is short, and it is padded on the LEFT
        assert sum((row[window - n:].tolist() for row, n in zip(rows, lengths.tolist(), strict=True)), []) == text_tokens
        for row, n in zip(rows, lengths.tolist(), strict=True):
            assert (row[: window - n] == pad).all()
        assert (lengths[:-1] == window).all()
    assert encoded.lengths[encoded.text_index == 2].tolist() == [len(tokens[2])]

    with torch.no_grad():
        single = torch.cat([model.encode(row[None]) for row in encoded.input_ids])
    torch.testing.assert_close(encoded.memories, single, atol=1e-6, rtol=1e-5)
    for size in (1, 32):
        torch.testing.assert_close(encode_texts(model, tokenizer, TEXTS, batch_size=size, progress=False).memories,
                                   encoded.memories, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(encoded.for_text(3), encoded.memories[encoded.text_index == 3])

    encode_texts(model, tokenizer, TEXTS, batch_size=4, progress=True)
    assert "encoding" in capsys.readouterr().err  # the tqdm bar
    assert len(encode_texts(model, tokenizer, [], progress=False)) == 0
    with pytest.raises(TypeError, match="list of strings"):
        encode_texts(model, tokenizer, TEXTS[0])


def test_decode_memories_is_the_argmax_reconstruction(tokenizer):
    model = tiny_autoencoder(vocab_size=len(tokenizer), compression=1)
    encoded = encode_texts(model, tokenizer, TEXTS, progress=False)
    with torch.no_grad():
        ids = model.decode(encoded.memories).argmax(-1)
    expected = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    assert decode_memories(model, tokenizer, encoded.memories, batch_size=2) == expected
    assert decode_memories(model, tokenizer, encoded) == expected


def test_encode_decode_round_trip_with_a_duck_typed_autoencoder(tokenizer):
    model = IdentityAutoencoder(len(tokenizer), window=6)
    encoded = encode_texts(model, tokenizer, TEXTS, batch_size=4, progress=False)
    assert isinstance(encoded, EncodedTexts) and encoded.memories.shape[1] == 6
    originals = tokenizer.batch_decode(encoded.input_ids.tolist(), skip_special_tokens=True)
    assert decode_memories(model, tokenizer, encoded, batch_size=5) == originals
    assert reconstruction_metrics(model, encoded.input_ids)["token_accuracy"] == 1.0
