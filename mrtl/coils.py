"""Coil sensitivities and coil compression (layer 3).

- :func:`birdcage_maps`: analytic birdcage sensitivities (sigpy backend) for simulations.
- :func:`espirit_maps`: ESPIRiT maps (Uecker et al. 2014) through ``sigpy.mri.app.EspiritCalib``.
  SigPy's FFT is centred and orthonormal exactly like :func:`mrtl.fft.fft2c`, so k-space in
  mrtl's convention is passed unchanged (``tests/test_coils.py`` checks the maps against the
  true birdcage maps).
- :func:`compress` / :func:`compression_matrices`: SVD coil compression (one matrix for the
  whole data set) and geometric-decomposition coil compression (GCC, Zhang et al., MRM 2013:
  one matrix per readout position in hybrid (x, ky) space, aligned between neighbouring
  positions by orthogonal Procrustes). The paper compresses 32 to 8 coils with GCC.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validate import check_choice, check_complex, check_float, check_int, check_shape2d

__all__ = ["birdcage_maps", "espirit_maps", "compress", "compression_matrices"]


def birdcage_maps(n_coils: int, shape, r: float = 1.5, nzz: int = 8) -> torch.Tensor:
    """Simulated birdcage coil sensitivities (``sigpy.mri.birdcage_maps``).

    Args:
        n_coils: number of coils (>= 1).
        shape: image shape ``(H, W)``.
        r: relative radius of the birdcage (sigpy's ``r``).
        nzz: coils per ring (sigpy's ``nzz``).

    Returns:
        ``(n_coils, H, W)`` complex64 maps.
    """
    import sigpy.mri as mr

    n_coils = check_int(n_coils, "n_coils", low=1)
    h, w = check_shape2d(shape, "shape")
    r = check_float(r, "r", low=0.0, low_open=True)
    nzz = check_int(nzz, "nzz", low=1)
    maps = mr.birdcage_maps((n_coils, h, w), r=r, nzz=nzz, dtype=np.complex64)
    return torch.from_numpy(np.ascontiguousarray(maps))


def espirit_maps(kspace, calib: int = 24, thresh: float = 0.02, kernel_size: int = 6, crop: float = 0.95) -> torch.Tensor:
    """ESPIRiT coil maps from (undersampled) multi-coil k-space, via sigpy's ``EspiritCalib``.

    The reference image of the paper's multi-coil experiments is the coil combination with
    these maps (``mrtl.linops.coil_combine``).

    Args:
        kspace: ``(C, H, W)`` or ``(B, C, H, W)`` complex k-space centred like ``fft2c``; the
            central ``calib x calib`` square must be fully sampled.
        calib: side of the calibration square.
        thresh: singular-value threshold of the calibration matrix (relative).
        kernel_size: ESPIRiT kernel width.
        crop: eigenvalue threshold for cropping the maps (0 keeps everything).

    Returns:
        ``(C, H, W)`` (or ``(B, C, H, W)``) complex maps on the input's device, complex64.
    """
    import sigpy.mri.app as app

    kspace = check_complex(kspace, "kspace", ndim=(3, 4))
    _check_coil_first(kspace)
    calib = check_int(calib, "calib", low=2)
    kernel_size = check_int(kernel_size, "kernel_size", low=1)
    thresh = check_float(thresh, "thresh", low=0.0)
    crop = check_float(crop, "crop", low=0.0, high=1.0)
    if calib > min(kspace.shape[-2:]):
        raise ValueError(f"calib: {calib} is larger than the k-space size {tuple(kspace.shape[-2:])}")
    if kernel_size >= calib:
        raise ValueError(
            f"calib: the calibration region ({calib}) must be larger than the ESPIRiT kernel (kernel_size={kernel_size})"
        )
    batched = kspace.ndim == 4
    ks = kspace if batched else kspace[None]
    out = []
    for b in range(ks.shape[0]):
        k = ks[b].detach().cpu().numpy().astype(np.complex64)
        m = app.EspiritCalib(k, calib_width=calib, thresh=thresh, kernel_width=kernel_size, crop=crop, show_pbar=False).run()
        out.append(torch.from_numpy(np.ascontiguousarray(np.asarray(m), dtype=np.complex64)))
    maps = torch.stack(out).to(kspace.device)
    return maps if batched else maps[0]


def _check_coil_first(kspace: torch.Tensor, name: str = "kspace") -> None:
    """Refuse coil-last ``(H, W, C)`` / ``(B, H, W, C)`` arrays: mrtl puts coils before the image
    axes, ``(C, H, W)``. An array whose last axis is at most 64 long and at least 4 times shorter
    than both axes before it is taken as coil-last (an image 4 times narrower than the number of
    coils does not occur)."""
    a, b, c = kspace.shape[-3:]
    if c <= 64 and a >= 4 * c and b >= 4 * c:
        perm = "permute(2, 0, 1)" if kspace.ndim == 3 else "permute(0, 3, 1, 2)"
        raise ValueError(
            f"{name}: shape {tuple(kspace.shape)} looks coil-last ((H, W, C) with {c} coils); expected coils "
            f"first, (C, H, W) or (B, C, H, W): use kspace.{perm}"
        )


# --------------------------------------------------------------------------------------------
# coil compression


def _prep_compress(kspace, n_virtual, method, calib, readout_dim):
    kspace = check_complex(kspace, "kspace", ndim=(3, 4))
    _check_coil_first(kspace)
    method = check_choice(method, "method", ("gcc", "svd"))
    n_coils = kspace.shape[-3]
    n_virtual = check_int(n_virtual, "n_virtual", low=1, high=n_coils)
    readout_dim = check_choice(readout_dim, "readout_dim", (-1, -2))
    if calib is not None:
        calib = check_int(calib, "calib", low=1, high=kspace.shape[-2] if readout_dim == -1 else kspace.shape[-1])
    batched = kspace.ndim == 4
    k = kspace if batched else kspace[None]
    if readout_dim == -2:
        k = k.transpose(-2, -1)  # readout last from here on
    return k, n_virtual, method, calib, batched


def _calib_rows(k: torch.Tensor, calib: int | None) -> torch.Tensor:
    """Central ``calib`` phase-encode rows (axis -2) of ``k``; all rows when None."""
    if calib is None:
        return k
    n = k.shape[-2]
    start = n // 2 - calib // 2
    return k[..., start : start + calib, :]


def _top_eigvecs(cov: torch.Tensor, n: int) -> torch.Tensor:
    """Leading ``n`` eigenvectors of Hermitian ``cov`` (..., C, C) as rows: (..., n, C) = U_n^H."""
    _, vecs = torch.linalg.eigh(cov.to(torch.complex128))  # ascending; float64 for accuracy
    vecs = vecs.flip(-1)[..., :n]
    return vecs.conj().transpose(-2, -1)


def _ifft1c(k: torch.Tensor, dim: int = -1) -> torch.Tensor:
    k = torch.fft.ifftshift(k, dim=dim)
    k = torch.fft.ifft(k, dim=dim, norm="ortho")
    return torch.fft.fftshift(k, dim=dim)


def _fft1c(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = torch.fft.ifftshift(x, dim=dim)
    x = torch.fft.fft(x, dim=dim, norm="ortho")
    return torch.fft.fftshift(x, dim=dim)


def compression_matrices(kspace, n_virtual: int, method: str = "gcc", calib: int | None = None, readout_dim: int = -1) -> torch.Tensor:
    """Coil-compression matrices (rows = virtual coils, with orthonormal rows).

    SVD: the ``V`` leading left singular vectors of the calibration data (all coils x all
    calibration samples). GCC (Zhang et al. 2013): the data are inverse-Fourier transformed
    along the readout (hybrid space); for each readout position ``x`` the ``V`` leading
    left singular vectors of the calibration data at that ``x`` give ``A_x``; then, going
    along the readout, each ``A_x`` is replaced by ``P_x A_x`` with the unitary ``P_x``
    closest to ``A_{x-1}`` (orthogonal Procrustes: ``A_x A_{x-1}^H = U S V^H``, ``P_x = V U^H``),
    so that the virtual coils vary smoothly along x.

    Args:
        kspace: ``(C, H, W)`` or ``(B, C, H, W)`` complex k-space (centred).
        n_virtual: number of virtual coils ``V`` (1..C).
        method: ``"gcc"`` or ``"svd"``.
        calib: number of central phase-encode lines to calibrate from (these must be fully
            sampled); None uses all lines (fully sampled data).
        readout_dim: the fully sampled readout axis, -1 (W) or -2 (H).

    Returns:
        SVD: ``(V, C)`` (``(B, V, C)`` for batched input). GCC: ``(N, V, C)`` (``(B, N, V, C)``)
        with ``N`` the readout length.
    """
    k, n_virtual, method, calib, batched = _prep_compress(kspace, n_virtual, method, calib, readout_dim)
    if method == "svd":
        d = _calib_rows(k, calib).reshape(k.shape[0], k.shape[1], -1)
        cov = d @ d.conj().transpose(-2, -1)
        mats = _top_eigvecs(cov, n_virtual)
    else:
        h = _ifft1c(_calib_rows(k, calib), dim=-1)  # (B, C, ky, x)
        hx = h.permute(0, 3, 1, 2)  # (B, x, C, ky)
        cov = hx @ hx.conj().transpose(-2, -1)  # (B, x, C, C)
        mats = _top_eigvecs(cov, n_virtual).clone()  # (B, x, V, C)
        for x in range(1, mats.shape[1]):
            c = mats[:, x] @ mats[:, x - 1].conj().transpose(-2, -1)  # (B, V, V)
            u, _, vh = torch.linalg.svd(c)
            p = vh.conj().transpose(-2, -1) @ u.conj().transpose(-2, -1)
            mats[:, x] = p @ mats[:, x]
    mats = mats.to(k.dtype)
    return mats if batched else mats[0]


def compress(kspace, n_virtual: int, method: str = "gcc", calib: int | None = None, readout_dim: int = -1) -> torch.Tensor:
    """Compress multi-coil k-space to ``n_virtual`` virtual coils (SVD or GCC).

    Args:
        kspace: ``(C, H, W)`` or ``(B, C, H, W)`` complex k-space, centred like ``fft2c``.
        n_virtual: number of virtual coils (the paper: 32 -> 8 with GCC).
        method: ``"gcc"`` (Zhang et al. 2013) or ``"svd"``.
        calib: central phase-encode lines used for calibration (None: all lines).
        readout_dim: the fully sampled readout axis, -1 or -2.

    Returns:
        ``(V, H, W)`` or ``(B, V, H, W)`` compressed k-space (same dtype). Both methods are
        unitary maps restricted to V rows, so with ``V = C`` the energy is unchanged.
    """
    mats = compression_matrices(kspace, n_virtual, method, calib, readout_dim)
    k, _, method, _, batched = _prep_compress(kspace, n_virtual, method, calib, readout_dim)
    if not batched:
        mats = mats[None]
    mats = mats.to(k.dtype)
    if method == "svd":
        out = torch.einsum("bvc,bcyx->bvyx", mats, k)
    else:
        h = _ifft1c(k, dim=-1)
        out = _fft1c(torch.einsum("bxvc,bcyx->bvyx", mats, h), dim=-1)
    if readout_dim == -2:
        out = out.transpose(-2, -1)
    out = out.contiguous()
    return out if batched else out[0]
