"""Forward models of accelerated MRI as small linear operators (sigpy style).

Single-coil: ``y = A x = M F x`` (Eq. 1-2 of the paper); multi-coil: ``y = M F S x`` with the
coil sensitivity maps ``S`` (the forward model behind Eq. 12-14). ``F`` is the centred
orthonormal FFT :func:`mrtl.fft.fft2c`, ``M`` a boolean mask, applied as a diagonal matrix on
the full k-space grid (unsampled entries are zero). ``A^H y`` is the zero-filled
reconstruction ``x_u`` that the networks take as input (Eq. 3).

Shapes: images ``(B, H, W)`` (or ``(H, W)``), coil data ``(B, C, H, W)`` (or ``(C, H, W)``),
masks ``(H, W)`` or ``(B, H, W)`` (broadcast over coils), maps ``(C, H, W)`` or
``(B, C, H, W)``. Complex64; complex128 is accepted and kept.

Operators compose (``A @ B``) and have an adjoint ``A.H`` and a normal operator ``A.N = A^H A``;
``A.prox_l2(z, y, lam)`` of the Fourier operators is the data-consistency step of Eq. 7-9, used by
the networks' DC layers (:class:`mrtl.models.DataConsistency`), the iterative reconstructions
(:mod:`mrtl.recon`) and the data pipeline (:class:`mrtl.data.UndersampledDataset`). The
wavelet transform :class:`mrtl.wavelets.WaveletTransform` is an operator of the same kind. The
networks and solvers use the operators' ``validate=False`` fast path on their own iterates.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._validate import check_complex, check_float, check_mask, check_tensor
from .fft import fft2c, ifft2c

__all__ = [
    "LinearOperator",
    "SingleCoilFourier",
    "MultiCoilFourier",
    "Sense",
    "Spirit",
    "spirit_apply",
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

    def _prox_l2(self, z: torch.Tensor, y: torch.Tensor, lam) -> torch.Tensor:
        raise NotImplementedError(
            f"prox_l2: {type(self).__name__} has no closed-form proximal operator "
            "(it is defined for the undersampled Fourier operators)"
        )

    # -- public -------------------------------------------------------------------------
    @staticmethod
    def _check(x, name: str, pattern: Shape) -> torch.Tensor:
        x = check_complex(x, name)
        if not _matches(tuple(x.shape), pattern):
            raise ValueError(f"{name}: expected shape (..., {_fmt(pattern)[1:]}, got {tuple(x.shape)}")
        return x

    def forward(self, x, *, validate: bool = True) -> torch.Tensor:
        """Apply the operator (``A x``).

        Args:
            x: complex, finite input matching ``ishape``.
            validate: check ``x`` first; ``False`` is the fast path for a solver's or a
                network's own iterates (no checks, no device synchronisation).
        """
        return self._apply(self._check(x, self._in_name, self.ishape) if validate else x)

    def adjoint(self, y, *, validate: bool = True) -> torch.Tensor:
        """Apply the adjoint (``A^H y``); ``y`` must be complex, finite and match ``oshape``
        (checked unless ``validate=False``)."""
        return self._apply_adjoint(self._check(y, self._out_name, self.oshape) if validate else y)

    def normal(self, x, *, validate: bool = True) -> torch.Tensor:
        """``A^H A x`` (the normal operator applied to ``x``)."""
        return self.N.forward(x, validate=validate)

    def prox_l2(self, z, y, lam=None, *, validate: bool = True) -> torch.Tensor:
        """The data-consistency step (Eq. 7): ``argmin_x ||x - z||^2 + lam ||A x - y||^2``.

        For the undersampled Fourier operators this has a closed form (Eq. 8-9): sampled
        k-space becomes ``(F z + lam y) / (1 + lam)``, unsampled k-space is kept; ``lam`` None
        is lambda = infinity, the hard projection that replaces sampled k-space by ``y``.

        Args:
            z: the point to project, matching ``ishape``.
            y: measured data, matching ``oshape`` (zeros off the mask).
            lam: None (hard), a float > 0 or a 0-dim real tensor (e.g. a learned lambda).
            validate: check the arguments (``False``: fast path, no checks).

        Returns:
            Tensor shaped like ``z``.
        """
        if validate:
            z = self._check(z, "z", self.ishape)
            y = self._check(y, "y", self.oshape)
            if lam is not None and not isinstance(lam, torch.Tensor):
                lam = check_float(lam, "lam", low=0.0, low_open=True)
        return self._prox_l2(z, y, lam)

    def __call__(self, x) -> torch.Tensor:
        return self.forward(x)

    def __matmul__(self, other):
        """Composition ``(A @ B) x = A (B x)``."""
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _Compose(self, other)

    @property
    def H(self) -> "LinearOperator":
        """The adjoint operator (its own ``.H`` is this operator)."""
        return _Adjoint(self)

    @property
    def N(self) -> "LinearOperator":
        """The normal operator ``A^H A`` (self-adjoint)."""
        return _Normal(self)

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


class _Normal(LinearOperator):
    def __init__(self, op: LinearOperator):
        super().__init__(op.ishape, op.ishape)
        self.op = op

    def _apply(self, x):
        return self.op._apply_adjoint(self.op._apply(x))

    _apply_adjoint = _apply

    @property
    def H(self) -> LinearOperator:
        return self

    def __repr__(self) -> str:
        return f"<{type(self.op).__name__}.N: {_fmt(self.ishape)} -> {_fmt(self.oshape)}>"


class _Compose(LinearOperator):
    """``A @ B``: ``x -> A (B x)``, adjoint ``B^H A^H``."""

    def __init__(self, a: LinearOperator, b: LinearOperator):
        ai, bo = tuple(a.ishape), tuple(b.oshape)
        n = min(len(ai), len(bo))
        if any(p is not None and q is not None and 1 not in (p, q) and p != q for p, q in zip(ai[len(ai) - n:], bo[len(bo) - n:])):
            raise ValueError(f"A @ B: the output shape {_fmt(bo)} of B does not match the input shape {_fmt(ai)} of A")
        super().__init__(b.ishape, a.oshape)
        self.a, self.b = a, b
        self._in_name, self._out_name = b._in_name, a._out_name

    def _apply(self, x):
        return self.a._apply(self.b._apply(x))

    def _apply_adjoint(self, y):
        return self.b._apply_adjoint(self.a._apply_adjoint(y))

    def __repr__(self) -> str:
        return f"({self.a!r} @ {self.b!r})"


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


def _expand(image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Unchecked ``S x`` (image ``(..., H, W)`` -> coil images ``(..., C, H, W)``)."""
    maps = _promote(maps.to(image.device), image)
    return _promote(image.unsqueeze(-3), maps) * maps


def _combine(coil_images: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
    """Unchecked ``S^H x = sum_c conj(S_c) x_c`` over dim -3."""
    maps = _promote(maps.to(coil_images.device), coil_images)
    return (maps.conj() * _promote(coil_images, maps)).sum(dim=-3)


def _dc_kspace(k: torch.Tensor, y: torch.Tensor, m: torch.Tensor, lam) -> torch.Tensor:
    """Eq. 8-9 in k-space: sampled entries of ``k`` become ``y`` (lam None) or
    ``(k + lam y) / (1 + lam)``; the others are kept."""
    if lam is None:
        return torch.where(m, y.to(k.dtype), k)
    return torch.where(m, (k + lam * y.to(k.dtype)) / (1 + lam), k)


class SingleCoilFourier(LinearOperator):
    """Single-coil undersampled Fourier operator ``A = M F`` (Eq. 1-2).

    ``prox_l2(z, y, lam)`` is the data-consistency layer f_DC (Eq. 7-9), see
    :meth:`LinearOperator.prox_l2`.

    Args:
        mask: ``(H, W)`` or ``(B, H, W)`` boolean (or 0/1) mask, centred like ``fft2c``.
        validate: check the mask (``False``: the caller guarantees a boolean ``(H, W)`` /
            ``(B, H, W)`` mask, as inside the networks and solvers).

    Shapes: ``x (..., H, W)`` or, with a batched mask, ``(..., B, H, W)`` -> same shape k-space
    (zeros where not sampled).
    """

    def __init__(self, mask, validate: bool = True):
        self.mask = _as_mask(mask) if validate else mask
        super().__init__(tuple(self.mask.shape), tuple(self.mask.shape))

    def _m(self, t: torch.Tensor) -> torch.Tensor:
        return self.mask.to(t.device)

    def _apply(self, x):
        k = fft2c(x)
        return k * self._m(k)

    def _apply_adjoint(self, y):
        return ifft2c(y * self._m(y))

    def _prox_l2(self, z, y, lam):
        k = fft2c(z)
        return ifft2c(_dc_kspace(k, y, self._m(k), lam))


class Sense(LinearOperator):
    """Coil-sensitivity operator ``S``: image ``(..., H, W)`` -> coil images ``(..., C, H, W)``
    (``S^H`` is the coil combination). :func:`sense_expand` and :func:`coil_combine` apply it.

    Args:
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` complex coil sensitivities.
        validate: check the maps.
    """

    _out_name = "coil_images"

    def __init__(self, maps, validate: bool = True):
        self.maps = check_complex(maps, "maps", ndim=(3, 4)) if validate else maps
        shape = tuple(self.maps.shape)
        if len(shape) == 4 and shape[0] == 1:
            shape = shape[1:]
        super().__init__(shape[:-3] + shape[-2:], shape)

    def _apply(self, x):
        return _expand(x, self.maps)

    def _apply_adjoint(self, y):
        return _combine(y, self.maps)


class MultiCoilFourier(LinearOperator):
    """Multi-coil undersampled Fourier operator ``A = M F S`` (the SENSE model, Eq. 12-14), or
    ``A = M F`` on coil images when ``maps`` is None.

    ``prox_l2(z, y, lam)`` is the paper's multi-coil data consistency: DC (Eq. 7-9) is done
    on every coil's k-space. Without maps this is the exact proximal step of ``M F``; with maps
    ``z`` is an image and the result is ``S^H f_DC(S z)`` (expand to coils, DC, combine), as
    ``mrtl.models.DataConsistency`` with maps does; it is the exact minimiser only when ``S``
    is unitary.

    Args:
        mask: ``(H, W)`` or ``(B, H, W)`` mask; a batched mask is applied to ``(B, C, H, W)``
            data as ``mask[:, None]``.
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` complex coil sensitivities, or None (coil images
            in, coil k-space out).
        validate: check mask and maps (``False``: the caller guarantees them).

    Shapes: ``x (..., [B,] H, W)`` image (coil images ``(..., [B,] C, H, W)`` without maps) ->
    ``(..., [B,] C, H, W)`` multi-coil k-space.
    """

    def __init__(self, mask, maps=None, validate: bool = True):
        if validate:
            mask = _as_mask(mask)
            if maps is not None:
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
        self.sense = None if maps is None else Sense(maps, validate=False)
        h, w = mask.shape[-2:]
        c = None if maps is None else maps.shape[-3]
        batch = None
        if mask.ndim == 3 and mask.shape[0] != 1:
            batch = mask.shape[0]
        if maps is not None and maps.ndim == 4 and maps.shape[0] != 1:
            batch = maps.shape[0]
        ishape = (h, w) if maps is not None else (c, h, w)
        oshape = (c, h, w)
        if batch is not None:
            ishape, oshape = (batch,) + ishape, (batch,) + oshape
        super().__init__(ishape, oshape)

    def _mask_for(self, t: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(t.device)
        return m[:, None] if m.ndim == 3 else m

    def _apply(self, x):
        k = fft2c(x if self.maps is None else _expand(x, self.maps))
        return k * self._mask_for(k)

    def _apply_adjoint(self, y):
        x = ifft2c(y * self._mask_for(y))
        return x if self.maps is None else _combine(x, self.maps)

    def _prox_l2(self, z, y, lam):
        k = fft2c(z if self.maps is None else _expand(z, self.maps))
        x = ifft2c(_dc_kspace(k, y, self._mask_for(k), lam))
        return x if self.maps is None else _combine(x, self.maps)


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
    try:
        torch.broadcast_shapes(tuple(image.unsqueeze(-3).shape), tuple(maps.shape))
    except RuntimeError:
        raise ValueError(
            f"maps: shape {tuple(maps.shape)} does not broadcast against image of shape {tuple(image.shape)} "
            "(expected image (B, H, W) with maps (B, C, H, W) or (C, H, W))"
        ) from None
    return _expand(image, maps)


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
    return _combine(coil_images, maps)


def spirit_apply(coil_images: torch.Tensor, G_img: torch.Tensor) -> torch.Tensor:
    """The SPIRiT operator G in image space (f_CC, Eq. 13): ``(G x)[c] = sum_j G_img[c, j] x[j]``
    per pixel, which equals ``F^-1 G F x`` for the k-space convolution G.

    Args:
        coil_images: ``(..., C, H, W)`` complex coil images.
        G_img: ``(C, C, H, W)`` or ``(B, C, C, H, W)`` from
            :meth:`mrtl.recon.SpiritKernel.image_operator` (cast to the images' dtype).

    Returns:
        ``(..., C, H, W)``.
    """
    if G_img.shape[-3] != coil_images.shape[-3]:
        raise ValueError(
            f"G_img: built for {G_img.shape[-3]} coils but coil_images has {coil_images.shape[-3]} (shape {tuple(coil_images.shape)})"
        )
    G_img = G_img.to(coil_images.dtype)
    # sum over input coils, one multiply-accumulate per input coil: no (..., C, C, H, W)
    # temporary, G_img is read once (see benchmarks/bench_ops.py)
    out = G_img[..., :, 0, :, :] * coil_images[..., 0:1, :, :]
    for j in range(1, G_img.shape[-3]):
        out = out.addcmul_(G_img[..., :, j, :, :], coil_images[..., j : j + 1, :, :])
    return out


class Spirit(LinearOperator):
    """The SPIRiT calibration operator ``G`` as per-pixel coil mixing of coil images (Eq. 13).

    Args:
        G_img: ``(C, C, H, W)`` or ``(B, C, C, H, W)`` image-space operator.
    """

    _in_name = "coil_images"
    _out_name = "coil_images"

    def __init__(self, G_img, validate: bool = True):
        if validate:
            G_img = check_complex(G_img, "G_img", ndim=(4, 5))
            if G_img.shape[-4] != G_img.shape[-3]:
                raise ValueError(f"G_img: expected (C, C, H, W) or (B, C, C, H, W), got shape {tuple(G_img.shape)}")
        self.G_img = G_img
        shape = tuple(G_img.shape[:-4]) + tuple(G_img.shape[-3:])
        super().__init__(shape, shape)

    def _apply(self, x):
        return spirit_apply(x, self.G_img)

    def _apply_adjoint(self, y):
        return spirit_apply(y, self.G_img.transpose(-4, -3).conj())


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
