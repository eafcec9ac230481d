"""Triton kernels behind `masked_mixing`: forward, gradient of the inputs and gradient of the weight."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_T = 32  # output rows per program
BLOCK_S = 32  # key positions per step
BLOCK_D = 64  # features per program


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    # IEEE: float32 operands (which would otherwise go through TF32 on Ampere and later, not exact enough for
    # parity) and bfloat16 operands under the CPU interpreter, whose bfloat16 tl.dot is wrong (Triton 3.9).
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


def _ieee(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 or (dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _forward_kernel(
    W, U, BIAS, OUT, H, T, S, D, offset,
    sw_h, sw_t, sw_s, su_b, su_h, su_s, su_d, so_b, so_h, so_t, so_d, sb_h, sb_t,
    HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):
    pid_t, pid_d, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // H, pid_bh % H
    rows = pid_t * BT + tl.arange(0, BT)
    cols = pid_d * BD + tl.arange(0, BD)
    acc = tl.zeros((BT, BD), dtype=tl.float32)
    # Keys beyond the last row's diagonal are masked for every row of this block: stop there.
    stop = tl.minimum(S, (pid_t + 1) * BT + offset)
    for start in range(0, stop, BS):
        keys = start + tl.arange(0, BS)
        visible = (rows[:, None] < T) & (keys[None, :] < S) & (keys[None, :] <= rows[:, None] + offset)
        w = tl.load(W + h * sw_h + rows[:, None] * sw_t + keys[None, :] * sw_s, mask=visible, other=0.0)
        u = tl.load(U + b * su_b + h * su_h + keys[:, None] * su_s + cols[None, :] * su_d,
                    mask=(keys[:, None] < S) & (cols[None, :] < D), other=0.0)
        acc += _dot(w.to(u.dtype), u, IEEE)
    if HAS_BIAS:
        acc += tl.load(BIAS + h * sb_h + rows * sb_t, mask=rows < T, other=0.0).to(tl.float32)[:, None]
    tl.store(OUT + b * so_b + h * so_h + rows[:, None] * so_t + cols[None, :] * so_d, acc.to(OUT.dtype.element_ty),
             mask=(rows[:, None] < T) & (cols[None, :] < D))


@triton.jit
def _grad_inputs_kernel(
    W, G, DU, H, T, S, D, offset,
    sw_h, sw_t, sw_s, sg_b, sg_h, sg_t, sg_d, sd_b, sd_h, sd_s, sd_d,
    IEEE: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):
    # dU[s] = sum over rows t with s <= t + offset of W[t, s] * dO[t]
    pid_s, pid_d, pid_bh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, h = pid_bh // H, pid_bh % H
    keys = pid_s * BS + tl.arange(0, BS)
    cols = pid_d * BD + tl.arange(0, BD)
    acc = tl.zeros((BS, BD), dtype=tl.float32)
    first = tl.maximum(pid_s * BS - offset, 0) // BT * BT  # rows above this are masked for every key here
    for start in range(first, T, BT):
        rows = start + tl.arange(0, BT)
        visible = (rows[None, :] < T) & (keys[:, None] < S) & (keys[:, None] <= rows[None, :] + offset)
        w_t = tl.load(W + h * sw_h + rows[None, :] * sw_t + keys[:, None] * sw_s, mask=visible, other=0.0)
        g = tl.load(G + b * sg_b + h * sg_h + rows[:, None] * sg_t + cols[None, :] * sg_d,
                    mask=(rows[:, None] < T) & (cols[None, :] < D), other=0.0)
        acc += _dot(w_t.to(g.dtype), g, IEEE)
    tl.store(DU + b * sd_b + h * sd_h + keys[:, None] * sd_s + cols[None, :] * sd_d, acc.to(DU.dtype.element_ty),
             mask=(keys[:, None] < S) & (cols[None, :] < D))


@triton.jit
def _grad_weight_kernel(
    G, U, DW, B, H, T, S, D, offset,
    sg_b, sg_h, sg_t, sg_d, su_b, su_h, su_s, su_d, sw_h, sw_t, sw_s,
    IEEE: tl.constexpr, BT: tl.constexpr, BS: tl.constexpr, BD: tl.constexpr,
):
    # dW[t, s] = sum over batch and features of dO[t] * U[s], only where s <= t + offset
    pid_t, pid_s, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows = pid_t * BT + tl.arange(0, BT)
    keys = pid_s * BS + tl.arange(0, BS)
    if pid_s * BS <= (pid_t + 1) * BT - 1 + offset:  # blocks wholly above the diagonal stay zero
        acc = tl.zeros((BT, BS), dtype=tl.float32)
        for b in range(0, B):
            for start in range(0, D, BD):
                cols = start + tl.arange(0, BD)
                g = tl.load(G + b * sg_b + h * sg_h + rows[:, None] * sg_t + cols[None, :] * sg_d,
                            mask=(rows[:, None] < T) & (cols[None, :] < D), other=0.0)
                u_t = tl.load(U + b * su_b + h * su_h + keys[None, :] * su_s + cols[:, None] * su_d,
                              mask=(keys[None, :] < S) & (cols[:, None] < D), other=0.0)
                acc += _dot(g, u_t.to(g.dtype), IEEE)
        visible = (rows[:, None] < T) & (keys[None, :] < S) & (keys[None, :] <= rows[:, None] + offset)
        tl.store(DW + h * sw_h + rows[:, None] * sw_t + keys[None, :] * sw_s, acc, mask=visible)


def forward(weight: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None, offset: int) -> torch.Tensor:
    batch, heads, keys, features = inputs.shape
    rows = weight.shape[1]
    out = torch.empty(batch, heads, rows, features, device=inputs.device, dtype=inputs.dtype)
    if out.numel() == 0:
        return out
    bias_arg = bias if bias is not None else weight  # never read without HAS_BIAS
    bias_strides = bias.stride() if bias is not None else (0, 0)
    grid = (triton.cdiv(rows, BLOCK_T), triton.cdiv(features, BLOCK_D), batch * heads)
    _forward_kernel[grid](
        weight, inputs, bias_arg, out, heads, rows, keys, features, offset,
        *weight.stride(), *inputs.stride(), *out.stride(), *bias_strides,
        HAS_BIAS=bias is not None, IEEE=_ieee(inputs.dtype), BT=BLOCK_T, BS=BLOCK_S, BD=BLOCK_D,
    )
    return out


def backward_inputs(weight: torch.Tensor, grad_out: torch.Tensor, keys: int, offset: int) -> torch.Tensor:
    batch, heads, rows, features = grad_out.shape
    grad = torch.empty(batch, heads, keys, features, device=grad_out.device, dtype=grad_out.dtype)
    if grad.numel() == 0:
        return grad
    grid = (triton.cdiv(keys, BLOCK_S), triton.cdiv(features, BLOCK_D), batch * heads)
    _grad_inputs_kernel[grid](
        weight, grad_out, grad, heads, rows, keys, features, offset,
        *weight.stride(), *grad_out.stride(), *grad.stride(),
        IEEE=_ieee(grad_out.dtype), BT=BLOCK_T, BS=BLOCK_S, BD=BLOCK_D,
    )
    return grad


def backward_weight(grad_out: torch.Tensor, inputs: torch.Tensor, shape: torch.Size, offset: int) -> torch.Tensor:
    batch, heads, rows, features = grad_out.shape
    keys = inputs.shape[-2]
    grad = torch.zeros(shape, device=grad_out.device, dtype=torch.float32)
    if grad.numel() == 0 or grad_out.numel() == 0:
        return grad
    grid = (triton.cdiv(rows, BLOCK_T), triton.cdiv(keys, BLOCK_S), heads)
    _grad_weight_kernel[grid](
        grad_out, inputs, grad, batch, heads, rows, keys, features, offset,
        *grad_out.stride(), *inputs.stride(), *grad.stride(),
        IEEE=_ieee(grad_out.dtype), BT=BLOCK_T, BS=BLOCK_S, BD=BLOCK_D,
    )
    return grad
