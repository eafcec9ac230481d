"""Masked Mixer forward, cache, padding and generation behaviour, for every token-mixing layout."""

from __future__ import annotations

import pytest
import torch
from conftest import VARIANTS, tiny_config, tiny_model
from huggingface_hub.errors import StrictDataclassError

from memory_zoo import MaskedMixerCache, MaskedMixerConfig, MaskedMixerForCausalLM

ATOL = 1e-5


@pytest.fixture(params=sorted(VARIANTS))
def model(request):
    return tiny_model(**VARIANTS[request.param])


def ids(batch: int, length: int, seed: int = 1, vocab: int = 300) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=generator)


def left_pad(rows: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch (pad id 0) of ``rows`` and its attention mask."""
    batch = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        batch[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return batch, mask


def test_shorter_input_is_prefix_of_full_context(model):
    full = ids(2, 24)
    logits = model(full).logits
    assert logits.shape == (2, 24, 300)
    torch.testing.assert_close(model(full[:, :7]).logits, logits[:, :7], atol=ATOL, rtol=0)


def test_causal(model):
    a = ids(1, 24)
    b = a.clone()
    b[0, 10:] = ids(1, 14, seed=5)
    torch.testing.assert_close(model(a).logits[:, :10], model(b).logits[:, :10], atol=ATOL, rtol=0)
    assert not torch.allclose(model(a).logits[:, 10:], model(b).logits[:, 10:])


def test_upper_triangle_of_stored_weights_is_ignored(model):
    x = ids(2, 24)
    before = model(x).logits
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "effective_weight"):
                module.weight.add_(torch.triu(torch.randn_like(module.weight), diagonal=1) * 10)
    torch.testing.assert_close(model(x).logits, before, atol=ATOL, rtol=0)


def test_longer_than_context_raises_clear_error(model):
    with pytest.raises(ValueError, match=r"fixed context of 24 positions.*max_position_embeddings"):
        model(ids(1, 25))
    cache = model(ids(1, 24), use_cache=True).past_key_values
    with pytest.raises(ValueError, match="fixed context of 24"):
        model(ids(1, 1), past_key_values=cache)


def test_incremental_decoding_matches_full_forward(model):
    x = ids(2, 20)
    full = model(x).logits
    out = model(x[:, :6], use_cache=True)
    pieces, cache = [out.logits], out.past_key_values
    assert isinstance(cache, MaskedMixerCache) and cache.get_seq_length() == 6
    for start, stop in ((6, 7), (7, 11), (11, 20)):  # single tokens and chunks
        out = model(x[:, start:stop], past_key_values=cache, use_cache=True)
        pieces.append(out.logits)
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=ATOL, rtol=0)
    assert cache.get_seq_length() == 20


def test_left_padding_gives_each_row_its_unpadded_outputs(model):
    rows = [ids(1, 9, seed=2)[0], ids(1, 5, seed=3)[0]]
    batch, mask = left_pad(rows, 9)
    logits = model(batch, attention_mask=mask).logits
    for i, row in enumerate(rows):
        alone = model(row[None]).logits[0]
        torch.testing.assert_close(logits[i, 9 - len(row):], alone, atol=ATOL, rtol=0)


def test_right_padding_keeps_real_tokens_exact(model):
    row = ids(1, 6, seed=4)
    batch = torch.cat([row, torch.zeros(1, 4, dtype=torch.long)], 1)
    mask = torch.tensor([[1] * 6 + [0] * 4])
    torch.testing.assert_close(model(batch, attention_mask=mask).logits[:, :6], model(row).logits, atol=ATOL, rtol=0)


def test_bad_attention_mask_and_cache_are_rejected(model):
    x = ids(2, 6)
    with pytest.raises(ValueError, match=r"attention_mask \(2, 5\) does not fit input_ids \(2, 6\)"):
        model(x, attention_mask=torch.ones(2, 5, dtype=torch.long))
    from transformers import DynamicCache

    with pytest.raises(TypeError, match="needs a MaskedMixerCache"):
        model(x, past_key_values=DynamicCache())
    mask = torch.tensor([[0, 1, 1, 1, 1, 1], [1] * 6])
    cache = model(x, attention_mask=mask, use_cache=True).past_key_values
    with pytest.raises(ValueError, match="pass the full attention_mask"):
        model(x[:, :1], past_key_values=cache)
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_inputs_embeds_and_logits_to_keep(model):
    x = ids(2, 8)
    logits = model(x).logits
    embeds = model.get_input_embeddings()(x)
    torch.testing.assert_close(model(inputs_embeds=embeds).logits, logits)
    torch.testing.assert_close(model(x, logits_to_keep=1).logits, logits[:, -1:])


def test_loss_is_shifted_mean_cross_entropy():
    model = tiny_model()
    x = ids(2, 12)
    labels = x.clone()
    labels[0, 8:] = -100
    out = model(x, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 300), labels[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, expected)


def test_cache_supports_beam_reorder_crop_and_select():
    model = tiny_model(mixing_expanded=True)
    x = ids(3, 8)
    cache = model(x, use_cache=True).past_key_values
    cache.reorder_cache(torch.tensor([2, 0, 1]))
    cache.crop(-3)
    assert cache.get_seq_length() == 5
    step = model(x[[2, 0, 1], 5:6], past_key_values=cache).logits
    torch.testing.assert_close(step, model(x[[2, 0, 1], :6]).logits[:, -1:], atol=ATOL, rtol=0)
    cache.batch_select_indices(torch.tensor([1]))
    assert cache.layers[0].mixing_inputs.shape[0] == 1


def test_gradient_checkpointing_gives_same_gradients():
    x = ids(2, 16)
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(num_mixing_heads=2, mixing_head_dim=8).train()
        if checkpointing:
            model.activation_checkpointing_enable()
        model(x, labels=x).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def test_masked_upper_triangle_gets_no_gradient():
    model = tiny_model().train()
    x = ids(2, 24)
    model(x, labels=x).loss.backward()
    grad = model.model.layers[0].token_mixer.mix.weight.grad
    assert torch.count_nonzero(torch.triu(grad, diagonal=1)) == 0


def test_tied_embeddings_round_trip(tmp_path):
    model = tiny_model(tie_word_embeddings=True)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as handle:
        assert "lm_head.weight" not in handle.keys()
    reloaded = MaskedMixerForCausalLM.from_pretrained(tmp_path)
    assert reloaded.lm_head.weight.data_ptr() == reloaded.model.embed_tokens.weight.data_ptr()
    x = ids(1, 8)
    torch.testing.assert_close(reloaded(x).logits, model(x).logits)


def test_bfloat16_forward_and_cache():
    model = tiny_model(mixing_softmax=True, mixing_out_proj=True).to(torch.bfloat16)
    x = ids(1, 12)
    full = model(x).logits
    assert full.dtype == torch.bfloat16 and torch.isfinite(full).all()
    cache = model(x[:, :11], use_cache=True).past_key_values
    step = model(x[:, 11:], past_key_values=cache).logits
    torch.testing.assert_close(step.float(), full[:, -1:].float(), atol=0.05, rtol=0.05)


def test_output_hidden_states():
    model = tiny_model()
    out = model(ids(1, 8), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 8, 16)


@pytest.mark.parametrize("kwargs, message", [
    ({"hidden_size": 0}, "(?s)field 'hidden_size'.*must be >= 1"),
    ({"num_mixing_heads": 2}, "needs mixing_head_dim"),
    ({"hidden_act": "nope"}, "unknown activation 'nope'"),
    ({"mixing_expanded": True, "mixing_softmax": True}, "mixing_softmax and mixing_expanded"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(StrictDataclassError, match=message):
        tiny_config(**kwargs)


def test_config_defaults_are_the_research_tinystories_model():
    config = MaskedMixerConfig(vocab_size=4096)
    model = MaskedMixerForCausalLM(config)
    # 2 V D + depth (4D + 8D^2 + 5D + L^2 + L), the research parameter count of LanguageMixer(4096, 1024, 8)
    assert sum(p.numel() for p in model.parameters()) == 77_672_448


@pytest.mark.parametrize("taps", [False, True])
@pytest.mark.parametrize("offset", [0, 3])
def test_pure_torch_mixing_matches_reference_values_and_gradients(taps, offset):
    from memory_zoo.ops import masked_mixing_reference, masked_mixing_torch

    generator = torch.Generator().manual_seed(0)
    heads, kernel, queries, keys, width = 2, 3, 5, 8, 4
    taps_shape = (kernel,) if taps else ()
    rows = torch.randn(heads, *taps_shape, queries, keys, generator=generator, requires_grad=True)
    inputs = torch.randn(3, heads, *taps_shape, keys, width, generator=generator, requires_grad=True)
    bias = None if taps else torch.randn(heads, queries, generator=generator, requires_grad=True)
    results = []
    for function in (masked_mixing_reference, masked_mixing_torch):
        out = function(rows, inputs, bias, offset)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        grads = [t.grad.clone() for t in (rows, inputs, bias) if t is not None]
        for t in (rows, inputs, bias):
            if t is not None:
                t.grad = None
        results.append((out.detach(), *grads))
    for reference, lean in zip(*results, strict=True):
        torch.testing.assert_close(lean, reference, rtol=1e-6, atol=1e-6)
    # the masked half gets no gradient, as with the reference
    assert torch.count_nonzero(torch.triu(results[1][1], diagonal=offset + 1)) == 0


def saved_copies_of(weight: torch.Tensor, run, parameters=()) -> int:
    """Bytes of `weight`-shaped tensors the autograd graph of `run()` saves that are not parameters' own storage."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        run()
    own = {p.untyped_storage().data_ptr() for p in (weight, *parameters)}
    return sum(t.nbytes for t in saved if t.numel() >= weight[0].numel() and t.untyped_storage().data_ptr() not in own
               and t.shape[-2:] == weight.shape[-2:])


def test_backward_keeps_no_masked_copy_of_the_mixing_matrices():
    """The research code masked its parameters in place; autograd of `matmul(tril(W), x)` would keep a masked copy
    of every block's `L x L` matrices until the backward (the op keeps `W` itself instead)."""
    from memory_zoo.ops import masked_mixing_reference, masked_mixing_torch

    weight = torch.randn(2, 16, 16, requires_grad=True)
    inputs = torch.randn(1, 2, 16, 4, requires_grad=True)
    assert saved_copies_of(weight, lambda: masked_mixing_reference(weight, inputs)) == weight.nbytes  # can fail
    assert saved_copies_of(weight, lambda: masked_mixing_torch(weight, inputs)) == 0
    model = tiny_model().train()
    mix = model.model.layers[0].token_mixer.mix.weight
    x = ids(2, mix.shape[-1])
    assert saved_copies_of(mix, lambda: model(x, labels=x).loss, model.parameters()) == 0
