"""The leaky average of Memory Mosaics: the causal leaky sum `y_t = exp(-decay_h) * y_{t-1} + x_t` per head, from an
initial state, accumulated in float32. This file travels with saved models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .zoo_kernels import dispatch


def leaky_average_reference(
    x: torch.Tensor, decay: torch.Tensor, initial_state: torch.Tensor | None = None, chunk_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal leaky sum `y_t = exp(-decay) * y_{t-1} + x_t` (`y_{-1} = initial_state`), the pure-torch reference.

    Chunked scan: inside chunks of `chunk_size` steps the sum is a small lower-triangular decay matrix (whose exponents
    are all <= 0, so it is stable), across chunks the state is carried by the recurrence. Memory is O(T), float32
    accumulation, and autograd gives exact gradients for every input.

    Args:
        x: `[batch, seq, heads, head_dim]`.
        decay: `[heads]`, the rate `beta >= 0` (the factor per step is `exp(-beta)`).
        initial_state: `[batch, heads, head_dim]` state before the first step (zeros if `None`).
        chunk_size: steps per chunk.

    Returns:
        `y` `[batch, seq, heads, head_dim]` in the dtype of `x`, and the final state `[batch, heads, head_dim]` in
        float32.
    """
    batch, length, heads, dim = x.shape
    decay = decay.float()
    state = x.new_zeros(batch, heads, dim, dtype=torch.float32) if initial_state is None else initial_state.float()
    if length == 0:
        return x, state
    if length == 1:  # a decoding step: the recurrence itself (what the scan below computes for one token)
        out = x[:, 0].float() + torch.exp(-decay)[None, :, None] * state
        return out.to(x.dtype)[:, None], out
    chunk = min(chunk_size, length)
    padded = -length % chunk
    values = F.pad(x.float(), (0, 0, 0, 0, 0, padded)).view(batch, -1, chunk, heads, dim)
    steps = torch.arange(chunk, device=x.device)
    lag = steps[:, None] - steps[None, :]
    within = torch.exp(-decay[:, None, None] * lag.clamp(min=0)) * (lag >= 0)  # [heads, chunk, chunk]
    local = torch.einsum("hij,bnjhd->bnihd", within, values)
    carry = torch.exp(-decay[None, :] * (steps[:, None] + 1))[None, :, :, None]  # [1, chunk, heads, 1]
    outputs = []
    # unbind, not local[:, index]: indexing once per chunk would make every chunk's backward zero-fill and add a
    # gradient the size of the whole sequence (quadratic in T); unbind's backward stacks the chunks once.
    for chunk_values in local.unbind(1):
        out = chunk_values + carry * state[:, None]
        outputs.append(out)
        state = out[:, -1]
    y = torch.cat(outputs, dim=1)[:, :length]
    return y.to(x.dtype), y[:, -1]


def leaky_average(x: torch.Tensor, decay: torch.Tensor, initial_state: torch.Tensor | None = None,
                  chunk_size: int = 64, kernel: tuple[str | None, str | None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`leaky_average_reference`, through the `leaky_average` Hub kernel where `kernel` (repo id, revision) is set and
    it loads and runs (the kernel scans without chunks; `chunk_size` only shapes the reference)."""
    return dispatch("leaky_average", kernel, x, lambda module: module.leaky_average(x, decay, initial_state),
                    lambda: leaky_average_reference(x, decay, initial_state, chunk_size))


__all__ = ["leaky_average", "leaky_average_reference"]
