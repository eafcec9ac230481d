"""Turn research checkpoints into Hub-format model folders (`memory-zoo convert SOURCE CHECKPOINT OUTPUT_DIR`)."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

from .._version import __version__
from ..architectures import ARCHITECTURES, BY_SOURCE
from ..modeling.zoo_loading import non_finite_tensors
from .common import (
    CheckpointRefused,
    ConversionError,
    check_output_folder,
    checkpoint_digest,
    find_checkpoint_file,
    load_research_config,
    load_state_dict,
    load_tokenizer,
    logger,
    staged_folder,
)


def _converter(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def _model_class(source: str, config) -> type:
    """The class a converted checkpoint of `source` loads into: the record's causal LM (else its base model), unless
    the converter module picks another for this config (`model_class_name(config, default)`)."""
    record = BY_SOURCE[source]
    auto = "AutoModelForCausalLM" if record.causal_lm_class_name else "AutoModel"
    name = record.auto_classes[auto]
    choose = getattr(_converter(record.converter), "model_class_name", None)
    if choose is not None:
        name = choose(config, name)
    return getattr(importlib.import_module(f"memory_zoo.modeling.{record.modeling_module}"), name)


# SOURCE name -> (research repository, checkpoint converter, model class chooser), derived from the records in
# memory_zoo/architectures.py. A checkpoint converter reads the file and returns (config, state dict, notes).
SOURCES = {source: (record.research.repository, _converter(record.converter).convert_checkpoint,
                    lambda config, source=source: _model_class(source, config))
           for record in ARCHITECTURES for source in record.sources}
# Sources whose checkpoint is one weights file (a folder is searched for it); the others read a whole folder.
_SINGLE_FILE_SOURCES = {source for record in ARCHITECTURES if not record.checkpoint_is_folder for source in record.sources}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_tensors(converted: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], checkpoint: Path,
                   allow_non_finite: bool) -> None:
    """Refuse tensors whose shape the research config does not predict, and (unless allowed) non-finite weights."""
    mismatched = [f"{key} {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})"
                  for key, tensor in converted.items() if key in expected and tensor.shape != expected[key].shape]
    if mismatched:
        shown = ", ".join(mismatched[:8]) + (f" and {len(mismatched) - 8} more" if len(mismatched) > 8 else "")
        raise ConversionError(
            f"{checkpoint}: {len(mismatched)} tensor(s) do not have the shape the configuration implies: {shown}. "
            "The research config passed with --config does not describe this checkpoint: pass the config it was "
            "trained with, or leave --config out where the converter can read the sizes from the tensors."
        )
    bad = non_finite_tensors(converted.items())
    if bad:
        shown = ", ".join(bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
        message = (f"{checkpoint}: {len(bad)} tensor(s) hold NaN or infinite values ({shown}); every output that reads "
                   "them would be NaN. The checkpoint was saved after training diverged, or is damaged: convert an "
                   "earlier one")
        if not allow_non_finite:
            raise ConversionError(message + ", or pass --allow-non-finite (allow_non_finite=True) to convert it anyway.")
        logger.warning("%s (converted anyway: allow_non_finite).", message)


def convert(
    source: str,
    checkpoint: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: str | os.PathLike | dict | None = None,
    dtype: str = "float32",
    tokenizer: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    research_commit: str | None = None,
    tolerance: float = 1e-5,
    overwrite: bool = False,
    allow_non_finite: bool = False,
    progress: Callable[[str], None] | None = None,
):
    """Convert the research checkpoint at ``checkpoint`` and save it (weights, config, remote code) to ``output_dir``.

    ``config`` is a JSON file (or dict) with the research code's own hyperparameter names, checked against what the
    tensor shapes imply; ``tokenizer`` an optional tokenizer folder saved alongside. ``reference`` is a safetensors
    file of outputs the research code produced for this checkpoint (``input_ids`` and ``logits``): the converted
    model must reproduce them within ``tolerance`` (float32), and the measured difference is recorded in
    ``conversion.json`` (and so on the model card) with ``research_commit``. Returns the converted model.

    ``output_dir`` must be new or empty unless ``overwrite``; the model is written to a temporary sibling folder and
    moved into place at the end, so a failed or interrupted conversion leaves ``output_dir`` as it was.

    Weights holding NaN or infinite values are refused (a checkpoint saved after training diverged) unless
    ``allow_non_finite``, which converts them with a warning. ``progress`` is called with each step as it begins (the
    command line shows it on its progress line).
    """
    step = progress or (lambda text: None)
    if source not in SOURCES:
        raise ConversionError(f"Unknown SOURCE {source!r}; choose one of: {', '.join(sorted(SOURCES))}.")
    if dtype not in DTYPES:
        raise ConversionError(f"Unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}.")
    repository, convert_checkpoint, model_class = SOURCES[source]
    output_dir = Path(output_dir)
    check_output_folder(output_dir, overwrite, [checkpoint, config, tokenizer, reference])
    research_config = config if isinstance(config, dict) else load_research_config(config)
    # a weights file, or a folder: one holding such a file, or a checkpoint made of several files (distributed)
    weights_file = find_checkpoint_file(checkpoint) if source in _SINGLE_FILE_SOURCES else Path(checkpoint)
    if not weights_file.exists():
        raise ConversionError(f"Checkpoint {weights_file} does not exist.")
    step(f"reading the checkpoint {weights_file}")
    try:
        model_config, state_dict, notes = convert_checkpoint(weights_file, source, research_config)
    except RuntimeError as error:  # torch refusing a reshape, cat or copy of a tensor the mapping did not expect
        raise ConversionError(
            f"{weights_file}: a tensor does not have the shape a {source} checkpoint of this configuration has "
            f"({' '.join(str(error).split())}). Check that SOURCE is right and that --config is the config this "
            "checkpoint was trained with."
        ) from error

    tok = None
    if tokenizer is not None and not hasattr(model_config, "vocab_size"):
        raise ConversionError(f"A {source} model reads embeddings, not tokens: it has no tokenizer. Save the tokenizer "
                              "with the embedding model (SOURCE masked-mixer) instead.")
    if tokenizer is not None:
        tok = load_tokenizer(tokenizer)
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            setattr(model_config, name, getattr(tok, name))
        if len(tok) > model_config.vocab_size:
            raise ConversionError(f"The tokenizer has {len(tok)} tokens but the checkpoint only {model_config.vocab_size} "
                                  "embeddings: it is not the tokenizer this model was trained with.")

    if not isinstance(model_class, type):
        model_class = model_class(model_config)
    step(f"loading the weights into {model_class.__name__}")
    model = model_class(model_config)
    _check_tensors(state_dict, model.state_dict(), weights_file, allow_non_finite)
    result = model.load_state_dict(state_dict, strict=False)
    tied = getattr(model_config, "tie_word_embeddings", False)
    missing = [k for k in result.missing_keys if not (tied and k == "lm_head.weight")]
    if missing or result.unexpected_keys:
        raise ConversionError(f"Internal mapping error: missing {missing}, unexpected {result.unexpected_keys}.")
    if tied:
        model.tie_weights()
    if reference is not None:
        step(f"comparing the outputs with {reference}")
    parity = check_reference(model.eval(), reference, tolerance) if reference is not None else None
    model = model.to(DTYPES[dtype]).eval()
    if getattr(model_config, "memory_value_dtype", None):  # value tables were cast with the rest
        model_config.memory_value_dtype = dtype

    info = {
        "source": source,
        "research_repository": repository,
        "research_commit": research_commit,
        "checkpoint": str(weights_file),
        "checkpoint_sha256": checkpoint_digest(weights_file),
        "research_config": research_config,
        "dtype": dtype,
        "notes": notes,
        "memory_zoo_version": __version__,
    }
    if parity is not None:
        info["parity"] = parity
    step(f"saving to {output_dir}")
    with staged_folder(output_dir) as staging:
        model.save_pretrained(staging)
        if tok is not None:
            tok.save_pretrained(staging)
        (staging / "conversion.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    for note in notes:
        logger.info("%s", note)
    return model


def check_reference(model, reference: str | os.PathLike, tolerance: float = 1e-5) -> dict:
    """Compare ``model``'s logits with research outputs saved for the same checkpoint; returns the parity record.

    ``reference`` holds ``input_ids [B, T]`` and ``logits`` in our layout ``[B, T, V]`` or the research layout
    ``[B, V, T]``; a research output with one more position than the input (a memory token in front, research
    ``MemoryMixer``) drops that position. A retrieval mixer's reference holds ``inputs_embeds [B, n, D]`` and the
    research output as ``logits`` (``[B, n - 1, 1]``, or ``[B, n, 1]`` with the query slot). Raises a
    ConversionError when the difference exceeds ``tolerance``.
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(reference))
    except Exception as error:  # safetensors raises several types for unreadable files
        raise ConversionError(f"Could not read the reference outputs {reference}: {error}.") from error
    ours, expected, counts = (_candidate_scores if "inputs_embeds" in tensors else _token_logits)(model, tensors, reference)
    difference = (ours - expected).abs().max().item()
    if not difference <= tolerance:
        raise ConversionError(
            f"The converted model differs from the reference outputs by {difference:.3g} (tolerance {tolerance:g}): "
            "the checkpoint, --config or reference do not belong together, or the research code differs from the "
            "version this converter follows. Nothing was saved."
        )
    name = "max_abs_score_diff" if "inputs_embeds" in tensors else "max_abs_logit_diff"
    return {"reference": Path(reference).name, name: difference, "tolerance": tolerance, **counts, "dtype": "float32"}


def _token_logits(model, tensors: dict, reference) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Our logits for the reference's `input_ids`, and the reference `logits` in our layout."""
    if "input_ids" not in tensors or "logits" not in tensors:
        raise ConversionError(f"{reference} must hold `input_ids` [batch, seq_len] and `logits` (the research model's "
                              f"outputs for them); it has {sorted(tensors)}.")
    input_ids, expected = tensors["input_ids"].long(), tensors["logits"].float()
    with torch.no_grad():
        logits = model.float()(input_ids).logits.float()
    if expected.shape != logits.shape and expected.dim() == 3 and expected.shape[1] == logits.shape[-1]:
        expected = expected.transpose(1, 2)  # research layout [B, V, T]
    if expected.shape[1] == logits.shape[1] + 1:
        expected = expected[:, 1:]  # the research output of a memory token's own position
    if expected.shape != logits.shape:
        raise ConversionError(f"The reference logits {tuple(tensors['logits'].shape)} do not fit the model's "
                              f"{tuple(logits.shape)} for input_ids {tuple(input_ids.shape)}.")
    return logits, expected, {"tokens": int(input_ids.numel())}


def _candidate_scores(model, tensors: dict, reference) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """A retrieval mixer's scores for the reference's `inputs_embeds`, and the reference `logits` as `[B, n - 1]`."""
    if "logits" not in tensors:
        raise ConversionError(f"{reference} must hold `inputs_embeds` [batch, n, dim] and `logits` (the research "
                              f"model's output for them); it has {sorted(tensors)}.")
    inputs_embeds, expected = tensors["inputs_embeds"].float(), tensors["logits"].float()
    with torch.no_grad():
        scores = model.float()(inputs_embeds=inputs_embeds).logits.float()
    expected = expected.squeeze(-1) if expected.dim() == scores.dim() + 1 else expected
    if expected.shape[-1] == scores.shape[-1] + 1:
        expected = expected[..., 1:]  # the research output of optimized_train_retrieval.py keeps the query slot
    if expected.shape != scores.shape:
        raise ConversionError(f"The reference logits {tuple(tensors['logits'].shape)} do not fit the model's scores "
                              f"{tuple(scores.shape)} for inputs_embeds {tuple(inputs_embeds.shape)}.")
    return scores, expected, {"rows": int(scores.shape[0])}


__all__ = ["CheckpointRefused", "ConversionError", "DTYPES", "SOURCES", "check_reference", "convert", "load_state_dict"]
