"""Weighted embedding bag ("sum" mode) as a Triton kernel (Hub kernel `memory-zoo/embedding-bag`).

`embedding_bag_sum(indices, weight, per_sample_weights)` computes, for every bag row `n`,

    out[n] = sum_j per_sample_weights[n, j] * weight[indices[n, j]]

the value lookup of product-key memory layers (`L = heads * k` slots per token, read from a table of millions of
rows). Everything is accumulated in float32 and the result is stored in the weight's dtype. The backward gives

    grad_per_sample_weights[n, j] = <grad_out[n], weight[indices[n, j]]>
    grad_weight[m] = sum over (n, j) with indices[n, j] == m of per_sample_weights[n, j] * grad_out[n]

(no gradient for the indices). The weight gradient is dense `[M, V]` in the weight's dtype, exact zeros in rows no
bag references; it is computed deterministically, without atomics, as one float32 segmented sum per referenced row
over the sorted indices (see `_triton_impl`), with O(N * L) integer scratch and no `[N, M]` intermediate.

The caller guarantees `0 <= indices < M`: checking would cost a pass over the indices and a device synchronisation,
and the memory layers produce them from a top-k over the table. Out-of-range indices read and write out of bounds.

Triton is imported lazily, so the package loads anywhere; calling it needs CUDA/ROCm/XPU tensors, or CPU tensors
under `TRITON_INTERPRET=1`.
"""

from __future__ import annotations

import torch

__all__ = ["embedding_bag_sum", "triton_available"]

_IMPL = None
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_INDEX_DTYPES = (torch.int64, torch.int32)


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


class _EmbeddingBagSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, indices, weight, per_sample_weights):
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            ctx.save_for_backward(indices, weight, per_sample_weights)
        return _impl().forward(indices, weight, per_sample_weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        indices, weight, per_sample_weights = ctx.saved_tensors
        grad_weight = grad_scores = None
        if ctx.needs_input_grad[1]:
            grad_weight = _impl().backward_weight(indices, per_sample_weights, grad_out, weight.shape, weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_scores = _impl().backward_per_sample_weights(indices, weight, grad_out, per_sample_weights.dtype)
        return None, grad_weight, grad_scores


def embedding_bag_sum(indices: torch.Tensor, weight: torch.Tensor, per_sample_weights: torch.Tensor) -> torch.Tensor:
    """`out[n] = sum_j per_sample_weights[n, j] * weight[indices[n, j]]`, a weighted embedding bag in "sum" mode.

    Args:
        indices: `[N, L]` int64 or int32 rows of ``weight``, each in `[0, M)` (not checked), any strides.
        weight: `[M, V]` float32, bfloat16 or float16 table (any strides).
        per_sample_weights: `[N, L]` float32, bfloat16 or float16, one weight per index (may differ from the
            table's dtype).

    Returns:
        `[N, V]` in the dtype of ``weight``, accumulated in float32. Differentiable with respect to ``weight``
        (dense gradient in its dtype) and ``per_sample_weights`` (gradient in their dtype), once.
    """
    if indices.dim() != 2 or indices.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"embedding_bag_sum expects indices [N, L] of dtype int64 or int32, got {tuple(indices.shape)} "
            f"{indices.dtype}."
        )
    if weight.dim() != 2 or weight.dtype not in _DTYPES:
        raise ValueError(
            f"embedding_bag_sum expects weight [M, V] in {_DTYPES}, got {tuple(weight.shape)} {weight.dtype}."
        )
    if per_sample_weights.shape != indices.shape or per_sample_weights.dtype not in _DTYPES:
        raise ValueError(
            f"per_sample_weights must be [N, L] = {tuple(indices.shape)} in {_DTYPES}, got "
            f"{tuple(per_sample_weights.shape)} {per_sample_weights.dtype}."
        )
    if not indices.device == weight.device == per_sample_weights.device:
        raise ValueError(
            f"embedding_bag_sum expects all tensors on one device, got indices on {indices.device}, weight on "
            f"{weight.device} and per_sample_weights on {per_sample_weights.device}."
        )
    if weight.shape[0] == 0 and indices.numel() > 0:
        raise ValueError("embedding_bag_sum got indices into an empty weight table (M = 0).")
    return _EmbeddingBagSum.apply(indices, weight, per_sample_weights)
