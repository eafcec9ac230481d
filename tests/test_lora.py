"""PEFT LoRA on every architecture: documented targets, a few training steps, adapter save/reload onto a fresh
base, merge back to a plain memory-zoo model, generation through the PeftModel."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import tiny_model
from test_integration import AUTOENCODER_BUILDERS, BUILDERS
from transformers import AutoModel, AutoModelForCausalLM

from memory_zoo import (
    ARCHITECTURES,
    TASK_MODELS,
    MemoryMixerConfig,
    MemoryMixerForCausalLM,
    MixerAutoencoderConfig,
    MixerAutoencoderModel,
    VariableMemoryMixerConfig,
    VariableMemoryMixerForCausalLM,
)
from memory_zoo import lora as lora_module
from memory_zoo.lora import LORA_TARGET_MODULES, lora_config

# LoRA on our models prints no deprecation warning on any supported transformers (PEFT reads is_gradient_checkpointing).
pytestmark = pytest.mark.filterwarnings("error::FutureWarning")

peft = pytest.importorskip("peft")
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from peft.tuners.lora import LoraLayer  # noqa: E402

MODEL_TYPES = [config.model_type for config, _, _ in ARCHITECTURES]
TASK_MODEL_TYPES = [config.model_type for config, _ in TASK_MODELS]  # LoRA tested in their own files
CAUSAL = {config.model_type for config, _, causal_lm in ARCHITECTURES if causal_lm is not None}

# Tiny models that build every optional target too (mixing-head projections), where the shared builders do not.
LORA_BUILDERS = {
    "masked_mixer": lambda: tiny_model(num_mixing_heads=2, mixing_head_dim=8),
    "variable_memory_mixer": lambda: VariableMemoryMixerForCausalLM(VariableMemoryMixerConfig(
        vocab_size=300, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2, chunk_length=8,
        num_chunks=3, encoder_mixing_kernel_size=2, compression=2, encoder_num_mixing_heads=2)),
    "memory_mixer": lambda: MemoryMixerForCausalLM(MemoryMixerConfig(
        vocab_size=300, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2, chunk_length=8,
        memory_source="previous_chunk", encoder_num_mixing_heads=2)),
    "mixer_autoencoder": lambda: MixerAutoencoderModel(MixerAutoencoderConfig(
        vocab_size=300, hidden_size=32, encoder_layers=2, decoder_layers=2, window_length=24, compression=2,
        encoder_num_mixing_heads=2, decoder_num_mixing_heads=2)),
}


def build(model_type: str) -> torch.nn.Module:
    builder = LORA_BUILDERS.get(model_type) or BUILDERS.get(model_type) or AUTOENCODER_BUILDERS.get(model_type)
    if builder is None:
        pytest.fail(f"No tiny {model_type} model: add one to BUILDERS / AUTOENCODER_BUILDERS (test_integration.py).")
    torch.manual_seed(0)
    return builder().eval()


def logits(model: torch.nn.Module, input_ids: torch.Tensor, causal: bool) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids, **({"use_cache": False} if causal else {})).logits


def test_every_architecture_documents_lora_targets():
    assert set(LORA_TARGET_MODULES) == set(MODEL_TYPES) | set(TASK_MODEL_TYPES)
    for model_type in LORA_TARGET_MODULES:
        assert f"| `{model_type}` |" in lora_module.__doc__, f"{model_type} is not in the memory_zoo.lora table"


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_lora_trains_saves_reloads_and_merges(model_type, tmp_path):
    causal = model_type in CAUSAL
    auto = AutoModelForCausalLM if causal else AutoModel
    base = build(model_type)
    base.save_pretrained(tmp_path / "base")
    base_class, base_keys = type(base), set(base.state_dict())
    input_ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    before = logits(base, input_ids, causal)

    model = get_peft_model(base, lora_config(base, r=4, alpha=8))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    for target in LORA_TARGET_MODULES[model_type]:
        assert any(name.endswith("." + target) for name in wrapped), f"{target} matched no module"
    torch.testing.assert_close(logits(model, input_ids, causal), before, atol=1e-6, rtol=0)  # B starts at zero

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0], losses
    adapted = logits(model, input_ids, causal)
    assert (adapted - before).abs().max() > 1e-3  # the adapter changed the outputs

    model.save_pretrained(tmp_path / "adapter")
    saved = peft.utils.load_peft_weights(str(tmp_path / "adapter"))
    assert saved and all("lora_" in key for key in saved)  # the adapter only, not the base weights

    fresh = auto.from_pretrained(tmp_path / "base").eval()
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(reloaded, input_ids, causal), adapted, atol=1e-6, rtol=0)

    merged = reloaded.merge_and_unload()
    assert type(merged) is base_class
    assert not any(isinstance(module, LoraLayer) for module in merged.modules())
    merged_logits = logits(merged, input_ids, causal)
    torch.testing.assert_close(merged_logits, adapted, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path / "merged")
    again = auto.from_pretrained(tmp_path / "merged").eval()
    assert type(again) is base_class and set(again.state_dict()) == base_keys
    torch.testing.assert_close(logits(again, input_ids, causal), merged_logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("model_type", sorted(CAUSAL))
def test_generation_through_peft_model_cached_equals_uncached(model_type):
    base = build(model_type)
    # Random (non-zero) adapters, so that generation really runs through them.
    model = get_peft_model(base, lora_config(base, r=4, init_lora_weights=False)).eval()
    prompt = torch.randint(3, 300, (2, 5), generator=torch.Generator().manual_seed(2))
    outputs = [model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                              do_sample=False, use_cache=use_cache, pad_token_id=0) for use_cache in (True, False)]
    assert torch.equal(outputs[0], outputs[1]), outputs
    assert outputs[0].shape[1] > prompt.shape[1]


def test_lora_config_without_target_modules_uses_registered_defaults():
    base = build("memory_layers")
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=4))
    assert model.peft_config["default"].target_modules == set(LORA_TARGET_MODULES["memory_layers"])
    assert any(isinstance(module, LoraLayer) for module in model.modules())


def test_lora_config_task_types_and_errors():
    assert lora_config("masked_mixer").task_type == "CAUSAL_LM"
    assert lora_config("transformer_autoencoder").task_type is None
    config = lora_config("lswt", r=2, target_modules=["self_attn.q_proj"], modules_to_save=["head_proj"])
    assert (config.r, config.target_modules, config.modules_to_save) == (2, {"self_attn.q_proj"}, ["head_proj"])
    with pytest.raises(KeyError, match="not a memory-zoo architecture"):
        lora_config("llama")


def test_package_imports_without_peft():
    code = ("import sys; sys.modules['peft'] = None\n"  # makes `import peft` fail as if it were not installed
            "import memory_zoo\n"
            "from memory_zoo.lora import lora_config\n"
            "try:\n    lora_config('masked_mixer')\nexcept ImportError as e:\n    print('ImportError', e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ImportError LoRA needs PEFT" in result.stdout


def test_lswt_preference_heads_adapt_the_backbone_only():
    from conftest import tiny_lswt_config

    from memory_zoo import LSWTForPreferenceHeads

    # The attention-token pooler has its own q/k/v/o_proj adapter modules, which LoRA cannot wrap: the qualified
    # suffixes leave them alone.
    pooler = {"reward_heads": ["r"], "token_pooling": "attn", "token_pooling_config": {
        "cls_token_id": 5, "sep_token_id": 6, "new_token_id": 7, "pad_token_id": 0, "self_type": "self",
        "n_repeats": 2, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "alibi_slope": 1.0}}
    torch.manual_seed(0)
    model = get_peft_model(LSWTForPreferenceHeads(tiny_lswt_config(pooler_config=pooler)), lora_config("lswt"))
    wrapped = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert len(wrapped) == 2 * 7 and not any("pooler" in name for name in wrapped)
    input_ids = torch.randint(10, 300, (2, 10))
    input_ids[:, [3, 8]] = 5
    assert model(input_ids=input_ids).rewards["r"].shape == (2, 1)


@pytest.mark.parametrize(("model_type", "modules"), [("masked_mixer", ["token_mixer.mix"]),
                                                     ("memory_layers", ["memory_values"]),
                                                     ("memory_mosaics", ["pmem"])])
def test_parameters_lora_cannot_adapt_train_in_full_with_modules_to_save(model_type, modules, tmp_path):
    base = build(model_type)
    base.save_pretrained(tmp_path / "base")
    model = get_peft_model(base, lora_config(base, r=4, modules_to_save=modules))
    assert any(p.requires_grad and "modules_to_save" in name for name, p in model.named_parameters())
    input_ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval().save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    expected = logits(model, input_ids, True)
    torch.testing.assert_close(logits(reloaded.eval(), input_ids, True), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(logits(reloaded.merge_and_unload(), input_ids, True), expected, atol=1e-5, rtol=1e-5)
