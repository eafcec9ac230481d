"""Triton `masked_mixing` kernel against the pure-torch path, run on the CPU by the Triton interpreter.

Collected only through tests/test_hub_kernels.py, which runs this file in a subprocess with TRITON_INTERPRET=1
(Triton reads it when kernels are defined, so it cannot be switched on inside the main test process).
"""

from __future__ import annotations

import os

import pytest
import torch
from conftest import VARIANTS, assert_kernel_matches_fallback, tiny_model

from memory_zoo.ops import load_hub_kernel
from memory_zoo.ops import masked_mixing_reference as reference  # the op's ground truth, what the models fall back to

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_hub_kernels.py"
KERNEL = load_hub_kernel("masked_mixing")
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch, heads, rows, keys, features, offset, with_bias", [
    (2, 1, 16, 16, 16, 0, True),      # prefill of a whole (small) context
    (1, 2, 40, 70, 70, 30, True),     # a chunk after 30 cached positions, ragged sizes
    (3, 2, 1, 37, 65, 36, False),     # one decoding step
    (1, 1, 33, 33, 100, 0, True),     # features over several blocks
])
def test_kernel_matches_reference_values_and_gradients(dtype, batch, heads, rows, keys, features, offset, with_bias):
    torch.manual_seed(0)
    weight = torch.randn(heads, rows, keys).div(keys**0.5).to(dtype).requires_grad_()
    inputs = torch.randn(batch, heads, keys, features).to(dtype).requires_grad_()
    bias = torch.randn(heads, rows).to(dtype).requires_grad_() if with_bias else None
    leaves = [weight, inputs] + ([bias] if with_bias else [])
    out = KERNEL.masked_mixing(weight, inputs, bias, offset)
    # the reference in float32 from the same low-precision values: the kernel accumulates in float32
    expected = reference(*(t.float() if t is not None else None for t in (weight, inputs, bias)), offset)
    assert out.dtype == dtype
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected, atol=tol * 4, rtol=tol)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, grad_out)
    expected_grads = torch.autograd.grad(expected, leaves, grad_out.float())
    for got, want in zip(grads, expected_grads, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got.float(), want.float(), atol=tol * 8, rtol=tol * 2)


def test_kernel_ignores_masked_entries_and_strided_weights():
    torch.manual_seed(1)
    full = torch.randn(2, 24, 24)
    rows = full[:, 5:9, :9]  # a non-contiguous slice, as the model passes it during decoding
    inputs = torch.randn(1, 2, 9, 8)
    torch.testing.assert_close(KERNEL.masked_mixing(rows, inputs, None, 5), reference(rows, inputs, None, 5))


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_with_kernel_matches_pure_torch_model(variant, monkeypatch):
    x = torch.randint(3, 300, (2, 20))
    assert_kernel_matches_fallback(KERNEL, "masked_mixing", monkeypatch,
                                   lambda **extra: tiny_model(**VARIANTS[variant], **extra), x)


def test_cached_decoding_with_kernel_and_padded_batches_fall_back():
    model = tiny_model(mixing_expanded=True)
    x = torch.randint(3, 300, (2, 20))
    full = model(x).logits
    out = model(x[:, :7], use_cache=True)
    steps = [out.logits] + [model(x[:, t:t + 1], past_key_values=out.past_key_values).logits for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :4] = 0  # left padding: the re-based path is pure torch
    torch.testing.assert_close(model(x, attention_mask=mask).logits[0], full[0], atol=1e-5, rtol=0)
