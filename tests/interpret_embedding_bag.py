"""Triton `embedding_bag_sum` kernel against `F.embedding_bag` in float64, run on the CPU by the Triton interpreter.

Collected only through tests/test_hub_kernels.py, which runs this file in a subprocess with TRITON_INTERPRET=1
(Triton reads it when kernels are defined, so it cannot be switched on inside the main test process).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from memory_zoo.ops import embedding_bag_sum_reference, load_hub_kernel

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_hub_kernels.py"
KERNEL = load_hub_kernel("embedding_bag")
# By the dtype of the tensor compared, relative to its largest entry: the kernel accumulates in float32 from the same
# low-precision tensors the float64 reference reads, so low-precision results differ by their final rounding.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
DTYPE_PAIRS = [  # (weight, per_sample_weights)
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.bfloat16, torch.float32),
    (torch.float32, torch.float16),
]


def reference(indices, weight, per_sample_weights):
    return F.embedding_bag(indices.long(), weight, per_sample_weights=per_sample_weights, mode="sum")


def make_inputs(bags, length, rows, width, layout, weight_dtype, score_dtype, index_dtype=torch.int64):
    """Indices with repeats within and across bags (and one row repeated more than a kernel block), in a layout."""
    indices = torch.randint(0, rows, (bags, length))
    if length > 1:
        indices[:, 1] = indices[:, 0]  # a repeat inside every bag, and row 3 in every bag
        indices[:, -1] = 3
    if length > 20:
        indices[0, 4:24] = 7  # twenty occurrences of one row: a segment over several steps
    indices = indices.to(index_dtype)
    weight = torch.randn(rows, width).to(weight_dtype)
    scores = torch.randn(bags, length).to(score_dtype)
    if layout == "strided":  # transposed indices, every other score, a window of a wider table
        indices = indices.t().contiguous().t()
        scores = torch.stack([scores, torch.zeros_like(scores)], -1)[..., 0]
        weight = torch.cat([weight.new_ones(rows, 3), weight, weight.new_ones(rows, 2)], 1)[:, 3:width + 3]
        assert not (indices.is_contiguous() or scores.is_contiguous() or weight.is_contiguous())
    return indices, weight.requires_grad_(), scores.requires_grad_()


def assert_matches(got, want, name):
    assert got.shape == want.shape, name
    tol = TOLERANCE[got.dtype]
    scale = want.abs().max().clamp(min=1).item()
    torch.testing.assert_close(got.double(), want, atol=tol * scale, rtol=tol, msg=lambda m: f"{name}: {m}")


def run_case(bags, length, rows, width, layout, weight_dtype, score_dtype, index_dtype=torch.int64):
    indices, weight, scores = make_inputs(bags, length, rows, width, layout, weight_dtype, score_dtype, index_dtype)
    out = KERNEL.embedding_bag_sum(indices, weight, scores)
    assert out.dtype == weight_dtype and out.shape == (bags, width)
    grad_out = torch.randn_like(out)
    grad_weight, grad_scores = torch.autograd.grad(out, (weight, scores), grad_out)
    assert grad_weight.dtype == weight_dtype and grad_scores.dtype == score_dtype

    exact = [t.detach().double().requires_grad_() for t in (weight, scores)]
    want = reference(indices, *exact)
    want_weight, want_scores = torch.autograd.grad(want, exact, grad_out.double())
    assert_matches(out, want, "out")
    assert_matches(grad_weight, want_weight, "grad weight")
    assert_matches(grad_scores, want_scores, "grad per_sample_weights")
    untouched = torch.ones(rows, dtype=torch.bool)
    untouched[indices.reshape(-1).long()] = False
    assert (grad_weight[untouched] == 0).all(), "rows no bag references must have exactly zero gradient"
    # deterministic: no atomics, the same sums in the same order
    again = torch.autograd.grad(KERNEL.embedding_bag_sum(indices, weight, scores), weight, grad_out)[0]
    assert torch.equal(again, grad_weight)


@pytest.mark.parametrize("weight_dtype, score_dtype", DTYPE_PAIRS, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("bags, length, rows, width, layout", [
    (1, 1, 50, 8, "contiguous"),        # one bag of one entry
    (4, 12, 50, 24, "strided"),         # many repeats in a small table, non-contiguous views
    (3, 12, 5000, 100, "contiguous"),   # a large table: almost every row untouched, one ragged column block
    (2, 40, 50, 130, "strided"),        # entries over several blocks, a hot row, two column blocks
    (2, 5, 5000, 300, "contiguous"),    # three column blocks
])
def test_values_and_gradients_match_float64_reference(weight_dtype, score_dtype, bags, length, rows, width, layout):
    torch.manual_seed(0)
    run_case(bags, length, rows, width, layout, weight_dtype, score_dtype)


def test_int32_indices():
    torch.manual_seed(1)
    run_case(3, 12, 70, 24, "strided", torch.float32, torch.float32, index_dtype=torch.int32)


def test_one_gradient_at_a_time_and_inference():
    torch.manual_seed(2)
    indices, weight, scores = make_inputs(3, 12, 50, 24, "contiguous", torch.float32, torch.float32)
    exact = [t.detach().double().requires_grad_() for t in (weight, scores)]
    want = reference(indices, *exact)
    for leaf, want_leaf in zip((weight, scores), exact, strict=True):
        frozen = [t.detach() if t is not leaf else t for t in (weight, scores)]
        (got,) = torch.autograd.grad(KERNEL.embedding_bag_sum(indices, *frozen).sum(), leaf)
        (expected,) = torch.autograd.grad(want.sum(), want_leaf, retain_graph=True)
        assert_matches(got, expected, "single gradient")
    with torch.no_grad():
        assert_matches(KERNEL.embedding_bag_sum(indices, weight, scores), want.detach(), "out without grad")


def test_empty_bags():
    weight = torch.randn(10, 8, requires_grad=True)
    for bags, length in ((0, 4), (3, 0)):
        scores = torch.randn(bags, length, requires_grad=True)
        out = KERNEL.embedding_bag_sum(torch.zeros(bags, length, dtype=torch.int64), weight, scores)
        assert out.shape == (bags, 8) and (out == 0).all()
        grad_weight, grad_scores = torch.autograd.grad(out.sum(), (weight, scores), allow_unused=True)
        assert (grad_weight == 0).all() and grad_scores.shape == (bags, length)


def test_inputs_are_validated():
    weight, indices, scores = torch.zeros(10, 8), torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"expects indices \[N, L\]"):
        KERNEL.embedding_bag_sum(indices.float(), weight, scores)
    with pytest.raises(ValueError, match=r"expects weight \[M, V\]"):
        KERNEL.embedding_bag_sum(indices, weight[0], scores)
    with pytest.raises(ValueError, match=r"per_sample_weights must be \[N, L\] = \(2, 3\)"):
        KERNEL.embedding_bag_sum(indices, weight, scores.t())


@pytest.mark.parametrize("variant", ["pkplus_shared", "gated_vdim_gqa"])
def test_memory_layers_model_with_kernel_matches_the_fallback(variant, monkeypatch):
    from conftest import MEMORY_LAYERS_VARIANTS, assert_kernel_matches_fallback, tiny_memory_layers

    input_ids = torch.randint(3, 300, (2, 11))
    assert_kernel_matches_fallback(KERNEL, "embedding_bag_sum", monkeypatch,
                                   lambda **extra: tiny_memory_layers(**MEMORY_LAYERS_VARIANTS[variant], **extra),
                                   input_ids)


@pytest.mark.parametrize("table_dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kernel_matches_the_ops_reference(table_dtype):
    """The op's pure-torch reference (what the models fall back to) and the kernel: same values and gradients."""
    torch.manual_seed(5)
    table = torch.randn(50, 24).to(table_dtype).requires_grad_()
    indices = torch.randint(0, 50, (7, 4))
    weights = torch.randn(7, 4, requires_grad=True)
    outputs = [f(indices, table, weights) for f in (KERNEL.embedding_bag_sum, embedding_bag_sum_reference)]
    tol = 1e-5 if table_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(outputs[0].float(), outputs[1].float(), atol=tol, rtol=tol)
    grads = [torch.autograd.grad(out.float().sum(), [table, weights]) for out in outputs]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a.float(), b.float(), atol=tol, rtol=tol)
