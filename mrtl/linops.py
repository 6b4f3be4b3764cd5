"""Forward models of accelerated MRI as small linear operators (sigpy style).

Single-coil: ``y = A x = M F x`` (Eq. 1-2 of the paper); multi-coil: ``y = M F S x`` with the
coil sensitivity maps ``S`` (the forward model behind Eq. 12-14). ``F`` is the centred
orthonormal FFT :func:`mrtl.fft.fft2c`, ``M`` a boolean mask, applied as a diagonal matrix on
the full k-space grid (unsampled entries are zero). ``A^H y`` is the zero-filled
reconstruction ``x_u`` that the networks take as input (Eq. 3).

Shapes: images ``(B, H, W)`` (or ``(H, W)``), coil data ``(B, C, H, W)`` (or ``(C, H, W)``),
masks ``(H, W)`` or ``(B, H, W)`` (broadcast over coils), maps ``(C, H, W)`` or
``(B, C, H, W)``. Complex64; complex128 is accepted and kept.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._validate import as_tensor, check_complex, check_mask, check_tensor
from .fft import fft2c, ifft2c

__all__ = [
    "LinearOperator",
    "SingleCoilFourier",
    "MultiCoilFourier",
    "zero_filled",
    "coil_combine",
    "rss",
    "sense_expand",
]

Shape = tuple


def _fmt(shape: Sequence) -> str:
    return "(" + ", ".join("..." if s is None else str(s) for s in shape) + ")"


def _matches(shape: Sequence[int], pattern: Sequence) -> bool:
    """True if ``shape`` ends with ``pattern`` (None = any size; 1 in the pattern broadcasts)."""
    if len(shape) < len(pattern):
        return False
    tail = shape[len(shape) - len(pattern):]
    return all(p is None or p == s or p == 1 for s, p in zip(tail, pattern))


class LinearOperator:
    """A linear operator with known input and output shapes, its adjoint and normal operator.

    ``ishape``/``oshape`` give the trailing dimensions the operator acts on; inputs may carry
    extra leading batch dimensions, which pass through (``None`` in a shape means any size,
    1 broadcasts). Subclasses implement ``_apply`` and ``_apply_adjoint``; ``forward`` and
    ``adjoint`` check the input first.

    Args:
        ishape: input shape pattern.
        oshape: output shape pattern.
    """

    _in_name = "x"  # argument names used in error messages
    _out_name = "y"

    def __init__(self, ishape: Sequence, oshape: Sequence):
        self.ishape: Shape = tuple(ishape)
        self.oshape: Shape = tuple(oshape)

    # -- to implement -------------------------------------------------------------------
    def _apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- public -------------------------------------------------------------------------
    @staticmethod
    def _check(x, name: str, pattern: Shape) -> torch.Tensor:
        x = check_complex(x, name)
        if not _matches(tuple(x.shape), pattern):
            raise ValueError(f"{name}: expected shape (..., {_fmt(pattern)[1:]}, got {tuple(x.shape)}")
        return x

    def forward(self, x) -> torch.Tensor:
        """Apply the operator (``A x``). ``x`` must be complex, finite and match ``ishape``."""
        return self._apply(self._check(x, self._in_name, self.ishape))

    def adjoint(self, y) -> torch.Tensor:
        """Apply the adjoint (``A^H y``). ``y`` must be complex, finite and match ``oshape``."""
        return self._apply_adjoint(self._check(y, self._out_name, self.oshape))

    def normal(self, x) -> torch.Tensor:
        """``A^H A x``."""
        return self.adjoint(self.forward(x))

    def __call__(self, x) -> torch.Tensor:
        return self.forward(x)

    @property
    def H(self) -> "LinearOperator":
        """The adjoint operator (its own ``.H`` is this operator)."""
        return _Adjoint(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {_fmt(self.ishape)} -> {_fmt(self.oshape)}>"


class _Adjoint(LinearOperator):
    _in_name = "y"
    _out_name = "x"

    def __init__(self, op: LinearOperator):
        super().__init__(op.oshape, op.ishape)
        self.op = op

    def _apply(self, x):
        return self.op._apply_adjoint(x)

    def _apply_adjoint(self, y):
        return self.op._apply(y)

    @property
    def H(self) -> LinearOperator:
        return self.op

    def __repr__(self) -> str:
        return f"<{type(self.op).__name__}.H: {_fmt(self.ishape)} -> {_fmt(self.oshape)}>"


def _as_mask(mask, name: str = "mask") -> torch.Tensor:
    mask = check_mask(mask, name)
    if mask.ndim not in (2, 3):
        raise ValueError(f"{name}: expected (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    return mask


def _promote(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a`` cast to the common complex dtype of ``a`` and ``b`` (complex64 or complex128)."""
    dt = torch.promote_types(a.dtype, b.dtype)
    if not dt.is_complex:
        dt = torch.complex128 if dt == torch.float64 else torch.complex64
    return a if a.dtype == dt else a.to(dt)


class SingleCoilFourier(LinearOperator):
    """Single-coil undersampled Fourier operator ``A = M F`` (Eq. 1-2).

    Args:
        mask: ``(H, W)`` or ``(B, H, W)`` boolean (or 0/1) mask, centred like ``fft2c``.

    Shapes: ``x (..., H, W)`` or, with a batched mask, ``(..., B, H, W)`` -> same shape k-space
    (zeros where not sampled).
    """

    def __init__(self, mask):
        self.mask = _as_mask(mask)
        super().__init__(tuple(self.mask.shape), tuple(self.mask.shape))

    def _m(self, t: torch.Tensor) -> torch.Tensor:
        return self.mask.to(t.device)

    def _apply(self, x):
        k = fft2c(x)
        return k * self._m(k)

    def _apply_adjoint(self, y):
        return ifft2c(y * self._m(y))


class MultiCoilFourier(LinearOperator):
    """Multi-coil undersampled Fourier operator ``A = M F S`` (the SENSE model, Eq. 12-14).

    Args:
        mask: ``(H, W)`` or ``(B, H, W)`` mask; a batched mask is applied to ``(B, C, H, W)``
            data as ``mask[:, None]``.
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` complex coil sensitivities.

    Shapes: ``x (..., [B,] H, W)`` image -> ``(..., [B,] C, H, W)`` multi-coil k-space.
    """

    def __init__(self, mask, maps):
        mask = _as_mask(mask)
        maps = check_complex(maps, "maps", ndim=(3, 4))
        if tuple(maps.shape[-2:]) != tuple(mask.shape[-2:]):
            raise ValueError(
                f"maps: image size {tuple(maps.shape[-2:])} differs from the mask's {tuple(mask.shape[-2:])}"
            )
        if mask.ndim == 3 and maps.ndim == 4 and mask.shape[0] not in (1, maps.shape[0]) and maps.shape[0] != 1:
            raise ValueError(
                f"mask: batch size {mask.shape[0]} does not broadcast against maps of shape {tuple(maps.shape)}"
            )
        self.mask = mask
        self.maps = maps
        h, w = mask.shape[-2:]
        c = maps.shape[-3]
        batch = None
        if mask.ndim == 3 and mask.shape[0] != 1:
            batch = mask.shape[0]
        if maps.ndim == 4 and maps.shape[0] != 1:
            batch = maps.shape[0]
        ishape = (h, w) if batch is None else (batch, h, w)
        oshape = (c, h, w) if batch is None else (batch, c, h, w)
        super().__init__(ishape, oshape)

    def _mask_for(self, t: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(t.device)
        return m[:, None] if m.ndim == 3 else m

    def _apply(self, x):
        k = fft2c(sense_expand(x, self.maps))
        return k * self._mask_for(k)

    def _apply_adjoint(self, y):
        return coil_combine(ifft2c(y * self._mask_for(y)), self.maps)


def sense_expand(image, maps) -> torch.Tensor:
    """Coil images ``S x``: the image times each coil sensitivity.

    Args:
        image: ``(..., H, W)`` complex image.
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` complex maps.

    Returns:
        ``(..., C, H, W)`` coil images.
    """
    image = check_complex(image, "image", min_ndim=2)
    maps = check_complex(maps, "maps", ndim=(3, 4))
    if tuple(image.shape[-2:]) != tuple(maps.shape[-2:]):
        raise ValueError(f"maps: image size {tuple(maps.shape[-2:])} differs from the image's {tuple(image.shape[-2:])}")
    x = image.unsqueeze(-3)
    try:
        torch.broadcast_shapes(tuple(x.shape), tuple(maps.shape))
    except RuntimeError:
        raise ValueError(
            f"maps: shape {tuple(maps.shape)} does not broadcast against image of shape {tuple(image.shape)} "
            "(expected image (B, H, W) with maps (B, C, H, W) or (C, H, W))"
        ) from None
    maps = _promote(maps.to(image.device), image)
    return _promote(x, maps) * maps


def coil_combine(coil_images, maps) -> torch.Tensor:
    """Coil combination with sensitivities, ``S^H x = sum_c conj(S_c) x_c`` (the adjoint of
    :func:`sense_expand`; for maps normalised to ``sum_c |S_c|^2 = 1`` it is the optimal
    combination).

    Args:
        coil_images: ``(..., C, H, W)`` complex coil images.
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` complex maps.

    Returns:
        ``(..., H, W)`` complex image.
    """
    coil_images = check_complex(coil_images, "coil_images", min_ndim=3)
    maps = check_complex(maps, "maps", ndim=(3, 4))
    try:
        torch.broadcast_shapes(tuple(coil_images.shape), tuple(maps.shape))
    except RuntimeError:
        raise ValueError(
            f"maps: shape {tuple(maps.shape)} does not broadcast against coil_images of shape {tuple(coil_images.shape)}"
        ) from None
    if tuple(coil_images.shape[-3:]) != tuple(maps.shape[-3:]):
        raise ValueError(
            f"maps: (C, H, W) = {tuple(maps.shape[-3:])} differs from coil_images' {tuple(coil_images.shape[-3:])}"
        )
    maps = _promote(maps.to(coil_images.device), coil_images)
    return (maps.conj() * _promote(coil_images, maps)).sum(dim=-3)


def rss(coil_images, dim: int = -3) -> torch.Tensor:
    """Root-sum-of-squares coil combination ``sqrt(sum_c |x_c|^2)``.

    Args:
        coil_images: real or complex tensor with the coils along ``dim``.
        dim: the coil dimension (default -3, for ``(..., C, H, W)``).

    Returns:
        Real tensor without the coil dimension.
    """
    coil_images = check_tensor(coil_images, "coil_images", min_ndim=1)
    if coil_images.dtype == torch.bool or not (coil_images.is_complex() or coil_images.is_floating_point()):
        raise TypeError(f"coil_images: expected a floating or complex tensor, got dtype {coil_images.dtype}")
    if not -coil_images.ndim <= dim < coil_images.ndim:
        raise ValueError(f"dim: expected a dimension of a {coil_images.ndim}-D tensor, got {dim}")
    return torch.sqrt((coil_images.abs() ** 2).sum(dim=dim))


def zero_filled(kspace, mask=None, maps=None) -> torch.Tensor:
    """Zero-filled reconstruction ``x_u = A^H y`` (Eq. 3).

    Args:
        kspace: ``(..., H, W)`` single-coil or ``(..., C, H, W)`` multi-coil complex k-space
            (unsampled entries zero, or masked here).
        mask: optional ``(H, W)`` / ``(B, H, W)`` mask applied first (broadcast over coils).
        maps: optional coil maps; with maps the result is the coil-combined image
            ``S^H F^H M y``; without maps every slice or coil is inverse transformed
            (``F^H M y``, coil images for multi-coil data). A ``(B, H, W)`` mask on 4-D
            data is broadcast over coils as ``mask[:, None]``.

    Returns:
        Complex image(s): ``(..., H, W)`` with maps, else the shape of ``kspace``.
    """
    kspace = check_complex(kspace, "kspace", min_ndim=2)
    if mask is not None:
        mask = check_mask(mask, "mask")
        if mask.ndim == 3 and kspace.ndim >= 4:  # (B, H, W) mask on (B, C, H, W) data
            mask = mask[:, None]
        check_mask(mask, "mask", shape=tuple(kspace.shape))
        kspace = kspace * mask.to(kspace.device)
    img = ifft2c(kspace)
    if maps is None:
        return img
    if kspace.ndim < 3:
        raise ValueError(f"kspace: expected multi-coil data (..., C, H, W) when maps are given, got {tuple(kspace.shape)}")
    return coil_combine(img, maps)
