"""Saved models load as self-contained remote code in a process where memory_zoo cannot be imported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import (
    FIXTURES,
    MEMORY_LAYERS_VARIANTS,
    VARIANTS,
    tiny_memory_layers,
    tiny_model,
    train_tokenizer,
)
from safetensors.torch import save_file

import memory_zoo
from memory_zoo.modeling.zoo_remote_code import export_remote_code, flatten_source

PACKAGE = Path(memory_zoo.__file__).parent
# Package modules that remote code may import: they are flattened into one folder, so basenames must be unique.
EXPORTABLE = sorted(p for sub in ("configuration", "modeling", "ops") for p in (PACKAGE / sub).glob("*.py")
                    if p.name != "__init__.py")
PROBE = Path(__file__).parent / "remote_code_probe.py"


def run_probe(model_dir: Path, tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(PROBE), str(model_dir), str(tmp_path / "resaved")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def converted_research_checkpoint(tmp_path: Path):
    """The eft-layout, untied, biased research fixture converted from a ckpt.pt, and the research logits."""
    from test_memory_mosaics_conversion import fixture, write_checkpoint

    from memory_zoo.conversion import convert

    state_dict, model_args, expected = fixture("linearconv_bias")
    model = convert("memory-mosaics", write_checkpoint(tmp_path / "run" / "ckpt.pt", state_dict, model_args),
                    tmp_path / "converted")
    return model, expected["input_ids"], expected["logits"]


def converted_memory_layers_checkpoint(tmp_path: Path, name: str, layout: str):
    """A research fixture converted from one of the research checkpoint formats, and the research logits."""
    from test_memory_layers_conversion import fixture, write_checkpoint

    from memory_zoo.conversion import convert

    _, _, expected = fixture(name)
    model = convert("memory-layers", write_checkpoint(tmp_path / "run", name, layout), tmp_path / "converted")
    return model, expected["input_ids"], expected["logits"]


def converted_lswt_checkpoint(tmp_path: Path, name: str = "causal_default"):
    """A research save_pretrained folder (float16, model_type lsw_transformer) converted, and its logits."""
    from safetensors.torch import load_file

    from memory_zoo.conversion import convert

    folder = FIXTURES / "lswt" / name
    expected = load_file(folder / "expected.safetensors")
    return convert("lswt", folder, tmp_path / "converted"), expected["segment1"], expected["logits1"]


# Research checkpoints converted, plus variants whose code paths the contract's default models leave out; every
# architecture's default model is loaded as remote code by tests/test_contract.py.
CASES = {
    "lswt-converted_research": ("lswt", lambda _, tmp: converted_lswt_checkpoint(tmp)),
    "lswt-converted_preference_heads": ("lswt", lambda _, tmp: converted_lswt_checkpoint(tmp, "dph_weighted_attn")),
    "masked_mixer-multihead": ("masked_mixer", lambda tok, _: tiny_model(vocab_size=len(tok), **VARIANTS["multihead"])),
    "memory_layers-random_gqa": ("memory_layers", lambda tok, _: tiny_memory_layers(
        vocab_size=len(tok), **MEMORY_LAYERS_VARIANTS["gated_vdim_gqa"])),
    "memory_layers-converted_distributed_gqa": ("memory_layers", lambda _, tmp: converted_memory_layers_checkpoint(
        tmp, "gated_vdim_gqa", "distributed")),
    "memory_layers-converted_consolidated_pkplus": ("memory_layers", lambda _, tmp: converted_memory_layers_checkpoint(
        tmp, "pkplus_shared", "consolidated_folder")),
    "memory_mosaics-converted_research": ("memory_mosaics", lambda _, tmp: converted_research_checkpoint(tmp)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saved_model_loads_without_the_package(case, tmp_path):
    architecture, build = CASES[case]
    tokenizer = train_tokenizer(vocab_size=90)  # below the 96-token vocabulary of the Memory Mosaics fixtures
    built = build(tokenizer, tmp_path)
    model, input_ids, reference = built if isinstance(built, tuple) else (built, None, None)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    if input_ids is None:
        input_ids = tokenizer("The quick brown fox jumps", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids).logits
        save_file({"input_ids": input_ids, "logits": logits, "hidden": model.model(input_ids).last_hidden_state},
                  str(model_dir / "probe.safetensors"))
    if reference is not None:  # the converted checkpoint matches the research code before it travels
        torch.testing.assert_close(logits, reference, atol=1e-4, rtol=0)

    report = run_probe(model_dir, tmp_path)
    assert report["blocked"]
    assert report["model_module"].startswith("transformers_modules.")
    assert report["model_module"].endswith(f".modeling_{architecture}")
    prefix = "LSWT" if architecture == "lswt" else "".join(part.title() for part in architecture.split("_"))
    assert report["config_class"] == f"{prefix}Config" and report["base_class"] == f"{prefix}Model"
    # same code and weights in another process: equal up to float32 kernel choices (CPU GEMMs may pick other paths
    # for other memory alignments), typically bit-identical
    assert report["logits_max_diff"] <= 1e-5 and report["hidden_max_diff"] <= 1e-5
    assert report["cached_equals_uncached"]
    assert report["pipeline_text"].startswith("The quick")
    assert report["resaved_max_diff"] <= 1e-5
    # the folder re-saved by the remote-code model carries the same code files
    code = sorted(p.name for p in model_dir.glob("*.py"))
    assert {f"configuration_{architecture}.py", f"modeling_{architecture}.py", "zoo_common.py", "zoo_compat.py",
            "zoo_config.py", "zoo_forward.py", "zoo_inputs.py", "zoo_kernels.py", "zoo_loading.py",
            "zoo_remote_code.py", "zoo_versions.py"} <= set(code) <= {p.name for p in EXPORTABLE}
    for name in code:
        assert (tmp_path / "resaved" / name).read_text() == (model_dir / name).read_text()


def _compression_case(name: str, tmp_path: Path):
    from test_mixer_autoencoder import converted

    model, _, expected = converted(name, tmp_path)
    return model, expected["input_ids"]


# case -> (modeling module, configuration module, builder of (model, input_ids)); compression models share modules
COMPRESSION_CASES = {
    "mixer_autoencoder-converted": ("modeling_mixer_autoencoder", "configuration_mixer_autoencoder",
                                    lambda tmp: _compression_case("ae_mixer_h2_k3_repeat_c4", tmp)),
    "variable_memory_mixer-converted": ("modeling_memory_mixer", "configuration_memory_mixer",
                                        lambda tmp: _compression_case("vmm_proj_h2_k3_c2_3chunks", tmp)),
    "memory_mixer-previous_chunk": ("modeling_memory_mixer", "configuration_memory_mixer", lambda tmp: (
        __import__("test_mixer_autoencoder").tiny_memory_token_mixer(), torch.randint(1, 60, (2, 9)))),
    "transformer_autoencoder-converted": ("modeling_memory_transformer", "configuration_memory_transformer",
                                          lambda tmp: _memory_transformer_case("ae_transformer_bridge", tmp)),
    "variable_memory_transformer-converted": ("modeling_memory_transformer", "configuration_memory_transformer",
                                              lambda tmp: _memory_transformer_case("vmt_proj_c2_3chunks", tmp)),
}


def _memory_transformer_case(name: str, tmp_path: Path):
    from test_memory_transformer_conversion import ROOT, fixture, source_of

    from memory_zoo.conversion import convert

    research_config, expected = fixture(name)
    return convert(source_of(name), ROOT / name, tmp_path / "converted", config=research_config), expected["input_ids"]


@pytest.mark.parametrize("case", sorted(COMPRESSION_CASES))
def test_compression_models_load_without_the_package(case, tmp_path):
    modeling, configuration, build = COMPRESSION_CASES[case]
    model, input_ids = build(tmp_path)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    with torch.no_grad():
        out = model(input_ids)
    tensors = {"input_ids": input_ids, "logits": out.logits}
    if getattr(out, "memory", None) is not None:
        tensors["memory"] = out.memory
    save_file(tensors, str(model_dir / "probe.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, str(PROBE.parent / "remote_code_probe_compression.py"), str(model_dir)],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocked"] and report["model_module"].startswith("transformers_modules.")
    assert report["model_module"].endswith("." + modeling) and report["model_class"] == type(model).__name__
    assert report["logits_max_diff"] <= 1e-5
    assert report.get("cached_equals_uncached", True)
    assert report.get("memory_max_diff", 0.0) <= 1e-5 and report.get("round_trip_max_diff", 0.0) <= 1e-5
    mixer_blocks = {"modeling_masked_mixer.py"} if "mixer" in configuration else set()  # the Llama ones are transformers'
    assert {f"{configuration}.py", f"{modeling}.py", "zoo_compression.py", *mixer_blocks} <= {
        p.name for p in model_dir.glob("*.py")}


def test_save_writes_auto_map_and_flat_code(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_masked_mixer.MaskedMixerConfig",
        "AutoModel": "modeling_masked_mixer.MaskedMixerModel",
        "AutoModelForCausalLM": "modeling_masked_mixer.MaskedMixerForCausalLM",
        "AutoModelForSequenceClassification": "modeling_masked_mixer.MaskedMixerForSequenceClassification",
    }
    assert sorted(p.name for p in tmp_path.glob("*.py")) == [
        "configuration_masked_mixer.py", "masked_mixing.py", "modeling_masked_mixer.py", "zoo_attention.py",
        "zoo_classification.py", "zoo_common.py", "zoo_compat.py", "zoo_config.py", "zoo_embedding.py", "zoo_forward.py", "zoo_inputs.py",
        "zoo_kernels.py", "zoo_loading.py", "zoo_remote_code.py", "zoo_rollback.py", "zoo_versions.py"]
    # a saved masked mixer is also a sentence-transformers model (see tests/test_masked_mixer_embeddings.py)
    assert {"modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"} <= {
        p.name for p in tmp_path.iterdir()}


def test_exported_files_are_the_package_sources_with_only_imports_rewritten(tmp_path):
    """The flat copies are generated, never hand-maintained: every line but the relative imports is identical."""
    tiny_model().save_pretrained(tmp_path)
    sources = {p.name: p for p in EXPORTABLE}
    for exported in tmp_path.glob("*.py"):
        original = sources[exported.name].read_text().splitlines()
        copy = exported.read_text().splitlines()
        assert len(original) == len(copy)
        for before, after in zip(original, copy, strict=True):
            if before != after:
                assert re.match(r"\s*from \.\.?[\w.]+ import", before), before
                assert re.match(r"\s*from \.\w+ import", after), after
        for line in copy:  # only sibling imports remain
            assert not re.match(r"\s*from \.\.", line), line
            assert not re.match(r"\s*(from|import) memory_zoo", line), line


def test_module_basenames_are_unique():
    names = [p.name for p in EXPORTABLE]
    assert len(names) == len(set(names)) and "modeling_masked_mixer.py" in names


def test_export_refuses_imports_transformers_cannot_follow(tmp_path):
    module = tmp_path / "pkg" / "modeling_bad.py"
    module.parent.mkdir()
    module.write_text("from . import helpers\n")
    with pytest.raises(ValueError, match="cannot be exported as remote code"):
        export_remote_code([module], tmp_path / "out")
    module.write_text("from .missing_helper import thing\n")
    with pytest.raises(FileNotFoundError, match="missing_helper"):
        flatten_source(module)
