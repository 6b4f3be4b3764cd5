"""The training loss of Eq. 5 (without the weight penalty, which is Adam's ``weight_decay``)."""

from __future__ import annotations

import torch

from .._validate import check_choice

__all__ = ["hybrid_loss"]


def hybrid_loss(output: torch.Tensor, reference: torch.Tensor, coils: str = "single", reduction: str = "mean") -> torch.Tensor:
    """Eq. 5 without the weight penalty: MSE + MAE (per-pixel means).

    Args:
        output: the network's images, ``(B, ...)`` (complex or real).
        reference: the fully sampled images, the same shape.
        coils: ``"single"`` compares magnitudes (the paper's single-coil networks output a
            magnitude image); ``"multi"`` compares real and imaginary parts.
        reduction: ``"mean"`` (over the batch) or ``"none"``.

    Returns:
        A scalar (``"mean"``) or one value per image ``(B,)`` (``"none"``), float32.
    """
    check_choice(coils, "coils", ("single", "multi"))
    check_choice(reduction, "reduction", ("mean", "none"))
    if coils == "single":
        d = output.abs() - reference.abs()
    else:
        d = torch.view_as_real(output - reference.to(output.dtype))
    d = d.reshape(d.shape[0], -1).float()
    per = (d * d).mean(dim=1) + d.abs().mean(dim=1)
    return per if reduction == "none" else per.mean()
