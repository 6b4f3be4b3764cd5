"""The training loss of Eq. 5 (without the weight penalty, which is Adam's ``weight_decay``)."""

from __future__ import annotations

import torch

__all__ = ["hybrid_loss"]


def hybrid_loss(output: torch.Tensor, reference: torch.Tensor, coils: str = "single", reduction: str = "mean") -> torch.Tensor:
    """Eq. 5 without the weight penalty: MSE + MAE (per-pixel means).

    Single-coil compares magnitudes (the network outputs a magnitude image); multi-coil compares
    real and imaginary parts. ``reduction="none"`` returns one value per image ``(B,)``.
    """
    if coils == "single":
        d = output.abs() - reference.abs()
    else:
        d = torch.view_as_real(output - reference.to(output.dtype))
    d = d.reshape(d.shape[0], -1).float()
    per = (d * d).mean(dim=1) + d.abs().mean(dim=1)
    return per if reduction == "none" else per.mean()
