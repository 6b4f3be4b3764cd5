"""SPIRiT calibration, the operator G, and L1-SPIRiT by POCS (Eq. 3, 13).

Kernel convention: ``kernel[c_out, c_in, dy, dx]`` (``k x k`` taps, ``r = k // 2``) and

    (G y)[c_out, ky, kx] = sum_{c_in, dy, dx} kernel[c_out, c_in, dy, dx] * y[c_in, ky + dy - r, kx + dx - r]

(a correlation over centred k-space). The centre tap of a coil's own kernel is zero
(Lustig's ``calibSPIRiT``): each sample is synthesised from its neighbours in all coils and
the other coils at the same position. In image space G is a per-pixel ``C x C`` mixing,
``(G x)[c_out] = sum_{c_in} G_img[c_out, c_in] * x[c_in]`` (circular boundary), which is what
the reconstructions and the networks' calibration-consistency layers apply.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .._validate import check_acceleration, check_complex, check_float, check_int
from ..coils import espirit_maps
from ..fft import ifft2c
from ..linops import MultiCoilFourier, coil_combine, spirit_apply
from ..utils import progress as _progress
from ..wavelets import WaveletTransform
from ._common import check_level, finite_or_raise, prepare_kspace_mask, recon_threads

__all__ = [
    "SpiritKernel",
    "SpiritResult",
    "spirit_calibrate",
    "spirit_apply",
    "spirit_apply_kspace",
    "l1_spirit_pocs",
    "default_spirit_iterations",
    "zero_filled_sense",
    "find_calib_size",
    "operator_gain",
    "stabilize_operator",
    "SpiritCalibrationWarning",
    "SpiritDivergenceError",
]

#: Default SPIRiT kernel width and relative Tikhonov weight (the paper's 7 x 7, 1e-2).
DEFAULT_KERNEL_SIZE = 7
DEFAULT_TIKHONOV = 1e-2
#: A calibrated operator whose largest per-pixel singular value exceeds ``1 + GAIN_TOLERANCE``
#: amplifies some coil combination at every POCS iteration (see :func:`operator_gain`).
GAIN_TOLERANCE = 0.05
#: :func:`l1_spirit_pocs` stops with :class:`SpiritDivergenceError` when the iterate's energy
#: exceeds this multiple of the zero-filled coil images' energy (an MR image's unsampled k-space
#: never holds many times the energy of its fully sampled centre).
DIVERGENCE_ENERGY_FACTOR = 10.0


class SpiritCalibrationWarning(UserWarning):
    """The SPIRiT calibration is under-determined or its operator ``G`` amplifies (gain > 1)."""


class SpiritDivergenceError(FloatingPointError):
    """The L1-SPIRiT POCS iteration diverged (its iterate grew without bound)."""

#: The paper's POCS iterations for R = 2, 4, 6, 8, 10 (interpolated linearly in between).
PAPER_R = (2.0, 4.0, 6.0, 8.0, 10.0)
PAPER_ITERS = (20, 30, 45, 65, 80)


def default_spirit_iterations(R: float) -> int:
    """The paper's L1-SPIRiT iteration count for acceleration ``R``.

    ``[20, 30, 45, 65, 80]`` for ``R = [2, 4, 6, 8, 10]``; linear interpolation in between,
    clamped outside.
    """
    R = check_acceleration(R, high=None)  # mrtl's one R check; no cap: any mask's achieved R
    return int(round(float(np.interp(R, PAPER_R, PAPER_ITERS))))


def find_calib_size(kspace: torch.Tensor) -> int:
    """Side of the largest centred square that is sampled (non-zero in every coil) in ``kspace``.

    Args:
        kspace: ``(C, H, W)`` k-space.
    """
    sampled = (kspace != 0).all(dim=0)
    H, W = sampled.shape
    cy, cx = H // 2, W // 2
    n = 0
    while n + 1 <= min(H, W):
        m = n + 1
        y0, x0 = cy - m // 2, cx - m // 2
        if y0 < 0 or x0 < 0 or not bool(sampled[y0 : y0 + m, x0 : x0 + m].all()):
            break
        n = m
    return n


@dataclass
class SpiritKernel:
    """A calibrated SPIRiT kernel.

    Attributes:
        kernel: ``(C, C, k, k)`` complex (``(B, C, C, k, k)`` when calibrated per image), see the
            module docstring for the convention.
        calib: side of the calibration square used.
        tikhonov: the relative Tikhonov weight used.
        n_equations: equations of each coil's least-squares fit (calibration patches,
            ``(calib - k + 1)**2``).
        n_unknowns: kernel weights of each coil (``C k**2 - 1``); more unknowns than equations
            means the fit is under-determined and the Tikhonov term decides the kernel.
        gain: the operator norm of ``G`` (:func:`operator_gain`, largest over the batch):
            ``<= 1`` makes every POCS step non-expansive; above ``1 + GAIN_TOLERANCE`` the
            iteration can grow without bound.
    """

    kernel: torch.Tensor
    calib: int
    tikhonov: float
    n_equations: int = 0
    n_unknowns: int = 0
    gain: float = float("nan")

    @property
    def kernel_size(self) -> int:
        return int(self.kernel.shape[-1])

    @property
    def n_coils(self) -> int:
        return int(self.kernel.shape[-3])

    def image_operator(self, shape, max_gain: float | None = None) -> torch.Tensor:
        """The image-space form of G: ``(C, C, H, W)`` (``(B, C, C, H, W)``) per-pixel mixing.

        ``spirit_apply(ifft2c(y), G_img) == ifft2c(spirit_apply_kspace(y, kernel))`` (circular
        boundary), the operator of Eq. 13.

        Args:
            shape: image shape ``(H, W)`` (at least the kernel size).
            max_gain: None (the exact operator) or a bound on each pixel's singular values
                (:func:`stabilize_operator`; 1.0 makes G non-expansive).
        """
        from .._validate import check_shape2d

        H, W = check_shape2d(shape, "shape")
        k = self.kernel_size
        if H < k or W < k:
            raise ValueError(f"shape: {(H, W)} is smaller than the kernel ({k} x {k})")
        r = k // 2
        # correlation with K == circular convolution with the flipped kernel, placed at the centre
        big = torch.zeros(*self.kernel.shape[:-2], H, W, dtype=self.kernel.dtype, device=self.kernel.device)
        cy, cx = H // 2, W // 2
        big[..., cy - r : cy - r + k, cx - r : cx - r + k] = self.kernel.flip(-2, -1)
        G = ifft2c(big) * float(np.sqrt(H * W))
        return G if max_gain is None else stabilize_operator(G, max_gain)

    def to(self, device) -> "SpiritKernel":
        return SpiritKernel(self.kernel.to(device), self.calib, self.tikhonov, self.n_equations, self.n_unknowns, self.gain)


def operator_gain(G_img: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each pixel's coil-mixing matrix of ``G`` (its operator norm).

    POCS (:func:`l1_spirit_pocs`) alternates ``x <- G x`` with non-expansive steps (the
    data-consistency projection, soft-thresholding). With ``max_r ||G(r)||_2 <= 1`` every
    iteration is non-expansive and the iterates stay bounded; a pixel with ``||G(r)||_2 > 1``
    has a coil combination that ``G`` amplifies at every iteration, and where the data do not
    pin it down (unsampled k-space) it grows geometrically. A well calibrated G has gain about 1
    (``G S = S`` along the coil sensitivities ``S``, Eq. 13, and < 1 elsewhere); noise-free
    or low-rank calibration data (few coils with energy, a small calibration square, a large
    kernel) can give gains of 1.1-3.

    Args:
        G_img: ``(..., C, C, H, W)`` from :meth:`SpiritKernel.image_operator`.

    Returns:
        ``(..., H, W)`` float per-pixel operator norms.
    """
    Gp = G_img.movedim((-2, -1), (-4, -3))  # (..., H, W, C, C)
    return torch.linalg.matrix_norm(Gp, ord=2)


def stabilize_operator(G_img: torch.Tensor, max_gain: float = 1.0) -> torch.Tensor:
    """Clip each pixel's singular values of ``G`` at ``max_gain`` (an SVD per pixel).

    With ``max_gain = 1`` the operator is non-expansive, so the POCS iteration cannot diverge.
    Pixels already within the bound are unchanged; along the coil sensitivities a calibrated G
    has singular value about 1 (consistency, Eq. 13), so clipping removes mostly the spurious
    amplification of coil combinations that carry no signal.

    Args:
        G_img: ``(..., C, C, H, W)`` image-space operator.
        max_gain: the bound (> 0).

    Returns:
        The operator with the same shape and dtype.
    """
    max_gain = check_float(max_gain, "max_gain", low=0.0, low_open=True)
    Gp = G_img.movedim((-2, -1), (-4, -3))
    norms = torch.linalg.matrix_norm(Gp, ord=2)
    over = norms > max_gain
    if not bool(over.any()):
        return G_img
    Gp = Gp.clone()
    sel = Gp[over].to(torch.complex128)
    U, sv, Vh = torch.linalg.svd(sel)
    Gp[over] = ((U * sv.clamp(max=max_gain).to(U.dtype)[..., None, :]) @ Vh).to(Gp.dtype)
    return Gp.movedim((-4, -3), (-2, -1))


class SpiritResult(NamedTuple):
    """Result of :func:`l1_spirit_pocs`.

    Attributes:
        coil_images: ``(B, C, H, W)`` reconstructed coil images.
        image: ``(B, H, W)`` coil combination with the ESPIRiT maps (``S^H x``).
        history: ``(B, n_iter)`` calibration-consistency residual ``||(G - I) x||^2 / ||x||^2``
            of each iterate.
        maps: ``(B, C, H, W)`` the coil maps used.
    """

    coil_images: torch.Tensor
    image: torch.Tensor
    history: torch.Tensor
    maps: torch.Tensor


def _calibrate_one(kcal: torch.Tensor, k: int, tikhonov: float) -> torch.Tensor:
    """Kernel (C, C, k, k) from a fully sampled calibration block (C, n, n), in float64."""
    C = kcal.shape[0]
    kc = kcal.to(torch.complex128)
    patches = kc.unfold(1, k, 1).unfold(2, k, 1)  # (C, ny, nx, k, k)
    A = patches.permute(1, 2, 0, 3, 4).reshape(-1, C * k * k)  # rows: patches, cols: (c, dy, dx)
    AtA = A.conj().T @ A
    n = AtA.shape[0]
    lam = torch.linalg.matrix_norm(AtA, "fro") / n * tikhonov  # Lustig's calibrate.m
    r = k // 2
    kernel = torch.zeros(C, C * k * k, dtype=torch.complex128, device=kcal.device)
    eye = torch.eye(n - 1, dtype=AtA.dtype, device=AtA.device)
    for c in range(C):
        idx_y = c * k * k + r * k + r
        keep = torch.ones(n, dtype=torch.bool, device=AtA.device)
        keep[idx_y] = False
        M = AtA[keep][:, keep] + lam * eye
        rhs = AtA[keep, idx_y]
        # min ||A_s w - a_y||^2 + lam ||w||^2: the row of G for target coil c (correlation form)
        w = torch.linalg.solve(M, rhs)
        kernel[c, keep] = w
    # A_s w approximates a_y with a_y[p] = sum_j A[p, j] w_j, i.e. y[q] = sum K * y[q + d]
    return kernel.reshape(C, C, k, k).to(torch.complex64 if kcal.dtype == torch.complex64 else kcal.dtype)


def spirit_calibrate(
    kspace, kernel_size: int = DEFAULT_KERNEL_SIZE, tikhonov: float = DEFAULT_TIKHONOV, calib: int | None = None, warn: bool = True
) -> SpiritKernel:
    """Calibrate the SPIRiT kernel (Eq. 3) from the fully sampled centre of k-space.

    Tikhonov-regularised least squares as in Lustig's ``calibSPIRiT``: the calibration
    matrix ``A`` (one row per ``k x k`` patch of all coils), ``lam = tikhonov * ||A^H A||_F / n``
    (``n = C k^2``), and for each coil the solution of ``(A_s^H A_s + lam I) w = A_s^H a``,
    where ``a`` is the coil's centre tap and ``A_s`` every other column.

    Args:
        kspace: ``(C, H, W)`` (or ``(B, C, H, W)``, one kernel per image) complex k-space,
            centred; the central ``calib x calib`` square must be sampled.
        kernel_size: kernel width ``k`` (odd; the paper: 7).
        tikhonov: relative Tikhonov weight (the paper: 1e-2).
        calib: side of the calibration square; None finds the largest fully sampled centred
            square.
        warn: emit :class:`SpiritCalibrationWarning` when the fit is under-determined (fewer
            calibration patches than kernel weights per coil) or the operator's gain
            (:func:`operator_gain`) exceeds ``1 + GAIN_TOLERANCE``; the numbers are in the
            returned kernel either way.

    Returns:
        :class:`SpiritKernel` with ``n_equations``, ``n_unknowns`` and ``gain`` filled in.

    Raises:
        ValueError: an even kernel size, or a calibration region not larger than the kernel.
    """
    kspace = check_complex(kspace, "kspace", ndim=(3, 4))
    kernel_size = check_int(kernel_size, "kernel_size", low=1)
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: expected an odd kernel width, got {kernel_size}")
    tikhonov = check_float(tikhonov, "tikhonov", low=0.0)
    batched = kspace.ndim == 4
    ks = kspace if batched else kspace[None]
    H, W = ks.shape[-2:]
    kernels = []
    used = []
    for b in range(ks.shape[0]):
        c = find_calib_size(ks[b]) if calib is None else check_int(calib, "calib", low=1, high=min(H, W))
        if c <= kernel_size:
            raise ValueError(
                f"calib: the calibration region ({c} x {c}) must be larger than the kernel "
                f"({kernel_size} x {kernel_size}); sample a larger fully sampled centre or use a smaller kernel_size"
            )
        y0, x0 = H // 2 - c // 2, W // 2 - c // 2
        block = ks[b, :, y0 : y0 + c, x0 : x0 + c]
        if bool((block == 0).all(dim=0).any()):
            raise ValueError(f"calib: the central {c} x {c} calibration square is not fully sampled")
        kernels.append(_calibrate_one(block, kernel_size, tikhonov))
        used.append(c)
    kern = torch.stack(kernels) if batched else kernels[0]
    C = ks.shape[1]
    c = min(used)
    n_eq, n_unk = (c - kernel_size + 1) ** 2, C * kernel_size**2 - 1
    # the gain on a grid of at most 64 x 64 pixels: G's symbol is a trigonometric polynomial of
    # degree k // 2, so this samples it densely at a fraction of the cost of the full grid
    grid = (max(min(H, 64), kernel_size), max(min(W, 64), kernel_size))
    out = SpiritKernel(kern, c, tikhonov, n_eq, n_unk)
    out.gain = float(operator_gain(out.image_operator(grid)).max())
    if warn and n_eq < n_unk:
        need = int(np.ceil(np.sqrt(n_unk))) + kernel_size - 1
        warnings.warn(
            f"spirit_calibrate: the calibration is under-determined: a {c} x {c} calibration square gives "
            f"{n_eq} equations for the {n_unk} weights of each coil's {kernel_size} x {kernel_size} kernel "
            f"({C} coils), so the Tikhonov term ({tikhonov:g}) decides the kernel; a calibration square of "
            f"at least {need} x {need} or a smaller kernel_size makes it determined",
            SpiritCalibrationWarning,
            stacklevel=2,
        )
    if warn and out.gain > 1.0 + GAIN_TOLERANCE:
        warnings.warn(
            f"spirit_calibrate: the calibrated operator G amplifies: its largest per-pixel singular value is "
            f"{out.gain:.3f} (> 1), so a POCS iteration with it can diverge; l1_spirit_pocs clips it to 1 "
            f"(stabilize=True); a smaller kernel_size ({kernel_size} now), a larger calibration square "
            f"({c} now) or a larger tikhonov ({tikhonov:g} now) may give a better operator",
            SpiritCalibrationWarning,
            stacklevel=2,
        )
    return out


def spirit_apply_kspace(kspace: torch.Tensor, kernel: torch.Tensor, padding: str = "circular") -> torch.Tensor:
    """Apply G in k-space as a correlation with the kernel (the definition of G).

    Args:
        kspace: ``(C, H, W)`` or ``(B, C, H, W)`` complex.
        kernel: ``(C, C, k, k)``.
        padding: ``"circular"`` (matches the image-space form exactly) or ``"zeros"``.

    Returns:
        The same shape as ``kspace``.
    """
    import torch.nn.functional as F

    batched = kspace.ndim == 4
    y = kspace if batched else kspace[None]
    r = kernel.shape[-1] // 2
    mode = {"circular": "circular", "zeros": "constant"}[padding]
    yp = F.pad(torch.view_as_real(y).permute(0, 4, 1, 2, 3).reshape(y.shape[0], -1, *y.shape[-2:]), (r, r, r, r), mode=mode)
    C = y.shape[1]
    yp = yp.reshape(y.shape[0], 2, C, yp.shape[-2], yp.shape[-1])
    re, im = yp[:, 0], yp[:, 1]
    kr, ki = kernel.real.to(re.dtype), kernel.imag.to(re.dtype)
    out_r = F.conv2d(re, kr) - F.conv2d(im, ki)
    out_i = F.conv2d(re, ki) + F.conv2d(im, kr)
    out = torch.complex(out_r, out_i)
    return out if batched else out[0]


def zero_filled_sense(kspace, mask, maps) -> torch.Tensor:
    """Zero-filled SENSE combination ``S^H F^H M y`` (the multi-coil baseline).

    Args:
        kspace: ``(B, C, H, W)`` or ``(C, H, W)`` complex k-space.
        mask: ``(H, W)`` or ``(B, H, W)``.
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` coil maps.

    Returns:
        ``(B, H, W)`` or ``(H, W)`` complex image.
    """
    y, m, batched = prepare_kspace_mask(kspace, mask, coil_dim=True)
    maps = _check_maps(maps, y)
    img = MultiCoilFourier(m[:, 0], maps, validate=False).adjoint(y, validate=False)  # A^H y, A = M F S
    return img if batched else img[0]


def _check_maps(maps, y: torch.Tensor) -> torch.Tensor:
    maps = check_complex(maps, "maps", ndim=(3, 4))
    if maps.shape[-3] != y.shape[1]:
        raise ValueError(f"maps: {maps.shape[-3]} coils, but the k-space has {y.shape[1]} coils (shape {tuple(y.shape)})")
    if tuple(maps.shape[-2:]) != tuple(y.shape[-2:]):
        raise ValueError(f"maps: image size {tuple(maps.shape[-2:])} differs from the k-space's {tuple(y.shape[-2:])}")
    if maps.ndim == 4 and maps.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"maps: batch size {maps.shape[0]} does not match the k-space batch size {y.shape[0]}")
    maps = maps.to(device=y.device, dtype=y.dtype)
    return maps if maps.ndim == 4 else maps[None]


@torch.no_grad()
def l1_spirit_pocs(
    kspace,
    mask,
    kernel: SpiritKernel | None = None,
    lam: float = 1e-3,
    n_iter: int | None = None,
    wavelet: str = "db4",
    maps=None,
    calib: int | None = None,
    level: int | None = None,
    progress: bool = False,
    stabilize: bool = True,
    threads=None,
    R=None,
) -> SpiritResult:
    """L1-SPIRiT by projection onto convex sets (Eq. 3), as Lustig's ``pocsSPIRiT``.

    Each iteration applies, to all coil images at once:
    1. the calibration-consistency projection ``x <- G x`` (image-space G, Eq. 13);
    2. wavelet soft-thresholding with joint sparsity across coils (the threshold acts on the
       root-sum-of-squares of each wavelet coefficient over coils, as in ``pocsSPIRiT``), at
       ``lam * s_b`` with ``s_b`` the peak of the zero-filled root-sum-of-squares image (the
       same relative scaling as :func:`mrtl.recon.cs_l1_wavelet`);
    3. the data-consistency projection (sampled k-space reset to the measured data).

    Args:
        kspace: ``(B, C, H, W)`` or ``(C, H, W)`` undersampled k-space (centred), with a fully
            sampled calibration square at the centre. The unbatched ``(C, H, W)`` form needs
            ``maps`` or ``kernel`` (they fix the number of coils), so that a batch of single-coil
            images ``(B, H, W)`` is not taken for ``B`` coils.
        mask: ``(H, W)`` or ``(B, H, W)``.
        kernel: a :class:`SpiritKernel` (``(C, C, k, k)`` shared by the batch or
            ``(B, C, C, k, k)``); None calibrates one per image with the paper's settings
            (7 x 7, Tikhonov 1e-2).
        lam: relative L1 weight (the paper: 1e-3); 0 gives plain POCS SPIRiT.
        n_iter: iterations; None uses the paper's schedule for the acceleration ``R``
            (:func:`default_spirit_iterations`).
        wavelet: wavelet name (``"db4"``).
        maps: ``(C, H, W)`` or ``(B, C, H, W)`` coil maps for the final combination; None
            estimates ESPIRiT maps from the data (:func:`mrtl.coils.espirit_maps`).
        calib: calibration square side for the kernel / maps (None: detected).
        level: wavelet levels (None: maximum).
        progress: progress bar.
        stabilize: clip each pixel's singular values of G at 1 (:func:`stabilize_operator`) so
            that every iteration is non-expansive. Lustig's ``pocsSPIRiT`` uses G as calibrated;
            this differs from it only where G amplifies (gain > 1, :func:`operator_gain`), which
            happens with small calibration squares, large kernels or noise-free simulated data and
            otherwise makes POCS diverge (on 64 x 64 T1 slices with 8 simulated coils, R = 4 and
            a 16 x 16 calibration square: 9 x 9 kernel 23-25 dB after 30 iterations and below
            0 dB after 100 without, 27-30 dB with). False uses the exact operator and warns
            when it amplifies.
        threads: CPU threads for the iteration (restored afterwards): None follows
            ``MRTL_RECON_THREADS`` or :data:`mrtl.recon._common.DEFAULT_RECON_THREADS` (1; see
            ``benchmarks/bench_recon.py --threads``), an integer sets it, ``"torch"`` keeps torch's.
        R: the acceleration, for the default ``n_iter`` only: a float (or a tensor of per-image
            values, whose mean is used: one schedule for the batch), as a dataset carries it
            (``Sample.R``, ``TrainData.R``). None measures it from the masks (all pixels / sampled).

    Returns:
        :class:`SpiritResult`.

    Raises:
        SpiritDivergenceError: (a ``FloatingPointError``) the iterate's energy grew beyond
            ``DIVERGENCE_ENERGY_FACTOR`` times the zero-filled data's: the iteration diverged and
            no image is returned.
    """
    with recon_threads(threads):
        return _l1_spirit_pocs(kspace, mask, kernel, lam, n_iter, wavelet, maps, calib, level, progress, stabilize, R)


def _batch_R(R) -> float:
    """One R for a batch: a float, or the mean of per-image values; checked by ``check_acceleration``."""
    if isinstance(R, (int, float)) or R is None:
        return R
    R = torch.as_tensor(R, dtype=torch.float64)
    if R.numel() == 0:
        raise ValueError("R: expected a float or per-image values, got an empty array")
    return float(R.mean()) if bool(torch.isfinite(R).all()) else float("nan")


def _l1_spirit_pocs(kspace, mask, kernel, lam, n_iter, wavelet, maps, calib, level, progress, stabilize, R) -> SpiritResult:
    if kernel is None and maps is None and getattr(kspace, "ndim", None) == 3:
        raise ValueError(
            f"kspace: an unbatched {tuple(kspace.shape)} array would be read as {kspace.shape[0]} coils of one image, "
            "but nothing confirms the coil axis (no maps, no kernel): pass multi-coil k-space as (B, C, H, W) "
            "(kspace[None] for one image) or give maps/kernel; a batch of single-coil images (B, H, W) belongs to "
            "cs_l1_wavelet"
        )
    y, m, batched = prepare_kspace_mask(kspace, mask, coil_dim=True)
    lam = check_float(lam, "lam", low=0.0)
    B, C, H, W = y.shape
    check_level(y.shape, wavelet, level)
    R = _batch_R(R)
    if R is not None:
        R = check_acceleration(R, high=None)
    if n_iter is None:
        n_iter = default_spirit_iterations(float(H * W * m.shape[0]) / float(m.sum()) if R is None else R)
    n_iter = check_int(n_iter, "n_iter", low=1)
    y = y * m
    if kernel is None:
        kernel = spirit_calibrate(y, calib=calib)
    if not isinstance(kernel, SpiritKernel):
        raise TypeError(f"kernel: expected a SpiritKernel (from spirit_calibrate) or None, got {type(kernel).__name__}")
    if kernel.n_coils != C:
        raise ValueError(f"kernel: calibrated for {kernel.n_coils} coils, but the k-space has {C} coils")
    if not isinstance(stabilize, bool):
        raise TypeError(f"stabilize: expected True or False, got {stabilize!r}")
    G = kernel.to(y.device).image_operator((H, W)).to(y.dtype)
    gain = float(operator_gain(G).max())
    if stabilize:
        G = stabilize_operator(G, 1.0)
    elif gain > 1.0 + GAIN_TOLERANCE:
        warnings.warn(
            f"l1_spirit_pocs: the SPIRiT operator amplifies (largest per-pixel singular value {gain:.3f} > 1) "
            "and stabilize=False: the iteration may diverge",
            SpiritCalibrationWarning,
            stacklevel=2,
        )
    if maps is None:
        c = kernel.calib if calib is None else calib
        maps = espirit_maps(y, calib=min(24, c))
    maps = _check_maps(maps, y)
    A = MultiCoilFourier(m[:, 0], validate=False)  # M F on the coil images (Eq. 12)
    x = A.adjoint(y, validate=False)  # zero-filled coil images
    s = torch.sqrt((x.abs() ** 2).sum(dim=1)).amax(dim=(-2, -1))
    s = torch.where(s > 0, s, torch.ones_like(s))
    thr = (lam * s).to(x.real.dtype)[:, None, None, None]
    wt = WaveletTransform((H, W), wavelet, level)  # Psi, no shifts
    hist = torch.empty(B, n_iter, dtype=torch.float64, device=y.device)
    e_max = DIVERGENCE_ENERGY_FACTOR * torch.clamp(_energy(x), min=1e-300)
    for it in _progress(range(n_iter), desc="L1-SPIRiT (POCS)", total=n_iter, enable=progress):
        gx = spirit_apply(x, G)
        if it > 0:
            hist[:, it - 1] = _rel_res(gx, x)
            _check_divergence(x, e_max, it, gain, stabilize, kernel)
        x = gx
        if lam > 0:
            x = wt.inverse(_joint_soft_threshold_(wt.forward(x, validate=False), thr), validate=False)
        x = A.prox_l2(x, y, validate=False)  # hard data consistency (Eq. 7, lambda = infinity)
    hist[:, n_iter - 1] = _rel_res(spirit_apply(x, G), x)
    _check_divergence(x, e_max, n_iter, gain, stabilize, kernel)
    finite_or_raise(x, "l1_spirit_pocs")
    img = coil_combine(x, maps)
    if not batched:
        return SpiritResult(x[0], img[0], hist, maps[0] if maps.shape[0] == 1 else maps)
    return SpiritResult(x, img, hist, maps)


def _check_divergence(x, e_max, it, gain, stabilize, kernel) -> None:
    e = _energy(x)
    bad = ~(e <= e_max)  # NaN counts as diverged
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise SpiritDivergenceError(
            f"l1_spirit_pocs: the iteration diverged at iteration {it}: image {i}'s energy is "
            f"{float(e[i] / e_max[i] * DIVERGENCE_ENERGY_FACTOR):.3g} times the zero-filled data's "
            f"(operator gain {gain:.3f}, stabilize={stabilize}, kernel {kernel.kernel_size} x {kernel.kernel_size}, "
            f"calibration {kernel.calib} x {kernel.calib}); use stabilize=True, a smaller kernel_size or a "
            "larger calibration square"
        )


def _joint_soft_threshold_(c: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """In place: ``soft_threshold(c, thr, joint_dim=1)`` (joint sparsity over coils) with fewer
    passes over memory: the coil-RSS magnitude from the squared real and imaginary parts."""
    mag = torch.view_as_real(c).square().sum(dim=-1).sum(dim=1, keepdim=True).sqrt_()
    scale = (mag - thr).clamp_(min=0).div_(mag.clamp_(min=torch.finfo(mag.dtype).tiny))
    return c.mul_(scale)


def _energy(d: torch.Tensor) -> torch.Tensor:
    """``sum |d|^2`` per batch item (over all other axes), float64 (a fast float32 reduction)."""
    return torch.linalg.vector_norm(torch.view_as_real(d), dim=tuple(range(1, d.ndim + 1))).to(torch.float64).square()


def _rel_res(gx: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _energy(gx - x) / torch.clamp(_energy(x), min=1e-300)
