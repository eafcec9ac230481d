"""Causal leaky average of Memory Mosaics as a Triton kernel (Hub kernel `memory-zoo/leaky-average`).

`leaky_average(x, decay, initial_state)` computes, for every batch row `b`, head `h` and feature `d`, with
`a_h = exp(-decay[h])`,

    y[b, t, h, d] = a_h * y[b, t - 1, h, d] + x[b, t, h, d],      y[b, -1] = initial_state[b]  (zeros if None)

i.e. `y[t] = sum_{s <= t} a^(t - s) x[s] + a^(t + 1) initial_state`, and returns `y` with the float32 state after the
last step. Everything is accumulated in float32; memory is linear in the sequence length. The backward is the exact
gradient of the recurrence: with `G[t] = dL/dy[t] + a G[t + 1]` (the final state's gradient enters at `t = T - 1`),

    dL/dx[t] = G[t],   dL/dinitial_state = a G[0],   dL/ddecay[h] = -a_h sum_{b, t, d} G[t] y[t - 1]   (y[-1] = h0).

Triton is imported lazily, so the package loads anywhere; calling it needs CUDA/ROCm/XPU tensors, or CPU tensors
under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import torch

__all__ = ["leaky_average", "triton_available"]

_IMPL = None
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_available() -> bool:
    """Whether the Triton implementation can be imported here."""
    try:
        _impl()
    except ImportError:
        return False
    return True


def _impl():
    global _IMPL
    if _IMPL is None:
        from . import _triton_impl

        _IMPL = _triton_impl
    return _IMPL


class _LeakyAverage(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, decay, initial_state):
        ctx.set_materialize_grads(False)
        save = any(ctx.needs_input_grad)
        y, final, states = _impl().forward(x, decay, initial_state, save_states=save)
        if save:
            ctx.save_for_backward(x, decay, states)
        ctx.initial_dtype = initial_state.dtype if initial_state is not None else None
        return y, final

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        if grad_y is None and grad_final is None:
            return None, None, None
        x, decay, states = ctx.saved_tensors
        grad_x, grad_decay, grad_initial = _impl().backward(x, decay, states, grad_y, grad_final)
        return (
            grad_x if ctx.needs_input_grad[0] else None,
            grad_decay.to(decay.dtype) if ctx.needs_input_grad[1] else None,
            grad_initial.to(ctx.initial_dtype) if ctx.needs_input_grad[2] else None,
        )


def leaky_average(
    x: torch.Tensor, decay: torch.Tensor, initial_state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal leaky sum along time: `y[:, t] = exp(-decay) * y[:, t - 1] + x[:, t]`, `y[:, -1] = initial_state`.

    Args:
        x: `[batch, time, heads, features]` (any strides), float32, bfloat16 or float16.
        decay: `[heads]`, the rate `beta >= 0` of each head (the factor per step is `exp(-beta)`).
        initial_state: optional `[batch, heads, features]` state before the first step (zeros if `None`).

    Returns:
        `(y, final_state)`: `y` `[batch, time, heads, features]` in the dtype of `x`, and `final_state`
        `[batch, heads, features]` in float32, `y[:, -1]` before rounding (`initial_state` when `time == 0`).
        Both are differentiable with respect to `x`, `decay` and `initial_state`.
    """
    if x.dim() != 4 or decay.dim() != 1 or decay.shape[0] != x.shape[2]:
        raise ValueError(
            f"leaky_average expects x [B, T, H, D] and decay [H], got {tuple(x.shape)} and {tuple(decay.shape)}."
        )
    if x.dtype not in _DTYPES or not decay.is_floating_point():
        raise ValueError(f"leaky_average expects x in {_DTYPES} and a floating decay, got {x.dtype} and {decay.dtype}.")
    expected = (x.shape[0], x.shape[2], x.shape[3])
    if initial_state is not None and tuple(initial_state.shape) != expected:
        raise ValueError(
            f"initial_state must be [B, H, D] = {expected} or None, got {tuple(initial_state.shape)}."
        )
    return _LeakyAverage.apply(x, decay, initial_state)
