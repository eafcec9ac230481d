"""Triton `leaky_average` kernel against a float64 closed form, run on the CPU by the Triton interpreter.

Collected only through tests/test_hub_kernels.py, which runs this file in a subprocess with TRITON_INTERPRET=1
(Triton reads it when kernels are defined, so it cannot be switched on inside the main test process).
"""

from __future__ import annotations

import os

import pytest
import torch

from memory_zoo.ops import load_hub_kernel

assert os.environ.get("TRITON_INTERPRET") == "1", "run through tests/test_hub_kernels.py"
KERNEL = load_hub_kernel("leaky_average")
# By the dtype of the tensor compared, relative to its largest entry: low-precision results differ from the float64
# reference by their final rounding (about two ulps); float32 results (the final state, gradients of float32 leaves)
# are accumulated in float32 from the same low-precision inputs, whatever the dtype of x. Measured worst cases are
# under half of these.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def reference(x, decay, initial_state):
    """`y[t] = sum_{s <= t} exp(-beta (t - s)) x[s] + exp(-beta (t + 1)) h0` through a `[H, T, T]` decay matrix."""
    steps = torch.arange(x.shape[1], dtype=torch.float64)
    lag = steps[:, None] - steps[None, :]
    mix = torch.exp(-decay[:, None, None] * lag.clamp(min=0)) * (lag >= 0)
    y = torch.einsum("hts,bshd->bthd", mix, x)
    if initial_state is not None:
        y = y + torch.exp(-decay[None, :] * (steps[:, None] + 1))[None, :, :, None] * initial_state[:, None]
    return y, y[:, -1]


def make_x(layout, batch, steps, heads, features, dtype):
    """x of the given shape as the model might pass it: contiguous, or a strided view of a larger tensor."""
    if layout == "contiguous":
        return torch.randn(batch, steps, heads, features).to(dtype)
    if layout == "head_major":  # [B, H, T, D] storage seen as [B, T, H, D]
        return torch.randn(batch, heads, steps, features).to(dtype).transpose(1, 2)
    if layout == "sliced":  # a window of a longer, wider tensor
        return torch.randn(batch, steps + 3, heads, features + 5).to(dtype)[:, 2:steps + 2, :, 3:features + 3]
    if layout == "features_strided":  # features are not the contiguous axis
        return torch.randn(batch, steps, features, heads).to(dtype).transpose(2, 3)
    raise ValueError(layout)


def assert_matches(got, want, name):
    assert got.shape == want.shape, name
    tol = TOLERANCE[got.dtype]
    scale = want.abs().max().clamp(min=1).item()
    torch.testing.assert_close(got.double(), want, atol=tol * scale, rtol=tol, msg=lambda m: f"{name}: {m}")


def run_case(batch, steps, heads, features, decays, with_state, layout, dtype, state_dtype=None):
    x = make_x(layout, batch, steps, heads, features, dtype).requires_grad_()
    decay = torch.tensor(decays, dtype=torch.float32).requires_grad_()
    state = torch.randn(batch, heads, features).to(state_dtype or dtype).requires_grad_() if with_state else None
    leaves = [x, decay] + ([state] if with_state else [])
    y, final = KERNEL.leaky_average(x, decay, state)
    assert y.dtype == dtype and final.dtype == torch.float32
    grad_y, grad_final = torch.randn_like(y), torch.randn_like(final)
    grads = torch.autograd.grad((y, final), leaves, (grad_y, grad_final))

    exact = [leaf.detach().double().requires_grad_() for leaf in leaves]
    want_y, want_final = reference(*exact, *([] if with_state else [None]))
    want_grads = torch.autograd.grad((want_y, want_final), exact, (grad_y.double(), grad_final.double()))
    assert_matches(y, want_y, "y")
    assert_matches(final, want_final, "final_state")
    for name, got, want, leaf in zip(("x", "decay", "initial_state"), grads, want_grads, leaves, strict=False):
        assert got.dtype == leaf.dtype, name
        assert_matches(got, want, f"grad {name}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch, steps, heads, features, decays, with_state, layout", [
    (1, 1, 2, 8, [0.5, 0.0], False, "contiguous"),                  # a single step
    (2, 37, 3, 24, [0.0, 0.3, 20.0], True, "head_major"),           # odd length, ragged last chunk, no/huge decay
    (3, 300, 2, 100, [0.0, 0.05], True, "sliced"),                  # many chunks, features over two blocks
    (2, 48, 1, 64, [20.0], True, "features_strided"),               # whole chunks, strided features
    (1, 20, 4, 16, [0.01, 0.1, 1.0, 3.0], False, "contiguous"),
])
def test_values_and_gradients_match_float64_reference(dtype, batch, steps, heads, features, decays, with_state, layout):
    torch.manual_seed(0)
    run_case(batch, steps, heads, features, decays, with_state, layout, dtype)


def test_float32_state_with_low_precision_inputs():
    torch.manual_seed(1)
    run_case(2, 21, 2, 8, [0.2, 0.7], True, "contiguous", torch.bfloat16, state_dtype=torch.float32)


def test_gradient_through_one_output_only():
    torch.manual_seed(2)
    x = torch.randn(2, 33, 2, 24, requires_grad=True)
    decay = torch.tensor([0.1, 2.0], requires_grad=True)
    state = torch.randn(2, 2, 24, requires_grad=True)
    exact = [t.detach().double().requires_grad_() for t in (x, decay, state)]
    for pick in (0, 1):  # only y is used, then only the final state: the other gradient reaches backward as None
        out = KERNEL.leaky_average(x, decay, state)[pick]
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, decay, state), grad)
        want = torch.autograd.grad(reference(*exact)[pick], exact, grad.double())
        for name, g, w in zip(("x", "decay", "initial_state"), got, want, strict=True):
            assert_matches(g, w, f"grad {name} through output {pick}")


def test_empty_sequence_returns_the_initial_state():
    state = torch.randn(2, 3, 8, requires_grad=True)
    decay = torch.ones(3, requires_grad=True)
    y, final = KERNEL.leaky_average(torch.zeros(2, 0, 3, 8), decay, state)
    assert y.shape == (2, 0, 3, 8)
    torch.testing.assert_close(final, state.detach())
    grad_state, grad_decay = torch.autograd.grad(final.sum(), (state, decay))
    torch.testing.assert_close(grad_state, torch.ones_like(state))
    torch.testing.assert_close(grad_decay, torch.zeros_like(decay))
    assert KERNEL.leaky_average(torch.zeros(1, 0, 3, 8), decay)[1].abs().sum() == 0


def test_inference_and_low_precision_decay():
    torch.manual_seed(3)
    x = torch.randn(1, 19, 2, 8)
    decay = torch.tensor([[0.3, 9.0], [1.5, 9.0]])[:, 0]  # a strided view
    with torch.no_grad():
        y, final = KERNEL.leaky_average(x, decay)
    want_y, want_final = reference(x.double(), decay.double(), None)
    assert_matches(y, want_y, "y without grad")
    assert_matches(final, want_final, "final_state without grad")
    decay_bf16 = decay.to(torch.bfloat16).requires_grad_()
    (grad,) = torch.autograd.grad(KERNEL.leaky_average(x, decay_bf16)[0].sum(), decay_bf16)
    assert grad.dtype == torch.bfloat16


def test_shapes_are_validated():
    with pytest.raises(ValueError, match=r"expects x \[B, T, H, D\] and decay \[H\]"):
        KERNEL.leaky_average(torch.zeros(2, 3, 4), torch.zeros(3))
    with pytest.raises(ValueError, match=r"initial_state must be \[B, H, D\]"):
        KERNEL.leaky_average(torch.zeros(2, 3, 4, 5), torch.zeros(4), torch.zeros(2, 4))


def test_kernel_matches_the_pure_torch_fallback():
    from memory_zoo.ops import leaky_average_reference as fallback

    torch.manual_seed(3)
    x = torch.randn(2, 45, 3, 10, requires_grad=True)
    decay = torch.tensor([0.0, 0.4, 7.0], requires_grad=True)
    state = torch.randn(2, 3, 10, requires_grad=True)
    outputs = [f(x, decay, state) for f in (KERNEL.leaky_average, lambda *a: fallback(*a, chunk_size=8))]
    for a, b in zip(*outputs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    grads = [torch.autograd.grad(y.sum() + 2 * final.sum(), [x, decay, state]) for y, final in outputs]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("variant", ["default", "lowr_keys", "post_ln_attn_only"])
def test_memory_mosaics_with_kernel_matches_pure_torch_model(variant, monkeypatch):
    from conftest import MOSAICS_VARIANTS, assert_kernel_matches_fallback, tiny_mosaics

    settings = dict(MOSAICS_VARIANTS[variant], attention_dropout=0.0, hidden_dropout=0.0)
    input_ids = torch.randint(3, 300, (2, 21))
    with_kernel = assert_kernel_matches_fallback(KERNEL, "leaky_average", monkeypatch,
                                                 lambda **extra: tiny_mosaics(**settings, **extra), input_ids)
    # cached decoding through the kernel (prefill, then one token at a time) equals the full forward
    model = with_kernel.eval()
    with torch.no_grad():
        full = model(input_ids).logits
        out = model(input_ids[:, :8], use_cache=True)
        steps = [out.logits] + [model(input_ids[:, t:t + 1], past_key_values=out.past_key_values).logits
                                for t in range(8, 21)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=2e-5, rtol=1e-4)
