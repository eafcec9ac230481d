"""The weighted embedding bag of Memory Layers: `out[n] = sum_j w[n, j] * table[idx[n, j]]`, read from a value table
of any float dtype, accumulated in float32, with the table's gradient dense like the table. This file travels with
saved models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .zoo_kernels import dispatch


class _WeightedBagFloat32(torch.autograd.Function):
    """`out[n] = sum_j w[n, j] * table[idx[n, j]]` for half-precision tables, accumulated in float32 in pure torch.

    `F.embedding_bag` needs the weights in the table's dtype and adds up the table's gradient in that dtype too: with
    a bfloat16 table, a row read thousands of times per batch drifts by percents. This reads rows in chunks of tokens
    (a few MB at a time) and sums both gradients in float32 — only over the rows actually read — so its result is
    what the `embedding_bag` kernel computes. Nothing of size tokens x slots is built.
    """

    CHUNK_ELEMENTS = 1 << 22  # gathered values per chunk

    @staticmethod
    def _chunks(indices: torch.Tensor, width: int):
        step = max(1, _WeightedBagFloat32.CHUNK_ELEMENTS // max(1, indices.shape[1] * width))
        return [slice(start, start + step) for start in range(0, indices.shape[0], step)]

    @staticmethod
    def forward(ctx, indices, table, weights):
        ctx.save_for_backward(indices, table, weights)
        out = torch.empty(indices.shape[0], table.shape[1], dtype=torch.float32, device=table.device)
        for part in _WeightedBagFloat32._chunks(indices, table.shape[1]):
            out[part] = torch.einsum("nl,nlv->nv", weights[part].float(), table[indices[part]].float())
        return out.to(table.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        indices, table, weights = ctx.saved_tensors
        grad = grad_out.float()
        grad_weights = grad_table = None
        parts = _WeightedBagFloat32._chunks(indices, table.shape[1])
        if ctx.needs_input_grad[2]:
            grad_weights = torch.empty(indices.shape, dtype=torch.float32, device=table.device)
            for part in parts:
                grad_weights[part] = torch.einsum("nv,nlv->nl", grad[part], table[indices[part]].float())
            grad_weights = grad_weights.to(weights.dtype)
        if ctx.needs_input_grad[1]:
            rows, slot = torch.unique(indices, return_inverse=True)
            sums = torch.zeros(rows.shape[0], table.shape[1], dtype=torch.float32, device=table.device)
            for part in parts:
                contributions = weights[part].float()[..., None] * grad[part, None, :]
                sums.index_add_(0, slot[part].reshape(-1), contributions.reshape(-1, table.shape[1]))
            grad_table = torch.zeros_like(table)
            grad_table[rows] = sums.to(table.dtype)
        return None, grad_table, grad_weights


def embedding_bag_sum_reference(indices: torch.Tensor, table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The pure-torch reference: `F.embedding_bag` for float32 tables, a chunked float32-accumulating gather for
    half-precision ones (so it is as exact as the kernel); `indices`, `weights` `[N, k]`, `table` `[slots, width]`."""
    if table.dtype == torch.float32:
        return F.embedding_bag(indices, table, per_sample_weights=weights.float(), mode="sum")
    return _WeightedBagFloat32.apply(indices, table, weights)


def embedding_bag_sum(indices: torch.Tensor, table: torch.Tensor, weights: torch.Tensor,
                      kernel: tuple[str | None, str | None] | None = None) -> torch.Tensor:
    """`embedding_bag_sum_reference`, through the `embedding_bag` Hub kernel where `kernel` (repo id, revision) is set
    and it loads and runs."""
    return dispatch("embedding_bag", kernel, table, lambda module: module.embedding_bag_sum(indices, table, weights),
                    lambda: embedding_bag_sum_reference(indices, table, weights))


__all__ = ["embedding_bag_sum", "embedding_bag_sum_reference"]
