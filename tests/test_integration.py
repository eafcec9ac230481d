"""Every architecture inside the wider transformers ecosystem: Auto classes, Trainer, accelerate loading."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_lswt, tiny_memory_layers, tiny_model, tiny_mosaics
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Trainer, TrainingArguments

from memory_zoo import (
    ARCHITECTURES,
    MemoryMixerConfig,
    MemoryMixerForCausalLM,
    MixerAutoencoderConfig,
    MixerAutoencoderModel,
    TransformerAutoencoderConfig,
    TransformerAutoencoderModel,
    VariableMemoryMixerConfig,
    VariableMemoryMixerForCausalLM,
    VariableMemoryTransformerConfig,
    VariableMemoryTransformerForCausalLM,
)


def tiny_variable_memory_mixer() -> VariableMemoryMixerForCausalLM:
    return VariableMemoryMixerForCausalLM(VariableMemoryMixerConfig(
        vocab_size=300, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2, chunk_length=8,
        num_chunks=3, encoder_mixing_kernel_size=2, compression=2))


def tiny_memory_token_mixer() -> MemoryMixerForCausalLM:
    return MemoryMixerForCausalLM(MemoryMixerConfig(
        vocab_size=300, encoder_hidden_size=16, hidden_size=24, encoder_layers=2, decoder_layers=2, chunk_length=8,
        memory_source="previous_chunk"))


def tiny_variable_memory_transformer() -> VariableMemoryTransformerForCausalLM:
    llama = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=4)
    return VariableMemoryTransformerForCausalLM(VariableMemoryTransformerConfig(
        vocab_size=300, encoder_config=llama, decoder_config={**llama, "hidden_size": 24}, chunk_length=8,
        num_chunks=3, compression=2))


# architecture -> a tiny random causal LM of it (vocabulary 300)
BUILDERS = {
    "masked_mixer": tiny_model,
    "memory_mosaics": lambda: tiny_mosaics(attention_dropout=0.0, hidden_dropout=0.0),
    "memory_layers": lambda: tiny_memory_layers(num_key_value_heads=2),
    "lswt": lambda: tiny_lswt(),
    "variable_memory_mixer": tiny_variable_memory_mixer,
    "memory_mixer": tiny_memory_token_mixer,
    "variable_memory_transformer": tiny_variable_memory_transformer,
}
# architecture -> a tiny random autoencoder of it (vocabulary 300, windows of 24 tokens); no causal-LM class
AUTOENCODER_BUILDERS = {
    "mixer_autoencoder": lambda: MixerAutoencoderModel(MixerAutoencoderConfig(
        vocab_size=300, hidden_size=32, encoder_layers=2, decoder_layers=2, window_length=24, compression=2)),
    "transformer_autoencoder": lambda: TransformerAutoencoderModel(TransformerAutoencoderConfig(
        vocab_size=300, encoder_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4),
        window_length=24, compression=2)),
}


def test_every_registered_architecture_is_covered():
    assert {config.model_type for config, _, _ in ARCHITECTURES} == set(BUILDERS) | set(AUTOENCODER_BUILDERS)
    for config, _, causal_lm in ARCHITECTURES:
        assert (causal_lm is None) == (config.model_type in AUTOENCODER_BUILDERS)


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_auto_classes_resolve_to_package_classes_without_remote_code(architecture, tmp_path):
    config_class, base_class, causal_lm_class = next(a for a in ARCHITECTURES if a[0].model_type == architecture)
    model = BUILDERS[architecture]()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), config_class)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is causal_lm_class
    # from a causal-LM checkpoint the head is left behind, strictly
    assert type(AutoModel.from_pretrained(tmp_path)) is base_class
    assert type(AutoModelForCausalLM.from_config(model.config)) is causal_lm_class


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_hf_trainer_trains_and_checkpoint_reloads(architecture, tmp_path):
    torch.manual_seed(0)
    model = BUILDERS[architecture]().train()
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, 40, (32, 24))]  # a learnable, small vocabulary
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_train_epochs=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             gradient_accumulation_steps=2, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0]
    if model.config.tie_word_embeddings:
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    x = data[0]["input_ids"][None]
    torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits)


@pytest.mark.parametrize("architecture", sorted(BUILDERS))
def test_device_map_auto_and_dtype_loading(architecture, tmp_path):
    BUILDERS[architecture]().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = model.generate(torch.randint(3, 300, (1, 5)), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)


@pytest.mark.parametrize("architecture", sorted(AUTOENCODER_BUILDERS))
def test_autoencoder_auto_class_trainer_and_dtype_loading(architecture, tmp_path):
    torch.manual_seed(0)
    config_class, base_class, _ = next(a for a in ARCHITECTURES if a[0].model_type == architecture)
    model = AUTOENCODER_BUILDERS[architecture]().train()
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, 40, (32, 24))]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_train_epochs=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 16 and losses[-1] < losses[0]
    trainer.save_model(str(tmp_path / "final"))
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "final"), config_class)
    reloaded = AutoModel.from_pretrained(tmp_path / "final").eval()
    assert type(reloaded) is base_class
    x = data[0]["input_ids"][None]
    torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits)
    half = AutoModel.from_pretrained(tmp_path / "final", device_map="auto", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    assert half(x).logits.shape == (1, 24, 300) and half.encode(x).shape == (1, reloaded.config.memory_size)
