"""Convert facebookresearch/memory ("Memory Layers at Scale", Meta Lingua) checkpoints.

Two formats, both with the training run's `params.json` next to the weights:

* a consolidated folder: `consolidated.pth` = `{"model": {fqn: tensor}, "optim": ...}` (what `apps/main/eval.py`
  creates under `<step>/consolidated/`), read with `torch.load(weights_only=True)`;
* a distributed-checkpoint step folder (`.metadata`, `__<rank>_0.distcp`, `params.json`), read with
  `torch.distributed.checkpoint` — its `.metadata` is a pickle, so it goes through an unpickler that only admits the
  checkpoint-metadata classes; only the `model.*` tensors are read, never the optimizer state.

PK+ checkpoints with a shared value table hold it once per memory layer (`layers.<i>.feed_forward.values.weight`,
identical); it becomes one tensor (`model.memory_values.weight`), and copies that differ are an error. The research
rotary layout (interleaved pairs) is the one `MemoryLayersForCausalLM` implements, so `wq`/`wk` are copied as they are.
The value table keeps its checkpoint dtype (bfloat16 in real runs) unless `dtype` says otherwise.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..architectures import sources_of
from ..configuration.configuration_memory_layers import MemoryLayersConfig
from .common import (
    ConversionError,
    TensorMapper,
    load_checkpoint,
    read_distributed_checkpoint,
    read_json_object,
    strip_wrapper_prefixes,
)

SOURCES = sources_of("memory_layers")  # the `memory-zoo convert` names of memory_zoo/architectures.py

def read_memory_layers_checkpoint(path) -> tuple[dict[str, torch.Tensor], dict, str]:
    """`(state_dict, params, format)` from a consolidated or distributed checkpoint (folder or `.pth` file)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    if (path.is_dir() and not (path / ".metadata").is_file() and not any(path.glob("*.pth"))
            and (path / "consolidated" / "params.json").is_file()):  # a step folder that was consolidated
        folder = path = path / "consolidated"
    params_file = folder / "params.json"
    if not params_file.is_file():
        raise ConversionError(f"{folder} has no params.json: point CHECKPOINT at the research run's step folder (or "
                              "its consolidated/ folder), which holds the training arguments next to the weights.")
    params = read_json_object(params_file)
    if path.is_file():
        weights = path
    elif (folder / ".metadata").is_file():
        return read_distributed_checkpoint(folder), params, "distributed checkpoint"
    else:
        candidates = sorted(folder.glob("*.pth"))
        if len(candidates) != 1:
            raise ConversionError(f"{folder} should hold one consolidated *.pth file or a distributed checkpoint "
                                  f"(.metadata + *.distcp); found {[c.name for c in candidates] or 'neither'}.")
        weights = candidates[0]
    checkpoint = load_checkpoint(weights)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        checkpoint = checkpoint["model"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ConversionError(f"{weights} holds neither {{'model': state_dict, ...}} nor a flat state dict.")
    return strip_wrapper_prefixes(checkpoint), params, "consolidated"


def convert_memory_layers_checkpoint(file, source: str, research_config: dict | None = None):
    """Read and convert; `research_config` (`--config`) may override `params.json` entries of its `model` section."""
    state_dict, params, layout = read_memory_layers_checkpoint(file)
    model_args = dict(params.get("model", params))
    model_args.update(research_config or {})
    config, converted, notes = convert_memory_layers_state_dict(state_dict, source, model_args)
    notes.insert(0, f"checkpoint format: {layout}")
    tokenizer = (params.get("data") or {}).get("tokenizer")
    if tokenizer:
        notes.append(f"trained with tokenizer {tokenizer} (not converted; pass --tokenizer)")
    dtype = (params.get("distributed") or {}).get("model_dtype")
    if dtype:
        notes.append(f"the research code ran inference in {dtype}; top-k slot choices can differ between precisions")
    return config, converted, notes


def convert_memory_layers_state_dict(
    state_dict: dict[str, torch.Tensor], source: str, model_args: dict
) -> tuple[MemoryLayersConfig, dict[str, torch.Tensor], list[str]]:
    """Map a research state dict and its `params.json` `model` section to a config and our state dict."""
    if source not in SOURCES:
        raise ConversionError(f"Unknown Memory Layers source {source!r}; expected one of {', '.join(SOURCES)}.")
    notes: list[str] = []
    pk = dict(model_args.get("productkey_args") or {})
    if pk.get("peer_variant"):
        raise ConversionError("This checkpoint uses the PEER variant (peer_variant=true), which memory-zoo does not "
                              "implement (no research config uses it).")
    if model_args.get("weight_tying"):
        raise ConversionError("params.json says weight_tying=true, which the research model cannot build (it raises "
                              "in __init__); the checkpoint cannot come from this code.")
    if any(".query_mlps.1." in key for key in state_dict):
        raise ConversionError("The memory query network has a BatchNorm (query_mlps.1), which the research config "
                              "cannot enable and memory-zoo does not implement.")
    mapper = TensorMapper(state_dict)
    embed = mapper.move("tok_embeddings.weight", "model.embed_tokens.weight")
    vocab_size, hidden = embed.shape
    layers = sorted({int(m.group(1)) for key in state_dict if (m := re.match(r"layers\.(\d+)\.", key))})
    if layers != list(range(len(layers))) or not layers:
        raise ConversionError(f"Block indices are not contiguous from 0: {layers}; the checkpoint is incomplete.")
    _agree(model_args, "vocab_size", vocab_size, "tok_embeddings rows")
    _agree(model_args, "dim", hidden, "tok_embeddings columns")
    _agree(model_args, "n_layers", len(layers), "number of blocks")

    n_heads = model_args.get("n_heads") or hidden // (model_args.get("head_dim") or 0 or hidden)
    head_dim = model_args.get("head_dim") or hidden // n_heads
    q_rows, kv_rows = state_dict["layers.0.attention.wq.weight"].shape[0], state_dict["layers.0.attention.wk.weight"].shape[0]
    if q_rows != n_heads * head_dim or kv_rows % head_dim:
        raise ConversionError(f"Attention shapes (wq {q_rows} rows, wk {kv_rows} rows) do not fit n_heads={n_heads}, "
                              f"head_dim={head_dim} from params.json.")
    n_kv_heads = kv_rows // head_dim
    _agree(model_args, "n_kv_heads", n_kv_heads, "key/value heads (wk rows / head_dim)")

    memory_layers = sorted(i for i in layers if f"layers.{i}.feed_forward.keys" in state_dict)
    declared = [int(i) for i in str(pk.get("layers") or "").split(",") if i.strip()] if pk.get("is_enabled") else []
    if sorted(declared) != memory_layers:
        raise ConversionError(f"params.json productkey_args put memory layers at {declared}, but the checkpoint has "
                              f"product-key tensors at {memory_layers}.")
    shared = bool(pk.get("mem_share_values", True)) and len(memory_layers) > 0
    table_dtype, intermediate = None, None
    for i in layers:
        old, new = f"layers.{i}.", f"model.layers.{i}."
        for proj in "qkvo":
            mapper.move(f"{old}attention.w{proj}.weight", f"{new}self_attn.{proj}_proj.weight")
        mapper.move(old + "attention_norm.weight", new + "input_layernorm.weight")
        mapper.move(old + "ffn_norm.weight", new + "post_attention_layernorm.weight")
        if i not in memory_layers:
            for research, ours in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                tensor = mapper.move(f"{old}feed_forward.{research}.weight", f"{new}mlp.{ours}.weight")
            intermediate = tensor.shape[1]
            continue
        ff, mlp = old + "feed_forward.", new + "mlp."
        mapper.move(ff + "keys", mlp + "keys")
        mapper.move(ff + "query_proj.query_mlps.0.weight", mlp + "query_proj.weight")
        if not mapper.move_optional(ff + "query_proj.query_mlps.0.bias", mlp + "query_proj.bias"):
            raise ConversionError(f"{ff}query_proj has no bias: the research memory always has one (mem_query_bias).")
        for name in ("value_proj", "swilu_projection", "gating"):
            mapper.move_optional(ff + name + ".weight", mlp + name + ".weight")
            mapper.move_optional(ff + name + ".bias", mlp + name + ".bias")
        table = mapper.source.pop(ff + "values.weight", None)
        if shared:
            first = mapper.target.get("model.memory_values.weight")
            if table is None and first is None:
                raise ConversionError(f"No value table found under {ff}values.weight (the first memory layer owns it).")
            if table is not None and first is not None and not torch.equal(table, first):
                raise ConversionError(f"{ff}values.weight differs from the first memory layer's table, but params.json "
                                      "says mem_share_values=true: the copies of a shared table must be identical.")
            if first is None:
                mapper.target["model.memory_values.weight"] = table
        elif table is None:
            raise ConversionError(f"The checkpoint has no tensor '{ff}values.weight' (mem_share_values=false: every "
                                  "memory layer owns its table).")
        else:
            mapper.target[mlp + "values.weight"] = table
        table_dtype = table.dtype if table is not None else table_dtype
    mapper.move("norm.weight", "model.norm.weight")
    mapper.move("output.weight", "lm_head.weight")
    if mapper.source:
        raise ConversionError(f"Unexpected tensors in the checkpoint: {', '.join(sorted(mapper.source))}.")
    if shared and len(memory_layers) > 1:
        notes.append(f"shared value table: {len(memory_layers)} copies checked identical, stored once")

    settings = {}
    if memory_layers:
        first = f"model.layers.{memory_layers[0]}.mlp."
        keys = mapper.target[first + "keys"]
        heads = int(pk.get("mem_heads", 4))
        n_keys = keys.shape[0] // (2 * heads)
        if n_keys * 2 * heads != keys.shape[0]:
            raise ConversionError(f"keys has {keys.shape[0]} rows, not a multiple of 2 * mem_heads = {2 * heads}.")
        _agree(pk, "mem_n_keys", n_keys, "sub-keys per half (keys rows / (2 * mem_heads))")
        _agree(pk, "mem_k_dim", keys.shape[1] * 2, "key width (2 * keys columns)")
        table = mapper.target.get("model.memory_values.weight", mapper.target.get(first + "values.weight"))
        if table.shape[0] != n_keys**2:
            raise ConversionError(f"The value table has {table.shape[0]} rows, not mem_n_keys ** 2 = {n_keys**2}.")
        v_dim = table.shape[1] if table.shape[1] != hidden or (pk.get("mem_v_dim") or -1) > 0 else None
        swilu = first + "swilu_projection.weight" in mapper.target
        _agree(pk, "swilu_projection", swilu, "swilu_projection tensors present")
        gated = first + "gating.weight" in mapper.target
        _agree(pk, "mem_gated", gated, "gating tensors present")
        settings = dict(memory_layers=memory_layers, memory_n_keys=n_keys, memory_heads=heads,
                        memory_knn=int(pk.get("mem_knn", 32)), memory_k_dim=keys.shape[1] * 2, memory_v_dim=v_dim,
                        memory_share_values=shared, memory_swilu_projection=swilu, memory_gated=gated,
                        memory_value_dtype=str(table_dtype).removeprefix("torch."),
                        memory_value_lr=pk.get("value_fixed_lr", 0.001))
    config = MemoryLayersConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads, head_dim=head_dim,
        intermediate_size=intermediate, ffn_dim_multiplier=model_args.get("ffn_dim_multiplier"),
        multiple_of=int(model_args.get("multiple_of", 256)), rms_norm_eps=float(model_args.get("norm_eps", 1e-5)),
        rope_theta=float(model_args.get("rope_theta", 10000.0)),
        max_position_embeddings=int(model_args.get("max_seqlen", 1024)),
        initializer_range=model_args.get("init_base_std"), tie_word_embeddings=False, **settings,
    )
    return config, mapper.target, notes


def _agree(args: dict, name: str, value, what: str) -> None:
    if args.get(name) not in (None, -1) and args[name] != value:
        raise ConversionError(f"params.json says {name}={args[name]!r}, but the checkpoint's tensors imply {what} = "
                              f"{value!r}. Use the params.json of this checkpoint.")


__all__ = ["SOURCES", "convert_memory_layers_checkpoint", "convert_memory_layers_state_dict",
           "read_memory_layers_checkpoint"]

# The converter entry point `memory_zoo.conversion.convert` calls.
convert_checkpoint = convert_memory_layers_checkpoint
