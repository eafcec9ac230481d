"""LSWT: XL memory semantics (segments, trimming, registers), generation, padding, recompute_kv, configuration."""

from __future__ import annotations

import pytest
import torch
from conftest import LSWT_VARIANTS, tiny_lswt
from huggingface_hub.errors import StrictDataclassError
from transformers import DynamicCache

from memory_zoo import LSWTCache, LSWTConfig
from memory_zoo.modeling.zoo_compat import CACHE_NAME


def run_segments(model, input_ids, sizes, **kwargs):
    cache, logits, start = None, [], 0
    for size in sizes:
        out = model(input_ids[:, start:start + size], past_key_values=cache, use_cache=True, **kwargs)
        cache, start = out.past_key_values, start + size
        logits.append(out.logits)
    return torch.cat(logits, dim=1), cache


@pytest.mark.parametrize("variant", ["default", "plain_rope_mlp"])
def test_untrimmed_memory_equals_one_shot_forward(variant):
    """Without registers or dynamic RoPE the scores depend only on i - j: segments (and single tokens) on an untrimmed
    cache give the one-shot logits."""
    model = tiny_lswt(**LSWT_VARIANTS[variant])
    input_ids = torch.randint(3, 300, (2, 18))
    full = model(input_ids).logits
    for sizes in ([10, 8], [5, 1, 1, 1, 4, 6], [1] * 18):
        logits, cache = run_segments(model, input_ids, sizes)
        torch.testing.assert_close(logits, full, atol=1e-4, rtol=1e-4)
        assert isinstance(cache, LSWTCache) and cache.get_seq_length() == 18


@pytest.mark.parametrize("variant", ["registers_qknorm_nobias", "dynamic_rope"])
def test_registers_and_dynamic_rope_are_not_shift_invariant_as_in_the_research_code(variant):
    model = tiny_lswt(**LSWT_VARIANTS[variant])
    input_ids = torch.randint(3, 300, (2, 18))
    full = model(input_ids).logits
    logits, _ = run_segments(model, input_ids, [10, 8])
    # registers carry no position while reversed query positions count from the end of each call, and dynamic RoPE
    # rescales by the call's total length: every position's logits depend on how the text was cut
    assert (logits - full).abs().max() > 1e-3


def test_trimmed_memory_keeps_stale_keys_xl_style():
    model = tiny_lswt()
    input_ids = torch.randint(3, 300, (1, 16))
    _, cache = run_segments(model, input_ids, [10], max_key_values=6)
    assert cache.get_seq_length() == 6
    keys = cache.layers[1].keys.clone()
    out = model(input_ids[:, 10:], past_key_values=cache, max_key_values=6)
    assert out.past_key_values.get_seq_length() == 6
    # layer-1 keys of the kept positions were computed with their own (longer) context and are not recomputed:
    # a fresh run over the 6 kept tokens gives other keys, and other logits
    fresh = model(input_ids[:, 4:10], use_cache=True).past_key_values.layers[1].keys
    assert (fresh - keys).abs().max() > 1e-4
    windowed = model(input_ids[:, 4:16]).logits[:, 6:]
    assert (out.logits - windowed).abs().max() > 1e-4
    untrimmed, _ = run_segments(model, input_ids, [10, 6])
    assert (out.logits - untrimmed[:, 10:]).abs().max() > 1e-4


@pytest.mark.parametrize("variant", ["default", "registers_qknorm_nobias"])
def test_generate_with_and_without_cache(variant):
    model = tiny_lswt(**LSWT_VARIANTS[variant])
    prompt = torch.randint(3, 300, (2, 5))
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    cached = model.generate(prompt, **settings)
    if variant == "default":  # shift-invariant: the cache changes nothing
        assert torch.equal(cached, model.generate(prompt, use_cache=False, **settings))
        assert torch.equal(model.generate(prompt, num_beams=3, **settings),
                           model.generate(prompt, num_beams=3, use_cache=False, **settings))
    # with registers, cached decoding is the research semantics: one call per token on the memory
    tokens = prompt
    out = model(tokens, use_cache=True)
    for _ in range(12):
        next_token = out.logits[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, next_token], dim=1)
        out = model(next_token, past_key_values=out.past_key_values)
    assert torch.equal(cached, tokens)


def test_generation_trims_the_memory_to_max_key_values():
    model = tiny_lswt()
    prompt = torch.randint(3, 300, (1, 5))
    out = model.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0, max_key_values=4,
                         return_dict_in_generate=True)
    assert getattr(out, CACHE_NAME).get_seq_length() == 4
    tokens = prompt
    step = model(tokens, use_cache=True, max_key_values=4)
    for _ in range(10):
        next_token = step.logits[:, -1:].argmax(-1)
        tokens = torch.cat([tokens, next_token], dim=1)
        step = model(next_token, past_key_values=step.past_key_values, max_key_values=4)
    assert torch.equal(out.sequences, tokens)


def test_recompute_kv_training_matches_the_key_value_path_and_formats_do_not_mix():
    model = tiny_lswt(recompute_kv=True)
    input_ids = torch.randint(3, 300, (2, 14))
    model.eval()
    reference, _ = run_segments(model, input_ids, [8, 6])
    model.train()  # dropout is 0: only the cache format changes
    logits, cache = run_segments(model, input_ids, [8, 6])
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert cache.holds_states and cache.layers[0].keys.shape == (2, 1, 14, 32)
    logits.sum().backward()  # the key/value projections learn from the memory positions too
    assert model.model.layers[0].self_attn.k_proj.weight.grad.abs().sum() > 0
    model.eval()
    with pytest.raises(ValueError, match="cannot be mixed"):
        model(input_ids[:, :2], past_key_values=cache.detach())


def test_cache_type_inputs_embeds_and_resizing():
    model = tiny_lswt()
    input_ids = torch.randint(3, 300, (1, 7))
    with pytest.raises(TypeError, match="needs a LSWTCache, got DynamicCache"):
        model(input_ids, past_key_values=DynamicCache())
    by_embeds = model(inputs_embeds=model.get_input_embeddings()(input_ids)).logits  # embedding width, as ids
    torch.testing.assert_close(by_embeds, model(input_ids).logits)
    assert model.get_output_embeddings() is None
    model.resize_token_embeddings(310)
    assert model(input_ids).logits.shape[-1] == 310  # the head reads the same, resized matrix
    hidden = model(input_ids, output_hidden_states=True).hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 2


def test_config_validation_and_research_aliases():
    with pytest.raises(StrictDataclassError, match="heads of an even width"):
        LSWTConfig(hidden_size=36, num_attention_heads=4)
    with pytest.raises(StrictDataclassError, match="rope_dynamic=True .* max_position_embeddings"):
        LSWTConfig(rope_dynamic=True)
    with pytest.raises(StrictDataclassError, match="field 'max_key_values':\\s+ValueError: must be >= 0"):
        LSWTConfig(max_key_values=-1)
    config = LSWTConfig(d_model=64, n_heads=4, d_vocab=32, n_registers=2, rope_positions=128)
    assert (config.hidden_size, config.num_attention_heads, config.embedding_size, config.num_registers,
            config.max_position_embeddings) == (64, 4, 32, 2, 128)


def test_warm_start_copies_a_parent_models_token_embeddings(tmp_path):
    from transformers import OPTConfig, OPTModel

    from memory_zoo.modeling.modeling_lswt import warm_start_embeddings

    parent = OPTModel(OPTConfig(vocab_size=300, hidden_size=24, word_embed_proj_dim=24, num_hidden_layers=1,
                                ffn_dim=32, num_attention_heads=2, max_position_embeddings=32))
    parent.save_pretrained(tmp_path / "opt")
    model = tiny_lswt()
    copied = warm_start_embeddings(model, str(tmp_path / "opt"))
    assert torch.equal(copied, parent.get_input_embeddings().weight)
    assert torch.equal(model.model.embed_tokens.weight, parent.get_input_embeddings().weight)
    with pytest.raises(ValueError, match="300 x 24 token embeddings but this LSWT needs 300 x 16"):
        warm_start_embeddings(tiny_lswt(embedding_size=16), str(tmp_path / "opt"))


def test_preference_heads_pool_read_at_the_last_class_token():
    from memory_zoo.modeling.modeling_lswt import LSWTForPreferenceHeads, sgpt_pooling

    pooler = {"reward_heads": ["helpful", "honest"], "reward_head_bias": True, "layer_pooling": "weighted_sum",
              "layer_pooling_select": [3, 1, 2, -1], "layer_pooling_norm": "post", "embedding_pooling": "sgpt",
              "token_pooling_config": {"cls_token_id": 5}}
    torch.manual_seed(0)
    from conftest import tiny_lswt_config

    model = LSWTForPreferenceHeads(tiny_lswt_config(pooler_config=pooler)).eval()
    input_ids = torch.randint(10, 300, (2, 9))
    input_ids[0, [2, 6]] = 5
    input_ids[1, 3] = 5
    out = model(input_ids)
    assert set(out.rewards) == {"helpful", "honest"} and out.rewards["helpful"].shape == (2, 1)
    # by hand: ascending layers 1..3 (negative indices dropped, as in the research code), softmax weights, post norms,
    # SGPT pooling restarted at every class token, read at each row's last one
    hidden = model.model(input_ids, output_hidden_states=True).hidden_states
    pooler_module = model.pooler
    mixed = (pooler_module.layer_weighting.softmax(0) * torch.stack([hidden[i] for i in (1, 2, 3)])).sum(0)
    states = sgpt_pooling(pooler_module.token_norm_post(pooler_module.layer_norm_post(mixed)), input_ids == 5)
    picked = torch.stack([states[0, 6], states[1, 3]])
    torch.testing.assert_close(out.rewards["honest"], pooler_module.reward_heads["honest"](picked))
    # sgpt: within a group the mean weights position j by its 1-based index
    x = torch.randn(1, 4, 3)
    restart = torch.tensor([[False, True, False, False]])
    expected = torch.stack([x[0, 0], x[0, 1], (x[0, 1] + 2 * x[0, 2]) / 2, (x[0, 1] + 2 * x[0, 2] + 3 * x[0, 3]) / 3])
    torch.testing.assert_close(sgpt_pooling(x, restart)[0], expected)


@pytest.mark.parametrize("self_type", ["self", "pool"])
def test_attention_token_pooler_trains_its_adapters(self_type):
    from conftest import tiny_lswt_config

    from memory_zoo.modeling.modeling_lswt import LSWTForPreferenceHeads

    pooler = {"reward_heads": ["r"], "token_pooling": "attn", "token_pooling_config": {
        "cls_token_id": 5, "sep_token_id": 6, "new_token_id": 7, "pad_token_id": 0, "self_type": self_type,
        "n_repeats": 2, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.0, "alibi_slope": 1.0}}
    torch.manual_seed(0)
    model = LSWTForPreferenceHeads(tiny_lswt_config(pooler_config=pooler))
    input_ids = torch.randint(10, 300, (2, 10))
    input_ids[:, [0, 4]] = 6
    input_ids[:, [3, 8]] = 5
    input_ids[1, :2] = 0  # padding never enters the self-attention of real tokens
    rewards = model(input_ids).rewards["r"]
    assert rewards.shape == (2, 1) and torch.isfinite(rewards).all()
    rewards.sum().backward()
    token_pooler = model.pooler.token_pooler
    assert token_pooler.cross_layer.k_proj.lora_B_list[1].grad.abs().sum() > 0
    assert not token_pooler.head_scale.requires_grad
    with pytest.raises(ValueError, match=r"token_pooling='attn' needs .*\['sep_token_id'\]"):
        LSWTForPreferenceHeads(tiny_lswt_config(pooler_config={**pooler, "token_pooling_config": {"cls_token_id": 5}}))


def test_attention_never_needs_the_flash_kernel_on_cpu(monkeypatch):
    from memory_zoo.ops import zoo_kernels

    asked = []
    monkeypatch.setattr(zoo_kernels, "load_hub_kernel", lambda *args: asked.append(args))
    with_kernel, without = tiny_lswt(), tiny_lswt(use_kernels=False)
    input_ids = torch.randint(3, 300, (1, 9))
    torch.testing.assert_close(with_kernel(input_ids).logits, without(input_ids).logits, atol=0, rtol=0)
    assert not asked  # CPU tensors go straight to SDPA, nothing is loaded or downloaded
