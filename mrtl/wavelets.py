"""Orthonormal 2D discrete wavelet transforms (Daubechies and other orthogonal wavelets) in torch.

This is the sparsifying transform Psi of the L1-wavelet compressed-sensing baseline: the
paper's CS reconstruction solves Eq. 2 with ``R(x) = lambda ||Psi x||_1`` (Daubechies-4
wavelets), and L1-SPIRiT (Eq. 3) uses the same penalty. The transform is
the periodized ("periodization" mode) fast wavelet transform, which for image sizes divisible by
``2**level`` is an orthogonal matrix: ``W^T W = I``, so the adjoint is the inverse.

Conventions follow PyWavelets exactly, so that results can be checked against it:

- filters are ``pywt.Wavelet(name).dec_lo / dec_hi`` (analysis) and ``rec_lo / rec_hi``
  (synthesis); any orthogonal discrete pywt wavelet is accepted (``db1``..``db38``, ``sym*``,
  ``coif*``, ``haar``), the paper's baseline uses ``db4``;
- one analysis step along an axis of length N gives, for ``o = 0 .. N/2 - 1``,
  ``a[o] = sum_j dec_lo[j] x[(2 o + F/2 - j) mod N]`` (F = filter length), the same for
  ``dec_hi``; this equals ``pywt.dwt(x, w, mode="periodization")``;
- :func:`wavedec2` returns pywt's list ``[cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]``
  where ``cH`` is detail along H (axis -2) and approximation along W (axis -1), ``cV`` the
  reverse and ``cD`` detail along both;
- :class:`WaveletTransform` packs the coefficients into one ``(..., H, W)`` array laid out like
  ``pywt.coeffs_to_array``: ``cA_n`` top left, and at each level of size ``(h, w)``: ``cV``
  at ``[:h, w:2w]``, ``cH`` at ``[h:2h, :w]`` and ``cD`` at ``[h:2h, w:2w]``.

Implementation: each level is one analysis step along W and one along H on the current
approximation block, with every leading dimension and the real/imaginary parts folded into one
batch dimension (no Python loop over images). A step along an axis of up to 512 samples is a
product with the (n x n) orthogonal analysis matrix (a GEMM: on CPU several times faster than
``conv2d`` with a single input channel, and fast on GPUs); longer axes use a strided ``conv2d``
on the circularly extended signal. The inverse is the exact transpose (``conv_transpose2d``
and a periodic fold for long axes). Device and dtype follow the input (float32/float64,
complex64/complex128; CPU or CUDA); gradients flow through both directions.

Sizes must be divisible by ``2**level``. Levels deeper than :func:`max_level` are allowed up
to that divisibility limit (pywt warns about boundary effects there but computes the same
coefficients, which the tests check).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import torch
import torch.nn.functional as F

from ._validate import _describe, as_tensor, check_finite, check_shape2d
from .linops import LinearOperator

__all__ = [
    "available_wavelets",
    "max_level",
    "wavedec2",
    "waverec2",
    "WaveletTransform",
]


@functools.lru_cache(maxsize=None)
def available_wavelets() -> tuple[str, ...]:
    """Names of the orthogonal discrete wavelets accepted here (from PyWavelets)."""
    import pywt

    names = []
    for name in pywt.wavelist(kind="discrete"):
        w = pywt.Wavelet(name)
        if w.orthogonal and w.dec_len % 2 == 0:
            names.append(name)
    return tuple(names)


@functools.lru_cache(maxsize=None)
def _filters(name: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    import pywt

    w = pywt.Wavelet(name)
    return tuple(w.dec_lo), tuple(w.dec_hi), tuple(w.rec_lo), tuple(w.rec_hi)


def _check_wavelet(wavelet) -> str:
    if hasattr(wavelet, "name") and hasattr(wavelet, "dec_lo"):  # a pywt.Wavelet object
        wavelet = wavelet.name
    if not isinstance(wavelet, str):
        raise TypeError(f"wavelet: expected a wavelet name such as 'db4', got {_describe(wavelet)}")
    valid = available_wavelets()
    if wavelet not in valid:
        raise ValueError(
            f"wavelet: expected the name of an orthogonal pywt wavelet such as 'db4', got {wavelet!r}; "
            f"valid names: {', '.join(valid)}"
        )
    return wavelet


def _divisible_level(n: int) -> int:
    """Largest L with n % 2**L == 0."""
    level = 0
    while n % 2 == 0 and n > 1:
        n //= 2
        level += 1
    return level


def max_level(shape, wavelet="db4") -> int:
    """Deepest useful decomposition level for an image shape, as ``pywt.dwtn_max_level``.

    This is ``floor(log2(min(H, W) / (F - 1)))`` for filter length F: the level after which
    every coefficient is affected by the boundary (wrap-around). It is also capped by the
    number of times both H and W are divisible by 2, which the periodized transform needs.

    Args:
        shape: image shape ``(H, W)`` (an int means square).
        wavelet: wavelet name, e.g. ``"db4"``.

    Returns:
        The level, an int >= 0.
    """
    h, w = check_shape2d(shape, "shape")
    name = _check_wavelet(wavelet)
    flen = len(_filters(name)[0])
    pywt_level = max(0, int(math.floor(math.log2(min(h, w) / (flen - 1))))) if min(h, w) >= flen - 1 else 0
    return min(pywt_level, _divisible_level(h), _divisible_level(w))


def _check_level(level, shape: tuple[int, int], name: str, arg: str = "level") -> int:
    h, w = shape
    if level is None:
        return max_level(shape, name)
    if isinstance(level, bool) or not isinstance(level, numbers.Integral):
        raise TypeError(f"{arg}: expected an integer >= 0 or None, got {_describe(level)}")
    level = int(level)
    if level < 0:
        raise ValueError(f"{arg}: expected an integer >= 0 or None, got {level}")
    if h % (2**level) or w % (2**level):
        raise ValueError(
            f"{arg}: image size {(h, w)} must be divisible by 2**level = {2**level} for a periodized "
            f"transform with level={level}; the largest level this size allows is "
            f"{min(_divisible_level(h), _divisible_level(w))} (pad or crop the image)"
        )
    return level


# --------------------------------------------------------------------------------------------
# one analysis / synthesis step along one axis of (N, h, w) real tensors
#
# Output layout along the transformed axis: the n/2 low-pass outputs, then the n/2 high-pass
# outputs. Applied along H and W this gives exactly pywt's coeffs_to_array block layout
# [[aa, ad], [da, dd]] = [[cA, cV], [cH, cD]].
#
# Two interchangeable backends: for axes up to _DENSE_MAX samples the step is a product with
# the (n x n) orthogonal analysis matrix (one GEMM; torch's conv2d with a single input channel
# is several times slower on CPU); longer axes use strided conv2d on a circularly extended
# signal, whose cost grows linearly with n. Both are tested against pywt.

_DENSE_MAX = 512


@functools.lru_cache(maxsize=256)
def _matrix(name: str, n: int, device: torch.device, dtype: torch.dtype, shift: int = 0) -> torch.Tensor:
    """The (n x n) periodized one-level analysis matrix: rows 0..n/2-1 low-pass, then high-pass.

    ``A[o, (2 o + F/2 - j) mod n] += dec_lo[j]`` (and ``dec_hi`` for row ``n/2 + o``), which is
    pywt's periodization alignment; taps that wrap onto the same column (F > n) add up.

    With ``shift = s`` the matrix is ``A P_s``, where ``P_s x = roll(x, s)``: the columns are
    rolled by ``-s``, so a cyclic shift of the input (cycle spinning) costs nothing.
    """
    if shift % n:
        return torch.roll(_matrix(name, n, device, dtype), -(shift % n), dims=1).contiguous()
    import numpy as np

    dec_lo, dec_hi = (np.asarray(f, dtype=np.float64) for f in _filters(name)[:2])
    flen = len(dec_lo)
    half = n // 2
    a = np.zeros((n, n), dtype=np.float64)
    rows = np.repeat(np.arange(half), flen)
    cols = (2 * rows + flen // 2 - np.tile(np.arange(flen), half)) % n
    np.add.at(a, (rows, cols), np.tile(dec_lo, half))
    np.add.at(a, (rows + half, cols), np.tile(dec_hi, half))
    return torch.from_numpy(a).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _weights(name: str, device: torch.device, dtype: torch.dtype):
    _, _, rec_lo, rec_hi = _filters(name)
    # conv2d is a cross-correlation; with the reversed decomposition filter (which is the
    # reconstruction filter of an orthogonal wavelet) the analysis step is
    # a[o] = sum_k rec[k] * xpad[2 o + k], xpad[m] = x[(m - F/2 + 1) mod n]. The synthesis is
    # the transposed convolution with the same weights followed by a periodic fold.
    filt = torch.tensor([rec_lo, rec_hi], dtype=dtype, device=device)  # (2, F)
    flen = filt.shape[1]
    return filt.reshape(2, 1, 1, flen), filt.reshape(2, 1, flen, 1)  # along W, along H


@functools.lru_cache(maxsize=256)
def _pad_index(n: int, flen: int, device: torch.device) -> torch.Tensor:
    p = flen // 2 - 1
    return (torch.arange(n + flen - 2, device=device) - p) % n


def _extend(x: torch.Tensor, dim: int, flen: int) -> torch.Tensor:
    """Periodic extension by F/2 - 1 samples on each side along ``dim`` (-1 or -2)."""
    n = x.shape[dim]
    p = flen // 2 - 1
    if p == 0:
        return x
    if p <= n:
        if dim == -1:
            return torch.cat([x[..., n - p :], x, x[..., :p]], dim=-1)
        return torch.cat([x[..., n - p :, :], x, x[..., :p, :]], dim=-2)
    return x.index_select(dim, _pad_index(n, flen, x.device))


def _fold(y: torch.Tensor, dim: int, n: int, flen: int) -> torch.Tensor:
    """Adjoint of :func:`_extend`: add the extension back onto the periodic signal."""
    p = flen // 2 - 1
    if p == 0:
        return y
    if p <= n:
        if dim == -1:
            out = y[..., p : p + n].clone()
            out[..., n - p :] += y[..., :p]
            out[..., :p] += y[..., p + n :]
        else:
            out = y[..., p : p + n, :].clone()
            out[..., n - p :, :] += y[..., :p, :]
            out[..., :p, :] += y[..., p + n :, :]
        return out
    shape = list(y.shape)
    shape[dim] = n
    out = torch.zeros(shape, dtype=y.dtype, device=y.device)
    return out.index_add_(dim, _pad_index(n, flen, y.device), y)


def _axis_forward(x: torch.Tensor, dim: int, name: str, shift: int = 0) -> torch.Tensor:
    """One analysis step along ``dim`` (-1 or -2) of ``(N, h, w)``; lo half then hi half.

    ``shift``: the signal is first rolled by ``shift`` along ``dim`` (folded into the matrix).
    """
    n = x.shape[dim]
    if n <= _DENSE_MAX:
        a = _matrix(name, n, x.device, x.dtype, shift % n)
        return x @ a.mT if dim == -1 else a @ x
    if shift % n:
        x = torch.roll(x, shift, dims=dim)
    b, h, w = x.shape
    w_cols, w_rows = _weights(name, x.device, x.dtype)
    flen = w_cols.shape[-1]
    if dim == -1:
        y = F.conv2d(_extend(x, -1, flen).unsqueeze(1), w_cols, stride=(1, 2))  # (N, 2, h, w/2)
        return y.permute(0, 2, 1, 3).reshape(b, h, w)
    y = F.conv2d(_extend(x, -2, flen).unsqueeze(1), w_rows, stride=(2, 1))  # (N, 2, h/2, w)
    return y.reshape(b, h, w)


def _axis_inverse(y: torch.Tensor, dim: int, name: str, shift: int = 0) -> torch.Tensor:
    """Inverse (= transpose) of :func:`_axis_forward` (with the same ``shift``)."""
    n = y.shape[dim]
    if n <= _DENSE_MAX:
        a = _matrix(name, n, y.device, y.dtype, shift % n)
        return y @ a if dim == -1 else a.mT @ y
    b, h, w = y.shape
    w_cols, w_rows = _weights(name, y.device, y.dtype)
    flen = w_cols.shape[-1]
    if dim == -1:
        z = y.reshape(b, h, 2, w // 2).permute(0, 2, 1, 3)  # (N, 2, h, w/2)
        z = F.conv_transpose2d(z, w_cols, stride=(1, 2))  # (N, 1, h, w + F - 2)
        out = _fold(z, -1, w, flen).reshape(b, h, w)
    else:
        z = F.conv_transpose2d(y.reshape(b, 2, h // 2, w), w_rows, stride=(2, 1))  # (N, 1, h+F-2, w)
        out = _fold(z, -2, h, flen).reshape(b, h, w)
    if shift % n:
        out = torch.roll(out, -shift, dims=dim)
    return out


def _packed_forward(xr: torch.Tensor, name: str, level: int, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Multi-level analysis of ``(N, H, W)`` real, packed like ``pywt.coeffs_to_array``.

    ``shift = (dy, dx)``: transform ``roll(xr, (dy, dx))`` (the roll is folded into level 1).
    """
    if level == 0:
        return torch.roll(xr, shift, dims=(-2, -1)) if shift != (0, 0) else xr.clone()
    out = _axis_forward(_axis_forward(xr, -1, name, shift[1]), -2, name, shift[0])  # a new tensor: level 1
    h, w = out.shape[-2] // 2, out.shape[-1] // 2
    for _ in range(level - 1):
        blk = out[:, :h, :w]
        out[:, :h, :w] = _axis_forward(_axis_forward(blk, -1, name), -2, name)
        h, w = h // 2, w // 2
    return out


def _packed_inverse(cr: torch.Tensor, name: str, level: int, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Inverse of :func:`_packed_forward` (with the same ``shift``)."""
    if level == 0:
        return torch.roll(cr, (-shift[0], -shift[1]), dims=(-2, -1)) if shift != (0, 0) else cr.clone()
    out = cr.clone() if level > 1 else cr
    big_h, big_w = out.shape[-2:]
    for k in range(level - 1, 0, -1):
        h, w = big_h >> k, big_w >> k
        blk = out[:, :h, :w]
        out[:, :h, :w] = _axis_inverse(_axis_inverse(blk, -2, name), -1, name)
    return _axis_inverse(_axis_inverse(out, -2, name, shift[0]), -1, name, shift[1])  # level 1: a new tensor


# --------------------------------------------------------------------------------------------
# input handling


def _check_image(x, arg: str) -> torch.Tensor:
    x = as_tensor(x, arg)
    if x.ndim < 2:
        raise ValueError(f"{arg}: expected at least 2 dimensions (..., H, W), got {_describe(x)}")
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{arg}: expected a floating or complex tensor, got {_describe(x)}")
    _check_finite_fast(x, arg)
    return x


def _check_finite_fast(x: torch.Tensor, arg: str) -> None:
    """``check_finite`` with one cheap reduction first: a NaN/Inf anywhere makes the sum
    non-finite, so a finite sum proves the data finite; otherwise (NaN/Inf, or an overflowing
    sum of finite values) the exact elementwise check decides."""
    if not bool(torch.isfinite(x.sum())):
        check_finite(x, arg)


def _to_real_batch(x: torch.Tensor) -> tuple[torch.Tensor, bool, tuple[int, ...]]:
    """Fold leading dims and real/imag parts into one batch dim: ``(N, H, W)`` real."""
    lead = tuple(x.shape[:-2])
    x = x.reshape(-1, *x.shape[-2:])
    if x.is_complex():
        return torch.cat([x.real, x.imag], dim=0), True, lead
    return x, False, lead


def _from_real_batch(y: torch.Tensor, is_complex: bool, lead: tuple[int, ...]) -> torch.Tensor:
    if is_complex:
        half = y.shape[0] // 2
        y = torch.complex(y[:half], y[half:])
    return y.reshape(*lead, *y.shape[1:])


def _check_shift(shift) -> tuple[int, int] | None:
    if shift is None:
        return None
    if isinstance(shift, torch.Tensor):
        shift = shift.tolist()
    try:
        dy, dx = shift
    except (TypeError, ValueError):
        raise TypeError(f"shift: expected a pair of integers (dy, dx) or None, got {_describe(shift)}") from None
    for s in (dy, dx):
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise TypeError(f"shift: expected a pair of integers (dy, dx) or None, got {shift!r}")
    if dy == 0 and dx == 0:
        return None
    return int(dy), int(dx)


# --------------------------------------------------------------------------------------------
# public API


def wavedec2(x, wavelet="db4", level: int | None = None) -> list:
    """Multi-level 2D periodized DWT over the last two axes, as ``pywt.wavedec2``.

    Equals ``pywt.wavedec2(x, wavelet, mode="periodization", level=level, axes=(-2, -1))``
    coefficient for coefficient (the sparsifying transform Psi of R(x) in Eq. 2 and 3).

    Args:
        x: ``(..., H, W)`` real or complex tensor (numpy arrays accepted); H and W divisible
            by ``2**level``. Complex input is transformed as real and imaginary parts.
        wavelet: orthogonal pywt wavelet name (default ``"db4"``, the paper's CS baseline).
        level: number of levels; None means :func:`max_level`.

    Returns:
        ``[cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]``, tensors of shape
        ``(..., H / 2**k, W / 2**k)`` with the input's dtype and device.
    """
    x = _check_image(x, "x")
    name = _check_wavelet(wavelet)
    level = _check_level(level, tuple(x.shape[-2:]), name)
    xr, is_c, lead = _to_real_batch(x)
    packed = _from_real_batch(_packed_forward(xr, name, level), is_c, lead)
    h, w = x.shape[-2] >> level, x.shape[-1] >> level
    coeffs = [packed[..., :h, :w].clone()]
    for _ in range(level):
        coeffs.append(
            (
                packed[..., h : 2 * h, :w].clone(),  # cH
                packed[..., :h, w : 2 * w].clone(),  # cV
                packed[..., h : 2 * h, w : 2 * w].clone(),  # cD
            )
        )
        h, w = 2 * h, 2 * w
    return coeffs


def waverec2(coeffs: Sequence, wavelet="db4") -> torch.Tensor:
    """Inverse of :func:`wavedec2` (pywt's ``waverec2`` with ``mode="periodization"``).

    Args:
        coeffs: ``[cA_n, (cH_n, cV_n, cD_n), ..., (cH_1, cV_1, cD_1)]`` as returned by
            :func:`wavedec2` (tensors or numpy arrays of matching shapes).
        wavelet: the wavelet used for the decomposition.

    Returns:
        ``(..., H, W)`` tensor.
    """
    name = _check_wavelet(wavelet)
    if not isinstance(coeffs, (list, tuple)) or len(coeffs) < 1:
        raise TypeError(f"coeffs: expected a list [cA, (cH, cV, cD), ...], got {_describe(coeffs)}")
    a = _check_image(coeffs[0], "coeffs[0]")
    details = []
    h, w = a.shape[-2:]
    for k, d in enumerate(coeffs[1:], start=1):
        if not isinstance(d, (list, tuple)) or len(d) != 3:
            raise ValueError(f"coeffs[{k}]: expected a tuple (cH, cV, cD), got {_describe(d)}")
        d = [_check_image(t, f"coeffs[{k}]") for t in d]
        want = (*a.shape[:-2], h, w)
        for t in d:
            if tuple(t.shape) != want:
                raise ValueError(
                    f"coeffs[{k}]: expected detail arrays of shape {want} (level {len(coeffs) - k} of "
                    f"a decomposition whose approximation is {tuple(a.shape)}), got {tuple(t.shape)}"
                )
        details.append(d)
        h, w = 2 * h, 2 * w
    dtype = a.dtype
    for d in details:
        for t in d:
            dtype = torch.promote_types(dtype, t.dtype)
    packed = torch.empty((*a.shape[:-2], h, w), dtype=dtype, device=a.device)
    h, w = a.shape[-2:]
    packed[..., :h, :w] = a
    for ch, cv, cd in details:
        packed[..., h : 2 * h, :w] = ch
        packed[..., :h, w : 2 * w] = cv
        packed[..., h : 2 * h, w : 2 * w] = cd
        h, w = 2 * h, 2 * w
    pr, is_c, lead = _to_real_batch(packed)
    return _from_real_batch(_packed_inverse(pr, name, len(details)), is_c, lead)


class WaveletTransform(LinearOperator):
    """Orthonormal multi-level 2D wavelet transform with coefficients packed in one array, as
    a linear operator (:class:`mrtl.linops.LinearOperator`: ``.H``, ``.N``, ``@``).

    ``forward(x)`` equals ``pywt.coeffs_to_array(pywt.wavedec2(x, wavelet,
    mode="periodization", level=level))[0]`` for every 2D slice of ``x``; ``inverse`` is its
    exact inverse and, the transform being orthogonal, also its adjoint (``adjoint =
    inverse``). This is Psi in the L1 penalty R(x) of the CS and L1-SPIRiT objectives
    (Eq. 2 and 3).

    With a shift ``s = (dy, dx)`` the operator is ``Psi_s x = Psi roll(x, s)`` (cycle spinning,
    BART's random shifts); it stays orthonormal, ``Psi_s^H = Psi_s^-1``. The shift is folded
    into the level-1 analysis matrices (no roll copies). A periodised wavelet is invariant to
    shifts by multiples of ``2**level``, so :meth:`draw_shift` draws from ``[0, 2**level)``.

    Args:
        shape: image shape ``(H, W)``, divisible by ``2**level``.
        wavelet: orthogonal pywt wavelet name (default ``"db4"``).
        level: number of levels; None means :func:`max_level`.
        shift: optional ``(dy, dx)`` cyclic shift of the image before the transform (the
            operator's own; ``forward``/``inverse`` may override it per call).

    Example:
        >>> W = WaveletTransform((256, 256), "db4")
        >>> c = W.forward(x)            # (B, 256, 256)
        >>> x2 = W.inverse(c)           # == x
        >>> c = W.forward(x, shift=(3, -5))  # cycle spinning: roll the image first
    """

    def __init__(self, shape, wavelet="db4", level: int | None = None, shift=None):
        self.shape = check_shape2d(shape, "shape")
        self.wavelet = _check_wavelet(wavelet)
        self.level = _check_level(level, self.shape, self.wavelet)
        self.shift = shift
        super().__init__(self.shape, self.shape)

    @property
    def shift(self) -> tuple[int, int]:
        """The operator's cyclic shift ``(dy, dx)`` (``(0, 0)``: none)."""
        return self._shift

    @shift.setter
    def shift(self, value) -> None:
        self._shift = _check_shift(value) or (0, 0)

    def draw_shift(self, generator: torch.Generator) -> tuple[int, int]:
        """Set a random shift in ``[0, 2**level)`` per axis (cycle spinning) and return it."""
        s = torch.randint(0, 2**self.level, (2,), generator=generator)
        self._shift = (int(s[0]), int(s[1]))
        return self._shift

    def __repr__(self) -> str:
        extra = f", shift={self.shift}" if self.shift != (0, 0) else ""
        return f"WaveletTransform(shape={self.shape}, wavelet={self.wavelet!r}, level={self.level}{extra})"

    def _check(self, x, arg: str, pattern=None) -> torch.Tensor:
        x = _check_image(x, arg)
        if tuple(x.shape[-2:]) != self.shape:
            raise ValueError(f"{arg}: expected trailing shape {self.shape}, got {_describe(x)}")
        return x

    def _shift_for(self, shift) -> tuple[int, int]:
        return self._shift if shift is None else (_check_shift(shift) or (0, 0))

    def forward(self, x, shift=None, *, validate: bool = True) -> torch.Tensor:
        """Packed wavelet coefficients of ``x``.

        Args:
            x: ``(..., H, W)`` real or complex tensor.
            shift: optional ``(dy, dx)``: the image is rolled by ``torch.roll(x, (dy, dx))``
                before the transform (cycle spinning / random shifts); None uses the
                operator's own :attr:`shift`.
            validate: check ``x`` (``False``: the fast path for a solver's own iterates).

        Returns:
            ``(..., H, W)`` coefficients, same dtype and device as ``x``.
        """
        return self._packed(self._check(x, "x") if validate else x, self._shift_for(shift), _packed_forward)

    def _packed(self, x: torch.Tensor, shift: tuple[int, int], fn) -> torch.Tensor:
        """``fn`` (:func:`_packed_forward` or :func:`_packed_inverse`) on real or complex ``x``."""
        xr, is_c, lead = _to_real_batch(x)
        return _from_real_batch(fn(xr, self.wavelet, self.level, shift), is_c, lead)

    def inverse(self, c, shift=None, *, validate: bool = True) -> torch.Tensor:
        """Image from packed coefficients (the inverse and the adjoint of :meth:`forward`).

        Args:
            c: ``(..., H, W)`` packed coefficients.
            shift: the same ``(dy, dx)`` given to :meth:`forward` (None: the operator's own);
                the reconstructed image is rolled back by ``(-dy, -dx)``.
            validate: check ``c``.

        Returns:
            ``(..., H, W)`` image, same dtype and device as ``c``.
        """
        return self._packed(self._check(c, "c") if validate else c, self._shift_for(shift), _packed_inverse)

    adjoint = inverse

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        return self._packed(x, self._shift, _packed_forward)

    def _apply_adjoint(self, c: torch.Tensor) -> torch.Tensor:
        return self._packed(c, self._shift, _packed_inverse)

    def __call__(self, x, shift=None) -> torch.Tensor:
        return self.forward(x, shift=shift)
