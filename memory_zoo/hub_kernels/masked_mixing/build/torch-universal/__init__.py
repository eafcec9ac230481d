"""Causal position mixing of the Masked Mixer as a Triton kernel (Hub kernel `memory-zoo/masked-mixing`).

`masked_mixing(weight, inputs, bias, row_offset)` computes, for every batch row `b` and head `h`,

    out[b, h, t, :] = sum_{s <= t + row_offset} weight[h, t, s] * inputs[b, h, s, :]  (+ bias[h, t])

i.e. `tril(weight, diagonal=row_offset) @ inputs`, visiting only the blocks on or below the diagonal (about half the
FLOPs of a dense matmul) with float32 accumulation, forward and backward. Triton is imported lazily, so the package
loads anywhere; calling it needs CUDA/ROCm/XPU tensors, or CPU tensors under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import torch

__all__ = ["masked_mixing", "triton_available"]

_IMPL = None


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


class _MaskedMixing(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, inputs, bias, row_offset):
        ctx.save_for_backward(weight, inputs)
        ctx.row_offset = row_offset
        ctx.has_bias = bias is not None
        return _impl().forward(weight, inputs, bias, row_offset)

    @staticmethod
    def backward(ctx, grad_out):
        weight, inputs = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_weight = grad_inputs = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_weight = _impl().backward_weight(grad_out, inputs, weight.shape, ctx.row_offset).to(weight.dtype)
        if ctx.needs_input_grad[1]:
            grad_inputs = _impl().backward_inputs(weight, grad_out, inputs.shape[-2], ctx.row_offset)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.float().sum(dim=(0, 3)).to(grad_out.dtype)
        return grad_weight, grad_inputs, grad_bias, None


def masked_mixing(
    weight: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None, row_offset: int = 0
) -> torch.Tensor:
    """`tril(weight, diagonal=row_offset) @ inputs (+ bias[..., None])`.

    Args:
        weight: `[heads, rows, keys]` mixing matrices (any strides); entries above the shifted diagonal are ignored.
        inputs: `[batch, heads, keys, features]`.
        bias: optional `[heads, rows]`, one value per output row.
        row_offset: absolute position of the first row (the number of cached positions when decoding).

    Returns:
        `[batch, heads, rows, features]` in the dtype of `inputs`.
    """
    if weight.dim() != 3 or inputs.dim() != 4 or weight.shape[0] != inputs.shape[1] or weight.shape[2] != inputs.shape[2]:
        raise ValueError(
            f"masked_mixing expects weight [H, T, S] and inputs [B, H, S, D], got {tuple(weight.shape)} and "
            f"{tuple(inputs.shape)}."
        )
    if bias is not None and bias.shape != weight.shape[:2]:
        raise ValueError(f"bias must be [H, T] = {tuple(weight.shape[:2])}, got {tuple(bias.shape)}.")
    return _MaskedMixing.apply(weight, inputs, bias, int(row_offset))
