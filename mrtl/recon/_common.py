"""Helpers shared by the reconstructions: argument checks, wavelets with cycle spinning."""

from __future__ import annotations

import torch

from .._validate import check_complex, check_mask

__all__ = ["prepare_kspace_mask", "ShiftedWavelet", "soft_threshold"]


def prepare_kspace_mask(kspace, mask, coil_dim: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate k-space and mask and bring them to batched form.

    Args:
        kspace: ``(B, H, W)`` or ``(H, W)`` (single-coil) or ``(B, C, H, W)`` / ``(C, H, W)``
            (multi-coil, ``coil_dim=True``) complex k-space, centred like ``fft2c``.
        mask: ``(H, W)`` or ``(B, H, W)`` sampling mask.
        coil_dim: whether the data carry a coil axis.

    Returns:
        ``(kspace, mask, batched)``: k-space with a batch axis, a boolean mask broadcastable
        against it (``(B or 1, [1,] H, W)``), and whether the input had a batch axis.
    """
    nd = (3, 4) if coil_dim else (2, 3)
    kspace = check_complex(kspace, "kspace", ndim=nd)
    batched = kspace.ndim == nd[1]
    if not batched:
        kspace = kspace[None]
    if kspace.dtype not in (torch.complex64, torch.complex128):
        kspace = kspace.to(torch.complex64)
    mask = check_mask(mask, "mask")
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask: expected (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise ValueError(
            f"mask: k-space size {tuple(mask.shape[-2:])} differs from the data's {tuple(kspace.shape[-2:])}"
        )
    if mask.ndim == 3 and mask.shape[0] not in (1, kspace.shape[0]):
        raise ValueError(
            f"mask: batch size {mask.shape[0]} does not match the k-space batch size {kspace.shape[0]}"
        )
    if mask.ndim == 3:
        flat = mask.reshape(mask.shape[0], -1)
        if not bool(flat.any(dim=1).all()):
            raise ValueError("mask: at least one mask in the batch samples nothing (all zero)")
    mask = mask.to(kspace.device)
    mask = mask if mask.ndim == 3 else mask[None]
    if coil_dim:
        mask = mask[:, None]
    return kspace, mask, batched


def soft_threshold(c: torch.Tensor, thresh: torch.Tensor | float, joint_dim: int | None = None) -> torch.Tensor:
    """Complex soft-thresholding ``c * max(|c| - t, 0) / |c|`` (the prox of ``t * ||c||_1``).

    With ``joint_dim``, the magnitude is the L2 norm over that axis (joint sparsity, as in
    Lustig's POCS SPIRiT across coils).
    """
    mag = c.abs()
    if joint_dim is not None:
        mag = torch.sqrt((mag * mag).sum(dim=joint_dim, keepdim=True))
    scale = torch.clamp(mag - thresh, min=0) / torch.clamp(mag, min=torch.finfo(mag.dtype).tiny)
    return c * scale


class ShiftedWavelet:
    """Orthonormal wavelet transform ``Psi_s x = W(roll(x, s))`` with an optional cyclic shift.

    Cycle spinning (BART's random shifts) draws a new ``s`` every iteration; a periodised
    wavelet is invariant to shifts by multiples of ``2**level``, so shifts are drawn from
    ``[0, 2**level)`` on each axis. ``Psi_s`` stays orthonormal, so ``Psi_s^H = Psi_s^-1``.
    """

    def __init__(self, shape, wavelet: str, level: int | None, device, seed: int):
        from ..wavelets import WaveletTransform

        self.wt = WaveletTransform(tuple(shape), wavelet=wavelet, level=level)
        lev = getattr(self.wt, "level", None)
        if lev is None:
            import pywt

            lev = pywt.dwt_max_level(min(shape), pywt.Wavelet(wavelet).dec_len)
        self.level = int(lev)
        self.period = 2 ** self.level
        self.shift = (0, 0)
        self.gen = torch.Generator().manual_seed(int(seed))

    def draw(self) -> None:
        s = torch.randint(0, self.period, (2,), generator=self.gen)
        self.shift = (int(s[0]), int(s[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The shift is folded into the level-1 analysis matrices: no roll copies.
        return self.wt._forward(x, self.shift)

    def adjoint(self, c: torch.Tensor) -> torch.Tensor:
        return self.wt._inverse(c, self.shift)


def check_level(shape, wavelet: str, level: int | None) -> None:
    """Raise ``ValueError`` unless ``shape`` is divisible by ``2**level``."""
    if level is None:
        return
    p = 2 ** int(level)
    if shape[-1] % p or shape[-2] % p:
        raise ValueError(f"level: the image size {tuple(shape[-2:])} must be divisible by 2**level = {p}")


def finite_or_raise(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
        raise FloatingPointError(f"{what}: the iteration diverged (NaN/Inf); please report this with the inputs")

