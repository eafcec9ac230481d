"""Converted blbadger/memorymodels transformer checkpoints reproduce the research outputs (fixtures: see
fixtures/memory_transformer/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

from memory_zoo import TransformerAutoencoderModel, VariableMemoryTransformerForCausalLM
from memory_zoo.cli import main as cli_main
from memory_zoo.conversion import ConversionError, convert

ROOT = FIXTURES / "memory_transformer"
FOLDERS = sorted(p.name for p in ROOT.iterdir() if p.is_dir())
TOLERANCE = dict(atol=1e-5, rtol=0)


def source_of(name: str) -> str:
    return "autoencoding-transformer" if name.startswith("ae_") else "variable-memory-transformer"


def fixture(name: str) -> tuple[dict, dict]:
    return json.loads((ROOT / name / "research_config.json").read_text()), load_file(ROOT / name / "expected.safetensors")


def research_weights(name: str) -> dict[str, torch.Tensor]:
    folder = ROOT / name
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    return torch.load(folder / "pytorch_model.bin", weights_only=True)


def write_checkpoint(folder: Path, state_dict: dict[str, torch.Tensor], pickled: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if pickled:
        torch.save(state_dict, folder / "pytorch_model.bin")
    else:
        save_file({k: v.clone().contiguous() for k, v in state_dict.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("name", FOLDERS)
def test_converted_checkpoint_matches_research_outputs(name, tmp_path):
    research_config, expected = fixture(name)
    assert cli_main(["convert", source_of(name), str(ROOT / name), str(tmp_path / "out"),
                     "--config", str(ROOT / name / "research_config.json")]) == 0
    auto = AutoModelForCausalLM if name.startswith("vmt") else AutoModel
    model = auto.from_pretrained(tmp_path / "out").eval()  # strict: every tensor accounted for
    input_ids = expected["input_ids"]
    kwargs = {"attention_mask": expected["attention_mask"]} if "attention_mask" in expected else {}
    with torch.no_grad():
        out = model(input_ids, labels=expected["labels"], **kwargs)
        masked = model(input_ids, labels=expected["labels_masked"], **kwargs).loss
    torch.testing.assert_close(out.logits, expected["logits"].transpose(1, 2), **TOLERANCE)  # research [B, V, T]
    torch.testing.assert_close(out.loss, expected["loss"], **TOLERANCE)
    torch.testing.assert_close(masked, expected["loss_masked"], **TOLERANCE)
    with torch.no_grad():
        if isinstance(model, TransformerAutoencoderModel):
            torch.testing.assert_close(out.memory, expected.get("memory_code", expected["memory"]), **TOLERANCE)
            hidden, _ = model.encoder(model.embed_tokens(input_ids))
            torch.testing.assert_close(hidden[:, -1], expected["memory"], **TOLERANCE)
            if "memory_bridged" in expected:
                torch.testing.assert_close(model.bridge_proj(hidden[:, -1]), expected["memory_bridged"], **TOLERANCE)
            torch.testing.assert_close(model.decode(out.memory), out.logits, **TOLERANCE)
        else:
            if not model.config.no_memory:
                chunks = input_ids.view(input_ids.shape[0], model.config.num_chunks, -1)[:, :-1]
                torch.testing.assert_close(model.encode_chunks(chunks), expected["memories"], **TOLERANCE)
            # the cached path (chunk by chunk, memories computed once) gives the same logits
            torch.testing.assert_close(model(input_ids, use_cache=True).logits, out.logits, **TOLERANCE)
    info = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert info["source"] == source_of(name) and info["research_repository"] == "blbadger/memorymodels"
    assert len(info["checkpoint_sha256"]) == 64


def test_abbreviated_model_drops_unused_tensors_and_layers(tmp_path):
    research_config, _ = fixture("ae_transformer_unroll_wrap")
    model = convert("autoencoding-transformer", ROOT / "ae_transformer_unroll_wrap", tmp_path, config=research_config)
    assert len(model.encoder.layers) == 2 and model.encoder.norm is None and model.decoder.norm is None
    assert not model.config.encoder_final_norm and model.config.encoder_config.num_hidden_layers == 2
    notes = " ".join(json.loads((tmp_path / "conversion.json").read_text())["notes"])
    assert "dropped layers 2..2" in notes and "embed_tokens" in notes and "final norm" in notes
    llama_model = convert("autoencoding-transformer", ROOT / "ae_transformer_llamamodel_bridge", tmp_path / "l",
                          config=fixture("ae_transformer_llamamodel_bridge")[0])
    assert llama_model.config.encoder_final_norm and llama_model.config.has_bridge


def test_tied_llm_decoder_from_pytorch_model_bin_and_from_copies(tmp_path):
    name = "vmt_llm_decoder_tied"
    research_config, expected = fixture(name)
    raw = research_weights(name)
    assert raw["lm_head.weight"].data_ptr() == raw["decoder_wte.weight"].data_ptr()  # research format: one tensor
    models = [convert(source_of(name), ROOT / name, tmp_path / "bin", config=research_config)]
    # the same weights written out as separate copies (safetensors cannot share) are recognised as tied, too
    copies = write_checkpoint(tmp_path / "copies", raw)
    flat = research_config["init_kwargs"]
    with pytest.raises(ConversionError, match=r"heads the decoder has.*pretrained decoder's own config.json"):
        convert(source_of(name), copies, tmp_path / "no_heads", config=flat)  # n_heads sizes the encoder only
    flat = {**flat, "decoder_config": {"num_attention_heads": 4, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}}
    models.append(convert(source_of(name), copies, tmp_path / "from_copies", config=flat))
    for model, folder in zip(models, ("bin", "from_copies"), strict=True):
        assert model.config.tie_word_embeddings
        reloaded = VariableMemoryTransformerForCausalLM.from_pretrained(tmp_path / folder)
        assert reloaded.lm_head.weight.data_ptr() == reloaded.embed_tokens.weight.data_ptr()
        with torch.no_grad():
            logits = reloaded(expected["input_ids"]).logits
        torch.testing.assert_close(logits, expected["logits"].transpose(1, 2), **TOLERANCE)


def test_compiled_prefix_pickled_checkpoint_and_flat_config(tmp_path):
    name = "ae_transformer_c4"
    research_config, expected = fixture(name)
    state_dict = {f"_orig_mod.{k}": v for k, v in research_weights(name).items()}
    checkpoint = write_checkpoint(tmp_path / "checkpoint-200000", state_dict, pickled=True)
    flat = {"n_vocab": 128, "dim": 16, "tokenized_length": 8, "compression": 4, "n_heads": 4, "abbreviated_depth": 2}
    model = convert(source_of(name), checkpoint, tmp_path / "out", config=flat, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.config.compression == 4
    logits = model(expected["input_ids"]).logits.float()
    torch.testing.assert_close(logits, expected["logits"].transpose(1, 2), atol=0.1, rtol=0.05)


def test_objective_memory_transformer_converts_like_the_variable_one(tmp_path):
    research_config, expected = fixture("vmt_variable_memory")
    research_config = {**research_config, "class": "ObjectiveMemoryTransformer"}
    research_config["init_kwargs"] = {**research_config["init_kwargs"], "objective": "combined", "blank_copy": True}
    model = convert("variable-memory-transformer", ROOT / "vmt_variable_memory", tmp_path, config=research_config)
    assert not model.config.fixed_memory
    torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"].transpose(1, 2), **TOLERANCE)
    notes = json.loads((tmp_path / "conversion.json").read_text())["notes"]
    assert any("training objective" in note for note in notes)


def test_peft_lora_decoder_is_merged(tmp_path):
    name = "vmt_proj_c2_3chunks"
    research_config, expected = fixture(name)
    state_dict = research_weights(name)
    generator = torch.Generator().manual_seed(0)
    for module in ("decoder.layers.0.self_attn.q_proj", "decoder.layers.1.mlp.down_proj"):
        weight = state_dict.pop(f"{module}.weight")
        down = torch.randn(4, weight.shape[1], generator=generator)
        up = torch.randn(weight.shape[0], 4, generator=generator)
        state_dict[f"{module}.base_layer.weight"] = weight - 32 / 4 * up @ down  # lora_alpha 32, rank 4
        state_dict[f"{module}.lora_A.default.weight"] = down
        state_dict[f"{module}.lora_B.default.weight"] = up
    checkpoint = write_checkpoint(tmp_path / "peft", state_dict)
    with pytest.raises(ConversionError, match=r"PEFT LoRA adapters.*\"lora_alpha\""):
        convert(source_of(name), checkpoint, tmp_path / "a", config=research_config)
    model = convert(source_of(name), checkpoint, tmp_path / "b", config={**research_config, "lora_alpha": 32})
    torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"].transpose(1, 2), **TOLERANCE)


def test_converter_errors_name_the_problem(tmp_path):
    name = "vmt_proj_c2_3chunks"
    research_config, _ = fixture(name)
    arguments = research_config["init_kwargs"]
    folder = ROOT / name

    def fails(match: str, config: dict, checkpoint: Path = folder, source: str = source_of(name)):
        with pytest.raises(ConversionError, match=match):
            convert(source, checkpoint, tmp_path / "out", config=config)

    fails(r"attention heads the encoder has.*\"n_heads\"", {k: v for k, v in arguments.items() if k != "n_heads"})
    fails(r"n_vocab=100.*vocabulary size \(wte rows\) = 128", {**arguments, "n_vocab": 100})
    fails(r"depth=3.*encoder's layers", {**arguments, "depth": 3})
    fails(r"the chunk length.*\"length\"", {k: v for k, v in arguments.items() if k != "length"})
    fails(r"number of chunks.*\"n_chunks\"", {k: v for k, v in arguments.items() if k != "n_chunks"})
    fails(r"compression=4, but down.weight maps 8 features to 4", {**arguments, "compression": 4})
    fails(r"describes a UnrolledAutoencodingTransformer.*use SOURCE autoencoding-transformer",
          {**research_config, "class": "UnrolledAutoencodingTransformer"})
    fails(r"heads \(and head_dim\)", {**arguments, "n_heads": 3})
    extra = {**research_weights(name), "decoder.layers.0.mlp.extra.weight": torch.zeros(2)}
    fails(r"tensors a variable-memory-transformer model does not have: decoder.layers.0.mlp.extra.weight",
          arguments, write_checkpoint(tmp_path / "extra", extra))
    missing = research_weights(name)
    missing.pop("lm_head.weight")
    fails(r"no tensor 'lm_head.weight'", arguments, write_checkpoint(tmp_path / "missing", missing))

    ae_config, _ = fixture("ae_transformer_unroll_wrap")
    ae_arguments = ae_config["init_kwargs"]
    ae = ROOT / "ae_transformer_unroll_wrap"
    fails(r"AbbreviatedModel.*\"abbreviated_depth\".*research default is 8", {**ae_arguments, "n_heads": 4}, ae,
          "autoencoding-transformer")
    fails(r"AbbreviatedModel depth 5, but only 3 layers", {**ae_arguments, "n_heads": 4, "abbreviated_depth": 5}, ae,
          "autoencoding-transformer")
    fails(r"the window length.*\"tokenized_length\"",
          {**{k: v for k, v in ae_arguments.items() if k != "tokenized_length"}, "n_heads": 4,
           "abbreviated_depth": 2}, ae, "autoencoding-transformer")
    fails(r"encoder's hidden_size twice: 16 under sub_models and 32 in encoder_config",
          {**ae_config, "encoder_config": {"hidden_size": 32}}, ae, "autoencoding-transformer")
    fails(r"encoder hidden_size=32.*width \(q_proj columns\) = 16",
          {**ae_arguments, "n_heads": 4, "abbreviated_depth": 2, "encoder_config": {"hidden_size": 32}}, ae,
          "autoencoding-transformer")
    fails(r"decoder_wte.*use SOURCE variable-memory-transformer", {}, folder, "autoencoding-transformer")
    fails(r"no tensor 'decoder_wte.weight'; is it from the right SOURCE", {}, ae, "variable-memory-transformer")


def test_no_memory_checkpoint_drops_the_unused_encoder_embedding(tmp_path):
    research_config, expected = fixture("vmt_no_memory")
    model = convert("variable-memory-transformer", ROOT / "vmt_no_memory", tmp_path, config=research_config)
    assert model.config.no_memory and model.encoder is None and model.config.encoder_config is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.encoder_config is None
    torch.testing.assert_close(reloaded(expected["input_ids"]).logits, expected["logits"].transpose(1, 2),
                               **TOLERANCE)


def test_fixture_folder_is_small():
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 1_250_000, size
