"""Memory Mosaics: the O(T) leaky average, cached decoding, padding, long contexts, losses and configuration."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MOSAICS_VARIANTS, tiny_mosaics, tiny_mosaics_config
from huggingface_hub.errors import StrictDataclassError
from transformers import DynamicCache

from memory_zoo import MemoryMosaicsCache, MemoryMosaicsConfig, MemoryMosaicsForCausalLM
from memory_zoo.modeling.modeling_memory_mosaics import leaky_average


def closed_form(x, decay, initial_state=None):
    """The leaky sum as the research pure-torch model computes it: a T x T decay matrix (float64)."""
    length = x.shape[1]
    steps = torch.arange(length, dtype=torch.float64)
    lag = steps[:, None] - steps[None, :]
    matrix = torch.exp(-decay.double()[:, None, None] * lag.clamp(min=0)) * (lag >= 0)  # [H, T, T]
    y = torch.einsum("hts,bshd->bthd", matrix, x.double())
    if initial_state is not None:
        carry = torch.exp(-decay.double()[None, :] * (steps[:, None] + 1))  # [T, H]
        y = y + carry[None, :, :, None] * initial_state.double()[:, None]
    return y


@pytest.mark.parametrize("length, chunk", [(1, 64), (7, 64), (64, 16), (50, 16), (37, 5)])
@pytest.mark.parametrize("with_state", [False, True])
def test_leaky_average_matches_closed_form_values_and_gradients(length, chunk, with_state):
    torch.manual_seed(length)
    x = torch.randn(2, length, 3, 5, dtype=torch.float64, requires_grad=True)
    decay = torch.tensor([0.0, 0.7, 9.0], dtype=torch.float64, requires_grad=True)
    state = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True) if with_state else None
    y, final = leaky_average(x, decay, state, chunk_size=chunk)
    expected = closed_form(x, decay, state)
    torch.testing.assert_close(y.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.double(), expected[:, -1], atol=1e-5, rtol=1e-5)
    leaves = [x, decay] + ([state] if with_state else [])
    grad_y, grad_final = torch.randn_like(y), torch.randn_like(final)
    got = torch.autograd.grad((y * grad_y).sum() + (final * grad_final).sum(), leaves)
    want = torch.autograd.grad((expected * grad_y).sum() + (expected[:, -1] * grad_final).sum(), leaves)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=1e-4)


def test_leaky_average_keeps_dtype_and_runs_far_beyond_quadratic_memory():
    # A T x T decay matrix for 200k steps would need 160 GB; the chunked scan needs a few MB.
    x = torch.ones(1, 200_000, 1, 2, dtype=torch.bfloat16)
    y, final = leaky_average(x, torch.tensor([0.5]), chunk_size=256)
    assert y.dtype == torch.bfloat16 and final.dtype == torch.float32
    torch.testing.assert_close(final, torch.full((1, 1, 2), 1 / (1 - math.exp(-0.5))))


def decode_in_pieces(model, input_ids, pieces, **kwargs):
    """Logits from a prefill of `pieces[0]` tokens, then chunks of the given sizes, through one cache."""
    out = model(input_ids[:, : pieces[0]], use_cache=True, **kwargs)
    logits, cache, start = [out.logits], out.past_key_values, pieces[0]
    for size in pieces[1:]:
        out = model(input_ids[:, start:start + size], past_key_values=cache, **kwargs)
        logits.append(out.logits)
        start += size
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("variant", sorted(MOSAICS_VARIANTS))
def test_cached_decoding_equals_full_forward(variant):
    model = tiny_mosaics(**MOSAICS_VARIANTS[variant])
    input_ids = torch.randint(3, 300, (2, 30))  # longer than block_size: the default keeps extending
    full = model(input_ids).logits
    for pieces in ([1] * 30, [5, 1, 1, 3, 1, 19], [2, 28]):
        logits, cache = decode_in_pieces(model, input_ids, pieces)
        torch.testing.assert_close(logits, full, atol=2e-5, rtol=1e-4)
        assert isinstance(cache, MemoryMosaicsCache) and cache.get_seq_length() == 30


def test_crop_mode_reproduces_the_research_sliding_window():
    """long_context='crop': each new token is predicted from the last block_size tokens only."""
    model = tiny_mosaics(long_context="crop", block_size=8)
    prompt = torch.randint(3, 300, (1, 5))
    tokens, research_logits = prompt, []
    for _ in range(12):  # the research generate(): crop, full forward, argmax
        logits = model(tokens[:, -8:], use_cache=False).logits[:, -1]
        research_logits.append(logits)
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0,
                    return_dict_in_generate=True, output_logits=True)
    for use_cache in (True, False):
        out = model.generate(prompt, use_cache=use_cache, **settings)
        assert torch.equal(out.sequences, tokens)
        torch.testing.assert_close(torch.stack(out.logits), torch.stack(research_logits), atol=1e-5, rtol=1e-5)
    extended = tiny_mosaics(block_size=8)
    extended.load_state_dict(model.state_dict())
    out = extended.generate(prompt, **settings)
    # identical while the window holds everything, different once the default keeps reading older tokens
    torch.testing.assert_close(out.logits[2], research_logits[2], atol=1e-5, rtol=1e-5)
    assert (out.logits[-1] - research_logits[-1]).abs().max() > 1e-4


def test_crop_mode_refuses_longer_forward_passes():
    model = tiny_mosaics(long_context="crop", block_size=8)
    with pytest.raises(ValueError, match="long_context='crop'.*block_size=8.*covers 9"):
        model(torch.randint(3, 300, (1, 9)))
    out = model(torch.randint(3, 300, (1, 8)), use_cache=True)
    with pytest.raises(ValueError, match="covers 9"):
        model(torch.randint(3, 300, (1, 1)), past_key_values=out.past_key_values)


@pytest.mark.parametrize("variant", ["default", "lowr_keys", "linearconv_values", "lookahead_only_window"])
def test_padded_rows_match_unpadded_rows(variant):
    model = tiny_mosaics(**MOSAICS_VARIANTS[variant])
    rows = [torch.randint(3, 300, (1, n)) for n in (12, 7, 1)]
    alone = [model(row).logits[0] for row in rows]
    width = 12
    left = torch.zeros(3, width, dtype=torch.long)
    left_mask = torch.zeros(3, width, dtype=torch.long)
    right, right_mask = left.clone(), left_mask.clone()
    for i, row in enumerate(rows):
        n = row.shape[1]
        left[i, width - n:], left_mask[i, width - n:] = row[0], 1
        right[i, :n], right_mask[i, :n] = row[0], 1
    left_logits = model(left, attention_mask=left_mask).logits
    right_logits = model(right, attention_mask=right_mask).logits
    for i, expected in enumerate(alone):
        n = expected.shape[0]
        torch.testing.assert_close(left_logits[i, width - n:], expected, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(right_logits[i, :n], expected, atol=2e-5, rtol=1e-4)
        assert torch.isfinite(left_logits[i]).all() and torch.isfinite(right_logits[i]).all()


def decode_in_pieces_with_mask(model, input_ids, mask, pieces):
    out = model(input_ids[:, : pieces[0]], attention_mask=mask[:, : pieces[0]], use_cache=True)
    logits, start = [out.logits], pieces[0]
    for size in pieces[1:]:
        out = model(input_ids[:, start:start + size], attention_mask=mask[:, : start + size],
                    past_key_values=out.past_key_values)
        logits.append(out.logits)
        start += size
    return torch.cat(logits, dim=1)


def test_padded_cache_decoding_needs_and_uses_the_mask():
    model = tiny_mosaics(value_shift=2)
    input_ids = torch.randint(3, 300, (2, 14))
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :5] = 0
    full = model(input_ids, attention_mask=mask).logits
    stepped = decode_in_pieces_with_mask(model, input_ids, mask, [6, 1, 1, 2, 4])
    torch.testing.assert_close(stepped[mask.bool()], full[mask.bool()], atol=2e-5, rtol=1e-4)
    out = model(input_ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
    with pytest.raises(ValueError, match="padded batch; pass the full attention_mask"):
        model(input_ids[:, 6:7], past_key_values=out.past_key_values)


def test_bad_masks_and_caches_get_clear_errors():
    model = tiny_mosaics()
    input_ids = torch.randint(3, 300, (2, 6))
    gap = torch.tensor([[1, 1, 0, 1, 1, 1], [1] * 6])
    with pytest.raises(ValueError, match="padding between real tokens"):
        model(input_ids, attention_mask=gap)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 5\) does not fit input_ids \(2, 6\)"):
        model(input_ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch, past \+ new tokens\]"):
        model(input_ids, attention_mask=torch.ones(2, 7))
    with pytest.raises(TypeError, match="needs a MemoryMosaicsCache, got DynamicCache"):
        model(input_ids, past_key_values=DynamicCache())
    cache = model(input_ids, use_cache=True).past_key_values
    with pytest.raises(RuntimeError, match="activate_past_recording"):  # crop takes tokens back only when recording
        cache.crop(-3)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_inputs_embeds_equal_input_ids_and_hidden_states_are_returned():
    model = tiny_mosaics()
    input_ids = torch.randint(3, 300, (2, 9))
    by_ids = model(input_ids, output_hidden_states=True)
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids))
    torch.testing.assert_close(by_ids.logits, by_embeds.logits)
    assert len(by_ids.hidden_states) == model.config.num_hidden_layers + 1
    scale = model.config.hidden_size**-0.5
    torch.testing.assert_close(model.lm_head(by_ids.hidden_states[-1]) * scale, by_ids.logits)


def test_logit_scale_and_logits_to_keep():
    model = tiny_mosaics()
    unscaled = MemoryMosaicsForCausalLM(tiny_mosaics_config(scale_logits=False)).eval()
    unscaled.load_state_dict(model.state_dict())
    input_ids = torch.randint(3, 300, (1, 7))
    torch.testing.assert_close(unscaled(input_ids).logits / 4.0, model(input_ids).logits)
    torch.testing.assert_close(model(input_ids, logits_to_keep=2).logits, model(input_ids).logits[:, -2:])


def test_skip_tokens_leave_the_first_predictions_out_of_the_loss():
    plain = tiny_mosaics()
    skipping = tiny_mosaics(skip_tokens=3)
    input_ids = torch.randint(3, 300, (2, 10))
    logits = plain(input_ids).logits
    expected = torch.nn.functional.cross_entropy(logits[:, 3:-1].reshape(-1, 300), input_ids[:, 4:].reshape(-1))
    torch.testing.assert_close(skipping(input_ids, labels=input_ids).loss, expected)
    # shift_labels (the research `targets`, already aligned) also scores the last position
    targets = torch.randint(3, 300, (2, 10))
    expected = torch.nn.functional.cross_entropy(logits[:, 3:].reshape(-1, 300), targets[:, 3:].reshape(-1))
    torch.testing.assert_close(skipping(input_ids, shift_labels=targets).loss, expected)


def test_training_step_with_dropout_and_gradient_checkpointing():
    torch.manual_seed(0)
    model = tiny_mosaics(attention_dropout=0.0, hidden_dropout=0.0).train()
    input_ids = torch.randint(3, 300, (2, 12))
    loss = model(input_ids, labels=input_ids).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.activation_checkpointing_enable()
    loss_ckpt = model(input_ids, labels=input_ids).loss
    grads_ckpt = torch.autograd.grad(loss_ckpt, list(model.parameters()))
    torch.testing.assert_close(loss_ckpt, loss)
    for a, b in zip(grads, grads_ckpt, strict=True):
        torch.testing.assert_close(a, b)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    dropped = tiny_mosaics(attention_dropout=0.5, hidden_dropout=0.5).train()
    assert not torch.equal(dropped(input_ids).logits, dropped(input_ids).logits)
    dropped.eval()
    assert torch.equal(dropped(input_ids).logits, dropped(input_ids).logits)


def test_research_initialisation_and_tied_weights():
    config = tiny_mosaics_config(hidden_size=64, num_attention_heads=4, pmem_size=256, num_hidden_layers=4)
    torch.manual_seed(0)
    model = MemoryMosaicsForCausalLM(config)
    memory = model.model.layers[0].attn
    torch.testing.assert_close(memory.leaky_key_beta.data, torch.linspace(0.5, 5, 4) / 10)
    torch.testing.assert_close(memory.kernel_beta.data, torch.full((4,), 0.1))
    torch.testing.assert_close(memory.value_beta.data, torch.full((4,), -0.05))
    assert 0 <= memory.value_features.coef.min() and memory.value_features.coef.max() <= 1
    assert memory.key_features.proj.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)
    assert memory.o_proj.weight.std().item() == pytest.approx(64**-0.5 / 2, rel=0.1)
    assert model.model.layers[0].pmem.memory_keys.std().item() == pytest.approx(16**-0.5, rel=0.1)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.lm_head.weight.std().item() == pytest.approx(64**-0.5, rel=0.1)


def test_config_validation_names_the_fix():
    with pytest.raises(StrictDataclassError, match="divisible by num_attention_heads"):
        MemoryMosaicsConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(StrictDataclassError, match="value_kernel_size must be 2"):
        MemoryMosaicsConfig(value_kernel_size=3)
    with pytest.raises(StrictDataclassError, match="(?s)field 'key_feature_extractor'.*expected one of"):
        MemoryMosaicsConfig(key_feature_extractor="conv")
    with pytest.raises(StrictDataclassError, match="(?s)field 'long_context'.*expected one of"):
        MemoryMosaicsConfig(long_context="slide")
    with pytest.raises(StrictDataclassError, match="(?s)field 'value_shift'.*must be >= 0"):
        MemoryMosaicsConfig(value_shift=-1)
    assert MemoryMosaicsConfig(n_embd=64, n_head=4).hidden_size == 64  # research names are aliases


def test_half_precision_forward_and_decoding_are_finite():
    model = tiny_mosaics().to(torch.bfloat16)
    input_ids = torch.randint(3, 300, (2, 20))
    full = model(input_ids).logits
    assert full.dtype == torch.bfloat16 and torch.isfinite(full).all()
    logits, _ = decode_in_pieces(model, input_ids, [4] + [1] * 16)
    torch.testing.assert_close(logits.float(), full.float(), atol=5e-2, rtol=5e-2)


def test_without_a_usable_kernel_the_model_falls_back_after_one_log_line(caplog, monkeypatch):
    import logging

    from memory_zoo.ops import zoo_kernels

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(zoo_kernels, "_FALLBACK_LOGGED", set())
    model, reference = tiny_mosaics(), tiny_mosaics(use_kernels=False)
    input_ids = torch.randint(3, 300, (1, 9))
    with caplog.at_level(logging.INFO, logger="memory_zoo.kernels"):
        for _ in range(3):
            torch.testing.assert_close(model(input_ids).logits, reference(input_ids).logits, atol=0, rtol=0)
    lines = [r.getMessage() for r in caplog.records if "leaky_average" in r.getMessage()]
    assert lines == ["memory-zoo: leaky_average kernel not used (tensors on cpu); running the pure-torch path."]


def test_blockwise_dropout_read_is_sdpa_and_replays_its_dropout_mask():
    """The CPU read-out with dropout (blocks of query rows, recomputed in the backward) is SDPA's causal read: equal
    without dropout, and with dropout its gradients are those of the same blocks kept whole (the mask is replayed)."""
    from memory_zoo.modeling.modeling_memory_mosaics import causal_read_with_dropout, read_with_dropout

    q, k, v = (torch.randn(1, 2, 300, 8, requires_grad=True) for _ in range(3))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
    blocks = causal_read_with_dropout(q, k, v, 0.0, block=64)
    torch.testing.assert_close(blocks, plain, atol=1e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(blocks.square().sum(), (q, k, v)),
                         torch.autograd.grad(plain.square().sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)

    def unchecked(dropout: float) -> torch.Tensor:  # the same blocks, the same random draws, nothing recomputed
        parts = []
        for start in range(0, 300, 64):
            stop = min(start + 64, 300)
            mask = torch.ones(stop - start, stop, dtype=torch.bool).tril(start)
            parts.append(read_with_dropout(q[:, :, start:stop], k[:, :, :stop], v[:, :, :stop], dropout, mask))
        return torch.cat(parts, dim=2)

    torch.manual_seed(3)
    dropped = causal_read_with_dropout(q, k, v, 0.3, block=64)
    grads = torch.autograd.grad(dropped.square().sum(), (q, k, v))
    torch.manual_seed(3)
    reference = unchecked(0.3)
    torch.testing.assert_close(dropped, reference)
    assert not torch.allclose(dropped, plain)  # dropout did act
    for got, want in zip(grads, torch.autograd.grad(reference.square().sum(), (q, k, v)), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_cpu_read_with_dropout_is_sdpa_with_a_dropout_mask():
    """The written-out CPU read (`read_with_dropout`): SDPA's values without dropout, and with it exactly
    `softmax(scores) * keep / (1 - p) @ values` for the mask `rand >= p` it draws: unbiased, and about p dropped."""
    from memory_zoo.modeling.modeling_memory_mosaics import read_with_dropout

    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=generator) for _ in range(3))
    allowed = torch.ones(40, 40, dtype=torch.bool).tril()
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=1.0)
    torch.testing.assert_close(read_with_dropout(q, k, v, 1e-12, allowed), plain, atol=1e-6, rtol=1e-5)
    torch.manual_seed(5)
    dropped = read_with_dropout(q, k, v, 0.25, allowed)
    torch.manual_seed(5)
    keep = torch.rand(2, 3, 40, 40) >= 0.25
    probs = torch.softmax((q @ k.transpose(-1, -2)).masked_fill(~allowed, float("-inf")), dim=-1)
    torch.testing.assert_close(dropped, (probs * keep / 0.75) @ v)
    assert 0.2 < 1 - keep[allowed.expand_as(keep)].float().mean() < 0.3
    mean = torch.stack([read_with_dropout(q, k, v, 0.25, allowed) for _ in range(400)]).mean(0)
    assert (mean - plain).abs().mean() < 0.02 < (dropped - plain).abs().mean()  # unbiased: averages to the plain read


def test_training_with_dropout_on_the_cpu_reads_through_the_written_out_path(monkeypatch):
    """Both memories of a training step with dropout take `read_with_dropout` on the CPU (SDPA's math path would
    otherwise run), short and long sequences alike; evaluation and dropout 0 keep SDPA."""
    import memory_zoo.modeling.modeling_memory_mosaics as module

    calls = []
    original = module.read_with_dropout
    monkeypatch.setattr(module, "read_with_dropout", lambda *a, **k: calls.append(a[0].shape[-2]) or original(*a, **k))
    monkeypatch.setattr(module, "READ_BLOCK", 8)
    model = tiny_mosaics(attention_dropout=0.1, hidden_dropout=0.0).train()
    for length in (6, 20):  # one block, and blocks of 8 rows
        calls.clear()
        input_ids = torch.randint(3, 300, (2, length))
        model(input_ids, labels=input_ids).loss.backward()
        layers = model.config.num_hidden_layers
        assert len(calls) >= 2 * layers, calls
    calls.clear()
    with torch.no_grad():
        model.eval()(input_ids)
    assert calls == []
