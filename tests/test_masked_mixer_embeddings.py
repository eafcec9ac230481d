"""Masked-mixer text embeddings: research parity of the positions, the padding conventions, sentence-transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES, train_tokenizer
from huggingface_hub.errors import StrictDataclassError
from safetensors.torch import load_file, save_file
from transformers import AutoModel

from memory_zoo import (
    MaskedMixerConfig,
    MaskedMixerForCausalLM,
    MaskedMixerModel,
    RetrievalMixerConfig,
    RetrievalMixerModel,
)
from memory_zoo.conversion import convert
from memory_zoo.modeling.zoo_embedding import detect_padding_side, embedding_indices

TOLERANCE = dict(atol=1e-5, rtol=0)
PAD = 2  # the research fixtures pad with eos = 2
RESEARCH = {"n_vocab": 64, "dim": 32, "depth": 2, "tokenized_length": 16}


def research_fixture(name: str, tmp_path: Path) -> tuple[MaskedMixerModel, dict]:
    folder = FIXTURES / "masked_mixer_retrieval" / name
    convert("masked-mixer", folder, tmp_path / name, config=RESEARCH)
    # AutoModel on the converted causal LM gives the bare model, the research embedding model (no lm_head).
    model = AutoModel.from_pretrained(tmp_path / name).eval()
    assert isinstance(model, MaskedMixerModel)
    return model, load_file(str(folder / "expected.safetensors"))


def first_pad_mask(input_ids: torch.Tensor) -> torch.Tensor:
    """The research right-padding rule: a row's text ends at its first pad token."""
    is_pad = (input_ids == PAD).long()
    return (is_pad.cumsum(-1) == 0).long()


def test_tinystories_embeddings_read_the_second_to_last_window_position(tmp_path):
    """retrieval_mixer_tinystories.embed_input: the full right-padded window is the input, index -2."""
    model, expected = research_fixture("embed_tinystories_lm_v64_d32_l2_T16", tmp_path)
    ids = expected["input_ids"]
    with torch.no_grad():
        # The pad tokens are part of this research convention's input, so the whole window counts as text.
        vectors = model.embed(ids, attention_mask=torch.ones_like(ids))
        hidden = model(ids).last_hidden_state
    torch.testing.assert_close(hidden, expected["last_hidden_state"], **TOLERANCE)
    torch.testing.assert_close(vectors, expected["embeddings"], **TOLERANCE)


def test_infonce_right_padded_embeddings_and_loss(tmp_path):
    """infonce_retrieval with right padding: per row, first pad - 2; the InfoNCE loss from our vectors agrees."""
    model, expected = research_fixture("embed_infonce_rightpad_v64_d32_l2_T16_n6", tmp_path)
    ids = expected["input_ids"][0]
    mask = first_pad_mask(ids)
    assert torch.equal(embedding_indices(mask, ids.shape[-1]), expected["embedding_positions"])
    with torch.no_grad():
        vectors = model.embed(ids, attention_mask=mask, padding_side="right")
    torch.testing.assert_close(vectors, expected["embeddings"], **TOLERANCE)
    # The research loss: cosine similarity / 0.02 of the query (row 0) with every other row; the match is the target.
    logits = F.cosine_similarity(vectors[:1], vectors[1:], dim=-1) / 0.02
    torch.testing.assert_close(logits, expected["cosine_over_tau"], atol=1e-3, rtol=1e-5)
    loss = F.cross_entropy(logits[None], expected["matching_index"] - 1)
    torch.testing.assert_close(loss, expected["loss"], atol=1e-4, rtol=1e-5)


def test_infonce_left_padded_embeddings(tmp_path):
    """infonce_retrieval with left padding: index -2 of the window, pad tokens included in the input."""
    model, expected = research_fixture("embed_infonce_leftpad_v64_d32_l2_T16_n6", tmp_path)
    ids = expected["input_ids"][0]
    with torch.no_grad():
        research_style = model.embed(ids, attention_mask=torch.ones_like(ids))
        masked = model.embed(ids, attention_mask=(ids != PAD).long(), padding_side="left")
        alone = torch.stack([model.embed(row[row != PAD][None])[0] for row in ids])
    torch.testing.assert_close(research_style, expected["embeddings"], **TOLERANCE)
    # With the tokenizer's mask, left padding is exact: every row embeds as if it were alone, which the research
    # (pads fed as tokens) was not.
    torch.testing.assert_close(masked, alone, **TOLERANCE)
    assert (masked - research_style).abs().max() > 1e-3


def test_fineweb_last_token_embeddings(tmp_path):
    """retrieval_dataset_fineweb.embed_input reads the last real token (first pad - 1): pooling="last".

    Its scan for the first pad skips the last window position, so a row with no padding at all is read at T - 2
    there; we read the last real token, T - 1. That row is checked separately.
    """
    model, expected = research_fixture("embed_fineweb_rpad_lastnonpad_v64_d32_l2_T16", tmp_path)
    ids = expected["input_ids"]
    mask = first_pad_mask(ids)
    full = mask.all(-1)
    with torch.no_grad():
        vectors = model.embed(ids, attention_mask=mask, pooling="last")
    positions = embedding_indices(mask, ids.shape[-1], pooling="last")
    assert torch.equal(positions[~full], expected["embedding_positions"][~full])
    torch.testing.assert_close(vectors[~full], expected["embeddings"][~full], **TOLERANCE)
    assert bool(full.any()) and torch.equal(positions[full], torch.full_like(positions[full], 15))
    torch.testing.assert_close(vectors[full], expected["last_hidden_state"][full, 15], **TOLERANCE)


def tiny_embedder(**kwargs) -> MaskedMixerForCausalLM:
    torch.manual_seed(0)
    config = MaskedMixerConfig(vocab_size=128, hidden_size=16, num_hidden_layers=2, max_position_embeddings=24,
                               pad_token_id=0, **kwargs)
    return MaskedMixerForCausalLM(config).eval()


TEXTS = ["The quick brown fox", "A stitch in time saves nine.", "All that glitters is not gold, they say."]


def test_left_and_right_padding_give_the_vectors_of_unpadded_texts(tokenizer):
    model = tiny_embedder()
    with torch.no_grad():
        alone = torch.cat([model.embed(**tokenizer([text], return_tensors="pt")) for text in TEXTS])
        for side in ("left", "right"):
            tokenizer.padding_side = side
            batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
            assert detect_padding_side(batch["attention_mask"]) == side
            torch.testing.assert_close(model.embed(**batch), alone, **TOLERANCE)
            torch.testing.assert_close(model.model.embed(**batch), alone, **TOLERANCE)  # the bare model agrees
    tokenizer.padding_side = "right"
    normalized = model.embed(**tokenizer(TEXTS, padding=True, return_tensors="pt"), normalize=True)
    torch.testing.assert_close(normalized.norm(dim=-1), torch.ones(3))


def test_pooling_default_comes_from_the_config(tokenizer):
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    last = tiny_embedder(embedding_pooling="last")
    with torch.no_grad():
        hidden = last.model(**batch).last_hidden_state
        lengths = batch["attention_mask"].sum(-1)
        torch.testing.assert_close(last.embed(**batch), hidden[torch.arange(3), lengths - 1])
        torch.testing.assert_close(last.embed(**batch, pooling="second_to_last"), hidden[torch.arange(3), lengths - 2])
    with pytest.raises(StrictDataclassError, match="embedding_pooling"):
        MaskedMixerConfig(embedding_pooling="mean")


def test_wrong_or_ambiguous_padding_raises(tokenizer):
    model = tiny_embedder()
    tokenizer.padding_side = "right"
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="padding_side='left' but the attention_mask is right-padded"):
        model.embed(**batch, padding_side="left")
    with pytest.raises(ValueError, match="contain the pad token .id 0. but no attention_mask"):
        model.embed(batch["input_ids"])
    holes = batch["attention_mask"].clone()
    holes[0, 1] = 0
    with pytest.raises(ValueError, match="neither left- nor right-padded"):
        model.embed(batch["input_ids"], attention_mask=holes)
    one_token = torch.tensor([[5, 0, 0], [5, 6, 7]])
    with pytest.raises(ValueError, match=r"Rows \[0\] have fewer than 2 real tokens.*pooling='last'"):
        model.embed(one_token, attention_mask=(one_token != 0).long())
    assert model.embed(one_token, attention_mask=(one_token != 0).long(), pooling="last").shape == (2, 16)
    with pytest.raises(ValueError, match="no real token"):
        model.embed(one_token, attention_mask=torch.tensor([[0, 0, 0], [1, 1, 1]]))
    with pytest.raises(ValueError, match="fixed context of 24"):
        model.embed(torch.ones(1, 30, dtype=torch.long))
    with pytest.raises(ValueError, match="Unknown pooling"):
        model.embed(one_token[1:], pooling="mean")


def test_embed_trains_end_to_end(tokenizer):
    """Gradients flow through embed (contrastive fine-tuning uses it)."""
    model = tiny_embedder().train()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    vectors = model.embed(**batch, normalize=True)
    (vectors @ vectors.T).sum().backward()
    assert model.model.embed_tokens.weight.grad is not None and model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0


def saved_embedder(tmp_path: Path) -> tuple[Path, MaskedMixerForCausalLM]:
    tokenizer = train_tokenizer()
    model = tiny_embedder()
    model.config.pad_token_id = tokenizer.pad_token_id
    folder = tmp_path / "embedder"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    tokenizer.padding_side = "right"
    with torch.no_grad():
        expected = model.embed(**tokenizer(TEXTS, padding=True, return_tensors="pt"))
    save_file({"embeddings": expected}, str(folder / "probe.safetensors"))
    return folder, model


def test_sentence_transformers_encode_equals_embed(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder, model = saved_embedder(tmp_path)
    assert json.loads((folder / "sentence_bert_config.json").read_text())["modality_config"]["text"]["method"] == "embed"
    sentence_model = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    expected = load_file(str(folder / "probe.safetensors"))["embeddings"]
    # batch_size 2 pads the texts differently from the single batch the expected vectors came from
    encoded = sentence_model.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    torch.testing.assert_close(encoded.cpu(), expected, **TOLERANCE)
    assert sentence_model.get_embedding_dimension() == 16
    similarity = sentence_model.similarity(encoded, encoded)
    torch.testing.assert_close(similarity, F.cosine_similarity(expected[:, None], expected[None], dim=-1), **TOLERANCE)
    # Longer texts are truncated to the fixed context instead of failing.
    assert sentence_model.encode(["word " * 200]).shape == (1, 16)


def test_converted_research_mixer_loads_in_sentence_transformers(tmp_path):
    """`memory-zoo convert masked-mixer ... --tokenizer DIR` gives a folder sentence-transformers accepts."""
    from sentence_transformers import SentenceTransformer

    tokenizer = train_tokenizer(vocab_size=60)
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    folder = FIXTURES / "masked_mixer_retrieval" / "embed_infonce_rightpad_v64_d32_l2_T16_n6"
    model = convert("masked-mixer", folder, tmp_path / "converted", config=RESEARCH, tokenizer=tmp_path / "tokenizer")
    sentence_model = SentenceTransformer(str(tmp_path / "converted"), trust_remote_code=True, device="cpu")
    with torch.no_grad():
        expected = model.embed(**tokenizer(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt"))
    torch.testing.assert_close(sentence_model.encode(TEXTS, convert_to_tensor=True), expected, **TOLERANCE)


def test_remote_code_embeddings_and_retrieval_mixer_without_memory_zoo(tmp_path):
    folder, _ = saved_embedder(tmp_path)
    torch.manual_seed(0)
    retrieval = RetrievalMixerModel(RetrievalMixerConfig(hidden_size=16, num_hidden_layers=2, num_slots=4)).eval()
    retrieval.save_pretrained(tmp_path / "retrieval")
    rows = torch.randn(3, 4, 16)
    with torch.no_grad():
        save_file({"inputs_embeds": rows, "logits": retrieval(inputs_embeds=rows).logits},
                  str(tmp_path / "retrieval" / "probe.safetensors"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    probe = Path(__file__).parent / "remote_code_probe_retrieval.py"
    result = subprocess.run([sys.executable, str(probe), str(folder), str(tmp_path / "retrieval")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["blocked"] and seen["embedder_module"].startswith("transformers_modules")
    assert seen["retrieval_module"].startswith("transformers_modules")
    assert seen["sentence_transformers_max_diff"] <= 1e-5 and seen["left_padded_max_diff"] <= 1e-5
    assert seen["scores_max_diff"] <= 1e-6
