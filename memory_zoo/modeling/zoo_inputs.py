"""What users pass at the model boundary, checked once for every memory-zoo model before any layer sees it.

``ZooPreTrainedModel`` wraps every subclass's ``forward`` with ``checks_model_inputs``: token ids must be integer,
``[batch, seq_len]``, non-empty and inside the vocabulary; a 2-D ``attention_mask`` must have the batch of the ids and
cover at least their positions; ``labels`` must have the shape of the ids, or, for a model whose labels are one per
sequence (``labels_per_sequence``: the sequence classifiers), one entry per row (class ids inside ``num_labels``).
Each error names the argument, what was seen and the fix, where torch would otherwise fail deep inside an embedding or a loss with an index error (or, on a
GPU, a device-side assert). The checks are a few comparisons and one min/max over the ids (benchmarks/input_checks.py
measures their cost); on an accelerator the min/max is skipped in training steps, which it would synchronise. This
file travels with every saved model.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import torch

_Function = TypeVar("_Function", bound=Callable[..., Any])
_CHECKED = ("input_ids", "attention_mask", "labels")
# Set while a checked forward runs: the models' own calls of inner models (a causal LM's backbone, a memory model's
# decoder) pass what was already checked, so only the outermost call pays for the checks.
_inside = threading.local()


def check_model_inputs(model: Any, input_ids: Any, attention_mask: Any = None, labels: Any = None) -> None:
    """Raise a TypeError/ValueError naming the argument unless the inputs fit ``model``; see the module docstring."""
    if input_ids is None:
        return
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a tensor of token ids [batch, seq_len], got {type(input_ids).__name__}: "
                        "tokenize with return_tensors='pt'.")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids (torch.long), got {input_ids.dtype}: pass the "
                        "tokenizer's ids (input_ids.long()), or pass vectors as inputs_embeds instead.")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}: add the batch "
                         "dimension with input_ids[None] (or unsqueeze(0)).")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): every row needs at least one token. "
                         "An empty prompt needs a start token (e.g. the tokenizer's bos_token).")
    vocab_size = getattr(model.config, "vocab_size", None)
    # The range check reads the ids back to the host: free on the CPU, one synchronisation on an accelerator. A
    # training step there stays asynchronous (the check is skipped); inference and generation keep it.
    on_host = input_ids.device.type == "cpu" or not (model.training and torch.is_grad_enabled())
    if isinstance(vocab_size, int) and on_host and not torch.compiler.is_compiling():
        low, high = (int(value) for value in torch.aminmax(input_ids))
        if low < 0 or high >= vocab_size:
            raise ValueError(
                f"input_ids holds token ids from {low} to {high}, but this model's vocabulary has {vocab_size} ids "
                f"(0 to {vocab_size - 1}): use the tokenizer saved with the model (a tokenizer with more tokens, or "
                "padding with -100, gives such ids)."
            )
    batch, length = input_ids.shape
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2:
        if attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not fit input_ids {tuple(input_ids.shape)}: it "
                "must be [batch, seq_len] with the batch of input_ids, covering the cached and the new tokens (pass "
                "the attention_mask the tokenizer returned with these input_ids)."
            )
    if isinstance(labels, torch.Tensor) and getattr(model, "labels_per_sequence", False):
        check_sequence_labels(model, labels, batch, on_host)
    elif isinstance(labels, torch.Tensor):
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels {tuple(labels.shape)} must have the shape of input_ids {tuple(input_ids.shape)} "
                             "(they are shifted inside: pass labels=input_ids, with -100 where no loss is wanted).")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must hold integer token ids, got {labels.dtype}.")


def check_sequence_labels(model: Any, labels: torch.Tensor, batch: int, on_host: bool = True) -> None:
    """Raise a ValueError naming the fix unless ``labels`` fit a sequence classifier's ``batch`` rows.

    As transformers reads them (``ForSequenceClassificationLoss``): ``[batch]`` class ids (single-label) or numbers
    (regression), or ``[batch, num_labels]`` 0/1 targets (multi-label) or numbers (regression with several outputs).
    Class ids outside ``0 .. num_labels - 1`` (other than the ignored -100) are refused here, where cross-entropy would
    fail with an index error (on a GPU, a device-side assert); the range check reads the labels back to the host, so it
    follows the rule of the token-id check.
    """
    config = model.config
    num_labels = config.num_labels
    shape = tuple(labels.shape)
    fits = (labels.dim() == 0 and batch == 1) or (
        labels.dim() in (1, 2) and shape[0] == batch and (labels.dim() == 1 or shape[1] in (1, num_labels)))
    if not fits:
        raise ValueError(
            f"labels {shape} do not fit {batch} sequence(s) of input_ids: a sequence classifier takes one label per row, "
            f"[batch] = [{batch}] class ids (single-label classification) or numbers (regression), or [batch, "
            f"num_labels] = [{batch}, {num_labels}] 0/1 targets (multi-label classification, config.problem_type="
            "'multi_label_classification') or numbers (regression with several outputs)."
        )
    class_ids = not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool)
    single_label = config.problem_type == "single_label_classification" or (
        config.problem_type is None and num_labels > 1 and class_ids)
    if single_label and class_ids and on_host and not torch.compiler.is_compiling() and labels.numel():
        bad = (labels != -100) & ((labels < 0) | (labels >= num_labels))
        if bool(bad.any()):
            raise ValueError(
                f"labels hold class id {int(labels[bad].flatten()[0])}, but this classifier has num_labels={num_labels} "
                f"classes (ids 0 to {num_labels - 1}; -100 is ignored): build it with the number of classes of your "
                "data (from_pretrained(..., num_labels=N), or id2label/label2id), or map the labels to 0 .. N - 1."
            )


def checks_model_inputs(forward: _Function) -> _Function:
    """Wrap a model's ``forward`` so that ``check_model_inputs`` sees its inputs, passed by name or by position."""
    if getattr(forward, "_checks_model_inputs", False):
        return forward
    parameters = list(inspect.signature(forward).parameters)[1:]  # after self
    positions = {name: parameters.index(name) for name in _CHECKED if name in parameters}

    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        if getattr(_inside, "forward", False):
            return forward(self, *args, **kwargs)
        found = {}
        for name in _CHECKED:
            if name in kwargs:
                found[name] = kwargs[name]
            elif positions.get(name, len(args)) < len(args):
                found[name] = args[positions[name]]
        check_model_inputs(self, found.get("input_ids"), found.get("attention_mask"), found.get("labels"))
        _inside.forward = True
        try:
            return forward(self, *args, **kwargs)
        finally:
            _inside.forward = False

    wrapper._checks_model_inputs = True
    return wrapper  # type: ignore[return-value]


__all__ = ["check_model_inputs", "check_sequence_labels", "checks_model_inputs"]
