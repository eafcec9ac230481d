"""Converted research checkpoints reproduce the research code's outputs (fixtures generated from blbadger/maskedmixers)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file, save_file

from memory_zoo import MaskedMixerForCausalLM
from memory_zoo.cli import main as cli_main
from memory_zoo.conversion import ConversionError, convert, load_state_dict

CASES = {
    "plain": "masked-mixer",
    "expanded": "masked-mixer",
    "expanded2": "masked-mixer",
    "multiheaded": "multiheaded-mixer",
    "multiconv_h1": "multiconv-mixer",
}
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


def fixture(variant: str):
    folder = FIXTURES / "masked_mixer" / variant
    return folder, load_file(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("variant", sorted(CASES))
def test_converted_model_matches_research_logits_and_loss(variant, tmp_path):
    folder, expected = fixture(variant)
    assert cli_main(["convert", CASES[variant], str(folder), str(tmp_path),
                     "--config", str(folder / "research_config.json")]) == 0
    model = MaskedMixerForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        out = model(expected["input_ids"], labels=expected["labels"], output_hidden_states=True)
    torch.testing.assert_close(out.logits, expected["logits"], **TOLERANCE)
    torch.testing.assert_close(out.loss, expected["loss"].reshape(()), **TOLERANCE)
    if "last_hidden_state" in expected:
        torch.testing.assert_close(out.hidden_states[-1], expected["last_hidden_state"], **TOLERANCE)
    info = json.loads((tmp_path / "conversion.json").read_text())
    assert info["source"] == CASES[variant] and len(info["checkpoint_sha256"]) == 64


def test_research_greedy_generation_is_reproduced(tmp_path):
    folder, expected = fixture("plain")
    model = convert("masked-mixer", folder, tmp_path)
    prompt = expected["greedy_prompt"][None]
    length = model.config.max_position_embeddings
    for use_cache in (True, False):
        out = model.generate(prompt, max_new_tokens=length - prompt.shape[-1], do_sample=False, use_cache=use_cache,
                             pad_token_id=2, eos_token_id=None)
        assert torch.equal(out[0], expected["greedy_sequence"])


def test_multiheaded_reproduces_first_call_not_drifting_second(tmp_path):
    folder, expected = fixture("multiheaded")
    model = convert("multiheaded-mixer", folder, tmp_path)
    assert model.config.mixing_softmax and model.config.mixing_out_proj
    with torch.no_grad():
        first = model(expected["input_ids"]).logits
        second = model(expected["input_ids"]).logits  # our forward is pure: same result every call
    torch.testing.assert_close(second, first, atol=0, rtol=0)
    assert (first - expected["logits_second_call"]).abs().max() > 1e-3


def test_converted_mixing_matrices_are_lower_triangular(tmp_path):
    folder, _ = fixture("plain")
    raw = load_file(str(folder / "model.safetensors"))
    assert torch.triu(raw["mixerblocks.0.conv.weight"][..., 0], diagonal=1).abs().max() > 0.1
    model = convert("masked-mixer", folder, tmp_path)
    weight = model.model.layers[0].token_mixer.mix.weight
    assert torch.count_nonzero(torch.triu(weight, diagonal=1)) == 0


def test_pickled_checkpoint_with_ddp_prefix_and_bfloat16_output(tmp_path):
    folder, expected = fixture("expanded")
    state_dict = {"module." + key: value for key, value in load_file(str(folder / "model.safetensors")).items()}
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    model = convert("masked-mixer", tmp_path, tmp_path / "out", dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    logits = model(expected["input_ids"]).logits.float()
    torch.testing.assert_close(logits, expected["logits"], atol=0.1, rtol=0.05)


def test_old_mixer_head_checkpoint_is_folded_like_multiheaded(tmp_path):
    """mixer_multiconv.py's OldMixerHead: the multiheaded block without the softmax reparameterisation."""
    folder, expected = fixture("multiheaded")
    state_dict = load_file(str(folder / "model.safetensors"))
    state_dict["wte_second.weight"] = torch.zeros(16, 16)
    state_dict["wte_second.bias"] = torch.zeros(16)
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    old = convert("multiconv-mixer", tmp_path, tmp_path / "old")
    assert not old.config.mixing_softmax and old.config.mixing_out_proj
    reference = convert("multiheaded-mixer", folder, tmp_path / "ref")
    for module in reference.modules():
        if hasattr(module, "softmax"):
            module.softmax = False
    torch.testing.assert_close(old(expected["input_ids"]).logits, reference(expected["input_ids"]).logits)


def test_research_tied_weights_without_lm_head(tmp_path):
    folder, expected = fixture("plain")
    state_dict = load_file(str(folder / "model.safetensors"))
    state_dict["wte.weight"] = state_dict.pop("lm_head.weight")
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="tie_weights"):
        convert("masked-mixer", tmp_path, tmp_path / "a")
    model = convert("masked-mixer", tmp_path, tmp_path / "b", config={"tie_weights": True})
    reloaded = MaskedMixerForCausalLM.from_pretrained(tmp_path / "b")
    assert reloaded.config.tie_word_embeddings
    torch.testing.assert_close(reloaded(expected["input_ids"]).logits, model(expected["input_ids"]).logits)


def test_pickled_tied_checkpoint_is_detected(tmp_path):
    """tie_weights=True models can only be saved with torch.save (safetensors refuses shared tensors)."""
    folder, expected = fixture("plain")
    state_dict = load_file(str(folder / "model.safetensors"))
    state_dict["lm_head.weight"] = state_dict["wte.weight"]
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    model = convert("masked-mixer", tmp_path, tmp_path / "out")
    assert model.config.tie_word_embeddings
    with pytest.raises(ConversionError, match="tie_weights=False.*tied embeddings"):
        convert("masked-mixer", tmp_path, tmp_path / "out2", config={"tie_weights": False})


@pytest.mark.parametrize("config, message", [
    ({"n_vocab": 4096}, r"n_vocab=4096.*vocabulary size.*128"),
    ({"tokenized_length": 512}, r"tokenized_length=512.*context length.*16"),
    ({"depth": 8}, r"depth=8.*number of mixerblocks.*2"),
    ({"expand_conv": True}, r"expand_conv=True.*flat token mixing"),
])
def test_config_contradicting_the_checkpoint_fails_clearly(config, message, tmp_path):
    folder, _ = fixture("plain")
    with pytest.raises(ConversionError, match=message):
        convert("masked-mixer", folder, tmp_path, config=config)


def test_wrong_source_and_bad_files_fail_clearly(tmp_path):
    folder, _ = fixture("multiheaded")
    with pytest.raises(ConversionError, match="use SOURCE multiheaded-mixer or multiconv-mixer"):
        convert("masked-mixer", folder, tmp_path / "a")
    with pytest.raises(ConversionError, match="Unknown SOURCE"):
        convert("llama", folder, tmp_path / "a")
    with pytest.raises(ConversionError, match="holds none of model.safetensors"):
        convert("masked-mixer", tmp_path, tmp_path / "a")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ConversionError, match="damaged or not a checkpoint"):
        load_state_dict(tmp_path / "bad")
    (tmp_path / "cfg.json").write_text("{not json")
    with pytest.raises(ConversionError, match="not valid JSON"):
        convert("masked-mixer", FIXTURES / "masked_mixer" / "plain", tmp_path / "a", config=tmp_path / "cfg.json")


def test_unexpected_tensors_are_listed(tmp_path):
    folder, _ = fixture("plain")
    state_dict = load_file(str(folder / "model.safetensors"))
    state_dict["mixerblocks.0.position_channel"] = torch.zeros(3)
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"tensors a masked-mixer model does not have: mixerblocks.0.position_channel"):
        convert("masked-mixer", tmp_path, tmp_path / "out")


def test_multiconv_with_several_current_heads_is_refused(tmp_path):
    """The current MixerHead crashes in the research code for heads >= 2; there is nothing to reproduce."""
    folder, _ = fixture("multiconv_h1")
    state_dict = load_file(str(folder / "model.safetensors"))
    for i in range(2):
        for part in ("proj_head", "convs"):
            for name in ("weight", "bias"):
                key = f"mixerblocks.{i}.mixerhead.{part}.0.{name}"
                state_dict[key.replace(".0.", ".1.")] = state_dict[key].clone()
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="research MixerHead crashes"):
        convert("multiconv-mixer", tmp_path, tmp_path / "out", config={"mixer_head": "MixerHead"})


def test_checkpoint_not_matching_config_is_a_clear_load_error(tmp_path):
    from memory_zoo import CheckpointMismatchError

    folder, _ = fixture("plain")
    convert("masked-mixer", folder, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mixing_expanded"] = True
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"missing keys \(4\): model.layers.0.token_mixer.mix_out.bias"):
        MaskedMixerForCausalLM.from_pretrained(tmp_path)
    config["mixing_expanded"] = False
    config["max_position_embeddings"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointMismatchError, match=r"mismatched keys"):
        MaskedMixerForCausalLM.from_pretrained(tmp_path)


def test_console_script_convert_and_generate(tmp_path, tokenizer):
    tokenizer_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tokenizer_dir)
    folder, _ = fixture("plain")
    out = tmp_path / "model"
    run = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "convert", "masked-mixer", str(folder), str(out),
                          "--tokenizer", str(tokenizer_dir)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "9,024 parameters" in run.stdout
    run = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "generate", str(out), "The quick",
                          "--max-new-tokens", "5"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("The quick")
    run = subprocess.run([sys.executable, "-m", "memory_zoo.cli", "generate", str(out), "The quick",
                          "--max-new-tokens", "50"], capture_output=True, text=True)
    assert run.returncode == 2 and "context is 16 tokens" in run.stderr
