"""The retrieval mixer: research parity of `memory-zoo convert retrieval-mixer`, the Hub model's API and its errors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModel, Trainer, TrainingArguments

from memory_zoo import RetrievalMixerConfig, RetrievalMixerModel
from memory_zoo.cli import main as cli_main
from memory_zoo.conversion import ConversionError, convert, load_state_dict

# folder -> research constructor arguments (research names)
CASES = {
    "retrieval_mixer_tinystories_d32_n8_l2": {"dim": 32, "depth": 2, "n_samples": 8},
    "optimized_train_retrieval_d32_n8_l2": {"dim": 32, "depth": 2, "n_samples": 8},
    "fineweb_retrieval_d48_n16_l3_4d": {"dim": 48, "depth": 3, "n_samples": 16},
}
TOLERANCE = dict(atol=1e-5, rtol=0)


def fixture(name: str):
    folder = FIXTURES / "masked_mixer_retrieval" / name
    return folder, load_file(str(folder / "expected.safetensors"))


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_model_matches_research_scores_and_loss(name, tmp_path):
    folder, expected = fixture(name)
    config_file = tmp_path / "research.json"
    config_file.write_text(json.dumps(CASES[name]))
    assert cli_main(["convert", "retrieval-mixer", str(folder), str(tmp_path / "out"), "--config", str(config_file)]) == 0
    model = AutoModel.from_pretrained(tmp_path / "out").eval()
    assert isinstance(model, RetrievalMixerModel) and model.config.num_slots == CASES[name]["n_samples"]
    with torch.no_grad():
        out = model(inputs_embeds=expected["inputs_embeds"], labels=expected["labels"])
    assert out.logits.shape == expected["candidate_scores"].shape
    torch.testing.assert_close(out.logits, expected["candidate_scores"], **TOLERANCE)
    torch.testing.assert_close(out.loss, expected["loss"].reshape(()), **TOLERANCE)
    # The research fineweb file also took [batch, 1, n, D] rows.
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=expected["inputs_embeds"][:, None]).logits, out.logits)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_check_accepts_every_research_output_layout_and_records_parity(name, tmp_path):
    folder, expected = fixture(name)
    reference = tmp_path / "reference.safetensors"
    save_file({"inputs_embeds": expected["inputs_embeds"], "logits": expected["research_output"]}, str(reference))
    convert("retrieval-mixer", folder, tmp_path / "out", config=CASES[name], reference=reference)
    parity = json.loads((tmp_path / "out" / "conversion.json").read_text())["parity"]
    assert parity["max_abs_score_diff"] <= 1e-5

    wrong = tmp_path / "wrong.safetensors"
    save_file({"inputs_embeds": expected["inputs_embeds"], "logits": expected["research_output"] + 0.01}, str(wrong))
    with pytest.raises(ConversionError, match="differs from the reference outputs"):
        convert("retrieval-mixer", folder, tmp_path / "bad", config=CASES[name], reference=wrong)
    assert not (tmp_path / "bad").exists()


def test_pytorch_bin_and_compiled_checkpoints_convert_alike(tmp_path):
    folder, expected = fixture("retrieval_mixer_tinystories_d32_n8_l2")
    state = load_state_dict(folder / "model.safetensors")
    checkpoint = tmp_path / "checkpoint-100"
    checkpoint.mkdir()
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, checkpoint / "pytorch_model.bin")
    model = convert("retrieval-mixer", checkpoint, tmp_path / "out")
    with torch.no_grad():
        torch.testing.assert_close(model(inputs_embeds=expected["inputs_embeds"]).logits, expected["candidate_scores"],
                                   **TOLERANCE)


def test_converter_errors_name_the_problem(tmp_path):
    folder, _ = fixture("retrieval_mixer_tinystories_d32_n8_l2")
    with pytest.raises(ConversionError, match="n_samples=16.*number of slots"):
        convert("retrieval-mixer", folder, tmp_path / "a", config={"n_samples": 16})
    with pytest.raises(ConversionError, match="RetrievalTransformer"):
        convert("retrieval-mixer", folder, tmp_path / "b", config={"class": "RetrievalTransformer"})
    with pytest.raises(ConversionError, match="language model.*masked-mixer"):
        convert("retrieval-mixer", FIXTURES / "masked_mixer_retrieval" / "embed_tinystories_lm_v64_d32_l2_T16",
                tmp_path / "c")
    state = load_state_dict(folder / "model.safetensors")
    state.pop("mixerblocks.1.conv.bias")
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ConversionError, match="mixerblocks.1.conv.bias"):
        convert("retrieval-mixer", tmp_path / "broken.safetensors", tmp_path / "d")
    with pytest.raises(ConversionError, match="no tokenizer"):
        convert("retrieval-mixer", folder, tmp_path / "e", tokenizer=tmp_path)


def tiny(num_slots: int = 6, **kwargs) -> RetrievalMixerModel:
    torch.manual_seed(0)
    return RetrievalMixerModel(RetrievalMixerConfig(hidden_size=16, num_hidden_layers=2, num_slots=num_slots, **kwargs))


def test_bad_inputs_raise_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="exactly 5 candidates"):
        model(inputs_embeds=torch.randn(2, 7, 16))
    with pytest.raises(ValueError, match=r"\[batch, 6, 16\]"):
        model(inputs_embeds=torch.randn(2, 6, 8))
    with pytest.raises(ValueError, match="inputs_embeds"):
        model()
    with pytest.raises(ValueError, match="candidate indices 0 ... 4"):
        model(inputs_embeds=torch.randn(2, 6, 16), labels=torch.tensor([0, 5]))
    with pytest.raises(StrictDataclassError, match="at least 2"):
        RetrievalMixerConfig(num_slots=1)


def test_score_takes_query_and_candidates_separately():
    model = tiny().eval()
    query, candidates = torch.randn(3, 16), torch.randn(3, 5, 16)
    with torch.no_grad():
        scores = model.score(query, candidates)
        assert torch.equal(scores, model(inputs_embeds=torch.cat([query[:, None], candidates], 1)).logits)
    assert scores.shape == (3, 5)


def noisy_copy_rows(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of 6 random embeddings where candidate `label` is a noisy copy of the query (slot 0)."""
    rows = torch.randn(count, 6, 16, generator=generator)
    labels = torch.randint(0, 5, (count,), generator=generator)
    rows[torch.arange(count), labels + 1] = rows[:, 0] + 0.1 * torch.randn(count, 16, generator=generator)
    return rows, labels


def test_trainer_learns_to_find_the_matching_candidate(tmp_path):
    """The HF Trainer with `labels` learns the research objective; accuracy is measured on unseen rows."""
    generator = torch.Generator().manual_seed(0)
    rows, labels = noisy_copy_rows(512, generator)
    test_rows, test_labels = noisy_copy_rows(256, generator)
    data = [{"inputs_embeds": r, "labels": lbl} for r, lbl in zip(rows, labels, strict=True)]
    model = tiny()
    with torch.no_grad():
        before = (model.eval()(inputs_embeds=test_rows).logits.argmax(-1) == test_labels).float().mean()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=32, num_train_epochs=40,
                             learning_rate=3e-3, report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    with torch.no_grad():
        after = (model.eval()(inputs_embeds=test_rows).logits.argmax(-1) == test_labels).float().mean()
    assert before < 0.5 and after > 0.9, (before, after)
    trainer.save_model(str(tmp_path / "saved"))
    reloaded = AutoModel.from_pretrained(tmp_path / "saved")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs_embeds=test_rows).logits, model(inputs_embeds=test_rows).logits)
    assert AutoConfig.from_pretrained(tmp_path / "saved").auto_map["AutoModel"] == "modeling_retrieval_mixer.RetrievalMixerModel"


def test_gradient_checkpointing_and_bfloat16():
    model = tiny()
    model.gradient_checkpointing_enable()
    model.train()
    out = model(inputs_embeds=torch.randn(2, 6, 16, requires_grad=True), labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    half = tiny().to(torch.bfloat16).eval()
    with torch.no_grad():
        assert half(inputs_embeds=torch.randn(2, 6, 16, dtype=torch.bfloat16)).logits.dtype == torch.bfloat16


def test_model_cards_show_how_to_use_the_retrieval_models(tmp_path, tokenizer):
    from memory_zoo import MaskedMixerConfig, MaskedMixerForCausalLM
    from memory_zoo.hub import model_card

    tiny().save_pretrained(tmp_path / "retrieval")
    card = model_card(tmp_path / "retrieval", "org/retrieval")
    assert "Retrieval mixer" in card and "blbadger/maskedmixers" in card
    assert "model(inputs_embeds=rows).logits   # [batch, 5]" in card and "pipeline_tag: feature-extraction" in card
    mixer = MaskedMixerForCausalLM(MaskedMixerConfig(vocab_size=128, hidden_size=16, num_hidden_layers=1,
                                                     max_position_embeddings=16))
    mixer.save_pretrained(tmp_path / "mixer")
    tokenizer.save_pretrained(tmp_path / "mixer")
    card = model_card(tmp_path / "mixer", "org/mixer")
    assert 'SentenceTransformer("org/mixer", trust_remote_code=True)' in card


def test_lora_adapts_the_mlps_and_can_train_the_slot_mixing_in_full(tmp_path):
    from peft import PeftModel, get_peft_model

    from memory_zoo.lora import lora_config

    model = tiny()
    peft_model = get_peft_model(model, lora_config(model, modules_to_save=["slot_mixing"]))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "slot_mixing" in name for name in trainable)
    assert any("mlp.up_proj.lora_A" in name for name in trainable)
    rows = torch.randn(4, 6, 16)
    out = peft_model(inputs_embeds=rows, labels=torch.tensor([0, 1, 2, 3]))
    out.loss.backward()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    optimizer.step()
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        adapted = peft_model(inputs_embeds=rows).logits
    reloaded = PeftModel.from_pretrained(tiny(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(inputs_embeds=rows).logits, adapted)
        torch.testing.assert_close(reloaded.merge_and_unload()(inputs_embeds=rows).logits, adapted, atol=1e-5, rtol=1e-5)


def test_cli_refuses_to_generate_or_evaluate_with_a_retrieval_mixer(tmp_path, tokenizer, capsys):
    tiny().save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text("some text " * 20)
    for argv in (["generate", str(tmp_path / "model"), "hello"], ["eval", str(tmp_path / "model"), str(tmp_path / "text.txt")]):
        assert cli_main(argv) == 2
        assert "retrieval_mixer model: it scores candidate embeddings" in capsys.readouterr().err


def test_loads_with_device_map_and_dtype(tmp_path):
    model = tiny().eval()
    model.save_pretrained(tmp_path)
    rows = torch.randn(2, 6, 16)
    loaded = AutoModel.from_pretrained(tmp_path, device_map="cpu", dtype=torch.bfloat16).eval()
    assert loaded.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs_embeds=rows.bfloat16()).logits.float(), model(inputs_embeds=rows).logits,
                                   atol=0.1, rtol=0.05)
