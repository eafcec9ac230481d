"""Convert blbadger/memorymodels transformer checkpoints (HF Trainer ``model.safetensors`` / ``pytorch_model.bin`` of
plain ``nn.Module``s, or the ``pytorch_model_fsdp_0/`` distributed checkpoint of FSDP runs; research commit b5bbc77).

Sources and the research classes they come from:

* ``autoencoding-transformer``: ``UnrolledAutoencodingTransformer`` (``transformer_autoencoder.py``), with
  ``AbbreviatedModel`` parts (keys ``encoder.model.*``: only the first ``depth`` layers run, without the final norm
  and without ``embed_tokens``; ``wte`` feeds the encoder) or plain ``LlamaModel`` parts (keys ``encoder.*``: a
  frozen LLM encoder run on token ids with its own ``embed_tokens`` and final norm, ``wte`` unused; a decoder run on
  ``inputs_embeds`` with its final norm). Frozen encoders are ordinary weights here. A checkpoint without
  ``projection`` is the older ``AutoencodingTransformer`` (memory repeated over the window).
* ``variable-memory-transformer``: ``VariableMemoryTransformer`` and ``ObjectiveMemoryTransformer`` (identical
  weights; ``memory_transformer.py``), including ``no_memory`` (no ``encoder.*``), frozen encoders, bottlenecks,
  ``decoder=`` a pretrained ``LlamaForCausalLM`` (its ``embed_tokens`` is ``decoder_wte``; tied embeddings are kept
  tied) and a PEFT LoRA-wrapped decoder (merged into the base weights; needs ``lora_alpha``).

``--config`` holds the research constructor arguments (``n_vocab``, ``dim``/``encoder_dim``, ``decoder_dim``,
``depth``, ``tokenized_length``/``length``, ``compression``, ``n_heads``, ``n_chunks``, ``fixed_memory``, ...),
flat or under ``init_kwargs``, plus what the tensors cannot show about the Llama parts: ``n_heads`` for the parts the
research class builds itself, and per part (``sub_models.<encoder|decoder>.llama_config_kwargs`` / ``.resolved`` /
``.abbreviated_depth``, or flat ``encoder_config`` / ``decoder_config`` dicts of LlamaConfig arguments and
``depth``/``abbreviated_depth``) the heads, norm epsilon, rope settings of pretrained parts and the depth of an
``AbbreviatedModel``. Widths, layer counts, vocabulary, key/value heads, biases, bottleneck and bridge come from the
tensors and are checked against the config.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from transformers import LlamaConfig

from ..architectures import sources_of
from ..configuration.configuration_memory_transformer import (
    TransformerAutoencoderConfig,
    VariableMemoryTransformerConfig,
)
from .common import (
    RESEARCH_DUMP_KEYS,
    ConversionError,
    TensorMapper,
    load_state_dict,
    reconcile,
    take,
    warn_unknown_keys,
)

SOURCES = sources_of("memory_transformer")  # the `memory-zoo convert` names of memory_zoo/architectures.py

_CLASSES = {
    "autoencoding-transformer": ("UnrolledAutoencodingTransformer", "AutoencodingTransformer"),
    "variable-memory-transformer": ("VariableMemoryTransformer", "ObjectiveMemoryTransformer"),
}
# Research names --config may carry (constructor arguments, the Llama descriptions and fixture metadata).
_PART_NAMES = {"encoder_config", "decoder_config", "n_heads", "depth", "abbreviated_depth", "lora_alpha", "use_rslora",
               "device", "tokenized_length"}
RESEARCH_NAMES = {
    "autoencoding-transformer": _PART_NAMES | {"n_vocab", "dim", "decoder_dim", "length", "compression", "random",
                                               "freeze_encoder", "encoder_model", "decoder_model"},
    "variable-memory-transformer": _PART_NAMES | {"n_vocab", "encoder_dim", "dim", "length", "compression",
                                                  "n_chunks", "fixed_memory", "frozen_encoder", "no_memory", "copy",
                                                  "decoder", "blank_copy", "objective"},
}
# Keys of the research_config.json files written next to the parity fixtures that describe, not configure.
_METADATA = RESEARCH_DUMP_KEYS
# LlamaConfig settings no tensor shows, taken over from a part's description (the rest are checked or derived).
_LLAMA_PASSED = ("rms_norm_eps", "rope_theta", "rope_parameters", "rope_scaling", "hidden_act",
                 "max_position_embeddings", "attention_dropout")


def convert_memory_transformer_checkpoint(
    file: Path, source: str, research_config: dict | None = None
) -> tuple[TransformerAutoencoderConfig | VariableMemoryTransformerConfig, dict[str, torch.Tensor], list[str]]:
    """Read ``file`` (``model.safetensors``, ``pytorch_model.bin`` or an FSDP distributed-checkpoint folder) and map it
    to our config and state dict.

    Returns ``(config, state_dict, notes)``; ``notes`` say what was dropped, merged or assumed.
    """
    if source not in SOURCES:
        raise ConversionError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    args, parts = _research_options(dict(research_config or {}), source)
    state_dict = load_state_dict(file)
    notes: list[str] = []
    state_dict = _merge_lora(state_dict, args, notes)
    for key in [k for k in state_dict if k.endswith("rotary_emb.inv_freq")]:
        state_dict.pop(key)  # older transformers versions saved the rotary frequencies; they are recomputed
    if source == "autoencoding-transformer":
        return _convert_autoencoder(state_dict, args, parts, notes)
    return _convert_memory(state_dict, args, parts, notes)


# ---------------------------------------------------------------------------------------------------------------------
# --config


def _research_options(research_config: dict, source: str) -> tuple[dict, dict[str, dict]]:
    """Flatten ``--config`` into the research constructor arguments and, per Llama part, its description:
    ``{"llama": LlamaConfig arguments, "abbreviated_depth": int | None}``."""
    research_class = research_config.pop("class", None)
    if research_class is not None and research_class not in _CLASSES[source]:
        other = next((s for s, classes in _CLASSES.items() if research_class in classes), None)
        raise ConversionError(
            f"--config describes a {research_class}, which SOURCE {source} does not convert"
            + (f"; use SOURCE {other}." if other else f" (it converts {' and '.join(_CLASSES[source])}).")
        )
    for key in _METADATA:
        research_config.pop(key, None)
    args = dict(research_config.pop("init_kwargs", None) or {})
    sub_models = research_config.pop("sub_models", None) or {}
    for key, value in research_config.items():
        if key in args and args[key] != value:
            raise ConversionError(f"--config gives {key} twice: {args[key]!r} in init_kwargs and {value!r} at the top "
                                  "level; keep one.")
        args[key] = value
    warn_unknown_keys(args, RESEARCH_NAMES[source], source)
    parts = {}
    for part in ("encoder", "decoder"):
        spec = sub_models.get(part) or {}
        llama = {**(spec.get("resolved") or {}), **(spec.get("llama_config_kwargs") or {})}
        flat = args.get(f"{part}_config") or {}
        if not isinstance(flat, dict):
            raise ConversionError(f"--config {part}_config must be an object of LlamaConfig arguments, "
                                  f"got {type(flat).__name__}.")
        for key, value in flat.items():
            if key in llama and llama[key] != value:
                raise ConversionError(f"--config gives the {part}'s {key} twice: {llama[key]!r} under sub_models and "
                                      f"{value!r} in {part}_config; keep one.")
            llama[key] = value
        depth = spec.get("abbreviated_depth")
        parts[part] = {"llama": llama, "abbreviated_depth": depth}
    return args, parts


def _given(llama: dict, part: str, name: str, inferred, what: str):
    """Check a part's LlamaConfig argument against what the tensors imply; returns the tensors' value."""
    if name in llama and llama[name] is not None and llama[name] != inferred:
        raise ConversionError(
            f"--config gives the {part} {name}={llama[name]!r}, but the checkpoint's tensors imply {what} = "
            f"{inferred!r}. Fix the config (or use the checkpoint that belongs to it)."
        )
    return inferred


# ---------------------------------------------------------------------------------------------------------------------
# tensors


def _merge_lora(state_dict: dict[str, torch.Tensor], args: dict, notes: list[str]) -> dict[str, torch.Tensor]:
    """Fold PEFT LoRA adapters (``<module>.base_layer.weight`` plus ``lora_A.<name>`` / ``lora_B.<name>``) into plain
    weights: ``W = W0 + scale * B @ A`` with ``scale = lora_alpha / r`` (``/ sqrt(r)`` with ``use_rslora``)."""
    bases = [key[: -len(".base_layer.weight")] for key in state_dict if key.endswith(".base_layer.weight")]
    if not bases:
        return state_dict
    if "lora_alpha" not in args:
        raise ConversionError(
            f"The checkpoint holds PEFT LoRA adapters ({bases[0]}.lora_A/lora_B ...): add \"lora_alpha\" (the "
            "LoraConfig value; llm_copy_memory.py's lorify_model uses 32) to --config so they can be merged, and "
            "\"use_rslora\": true if it was set."
        )
    state_dict = dict(state_dict)
    for module in bases:
        weight = state_dict.pop(f"{module}.base_layer.weight")
        adapters = sorted({m.group(1) for key in state_dict
                           if (m := re.match(re.escape(module) + r"\.lora_A\.([^.]+)\.weight$", key))})
        if len(adapters) != 1:
            raise ConversionError(f"{module} has {len(adapters)} LoRA adapters ({adapters}); exactly one can be merged.")
        down = state_dict.pop(f"{module}.lora_A.{adapters[0]}.weight")
        up = take(state_dict, f"{module}.lora_B.{adapters[0]}.weight")
        rank = down.shape[0]
        scale = args["lora_alpha"] / (math.sqrt(rank) if args.get("use_rslora") else rank)
        state_dict[f"{module}.weight"] = (weight.float() + scale * (up.float() @ down.float())).to(weight.dtype)
        if f"{module}.base_layer.bias" in state_dict:
            state_dict[f"{module}.bias"] = state_dict.pop(f"{module}.base_layer.bias")
    notes.append(f"merged {len(bases)} PEFT LoRA adapters into their base weights (lora_alpha={args['lora_alpha']}, "
                 f"rank {rank}{', rsLoRA' if args.get('use_rslora') else ''})")
    return state_dict


def _layer_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    indices = sorted({int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"layers\.(\d+)\.", key))})
    if not indices:
        raise ConversionError(f"The checkpoint has no {prefix}layers.<i>.* tensors.")
    if indices != list(range(len(indices))):
        raise ConversionError(f"The {prefix}layers indices are not contiguous: {indices}; the checkpoint is incomplete.")
    return indices


def _llama_config(state_dict: dict[str, torch.Tensor], prefix: str, part: str, llama: dict, heads: int | None,
                  heads_hint: str, layers_run: int, stored_layers: int) -> LlamaConfig:
    """The LlamaConfig of one stack: shapes from the tensors, the rest from the part's description."""
    layer = f"{prefix}layers.0."
    query = state_dict[layer + "self_attn.q_proj.weight"]
    key = state_dict[layer + "self_attn.k_proj.weight"]
    gate = state_dict[layer + "mlp.gate_proj.weight"]
    hidden = _given(llama, part, "hidden_size", query.shape[1], "the width (q_proj columns)")
    intermediate = _given(llama, part, "intermediate_size", gate.shape[0], "the MLP width (gate_proj rows)")
    _given(llama, part, "num_hidden_layers", stored_layers, "the number of stored layers")
    heads = llama.get("num_attention_heads") or heads
    if not heads:
        raise ConversionError(f"--config does not say how many attention heads the {part} has (the tensors cannot "
                              f"show it): {heads_hint}.")
    head_dim = llama.get("head_dim") or hidden // heads
    if heads * head_dim != query.shape[0]:
        raise ConversionError(f"The {part} has {query.shape[0]} query features, which {heads} heads of {head_dim} "
                              "cannot produce; check the heads (and head_dim) in --config.")
    kv_heads = _given(llama, part, "num_key_value_heads", key.shape[0] // head_dim,
                      "the key/value heads (k_proj rows / head_dim)")
    settings = {name: llama[name] for name in _LLAMA_PASSED if llama.get(name) is not None}
    return LlamaConfig(
        hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers_run, num_attention_heads=heads,
        num_key_value_heads=kv_heads, head_dim=head_dim,
        attention_bias=_given(llama, part, "attention_bias", layer + "self_attn.q_proj.bias" in state_dict,
                              "attention biases (q_proj.bias present)"),
        mlp_bias=_given(llama, part, "mlp_bias", layer + "mlp.gate_proj.bias" in state_dict,
                        "MLP biases (gate_proj.bias present)"),
        **settings,
    )


# Parameters of a transformers Llama decoder layer (biases only with attention_bias / mlp_bias).
_LAYER_WEIGHTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                  "mlp.up_proj", "mlp.down_proj")
_LAYER_NORMS = ("input_layernorm.weight", "post_attention_layernorm.weight")


def _move_stack(mapper: TensorMapper, old: str, new: str, layers: int, stored: int, final_norm: bool,
                notes: list[str], what: str) -> None:
    """Move the first ``layers`` layers (and the final norm) of a research stack; drop the unused rest. Anything
    else under a layer stays behind and is reported as not understood."""
    for i in range(stored):
        names = [f"{module}.weight" for module in _LAYER_WEIGHTS] + list(_LAYER_NORMS)
        names += [f"{module}.bias" for module in _LAYER_WEIGHTS if f"{old}layers.{i}.{module}.bias" in mapper.source]
        for name in names:
            if i < layers:
                mapper.move(f"{old}layers.{i}.{name}", f"{new}layers.{i}.{name}")
            else:
                take(mapper.source, f"{old}layers.{i}.{name}")
    if stored > layers:
        notes.append(f"{what}: dropped layers {layers}..{stored - 1} (saved, but the research model runs only the first "
                     f"{layers})")
    if final_norm:
        mapper.move(f"{old}norm.weight", f"{new}norm.weight")
    elif mapper.source.pop(f"{old}norm.weight", None) is not None:
        notes.append(f"{what}: dropped the final norm (never applied by the research model)")


def _bottleneck(mapper: TensorMapper, args: dict, width: int) -> int:
    """Move ``down``/``up`` if present; returns the compression factor (1 without a bottleneck)."""
    if "down.weight" not in mapper.source:
        if "up.weight" in mapper.source:
            raise ConversionError("The checkpoint has up.* but no down.*: it is incomplete.")
        if args.get("compression") not in (None, 1):
            raise ConversionError(f"--config says compression={args['compression']!r}, but the checkpoint has no "
                                  "down/up bottleneck (compression 1).")
        return 1
    code = mapper.source["down.weight"].shape[0]
    compression = args.get("compression") or width // code
    if width // compression != code:
        raise ConversionError(f"--config says compression={compression}, but down.weight maps {width} features to "
                              f"{code} (research: dim // compression).")
    for name in ("down.weight", "down.bias", "up.weight", "up.bias"):
        mapper.move(name, name)
    return compression


def _required(args: dict, names: tuple[str, ...], what: str) -> int:
    for name in names:
        if args.get(name) is not None:
            return args[name]
    raise ConversionError(f"--config must give {what} (the tensors cannot show it): add \"{names[0]}\": <value>, the "
                          "research constructor argument.")


def _finish(mapper: TensorMapper, source: str) -> None:
    if mapper.source:
        raise ConversionError(
            f"The checkpoint has tensors a {source} model does not have: {', '.join(sorted(mapper.source))}. Check "
            "SOURCE (autoencoding-transformer or variable-memory-transformer) against the research class."
        )


# ---------------------------------------------------------------------------------------------------------------------
# UnrolledAutoencodingTransformer


def _autoencoder_part(state_dict: dict, part: str) -> tuple[str, str]:
    """(kind, key prefix) of the research encoder or decoder: AbbreviatedModel or plain LlamaModel."""
    if any(k.startswith(f"{part}.model.layers.") for k in state_dict):
        return "abbreviated", f"{part}.model."
    if any(k.startswith(f"{part}.layers.") for k in state_dict):
        return "llamamodel", f"{part}."
    raise ConversionError(f"The checkpoint has no {part}.model.layers.* (AbbreviatedModel) nor {part}.layers.* "
                          "(LlamaModel) tensors: it is not a transformer autoencoder checkpoint.")


def _convert_autoencoder(state_dict, args, parts, notes):
    source = "autoencoding-transformer"
    if "decoder_wte.weight" in state_dict:
        raise ConversionError("The checkpoint has decoder_wte, a memory transformer's decoder embedding: use SOURCE "
                              "variable-memory-transformer.")
    mapper = TensorMapper(state_dict)
    wte = take(mapper.source, "wte.weight")
    vocab = reconcile(args, ["n_vocab"], wte.shape[0], "the vocabulary size (wte rows)")
    stacks = {}
    for part in ("encoder", "decoder"):
        kind, prefix = _autoencoder_part(mapper.source, part)
        stored = len(_layer_indices(mapper.source, prefix))
        description = parts[part]
        if kind == "abbreviated":
            depth = description["abbreviated_depth"] or args.get("abbreviated_depth") or args.get("depth")
            if depth is None:
                raise ConversionError(
                    f"The {part} is an AbbreviatedModel (keys {prefix}*), which runs only its first `depth` layers: "
                    "add \"abbreviated_depth\": <depth> to --config (the research default is 8, used by every training "
                    f"script; {stored} layers are stored)."
                )
            if depth > stored:
                raise ConversionError(f"--config gives the {part} AbbreviatedModel depth {depth}, but only {stored} "
                                      "layers are stored (the research model could not run).")
        else:
            depth = stored
        heads_hint = (f"add \"n_heads\": <heads> (both parts), or \"{part}_config\": {{\"num_attention_heads\": <heads>}}"
                      " (the research LlamaConfig's num_attention_heads)")
        stacks[part] = (kind, prefix, stored, depth, _llama_config(
            mapper.source, prefix, part, description["llama"], args.get("n_heads"), heads_hint, depth, stored))

    kind, prefix, stored, depth, encoder_config = stacks["encoder"]
    if kind == "abbreviated":
        mapper.target["embed_tokens.weight"] = wte
        if mapper.source.pop(f"{prefix}embed_tokens.weight", None) is not None:
            notes.append("encoder: dropped AbbreviatedModel's embed_tokens (never used; wte feeds the encoder)")
    else:
        mapper.move(f"{prefix}embed_tokens.weight", "embed_tokens.weight")
        notes.append("dropped wte (unused: the LlamaModel encoder embeds the tokens with its own embed_tokens)")
    encoder_width = encoder_config.hidden_size
    if mapper.target["embed_tokens.weight"].shape[1] != encoder_width:
        raise ConversionError(f"The encoder's input embedding has {mapper.target['embed_tokens.weight'].shape[1]} "
                              f"features but its layers {encoder_width}.")
    reconcile(args, ["dim"], wte.shape[1], "the encoder width (wte columns)")
    if wte.shape[1] != encoder_width:
        raise ConversionError(f"wte has {wte.shape[1]} features but the encoder {encoder_width}: the research model "
                              "would not run.")
    _move_stack(mapper, prefix, "encoder.", depth, stored, kind == "llamamodel", notes, "encoder")

    kind_d, prefix_d, stored_d, depth_d, decoder_config = stacks["decoder"]
    if mapper.source.pop(f"{prefix_d}embed_tokens.weight", None) is not None:
        notes.append(f"decoder: dropped {prefix_d}embed_tokens (never used; the decoder reads the unrolled memory)")
    _move_stack(mapper, prefix_d, "decoder.", depth_d, stored_d, kind_d == "llamamodel", notes, "decoder")
    decoder_width = decoder_config.hidden_size
    if "bridge_proj.weight" in mapper.source:
        mapper.move("bridge_proj.weight", "bridge_proj.weight")
        mapper.move("bridge_proj.bias", "bridge_proj.bias")
        if encoder_width == decoder_width:
            raise ConversionError("The checkpoint has bridge_proj, but encoder and decoder have the same width.")
    elif encoder_width != decoder_width:
        raise ConversionError(f"Encoder width {encoder_width} and decoder width {decoder_width} differ but there is "
                              "no bridge_proj: the research model would not run.")
    if args.get("decoder_dim") not in (None, encoder_width):
        reconcile(args, ["decoder_dim"], decoder_width, "the decoder width (decoder q_proj columns)")
    compression = _bottleneck(mapper, args, encoder_width)
    if "projection.weight" in mapper.source:
        mapper.move("projection.weight", "projection.weight")
        mapper.move("projection.bias", "projection.bias")
        decoder_input = "unroll"
    else:
        decoder_input = "repeat"
        notes.append("no projection: an AutoencodingTransformer checkpoint (the memory is repeated over the window)")
    mapper.move("lm_head.weight", "lm_head.weight")
    _finish(mapper, source)

    window = _required(args, ("tokenized_length", "length"), "the window length")
    if args.get("freeze_encoder"):
        notes.append("freeze_encoder: the frozen encoder is converted as ordinary (trainable) weights")
    if args.get("random"):
        notes.append("random=True randomised the training inputs (an experiment); the converted model reads its inputs")
    config = TransformerAutoencoderConfig(
        vocab_size=vocab, encoder_config=encoder_config, decoder_config=decoder_config, window_length=window,
        compression=compression, decoder_input=decoder_input, encoder_final_norm=kind == "llamamodel",
        decoder_final_norm=kind_d == "llamamodel",
    )
    return config, mapper.target, notes


# ---------------------------------------------------------------------------------------------------------------------
# VariableMemoryTransformer / ObjectiveMemoryTransformer


def _convert_memory(state_dict, args, parts, notes):
    source = "variable-memory-transformer"
    mapper = TensorMapper(state_dict)
    wte = take(mapper.source, "wte.weight")
    decoder_wte = take(mapper.source, "decoder_wte.weight")
    vocab = reconcile(args, ["n_vocab"], wte.shape[0], "the vocabulary size (wte rows)")
    if decoder_wte.shape[0] != vocab:
        raise ConversionError(f"wte has {vocab} rows but decoder_wte {decoder_wte.shape[0]}.")
    encoder_width = reconcile(args, ["encoder_dim"], wte.shape[1], "the encoder width (wte columns)")
    no_memory = reconcile(args, ["no_memory"], not any(k.startswith("encoder.") for k in mapper.source),
                          "no_memory (no encoder.* tensors)")

    # A pretrained decoder (research `decoder=`) brings its embed_tokens as decoder_wte: one tensor.
    llm_embed = mapper.source.pop("decoder.embed_tokens.weight", None)
    pretrained_decoder = llm_embed is not None and (
        llm_embed.data_ptr() == decoder_wte.data_ptr() or torch.equal(llm_embed, decoder_wte))
    if args.get("decoder") and not pretrained_decoder:
        raise ConversionError("--config says the decoder is a pretrained model (decoder=...), but decoder_wte differs "
                              "from decoder.embed_tokens: the checkpoint has a decoder built by the class.")
    if llm_embed is not None:
        notes.append("decoder.embed_tokens is the pretrained decoder's embedding, stored as decoder_wte"
                     if pretrained_decoder else "dropped decoder.embed_tokens (unused: decoder_wte embeds the tokens)")
    frozen_encoder = bool(args.get("frozen_encoder"))
    heads = args.get("n_heads")

    configs = {}
    if not no_memory:
        stored = len(_layer_indices(mapper.source, "encoder."))
        if not frozen_encoder:
            reconcile(args, ["depth"], stored, "the encoder's layers (built by the class with `depth` layers)")
        hint = ("add \"encoder_config\": {\"num_attention_heads\": <heads>} (the frozen encoder's own)" if frozen_encoder
                else "add \"n_heads\": <heads> (the research constructor argument; class default 4)")
        configs["encoder"] = _llama_config(mapper.source, "encoder.", "encoder", parts["encoder"]["llama"],
                                           None if frozen_encoder else heads, hint, stored, stored)
        if configs["encoder"].hidden_size != encoder_width:
            raise ConversionError(f"wte has {encoder_width} features but the encoder {configs['encoder'].hidden_size}.")
        mapper.target["encoder_embed_tokens.weight"] = wte
        if mapper.source.pop("encoder.embed_tokens.weight", None) is not None:
            notes.append("dropped encoder.embed_tokens (unused: wte feeds the encoder)")
        _move_stack(mapper, "encoder.", "encoder.", stored, stored, True, notes, "encoder")
    else:
        notes.append("no_memory: dropped wte (no encoder; every memory slot is filled with ones)")

    stored = len(_layer_indices(mapper.source, "decoder."))
    if not pretrained_decoder:
        reconcile(args, ["depth"], stored, "the decoder's layers (built by the class with `depth` layers)")
    hint = ("add \"decoder_config\": {\"num_attention_heads\": <heads>, ...} (the pretrained decoder's own config.json "
            "values, including rms_norm_eps and rope settings)" if pretrained_decoder
            else "add \"n_heads\": <heads> (the research constructor argument; class default 4)")
    configs["decoder"] = _llama_config(mapper.source, "decoder.", "decoder", parts["decoder"]["llama"],
                                       None if pretrained_decoder else heads, hint, stored, stored)
    decoder_width = reconcile(args, ["dim"], configs["decoder"].hidden_size, "the decoder width")
    if decoder_wte.shape[1] != decoder_width:
        raise ConversionError(f"decoder_wte has {decoder_wte.shape[1]} features but the decoder {decoder_width}.")
    mapper.target["embed_tokens.weight"] = decoder_wte
    _move_stack(mapper, "decoder.", "decoder.", stored, stored, True, notes, "decoder")

    compression = 1
    if no_memory:
        dropped = [k for k in list(mapper.source) if k.split(".")[0] in ("decoder_proj", "down", "up")]
        for key in dropped:
            mapper.source.pop(key)
        if dropped:
            notes.append(f"no_memory: dropped {', '.join(sorted(dropped))} (never used without memories)")
        compression = args.get("compression") or 1
    else:
        compression = _bottleneck(mapper, args, encoder_width)
        if "decoder_proj.weight" in mapper.source:
            mapper.move("decoder_proj.weight", "decoder_proj.weight")
            mapper.move("decoder_proj.bias", "decoder_proj.bias")
            if encoder_width == decoder_width:
                raise ConversionError("The checkpoint has decoder_proj, but encoder and decoder have the same width.")
        elif encoder_width != decoder_width:
            raise ConversionError(f"Encoder width {encoder_width} and decoder width {decoder_width} differ but there is "
                                  "no decoder_proj: the research model would not run.")

    head = take(mapper.source, "lm_head.weight")
    tied = head.data_ptr() == decoder_wte.data_ptr() or torch.equal(head, decoder_wte)
    described_tie = parts["decoder"]["llama"].get("tie_word_embeddings")
    if described_tie and not tied:
        raise ConversionError("--config says the decoder ties its embeddings (tie_word_embeddings), but lm_head.weight "
                              "differs from decoder_wte.weight.")
    if tied:
        notes.append("lm_head is the decoder's token embedding (tied): saved with tie_word_embeddings=True")
    else:
        mapper.target["lm_head.weight"] = head
    _finish(mapper, source)

    for name in ("copy", "blank_copy", "objective"):
        if args.get(name):
            notes.append(f"{name}={args[name]!r} is a training objective (input/label rewriting), not part of the "
                         "converted model")
    config = VariableMemoryTransformerConfig(
        vocab_size=vocab, encoder_config=configs.get("encoder"), decoder_config=configs["decoder"],
        chunk_length=_required(args, ("length", "tokenized_length"), "the chunk length"),
        num_chunks=_required(args, ("n_chunks",), "the number of chunks"),
        compression=compression, fixed_memory=bool(args.get("fixed_memory", True)), no_memory=no_memory,
        tie_word_embeddings=tied,
    )
    if "fixed_memory" not in args:
        notes.append("fixed_memory not in --config: the research default (True) was used")
    return config, mapper.target, notes


__all__ = ["RESEARCH_NAMES", "SOURCES", "convert_memory_transformer_checkpoint"]

# The converter entry point `memory_zoo.conversion.convert` calls.
convert_checkpoint = convert_memory_transformer_checkpoint
