"""Masked mixing: `tril(rows, diagonal=offset) @ inputs (+ bias)`, the token mixing of the Masked Mixer.

`rows [H, Tq, Tk]` are the mixing-matrix rows of the `Tq` newest positions (`offset` = how many positions came before
them), `inputs [B, H, Tk, d]` all positions so far, `bias [H, Tq]`. This file travels with saved models.
"""

from __future__ import annotations

import torch

from .zoo_kernels import dispatch


def masked_mixing_reference(rows: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None,
                            offset: int = 0) -> torch.Tensor:
    """The pure-torch reference: a dense matmul with the masked half zeroed (twice the FLOPs of the kernel)."""
    out = torch.matmul(torch.tril(rows, diagonal=offset), inputs)
    return out + bias[..., None] if bias is not None else out


def masked_mixing(rows: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None, offset: int = 0,
                  kernel: tuple[str | None, str | None] | None = None) -> torch.Tensor:
    """`masked_mixing_reference`, through the `masked_mixing` Hub kernel where `kernel` (repo id, revision) is set and
    it loads and runs."""
    return dispatch("masked_mixing", kernel, inputs, lambda module: module.masked_mixing(rows, inputs, bias, offset),
                    lambda: masked_mixing_reference(rows, inputs, bias, offset))


__all__ = ["masked_mixing", "masked_mixing_reference"]
