"""Memory Layers: product-key lookup, shared value tables, caching with GQA, padding, big memories, training groups."""

from __future__ import annotations

import pytest
import torch
from conftest import MEMORY_LAYERS_VARIANTS, tiny_memory_layers, tiny_memory_layers_config
from huggingface_hub.errors import StrictDataclassError
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM

from memory_zoo import MemoryLayersConfig, MemoryLayersForCausalLM, memory_layers_param_groups
from memory_zoo.configuration.configuration_memory_layers import swiglu_hidden_size
from memory_zoo.modeling.zoo_layers import apply_interleaved_rotary, rotary_angles


def test_product_key_lookup_is_the_exact_top_k_over_all_slots():
    model = tiny_memory_layers(memory_n_keys=8, memory_knn=4, memory_heads=3)
    memory = model.model.layers[1].mlp
    x = torch.randn(40, 32)
    scores, indices = memory.lookup(x)
    query = memory.query_proj(x).view(40, 3, 2, 8)
    keys = memory.keys.view(3, 2, 8, 8)
    halves = torch.einsum("nhsd,hskd->nhsk", query, keys)
    full = (halves[:, :, 0, :, None] + halves[:, :, 1, None, :]).flatten(2)  # [N, H, K^2], slot i1 * K + i2
    best, slots = full.topk(4, dim=-1)
    torch.testing.assert_close(scores, best)
    assert torch.equal(indices, slots)


@pytest.mark.parametrize("variant", sorted(MEMORY_LAYERS_VARIANTS))
def test_cached_decoding_equals_full_forward_and_generate_matches(variant):
    model = tiny_memory_layers(**MEMORY_LAYERS_VARIANTS[variant])
    input_ids = torch.randint(3, 300, (2, 16))
    full = model(input_ids).logits
    out = model(input_ids[:, :5], use_cache=True)
    logits = [out.logits]
    for start, stop in ((5, 6), (6, 9), (9, 16)):
        out = model(input_ids[:, start:stop], past_key_values=out.past_key_values)
        logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, 1), full, atol=1e-5, rtol=1e-5)
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    for extra in ({}, {"num_beams": 3}):
        cached = model.generate(input_ids[:, :4], **settings, **extra)
        assert torch.equal(cached, model.generate(input_ids[:, :4], use_cache=False, **settings, **extra))


def test_shared_value_table_is_one_tensor_saved_once(tmp_path):
    model = tiny_memory_layers(memory_layers=[0, 1, 3])
    tables = [m for m in model.modules() if type(m).__name__ == "MemoryLayersValueTable"]
    assert len(tables) == 1 and all(layer.mlp.values is None for layer in model.model.layers if layer.is_memory_layer)
    assert [k for k in model.state_dict() if "values" in k] == ["model.memory_values.weight"]
    model.train()
    input_ids = torch.randint(3, 300, (2, 10))
    model(input_ids, labels=input_ids).loss.backward()
    grad = model.model.memory_values.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(reloaded(input_ids).logits, model.eval()(input_ids).logits, atol=0, rtol=0)
    unshared = tiny_memory_layers(memory_layers=[0, 1], memory_share_values=False)
    assert sorted(k for k in unshared.state_dict() if "values" in k) == [
        "model.layers.0.mlp.values.weight", "model.layers.1.mlp.values.weight"]


def test_value_table_keeps_its_dtype_through_save_and_load(tmp_path):
    model = tiny_memory_layers(memory_value_dtype="bfloat16")
    assert model.model.memory_values.weight.dtype == torch.bfloat16
    assert model.model.layers[1].mlp.query_proj.weight.dtype == torch.float32
    input_ids = torch.randint(3, 300, (1, 8))
    logits = model(input_ids).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    model.save_pretrained(tmp_path)
    reloaded = MemoryLayersForCausalLM.from_pretrained(tmp_path)
    assert reloaded.model.memory_values.weight.dtype == torch.bfloat16
    assert reloaded.model.layers[0].mlp.gate_proj.weight.dtype == torch.float32
    torch.testing.assert_close(reloaded.eval()(input_ids).logits, logits, atol=0, rtol=0)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any operation produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_a_million_slot_memory_trains_on_cpu_without_tokens_by_slots_tensors():
    model = tiny_memory_layers(memory_n_keys=1024, memory_layers=[1], memory_v_dim=8, memory_value_dtype="bfloat16")
    slots = model.config.memory_size
    assert slots == 1024**2
    model.train()
    input_ids = torch.randint(3, 300, (2, 32))  # 64 tokens: a tokens x slots tensor would have 67M entries
    with LargestTensor() as probe:
        loss = model(input_ids, labels=input_ids).loss
        loss.backward()
    table = model.model.memory_values.weight
    assert torch.isfinite(loss) and table.grad is not None and table.grad.dtype == torch.bfloat16
    # nothing bigger than the table (and its gradient) itself, far below tokens x slots
    assert probe.largest <= table.numel() < 64 * slots


def test_interleaved_rotary_is_a_complex_rotation_of_adjacent_pairs():
    x = torch.randn(2, 5, 3, 8)
    positions = torch.arange(5)[None]
    cos, sin = rotary_angles(positions, 8, 500000.0)
    rotated = apply_interleaved_rotary(x, cos, sin)
    as_complex = torch.view_as_complex(x.unflatten(-1, (4, 2)).contiguous())
    angles = positions[0, :, None].float() / 500000.0 ** (torch.arange(0, 8, 2).float() / 8)
    expected = torch.view_as_real(as_complex * torch.polar(torch.ones_like(angles), angles)[None, :, None])
    torch.testing.assert_close(rotated, expected.flatten(-2), atol=1e-6, rtol=1e-6)


def test_research_swiglu_width_rule_and_config_checks():
    assert swiglu_hidden_size(1024, None, 256) == 2816
    assert swiglu_hidden_size(4096, 1.0, 256) == 11008
    assert swiglu_hidden_size(64, None, 32) == 192
    assert MemoryLayersConfig(hidden_size=64, multiple_of=32, num_attention_heads=4).intermediate_size == 192
    with pytest.raises(StrictDataclassError, match="multiple of num_key_value_heads"):
        MemoryLayersConfig(num_attention_heads=4, num_key_value_heads=3, hidden_size=64)
    with pytest.raises(StrictDataclassError, match=r"memory_layers must be distinct block indices in \[0, 2\)"):
        MemoryLayersConfig(num_hidden_layers=2, memory_layers=[2])
    with pytest.raises(StrictDataclassError, match="memory_heads must be an integer >= 2"):
        MemoryLayersConfig(memory_heads=1)
    with pytest.raises(StrictDataclassError, match="memory_k_dim must be even"):
        MemoryLayersConfig(memory_k_dim=15)
    with pytest.raises(StrictDataclassError, match="memory_knn .* cannot exceed memory_n_keys"):
        MemoryLayersConfig(memory_n_keys=4, memory_knn=8)
    with pytest.raises(StrictDataclassError, match="(?s)field 'memory_value_dtype'.*expected one of"):
        MemoryLayersConfig(memory_value_dtype="int8")
    assert MemoryLayersConfig(memory_v_dim=-1).memory_v_dim is None  # the research "-1 = model width"


def test_research_initialisation():
    config = tiny_memory_layers_config(hidden_size=64, memory_k_dim=32, memory_n_keys=16, memory_v_dim=None)
    torch.manual_seed(0)
    model = MemoryLayersForCausalLM(config)
    memory = model.model.layers[1].mlp
    assert memory.keys.abs().max() <= 32**-0.5 and memory.keys.abs().max() > 0.9 * 32**-0.5
    assert all(p.abs().sum() == 0 for n, p in memory.named_parameters() if n.endswith("bias"))
    assert model.model.memory_values.weight.std().item() == pytest.approx(64**-0.5, rel=0.05)
    q = model.model.layers[0].self_attn.q_proj.weight
    assert q.abs().max() <= 3 * 64**-0.5 + 1e-6 and q.std().item() == pytest.approx(64**-0.5, rel=0.05)
    assert torch.equal(model.model.norm.weight, torch.ones(64))


def test_param_groups_give_the_value_tables_their_own_learning_rate():
    model = tiny_memory_layers(memory_value_lr=0.001)
    groups = memory_layers_param_groups(model, lr=3e-4, weight_decay=0.1)
    assert [g["lr"] for g in groups] == [3e-4, 0.001]
    assert groups[1]["params"] == [model.model.memory_values.weight] and groups[1]["weight_decay"] == 0.1
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    no_decay = memory_layers_param_groups(model, lr=3e-4, value_lr=1e-2, value_weight_decay=0.0)
    assert no_decay[1]["lr"] == 1e-2 and no_decay[1]["weight_decay"] == 0.0
    torch.optim.AdamW(groups).step()  # the groups are valid optimizer input


def test_bad_inputs_get_clear_errors():
    model = tiny_memory_layers()
    input_ids = torch.randint(3, 300, (2, 6))
    with pytest.raises(ValueError, match=r"attention_mask \(2, 5\) does not fit input_ids \(2, 6\)"):
        model(input_ids, attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \[batch, past \+ new tokens\]"):
        model(input_ids, attention_mask=torch.ones(2, 7))
    with pytest.raises(TypeError, match="must be a transformers Cache"):
        model(input_ids, past_key_values=((torch.zeros(1),),))
    with pytest.raises(ValueError, match="exactly one of input_ids or inputs_embeds"):
        model()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny_memory_layers(**MEMORY_LAYERS_VARIANTS["gated_vdim_gqa"]).train()
    input_ids = torch.randint(3, 300, (2, 10))
    loss = model(input_ids, labels=input_ids).loss
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.activation_checkpointing_enable()
    loss_ckpt = model(input_ids, labels=input_ids).loss
    torch.testing.assert_close(loss_ckpt, loss)
    for a, b in zip(grads, torch.autograd.grad(loss_ckpt, list(model.parameters())), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_pure_torch_value_read_accumulates_in_float32(dtype):
    """Against a float64 reference: one row read 6000 times, others scattered; both gradients."""
    from memory_zoo.modeling.modeling_memory_layers import MemoryLayersValueTable

    torch.manual_seed(0)
    table_module = MemoryLayersValueTable(tiny_memory_layers_config(memory_n_keys=64, memory_value_dtype=None,
                                                                    use_kernels=False, memory_v_dim=24))
    table = torch.randn(4096, 24).to(dtype)
    table_module.weight.data = table.clone()
    indices = torch.randint(0, 4096, (1500, 8))
    indices[:, :4] = 7  # a hot row
    weights = torch.rand(1500, 8).softmax(-1)
    grad_out = torch.randn(1500, 24)
    weights_leaf = weights.clone().requires_grad_()
    out = table_module(indices, weights_leaf)
    assert out.dtype == dtype
    grads = torch.autograd.grad(out, [table_module.weight, weights_leaf], grad_out.to(dtype))
    ref_table = table.double().requires_grad_()
    ref_weights = weights.double().requires_grad_()
    ref = torch.nn.functional.embedding_bag(indices, ref_table, per_sample_weights=ref_weights, mode="sum")
    ref_grads = torch.autograd.grad(ref, [ref_table, ref_weights], grad_out.double())
    tolerance = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
    for got, want in zip((out, *grads), (ref, *ref_grads), strict=True):
        error = (got.double() - want).abs().max() / want.abs().max()
        assert error <= tolerance, (got.dtype, error.item())
    unread = torch.ones(4096, dtype=torch.bool)
    unread[indices.unique()] = False
    assert unread.any() and grads[0][unread].abs().sum() == 0
