"""Transformer autoencoder and variable-memory transformer: encode/decode, chunked memory, cache, padding, generation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModel, AutoModelForCausalLM, LlamaConfig

from memory_zoo import (
    CheckpointMismatchError,
    TransformerAutoencoderConfig,
    TransformerAutoencoderModel,
    VariableMemoryTransformerCache,
    VariableMemoryTransformerConfig,
    VariableMemoryTransformerForCausalLM,
)
from memory_zoo.configuration import research_llama_config
from memory_zoo.modeling.zoo_compression import chunked_causal_loss

ATOL = 1e-5
VOCAB = 300


def llama(hidden: int = 16, layers: int = 2, heads: int = 4, **overrides) -> dict:
    return dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, **overrides)


def perturb(model, seed: int = 0):
    """Larger-than-init weights, so that attention is far from uniform and every path shows in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if parameter.dim() == 2:
                parameter.copy_(noise / parameter.shape[-1] ** 0.5 * (4.0 if "embed" in name else 1.0))
            else:
                parameter.add_(0.2 * noise)
    return model.eval()


def tiny_autoencoder(seed: int = 0, **overrides) -> TransformerAutoencoderModel:
    settings = dict(vocab_size=VOCAB, encoder_config=llama(16), decoder_config=llama(16), window_length=12)
    settings.update(overrides)
    torch.manual_seed(seed)
    return perturb(TransformerAutoencoderModel(TransformerAutoencoderConfig(**settings)), seed)


def tiny_memory_transformer(seed: int = 0, **overrides) -> VariableMemoryTransformerForCausalLM:
    settings = dict(vocab_size=VOCAB, encoder_config=llama(16), decoder_config=llama(24, num_key_value_heads=2),
                    chunk_length=4, num_chunks=4, compression=2, pad_token_id=0, eos_token_id=2)
    settings.update(overrides)
    torch.manual_seed(seed)
    return perturb(VariableMemoryTransformerForCausalLM(VariableMemoryTransformerConfig(**settings)), seed)


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


# Memory layouts worth covering separately.
MEMORY_VARIANTS = {
    "fixed_c2_proj": {},
    "variable": {"fixed_memory": False, "compression": 1},
    "no_memory": {"no_memory": True, "encoder_config": None, "compression": 1},
}


@pytest.fixture(params=sorted(MEMORY_VARIANTS))
def memory_model(request):
    return tiny_memory_transformer(**MEMORY_VARIANTS[request.param])


# ---------------------------------------------------------------------------------------------------------------------
# autoencoder


@pytest.mark.parametrize("overrides", [{}, {"compression": 4}, {"decoder_config": llama(24, layers=1)},
                                       {"decoder_input": "repeat", "encoder_final_norm": True,
                                        "decoder_final_norm": True}])
def test_autoencoder_encode_decode_round_trip_equals_forward(overrides):
    model = tiny_autoencoder(**overrides)
    x = ids(2, 12)
    with torch.no_grad():
        out = model(x, labels=x)
        memory = model.encode(x)
        assert memory.shape == (2, model.config.memory_size) and out.logits.shape == (2, 12, VOCAB)
        torch.testing.assert_close(out.memory, memory, atol=0, rtol=0)
        torch.testing.assert_close(model.decode(memory), out.logits, atol=ATOL, rtol=0)
    expected_loss = F.cross_entropy(out.logits.reshape(-1, VOCAB), x.reshape(-1))  # no shift: reconstruction
    torch.testing.assert_close(out.loss, expected_loss, atol=ATOL, rtol=0)
    assert model.config.memory_size == 16 // model.config.compression


def test_autoencoder_shorter_window_is_exact_and_longer_is_refused():
    model = tiny_autoencoder()
    x = ids(2, 12)
    with torch.no_grad():
        hidden, _ = model.encoder(model.embed_tokens(x))
        short = model(x[:, :7])
        # the causal encoder's memory of a prefix is its hidden state at the prefix's last token
        torch.testing.assert_close(short.memory, hidden[:, 6], atol=ATOL, rtol=0)
        # the causal decoder's first rows: the same as a full-length decode of that memory
        torch.testing.assert_close(short.logits, model.decode(short.memory)[:, :7], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.decode(short.memory, length=5), short.logits[:, :5], atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"at most 12 tokens \(config.window_length\).*windows of 12 tokens"):
        model(ids(1, 13))
    with pytest.raises(ValueError, match=r"memory must be \[batch, 16\]"):
        model.decode(torch.zeros(1, 8))
    with pytest.raises(ValueError, match="length must be between 1 and config.window_length=12"):
        model.decode(torch.zeros(1, 16), length=13)


def test_autoencoder_memory_position_and_padding_mask():
    model = tiny_autoencoder(memory_position=-2)
    x = ids(1, 12)
    with torch.no_grad():
        hidden, _ = model.encoder(model.embed_tokens(x))
        torch.testing.assert_close(model.encode(x), hidden[:, -2], atol=0, rtol=0)
        # padding is read like any token, as in research training: the mask changes nothing
        mask = torch.ones_like(x)
        mask[:, :3] = 0
        torch.testing.assert_close(model(x, attention_mask=mask).logits, model(x).logits, atol=0, rtol=0)


def test_autoencoder_hidden_states_and_save_load_round_trip(tmp_path):
    model = tiny_autoencoder(compression=2)
    x = ids(2, 12)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, 12, 16)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(reloaded) is TransformerAutoencoderModel and reloaded.config.encoder_config.intermediate_size == 64
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, out.logits, atol=0, rtol=0)
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForCausalLM.from_pretrained(tmp_path)  # an autoencoder is not a causal LM


# ---------------------------------------------------------------------------------------------------------------------
# variable-memory transformer


def test_parallel_cached_and_token_by_token_agree(memory_model):
    x = ids(2, 14)  # 3 full chunks of 4 and a partial one
    with torch.no_grad():
        parallel = memory_model(x, use_cache=False).logits
        cached = memory_model(x, use_cache=True)
        assert cached.past_key_values.get_seq_length() == 14
        cache, steps = None, []
        for t in range(0, 14, 3):  # calls that straddle chunk boundaries
            out = memory_model(x[:, t:t + 3], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
    assert parallel.shape == (2, 14, VOCAB)
    torch.testing.assert_close(cached.logits, parallel, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.cat(steps, 1), parallel, atol=ATOL, rtol=0)
    if not memory_model.config.no_memory:  # memories of the three finished chunks, each computed once
        assert cache.memories().shape == (2, 3, memory_model.config.decoder_hidden_size)


def test_memory_model_is_causal_and_reads_earlier_chunks(memory_model):
    a = ids(1, 16)
    b = a.clone()
    b[0, 9] = (a[0, 9] + 1) % VOCAB
    with torch.no_grad():
        logits_a, logits_b = memory_model(a).logits, memory_model(b).logits
    torch.testing.assert_close(logits_a[:, :9], logits_b[:, :9], atol=0, rtol=0)
    assert not torch.allclose(logits_a[:, 9:12], logits_b[:, 9:12])  # same chunk
    later_chunk_changes = not torch.allclose(logits_a[:, 12:], logits_b[:, 12:])
    assert later_chunk_changes == (not memory_model.config.no_memory)  # through the memory of chunk 2 only


def test_memory_model_loss_and_logits_to_keep():
    model = tiny_memory_transformer()
    x = ids(2, 14)
    labels = x.clone()
    labels[0, :5] = -100
    with torch.no_grad():
        out = model(x, labels=labels)
        # 4 chunks present of num_chunks = 4; a shorter input counts like one padded with ignored labels
        torch.testing.assert_close(out.loss, chunked_causal_loss(out.logits, labels, 4), atol=0, rtol=0)
        short = model(x[:, :6], labels=labels[:, :6])
        torch.testing.assert_close(short.loss, chunked_causal_loss(short.logits, labels[:, :6], 4) / 2, atol=ATOL,
                                   rtol=0)
        last = model(x, logits_to_keep=1, labels=labels)
    assert last.logits.shape == (2, 1, VOCAB)
    torch.testing.assert_close(last.logits, out.logits[:, -1:], atol=ATOL, rtol=0)
    torch.testing.assert_close(last.loss, out.loss, atol=0, rtol=0)


def test_memory_model_errors():
    model = tiny_memory_transformer()
    with pytest.raises(ValueError, match=r"at most 16 tokens \(config.num_chunks \* config.chunk_length = 4 \* 4\)"):
        model(ids(1, 17))
    cache = model(ids(1, 6), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model(ids(1, 11), past_key_values=cache)
    with pytest.raises(ValueError, match="labels need the whole sequence"):
        model(ids(1, 2), past_key_values=cache, labels=ids(1, 2))
    with pytest.raises(ValueError, match="needs input_ids"):
        model(inputs_embeds=torch.zeros(1, 3, 24))
    with pytest.raises(ValueError, match="one contiguous run of real tokens"):
        model(ids(1, 6), attention_mask=torch.tensor([[1, 1, 0, 1, 1, 1]]), use_cache=False)
    with pytest.raises(ValueError, match="keeps no cache for padded rows"):
        model(ids(1, 6), attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]]), use_cache=True)
    with pytest.raises(TypeError, match="needs a VariableMemoryTransformerCache"):
        model(ids(1, 3), past_key_values=__import__("transformers").DynamicCache(), use_cache=True)
    with pytest.raises(RuntimeError, match="activate_past_recording"):  # crop takes tokens back only when recording
        cache.crop(-3)
    with pytest.raises(ValueError, match="at most 16 tokens"):
        model.generate(ids(1, 10), max_new_tokens=8, min_new_tokens=8, do_sample=False)


def test_padding_gives_each_row_its_own_outputs(memory_model):
    rows = [ids(1, 11, seed=2)[0], ids(1, 6, seed=3)[0]]
    with torch.no_grad():
        alone = [memory_model(row[None], use_cache=False).logits[0] for row in rows]
        left = torch.zeros(2, 11, dtype=torch.long)
        left_mask = torch.zeros_like(left)
        right, right_mask = left.clone(), left_mask.clone()
        for i, row in enumerate(rows):
            left[i, 11 - len(row):], left_mask[i, 11 - len(row):] = row, 1
            right[i, :len(row)], right_mask[i, :len(row)] = row, 1
        left_out = memory_model(left, attention_mask=left_mask, use_cache=False).logits
        right_out = memory_model(right, attention_mask=right_mask, use_cache=False).logits
        unmasked_right = memory_model(right, use_cache=False).logits  # right padding is harmless even unmasked
    for i, row in enumerate(rows):
        torch.testing.assert_close(left_out[i, 11 - len(row):], alone[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(right_out[i, :len(row)], alone[i], atol=ATOL, rtol=0)
        torch.testing.assert_close(unmasked_right[i, :len(row)], alone[i], atol=ATOL, rtol=0)
    # the loss of a left-padded row is the loss of the row alone (labels of padding are -100)
    labels = left.masked_fill(left_mask == 0, -100)
    with torch.no_grad():
        padded_loss = memory_model(left[1:], attention_mask=left_mask[1:], labels=labels[1:], use_cache=False).loss
        alone_loss = memory_model(rows[1][None], labels=rows[1][None], use_cache=False).loss
    torch.testing.assert_close(padded_loss, alone_loss, atol=ATOL, rtol=0)


def test_cache_reorders_repeats_and_selects_batch_rows():
    model = tiny_memory_transformer()
    x = ids(2, 10)
    with torch.no_grad():
        cache = model(x, use_cache=True).past_key_values
        assert isinstance(cache, VariableMemoryTransformerCache) and cache.pending().shape == (2, 2, 16)
        cache.batch_repeat_interleave(2)
        cache.reorder_cache(torch.tensor([3, 2, 1, 0]))
        cache.batch_select_indices(torch.tensor([0, 3]))
        following = ids(2, 3, seed=9)
        continued = model(following.flip(0), past_key_values=cache).logits
        reference = model(torch.cat([x, following], 1).flip(0)).logits[:, 10:]
    torch.testing.assert_close(continued, reference, atol=ATOL, rtol=0)
    cache.reset()
    assert cache.get_seq_length() == 0 and cache.memories() is None


def test_eager_attention_hidden_states_and_gradient_checkpointing():
    model = tiny_memory_transformer()
    x = ids(2, 14)
    with torch.no_grad():
        sdpa = model(x, output_hidden_states=True, use_cache=False)
        cached = model(x, output_hidden_states=True, use_cache=True)
        model.set_attn_implementation("eager")
        assert model.decoder.config._attn_implementation == "eager"
        eager = model(x).logits
        eager_cached = model(x, use_cache=True).logits
    torch.testing.assert_close(eager, sdpa.logits, atol=ATOL, rtol=0)
    torch.testing.assert_close(eager_cached, sdpa.logits, atol=ATOL, rtol=0)
    assert len(sdpa.hidden_states) == 3 and sdpa.hidden_states[-1].shape == (2, 14, 24)
    for a, b in zip(sdpa.hidden_states, cached.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.lm_head(sdpa.hidden_states[-1]), sdpa.logits, atol=ATOL, rtol=0)

    model.train()
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        if checkpointing:
            model.activation_checkpointing_enable()
        out = model(x, labels=x)
        assert out.past_key_values is None  # training defaults to the parallel path
        out.loss.backward()
        grads.append(model.encoder.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)
    assert grads[0].abs().sum() > 0  # the encoder learns through the memories


def test_tied_embeddings_save_and_load(tmp_path):
    model = tiny_memory_transformer(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.lm_head.weight.data_ptr() == reloaded.embed_tokens.weight.data_ptr()
    assert type(AutoModel.from_pretrained(tmp_path)) is VariableMemoryTransformerForCausalLM
    x = ids(1, 9)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x).logits, atol=0, rtol=0)
    untied = tiny_memory_transformer()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()


def test_strict_loading_refuses_a_checkpoint_of_another_shape(tmp_path):
    tiny_memory_transformer().save_pretrained(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="does not match"):
        VariableMemoryTransformerForCausalLM.from_pretrained(tmp_path, compression=1)


def test_bfloat16_forward_and_generation():
    model = tiny_memory_transformer().to(torch.bfloat16)
    x = ids(1, 6)
    out = model.generate(x, max_new_tokens=7, do_sample=False)
    assert out.shape == (1, 13)
    assert model(x).logits.dtype == torch.bfloat16


@pytest.mark.parametrize(("config_class", "kwargs", "message"), [
    (TransformerAutoencoderConfig, {"window_length": 0}, r"field 'window_length':\s+ValueError: must be >= 1"),
    (TransformerAutoencoderConfig, {"compression": 2, "decoder_config": llama(24)}, r"needs equal encoder and decoder"),
    (TransformerAutoencoderConfig, {"compression": 1000}, r"compression=1000 leaves no code"),
    (TransformerAutoencoderConfig, {"decoder_input": "tile"}, r"field 'decoder_input':\s+TypeError: .*expected one of \('unroll', 'repeat'\)"),
    (TransformerAutoencoderConfig, {"tie_word_embeddings": True}, r"tie_word_embeddings must be False"),
    (TransformerAutoencoderConfig, {"memory_position": 0}, r"memory_position must be a negative position"),
    (TransformerAutoencoderConfig, {"encoder_config": 3}, r"Field 'encoder_config' expected LlamaConfig, got int"),
    (VariableMemoryTransformerConfig, {"decoder_config": LlamaConfig(hidden_size=24, num_attention_heads=4),
                                       "compression": 17}, r"compression=17 leaves no code"),
    (VariableMemoryTransformerConfig, {"num_chunks": 0}, r"field 'num_chunks':\s+ValueError: must be >= 1"),
    (VariableMemoryTransformerConfig, {"fixed_memory": "yes"}, r"Field 'fixed_memory' expected bool, got str"),
    (VariableMemoryTransformerConfig, {"memory_fill_value": None}, r"Field 'memory_fill_value' expected float, got NoneType"),
    (VariableMemoryTransformerConfig, {"memory_position": -9, "chunk_length": 8}, r"between -chunk_length = -8"),
])
def test_config_validation(config_class, kwargs, message):
    settings = {"encoder_config": llama(16)}
    settings.update(kwargs)
    with pytest.raises(StrictDataclassError, match=message):
        config_class(**settings)


def test_config_defaults_are_the_research_llama_settings():
    config = VariableMemoryTransformerConfig()
    assert (config.chunk_length, config.num_chunks, config.fixed_memory, config.memory_fill_value) == (256, 4, True, 1.0)
    assert config.encoder_config.intermediate_size == 4 * config.encoder_config.hidden_size
    assert config.decoder_config.rms_norm_eps == 1e-6 and config.decoder_config.rope_parameters["rope_theta"] == 10000
    assert not TransformerAutoencoderConfig().encoder_final_norm  # AbbreviatedModel: no final norm
    built = research_llama_config(32, 2, 8)
    assert (built.intermediate_size, built.num_key_value_heads, built.attention_bias) == (128, 8, False)
    dumped = TransformerAutoencoderConfig(encoder_config=built, window_length=20).to_dict()
    again = TransformerAutoencoderConfig(**{k: v for k, v in dumped.items() if k != "model_type"})
    assert again.decoder_config.hidden_size == 32 and again.window_length == 20


def test_encode_checks_its_token_ids_like_every_forward():
    """encode() is a public entry point beside forward: it refuses the same bad ids with the same messages."""
    model = tiny_autoencoder()
    with pytest.raises(ValueError, match=rf"vocabulary has {VOCAB} ids"):
        model.encode(ids(1, 6) + VOCAB)
    with pytest.raises(ValueError, match=r"input_ids is empty"):
        model.encode(ids(1, 6)[:, :0])
    with pytest.raises(TypeError, match="integer token ids"):
        model.encode(ids(1, 6).float())
