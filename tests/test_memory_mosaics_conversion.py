"""Converting MemoryMosaics research checkpoints: parity with the research code on fixtures it generated."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from memory_zoo import MemoryMosaicsForCausalLM
from memory_zoo.conversion import ConversionError, convert
from memory_zoo.conversion.memory_mosaics import convert_memory_mosaics_state_dict

MOSAICS = FIXTURES / "memory_mosaics"
NAMES = sorted(p.name for p in MOSAICS.iterdir() if p.is_dir())
# The research logits carry float32 noise of ~1e-5 where key temperatures hit their exp(5) clamp (see README).
TOLERANCE = 1e-4


def fixture(name: str) -> tuple[dict, dict, dict]:
    folder = MOSAICS / name
    return (load_file(folder / "model.safetensors"), json.loads((folder / "research_config.json").read_text()),
            load_file(folder / "expected.safetensors"))


def write_checkpoint(path: Path, state_dict: dict, model_args: dict | None, compiled: bool = True, tied: bool = True):
    """A ckpt.pt as train_memory_mosaics.py writes it (optimizer state and `_orig_mod.` prefix included)."""
    state_dict = dict(state_dict)
    if tied and "head.weight" in state_dict and torch.equal(state_dict["head.weight"], state_dict["emb.weight"]):
        state_dict["head.weight"] = state_dict["emb.weight"]  # shared storage, as torch.save keeps it
    prefix = "_orig_mod." if compiled else ""
    checkpoint = {"model": {prefix + k: v for k, v in state_dict.items()}, "iter_num": 1000,
                  "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                                "param_groups": [{"lr": 5e-3, "weight_decay": 0.1, "params": [0]}]}}
    if model_args is not None:
        checkpoint["model_args"] = model_args
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def research_loss(model, expected) -> torch.Tensor:
    targets = expected["targets"].clone()
    targets[targets == -1] = -100
    return model(expected["input_ids"], shift_labels=targets).loss


def to_eft(state_dict: dict) -> dict:
    """The kernel-model layout of a naive state dict with k_kernel_size 1 (what the research eft class saves)."""
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith("leaky_key_beta"):
            base = key[: -len("leaky_key_beta")] + "leaky_average."
            out[base + "leaky_beta_w_under"] = tensor
            out[base + "leaky_beta_u_under"] = tensor.clone()
        elif ".k_featurizer.conv." in key:
            new = key.replace("k_featurizer.conv.", "leaky_average.linear.")
            out[new] = tensor[..., 0] if tensor.dim() == 3 else tensor
        else:
            out[key] = tensor
    return out


@pytest.mark.parametrize("compiled", [True, False], ids=["orig_mod_prefix", "plain_keys"])
@pytest.mark.parametrize("name", NAMES)
def test_converted_checkpoint_matches_research_logits_and_loss(name, compiled, tmp_path):
    state_dict, model_args, expected = fixture(name)
    checkpoint = write_checkpoint(tmp_path / "run" / "ckpt.pt", state_dict, model_args, compiled)
    model = convert("memory-mosaics", checkpoint.parent, tmp_path / "out")
    loaded = MemoryMosaicsForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = loaded(expected["input_ids"]).logits
        torch.testing.assert_close(logits, expected["logits"], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(research_loss(loaded, expected), expected["loss"], atol=1e-5, rtol=0)
    assert model.config.skip_tokens == model_args["skip_tokens"]
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert info["source"] == "memory-mosaics" and any("key layout" in note for note in info["notes"])


def test_converted_configs_carry_every_option(tmp_path):
    expectations = {
        "linearconv_bias": dict(value_feature_extractor="linearconv", value_kernel_size=3, value_shift=2, bias=True,
                                pmem_count=2, tie_word_embeddings=False, key_kernel_size=1),
        "postln_attn_only": dict(pre_layernorm=False, attn_only=True, value_shift=0),
        "wide_kernels": dict(key_feature_extractor="linearconv", key_kernel_size=3, value_kernel_size=2,
                             value_shift=3, skip_tokens=2),
        "lowr_keys": dict(key_feature_extractor="lowrlinearconv", key_kernel_size=2, pmem_count=2),
        "default": dict(value_feature_extractor="lowrlinearconv", tie_word_embeddings=True, pmem_size=24,
                        block_size=16, num_attention_heads=4, hidden_size=32, vocab_size=96),
    }
    for name, fields in expectations.items():
        state_dict, model_args, _ = fixture(name)
        config, _, _ = convert_memory_mosaics_state_dict(state_dict, "memory-mosaics", model_args)
        assert {k: getattr(config, k) for k in fields} == fields, name


@pytest.mark.parametrize("name", ["default", "linearconv_bias"])
def test_both_key_layouts_of_the_same_weights_convert_identically(name, tmp_path):
    state_dict, model_args, expected = fixture(name)
    if any(".leaky_average." in k for k in state_dict):  # an eft fixture: build its naive twin
        naive = {}
        for key, tensor in state_dict.items():
            if key.endswith("leaky_beta_u_under"):
                continue
            key = key.replace("leaky_average.leaky_beta_w_under", "leaky_key_beta")
            if ".leaky_average.linear." in key:
                key, tensor = key.replace("leaky_average.linear.", "k_featurizer.conv."), tensor
                tensor = tensor[..., None] if tensor.dim() == 2 else tensor
            naive[key] = tensor
        eft = state_dict
    else:
        naive, eft = state_dict, to_eft(state_dict)
    converted = [convert_memory_mosaics_state_dict(sd, "memory-mosaics", model_args) for sd in (naive, eft)]
    assert converted[0][0].to_dict() == converted[1][0].to_dict()
    assert converted[0][1].keys() == converted[1][1].keys()
    for key in converted[0][1]:
        assert torch.equal(converted[0][1][key], converted[1][1][key]), key


def test_gradients_match_the_research_model():
    """Training parity: gradients of the research loss, mapped to our names through the converter itself."""
    state_dict, model_args, expected = fixture("default")
    config, weights, _ = convert_memory_mosaics_state_dict(state_dict, "memory-mosaics", model_args)
    model = MemoryMosaicsForCausalLM(config).eval()
    model.load_state_dict(weights, strict=False)
    model.tie_weights()
    research_loss(model, expected).backward()
    research_grads = {k[len("grad."):]: v for k, v in expected.items() if k.startswith("grad.")}
    research_grads["emb.weight"] = research_grads["head.weight"]
    _, mapped, _ = convert_memory_mosaics_state_dict(research_grads, "memory-mosaics", model_args)
    parameters = dict(model.named_parameters())
    assert set(mapped) == set(parameters)
    for key, want in mapped.items():
        got = parameters[key].grad
        # relative to the gradient's size: exp(10)-scaled scores turn float32 noise into ~5e-4 relative differences
        assert ((got - want).norm() / want.norm()).item() < 3e-3, key


def test_research_generation_window_is_reproduced(tmp_path):
    state_dict, model_args, expected = fixture("default")
    checkpoint = write_checkpoint(tmp_path / "ckpt.pt", state_dict, model_args)
    model = convert("memory-mosaics", checkpoint, tmp_path / "out")
    settings = dict(max_new_tokens=10, do_sample=False)
    model.config.long_context = "crop"
    for use_cache in (True, False):
        assert torch.equal(model.generate(expected["generate_prompt"], use_cache=use_cache, **settings),
                           expected["generated"])
    model.config.long_context = "extend"  # the default keeps reading beyond block_size, so it goes its own way
    assert not torch.equal(model.generate(expected["generate_prompt"], **settings), expected["generated"])


def test_bare_state_dict_without_model_args_uses_research_defaults(tmp_path):
    state_dict, _, expected = fixture("default")
    checkpoint = write_checkpoint(tmp_path / "ckpt.pt", state_dict, None)
    model = convert("memory-mosaics", checkpoint, tmp_path / "out")
    notes = json.loads((tmp_path / "out" / "conversion.json").read_text())["notes"]
    assert any("v_shift not recorded" in n for n in notes) and any("pre_ln not recorded" in n for n in notes)
    assert model.config.block_size == 512 and model.config.value_shift == 1
    torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], atol=TOLERANCE, rtol=0)


def test_eft_checkpoint_with_ignored_key_settings_is_converted_with_a_note(tmp_path):
    state_dict, model_args, expected = fixture("default_eft")
    model_args = dict(model_args, k_kernel_size=3, k_fe_type="lowrlinearconv")
    config, _, notes = convert_memory_mosaics_state_dict(state_dict, "memory-mosaics", model_args)
    assert config.key_kernel_size == 1 and config.key_feature_extractor == "linearconv"
    assert any("ignores both" in note for note in notes)


def test_pickles_that_need_code_are_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    state_dict, model_args, _ = fixture("default")
    torch.save({"model": state_dict, "model_args": model_args, "extra": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ConversionError, match="Refused to read .*could run code"):
        convert("memory-mosaics", tmp_path / "evil.pt", tmp_path / "out")
    assert not marker.exists()
    # a Namespace instead of vars(args) is refused the same way, with the fix in the message
    torch.save({"model": state_dict, "model_args": Namespace(**model_args)}, tmp_path / "namespace.pt")
    with pytest.raises(ConversionError, match=r"Re-save it .*'model_args': vars\(args\)"):
        convert("memory-mosaics", tmp_path / "namespace.pt", tmp_path / "out")


def test_inconsistent_checkpoints_get_clear_errors(tmp_path):
    state_dict, model_args, _ = fixture("default")
    with pytest.raises(ConversionError, match="n_head=8.*number of heads.*= 4"):
        convert_memory_mosaics_state_dict(state_dict, "memory-mosaics", dict(model_args, n_head=8))
    with pytest.raises(ConversionError, match="v_fe_type='linearconv'.*value feature extractor type = 'lowrlinearconv'"):
        convert_memory_mosaics_state_dict(state_dict, "memory-mosaics", dict(model_args, v_fe_type="linearconv"))
    with pytest.raises(ConversionError, match="no tensor 'blocks.1.attn.c_proj.weight'"):
        convert_memory_mosaics_state_dict({k: v for k, v in state_dict.items() if k != "blocks.1.attn.c_proj.weight"},
                                          "memory-mosaics", model_args)
    with pytest.raises(ConversionError, match="Unexpected tensors in the checkpoint: extra.weight"):
        convert_memory_mosaics_state_dict({**state_dict, "extra.weight": torch.zeros(1)}, "memory-mosaics", model_args)
    with pytest.raises(ConversionError, match="nanoMosaics checkpoint"):
        convert_memory_mosaics_state_dict({"mosaic.wte.weight": torch.zeros(2, 2)}, "memory-mosaics", {})
    eft, eft_args, _ = fixture("default_eft")
    broken = dict(eft, **{"blocks.0.attn.leaky_average.leaky_beta_u_under": torch.zeros(4)})
    with pytest.raises(ConversionError, match="leaky_beta_u_under differs from leaky_beta_w_under"):
        convert_memory_mosaics_state_dict(broken, "memory-mosaics", eft_args)
    untied = dict(state_dict, **{"head.weight": torch.randn(96, 32)})
    with pytest.raises(ConversionError, match="weight_tying=True.*untied embeddings"):
        convert_memory_mosaics_state_dict(untied, "memory-mosaics", model_args)
    checkpoint = write_checkpoint(tmp_path / "ckpt.pt", state_dict, model_args)
    with pytest.raises(ConversionError, match="--config says pmem_size=7 but the checkpoint's model_args say 24"):
        convert("memory-mosaics", checkpoint, tmp_path / "out", config={"pmem_size": 7})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "ckpt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConversionError, match="damaged or not a checkpoint"):
        convert("memory-mosaics", tmp_path / "broken", tmp_path / "out")


def test_cli_converts_to_bfloat16_and_the_result_loads(tmp_path):
    state_dict, model_args, expected = fixture("linearconv_bias")
    checkpoint = write_checkpoint(tmp_path / "run" / "ckpt.pt", state_dict, model_args)
    result = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "convert", "memory-mosaics", str(checkpoint),
                             str(tmp_path / "out"), "--dtype", "bfloat16"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MemoryMosaicsForCausalLM" in result.stdout
    model = MemoryMosaicsForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.dtype == torch.bfloat16
    logits = model(expected["input_ids"]).logits.float()
    torch.testing.assert_close(logits, expected["logits"], atol=3e-2, rtol=3e-2)
