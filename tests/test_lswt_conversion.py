"""Converting LSWT research checkpoints (the research save_pretrained folders, float16) with XL-memory parity."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file

from memory_zoo import LSWTForCausalLM
from memory_zoo.conversion import ConversionError, convert
from memory_zoo.modeling.modeling_lswt import LSWTForPreferenceHeads

LSWT = FIXTURES / "lswt"
CAUSAL = sorted(p.name for p in LSWT.iterdir() if p.is_dir() and not p.name.startswith("dph"))
TOLERANCE = 1e-4


@pytest.mark.parametrize("name", CAUSAL)
def test_converted_checkpoint_matches_research_segments_trimmed_and_untrimmed(name, tmp_path):
    expected = load_file(LSWT / name / "expected.safetensors")
    convert("lswt", LSWT / name, tmp_path / "out")
    model = LSWTForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert model.dtype == torch.float32  # the float16 research weights, upcast exactly
    with torch.no_grad():
        first = model(expected["segment1"], use_cache=True, output_hidden_states=True)
        torch.testing.assert_close(first.logits, expected["logits1"], atol=TOLERANCE, rtol=0)
        for i, hidden in enumerate(first.hidden_states):
            torch.testing.assert_close(hidden, expected[f"hidden1.{i}"], atol=TOLERANCE, rtol=0)
        second = model(expected["segment2"], past_key_values=first.past_key_values)
        torch.testing.assert_close(second.logits, expected["logits2_untrimmed"], atol=TOLERANCE, rtol=0)
        trimmed = model(expected["segment1"], use_cache=True, max_key_values=6).past_key_values
        assert trimmed.get_seq_length() == 6
        second = model(expected["segment2"], past_key_values=trimmed, max_key_values=6)
        torch.testing.assert_close(second.logits, expected["logits2_trimmed"], atol=TOLERANCE, rtol=0)
        third = model(expected["segment3"], past_key_values=second.past_key_values, max_key_values=6)
        torch.testing.assert_close(third.logits, expected["logits3_trimmed"], atol=TOLERANCE, rtol=0)
    prompt = expected["generate_prompt"].reshape(1, -1)
    new_tokens = expected["generated"].shape[-1] - prompt.shape[-1]
    generated = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                               eos_token_id=None)
    assert torch.equal(generated.reshape(-1), expected["generated"].reshape(-1))


def test_converted_config_maps_every_research_field(tmp_path):
    research = json.loads((LSWT / "registers_qknorm_nobias" / "config.json").read_text())
    model = convert("lswt", LSWT / "registers_qknorm_nobias", tmp_path / "out")
    config = model.config
    assert (config.hidden_size, config.embedding_size, config.intermediate_size, config.num_attention_heads,
            config.num_hidden_layers, config.num_registers) == (
        research["d_model"], research["d_vocab"], research["d_ffn"], research["n_heads"], research["n_layers"],
        research["n_registers"])
    assert config.qk_norm and not config.attention_bias and config.max_position_embeddings == research["rope_positions"]
    notes = json.loads((tmp_path / "out" / "conversion.json").read_text())["notes"]
    assert any("float16" in note for note in notes)


@pytest.mark.parametrize("name, config", [("dph_cls", None), ("dph_weighted_attn", None),
                                          ("dph_legacy", {"cls_token_id": 5})])
def test_preference_head_checkpoints_match_research_rewards(name, config, tmp_path):
    expected = load_file(LSWT / name / "expected.safetensors")
    convert("lswt", LSWT / name, tmp_path / "out", config=config)
    model = LSWTForPreferenceHeads.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        out = model(expected["dph_input"], use_cache=False)
    torch.testing.assert_close(out.logits, expected["dph_logits"], atol=TOLERANCE, rtol=0)
    assert set(out.rewards) == {k.removeprefix("rewards.") for k in expected if k.startswith("rewards.")}
    for head, reward in out.rewards.items():
        torch.testing.assert_close(reward, expected[f"rewards.{head}"], atol=TOLERANCE, rtol=0)
    if "dph_embeddings_seq" in expected:  # every token's pooled embedding (checks padding masks and SGPT too)
        with torch.no_grad():
            hidden = model.model(expected["dph_input"], use_cache=False, output_hidden_states=True).hidden_states
            states = model.pooler.pooled_states(hidden, expected["dph_input"])
        torch.testing.assert_close(states, expected["dph_embeddings_seq"], atol=TOLERANCE, rtol=0)
    # a preference-head model is still a language model: it generates
    prompt = expected["generate_prompt"].reshape(1, -1)
    assert model.generate(prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False).shape == (1, 9)


def test_legacy_preference_heads_need_the_class_token(tmp_path):
    with pytest.raises(ConversionError, match=r"do not record the token rewards are read at.*--config"):
        convert("lswt", LSWT / "dph_legacy", tmp_path / "out")


def test_bad_folders_get_clear_errors(tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(LSWT / "causal_default", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(config, n_layers=3)))
    with pytest.raises(ConversionError, match=r"blocks \[0, 1\] but config.json says n_layers=3"):
        convert("lswt", folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps(dict(config, model_type="llama")))
    with pytest.raises(ConversionError, match="not an LSWT research checkpoint"):
        convert("lswt", folder, tmp_path / "out")
    (folder / "config.json").write_text(json.dumps(dict(config, gated_att=True)))
    with pytest.raises(ConversionError, match="gated_att"):
        convert("lswt", folder, tmp_path / "out")
    (folder / "config.json").unlink()
    with pytest.raises(ConversionError, match="no config.json"):
        convert("lswt", folder, tmp_path / "out")
