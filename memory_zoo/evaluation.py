"""Perplexity of a model on a text (`memory-zoo eval MODEL_DIR TEXT_FILE`), without the `evaluate` package.

* Causal LMs: the tokenized text is read in windows of `context` tokens that start every `stride` tokens
  ([`sliding_windows`]). Each token is scored once, in the first window that contains it after that window's first
  token, which is the window giving it the most context; the loss is the mean over scored tokens (token-weighted,
  so it does not depend on `batch_size`). With `stride == context` (default) windows do not overlap and the first
  token of every window is not scored (nothing precedes it inside the window); with `stride < context` every token
  but the first of the text is scored, with at least `context - stride` tokens of context.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .metrics import _batches, _eval_mode, _model_device, reconstruction_metrics
from .model_card import TOKENIZER_FILES

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


__all__ = [
    "TOKENIZER_FILES",
    "Window",
    "evaluate_file",
    "format_results",
    "is_autoencoder",
    "load_for_evaluation",
    "model_context",
    "perplexity",
    "perplexity_of_ids",
    "sliding_windows",
]


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


def _causal_perplexity(model: nn.Module, input_ids: torch.Tensor, context: int, stride: int, batch_size: int,
                       progress: bool) -> dict[str, Any]:
    windows = sliding_windows(len(input_ids), context, stride)
    device = _model_device(model)
    total_nats, scored = 0.0, 0
    # Windows of one length form one batch without padding (only the last window can be shorter).
    by_length: dict[int, list[Window]] = {}
    for window in windows:
        by_length.setdefault(window.end - window.begin, []).append(window)
    with _eval_mode(model):
        for length, group in sorted(by_length.items(), reverse=True):  # longest first: context errors surface early
            for part in _batches(len(group), batch_size, progress, f"perplexity ({length} tokens)", "window"):
                batch = torch.stack([input_ids[w.begin:w.end] for w in group[part]]).to(device)
                logits = model(input_ids=batch, use_cache=False).logits
                # Position p predicts token begin + p + 1; it counts when that token is at or after score_from.
                targets = batch[:, 1:].to(logits.device)
                nats = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(), reduction="none")
                predicted = torch.arange(1, length, device=logits.device)
                first = torch.tensor([w.score_from - w.begin for w in group[part]], device=logits.device)
                mask = predicted[None, :] >= first[:, None]
                total_nats += nats.view_as(targets)[mask].double().sum().item()
                scored += int(mask.sum())
    loss = total_nats / scored
    return {"kind": "causal_lm", "loss_nats": loss, "perplexity": math.exp(loss), "bits_per_token": loss / math.log(2),
            "tokens": scored, "text_tokens": len(input_ids), "windows": len(windows), "context": context,
            "stride": stride}


def _reconstruction(model: nn.Module, input_ids: torch.Tensor, context: int, stride: int | None, batch_size: int,
                    progress: bool) -> dict[str, Any]:
    if stride is not None and stride != context:
        raise ValueError("An autoencoder reconstructs each window on its own, so windows do not overlap: leave "
                         f"stride unset (or equal to context = {context}).")
    window = model.config.window_length
    if not 1 <= context <= window:
        raise ValueError(f"context must be between 1 and the autoencoder's window_length = {window}, got {context}.")
    full = len(input_ids) // context
    parts = [input_ids[:full * context].view(full, context)] if full else []
    minimum = -getattr(model.config, "memory_position", -1)  # the code is read at this position from the end
    if len(input_ids) % context >= minimum:
        parts.append(input_ids[full * context:][None])  # the last, shorter window
    if not parts:
        raise ValueError(f"The text has {len(input_ids)} tokens; the autoencoder needs windows of at least {minimum}.")
    # Every token of the text is scored (labels = inputs): padding tokens never occur inside a text file.
    results = [reconstruction_metrics(model, part, labels=part, batch_size=batch_size, progress=progress)
               for part in parts]
    tokens = sum(r["tokens"] for r in results)
    loss = sum(r["loss_nats"] * r["tokens"] for r in results) / tokens
    accuracy = sum(r["token_accuracy"] * r["tokens"] for r in results) / tokens
    first = results[0]
    return {"kind": "reconstruction", "loss_nats": loss, "perplexity": math.exp(loss),
            "bits_per_token": loss / math.log(2), "token_accuracy": accuracy, "tokens": tokens,
            "text_tokens": len(input_ids), "windows": sum(r["windows"] for r in results), "context": context,
            "window_length": first["window_length"], "memory_size": first["memory_size"],
            "compression_ratio": first["compression_ratio"]}


def perplexity_of_ids(
    model: nn.Module,
    input_ids: torch.Tensor | list[int],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, Any]:
    """[`perplexity`] of an already tokenized text `input_ids` (1-D)."""
    input_ids = torch.as_tensor(input_ids, dtype=torch.long)
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be one tokenized text (1-D), got shape {tuple(input_ids.shape)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    _check_vocabulary(model, input_ids)
    context = _resolve_context(model, context)
    if is_autoencoder(model):
        return _reconstruction(model, input_ids, context, stride, batch_size, progress)
    if len(input_ids) < 2:
        raise ValueError(f"The text has {len(input_ids)} token(s); perplexity needs at least 2 (one to predict).")
    config = model.config
    if getattr(config, "model_type", None) == "memory_mixer" and config.memory_source == "window":
        logger.warning("This memory mixer uses memory_source='window' (research oracle): its encoder reads the window "
                       "it predicts, so the loss below is a compression measure, not a language-model perplexity.")
    return _causal_perplexity(model, input_ids, context, context if stride is None else stride, batch_size, progress)


def perplexity(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    text: str,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    add_special_tokens: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """Perplexity of a causal LM on `text`, or reconstruction metrics of an autoencoder (see the module docstring).

    Runs in eval mode under `torch.no_grad` on the model's device; the training flag is restored afterwards.

    Args:
        model: a memory-zoo causal LM or autoencoder (any model whose `forward(input_ids=..., use_cache=False)`
            returns next-token `.logits` works as a causal LM).
        tokenizer: tokenizes the whole text at once.
        text: the text to score.
        context: tokens per window; defaults to [`model_context`] of the model's config.
        stride: tokens between window starts (causal LMs); defaults to `context` (no overlap).
        batch_size: windows per forward pass.
        add_special_tokens: let the tokenizer add its special tokens (e.g. a BOS token) around the text.
        progress: show a progress bar.

    Returns:
        Causal LMs: `kind="causal_lm"`, `loss_nats` (mean negative log-likelihood per scored token), `perplexity`
        (`exp(loss_nats)`), `bits_per_token`, `tokens` (scored), `text_tokens`, `windows`, `context`, `stride`.
        Autoencoders: `kind="reconstruction"`, `loss_nats`, `perplexity`, `bits_per_token`, `token_accuracy`,
        `tokens`, `text_tokens`, `windows`, `context`, `window_length`, `memory_size`, `compression_ratio`.
    """
    if not text.strip():
        raise ValueError("The text is empty.")
    input_ids = tokenizer(text, add_special_tokens=add_special_tokens, return_attention_mask=False,
                          verbose=False)["input_ids"]
    return perplexity_of_ids(model, input_ids, context=context, stride=stride, batch_size=batch_size,
                             progress=progress)


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

    loaded_tokenizer = load_tokenizer(tokenizer or model_dir, model_dir if tokenizer else None)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    auto = AutoModel if is_autoencoder(config) else AutoModelForCausalLM
    model = auto.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), loaded_tokenizer


def evaluate_file(
    model_dir: str | Path,
    text_file: str | Path,
    tokenizer: str | Path | None = None,
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """[`perplexity`] of the model folder `model_dir` on the UTF-8 file `text_file` (what `memory-zoo eval` runs);
    the result also names the model class and the file."""
    path = Path(text_file)
    if not path.is_file():
        raise ValueError(f"The text file {path} does not exist{' (it is a folder)' if path.is_dir() else ''}: pass the "
                         "path of a UTF-8 text file to score.")
    text = path.read_text(encoding="utf-8")  # before loading the model: a missing or empty file fails fast
    if not text.strip():
        raise ValueError(f"{path} is empty: there is nothing to evaluate.")
    model, tok = load_for_evaluation(model_dir, tokenizer, trust_remote_code, device)
    results = perplexity(model, tok, text, context=context, stride=stride, batch_size=batch_size, progress=progress)
    return {"model": str(model_dir), "model_class": type(model).__name__, "text_file": str(path), **results}


def format_results(results: dict[str, Any]) -> str:
    """The human-readable report `memory-zoo eval` prints."""
    if results["kind"] == "reconstruction":
        windows = f"windows of {results['context']} tokens (code of {results['memory_size']} floats)"
    else:
        windows = f"windows of {results['context']} tokens, stride {results['stride']}"
    lines = [
        f"{results.get('model_class', 'model')} on {results.get('text_file', 'text')}: {results['text_tokens']:,} "
        f"tokens, {results['windows']:,} {windows}",
        f"loss            {results['loss_nats']:.4f} nats/token",
        f"perplexity      {results['perplexity']:.4f}",
        f"bits per token  {results['bits_per_token']:.4f}",
    ]
    if results["kind"] == "reconstruction":
        lines.append(f"token accuracy  {results['token_accuracy']:.4f}")
    lines.append(f"tokens scored   {results['tokens']:,}")
    return "\n".join(lines)
