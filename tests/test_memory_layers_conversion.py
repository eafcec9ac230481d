"""Converting facebookresearch/memory checkpoints (consolidated and distributed) on fixtures the research code made."""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from memory_zoo import MemoryLayersForCausalLM
from memory_zoo.conversion import ConversionError, convert
from memory_zoo.conversion.memory_layers import convert_memory_layers_state_dict

LAYERS = FIXTURES / "memory_layers"
NAMES = sorted(p.name for p in LAYERS.iterdir() if p.is_dir())


def fixture(name: str) -> tuple[dict, dict, dict]:
    folder = LAYERS / name
    return (load_file(folder / "model.safetensors"), json.loads((folder / "params.json").read_text()),
            load_file(folder / "expected.safetensors"))


def write_checkpoint(folder: Path, name: str, layout: str, state_dict: dict | None = None) -> Path:
    """The research run's folder for `name` in one of its layouts; returns what a user would point convert at."""
    weights, params, _ = fixture(name)
    weights = weights if state_dict is None else state_dict
    step = folder / "0000001000"
    step.mkdir(parents=True)
    (step / "params.json").write_text(json.dumps(params))
    if layout == "distributed":
        import torch.distributed.checkpoint as dcp

        optimizer = {"state": {"norm.weight": {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model": weights, "optim": optimizer}, checkpoint_id=str(step))
        return step
    consolidated = step / "consolidated"
    consolidated.mkdir()
    (consolidated / "params.json").write_text(json.dumps(params))
    torch.save({"model": weights, "optim": {"state": {}, "param_groups": []}}, consolidated / "consolidated.pth")
    return {"step_folder": step, "consolidated_folder": consolidated,
            "pth_file": consolidated / "consolidated.pth"}[layout]


def memory_lookups(model, input_ids) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """(scores, slot indices) each memory layer selects, captured from its input during a forward."""
    found = {}
    hooks = [layer.mlp.register_forward_hook(
        lambda module, args, out, i=i: found.__setitem__(i, module.lookup(args[0].reshape(-1, args[0].shape[-1]))))
        for i, layer in enumerate(model.model.layers) if layer.is_memory_layer]
    with torch.no_grad():
        logits = model(input_ids).logits
    for hook in hooks:
        hook.remove()
    return found, logits


@pytest.mark.parametrize("layout", ["distributed", "step_folder", "consolidated_folder", "pth_file"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_checkpoint_matches_research_logits_and_selected_slots(name, layout, tmp_path):
    checkpoint = write_checkpoint(tmp_path / "run", name, layout)
    convert("memory-layers", checkpoint, tmp_path / "out")
    model = MemoryLayersForCausalLM.from_pretrained(tmp_path / "out").eval()
    _, params, expected = fixture(name)
    lookups, logits = memory_lookups(model, expected["input_ids"])
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=0)
    assert sorted(lookups) == model.config.memory_layers
    for i, (scores, indices) in lookups.items():
        assert torch.equal(indices, expected[f"indices.{i}"]), f"layer {i} selected other slots"
        torch.testing.assert_close(scores, expected[f"scores.{i}"], atol=1e-5, rtol=0)
    prompt = expected["generate_prompt"][None]
    generated = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert torch.equal(generated[0, prompt.shape[1]:], expected["generated"])
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert info["notes"][0] == ("checkpoint format: distributed checkpoint" if layout == "distributed"
                                else "checkpoint format: consolidated")


def test_shared_table_is_stored_once_and_copies_must_agree(tmp_path):
    state_dict, params, _ = fixture("pkplus_shared")
    config, converted, notes = convert_memory_layers_state_dict(state_dict, "memory-layers", params["model"])
    assert config.memory_share_values and [k for k in converted if "values" in k] == ["model.memory_values.weight"]
    assert converted["model.memory_values.weight"].dtype == torch.bfloat16 and config.memory_value_dtype == "bfloat16"
    assert any("2 copies checked identical" in note for note in notes)
    tampered = dict(state_dict)
    tampered["layers.3.feed_forward.values.weight"] = torch.zeros_like(tampered["layers.3.feed_forward.values.weight"])
    with pytest.raises(ConversionError, match="differs from the first memory layer's table"):
        convert_memory_layers_state_dict(tampered, "memory-layers", params["model"])
    # a copy missing (the research code's own loader never wrote them) is fine: the first layer owns the table
    trimmed = {k: v for k, v in state_dict.items() if k != "layers.3.feed_forward.values.weight"}
    assert convert_memory_layers_state_dict(trimmed, "memory-layers", params["model"])[1].keys() == converted.keys()


def test_bfloat16_conversion_keeps_selection_close(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "run", "gated_vdim_gqa", "consolidated_folder")
    model = convert("memory-layers", checkpoint, tmp_path / "out", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.config.memory_value_dtype == "bfloat16"
    _, _, expected = fixture("gated_vdim_gqa")
    logits = model(expected["input_ids"]).logits.float()
    assert (logits.argmax(-1) == expected["logits"].argmax(-1)).float().mean() > 0.9


def test_distributed_metadata_that_needs_code_is_refused(tmp_path):
    step = write_checkpoint(tmp_path / "run", "pk_plain", "distributed")
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (step / ".metadata").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ConversionError, match=r"references pathlib.Path.touch.*could run code"):
        convert("memory-layers", step, tmp_path / "out")
    assert not marker.exists()
    (step / ".metadata").write_bytes(b"garbage")
    with pytest.raises(ConversionError, match="damaged or incomplete"):
        convert("memory-layers", step, tmp_path / "out")


def test_inconsistent_checkpoints_get_clear_errors(tmp_path):
    state_dict, params, _ = fixture("pkplus_shared")
    args = params["model"]
    with pytest.raises(ConversionError, match="params.json says dim=128"):
        convert_memory_layers_state_dict(state_dict, "memory-layers", dict(args, dim=128))
    with pytest.raises(ConversionError, match=r"memory layers at \[1\], but the checkpoint has product-key tensors at "
                                              r"\[1, 3\]"):
        convert_memory_layers_state_dict(state_dict, "memory-layers",
                                         dict(args, productkey_args=dict(args["productkey_args"], layers="1")))
    with pytest.raises(ConversionError, match="n_kv_heads=2"):
        convert_memory_layers_state_dict(state_dict, "memory-layers", dict(args, n_kv_heads=2))
    with pytest.raises(ConversionError, match="PEER variant"):
        convert_memory_layers_state_dict(state_dict, "memory-layers",
                                         dict(args, productkey_args=dict(args["productkey_args"], peer_variant=True)))
    with pytest.raises(ConversionError, match="Unexpected tensors in the checkpoint: extra"):
        convert_memory_layers_state_dict({**state_dict, "extra": torch.zeros(1)}, "memory-layers", args)
    with pytest.raises(ConversionError, match="no tensor 'layers.2.feed_forward.w2.weight'"):
        convert_memory_layers_state_dict({k: v for k, v in state_dict.items() if k != "layers.2.feed_forward.w2.weight"},
                                         "memory-layers", args)
    folder = tmp_path / "no_params"
    folder.mkdir()
    torch.save({"model": state_dict}, folder / "consolidated.pth")
    with pytest.raises(ConversionError, match="has no params.json"):
        convert("memory-layers", folder, tmp_path / "out")
    with pytest.raises(ConversionError, match="does not exist"):
        convert("memory-layers", tmp_path / "missing", tmp_path / "out")
