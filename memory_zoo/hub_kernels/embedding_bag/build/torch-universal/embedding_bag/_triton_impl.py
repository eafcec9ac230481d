"""Triton kernels behind `embedding_bag_sum`: the weighted gather-sum, and its two gradients.

Forward, one program per (bag row `n`, block of `BLOCK_V` value columns): walk the bag's `L` entries `BLOCK_L` at a
time, gather the `[BLOCK_L, BLOCK_V]` tile of their weight rows, scale each row by its per-sample weight and add the
tile's column sums to a float32 accumulator; store once, in the weight's dtype.

Gradient of the per-sample weights, one program per (bag row `n`, block of `BLOCK_L` entries): walk the value
columns `BLOCK_V` at a time and accumulate, in float32, the dot products of `grad_out[n]` with the gathered rows.

Gradient of the weight, a segmented sum over the sorted indices, deterministic and without atomics:

1. sort the `P = N * L` flattened indices (stable), giving `sorted_rows` and `order` (the flat position `n * L + j`
   of each sorted entry); equal rows now form contiguous segments;
2. mark the first entry of every segment and number the segments by a cumulative sum of those marks; a binary
   search of that sorted numbering gives `starts[s]`, where segment `s` begins (`P` for every `s` past the last
   segment), so that `starts[s + 1]` is where it ends and a program past the last segment finds an empty range;
3. one program per (segment, block of `BLOCK_V` columns): sum `per_sample_weights[n, j] * grad_out[n]` over the
   segment's entries in float32, `BLOCK_P` entries at a time in sorted (hence fixed) order, and write the row once.

The grid covers `min(M, P)` segments (the most there can be), so nothing needs the actual count on the host: no
device-to-host synchronisation. Rows that no bag references are never written; the caller zero-fills the gradient
(in the weight's dtype). Scratch memory is O(P) integers (`sorted_rows`, `order`, the segment marks and ids,
`starts`); there is no `[N, M]` or `[P, M]` intermediate and no float32 `[M, V]` buffer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_L = 16  # bag entries per step (forward) or per program (per-sample-weight gradient)
BLOCK_P = 16  # occurrences of one row per step (weight gradient)
MAX_BLOCK_V = 128  # value columns per program / per step


def _blocks(width: int) -> tuple[int, int]:
    block_v = min(MAX_BLOCK_V, max(8, triton.next_power_of_2(width)))
    return block_v, max(1, BLOCK_L * block_v // 512)  # num_warps: about 16 elements of a tile per thread


@triton.jit
def _forward_kernel(
    IDX, W, PSW, OUT, L, V,
    si_n, si_l, sw_m, sw_v, sp_n, sp_l, so_n, so_v,
    BL: tl.constexpr, BV: tl.constexpr,
):
    n, pid_v = tl.program_id(0).to(tl.int64), tl.program_id(1)  # 64-bit offsets: tables pass 2^31 elements
    cols = pid_v * BV + tl.arange(0, BV)
    in_v = cols < V
    acc = tl.zeros((BV,), dtype=tl.float32)
    for start in range(0, L, BL):
        entries = start + tl.arange(0, BL)
        inside = entries < L
        rows = tl.load(IDX + n * si_n + entries * si_l, mask=inside, other=0).to(tl.int64)
        scale = tl.load(PSW + n * sp_n + entries * sp_l, mask=inside, other=0.0).to(tl.float32)
        tile = tl.load(W + rows[:, None] * sw_m + cols[None, :] * sw_v, mask=inside[:, None] & in_v[None, :],
                       other=0.0).to(tl.float32)
        acc += tl.sum(scale[:, None] * tile, axis=0)
    tl.store(OUT + n * so_n + cols * so_v, acc.to(OUT.dtype.element_ty), mask=in_v)


@triton.jit
def _grad_scores_kernel(
    IDX, W, G, GPSW, L, V,
    si_n, si_l, sw_m, sw_v, sg_n, sg_v, sq_n, sq_l,
    BL: tl.constexpr, BV: tl.constexpr,
):
    # grad_per_sample_weights[n, j] = <grad_out[n], weight[indices[n, j]]>
    n, pid_l = tl.program_id(0).to(tl.int64), tl.program_id(1)
    entries = pid_l * BL + tl.arange(0, BL)
    inside = entries < L
    rows = tl.load(IDX + n * si_n + entries * si_l, mask=inside, other=0).to(tl.int64)
    acc = tl.zeros((BL,), dtype=tl.float32)
    for start in range(0, V, BV):
        cols = start + tl.arange(0, BV)
        in_v = cols < V
        g = tl.load(G + n * sg_n + cols * sg_v, mask=in_v, other=0.0).to(tl.float32)
        tile = tl.load(W + rows[:, None] * sw_m + cols[None, :] * sw_v, mask=inside[:, None] & in_v[None, :],
                       other=0.0).to(tl.float32)
        acc += tl.sum(tile * g[None, :], axis=1)
    tl.store(GPSW + n * sq_n + entries * sq_l, acc.to(GPSW.dtype.element_ty), mask=inside)


@triton.jit
def _grad_weight_kernel(
    SORTED, ORDER, STARTS, PSW, G, GW, L, V,
    sp_n, sp_l, sg_n, sg_v, sw_m, sw_v,
    BP: tl.constexpr, BV: tl.constexpr,
):
    # grad_weight[row] = sum over the segment of `row` in the sorted indices of psw[n, j] * grad_out[n]
    segment, pid_v = tl.program_id(0), tl.program_id(1)
    first = tl.load(STARTS + segment)
    end = tl.load(STARTS + segment + 1)
    if first < end:  # programs past the last segment have nothing to do
        row = tl.load(SORTED + first).to(tl.int64)
        cols = pid_v * BV + tl.arange(0, BV)
        in_v = cols < V
        acc = tl.zeros((BV,), dtype=tl.float32)
        for start in range(first, end, BP):
            positions = start + tl.arange(0, BP)
            inside = positions < end
            flat = tl.load(ORDER + positions, mask=inside, other=0)  # n * L + j, int64
            n, j = flat // L, flat % L
            scale = tl.load(PSW + n * sp_n + j * sp_l, mask=inside, other=0.0).to(tl.float32)
            g = tl.load(G + n[:, None] * sg_n + cols[None, :] * sg_v, mask=inside[:, None] & in_v[None, :],
                        other=0.0).to(tl.float32)
            acc += tl.sum(scale[:, None] * g, axis=0)
        tl.store(GW + row * sw_m + cols * sw_v, acc.to(GW.dtype.element_ty), mask=in_v)


def forward(indices: torch.Tensor, weight: torch.Tensor, per_sample_weights: torch.Tensor) -> torch.Tensor:
    bags, length = indices.shape
    width = weight.shape[1]
    out = torch.empty(bags, width, device=weight.device, dtype=weight.dtype)
    if out.numel() == 0:
        return out
    if length == 0:
        return out.zero_()
    block_v, num_warps = _blocks(width)
    _forward_kernel[(bags, triton.cdiv(width, block_v))](
        indices, weight, per_sample_weights, out, length, width,
        *indices.stride(), *weight.stride(), *per_sample_weights.stride(), *out.stride(),
        BL=BLOCK_L, BV=block_v, num_warps=num_warps,
    )
    return out


def backward_per_sample_weights(
    indices: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """`[N, L]` in ``dtype``: the dot product of each bag's output gradient with each of its rows."""
    bags, length = indices.shape
    width = weight.shape[1]
    grad = torch.empty(bags, length, device=weight.device, dtype=dtype)
    if grad.numel() == 0:
        return grad
    if width == 0:
        return grad.zero_()
    block_v, num_warps = _blocks(width)
    _grad_scores_kernel[(bags, triton.cdiv(length, BLOCK_L))](
        indices, weight, grad_out, grad, length, width,
        *indices.stride(), *weight.stride(), *grad_out.stride(), *grad.stride(),
        BL=BLOCK_L, BV=block_v, num_warps=num_warps,
    )
    return grad


def backward_weight(
    indices: torch.Tensor, per_sample_weights: torch.Tensor, grad_out: torch.Tensor, shape: torch.Size,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Dense `[M, V]` gradient in ``dtype`` (zeros in unreferenced rows), by a segmented sum over sorted indices."""
    rows, width = shape
    grad = torch.zeros(rows, width, device=grad_out.device, dtype=dtype)
    positions = indices.numel()
    if grad.numel() == 0 or positions == 0:
        return grad
    sorted_rows, order = torch.sort(indices.reshape(-1), stable=True)
    opens = torch.ones(positions, device=indices.device, dtype=torch.bool)  # first entry of a segment
    opens[1:] = sorted_rows[1:] != sorted_rows[:-1]
    segment = torch.cumsum(opens, 0) - 1  # non-decreasing segment id of every sorted entry
    segments = min(rows, positions)  # at most this many distinct rows
    # starts[s]: the first entry with segment id >= s, i.e. where segment s begins, or P past the last segment
    starts = torch.searchsorted(segment, torch.arange(segments + 1, device=indices.device, dtype=torch.int64))
    block_v, num_warps = _blocks(width)
    _grad_weight_kernel[(segments, triton.cdiv(width, block_v))](
        sorted_rows, order, starts, per_sample_weights, grad_out, grad, indices.shape[1], width,
        *per_sample_weights.stride(), *grad_out.stride(), *grad.stride(),
        BP=BLOCK_P, BV=block_v, num_warps=num_warps,
    )
    return grad
