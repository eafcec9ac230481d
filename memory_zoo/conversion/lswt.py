"""Convert Avelina9X/memory-transformer-pt4 (LSWT) checkpoints: the research `save_pretrained` folder.

The research code saves `config.json` (`model_type` `"lsw_transformer"`, no `auto_map`) and float16
`model.safetensors`; neither loads in transformers as it is. The config is read as plain JSON (research field names,
mapped below) and the tensors are renamed; the SwiGLU `fc1` (`[up | gate]` rows) is split into `up_proj` and
`gate_proj`. Checkpoints with reward heads (`LSWTForDPH`) convert to `LSWTForPreferenceHeads`, in the current layout
(`pooler.*`, class-token or attention token pooling) and in the legacy one (`reward_heads.*` +
`pooler_pipeline.*`).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..architectures import sources_of
from ..configuration.configuration_lswt import LSWTConfig
from .common import ConversionError, TensorMapper, read_json_object

SOURCES = sources_of("lswt")  # the `memory-zoo convert` names of memory_zoo/architectures.py

# research config field -> LSWTConfig field (fields with the same name are copied as they are)
_RENAMED = {"d_vocab": "embedding_size", "d_model": "hidden_size", "d_ffn": "intermediate_size",
            "n_heads": "num_attention_heads", "n_layers": "num_hidden_layers", "n_registers": "num_registers",
            "enable_bias": "attention_bias", "init_std": "initializer_range",
            "rope_positions": "max_position_embeddings"}
_COPIED = ("vocab_size", "hidden_act", "gated_ffn", "qk_norm", "rope_base_freq", "rope_reversed", "rope_dynamic",
           "rope_ntk_scale", "rope_yarn_a", "rope_yarn_b", "dropout_att_mat", "dropout_att_out", "dropout_ffn_int",
           "dropout_ffn_out", "recompute_kv", "trainable_embeddings", "pad_token_id", "bos_token_id", "eos_token_id")


def read_lswt_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict]:
    """`(state_dict, research config dict)` of a research `save_pretrained` folder (or its `model.safetensors`)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{folder} has no config.json: point CHECKPOINT at the folder the research code saved "
                              "with save_pretrained.")
    research = read_json_object(config_file)
    if research.get("model_type") != "lsw_transformer":
        raise ConversionError(f"{config_file} has model_type {research.get('model_type')!r}, not 'lsw_transformer': "
                              "it is not an LSWT research checkpoint.")
    weights = path if path.is_file() else folder / "model.safetensors"
    if not weights.is_file():
        shards = sorted(folder.glob("model-*.safetensors"))
        if not shards:
            raise ConversionError(f"{folder} holds no model.safetensors.")
    from safetensors.torch import load_file

    try:
        files = [weights] if weights.is_file() else sorted(folder.glob("model-*.safetensors"))
        state_dict = {k: v for file in files for k, v in load_file(str(file)).items()}
    except Exception as error:
        raise ConversionError(f"Could not read the weights in {folder}: {type(error).__name__}: {error}. The file is "
                              "damaged; copy it again.") from error
    return state_dict, research


def convert_lswt_checkpoint(file, source: str, research_config: dict | None = None):
    state_dict, research = read_lswt_checkpoint(file)
    research.update(research_config or {})
    return convert_lswt_state_dict(state_dict, source, research)


def convert_lswt_state_dict(state_dict: dict[str, torch.Tensor], source: str, research: dict):
    """Map a research state dict and its config dict; returns `(LSWTConfig, state dict of LSWTForCausalLM, notes)`."""
    if source not in SOURCES:
        raise ConversionError(f"Unknown LSWT source {source!r}; expected one of {', '.join(SOURCES)}.")
    if research.get("gated_att"):
        raise ConversionError("config.json says gated_att=true, which the research model never implemented.")
    if research.get("dropout_layers", 0.0) > 0:
        raise ConversionError("config.json says dropout_layers > 0, which the research model refuses to build.")
    notes = []
    settings = {ours: research[theirs] for theirs, ours in _RENAMED.items() if theirs in research}
    settings.update({name: research[name] for name in _COPIED if name in research})
    if "hidden_act" not in research and not research.get("gated_ffn", True):
        settings["hidden_act"] = "gelu"  # configs of the legacy era did not record it; their plain MLP was exact GELU
    pooler = _pooler_settings(state_dict, research, notes)
    if pooler is not None:
        settings["pooler_config"] = pooler
    if research.get("parent_embeddings"):
        notes.append(f"trained from {research['parent_embeddings']} embeddings (tokenizer: that model's; not copied)")
    config = LSWTConfig(**settings)

    mapper = TensorMapper(state_dict)
    embed = mapper.move("model.input_embedding.embedding.weight", "model.embed_tokens.weight")
    if tuple(embed.shape) != (config.vocab_size, config.embedding_size):
        raise ConversionError(f"The embedding is {tuple(embed.shape)} but config.json says vocab_size="
                              f"{config.vocab_size}, d_vocab={config.embedding_size}.")
    mapper.move("model.input_proj.weight", "model.input_proj.weight")
    for name in ("weight", "bias"):
        mapper.move(f"model.input_norm.{name}", f"model.input_norm.{name}")
        mapper.move(f"model.output_norm.{name}", f"model.norm.{name}")
    blocks = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"model\.blocks\.(\d+)\.", key))})
    if blocks != list(range(config.num_hidden_layers)):
        raise ConversionError(f"The checkpoint has blocks {blocks} but config.json says n_layers="
                              f"{config.num_hidden_layers}.")
    width = config.intermediate_size
    for i in blocks:
        old, new = f"model.blocks.{i}.", f"model.layers.{i}."
        for name in ("weight", "bias"):
            mapper.move(f"{old}att_norm.{name}", f"{new}input_layernorm.{name}")
            mapper.move(f"{old}ffn_norm.{name}", f"{new}post_attention_layernorm.{name}")
        for proj in "qkvo":
            mapper.move(f"{old}att.proj_{proj}.weight", f"{new}self_attn.{proj}_proj.weight")
            if config.attention_bias:
                mapper.move(f"{old}att.proj_{proj}.bias", f"{new}self_attn.{proj}_proj.bias")
        for name in ("q_norm.weight", "k_norm.weight", "registers_k", "registers_v"):
            mapper.move_optional(f"{old}att.{name}", f"{new}self_attn.{name}")
        fc1_weight, fc1_bias = mapper.source.pop(f"{old}ffn.fc1.weight", None), mapper.source.pop(f"{old}ffn.fc1.bias", None)
        if fc1_weight is None or fc1_bias is None:
            raise ConversionError(f"The checkpoint has no tensor '{old}ffn.fc1.weight' / '.bias'.")
        rows = 2 * width if config.gated_ffn else width
        if fc1_weight.shape[0] != rows:
            raise ConversionError(f"{old}ffn.fc1.weight has {fc1_weight.shape[0]} rows; gated_ffn={config.gated_ffn} "
                                  f"with d_ffn={width} needs {rows}.")
        # the research SwiGLU multiplies the FIRST half (value) by act(SECOND half)
        mapper.target[f"{new}mlp.up_proj.weight"], mapper.target[f"{new}mlp.up_proj.bias"] = fc1_weight[:width], fc1_bias[:width]
        if config.gated_ffn:
            mapper.target[f"{new}mlp.gate_proj.weight"] = fc1_weight[width:]
            mapper.target[f"{new}mlp.gate_proj.bias"] = fc1_bias[width:]
        mapper.move(f"{old}ffn.fc2.weight", f"{new}mlp.down_proj.weight")
        mapper.move(f"{old}ffn.fc2.bias", f"{new}mlp.down_proj.bias")
    mapper.move("head_proj.weight", "head_proj.weight")
    if pooler is not None:
        _map_pooler(mapper, pooler)
    if mapper.source:
        raise ConversionError(f"Unexpected tensors in the checkpoint: {', '.join(sorted(mapper.source))}.")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in state_dict.values()})
    notes.append(f"checkpoint dtype(s): {', '.join(dtypes)}")
    return config, mapper.target, notes


# legacy `pooler_pipeline` Sequential indices of the linear layers, per `reward_pooler`
_LEGACY_LINEARS = {"identity": {}, "bert": {0: "legacy_dense"}, "t5": {1: "legacy_dense"},
                   "swiglu_bert": {0: "legacy_up", 2: "legacy_down"}, "swiglu_t5": {1: "legacy_up", 3: "legacy_down"}}


def _pooler_settings(state_dict: dict, research: dict, notes: list[str]) -> dict | None:
    """The `pooler_config` of a reward-head checkpoint (current or legacy layout), or None for a language model."""
    if any(key.startswith("pooler.") for key in state_dict):
        pooler = dict(research.get("pooler_config") or {})
        notes.append(f"direct preference heads: {pooler.get('reward_heads')}")
        return pooler
    if any(key.startswith(("reward_heads.", "pooler_pipeline.")) for key in state_dict):
        kind = research.get("reward_pooler", "identity")
        if kind not in _LEGACY_LINEARS:
            raise ConversionError(f"Unknown legacy reward_pooler {kind!r}; expected one of {sorted(_LEGACY_LINEARS)}.")
        if "cls_token_id" not in research:
            raise ConversionError(
                "Legacy reward-head checkpoints do not record the token rewards are read at (the research code took "
                "tokenizer.cls_token_id, <|im_end|> = 50266 with its chat tokenizer): pass it with --config "
                '\'{"cls_token_id": 50266}\'.'
            )
        notes.append(f"legacy direct preference heads ({kind} pooler), read at token {research['cls_token_id']}")
        return {"reward_heads": list(research.get("reward_heads") or []), "reward_head_bias": False,
                "embedding_dropout": research.get("reward_dropout", 0.0), "legacy_pipeline": kind,
                "token_pooling_config": {"cls_token_id": int(research["cls_token_id"])}}
    return None


def _map_pooler(mapper: TensorMapper, pooler: dict) -> None:
    legacy = pooler.get("legacy_pipeline")
    for name in pooler.get("reward_heads") or []:
        prefix = "reward_heads." if legacy else "pooler.reward_heads."
        mapper.move(f"{prefix}{name}.weight", f"pooler.reward_heads.{name}.weight")
        mapper.move_optional(f"{prefix}{name}.bias", f"pooler.reward_heads.{name}.bias")
    if legacy:
        for index, ours in _LEGACY_LINEARS[legacy].items():
            mapper.move(f"pooler_pipeline.{index}.weight", f"pooler.{ours}.weight")
            mapper.move(f"pooler_pipeline.{index}.bias", f"pooler.{ours}.bias")
        return
    mapper.move_optional("pooler.layer_pooler.layer_weighting", "pooler.layer_weighting")
    for key in [k for k in mapper.source if k.startswith("pooler.token_pooler.")]:  # same layout as the research
        mapper.move(key, key)
    for norm in ("layer_norm_post", "token_norm_post"):
        for part in ("weight", "bias"):
            mapper.move_optional(f"pooler.{norm}.{part}", f"pooler.{norm}.{part}")


__all__ = ["SOURCES", "convert_lswt_checkpoint", "convert_lswt_state_dict", "read_lswt_checkpoint"]

# The converter entry point `memory_zoo.conversion.convert` calls.
convert_checkpoint = convert_lswt_checkpoint


def model_class_name(config: LSWTConfig, default: str) -> str:
    """A checkpoint with reward heads is a preference model; every other one the causal LM."""
    return "LSWTForPreferenceHeads" if config.pooler_config.get("reward_heads") is not None else default
