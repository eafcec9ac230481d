"""Building blocks shared by memory-zoo models: RMSNorm and rotary position embeddings.

This file travels with saved models as remote code (a sibling import of the modeling files), so it imports only torch.
"""

from __future__ import annotations

import torch
from torch import nn


class ZooRMSNorm(nn.Module):
    """RMSNorm computed in float32, weight applied in float32 before casting back (Meta Llama / lingua numerics).

    `y = (x * rsqrt(mean(x^2) + eps) * weight)` in float32, returned in the dtype of `x`.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        x = hidden_states.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def rotary_angles(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`cos`, `sin` of the rotary angles `position * theta ** (-2i / head_dim)`, float32, shape `[*positions, d/2]`.

    Computed for any position on the fly, so there is no table to outgrow.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device)[: head_dim // 2].float() / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return torch.cos(angles), torch.sin(angles)


def apply_interleaved_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the pairs `(x[..., 2i], x[..., 2i+1])` of `x [B, S, H, D]` by the angles (`cos`/`sin` `[B or 1, S, D/2]`).

    This is the Meta Llama "complex" layout (not Hugging Face's rotate-half), computed in float32.
    """
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


__all__ = ["ZooRMSNorm", "apply_interleaved_rotary", "rotary_angles"]
