"""Convert blbadger/maskedmixers training checkpoints (HF Trainer ``model.safetensors`` of plain modules).

Sources and the research code they come from (all in ``mixer_lm/``):

* ``masked-mixer``: ``LanguageMixer`` of ``mixer_trainer_tinystories.py`` and its siblings; flat token mixing
  (``conv.weight [L, L, 1]``) or the expanded one (``expand_conv=True``: ``conv.0``/``conv.2``, any expansion).
* ``multiheaded-mixer``: ``multiheaded_mixer_tinystories.py``. Every head computes the last head's softmax-
  reparameterised mixing of the normalised input, so the block is ``out_proj(concat([c] * n))``; stored here as
  one matrix (``mixing_softmax=True``) and ``out_proj`` with the ``n`` column blocks summed, which is exact.
  ``proj_head.*`` and the other heads' matrices never reach the output and are dropped.
* ``multiconv-mixer``: ``MultiHeadedMixer`` of ``mixer_multiconv.py``. The current ``MixerHead`` (per-head
  projection, masked mixing, ``out_proj``) only runs with ``heads=1``; the older ``OldMixerHead`` (last-head
  bug, no softmax, ``out_proj`` of ``heads * D`` inputs) is recognised by that shape, or chosen for ``heads=1``
  with ``"mixer_head": "OldMixerHead"`` in ``--config``. The unused ``wte_second`` is dropped.

The research code stores unmasked mixing matrices (its forward masked them in place); ``tril`` is applied here,
and again functionally in every forward of the converted model.
"""

from __future__ import annotations

import re

import torch

from ..architectures import sources_of
from ..configuration.configuration_masked_mixer import MaskedMixerConfig
from .common import ConversionError, TensorMapper, load_state_dict, reconcile, take, warn_unknown_keys

SOURCES = sources_of("masked_mixer")  # the `memory-zoo convert` names of memory_zoo/architectures.py

# Research names --config may carry: constructor arguments and the module globals the classes read.
RESEARCH_NAMES = {
    "n_vocab", "dim", "depth", "tokenized_length", "length", "tie_weights", "expand_conv", "expansion_factor",
    "heads", "n_heads", "hidden_dim", "mixer_head", "device",
}


def _mixing_matrix(weight: torch.Tensor, key: str) -> torch.Tensor:
    """A research ``Conv1d(L_in, L_out, 1)`` weight ``[L_out, L_in, 1]`` as a ``[L_out, L_in]`` matrix."""
    if weight.dim() != 3:
        raise ConversionError(f"{key} should be a Conv1d weight [L_out, L_in, kernel], got shape {tuple(weight.shape)}.")
    if weight.shape[-1] != 1:
        raise ConversionError(
            f"{key} has a feature-axis kernel of {weight.shape[-1]} (research `kernel_dim`); only kernel 1 was ever "
            "trained in the research code and is supported."
        )
    return weight[..., 0]


def block_indices(state_dict: dict[str, torch.Tensor], model: str = "masked-mixer") -> list[int]:
    """The indices `i` of the research `mixerblocks.<i>.` tensors, checked to be `0 ... depth - 1`."""
    indices = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"mixerblocks\.(\d+)\.", key))})
    if not indices:
        raise ConversionError(f"The checkpoint has no `mixerblocks.<i>.` tensors: it is not a {model} checkpoint.")
    if indices != list(range(len(indices))):
        raise ConversionError(f"Block indices are not contiguous: {indices}; the checkpoint is incomplete.")
    return indices


def move_norms_and_mlp(mapper: TensorMapper, old: str, new: str, mixing_norm: str = "token_norm") -> None:
    """Move a research block's two LayerNorms and its FeedForward, laid out alike in every mixer file."""
    for research, ours in (("seq_layernorm", mixing_norm), ("patch_layernorm", "channel_norm"),
                           ("patch_ff.0", "mlp.up_proj"), ("patch_ff.2", "mlp.down_proj")):
        mapper.move(old + research + ".weight", new + ours + ".weight")
        mapper.move(old + research + ".bias", new + ours + ".bias")


def convert_masked_mixer_state_dict(
    state_dict: dict[str, torch.Tensor], source: str, research_config: dict | None = None
) -> tuple[MaskedMixerConfig, dict[str, torch.Tensor], list[str]]:
    """Map a research state dict to a [`MaskedMixerConfig`] and a ``MaskedMixerForCausalLM`` state dict.

    Returns ``(config, state_dict, notes)``; ``notes`` say what was folded or dropped.
    """
    if source not in SOURCES:
        raise ConversionError(f"Unknown masked-mixer source {source!r}; expected one of {', '.join(SOURCES)}.")
    research_config = dict(research_config or {})
    warn_unknown_keys(research_config, RESEARCH_NAMES, source)
    notes: list[str] = []
    mapper = TensorMapper(state_dict)
    blocks = block_indices(state_dict)

    embed = mapper.move("wte.weight", "model.embed_tokens.weight")
    vocab_size = reconcile(research_config, ["n_vocab"], embed.shape[0], "vocabulary size (wte rows)")
    hidden = reconcile(research_config, ["dim"], embed.shape[1], "model width (wte columns)")
    reconcile(research_config, ["depth"], len(blocks), "number of mixerblocks")

    tie = bool(research_config.get("tie_weights", False))
    if "lm_head.weight" in mapper.source:
        head = mapper.move("lm_head.weight", "lm_head.weight")
        if head.data_ptr() == embed.data_ptr():  # a tied model pickled with torch.save keeps the shared storage
            tie = reconcile(research_config, ["tie_weights"], True, "tied embeddings (shared wte/lm_head storage)")
            notes.append("lm_head shares wte's storage: saved as tied embeddings")
        if tie and not torch.equal(head, embed):
            raise ConversionError("--config says tie_weights=true, but lm_head.weight differs from wte.weight.")
    elif tie:
        notes.append("lm_head tied to the input embedding (tie_weights=true)")
    else:
        raise ConversionError("The checkpoint has no lm_head.weight; set \"tie_weights\": true in --config if the "
                              "research model was built with tied weights.")
    if source == "multiconv-mixer" and "wte_second.weight" in mapper.source:
        mapper.source.pop("wte_second.weight")
        mapper.source.pop("wte_second.bias", None)
        notes.append("dropped wte_second (defined but never used by MultiHeadedMixer.forward)")

    settings: dict = {}
    for i in blocks:
        old, new = f"mixerblocks.{i}.", f"model.layers.{i}."
        move_norms_and_mlp(mapper, old, new)
        if source == "masked-mixer":
            block = _convert_plain_block(mapper, old, new + "token_mixer.", research_config)
        elif source == "multiheaded-mixer":
            block = _convert_last_head_block(mapper, old, new + "token_mixer.", research_config, hidden, softmax=True)
        else:
            block = _convert_multiconv_block(mapper, old, new + "token_mixer.", research_config, hidden)
        if settings and block != settings:
            raise ConversionError(f"Block {i} is built differently from block 0 ({block} vs {settings}).")
        settings = block

    if mapper.source:
        raise ConversionError(
            f"The checkpoint has tensors a {source} model does not have: {', '.join(sorted(mapper.source))}. "
            "Check SOURCE (masked-mixer, multiheaded-mixer or multiconv-mixer) against the research script."
        )
    length = settings.pop("length")
    reconcile(research_config, ["tokenized_length", "length"], length, "context length (mixing matrix size)")
    config = MaskedMixerConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=len(blocks),
        max_position_embeddings=length,
        intermediate_size=mapper.target["model.layers.0.mlp.up_proj.weight"].shape[0],
        tie_word_embeddings=tie,
        **settings,
    )
    if config.mixing_out_proj and config.mixing_head_dim is None:
        notes.append(
            "last-head multi-head blocks folded: every head used the last head's matrix, so out_proj's column blocks "
            "were summed and proj_head.* and the other heads' matrices (never used) dropped"
            + ("; mixing_softmax=True reproduces the research model's first forward after loading"
               if config.mixing_softmax else "")
        )
    if config.mixing_expanded:
        notes.append("expanded mixing: rows >= L of conv.0 (never reachable by a causal output) dropped")
    return config, mapper.target, notes


def _mixing(mapper: TensorMapper, weight_key: str, bias_key: str, rows: int | None = None,
            cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Take one research mixing conv as a masked ``[L, L]`` matrix and its ``[L]`` bias (None without one)."""
    weight = _mixing_matrix(take(mapper.source, weight_key), weight_key)
    weight = weight[:rows, :cols] if rows or cols else weight
    if weight.shape[0] != weight.shape[1]:
        raise ConversionError(f"{weight_key} is not square after slicing: {tuple(weight.shape)}.")
    bias = take(mapper.source, bias_key)[: weight.shape[0]] if bias_key in mapper.source else None
    return torch.tril(weight), bias


def _store_mixing(mapper: TensorMapper, target: str, weights: list[torch.Tensor], biases: list[torch.Tensor | None]) -> dict:
    """Store per-head matrices as one ``MaskedMixerPositionMixing`` (``[H, L, L]`` weight, ``[H, L]`` bias)."""
    mapper.target[target + ".weight"] = torch.stack(weights).contiguous()
    if biases[0] is not None:
        mapper.target[target + ".bias"] = torch.stack(biases).contiguous()
    return {"length": weights[0].shape[0], "mixing_bias": biases[0] is not None}


def _convert_plain_block(mapper: TensorMapper, old: str, new: str, research_config: dict) -> dict:
    if old + "conv.weight" in mapper.source:
        reconcile(research_config, ["expand_conv"], False, "flat token mixing (conv.weight)")
        weight, bias = _mixing(mapper, old + "conv.weight", old + "conv.bias")
        return _store_mixing(mapper, new + "mix", [weight], [bias])
    if old + "conv.0.weight" in mapper.source:
        reconcile(research_config, ["expand_conv"], True, "expanded token mixing (conv.0 / conv.2)")
        inner, length = mapper.source[old + "conv.0.weight"].shape[:2]
        if inner % length:
            raise ConversionError(f"{old}conv.0.weight has {inner} rows, not a multiple of L = {length}.")
        reconcile(research_config, ["expansion_factor"], inner // length, "expansion factor (conv.0 rows / L)")
        # Rows >= L of the first matrix feed hidden rows that the second (masked) matrix never reads: dropping
        # them is exact, and makes every expansion factor the same model.
        weight, bias = _mixing(mapper, old + "conv.0.weight", old + "conv.0.bias", rows=length)
        _store_mixing(mapper, new + "mix", [weight], [bias])
        weight, bias = _mixing(mapper, old + "conv.2.weight", old + "conv.2.bias", cols=length)
        return {**_store_mixing(mapper, new + "mix_out", [weight], [bias]), "mixing_expanded": True}
    raise ConversionError(f"No token-mixing weights under {old}conv (expected conv.weight or conv.0.weight); "
                          "for checkpoints with `mixerhead.` keys use SOURCE multiheaded-mixer or multiconv-mixer.")


def _head_count(mapper: TensorMapper, old: str) -> int:
    heads = {int(m.group(1)) for key in mapper.source if (m := re.match(re.escape(old) + r"mixerhead\.convs\.(\d+)\.", key))}
    if not heads:
        raise ConversionError(f"No {old}mixerhead.convs.* tensors; for a flat mixer use SOURCE masked-mixer.")
    return len(heads)


def _convert_last_head_block(mapper: TensorMapper, old: str, new: str, research_config: dict, hidden: int,
                             softmax: bool) -> dict:
    heads = _head_count(mapper, old)
    reconcile(research_config, ["n_heads", "heads"], heads, "number of heads (mixerhead.convs.*)")
    out_weight = take(mapper.source, old + "mixerhead.out_proj.weight")
    if out_weight.shape != (hidden, hidden * heads):
        raise ConversionError(f"{old}mixerhead.out_proj.weight is {tuple(out_weight.shape)}; a last-head mixer with "
                              f"{heads} heads of width {hidden} needs ({hidden}, {hidden * heads}).")
    for h in range(heads):
        projection = mapper.source.pop(f"{old}mixerhead.proj_head.{h}.weight", None)
        if projection is not None:
            reconcile(research_config, ["hidden_dim"], projection.shape[0], "projection width (proj_head rows)")
        mapper.source.pop(f"{old}mixerhead.proj_head.{h}.bias", None)
    for h in range(heads - 1):
        take(mapper.source, f"{old}mixerhead.convs.{h}.weight")
        mapper.source.pop(f"{old}mixerhead.convs.{h}.bias", None)
    last = f"{old}mixerhead.convs.{heads - 1}"
    weight, bias = _mixing(mapper, last + ".weight", last + ".bias")
    settings = _store_mixing(mapper, new + "mix", [weight], [bias])
    # concat([c] * n) @ W.T == c @ (sum of W's n column blocks).T
    mapper.target[new + "out_proj.weight"] = out_weight.view(hidden, heads, hidden).sum(1).contiguous()
    mapper.target[new + "out_proj.bias"] = take(mapper.source, old + "mixerhead.out_proj.bias")
    return {**settings, "mixing_out_proj": True, "mixing_softmax": softmax}


def _convert_multiconv_block(mapper: TensorMapper, old: str, new: str, research_config: dict, hidden: int) -> dict:
    heads = _head_count(mapper, old)
    out_in = mapper.source[old + "mixerhead.out_proj.weight"].shape[1]
    head_class = research_config.get("mixer_head", "OldMixerHead" if heads > 1 and out_in == heads * hidden else "MixerHead")
    if head_class not in ("MixerHead", "OldMixerHead"):
        raise ConversionError(f"--config mixer_head must be \"MixerHead\" or \"OldMixerHead\", got {head_class!r}.")
    if head_class == "OldMixerHead":
        return _convert_last_head_block(mapper, old, new, research_config, hidden, softmax=False)
    reconcile(research_config, ["heads", "n_heads"], heads, "number of heads (mixerhead.convs.*)")
    head_dim = mapper.source[old + "mixerhead.proj_head.0.weight"].shape[0]
    reconcile(research_config, ["hidden_dim"], head_dim, "projection width (proj_head rows)")
    if out_in != heads * head_dim:
        raise ConversionError(
            f"{old}mixerhead.out_proj takes {out_in} inputs but {heads} heads of width {head_dim} produce "
            f"{heads * head_dim}: the research MixerHead crashes on this checkpoint (it only runs with heads=1), "
            "so there is no output to reproduce. If it was trained with OldMixerHead, set \"mixer_head\": "
            "\"OldMixerHead\" in --config."
        )
    weights = [take(mapper.source, f"{old}mixerhead.proj_head.{h}.weight") for h in range(heads)]
    biases = [take(mapper.source, f"{old}mixerhead.proj_head.{h}.bias") for h in range(heads)]
    mapper.target[new + "in_proj.weight"] = torch.cat(weights, 0)
    mapper.target[new + "in_proj.bias"] = torch.cat(biases, 0)
    matrices, offsets = zip(*(_mixing(mapper, f"{old}mixerhead.convs.{h}.weight", f"{old}mixerhead.convs.{h}.bias")
                              for h in range(heads)), strict=True)
    settings = _store_mixing(mapper, new + "mix", list(matrices), list(offsets))
    mapper.move(old + "mixerhead.out_proj.weight", new + "out_proj.weight")
    mapper.move(old + "mixerhead.out_proj.bias", new + "out_proj.bias")
    return {**settings, "num_mixing_heads": heads, "mixing_head_dim": head_dim}


def convert_checkpoint(file, source: str, research_config: dict):
    """The converter entry point `memory_zoo.conversion.convert` calls: read `file`, map it (see above)."""
    return convert_masked_mixer_state_dict(load_state_dict(file), source, research_config)
