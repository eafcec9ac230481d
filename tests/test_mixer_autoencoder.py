"""Masked-mixer autoencoders and memory mixers: research parity, conversion, encode/decode, cached generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

from memory_zoo import (
    MaskedMixerConfig,
    MaskedMixerForCausalLM,
    MemoryMixerConfig,
    MemoryMixerForCausalLM,
    MixerAutoencoderConfig,
    MixerAutoencoderModel,
    VariableMemoryMixerConfig,
    VariableMemoryMixerForCausalLM,
)
from memory_zoo.conversion import ConversionError, convert
from memory_zoo.modeling.modeling_masked_mixer import MixingPositions

ROOT = FIXTURES / "mixer_autoencoder"
SOURCE_OF = {"ae": "autoencoding-mixer", "vmm": "variable-memory-mixer", "memmix": "memory-mixer"}
FOLDERS = sorted(p.name for p in ROOT.iterdir() if p.is_dir())


def fixture(name: str) -> tuple[dict, dict]:
    return json.loads((ROOT / name / "research_config.json").read_text()), load_file(ROOT / name / "expected.safetensors")


def converted(name: str, tmp_path: Path, **kwargs):
    research_config, expected = fixture(name)
    source = SOURCE_OF[name.split("_")[0]]
    model = convert(source, ROOT / name, tmp_path / "converted", config=research_config, **kwargs)
    return model, research_config, expected


@pytest.mark.parametrize("name", FOLDERS)
def test_converted_checkpoint_matches_research_outputs(name, tmp_path):
    converted(name, tmp_path)
    research_config, expected = fixture(name)
    model = AutoModel.from_pretrained(tmp_path / "converted").eval()  # strict: every tensor accounted for
    input_ids = expected["input_ids"]
    reference = expected["logits"].transpose(1, 2)  # research layout [B, V, T]
    with torch.no_grad():
        out = model(input_ids, labels=expected["labels"])
        masked = model(input_ids, labels=expected["labels_masked"]).loss
    if isinstance(model, MemoryMixerForCausalLM):
        reference = reference[:, 1:] if reference.shape[1] > input_ids.shape[1] else reference
    torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.loss, expected["loss"], atol=1e-5, rtol=0)
    torch.testing.assert_close(masked, expected["loss_masked"], atol=1e-5, rtol=0)
    with torch.no_grad():
        if isinstance(model, MixerAutoencoderModel):  # the code a window is compressed to
            torch.testing.assert_close(out.memory, expected.get("memory_code", expected["memory"]), atol=1e-5, rtol=0)
        elif isinstance(model, VariableMemoryMixerForCausalLM) and model.encoder is not None:
            chunks = input_ids.view(input_ids.shape[0], model.config.num_chunks, -1)[:, :-1]
            torch.testing.assert_close(model.encode_chunks(chunks), expected["memories"], atol=1e-5, rtol=0)
            # the cached path (prefill chunk by chunk) gives the same logits
            torch.testing.assert_close(model(input_ids, use_cache=True).logits, out.logits, atol=1e-5, rtol=0)
    info = json.loads((tmp_path / "converted" / "conversion.json").read_text())
    assert info["source"] == SOURCE_OF[name.split("_")[0]] and info["research_repository"] == "blbadger/memorymodels"


def test_pytorch_model_bin_and_compiled_prefix_convert_identically(tmp_path):
    name = "vmm_proj_h2_k3_c2_3chunks"
    research_config, expected = fixture(name)
    state_dict = load_file(ROOT / name / "model.safetensors")
    run = tmp_path / "checkpoint-8000"
    run.mkdir()
    torch.save({f"_orig_mod.{k}": v for k, v in state_dict.items()}, run / "pytorch_model.bin")
    model = convert("variable-memory-mixer", run, tmp_path / "out", config=research_config["init_kwargs"])
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"].transpose(1, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize("source, folder", [
    ("variable-memory-mixer", ROOT / "vmm_proj_h2_k3_c2_3chunks"),
    ("autoencoding-mixer", ROOT / "ae_mixer_frozen_clm_encoder"),
    ("variable-memory-transformer", FIXTURES / "memory_transformer" / "vmt_proj_c2_3chunks"),
])
def test_fsdp_sharded_checkpoint_converts_identically(source, folder, tmp_path):
    """FSDP runs (SHARDED_STATE_DICT) leave checkpoint-<step>/pytorch_model_fsdp_0/, a distributed checkpoint."""
    import warnings

    import torch.distributed.checkpoint as dcp

    research_config = json.loads((folder / "research_config.json").read_text())
    expected = load_file(folder / "expected.safetensors")
    run = tmp_path / "checkpoint-8000"
    with warnings.catch_warnings():  # saving without a process group: a single-process checkpoint, as intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({"model": load_file(folder / "model.safetensors")}, checkpoint_id=str(run / "pytorch_model_fsdp_0"))
    model = convert(source, run, tmp_path / "out", config=research_config)
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"].transpose(1, 2), atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "out" / "conversion.json").read_text())["checkpoint"].endswith("pytorch_model_fsdp_0")


def test_converter_errors_name_the_problem(tmp_path):
    name = "ae_mixer_unroll_c4_k2"
    research_config, _ = fixture(name)
    with pytest.raises(ConversionError, match=r"--config says dim=32.*width"):
        convert("autoencoding-mixer", ROOT / name, tmp_path / "a", config={**research_config["init_kwargs"], "dim": 32})
    with pytest.raises(ConversionError, match="compression"):
        convert("autoencoding-mixer", ROOT / name, tmp_path / "b", config={"compression": 2})
    with pytest.raises(ConversionError, match="SOURCE variable-memory-mixer"):
        convert("autoencoding-mixer", ROOT / "vmm_no_memory", tmp_path / "c", config={})
    # an autoencoder checkpoint is not a memory mixer
    with pytest.raises(ConversionError, match="decoder_wte"):
        convert("variable-memory-mixer", ROOT / name, tmp_path / "d", config={})
    state_dict = load_file(ROOT / name / "model.safetensors")
    state_dict["extra.weight"] = torch.zeros(1)
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConversionError, match="extra.weight"):
        convert("autoencoding-mixer", tmp_path / "model.safetensors", tmp_path / "e", config={})
    # a dumped research description of another class names the right SOURCE
    with pytest.raises(ConversionError, match="describes a MemoryMixer.*use SOURCE memory-mixer"):
        convert("variable-memory-mixer", ROOT / "memmix_token_c4_k2", tmp_path / "g",
                config=fixture("memmix_token_c4_k2")[0])
    # VariableMemoryMixer: chunk layout that contradicts the decoder size
    with pytest.raises(ConversionError, match="n_chunks"):
        convert("variable-memory-mixer", ROOT / "vmm_default_c4_2chunks", tmp_path / "f",
                config={"n_chunks": 3, "length": 12, "compression": 4})


def test_autoencoder_without_projection_is_the_maskedmixers_repeat_model(tmp_path):
    """blbadger/maskedmixers' AutoencodingMixer has no `projection` (repeat only); the repeat fixture without it."""
    name = "ae_mixer_h2_k3_repeat_c4"
    _, expected = fixture(name)
    state_dict = {k: v for k, v in load_file(ROOT / name / "model.safetensors").items() if not k.startswith("projection")}
    save_file(state_dict, str(tmp_path / "model.safetensors"))
    model = convert("autoencoding-mixer", tmp_path / "model.safetensors", tmp_path / "out")
    assert model.config.decoder_input == "repeat"
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"].transpose(1, 2),
                                   atol=1e-5, rtol=0)
    with pytest.raises(ConversionError, match="no projection.weight"):
        convert("autoencoding-mixer", tmp_path / "model.safetensors", tmp_path / "again", config={"unroll": True})


def test_conversion_without_config_uses_research_defaults_and_shapes(tmp_path):
    """Shapes give everything but the flags; absent flags take the research class defaults."""
    model = convert("variable-memory-mixer", ROOT / "vmm_default_c4_2chunks", tmp_path / "out")
    _, expected = fixture("vmm_default_c4_2chunks")
    assert (model.config.num_chunks, model.config.chunk_length, model.config.compression) == (2, 12, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"].transpose(1, 2),
                                   atol=1e-5, rtol=0)


# --- the autoencoder -------------------------------------------------------------------------------------------


def tiny_autoencoder(**overrides) -> MixerAutoencoderModel:
    torch.manual_seed(0)
    settings = dict(vocab_size=50, hidden_size=16, encoder_layers=2, decoder_layers=2, window_length=12,
                    encoder_mixing_kernel_size=3, decoder_mixing_kernel_size=3, compression=2, use_kernels=False)
    return MixerAutoencoderModel(MixerAutoencoderConfig(**{**settings, **overrides})).eval()


@pytest.mark.parametrize("overrides", [{}, {"decoder_input": "repeat", "encoder_num_mixing_heads": 2},
                                       {"compression": 1, "memory_position": -2}])
def test_encode_decode_round_trip_equals_forward(overrides, tmp_path):
    model = tiny_autoencoder(**overrides)
    ids = torch.randint(0, 50, (3, 12))
    with torch.no_grad():
        out = model(ids, labels=ids)
        code = model.encode(ids)
        assert code.shape == (3, model.config.memory_size)
        torch.testing.assert_close(model.decode(code), out.logits, atol=0, rtol=0)
        # the loss is the unshifted reconstruction cross-entropy
        expected = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), ids.flatten())
        torch.testing.assert_close(out.loss, expected)
    model.save_pretrained(tmp_path)
    again = AutoModel.from_pretrained(tmp_path).eval()
    assert type(again) is MixerAutoencoderModel
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, out.logits)


def test_shorter_windows_use_the_leading_positions_and_longer_ones_are_refused():
    model = tiny_autoencoder()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        # a causal encoder's position 7 has read exactly the first 8 tokens
        short_code = model.encode(ids[:, :8])
        blocks = model.embed_tokens(ids)
        for layer in model.encoder_layers:
            blocks = layer(blocks, MixingPositions(0))
        torch.testing.assert_close(short_code, model.down(blocks[:, 7]))
        # decoding a shorter length gives the first positions of the full-length decoding
        torch.testing.assert_close(model.decode(short_code, length=5), model.decode(short_code)[:, :5])
    with pytest.raises(ValueError, match="windows of at most 12 tokens"):
        model(torch.randint(0, 50, (1, 13)))
    with pytest.raises(ValueError, match="memory_size = 8"):
        model.decode(torch.zeros(1, 16))


def test_autoencoder_config_errors():
    with pytest.raises(StrictDataclassError, match="decoder_input"):
        MixerAutoencoderConfig(decoder_input="unrolled")
    with pytest.raises(StrictDataclassError, match="compression = 3 must divide hidden_size"):
        MixerAutoencoderConfig(hidden_size=16, compression=3)
    with pytest.raises(StrictDataclassError, match="not divisible by encoder_num_mixing_heads"):
        MixerAutoencoderConfig(hidden_size=16, encoder_num_mixing_heads=3)
    with pytest.raises(StrictDataclassError, match="memory_position"):
        MixerAutoencoderConfig(memory_position=0)


# --- feature-axis kernels in the Masked Mixer block ------------------------------------------------------------


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_feature_kernel_mixing_equals_the_research_conv(kernel):
    torch.manual_seed(0)
    config = MaskedMixerConfig(vocab_size=40, hidden_size=12, num_hidden_layers=1, max_position_embeddings=10,
                               mixing_kernel_size=kernel, use_kernels=False)
    mixer = MaskedMixerForCausalLM(config).model.layers[0].token_mixer
    conv = torch.nn.Conv1d(10, 10, kernel, padding="same")
    with torch.no_grad():
        conv.weight.copy_(torch.tril(mixer.mix.weight[0]).permute(1, 2, 0))  # [L, L, K]
        conv.bias.copy_(mixer.mix.bias[0])
        x = torch.randn(2, 10, 12)
        torch.testing.assert_close(mixer(x, MixingPositions(0))[0], conv(x))  # (output, mixing weights)


def test_feature_kernel_decoding_and_padding_are_exact():
    torch.manual_seed(0)
    config = MaskedMixerConfig(vocab_size=40, hidden_size=12, num_hidden_layers=2, max_position_embeddings=12,
                               mixing_kernel_size=3, num_mixing_heads=2, mixing_head_dim=6, use_kernels=False)
    model = MaskedMixerForCausalLM(config).eval()
    ids = torch.randint(1, 40, (2, 4))
    cached = model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(cached, model.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0
    full = torch.randint(1, 40, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(full, attention_mask=mask).logits[0, 3:], model(full[:1, 3:]).logits[0])


# --- memory mixers ------------------------------------------------------------------------------------------------


def tiny_memory_mixer(**overrides) -> VariableMemoryMixerForCausalLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=60, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2,
                    chunk_length=6, num_chunks=4, encoder_mixing_kernel_size=3, encoder_num_mixing_heads=2,
                    compression=2, use_kernels=False)
    return VariableMemoryMixerForCausalLM(VariableMemoryMixerConfig(**{**settings, **overrides})).eval()


def tiny_memory_token_mixer(**overrides) -> MemoryMixerForCausalLM:
    torch.manual_seed(0)
    settings = dict(vocab_size=60, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2,
                    chunk_length=6, mixing_kernel_size=2, compression=2, memory_source="previous_chunk",
                    use_kernels=False)
    return MemoryMixerForCausalLM(MemoryMixerConfig(**{**settings, **overrides})).eval()


def test_memory_model_is_causal_across_chunks_and_accepts_partial_chunks():
    model = tiny_memory_mixer()
    ids = torch.randint(1, 60, (2, 24))
    with torch.no_grad():
        full = model(ids).logits
        changed = ids.clone()
        changed[:, 15] = (changed[:, 15] + 1) % 60
        other = model(changed).logits
        torch.testing.assert_close(other[:, :15], full[:, :15], atol=0, rtol=0)
        assert (other[:, 15:] - full[:, 15:]).abs().max() > 0
        torch.testing.assert_close(model(ids[:, :17]).logits, full[:, :17], atol=1e-6, rtol=0)
        # right padding cannot reach earlier positions
        mask = torch.ones(2, 24, dtype=torch.long)
        mask[1, 20:] = 0
        torch.testing.assert_close(model(ids, attention_mask=mask).logits, full)


def test_memory_model_errors():
    model = tiny_memory_mixer()
    with pytest.raises(ValueError, match=r"at most num_chunks \* chunk_length = 4 \* 6 = 24"):
        model(torch.randint(1, 60, (1, 25)))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="left padding"):
        model(torch.randint(1, 60, (2, 8)), attention_mask=mask)
    for memory_model in (model, tiny_memory_token_mixer()):
        with pytest.raises(ValueError, match="needs input_ids"):
            memory_model(inputs_embeds=torch.zeros(1, 3, 24))
        with pytest.raises(ValueError, match=r"input_ids is empty \(shape \(1, 0\)\)"):
            memory_model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(StrictDataclassError, match="encoder_context = 4 is shorter"):
        VariableMemoryMixerConfig(chunk_length=6, encoder_context=4)
    oracle = tiny_memory_token_mixer(memory_source="window")
    with pytest.raises(ValueError, match="one window of 6 tokens"):
        oracle(torch.randint(1, 60, (1, 7)))
    with pytest.raises(ValueError, match="cannot generate left to right"):
        oracle.generate(torch.randint(1, 60, (1, 3)), max_new_tokens=2)
    with pytest.raises(RuntimeError, match="activate_past_recording"):  # crop takes tokens back only when recording
        model(torch.randint(1, 60, (1, 3)), use_cache=True).past_key_values.crop(-2)


def test_memory_model_loss_is_the_research_chunk_loss(tmp_path):
    model = tiny_memory_mixer()
    ids = torch.randint(1, 60, (2, 24))
    labels = ids.clone()
    labels[:, :6] = -100  # the first chunk has no target: it is skipped but still counted
    with torch.no_grad():
        out = model(ids, labels=labels)
    per_chunk = [torch.nn.functional.cross_entropy(out.logits[:, c * 6:c * 6 + 5].flatten(0, 1),
                                                   labels[:, c * 6 + 1:c * 6 + 6].flatten()) for c in (1, 2, 3)]
    torch.testing.assert_close(out.loss, sum(per_chunk) / 4)
    # a shorter input scores like the same input right-padded with ignored labels
    padded = torch.cat([labels[:, :14], torch.full((2, 10), -100)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(ids[:, :14], labels=labels[:, :14]).loss, model(ids, labels=padded).loss)
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, out.logits)


def test_memory_token_mixer_window_mode_is_the_research_oracle():
    """memory_source='window' encodes the window itself: changing a late token changes early logits."""
    model = tiny_memory_token_mixer(memory_source="window")
    ids = torch.randint(1, 60, (1, 6))
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 60
    with torch.no_grad():
        assert (model(ids).logits[:, 0] - model(changed).logits[:, 0]).abs().max() > 0
    causal = tiny_memory_token_mixer()
    with torch.no_grad():
        torch.testing.assert_close(causal(ids).logits[:, :5], causal(changed).logits[:, :5], atol=0, rtol=0)


def test_fixture_folder_is_small():
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 2_000_000, size


def test_reference_outputs_are_checked_and_recorded(tmp_path):
    """`convert(..., reference=...)` verifies the research outputs and records the parity on the model card."""
    from memory_zoo.hub import model_card

    name = "memmix_token_c4_k2"  # research logits [B, V, T + 1]: layout and memory position are handled
    research_config, _ = fixture(name)
    convert("memory-mixer", ROOT / name, tmp_path / "out", config=research_config,
            reference=ROOT / name / "expected.safetensors", research_commit="b5bbc77")
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert info["research_commit"] == "b5bbc77"
    assert info["parity"]["max_abs_logit_diff"] <= 1e-5 and info["parity"]["reference"] == "expected.safetensors"
    card = model_card(tmp_path / "out")
    assert "b5bbc77" in card and "max_abs_logit_diff" in card
    # a reference that does not belong to the checkpoint stops the conversion
    wrong = load_file(ROOT / name / "expected.safetensors")
    wrong["logits"] = wrong["logits"] + 0.01
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConversionError, match="differs from the reference outputs by 0.01"):
        convert("memory-mixer", ROOT / name, tmp_path / "bad", config=research_config,
                reference=tmp_path / "wrong.safetensors")
    assert not (tmp_path / "bad").exists()
