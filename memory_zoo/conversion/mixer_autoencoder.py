"""Convert blbadger/memorymodels mixer checkpoints (HF Trainer ``model.safetensors`` / ``pytorch_model.bin``, or the
``pytorch_model_fsdp_0/`` distributed checkpoint of FSDP runs).

Sources and the research classes (``memorymodels/mixer_autoencoder.py``):

* ``autoencoding-mixer``: ``AutoencodingMixer`` (unrolled or repeated decoder input, bottleneck, multi-head and
  feature-kernel mixing, frozen encoders: an autoencoder's or a causal ``LanguageMixer``'s blocks);
* ``variable-memory-mixer``: ``VariableMemoryMixer`` (memories of earlier chunks in fixed decoder slots);
* ``memory-mixer``: ``MemoryMixer``, the single-memory ("oracle") model, memory as a token or concatenated to
  every embedding.

The research classes do not store hyperparameters; everything the tensor shapes determine is read from them and
checked against ``--config`` (the research constructor arguments, flat or as ``{"init_kwargs": {...}}``), which
supplies the rest (``unroll``, ``clm_encoder``, ``n_chunks``, ``no_memory``, ``encoder_ctx``, ``combination_dim``).
Mixing weights are stored unmasked by the research code; ``tril`` is applied here and in every forward.
"""

from __future__ import annotations

import re

import torch

from ..architectures import sources_of
from ..configuration.configuration_memory_mixer import MemoryMixerConfig, VariableMemoryMixerConfig
from ..configuration.configuration_mixer_autoencoder import MixerAutoencoderConfig
from .common import (
    RESEARCH_DUMP_KEYS,
    ConversionError,
    TensorMapper,
    load_state_dict,
    reconcile,
    research_init_kwargs,
    take,
    warn_unknown_keys,
)

SOURCES = sources_of("mixer_autoencoder")  # the `memory-zoo convert` names of memory_zoo/architectures.py

# Constructor arguments of the research classes (and the names of a dumped research config).
_AE_NAMES = {"n_vocab", "dim", "depth", "length", "compression", "double_tokens", "kernel", "n_heads", "unroll",
             "random", "frozen_encoder", "clm_encoder"}
_VMM_NAMES = {"n_vocab", "encoder_dim", "dim", "depth", "length", "compression", "n_heads", "kernel", "n_chunks",
              "no_memory", "frozen_encoder", "copy", "encoder_ctx", "blank_copy"}
_MEMORY_MIXER_NAMES = {"n_vocab", "encoder_dim", "dim", "depth", "length", "compression", "combination_dim",
                       "n_heads", "kernel", "random"}
_DUMP_NAMES = RESEARCH_DUMP_KEYS | {"class", "sub_models"}
_CLASSES = {"autoencoding-mixer": "AutoencodingMixer", "variable-memory-mixer": "VariableMemoryMixer",
            "memory-mixer": "MemoryMixer"}


def _stack_indices(state_dict: dict[str, torch.Tensor], prefix: str) -> list[int]:
    indices = sorted({int(m.group(1)) for key in state_dict if (m := re.match(re.escape(prefix) + r"(\d+)\.", key))})
    if indices != list(range(len(indices))):
        raise ConversionError(f"{prefix}* block indices are not contiguous: {indices}; the checkpoint is incomplete.")
    return indices


def _mixing(weight: torch.Tensor, key: str) -> torch.Tensor:
    """A research ``Conv1d(L, L, K)`` weight ``[L_out, L_in, K]``: ``[L, L]`` (K = 1) or ``[K, L, L]``, masked."""
    if weight.dim() != 3 or weight.shape[0] != weight.shape[1]:
        raise ConversionError(f"{key} should be a token-mixing Conv1d weight [L, L, kernel], got {tuple(weight.shape)}.")
    matrices = weight.permute(2, 0, 1)
    return torch.tril(matrices[0] if weight.shape[-1] == 1 else matrices).contiguous()


def _convert_block(mapper: TensorMapper, old: str, new: str) -> dict:
    """One research ``MixerBlock`` (either file's) as a ``MaskedMixerBlock``; returns the stack settings it implies."""
    mapper.move(old + "seq_layernorm.weight", new + "token_norm.weight")
    mapper.move(old + "seq_layernorm.bias", new + "token_norm.bias")
    mapper.move(old + "patch_layernorm.weight", new + "channel_norm.weight")
    mapper.move(old + "patch_layernorm.bias", new + "channel_norm.bias")
    up = mapper.move(old + "patch_ff.0.weight", new + "mlp.up_proj.weight")
    mapper.move(old + "patch_ff.0.bias", new + "mlp.up_proj.bias")
    mapper.move(old + "patch_ff.2.weight", new + "mlp.down_proj.weight")
    mapper.move(old + "patch_ff.2.bias", new + "mlp.down_proj.bias")
    hidden, intermediate = up.shape[1], up.shape[0]
    settings = {"hidden": hidden, "intermediate": intermediate, "heads": 0, "out_proj": False}
    mix = new + "token_mixer.mix."
    if old + "conv.weight" in mapper.source:
        weight = take(mapper.source, old + "conv.weight")
        mapper.target[mix + "weight"] = _mixing(weight, old + "conv.weight")[None]
        mapper.target[mix + "bias"] = take(mapper.source, old + "conv.bias")[None]
        return {**settings, "length": weight.shape[0], "kernel": weight.shape[-1]}
    heads = len({m.group(1) for k in mapper.source if (m := re.match(re.escape(old) + r"conv\.convs\.(\d+)\.", k))})
    if not heads:
        raise ConversionError(f"No token-mixing weights under {old}conv (expected conv.weight or conv.convs.0.weight).")
    out_weight = take(mapper.source, old + "conv.out_proj.weight")
    convs = [take(mapper.source, f"{old}conv.convs.{h}.weight") for h in range(heads)]
    biases = [take(mapper.source, f"{old}conv.convs.{h}.bias") for h in range(heads)]
    projections = [take(mapper.source, f"{old}conv.proj_head.{h}.weight") for h in range(heads)]
    projection_biases = [take(mapper.source, f"{old}conv.proj_head.{h}.bias") for h in range(heads)]
    settings.update(length=convs[0].shape[0], kernel=convs[0].shape[-1])
    mapper.target[new + "token_mixer.out_proj.bias"] = take(mapper.source, old + "conv.out_proj.bias")
    if out_weight.shape == (hidden, hidden * heads):
        # mixer_clm.py MixerHead (a frozen LanguageMixer encoder): every head applies the LAST head's mixing to the
        # unprojected input, so the block is out_proj(concat([c] * n)) = c @ (sum of out_proj's column blocks).T.
        mapper.target[mix + "weight"] = _mixing(convs[-1], f"{old}conv.convs.{heads - 1}.weight")[None]
        mapper.target[mix + "bias"] = biases[-1][None]
        mapper.target[new + "token_mixer.out_proj.weight"] = out_weight.view(hidden, heads, hidden).sum(1).contiguous()
        return {**settings, "out_proj": True}
    head_dim = projections[0].shape[0]
    if out_weight.shape != (hidden, heads * head_dim) or heads * head_dim != hidden:
        raise ConversionError(f"{old}conv.out_proj.weight is {tuple(out_weight.shape)}; {heads} heads of width "
                              f"{head_dim} in a {hidden}-wide block need ({hidden}, {hidden}).")
    mapper.target[new + "token_mixer.in_proj.weight"] = torch.cat(projections, 0)
    mapper.target[new + "token_mixer.in_proj.bias"] = torch.cat(projection_biases, 0)
    mapper.target[mix + "weight"] = torch.stack([_mixing(w, f"{old}conv.convs.*.weight") for w in convs]).contiguous()
    mapper.target[mix + "bias"] = torch.stack(biases).contiguous()
    mapper.target[new + "token_mixer.out_proj.weight"] = out_weight
    return {**settings, "heads": heads}


def _convert_stack(mapper: TensorMapper, old: str, new: str, what: str) -> dict:
    """A research block stack; every block must agree on its settings. Returns them and the depth."""
    indices = _stack_indices(mapper.source, old)
    if not indices:
        raise ConversionError(f"The checkpoint has no {old}<i>.* tensors ({what}); is it from the right SOURCE?")
    settings = [_convert_block(mapper, f"{old}{i}.", f"{new}{i}.") for i in indices]
    if any(s != settings[0] for s in settings):
        raise ConversionError(f"The {what} blocks disagree on their shapes: {settings}.")
    return {**settings[0], "depth": len(indices)}


def _bottleneck(mapper: TensorMapper, width: int, arguments: dict) -> int:
    """Move ``down``/``up`` when present; returns the compression factor they imply."""
    if "down.weight" not in mapper.source:
        compression = 1
    else:
        code = mapper.move("down.weight", "down.weight").shape[0]
        mapper.move("down.bias", "down.bias")
        mapper.move("up.weight", "up.weight")
        mapper.move("up.bias", "up.bias")
        if width % code:
            raise ConversionError(f"down.weight maps {width} features to {code}, not a whole compression factor.")
        compression = width // code
    # The research treats compression <= 1 as "no bottleneck". Without --config the shapes decide (a research model
    # built with its class default but saved without down/up could not have produced this checkpoint anyway).
    if "compression" in arguments:
        given = arguments["compression"]
        if (given if given > 1 else 1) != compression:
            raise ConversionError(f"--config compression={given!r}, but the checkpoint's down/up tensors imply "
                                  f"compression = {compression}. Fix the config.")
    return compression


def _frozen_encoder(arguments: dict) -> bool:
    """Whether --config says the encoder blocks came from another model (research ``frozen_encoder``)."""
    sub_models = arguments.get("sub_models") or {}
    return bool(arguments.get("frozen_encoder") or (isinstance(sub_models, dict) and sub_models.get("frozen_encoder")))


def _finish(mapper: TensorMapper, source: str) -> None:
    if mapper.source:
        raise ConversionError(f"Tensors the {source} converter does not understand: {sorted(mapper.source)}.")


def convert_autoencoder_state_dict(state_dict: dict[str, torch.Tensor], research_config: dict):
    """``AutoencodingMixer`` state dict -> (MixerAutoencoderConfig, state dict, notes)."""
    arguments = research_init_kwargs(research_config)
    warn_unknown_keys(arguments, _AE_NAMES | _DUMP_NAMES, "autoencoding-mixer")
    if arguments.get("double_tokens"):
        raise ConversionError("double_tokens=True models cannot run in the research code (a Linear fed integer ids); "
                              "there is no output to reproduce.")
    if "decoder_wte.weight" in state_dict:
        raise ConversionError("The checkpoint has decoder_wte.weight, so it is a memory model, not an "
                              "AutoencodingMixer: use SOURCE variable-memory-mixer or memory-mixer.")
    mapper = TensorMapper(state_dict)
    notes = []
    embed = mapper.move("wte.weight", "embed_tokens.weight")
    vocab, width = embed.shape
    encoder = _convert_stack(mapper, "encoderblocks.", "encoder_layers.", "encoder")
    decoder = _convert_stack(mapper, "decoderblocks.", "decoder_layers.", "decoder")
    if decoder["out_proj"] or decoder["hidden"] != width or encoder["hidden"] != width:
        raise ConversionError("Encoder and decoder blocks must be plain AutoencodingMixer blocks of the embedding width.")
    if encoder["length"] != decoder["length"]:
        raise ConversionError(f"The encoder is built for {encoder['length']} positions and the decoder for "
                              f"{decoder['length']}; an autoencoder reads and writes the same window.")
    reconcile(arguments, ["n_vocab"], vocab, "vocabulary size (wte rows)")
    reconcile(arguments, ["dim"], width, "width (wte columns)")
    reconcile(arguments, ["length"], decoder["length"], "window length (token-mixing conv size)")
    reconcile(arguments, ["kernel"], decoder["kernel"], "decoder mixing kernel")
    reconcile(arguments, ["n_heads"], decoder["heads"], "decoder mixing heads")
    if encoder["depth"] != decoder["depth"] or encoder["kernel"] != decoder["kernel"] or encoder["heads"] != decoder["heads"]:
        notes.append("The encoder blocks differ from the decoder's (a frozen encoder): encoder "
                     f"depth {encoder['depth']}, kernel {encoder['kernel']}, heads {encoder['heads']}.")
    else:
        reconcile(arguments, ["depth"], decoder["depth"], "depth (decoderblocks.*)")
    compression = _bottleneck(mapper, width, arguments)
    projection = mapper.source.pop("projection.weight", None), mapper.source.pop("projection.bias", None)
    if projection[0] is None:
        # blbadger/maskedmixers' AutoencodingMixer (mixer_lm/) has no projection: it always repeats the memory.
        if arguments.get("unroll"):
            raise ConversionError("--config says unroll=True, but the checkpoint has no projection.weight, without "
                                  "which the memory cannot be unrolled. Fix the config or the checkpoint.")
        unroll = False
        notes.append("No projection tensors (the blbadger/maskedmixers AutoencodingMixer): the memory is repeated.")
    else:
        unroll = bool(arguments.get("unroll", True))
        if unroll:
            mapper.target["projection.weight"], mapper.target["projection.bias"] = projection
        else:
            notes.append("unroll=False: the unused `projection` tensors were dropped.")
    mapper.move("lm_head.weight", "lm_head.weight")
    _finish(mapper, "autoencoding-mixer")
    if arguments.get("random"):
        notes.append("random=True only replaced training inputs with random tokens; the converted model reads its input.")
    config = MixerAutoencoderConfig(
        vocab_size=vocab, hidden_size=width, encoder_layers=encoder["depth"], decoder_layers=decoder["depth"],
        window_length=decoder["length"], encoder_mixing_kernel_size=encoder["kernel"],
        decoder_mixing_kernel_size=decoder["kernel"], encoder_num_mixing_heads=encoder["heads"],
        decoder_num_mixing_heads=decoder["heads"], encoder_mixing_out_proj=encoder["out_proj"],
        encoder_intermediate_size=encoder["intermediate"], intermediate_size=decoder["intermediate"],
        compression=compression, decoder_input="unroll" if unroll else "repeat",
        memory_position=-2 if arguments.get("clm_encoder") else -1,
    )
    return config, mapper.target, notes


def convert_variable_memory_state_dict(state_dict: dict[str, torch.Tensor], research_config: dict):
    """``VariableMemoryMixer`` state dict -> (VariableMemoryMixerConfig, state dict, notes)."""
    arguments = research_init_kwargs(research_config)
    warn_unknown_keys(arguments, _VMM_NAMES | _DUMP_NAMES, "variable-memory-mixer")
    mapper = TensorMapper(state_dict)
    notes = []
    embed = mapper.move("decoder_wte.weight", "decoder.embed_tokens.weight")
    vocab, width = embed.shape
    decoder = _convert_stack(mapper, "decoderblocks.", "decoder.layers.", "decoder")
    if decoder["kernel"] != 1 or decoder["heads"] or decoder["out_proj"] or decoder["hidden"] != width:
        raise ConversionError("The research VariableMemoryMixer decoder always uses flat kernel-1 mixing; these "
                              "decoder blocks do not, so the checkpoint is not from that class.")
    no_memory = bool(arguments.get("no_memory", False))
    encoder_embed = take(mapper.source, "wte.weight")
    encoder_width = encoder_embed.shape[1]
    encoder_mapper = TensorMapper({k: mapper.source.pop(k) for k in list(mapper.source) if k.startswith("encoderblocks.")})
    encoder = _convert_stack(encoder_mapper, "encoderblocks.", "encoder.layers.", "encoder")
    if encoder["hidden"] != encoder_width:
        raise ConversionError(f"The encoder blocks are {encoder['hidden']} wide but wte has {encoder_width} columns.")
    reconcile(arguments, ["n_vocab"], vocab, "vocabulary size (decoder_wte rows)")
    reconcile(arguments, ["dim"], width, "decoder width (decoder_wte columns)")
    reconcile(arguments, ["encoder_dim"], encoder_width, "encoder width (wte columns)")
    if _frozen_encoder(arguments):
        # kernel / n_heads only shaped the research's own encoder blocks, which a frozen encoder replaces.
        notes.append(f"Frozen encoder: depth {encoder['depth']}, kernel {encoder['kernel']}, heads {encoder['heads']}.")
    else:
        reconcile(arguments, ["kernel"], encoder["kernel"], "encoder mixing kernel")
        reconcile(arguments, ["n_heads"], encoder["heads"], "encoder mixing heads")
    reconcile(arguments, ["depth"], decoder["depth"], "depth (decoderblocks.*)")
    compression = _bottleneck(mapper, encoder_width, arguments)
    if "decoder_proj.weight" in mapper.source:
        mapper.move("decoder_proj.weight", "decoder_proj.weight")
        mapper.move("decoder_proj.bias", "decoder_proj.bias")
    elif encoder_width != width:
        raise ConversionError(f"Encoder ({encoder_width}) and decoder ({width}) widths differ but there is no "
                              "decoder_proj.weight; the checkpoint is incomplete.")
    # Decoder mixing spans n_chunks memory slots + the chunk; the encoder spans the chunk or encoder_ctx.
    encoder_ctx = arguments.get("encoder_ctx") or None
    if "length" in arguments or "n_chunks" in arguments or encoder_ctx:
        n_chunks = arguments.get("n_chunks", 4)
        length = arguments.get("length", decoder["length"] - n_chunks)
    else:
        length = encoder["length"]
        n_chunks = decoder["length"] - length
    if n_chunks < 1 or n_chunks + length != decoder["length"]:
        raise ConversionError(f"The decoder mixes {decoder['length']} positions, which must be n_chunks + length; "
                              f"--config gives (or defaults to) n_chunks={n_chunks}, length={length}.")
    expected_encoder = encoder_ctx or length
    if encoder["length"] != expected_encoder:
        raise ConversionError(
            f"The encoder is built for {encoder['length']} positions but chunks have {length} tokens"
            + (f" and encoder_ctx={encoder_ctx}" if encoder_ctx else "")
            + ". Set encoder_ctx (chunks right-padded for a longer frozen encoder) or fix length/n_chunks in --config."
        )
    if no_memory:
        notes.append("no_memory=True: the encoder never runs, so its weights were dropped.")
    else:
        mapper.target["encoder.embed_tokens.weight"] = encoder_embed
        mapper.target.update(encoder_mapper.target)
    mapper.move("lm_head.weight", "lm_head.weight")
    _finish(mapper, "variable-memory-mixer")
    if no_memory:
        for key in [k for k in mapper.target if k.startswith(("down.", "up.", "decoder_proj."))]:
            del mapper.target[key]
    if arguments.get("copy") or arguments.get("blank_copy"):
        notes.append("copy / blank_copy only rewrote training batches (the copy task); see "
                     "memory_zoo.metrics.copy_task_batch. The converted model reads its input as given.")
    config = VariableMemoryMixerConfig(
        vocab_size=vocab, encoder_hidden_size=encoder_width, hidden_size=width, encoder_layers=encoder["depth"],
        decoder_layers=decoder["depth"], chunk_length=length, num_chunks=n_chunks,
        encoder_mixing_kernel_size=encoder["kernel"], encoder_num_mixing_heads=encoder["heads"],
        encoder_mixing_out_proj=encoder["out_proj"], encoder_intermediate_size=encoder["intermediate"],
        intermediate_size=decoder["intermediate"], compression=compression, no_memory=no_memory,
        encoder_context=encoder_ctx,
    )
    return config, mapper.target, notes


def convert_memory_mixer_state_dict(state_dict: dict[str, torch.Tensor], research_config: dict):
    """``MemoryMixer`` state dict -> (MemoryMixerConfig, state dict, notes)."""
    arguments = research_init_kwargs(research_config)
    warn_unknown_keys(arguments, _MEMORY_MIXER_NAMES | _DUMP_NAMES, "memory-mixer")
    mapper = TensorMapper(state_dict)
    notes = []
    encoder_embed = mapper.move("wte.weight", "encoder.embed_tokens.weight")
    decoder_embed = mapper.move("decoder_wte.weight", "decoder_embed_tokens.weight")
    vocab, encoder_width = encoder_embed.shape
    width = decoder_embed.shape[1]
    encoder = _convert_stack(mapper, "encoderblocks.", "encoder.layers.", "encoder")
    decoder = _convert_stack(mapper, "decoderblocks.", "decoder.layers.", "decoder")
    combination = "token" if decoder["length"] == encoder["length"] + 1 else "embedding"
    if combination == "embedding" and decoder["length"] != encoder["length"]:
        raise ConversionError(f"The decoder mixes {decoder['length']} positions and the encoder {encoder['length']}: "
                              "a MemoryMixer decoder spans length + 1 ('token') or length ('embedding').")
    reconcile(arguments, ["combination_dim"], combination, "memory combination (decoder length vs encoder length)")
    reconcile(arguments, ["n_vocab"], vocab, "vocabulary size (wte rows)")
    reconcile(arguments, ["encoder_dim"], encoder_width, "encoder width (wte columns)")
    reconcile(arguments, ["dim"], width, "decoder width (decoder_wte columns)")
    reconcile(arguments, ["length"], encoder["length"], "chunk length (encoder token-mixing conv size)")
    reconcile(arguments, ["kernel"], encoder["kernel"], "mixing kernel")
    reconcile(arguments, ["n_heads"], encoder["heads"], "encoder mixing heads")
    reconcile(arguments, ["depth"], decoder["depth"], "depth (decoderblocks.*)")
    if decoder["kernel"] != encoder["kernel"] or decoder["heads"] or decoder["out_proj"]:
        raise ConversionError("The research MemoryMixer decoder uses the encoder's kernel and flat mixing; these "
                              "decoder blocks do not, so the checkpoint is not from that class.")
    compression = _bottleneck(mapper, encoder_width, arguments)
    code = encoder_width // compression
    if combination == "embedding":
        if decoder["hidden"] != width + code:
            raise ConversionError(f"The decoder blocks are {decoder['hidden']} wide; 'embedding' combination needs "
                                  f"dim + encoder_dim // compression = {width} + {code}.")
        if compression > 1:
            # 'embedding' never re-expands the code: `up` exists in the research module but is never used.
            del mapper.target["up.weight"], mapper.target["up.bias"]
            notes.append("combination_dim='embedding': the unused `up` tensors were dropped.")
    elif "decoder_proj.weight" in mapper.source:
        mapper.move("decoder_proj.weight", "decoder_proj.weight")
        mapper.move("decoder_proj.bias", "decoder_proj.bias")
    elif encoder_width != width:
        raise ConversionError(f"Encoder ({encoder_width}) and decoder ({width}) widths differ but there is no "
                              "decoder_proj.weight; the checkpoint is incomplete.")
    mapper.move("lm_head.weight", "lm_head.weight")
    _finish(mapper, "memory-mixer")
    notes.append("memory_source='window': the research oracle model (the encoder reads the window it predicts); "
                 "set memory_source='previous_chunk' in config.json for causal use and generation.")
    config = MemoryMixerConfig(
        vocab_size=vocab, encoder_hidden_size=encoder_width, hidden_size=width, encoder_layers=encoder["depth"],
        decoder_layers=decoder["depth"], chunk_length=encoder["length"], mixing_kernel_size=encoder["kernel"],
        encoder_num_mixing_heads=encoder["heads"], encoder_intermediate_size=encoder["intermediate"],
        intermediate_size=decoder["intermediate"], compression=compression, combination=combination,
        memory_source="window",
    )
    return config, mapper.target, notes


_CONVERTERS = {
    "autoencoding-mixer": convert_autoencoder_state_dict,
    "variable-memory-mixer": convert_variable_memory_state_dict,
    "memory-mixer": convert_memory_mixer_state_dict,
}


def convert_mixer_state_dict(state_dict: dict[str, torch.Tensor], source: str, research_config: dict):
    """Dispatch a memorymodels mixer state dict to the converter of ``source``."""
    research_class = research_config.get("class")
    if research_class is not None and research_class != _CLASSES[source]:
        other = next((name for name, cls in _CLASSES.items() if cls == research_class), None)
        raise ConversionError(f"--config describes a {research_class}, which SOURCE {source} does not convert"
                              + (f"; use SOURCE {other}." if other else f" (it converts {_CLASSES[source]})."))
    return _CONVERTERS[source](state_dict, research_config)


def convert_checkpoint(file, source: str, research_config: dict):
    """The converter entry point `memory_zoo.conversion.convert` calls: read `file`, map it (see above)."""
    return convert_mixer_state_dict(load_state_dict(file), source, research_config)
