"""Perplexity of a model on a text or on the documents of a dataset (`memory-zoo eval MODEL_DIR TEXT_FILE`, `memory-zoo
eval MODEL_DIR --dataset PATH`), without the `evaluate` package.

* Causal LMs: each tokenized text (document) is read in windows of `context` tokens that start every `stride` tokens
  ([`sliding_windows`]). Each token is scored once, in the first window that contains it after that window's first
  token, which is the window giving it the most context; the loss is the mean over scored tokens (token-weighted,
  so it does not depend on `batch_size`). With `stride == context` (default) windows do not overlap and the first
  token of every window is not scored (nothing precedes it inside the window); with `stride < context` every token
  but the first of the text is scored, with at least `context - stride` tokens of context. Windows never span two
  documents; the figures are token-weighted over all of them.
* Autoencoders (`mixer_autoencoder`, `transformer_autoencoder`): the text is cut into consecutive windows of
  `context` tokens (default `window_length`; the last one may be shorter) and each is reconstructed from its code;
  [`memory_zoo.metrics.reconstruction_metrics`] scores every token (reconstruction loss in nats and bits per token,
  token accuracy).

The default `context` is the model's own ([`model_context`]); models without a fixed one (LSWT without
`max_position_embeddings`, a memory mixer with `memory_source="previous_chunk"`) need it passed explicitly.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import _eval_mode, _model_device, reconstruction_metrics
from .model_card import TOKENIZER_FILES

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


__all__ = [
    "TOKENIZER_FILES",
    "ProgressReporter",
    "Window",
    "evaluate_dataset",
    "evaluate_file",
    "format_results",
    "is_autoencoder",
    "load_for_evaluation",
    "load_texts",
    "model_context",
    "perplexity",
    "perplexity_of_ids",
    "sliding_windows",
]


class ProgressReporter(Protocol):
    """What an evaluation reports while it runs: the step it is in, then how many tokens it has scored of how many.

    `memory-zoo eval` passes its one-line progress (`memory_zoo_cli.progress.Progress`); `progress=True` in Python
    shows a tqdm bar instead.
    """

    def step(self, text: str) -> None: ...

    def count(self, total: int, unit: str, what: str) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class _Silent:
    def step(self, text: str) -> None:
        pass

    def count(self, total: int, unit: str, what: str) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


class _Bar(_Silent):
    """`progress=True`: a tqdm bar of the tokens scored (what the Python API always showed)."""

    def __init__(self) -> None:
        self.bar = None

    def count(self, total: int, unit: str, what: str) -> None:
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=total, unit=unit.rstrip("s"), desc=what, dynamic_ncols=True)

    def advance(self, amount: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(amount)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _reporter(progress: bool | ProgressReporter) -> ProgressReporter:
    if progress is True:
        return _Bar()
    return progress or _Silent()


@dataclass(frozen=True)
class Window:
    """Tokens `[begin, end)` of the text are read; tokens `[score_from, end)` are scored (`score_from > begin`)."""

    begin: int
    end: int
    score_from: int


def sliding_windows(num_tokens: int, context: int, stride: int) -> list[Window]:
    """The windows that score every token once, each in the window that gives it the most context.

    Window `k` reads tokens `[k * stride, k * stride + context)` (cut at the end of the text). It scores the tokens
    no earlier window scored, except its own first token, which it cannot predict; the window that reaches the end of
    the text is the last. Windows that would score nothing are left out.
    """
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens (one to read, one to predict), got {context}.")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and context = {context} (a larger one would skip tokens), "
                         f"got {stride}.")
    windows, scored_until = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + context, num_tokens)
        score_from = max(scored_until, begin + 1)
        if score_from < end:
            windows.append(Window(begin, end, score_from))
        scored_until = end
        if end == num_tokens:
            break
    return windows


def is_autoencoder(model_or_config: nn.Module | PretrainedConfig) -> bool:
    """Whether the model (or config) is a memory-zoo autoencoder (its record's role, memory_zoo/architectures.py)."""
    from .architectures import BY_MODEL_TYPE

    config = getattr(model_or_config, "config", model_or_config)
    record = BY_MODEL_TYPE.get(getattr(config, "model_type", None))
    return record is not None and record.role == "autoencoder"


def model_context(config: PretrainedConfig) -> int | None:
    """The most tokens one forward pass of this model is meant to read, from its config; None if it has no fixed one.

    `context_length` (variable-memory models: `num_chunks * chunk_length`), `window_length` (autoencoders),
    `max_position_embeddings` (Masked Mixer, Memory Layers, LSWT when set), `block_size` (Memory Mosaics' training
    context). A memory mixer reads one `chunk_length` window with `memory_source="window"` and has no limit with
    `"previous_chunk"`.
    """
    if getattr(config, "model_type", None) == "memory_mixer":
        return config.chunk_length if config.memory_source == "window" else None
    for name in ("context_length", "window_length", "max_position_embeddings", "block_size"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _resolve_context(model: nn.Module, context: int | None) -> int:
    config = model.config
    if context is None:
        context = model_context(config)
        if context is None:
            raise ValueError(f"This {config.model_type} model has no fixed context length in its config; pass the "
                             "window length explicitly (--context N / context=N).")
    if not isinstance(context, int) or isinstance(context, bool):
        raise ValueError(f"context must be an integer, got {context!r}.")
    return context


def _check_vocabulary(model: nn.Module, input_ids: torch.Tensor) -> None:
    vocab_size = getattr(model.config, "vocab_size", None)
    if vocab_size is not None and input_ids.numel() and int(input_ids.max()) >= vocab_size:
        raise ValueError(f"The tokenizer produced token id {int(input_ids.max())} but the model has {vocab_size} "
                         "embeddings: the tokenizer does not belong to this model (pass the right one with "
                         "--tokenizer DIR).")


def _causal_perplexity(model: nn.Module, documents: list[torch.Tensor], context: int, stride: int, batch_size: int,
                       reporter: ProgressReporter) -> dict[str, Any]:
    # (document, window) of every document; a document of one token has nothing to predict and gives no window.
    windows = [(doc, window) for doc, ids in enumerate(documents) if len(ids) >= 2
               for window in sliding_windows(len(ids), context, stride)]
    if not windows:
        raise ValueError("No text has 2 tokens or more; perplexity needs at least 2 (one to predict).")
    device = _model_device(model)
    total_nats, scored = 0.0, 0
    # Windows of one length form one batch without padding (only the last window of each document can be shorter).
    by_length: dict[int, list[tuple[int, Window]]] = {}
    for doc, window in windows:
        by_length.setdefault(window.end - window.begin, []).append((doc, window))
    reporter.count(sum(w.end - w.score_from for _, w in windows), "tokens", "scored")
    with _eval_mode(model):
        for length, group in sorted(by_length.items(), reverse=True):  # longest first: context errors surface early
            for start in range(0, len(group), batch_size):
                part = group[start:start + batch_size]
                batch = torch.stack([documents[doc][w.begin:w.end] for doc, w in part]).to(device)
                logits = model(input_ids=batch, use_cache=False).logits
                # Position p predicts token begin + p + 1; it counts when that token is at or after score_from.
                targets = batch[:, 1:].to(logits.device)
                nats = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
                predicted = torch.arange(1, length, device=logits.device)
                first = torch.tensor([w.score_from - w.begin for _, w in part], device=logits.device)
                mask = predicted[None, :] >= first[:, None]
                total_nats += nats.view_as(targets)[mask].double().sum().item()
                scored += int(mask.sum())
                reporter.advance(int(mask.sum()))
    loss = total_nats / scored
    return {"kind": "causal_lm", "loss_nats": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "tokens": scored, "text_tokens": sum(len(ids) for ids in documents), "documents": len(documents),
            "windows": len(windows), "context": context, "stride": stride}


def _reconstruction(model: nn.Module, documents: list[torch.Tensor], context: int, stride: int | None,
                    batch_size: int, reporter: ProgressReporter) -> dict[str, Any]:
    if stride is not None and stride != context:
        raise ValueError("An autoencoder reconstructs each window on its own, so windows do not overlap: leave "
                         f"stride unset (or equal to context = {context}).")
    window = model.config.window_length
    if not 1 <= context <= window:
        raise ValueError(f"context must be between 1 and the autoencoder's window_length = {window}, got {context}.")
    minimum = -getattr(model.config, "memory_position", -1)  # the code is read at this position from the end
    # Consecutive windows of `context` tokens of each document; its last, shorter one if the code can be read in it.
    by_length: dict[int, list[torch.Tensor]] = {}
    for ids in documents:
        for begin in range(0, len(ids), context):
            piece = ids[begin:begin + context]
            if len(piece) == context or len(piece) >= minimum:
                by_length.setdefault(len(piece), []).append(piece)
    if not by_length:
        longest = max(len(ids) for ids in documents)
        raise ValueError(f"The text has {longest} tokens; the autoencoder needs windows of at least {minimum}.")
    reporter.count(sum(length * len(pieces) for length, pieces in by_length.items()), "tokens", "reconstructed")
    # Every token of the text is scored (labels = inputs): padding tokens never occur inside a text.
    results = []
    for _, pieces in sorted(by_length.items(), reverse=True):  # full windows first, shorter ones after
        for start in range(0, len(pieces), batch_size):
            batch = torch.stack(pieces[start:start + batch_size])
            results.append(reconstruction_metrics(model, batch, labels=batch, batch_size=batch_size))
            reporter.advance(batch.numel())
    tokens = sum(r["tokens"] for r in results)
    loss = sum(r["loss_nats"] * r["tokens"] for r in results) / tokens
    accuracy = sum(r["token_accuracy"] * r["tokens"] for r in results) / tokens
    first = results[0]
    return {"kind": "reconstruction", "loss_nats": loss, "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2), "token_accuracy": accuracy, "tokens": tokens,
            "text_tokens": sum(len(ids) for ids in documents), "documents": len(documents),
            "windows": sum(r["windows"] for r in results), "context": context,
            "window_length": first["window_length"], "memory_size": first["memory_size"],
            "compression_ratio": first["compression_ratio"]}


def _score(model: nn.Module, documents: list[torch.Tensor], context: int | None, stride: int | None, batch_size: int,
           progress: bool | ProgressReporter) -> dict[str, Any]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    for ids in documents:
        _check_vocabulary(model, ids)
    context = _resolve_context(model, context)
    reporter = _reporter(progress)
    try:
        if is_autoencoder(model):
            return _reconstruction(model, documents, context, stride, batch_size, reporter)
        config = model.config
        if getattr(config, "model_type", None) == "memory_mixer" and config.memory_source == "window":
            logger.warning("This memory mixer uses memory_source='window' (research oracle): its encoder reads the "
                           "window it predicts, so the loss below is a compression measure, not a language-model "
                           "perplexity.")
        return _causal_perplexity(model, documents, context, context if stride is None else stride, batch_size,
                                  reporter)
    finally:
        if isinstance(reporter, _Bar):
            reporter.close()


def perplexity_of_ids(
    model: nn.Module,
    input_ids: torch.Tensor | list[int],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool | ProgressReporter = False,
) -> dict[str, Any]:
    """[`perplexity`] of an already tokenized text `input_ids` (1-D)."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be one tokenized text (1-D), got shape {tuple(input_ids.shape)}.")
    if not is_autoencoder(model) and len(input_ids) < 2:
        raise ValueError(f"The text has {len(input_ids)} token(s); perplexity needs at least 2 (one to predict).")
    return _score(model, [input_ids], context, stride, batch_size, progress)


def perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str | Sequence[str],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    progress: bool | ProgressReporter = False,
) -> dict[str, Any]:
    """Perplexity of a causal LM on `text`, or reconstruction metrics of an autoencoder (see the module docstring).

    Runs in eval mode under `torch.no_grad` on the model's device; the training flag is restored afterwards.

    Args:
        model: a memory-zoo causal LM or autoencoder (any model whose `forward(input_ids=..., use_cache=False)`
            returns next-token `.logits` works as a causal LM).
        tokenizer: tokenizes each text at once.
        text: the text to score, or several texts (documents, e.g. the rows of a dataset): each is tokenized and read
            in windows of its own, and the figures are token-weighted over all of them.
        context: tokens per window; defaults to [`model_context`] of the model's config.
        stride: tokens between window starts (causal LMs); defaults to `context` (no overlap).
        batch_size: windows per forward pass.
        add_special_tokens: let the tokenizer add its special tokens (e.g. a BOS token) around each text.
        progress: show a progress bar of the tokens scored, or report to a [`ProgressReporter`].

    Returns:
        Causal LMs: `kind="causal_lm"`, `loss_nats` (mean negative log-likelihood per scored token), `perplexity`
        (`exp(loss_nats)`), `bits_per_token`, `tokens` (scored), `text_tokens`, `documents`, `windows`, `context`,
        `stride`. Autoencoders: `kind="reconstruction"`, `loss_nats`, `perplexity`, `bits_per_token`,
        `token_accuracy`, `tokens`, `text_tokens`, `documents`, `windows`, `context`, `window_length`, `memory_size`,
        `compression_ratio`.
    """
    texts = [text] if isinstance(text, str) else [t for t in text if t and t.strip()]
    if not texts or not texts[0].strip():
        raise ValueError("The text is empty." if isinstance(text, str) else "Every text is empty.")
    if len(texts) > 1:
        _reporter(progress).step(f"tokenizing {len(texts):,} texts")
    encoded = tokenizer(texts, add_special_tokens=add_special_tokens, return_attention_mask=False,
                        verbose=False)["input_ids"]
    documents = [torch.as_tensor(ids, dtype=torch.long) for ids in encoded]
    if len(documents) == 1:
        return perplexity_of_ids(model, documents[0], context=context, stride=stride, batch_size=batch_size,
                                 progress=progress)
    return _score(model, documents, context, stride, batch_size, progress)


def load_for_evaluation(
    model_dir: str | Path,
    tokenizer: str | Path | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """The model of `model_dir` (its causal-LM class, or `AutoModel` for an autoencoder) and its tokenizer (from
    `tokenizer`, else `model_dir`), in eval mode on `device` (default: CUDA when available, else CPU)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .conversion.common import load_tokenizer

    loaded_tokenizer = load_tokenizer(tokenizer or model_dir, model_dir if tokenizer else None,
                                      trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    auto = AutoModel if is_autoencoder(config) else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), loaded_tokenizer


# Data files `memory-zoo eval --dataset FILE` reads, by suffix: the `datasets` builder that reads them.
DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
                      ".txt": "text", ".text": "text", ".arrow": "arrow"}


def load_texts(dataset: str | Path, split: str | None = None, column: str = "text",
               subset: str | None = None) -> tuple[list[str], str | None]:
    """The texts of `column` in one split of a `datasets` dataset, and the name of that split.

    `dataset` is a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`), a data file (see
    `DATA_FILE_BUILDERS`), or anything else `datasets.load_dataset` accepts: a folder of data files, or a dataset name
    (downloaded unless it is in the cache), with its configuration `subset` where it has several. Without `split`, a
    dataset of one split gives that split, and one of several its `test` split; a data file or a `Dataset` folder is
    one split, and `split` is ignored there. Empty texts are left out.
    """
    import datasets

    path = Path(dataset)
    if path.is_dir() and any((path / name).is_file() for name in ("state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(path))
    elif path.is_file():
        builder = DATA_FILE_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path} is not a data file `datasets` reads by its name (one of "
                             f"{', '.join(sorted(DATA_FILE_BUILDERS))}); for a plain text file, pass it as TEXT_FILE.")
        # Text files are read whole: one file, one document (the `text` builder would make every line a document).
        options = {"sample_by": "document"} if builder == "text" else {}
        loaded, split = datasets.load_dataset(builder, data_files=str(path), split="train", **options), None
    elif not path.exists() and (str(dataset).startswith((".", "/", "~")) or str(dataset).endswith(("/", os.sep))):
        raise ValueError(f"The dataset {path} does not exist: check the path (a folder written by save_to_disk, or a "
                         "data file).")
    else:  # a folder of data files, or a name: choose the split first, so that only that split is read (downloaded)
        try:
            if split is None:
                splits = datasets.get_dataset_split_names(str(dataset), subset)
                split = splits[0] if len(splits) == 1 else "test" if "test" in splits else None
                if split is None:
                    raise ValueError(f"{dataset} has the splits {', '.join(splits)}: choose one with --split "
                                     "(split=...).")
            loaded = datasets.load_dataset(str(dataset), subset, split=split)
        except ValueError as error:
            if subset is None and "Config name is missing" in str(error):  # `datasets` words it for its own API
                raise ValueError(f"{dataset} has several configurations: choose one with --subset NAME (subset=...). "
                                 f"{' '.join(str(error).split())}") from error
            raise
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        if split is None:
            split = splits[0] if len(splits) == 1 else "test" if "test" in splits else None
            if split is None:
                raise ValueError(f"{dataset} has the splits {', '.join(splits)}: choose one with --split (split=...).")
        if split not in loaded:
            raise ValueError(f"{dataset} has no split {split!r}; its splits: {', '.join(splits)}.")
        loaded = loaded[split]
    if column not in loaded.column_names:
        raise ValueError(f"{dataset} has no column {column!r}; its columns: {', '.join(loaded.column_names)}. Name "
                         "the one holding the text with --column (column=...).")
    feature = loaded.features[column]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise ValueError(f"The column {column!r} of {dataset} holds {feature}, not text: name a text column with "
                         "--column (column=...).")
    texts = [text for text in loaded[column] if text and text.strip()]
    if not texts:
        raise ValueError(f"Every text in the column {column!r} of {dataset} is empty: there is nothing to evaluate.")
    return texts, split


def evaluate_file(
    model_dir: str | Path,
    text_file: str | Path,
    tokenizer: str | Path | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    progress: bool | ProgressReporter = False,
) -> dict[str, Any]:
    """[`perplexity`] of the model folder `model_dir` on the UTF-8 file `text_file` (what `memory-zoo eval` runs);
    the result also names the model class and the file."""
    path = Path(text_file)
    if not path.is_file():
        raise ValueError(f"The text file {path} does not exist{' (it is a folder)' if path.is_dir() else ''}: pass the "
                         "path of a UTF-8 text file to score.")
    reporter = _reporter(progress)
    reporter.step(f"reading {path}")
    text = path.read_text(encoding="utf-8")  # before loading the model: a missing or empty file fails fast
    if not text.strip():
        raise ValueError(f"{path} is empty: there is nothing to evaluate.")
    reporter.step(f"loading the model from {model_dir}")
    model, tok = load_for_evaluation(model_dir, tokenizer, trust_remote_code, device)
    reporter.step("tokenizing the text")
    results = perplexity(model, tok, text, context=context, stride=stride, batch_size=batch_size, progress=progress)
    return {"model": str(model_dir), "model_class": type(model).__name__, "text_file": str(path), **results}


def evaluate_dataset(
    model_dir: str | Path,
    dataset: str | Path,
    split: str | None = None,
    column: str = "text",
    subset: str | None = None,
    tokenizer: str | Path | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    progress: bool | ProgressReporter = False,
) -> dict[str, Any]:
    """[`perplexity`] of the model folder `model_dir` on the texts of a `datasets` dataset ([`load_texts`]), each
    row a document of its own (what `memory-zoo eval --dataset` runs); the result also names the model class, the
    dataset, its subset, split and column."""
    reporter = _reporter(progress)
    reporter.step(f"loading the dataset {dataset}")
    texts, split = load_texts(dataset, split, column, subset)  # before loading the model: a wrong column fails fast
    reporter.step(f"loading the model from {model_dir}")
    model, tok = load_for_evaluation(model_dir, tokenizer, trust_remote_code, device)
    results = perplexity(model, tok, texts, context=context, stride=stride, batch_size=batch_size, progress=progress)
    return {"model": str(model_dir), "model_class": type(model).__name__, "dataset": str(dataset), "subset": subset,
            "split": split, "column": column, **results}


def format_results(results: dict[str, Any]) -> str:
    """The human-readable report `memory-zoo eval` prints."""
    if results["kind"] == "reconstruction":
        windows = f"windows of {results['context']} tokens (code of {results['memory_size']} floats)"
    else:
        windows = f"windows of {results['context']} tokens, stride {results['stride']}"
    if "dataset" in results:
        split = f"[{results['split']}]" if results.get("split") else ""
        subset = f" ({results['subset']})" if results.get("subset") else ""
        documents = f"{results['documents']:,} document{'s' if results['documents'] != 1 else ''}"
        source = f"{results['dataset']}{subset}{split} (column {results['column']}, {documents})"
    else:
        source = results.get("text_file", "text")
    lines = [
        f"{results.get('model_class', 'model')} on {source}: {results['text_tokens']:,} tokens, "
        f"{results['windows']:,} {windows}",
        f"loss            {results['loss_nats']:.4f} nats/token",
        f"perplexity      {results['perplexity']:.4f}",
        f"bits per token  {results['bits_per_token']:.4f}",
    ]
    if results["kind"] == "reconstruction":
        lines.append(f"token accuracy  {results['token_accuracy']:.4f}")
    lines.append(f"tokens scored   {results['tokens']:,}")
    return "\n".join(lines)
