"""Convert facebookresearch/MemoryMosaics training checkpoints (``Library/train_memory_mosaics.py``'s ``ckpt.pt``).

The training script saves ``{"model": state_dict, "optimizer": ..., "model_args": vars(args), "iter_num": int}``.
Two key layouts exist for the same function:

* the kernel ("eft") model, which the script imports, so real checkpoints use it: each memory has
  ``leaky_average.linear`` (the key projection) and ``leaky_average.leaky_beta_w_under`` / ``leaky_beta_u_under``
  (one parameter saved under two names); its keys are always a plain linear map, whatever ``k_fe_type`` /
  ``k_kernel_size`` say;
* the pure-torch ("naive") model: ``k_featurizer.{conv|linear}`` and ``leaky_key_beta``.

With ``torch.compile`` (the default) every key is prefixed ``_orig_mod.``. Both memories' key feature extractors,
the value feature extractor (``linearconv`` of any width and shift, or ``lowrlinearconv``), biases, persistent memory
tables, post-LN, ``attn_only`` and untied heads are all mapped. Architecture facts the tensors show (sizes, layers,
heads, bias, extractor kinds, tables, tying) come from the tensors and are checked against ``model_args``; the rest
(``v_shift``, ``pre_ln``, ``skip_tokens``, ``block_size``, dropouts) can only come from ``model_args`` (or
``--config``), with the research defaults (and a note) when neither has them.
"""

from __future__ import annotations

import re

import torch

from ..architectures import sources_of
from ..configuration.configuration_memory_mosaics import MemoryMosaicsConfig
from .common import (
    ConversionError,
    TensorMapper,
    load_checkpoint,
    reconcile,
    strip_wrapper_prefixes,
    take,
    warn_unknown_keys,
)

SOURCES = sources_of("memory_mosaics")  # the `memory-zoo convert` names of memory_zoo/architectures.py

# Research defaults of the settings no tensor reveals (train_memory_mosaics.py argparse defaults).
UNSEEN_DEFAULTS = {"v_shift": 1, "pre_ln": True, "skip_tokens": 0, "block_size": 512, "ic_dropout": 0.05,
                   "hd_dropout": 0.05}
# Every flag the training script records in model_args; the architecture ones are read, the rest kept as metadata.
RESEARCH_NAMES = {
    "vocab_size", "n_head", "n_embd", "n_layer", "v_shift", "block_size", "k_fe_type", "v_fe_type", "k_kernel_size",
    "v_kernel_size", "ic_dropout", "hd_dropout", "bias", "pmem_count", "pmem_size", "pre_ln", "weight_tying",
    "skip_tokens", "attn_only", "att_shift", "seed", "out_dir", "backend", "device", "dtype", "compile",
    "eval_interval", "save_checkpoint_interval", "log_interval", "eval_iters", "dataset", "batch_size",
    "learning_rate", "max_iters", "weight_decay", "beta1", "beta2", "grad_clip", "decay_type", "warmup_iters",
    "lr_decay_iters", "min_lr", "gamma", "milestone", "gradient_accumulation_steps",
}


def read_memory_mosaics_checkpoint(file) -> tuple[dict[str, torch.Tensor], dict]:
    """``(state_dict, model_args)`` of a research ``ckpt.pt`` (or of a bare state dict / safetensors file)."""
    checkpoint = load_checkpoint(file)
    model_args: dict = {}
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        model_args = checkpoint.get("model_args") or {}
        if not isinstance(model_args, dict):
            raise ConversionError(f"{file}: model_args should be a dict of the training flags, got "
                                  f"{type(model_args).__name__}.")
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(f"{file} holds neither a training checkpoint ({{'model': ..., 'model_args': ...}}) nor "
                              "a flat state dict of tensors.")
    return strip_wrapper_prefixes(checkpoint), dict(model_args)


def convert_memory_mosaics_checkpoint(file, source: str, research_config: dict | None = None):
    """Read ``file`` and convert it; ``research_config`` (``--config``) must agree with the checkpoint's model_args."""
    state_dict, model_args = read_memory_mosaics_checkpoint(file)
    for name, value in (research_config or {}).items():
        if name in model_args and model_args[name] != value:
            raise ConversionError(
                f"--config says {name}={value!r} but the checkpoint's model_args say {model_args[name]!r}; drop the "
                "--config entry or use the checkpoint it belongs to."
            )
    return convert_memory_mosaics_state_dict(state_dict, source, {**model_args, **(research_config or {})})


def _conv_as_linear(weight: torch.Tensor, key: str, channels: int) -> torch.Tensor:
    """A research ``Conv1d(C, C, K)`` weight ``[C, C, K]`` as our window projection ``[C, K * C]`` (oldest first)."""
    if weight.dim() != 3 or weight.shape[:2] != (channels, channels):
        raise ConversionError(f"{key} should be a Conv1d weight [{channels}, {channels}, kernel], got "
                              f"{tuple(weight.shape)}.")
    return weight.permute(0, 2, 1).reshape(channels, -1).contiguous()


def _features(mapper: TensorMapper, old: str, new: str, channels: int, role: str) -> tuple[str, int]:
    """Map one naive feature extractor; returns its (kind, kernel size)."""
    if old + "conv.weight" in mapper.source:
        weight = take(mapper.source, old + "conv.weight")
        mapper.target[new + "proj.weight"] = _conv_as_linear(weight, old + "conv.weight", channels)
        mapper.move_optional(old + "conv.bias", new + "proj.bias")
        return "linearconv", weight.shape[-1]
    if old + "linear.weight" in mapper.source:
        mapper.move(old + "linear.weight", new + "proj.weight")
        mapper.move_optional(old + "linear.bias", new + "proj.bias")
        mapper.move(old + "coef", new + "coef")
        return "lowrlinearconv", 2
    raise ConversionError(f"The checkpoint has neither {old}conv.weight nor {old}linear.weight: no {role} feature "
                          "extractor found.")


def _memory(mapper: TensorMapper, old: str, new: str, channels: int, eft: bool) -> tuple[str, int]:
    """Map what both memories share (keys, temperatures, output projection); returns the key extractor."""
    for name in ("kernel_beta", "value_beta"):
        mapper.move(old + name, new + name)
    mapper.move(old + "c_proj.weight", new + "o_proj.weight")
    mapper.move_optional(old + "c_proj.bias", new + "o_proj.bias")
    if not eft:
        mapper.move(old + "leaky_key_beta", new + "leaky_key_beta")
        return _features(mapper, old + "k_featurizer.", new + "key_features.", channels, "key")
    beta = mapper.move(old + "leaky_average.leaky_beta_w_under", new + "leaky_key_beta")
    twin = mapper.source.pop(old + "leaky_average.leaky_beta_u_under", None)
    if twin is not None and not torch.equal(twin, beta):
        raise ConversionError(
            f"{old}leaky_average.leaky_beta_u_under differs from leaky_beta_w_under: this checkpoint used a separate "
            "current-token weight (sep_w_on_t=True), which the Library model never does and memory-zoo does not "
            "implement."
        )
    mapper.move(old + "leaky_average.linear.weight", new + "key_features.proj.weight")
    mapper.move_optional(old + "leaky_average.linear.bias", new + "key_features.proj.bias")
    return "linearconv", 1


def _block_indices(state_dict: dict[str, torch.Tensor]) -> list[int]:
    indices = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"blocks\.(\d+)\.", key))})
    if not indices:
        if any(key.startswith("mosaic.") for key in state_dict):
            raise ConversionError(
                "This is a nanoMosaics checkpoint (`mosaic.*` keys): a different model (no logit scale, epsilon in "
                "the norms, other temperature clamps), not the Library model `memory-mosaics` converts."
            )
        raise ConversionError("The checkpoint has no `blocks.<i>.` tensors: it is not a Memory Mosaics checkpoint.")
    if indices != list(range(len(indices))):
        raise ConversionError(f"Block indices are not contiguous: {indices}; the checkpoint is incomplete.")
    return indices


def convert_memory_mosaics_state_dict(
    state_dict: dict[str, torch.Tensor], source: str, research_config: dict | None = None
) -> tuple[MemoryMosaicsConfig, dict[str, torch.Tensor], list[str]]:
    """Map a research state dict (either layout, prefixes already stripped) and its ``model_args``.

    Returns ``(config, state_dict of MemoryMosaicsForCausalLM, notes)``.
    """
    if source not in SOURCES:
        raise ConversionError(f"Unknown Memory Mosaics source {source!r}; expected one of {', '.join(SOURCES)}.")
    args = dict(research_config or {})
    warn_unknown_keys(args, RESEARCH_NAMES, source)
    notes: list[str] = []
    state_dict = strip_wrapper_prefixes(state_dict)
    blocks = _block_indices(state_dict)
    eft = any(".leaky_average." in key for key in state_dict)
    naive = any(".k_featurizer." in key for key in state_dict)
    if eft and naive:
        raise ConversionError("The checkpoint mixes the kernel (`leaky_average.*`) and pure-torch (`k_featurizer.*`) "
                              "key layouts; it was assembled from two models.")
    notes.append(f"key layout: {'kernel (eft) model' if eft else 'pure-torch (naive) model'}")
    mapper = TensorMapper(state_dict)

    embed = mapper.move("emb.weight", "model.embed_tokens.weight")
    vocab_size = reconcile(args, ["vocab_size"], embed.shape[0], "vocabulary size (emb rows)")
    hidden = reconcile(args, ["n_embd"], embed.shape[1], "model width (emb columns)")
    reconcile(args, ["n_layer"], len(blocks), "number of blocks")
    heads = reconcile(args, ["n_head"], take(dict(state_dict), "blocks.0.attn.kernel_beta").shape[0],
                      "number of heads (kernel_beta length)")
    if hidden % heads:
        raise ConversionError(f"n_embd={hidden} is not divisible by n_head={heads}; the checkpoint is inconsistent.")

    tie = bool(args.get("weight_tying", True))
    head = mapper.source.pop("head.weight", None)
    if head is None:
        if not tie:
            raise ConversionError("The checkpoint has no head.weight but model_args say weight_tying=False.")
    elif head.data_ptr() == embed.data_ptr() or torch.equal(head, embed):
        tie = reconcile(args, ["weight_tying"], True, "tied embeddings (head.weight equals emb.weight)")
    else:
        tie = reconcile(args, ["weight_tying"], False, "untied embeddings (head.weight differs from emb.weight)")
        mapper.target["lm_head.weight"] = head

    attn_only = not any(key.startswith("blocks.0.pmem.") for key in state_dict)
    reconcile(args, ["attn_only"], attn_only, "attn_only (no persistent memory tensors)")
    bias = "blocks.0.ln1.bias" in state_dict
    reconcile(args, ["bias"], bias, "bias (LayerNorm biases present)")
    pmem_count = len([k for k in state_dict if re.fullmatch(r"blocks\.0\.pmem\.pmem\.M_k\d+", k)])
    pmem_size = state_dict["blocks.0.pmem.pmem.M_k0"].shape[2] if pmem_count else int(args.get("pmem_size", 2688))
    if not attn_only:
        reconcile(args, ["pmem_count"], pmem_count, "number of persistent memory tables (M_k<i>)")
        reconcile(args, ["pmem_size"], pmem_size, "persistent memory size (M_k0 rows)")

    key_kinds, value_kinds = set(), set()
    for i in blocks:
        old, new = f"blocks.{i}.", f"model.layers.{i}."
        for research, ours in (("ln1", "input_layernorm"), ("ln2", "post_attention_layernorm")):
            if research == "ln2" and attn_only:
                continue
            mapper.move(old + research + ".weight", new + ours + ".weight")
            if bias:
                mapper.move(old + research + ".bias", new + ours + ".bias")
        key_kinds.add(_memory(mapper, old + "attn.", new + "attn.", hidden, eft))
        value_kinds.add(_features(mapper, old + "attn.v_featurizer.", new + "attn.value_features.", hidden, "value"))
        if not attn_only:
            key_kinds.add(_memory(mapper, old + "pmem.", new + "pmem.", hidden, eft))
            tables = [take(mapper.source, old + f"pmem.pmem.M_{kind}{m}") for kind in "kv" for m in range(pmem_count)]
            for kind, chunk in (("keys", tables[:pmem_count]), ("values", tables[pmem_count:])):
                if any(t.shape != (1, heads, pmem_size, hidden // heads) for t in chunk):
                    raise ConversionError(f"{old}pmem.pmem tables should be [1, {heads}, {pmem_size}, "
                                          f"{hidden // heads}], got {[tuple(t.shape) for t in chunk]}.")
                mapper.target[new + f"pmem.memory_{kind}"] = torch.cat(chunk, dim=0)
    if len(key_kinds) != 1 or len(value_kinds) != 1:
        raise ConversionError(f"Feature extractors differ between blocks (keys {key_kinds}, values {value_kinds}).")
    (key_kind, key_size), (value_kind, value_size) = key_kinds.pop(), value_kinds.pop()
    if eft and (args.get("k_fe_type", "linearconv"), args.get("k_kernel_size", 1)) != ("linearconv", 1):
        notes.append(f"model_args say k_fe_type={args.get('k_fe_type')!r}, k_kernel_size={args.get('k_kernel_size')}, "
                     "but the kernel (eft) model ignores both: its keys are a plain linear map, converted as such")
    elif not eft:
        reconcile(args, ["k_fe_type"], key_kind, "key feature extractor type")
        reconcile(args, ["k_kernel_size"], key_size, "key kernel size")
    reconcile(args, ["v_fe_type"], value_kind, "value feature extractor type")
    reconcile(args, ["v_kernel_size"], value_size, "value kernel size")
    mapper.move("ln_out.weight", "model.norm.weight")
    if bias:
        mapper.move("ln_out.bias", "model.norm.bias")
    if mapper.source:
        raise ConversionError(f"Unexpected tensors in the checkpoint: {', '.join(sorted(mapper.source))}.")

    unseen = {}
    for name, default in UNSEEN_DEFAULTS.items():
        if name not in args:
            notes.append(f"{name} not recorded in model_args: using the research default {default!r}")
        unseen[name] = args.get(name, default)
    if args.get("att_shift", 0) != 0:
        notes.append(f"model_args att_shift={args['att_shift']} ignored, as the research model hard-codes 0")
    config = MemoryMosaicsConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        block_size=int(unseen["block_size"]),
        key_feature_extractor=key_kind,
        key_kernel_size=key_size,
        value_feature_extractor=value_kind,
        value_kernel_size=value_size,
        value_shift=int(unseen["v_shift"]),
        pmem_size=pmem_size,
        pmem_count=max(pmem_count, 1),
        attn_only=attn_only,
        pre_layernorm=bool(unseen["pre_ln"]),
        bias=bias,
        skip_tokens=int(unseen["skip_tokens"]),
        attention_dropout=float(unseen["ic_dropout"]),
        hidden_dropout=float(unseen["hd_dropout"]),
        tie_word_embeddings=tie,
    )
    return config, mapper.target, notes


__all__ = ["SOURCES", "convert_memory_mosaics_checkpoint", "convert_memory_mosaics_state_dict",
           "read_memory_mosaics_checkpoint"]

# The converter entry point `memory_zoo.conversion.convert` calls.
convert_checkpoint = convert_memory_mosaics_checkpoint
