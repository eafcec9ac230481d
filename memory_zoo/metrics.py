"""Compression metrics of the text-compression models (Badger, "Language Model Memory and Memory Models for
Language"; research code blbadger/memorymodels; spec section 8).

* [`token_accuracy`]: the research "Hamming" metric, the fraction of target tokens the argmax predicts (1 = perfect).
* [`reconstruction_metrics`]: reconstruction loss of an autoencoder in nats and bits per token, its token accuracy
  and its compression ratio, computed in batches.
* [`copy_task_batch`] and [`copy_accuracy`]: the research copy task of memory models (repeat the first half).
* [`encode_texts`] and [`decode_memories`]: texts to one memory vector per window and back, in batches, with a
  progress bar.

Everything is duck-typed: an autoencoder is any module with `encode(input_ids) -> [B, memory_size]`,
`decode(memory) -> logits [B, L, V]`, `forward(input_ids) -> output with .logits [B, L, V]` and a config with
`window_length` and `memory_size`; a memory (causal) model is any module whose `forward(input_ids, use_cache=False)`
returns next-token `.logits [B, T, V]`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "EncodedTexts",
    "copy_accuracy",
    "copy_task_batch",
    "decode_memories",
    "encode_texts",
    "reconstruction_metrics",
    "token_accuracy",
]


def _aligned(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"logits must be [batch, seq_len, vocab] and labels [batch, seq_len] of the same batch and "
                         f"length; got {tuple(logits.shape)} and {tuple(labels.shape)}.")
    labels = labels.to(logits.device)
    return (logits[:, :-1], labels[:, 1:]) if shift else (logits, labels)


def _accuracy_counts(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[int, int]:
    """(correct, counted) argmax predictions over the labels that are not `-100`."""
    logits, labels = _aligned(logits, labels, shift)
    valid = labels != IGNORE_INDEX
    correct = (logits.argmax(dim=-1) == labels) & valid
    return int(correct.sum()), int(valid.sum())


def token_accuracy(logits: torch.Tensor, labels: torch.Tensor, shift: bool = False) -> float:
    """Fraction of the labels (those that are not `-100`) predicted by the argmax of `logits`.

    This is the research "Hamming" metric (its Trainer key is `'Hamming Distance'`, but 1 means every token was
    recovered). Autoencoders reconstruct position `t` at position `t`: `shift=False`. Causal and memory models predict
    token `t + 1` at position `t`: `shift=True` compares `logits[:, :-1]` with `labels[:, 1:]`.

    Args:
        logits: `[batch, seq_len, vocab]`.
        labels: `[batch, seq_len]`, `-100` where nothing is scored.
        shift: compare next-token predictions (causal models) instead of same-position ones (autoencoders).

    Returns:
        The accuracy in [0, 1]; NaN when no label is scored.
    """
    correct, counted = _accuracy_counts(logits, labels, shift)
    return correct / counted if counted else math.nan


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _default_labels(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """`input_ids` with the model's pad id set to `-100`, as the research collator (`mlm=False`) builds labels."""
    labels = input_ids.clone()
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is not None:
        labels[labels == pad] = IGNORE_INDEX
    return labels


def _batches(total: int, batch_size: int, progress: bool, desc: str, unit: str) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    with tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            yield slice(start, stop)
            bar.update(stop - start)


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode under `torch.no_grad`; the model's training flag is restored afterwards."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def _check_ids(input_ids: torch.Tensor, name: str = "input_ids") -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{name} must be a tensor [batch, seq_len], got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)}.")


def reconstruction_metrics(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, float | int]:
    """Reconstruction quality of an autoencoder on windows `input_ids [N, T]` (`T <= config.window_length`).

    The cross-entropy is taken over every scored position without shift (position `t` reconstructs token `t`) and
    averaged over tokens, not batches, so the result does not depend on `batch_size`. Runs under `torch.no_grad` in
    eval mode; the model's training flag is restored afterwards.

    Args:
        model: an autoencoder (`forward(input_ids=...)` returns `.logits [B, T, V]`; `config.window_length` and
            `config.memory_size`).
        input_ids: the windows `[N, T]`.
        labels: the tokens to reconstruct `[N, T]`, `-100` where not scored. Defaults to `input_ids` with the
            model's `config.pad_token_id` set to `-100` (the research collator's labels).
        batch_size: windows per forward pass.
        progress: show a tqdm progress bar.

    Returns:
        `loss_nats` (mean cross-entropy, nats per token), `bits_per_token` (`loss_nats / ln 2`), `token_accuracy`
        (research "Hamming" metric), `tokens` (scored tokens), `windows`, `window_length`, `memory_size` (floats in
        one window's code) and `compression_ratio` (`window_length / memory_size`: tokens per float of the code).
    """
    _check_ids(input_ids)
    labels = _default_labels(model, input_ids) if labels is None else labels
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}.")
    device = _model_device(model)
    total_nats, correct, counted = 0.0, 0, 0
    with _eval_mode(model):
        for part in _batches(len(input_ids), batch_size, progress, "reconstruction", "window"):
            logits = model(input_ids=input_ids[part].to(device)).logits
            targets = labels[part].to(logits.device)
            total_nats += F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                          reduction="sum").item()
            hits, count = _accuracy_counts(logits, targets, shift=False)
            correct, counted = correct + hits, counted + count
    nats = total_nats / counted if counted else math.nan
    config = model.config
    return {
        "loss_nats": nats,
        "bits_per_token": nats / math.log(2),
        "token_accuracy": correct / counted if counted else math.nan,
        "tokens": counted,
        "windows": len(input_ids),
        "window_length": config.window_length,
        "memory_size": config.memory_size,
        "compression_ratio": config.window_length / config.memory_size,
    }


def copy_task_batch(
    input_ids: torch.Tensor,
    blank: bool = False,
    blank_token_id: int = 1,
    delimiter_token_id: int | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The research copy task (spec 8.3) of a batch of rows of even length `N`: new `(inputs, labels)` tensors.

    * inputs: the first half is kept; the second half := the first half (`blank=True`: := `blank_token_id`,
      research `blank_copy`, which writes token id 1), so the second half has to be recalled from memory;
    * labels: the first half := `-100`; the second half := the first half of `labels` (default: of `input_ids`);
    * `delimiter_token_id` (research `ObjectiveMemoryTransformer`, which uses id 100): input positions
      `N/2 .. N/2+2` := the delimiter and label positions `N/2-1 .. N/2+1` := `-100`.

    The research rewrites the caller's tensors in place; this returns new tensors and leaves its arguments alone.
    """
    _check_ids(input_ids)
    length = input_ids.shape[1]
    if length % 2:
        raise ValueError(f"The copy task needs rows of even length (first half, then its copy); got {length}.")
    if delimiter_token_id is not None and length < 6:
        raise ValueError(f"The copy task with a delimiter needs rows of at least 6 tokens (3 delimiters); got {length}.")
    source = input_ids if labels is None else labels
    if source.shape != input_ids.shape:
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(source.shape)}.")
    half = length // 2
    inputs = input_ids.clone()
    if blank:
        inputs[:, half:] = blank_token_id
    else:
        inputs[:, half:] = input_ids[:, :half]
    targets = torch.full_like(source, IGNORE_INDEX)
    targets[:, half:] = source[:, :half]
    if delimiter_token_id is not None:
        inputs[:, half:half + 3] = delimiter_token_id
        targets[:, half - 1:half + 2] = IGNORE_INDEX
    return inputs, targets


def copy_accuracy(
    model: nn.Module,
    input_ids: torch.Tensor,
    blank: bool = False,
    batch_size: int = 16,
    blank_token_id: int = 1,
    delimiter_token_id: int | None = None,
    progress: bool = False,
) -> float:
    """Copy accuracy of a causal memory model: shifted token accuracy over the copied half (research copy eval).

    Each row of `input_ids [N, T]` (T even, within the model's context) is turned into a copy-task row by
    [`copy_task_batch`] (labels: `input_ids` with the model's pad id ignored, as the research collator does), and
    `model(input_ids=..., use_cache=False).logits` is scored with `token_accuracy(..., shift=True)`, token-weighted
    over all batches. Runs under `torch.no_grad` in eval mode; the training flag is restored afterwards.
    """
    _check_ids(input_ids)
    inputs, labels = copy_task_batch(input_ids, blank=blank, blank_token_id=blank_token_id,
                                     delimiter_token_id=delimiter_token_id, labels=_default_labels(model, input_ids))
    device = _model_device(model)
    correct, counted = 0, 0
    with _eval_mode(model):
        for part in _batches(len(inputs), batch_size, progress, "copy task", "row"):
            logits = model(input_ids=inputs[part].to(device), use_cache=False).logits
            hits, count = _accuracy_counts(logits, labels[part], shift=True)
            correct, counted = correct + hits, counted + count
    return correct / counted if counted else math.nan


@dataclass
class EncodedTexts:
    """Memories of texts cut into windows, and where each window came from.

    Attributes:
        memories: `[num_windows, memory_size]`, on the CPU, in the model's dtype.
        text_index: `[num_windows]` (long): the index in `texts` of each window's text. Windows of one text are
            consecutive and in reading order; a text with no tokens has no window.
        input_ids: `[num_windows, window_length]` (long): the windows that were encoded (last windows left-padded).
        lengths: `[num_windows]` (long): real (non-padding) tokens of each window.
    """

    memories: torch.Tensor
    text_index: torch.Tensor
    input_ids: torch.Tensor
    lengths: torch.Tensor

    def __len__(self) -> int:
        return len(self.memories)

    def for_text(self, index: int) -> torch.Tensor:
        """The memories `[windows of that text, memory_size]` of text `index`, in reading order."""
        return self.memories[self.text_index == index]


def _pad_id(model: nn.Module, tokenizer) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    if pad is None:
        raise ValueError("Short windows are left-padded, but neither the tokenizer nor the model config has a pad "
                         "token id: set tokenizer.pad_token (for example to the eos token, as the research does).")
    return int(pad)


def encode_texts(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    batch_size: int = 32,
    progress: bool = True,
    device: torch.device | str | None = None,
    add_special_tokens: bool = False,
) -> EncodedTexts:
    """Encode texts to one memory vector per window of `config.window_length` tokens, in batches.

    Each text is tokenized (without special tokens by default, as the research tokenizes) and cut into consecutive
    windows of `window_length` tokens. A shorter last window is LEFT-padded with the tokenizer's pad id (the
    research trains on left-padded windows, so the real text ends at the last position, the one the encoder's
    memory is read from). Windows of all texts are encoded together, `batch_size` at a time, under `torch.no_grad`
    in eval mode (the training flag is restored afterwards), with a tqdm progress bar unless `progress=False`.

    Args:
        model: an autoencoder (`encode(input_ids) -> [B, memory_size]`, `config.window_length`).
        tokenizer: a transformers tokenizer (`tokenizer(texts, add_special_tokens=...)["input_ids"]`, `pad_token_id`).
        texts: the texts.
        batch_size: windows per `encode` call.
        progress: show a progress bar (one step per window).
        device: where the windows are encoded; defaults to the model's device. Memories are returned on the CPU.
        add_special_tokens: passed to the tokenizer.

    Returns:
        [`EncodedTexts`]: `memories [num_windows, memory_size]`, `text_index`, `input_ids` and `lengths`.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings; wrap a single text as [text].")
    window = int(model.config.window_length)
    pad = _pad_id(model, tokenizer)
    token_lists = tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"] if texts else []
    windows, owners, lengths = [], [], []
    for index, tokens in enumerate(token_lists):
        for start in range(0, len(tokens), window):
            piece = tokens[start:start + window]
            windows.append([pad] * (window - len(piece)) + list(piece))
            owners.append(index)
            lengths.append(len(piece))
    input_ids = torch.tensor(windows, dtype=torch.long).view(len(windows), window)
    device = _model_device(model) if device is None else torch.device(device)
    memories = []
    with _eval_mode(model):
        for part in _batches(len(input_ids), batch_size, progress, "encoding", "window"):
            memories.append(model.encode(input_ids[part].to(device)).cpu())
    if memories:
        memories = torch.cat(memories)
    else:
        parameter = next(model.parameters(), None)
        dtype = parameter.dtype if parameter is not None else torch.float32
        memories = torch.empty(0, int(model.config.memory_size), dtype=dtype)
    return EncodedTexts(memories=memories, text_index=torch.tensor(owners, dtype=torch.long),
                        input_ids=input_ids, lengths=torch.tensor(lengths, dtype=torch.long))


def decode_memories(
    model: nn.Module,
    tokenizer,
    memories: torch.Tensor | EncodedTexts,
    batch_size: int = 32,
    progress: bool = False,
    skip_special_tokens: bool = True,
) -> list[str]:
    """Texts reconstructed from memories `[N, memory_size]` (or an [`EncodedTexts`]): the argmax token at every
    position of `model.decode(memory)`, decoded by the tokenizer (padding and other special tokens dropped unless
    `skip_special_tokens=False`). Runs in batches under `torch.no_grad` in eval mode."""
    if isinstance(memories, EncodedTexts):
        memories = memories.memories
    if memories.dim() != 2:
        raise ValueError(f"memories must be [num_windows, memory_size], got shape {tuple(memories.shape)}.")
    device = _model_device(model)
    texts: list[str] = []
    with _eval_mode(model):
        for part in _batches(len(memories), batch_size, progress, "decoding", "window"):
            ids = model.decode(memories[part].to(device)).argmax(dim=-1).cpu()
            texts.extend(tokenizer.batch_decode(ids.tolist(), skip_special_tokens=skip_special_tokens))
    return texts
