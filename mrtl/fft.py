"""Centered, orthonormal 2D Fourier transforms over the last two axes.

``fft2c(x) = fftshift(fft2(ifftshift(x), norm="ortho"))``: the DC component sits at index
``(H // 2, W // 2)`` in both image and k-space, exactly as in ``sigpy.fft(..., center=True)``
and as in fastMRI. Both transforms are unitary, so ``ifft2c(fft2c(x)) == x`` and
``||fft2c(x)|| == ||x||``. This is the operator F of the paper (Eq. 1-3, 7-9).
"""

from __future__ import annotations

import torch

from ._validate import as_tensor

__all__ = ["fft2c", "ifft2c"]

_DIMS = (-2, -1)


def _prep(x, name: str) -> torch.Tensor:
    x = as_tensor(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name}: expected at least 2 dimensions (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_complex():
        if not x.is_floating_point():
            raise TypeError(f"{name}: expected a complex or floating tensor, got dtype {x.dtype}")
        x = x.to(torch.complex128 if x.dtype == torch.float64 else torch.complex64)
    return x


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2D FFT over the last two axes (image -> k-space).

    Args:
        x: ``(..., H, W)`` complex (or real, promoted to complex) tensor or numpy array.

    Returns:
        ``(..., H, W)`` complex tensor, DC at ``(H // 2, W // 2)``.
    """
    x = _prep(x, "x")
    x = torch.fft.ifftshift(x, dim=_DIMS)
    x = torch.fft.fft2(x, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(x, dim=_DIMS)


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    """Centered orthonormal 2D inverse FFT over the last two axes (k-space -> image).

    Args:
        k: ``(..., H, W)`` complex tensor or numpy array, DC at ``(H // 2, W // 2)``.

    Returns:
        ``(..., H, W)`` complex tensor.
    """
    k = _prep(k, "k")
    k = torch.fft.ifftshift(k, dim=_DIMS)
    k = torch.fft.ifft2(k, dim=_DIMS, norm="ortho")
    return torch.fft.fftshift(k, dim=_DIMS)
