"""Memory Mosaics inside the wider transformers ecosystem: Auto classes, Trainer, accelerate loading."""

from __future__ import annotations

import torch
from conftest import tiny_mosaics
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, Trainer, TrainingArguments

from memory_zoo import MemoryMosaicsConfig, MemoryMosaicsForCausalLM, MemoryMosaicsModel


def test_auto_classes_resolve_to_package_classes(tmp_path):
    tiny_mosaics().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MemoryMosaicsConfig)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is MemoryMosaicsForCausalLM
    base = AutoModel.from_pretrained(tmp_path)  # from a causal-LM checkpoint: the head is left behind, strictly
    assert type(base) is MemoryMosaicsModel


def test_hf_trainer_trains_tied_model_and_checkpoint_reloads(tmp_path):
    torch.manual_seed(0)
    model = tiny_mosaics(attention_dropout=0.0, hidden_dropout=0.0).train()
    data = [{"input_ids": x, "labels": x} for x in torch.randint(3, 40, (32, 24))]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, num_train_epochs=4,
                             learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                             gradient_accumulation_steps=2, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    x = data[0]["input_ids"][None]
    torch.testing.assert_close(reloaded(x).logits, model.eval()(x).logits)


def test_device_map_auto_and_dtype_loading(tmp_path):
    tiny_mosaics().save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, device_map="auto", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = model.generate(torch.randint(3, 300, (1, 5)), max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 9)
