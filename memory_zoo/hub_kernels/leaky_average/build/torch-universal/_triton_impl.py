"""Triton kernels behind `leaky_average`: a chunked scan forward, and its exact reverse scan backward.

One program owns one (batch row, head, block of `BLOCK_D` features) and walks the time axis in chunks of `BLOCK_T`
steps. Inside a chunk the recurrence is a small matrix product with the head's decay matrix
`M[i, j] = a^(i - j)` (`j <= i`, `a = exp(-beta)`), so a whole `[BLOCK_T, BLOCK_D]` tile is loaded, mixed and
stored at once; only the `[BLOCK_D]` state crosses chunk boundaries. The forward saves that state at the start of
every chunk (float32, `1 / BLOCK_T` of the activations) so the backward can recompute the previous outputs
`y[t - 1]` in float32 instead of reading back the rounded output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Time steps per chunk: the forward's state checkpoints and the backward share it. Each chunk costs BLOCK_T
# multiply-adds per element and per product (one in the forward, two in the backward), which keeps the kernels
# memory-bound with float32 FMA `tl.dot`s; larger chunks would shorten the sequential chain over time instead.
BLOCK_T = 16
MAX_BLOCK_D = 64  # features per program (tl.dot needs at least 16)


def _blocks(features: int) -> tuple[int, int]:
    block_d = min(MAX_BLOCK_D, max(16, triton.next_power_of_2(features)))
    return block_d, max(1, BLOCK_T * block_d // 512)  # num_warps: about 16 elements of a tile per thread


@triton.jit
def _powers(beta, exponent):
    # a^exponent for integer exponent >= 0, exactly 1 at exponent 0 (even for an infinite beta)
    return tl.where(exponent > 0, tl.exp(-beta * tl.maximum(exponent, 0).to(tl.float32)), 1.0)


@triton.jit
def _forward_kernel(
    X, DECAY, H0, Y, STATES, FINAL, H, T, D, n_chunks,
    sx_b, sx_t, sx_h, sx_d, sy_b, sy_t, sy_h, sy_d, s0_b, s0_h, s0_d,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    pid_bh, pid_d = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: tensors may pass 2^31 elements
    steps = tl.arange(0, BT)
    cols = pid_d * BD + tl.arange(0, BD)
    in_d = cols < D
    beta = tl.load(DECAY + h).to(tl.float32)
    lag = steps[:, None] - steps[None, :]
    mix = tl.where(lag >= 0, _powers(beta, lag), 0.0)  # M[i, j] = a^(i - j) on and below the diagonal
    carry_in = _powers(beta, steps + 1)  # a^(i + 1): weight of the state before the chunk at step i
    if HAS_H0:
        state = tl.load(H0 + b * s0_b + h * s0_h + cols * s0_d, mask=in_d, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BD,), dtype=tl.float32)
    x_row = X + b * sx_b + h * sx_h + cols[None, :] * sx_d
    y_row = Y + b * sy_b + h * sy_h + cols[None, :] * sy_d
    states = STATES + (pid_bh.to(tl.int64) * n_chunks) * D + cols  # [B, H, n_chunks, D], contiguous
    for chunk in range(0, n_chunks):
        t = chunk * BT + steps
        inside = (t[:, None] < T) & in_d[None, :]
        if SAVE_STATES:
            tl.store(states + chunk * D, state, mask=in_d)
        t_off = t[:, None].to(tl.int64)
        x = tl.load(x_row + t_off * sx_t, mask=inside, other=0.0).to(tl.float32)
        y = tl.dot(mix, x, input_precision="ieee") + carry_in[:, None] * state[None, :]
        tl.store(y_row + t_off * sy_t, y.to(Y.dtype.element_ty), mask=inside)
        last = tl.minimum(T - chunk * BT, BT) - 1
        state = tl.sum(tl.where(steps[:, None] == last, y, 0.0), axis=0)
    tl.store(FINAL + pid_bh.to(tl.int64) * D + cols, state, mask=in_d)


@triton.jit
def _backward_kernel(
    X, DECAY, GY, GF, STATES, GX, GH0, GBETA, H, T, D, n_chunks,
    sx_b, sx_t, sx_h, sx_d, sg_b, sg_t, sg_h, sg_d, sf_b, sf_h, sf_d, sgx_b, sgx_t, sgx_h, sgx_d,
    HAS_GY: tl.constexpr, HAS_GF: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):
    # Reverse scan G[t] = g[t] + a G[t + 1] (plus the final state's gradient at t = T - 1), chunk by chunk from
    # the end: G = M^T g + a^(BT - i) G[next chunk start]. grad x = G; grad h0 = a G[0];
    # grad beta = -a sum_t G[t] y[t - 1], with y[t - 1] = Ms x + a^i state (Ms: M shifted one step down).
    pid_bh, pid_d = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), (pid_bh % H).to(tl.int64)  # 64-bit offsets: tensors may pass 2^31 elements
    steps = tl.arange(0, BT)
    cols = pid_d * BD + tl.arange(0, BD)
    in_d = cols < D
    beta = tl.load(DECAY + h).to(tl.float32)
    lag = steps[:, None] - steps[None, :]
    mix_t = tl.where(lag <= 0, _powers(beta, -lag), 0.0)  # M^T[i, j] = a^(j - i) on and above the diagonal
    mix_prev = tl.where(lag > 0, _powers(beta, lag - 1), 0.0)  # Ms[i, j] = a^(i - 1 - j) below the diagonal
    carry_out = _powers(beta, BT - steps)  # a^(BT - i): weight of G at the next chunk's first step
    carry_in = _powers(beta, steps)  # a^i: weight of the state before the chunk in y[t - 1]
    if HAS_GF:
        grad_final = tl.load(GF + b * sf_b + h * sf_h + cols * sf_d, mask=in_d, other=0.0).to(tl.float32)
    else:
        grad_final = tl.zeros((BD,), dtype=tl.float32)
    x_row = X + b * sx_b + h * sx_h + cols[None, :] * sx_d
    g_row = GY + b * sg_b + h * sg_h + cols[None, :] * sg_d
    gx_row = GX + b * sgx_b + h * sgx_h + cols[None, :] * sgx_d
    states = STATES + (pid_bh.to(tl.int64) * n_chunks) * D + cols
    g_next = tl.zeros((BD,), dtype=tl.float32)
    beta_acc = tl.zeros((BD,), dtype=tl.float32)
    for step in range(0, n_chunks):
        chunk = n_chunks - 1 - step
        t = chunk * BT + steps
        inside = (t[:, None] < T) & in_d[None, :]
        t_off = t[:, None].to(tl.int64)
        if HAS_GY:
            g = tl.load(g_row + t_off * sg_t, mask=inside, other=0.0).to(tl.float32)
        else:
            g = tl.zeros((BT, BD), dtype=tl.float32)
        g += tl.where(t[:, None] == T - 1, grad_final[None, :], 0.0)
        # padded steps (t >= T) have g = 0 and, being in the last chunk, nothing after them: their G is 0
        grad = tl.dot(mix_t, g, input_precision="ieee") + carry_out[:, None] * g_next[None, :]
        tl.store(gx_row + t_off * sgx_t, grad.to(GX.dtype.element_ty), mask=inside)
        x = tl.load(x_row + t_off * sx_t, mask=inside, other=0.0).to(tl.float32)
        state = tl.load(states + chunk * D, mask=in_d, other=0.0)
        y_prev = tl.dot(mix_prev, x, input_precision="ieee") + carry_in[:, None] * state[None, :]
        beta_acc += tl.sum(grad * y_prev, axis=0)
        g_next = tl.sum(tl.where(steps[:, None] == 0, grad, 0.0), axis=0)
    decay_factor = tl.exp(-beta)
    tl.store(GH0 + pid_bh.to(tl.int64) * D + cols, decay_factor * g_next, mask=in_d)
    tl.store(GBETA + pid_bh.to(tl.int64) * D + cols, -decay_factor * beta_acc, mask=in_d)


def forward(
    x: torch.Tensor, decay: torch.Tensor, initial_state: torch.Tensor | None, save_states: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(y, final_state, states)`; `states[b, h, k]` is the float32 state before chunk `k` (empty unless saved)."""
    batch, steps, heads, features = x.shape
    y = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    n_chunks = triton.cdiv(steps, BLOCK_T)
    states = torch.empty(batch, heads, n_chunks if save_states else 0, features, device=x.device, dtype=torch.float32)
    if steps == 0 or y.numel() == 0:
        final = torch.zeros(batch, heads, features, device=x.device, dtype=torch.float32)
        if initial_state is not None:
            final.copy_(initial_state)
        return y, final, states
    final = torch.empty(batch, heads, features, device=x.device, dtype=torch.float32)
    block_d, num_warps = _blocks(features)
    h0_strides = initial_state.stride() if initial_state is not None else (0, 0, 0)
    _forward_kernel[(batch * heads, triton.cdiv(features, block_d))](
        x, decay.contiguous(), initial_state if initial_state is not None else x, y, states if save_states else y, final,
        heads, steps, features, n_chunks, *x.stride(), *y.stride(), *h0_strides,
        HAS_H0=initial_state is not None, SAVE_STATES=save_states, BT=BLOCK_T, BD=block_d, num_warps=num_warps,
    )
    return y, final, states


def backward(
    x: torch.Tensor, decay: torch.Tensor, states: torch.Tensor,
    grad_y: torch.Tensor | None, grad_final: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(grad_x in x.dtype, grad_decay [H] float32, grad_initial_state [B, H, D] float32)`."""
    batch, steps, heads, features = x.shape
    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if steps == 0 or grad_x.numel() == 0:
        grad_h0 = torch.zeros(batch, heads, features, device=x.device, dtype=torch.float32)
        if grad_final is not None and steps == 0:
            grad_h0.copy_(grad_final)
        return grad_x.zero_(), torch.zeros(heads, device=x.device, dtype=torch.float32), grad_h0
    grad_h0 = torch.empty(batch, heads, features, device=x.device, dtype=torch.float32)
    grad_beta = torch.empty(batch, heads, features, device=x.device, dtype=torch.float32)
    block_d, num_warps = _blocks(features)
    _backward_kernel[(batch * heads, triton.cdiv(features, block_d))](
        x, decay.contiguous(), grad_y if grad_y is not None else x, grad_final if grad_final is not None else x, states,
        grad_x, grad_h0, grad_beta, heads, steps, features, states.shape[2],
        *x.stride(), *(grad_y.stride() if grad_y is not None else (0, 0, 0, 0)),
        *(grad_final.stride() if grad_final is not None else (0, 0, 0)), *grad_x.stride(),
        HAS_GY=grad_y is not None, HAS_GF=grad_final is not None, BT=BLOCK_T, BD=block_d, num_warps=num_warps,
    )
    return grad_x, grad_beta.sum(dim=(0, 2)), grad_h0
