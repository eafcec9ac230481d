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


class _TrilMatmul(torch.autograd.Function):
    """`tril(rows, offset) @ inputs` whose backward keeps `rows` itself, not its masked copy.

    Autograd of `matmul(tril(rows), inputs)` saves the masked copy for the backward: one more `[H, T, T]` matrix per
    block alive from the forward to the backward (64 MiB at T = 2048 over a 4-block model). Here the masked copy only
    exists while one product runs, in the forward and again in the backward. Values and gradients are the
    reference's: the same products in the same order.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, inputs: torch.Tensor, offset: int) -> torch.Tensor:
        ctx.save_for_backward(rows, inputs)
        ctx.offset = offset
        return torch.matmul(torch.tril(rows, diagonal=offset), inputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        rows, inputs = ctx.saved_tensors
        grad_rows = grad_inputs = None
        if ctx.needs_input_grad[1]:
            grad_inputs = torch.matmul(torch.tril(rows, diagonal=ctx.offset).transpose(-1, -2), grad)
            grad_inputs = grad_inputs.sum_to_size(inputs.shape)
        if ctx.needs_input_grad[0]:
            # broadcast batch dimensions of `inputs` are summed away, as autograd does for matmul
            grad_rows = torch.matmul(grad, inputs.transpose(-1, -2)).sum_to_size(rows.shape)
            grad_rows = grad_rows.tril_(ctx.offset)  # in place: the product is ours
        return grad_rows, grad_inputs, None


def tril_matmul(rows: torch.Tensor, inputs: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """`torch.matmul(torch.tril(rows, diagonal=offset), inputs)` (broadcasting as matmul does), without keeping the
    masked copy of `rows` for the backward. Under `torch.no_grad` it is the plain product."""
    if torch.is_grad_enabled() and (rows.requires_grad or inputs.requires_grad):
        return _TrilMatmul.apply(rows, inputs, offset)
    return torch.matmul(torch.tril(rows, diagonal=offset), inputs)


def masked_mixing_torch(rows: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None,
                        offset: int = 0) -> torch.Tensor:
    """The pure-torch path the models run: `masked_mixing_reference`'s values and gradients, with the memory of the
    backward of the research code (no masked copy of the mixing matrices kept; see `tril_matmul`)."""
    out = tril_matmul(rows, inputs, offset)
    return out + bias[..., None] if bias is not None else out


def masked_mixing(rows: torch.Tensor, inputs: torch.Tensor, bias: torch.Tensor | None = None, offset: int = 0,
                  kernel: tuple[str | None, str | None] | None = None) -> torch.Tensor:
    """`masked_mixing_reference`, through the `masked_mixing` Hub kernel where `kernel` (repo id, revision) is set and
    it loads and runs, else through `masked_mixing_torch`."""
    return dispatch("masked_mixing", kernel, inputs, lambda module: module.masked_mixing(rows, inputs, bias, offset),
                    lambda: masked_mixing_torch(rows, inputs, bias, offset))


__all__ = ["masked_mixing", "masked_mixing_reference", "masked_mixing_torch", "tril_matmul"]
