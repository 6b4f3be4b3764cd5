"""Tests for mrtl.recon: L1-wavelet CS, SPIRiT, L1-SPIRiT, parameter selection.

Real data: axial slices of the bundled Colin27 T1 template (``data/t1_colin27.npz``, a real
single-subject T1 acquisition), centre-cropped to 128 x 128 to keep the suite fast, scaled
so that the 99th percentile of the magnitude is 1 (DESIGN.md). Masks: sigpy's Poisson-disc
sampler (an independent reference for the sampling), R = 4, 20 x 20 calibration square.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mrtl.coils import birdcage_maps
from mrtl.fft import fft2c, ifft2c
from mrtl.recon import (
    SpiritKernel,
    cs_l1_wavelet,
    default_spirit_iterations,
    l1_spirit_pocs,
    select_parameters,
    spirit_apply,
    spirit_calibrate,
    zero_filled_sense,
)
from mrtl.recon.spirit import spirit_apply_kspace

DATA = Path(__file__).resolve().parents[1] / "data" / "t1_colin27.npz"
N = 128


def _psnr(recon, ref):
    from skimage.metrics import peak_signal_noise_ratio

    out = []
    for r, t in zip(np.abs(np.asarray(recon)), np.abs(np.asarray(ref))):
        out.append(peak_signal_noise_ratio(t, r, data_range=float(t.max() - t.min())))
    return np.array(out)


@pytest.fixture(scope="module")
def t1_slices():
    d = np.load(DATA)
    imgs = d["images"][[40, 70]].astype(np.float32)
    c0 = (imgs.shape[-1] - N) // 2
    imgs = imgs[:, c0 : c0 + N, c0 : c0 + N]
    imgs /= np.percentile(imgs.reshape(len(imgs), -1), 99, axis=1)[:, None, None]
    return torch.from_numpy(imgs).to(torch.complex64)


def _poisson(shape, R, seed=0, calib=20):
    import sigpy.mri as mr

    m = mr.poisson(shape, R, calib=(calib, calib), seed=seed, dtype=np.complex64)
    return torch.from_numpy(np.abs(m) > 0)


@pytest.fixture(scope="module")
def t1_problem(t1_slices):
    mask = _poisson((N, N), 4)
    y = fft2c(t1_slices) * mask
    return t1_slices, y, mask


# ------------------------------------------------------------------ CS


def test_nlcg_objective_monotone(t1_problem):
    ref, y, mask = t1_problem
    res = cs_l1_wavelet(y, mask, n_iter=25, method="nlcg", random_shift=False)
    h = res.history
    assert h.shape == (2, 25)
    assert bool((h[:, 1:] <= h[:, :-1] * (1 + 1e-9)).all())
    assert bool((h[:, -1] < h[:, 0]).all())


def test_nlcg_tv_objective_monotone(t1_problem):
    ref, y, mask = t1_problem
    h = cs_l1_wavelet(y[:1], mask, n_iter=10, method="nlcg", tv=1e-3, random_shift=False).history
    assert bool((h[:, 1:] <= h[:, :-1] * (1 + 1e-9)).all())


def test_cs_objective_matches_definition(t1_problem):
    """The reported objective equals ||MFx - y||^2 + lam*max|A^H y|*||Psi x||_1 computed with pywt."""
    import pywt

    ref, y, mask = t1_problem
    res = cs_l1_wavelet(y[:1], mask, n_iter=5, method="fista", random_shift=False)
    x = res.image[0].numpy().astype(np.complex128)
    s = np.abs(ifft2c(y[:1]).numpy()).max()
    coeffs = lambda a: pywt.coeffs_to_array(pywt.wavedec2(a, "db4", mode="periodization"))[0]
    l1 = np.abs(coeffs(x.real) + 1j * coeffs(x.imag)).sum()
    data = (np.abs((fft2c(torch.from_numpy(x)).numpy() - y[0].numpy()) * mask.numpy()) ** 2).sum()
    np.testing.assert_allclose(res.history[0, -1].item(), data + 1e-3 * s * l1, rtol=1e-4)


def test_cs_beats_zero_filling(t1_problem):
    """The default solver (FISTA with cycle spinning) at the paper's lam and 80 iterations."""
    ref, y, mask = t1_problem
    zf = _psnr(ifft2c(y), ref)
    cs = _psnr(cs_l1_wavelet(y, mask, n_iter=80).image, ref)
    assert cs.mean() >= zf.mean() + 3.0, (cs, zf)


def test_nlcg_and_fista_reach_the_same_minimum(t1_problem):
    """Two different solvers of the same convex objective (no shifts) agree on its minimum,
    and both improve on zero-filling."""
    ref, y, mask = t1_problem
    a = cs_l1_wavelet(y, mask, n_iter=80, method="nlcg", random_shift=False)
    b = cs_l1_wavelet(y, mask, n_iter=80, method="fista", random_shift=False)
    fa, fb = a.history[:, -1], b.history[:, -1]
    assert bool(((fa - fb).abs() / fb < 5e-2).all()), (fa, fb)  # NLCG on a non-smooth objective: ~2-3% after 80 iterations
    zf = _psnr(ifft2c(y), ref)
    assert _psnr(a.image, ref).mean() > zf.mean() + 1.0


def test_cs_vs_sigpy(t1_problem):
    """Same slices, masks and objective: sigpy minimises 1/2||Ax-y||^2 + lamda||Wx||_1,
    mrtl ||Ax-y||^2 + lam*s||Wx||_1, so lamda = lam*s/2 (s = max|A^H y|)."""
    import sigpy.mri.app as app

    ref, y, mask = t1_problem
    ours = _psnr(cs_l1_wavelet(y, mask, lam=1e-3, n_iter=80).image, ref)
    theirs = []
    for b in range(y.shape[0]):
        s = float(ifft2c(y[b]).abs().max())
        r = app.L1WaveletRecon(
            y[b][None].numpy(), np.ones((1, N, N), np.complex64), 1e-3 * s / 2, weights=mask.numpy().astype(np.float32),
            max_iter=80, show_pbar=False,
        ).run()
        theirs.append(_psnr(np.asarray(r)[None], ref[b : b + 1])[0])
    assert ours.mean() >= np.mean(theirs) - 0.5, (ours, theirs)


def test_cs_unbatched_and_batched_agree(t1_problem):
    ref, y, mask = t1_problem
    a = cs_l1_wavelet(y, mask, n_iter=5, method="nlcg", random_shift=False).image
    b = cs_l1_wavelet(y[1], mask, n_iter=5, method="nlcg", random_shift=False).image
    assert b.shape == (N, N)
    torch.testing.assert_close(a[1], b, rtol=1e-4, atol=1e-5)


def test_cs_scale_invariant(t1_problem):
    """lam is relative to max|A^H y|: scaling the data scales the result."""
    ref, y, mask = t1_problem
    a = cs_l1_wavelet(y[:1], mask, n_iter=10, seed=3).image
    b = cs_l1_wavelet(10 * y[:1], mask, n_iter=10, seed=3).image
    torch.testing.assert_close(10 * a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(
    "kw, match",
    [({"lam": -1e-3}, "lam"), ({"n_iter": 0}, "n_iter"), ({"method": "admm"}, "method"), ({"tv": 1e-3, "method": "fista"}, "tv")],
)
def test_cs_bad_arguments(t1_problem, kw, match):
    ref, y, mask = t1_problem
    with pytest.raises(ValueError, match=match):
        cs_l1_wavelet(y, mask, **kw)


def test_cs_bad_inputs(t1_problem):
    ref, y, mask = t1_problem
    with pytest.raises(ValueError, match="mask"):
        cs_l1_wavelet(y, torch.zeros(N, N, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        cs_l1_wavelet(y, mask[:64])
    bad = y.clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        cs_l1_wavelet(bad, mask)
    with pytest.raises(TypeError, match="complex"):
        cs_l1_wavelet(y.real, mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_cs_cuda_matches_cpu(t1_problem):
    ref, y, mask = t1_problem
    for method in ("nlcg", "fista"):
        a = cs_l1_wavelet(y, mask, n_iter=10, method=method).image
        b = cs_l1_wavelet(y.cuda(), mask.cuda(), n_iter=10, method=method).image
        assert b.is_cuda
        torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ SPIRiT


@pytest.fixture(scope="module")
def multicoil(t1_slices):
    maps = birdcage_maps(8, (N, N))
    img = t1_slices[0]
    k = fft2c(maps * img)
    return img, maps, k


def test_spirit_calibration_reproduces_kspace(multicoil):
    """G calibrated on the 24x24 centre predicts every k-space sample of the fully sampled
    8-coil data from its neighbours (the centre tap excluded): NRMSE < 5%."""
    img, maps, k = multicoil
    K = spirit_calibrate(k, kernel_size=7, tikhonov=1e-2, calib=24)
    assert K.kernel.shape == (8, 8, 7, 7)
    for c in range(8):
        assert K.kernel[c, c, 3, 3] == 0
    gk = spirit_apply_kspace(k, K.kernel, padding="zeros")
    inner = (slice(None), slice(4, -4), slice(4, -4))
    nrmse = float((gk - k)[inner].norm() / k[inner].norm())
    assert nrmse < 0.05, nrmse


def test_spirit_kernel_least_squares_reference(multicoil):
    """Without regularisation the kernel equals numpy's lstsq solution on the same patches."""
    img, maps, k = multicoil
    C, ks, cal = 4, 3, 12
    kc = k[:C, N // 2 - cal // 2 : N // 2 + cal // 2, N // 2 - cal // 2 : N // 2 + cal // 2].numpy().astype(np.complex128)
    K = spirit_calibrate(torch.from_numpy(kc), kernel_size=ks, tikhonov=0.0, calib=cal).kernel.numpy()
    rows = []
    for py in range(cal - ks + 1):
        for px in range(cal - ks + 1):
            rows.append(kc[:, py : py + ks, px : px + ks].reshape(-1))
    A = np.array(rows)
    tgt = 1 * ks * ks + (ks // 2) * ks + ks // 2  # coil 1, centre tap
    keep = np.arange(A.shape[1]) != tgt
    w, *_ = np.linalg.lstsq(A[:, keep], A[:, tgt], rcond=None)
    np.testing.assert_allclose(K[1].reshape(-1)[keep], w, rtol=1e-5, atol=1e-6)


def test_spirit_image_operator_equals_kspace_convolution(multicoil):
    img, maps, k = multicoil
    K = spirit_calibrate(k, calib=24)
    G = K.image_operator((N, N))
    assert G.shape == (8, 8, N, N)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, N, N, dtype=torch.complex64, generator=gen)
    via_k = ifft2c(spirit_apply_kspace(fft2c(x), K.kernel, padding="circular"))
    torch.testing.assert_close(spirit_apply(x, G), via_k, rtol=1e-4, atol=1e-4)


def test_l1_spirit_beats_zero_filled_sense(multicoil):
    img, maps, k = multicoil
    mask = _poisson((N, N), 4, calib=24)
    y = k * mask
    ref = (maps.conj() * maps).sum(0) * img  # S^H S x, the paper's ESPIRiT-combined reference with true maps
    res = l1_spirit_pocs(y, mask, lam=1e-3, maps=maps)
    assert res.coil_images.shape == (8, N, N) and res.image.shape == (N, N)
    assert res.history.shape[-1] == default_spirit_iterations(float(N * N / mask.sum()))
    ours = _psnr(res.image[None], ref[None])[0]
    zf = _psnr(zero_filled_sense(y, mask, maps)[None], ref[None])[0]
    assert ours >= zf + 3.0, (ours, zf)
    # data consistency holds exactly at the sampled positions
    torch.testing.assert_close(fft2c(res.coil_images)[:, mask], y[:, mask], rtol=1e-4, atol=1e-4)


def test_default_spirit_iterations():
    assert [default_spirit_iterations(r) for r in (2, 4, 6, 8, 10)] == [20, 30, 45, 65, 80]
    assert default_spirit_iterations(5) == 38  # halfway between 30 and 45, rounded
    assert default_spirit_iterations(12) == 80


def test_spirit_bad_inputs(multicoil):
    img, maps, k = multicoil
    mask = _poisson((N, N), 4, calib=24)
    with pytest.raises(ValueError, match="calib"):
        spirit_calibrate(k, kernel_size=7, calib=6)
    with pytest.raises(ValueError, match="kernel_size"):
        spirit_calibrate(k, kernel_size=6, calib=24)
    with pytest.raises(ValueError, match="calib"):  # detected calibration square too small
        small = _poisson((N, N), 4, calib=6)
        spirit_calibrate(k * small)
    with pytest.raises(ValueError, match="coils"):
        zero_filled_sense(k * mask, mask, maps[:6])
    with pytest.raises(ValueError, match="coils"):
        l1_spirit_pocs(k * mask, mask, maps=maps[:6])
    with pytest.raises(ValueError, match="lam"):
        l1_spirit_pocs(k * mask, mask, maps=maps, lam=-1.0)
    with pytest.raises(ValueError, match="n_iter"):
        l1_spirit_pocs(k * mask, mask, maps=maps, n_iter=0)
    with pytest.raises(ValueError, match="mask"):
        l1_spirit_pocs(k * mask, torch.zeros(N, N, dtype=torch.bool), maps=maps)
    K6 = SpiritKernel(torch.zeros(6, 6, 7, 7, dtype=torch.complex64), 24, 0.01)
    with pytest.raises(ValueError, match="coils"):
        l1_spirit_pocs(k * mask, mask, kernel=K6, maps=maps)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
def test_l1_spirit_cuda_matches_cpu(multicoil):
    img, maps, k = multicoil
    mask = _poisson((N, N), 4, calib=24)
    K = spirit_calibrate(k * mask)
    a = l1_spirit_pocs(k * mask, mask, kernel=K, maps=maps, n_iter=5).image
    b = l1_spirit_pocs((k * mask).cuda(), mask.cuda(), kernel=K, maps=maps.cuda(), n_iter=5).image
    torch.testing.assert_close(b.cpu(), a, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------ parameter selection


def test_select_parameters_finds_the_best(t1_problem):
    ref, y, mask = t1_problem
    grid = {"lam": [1e-6, 1e-3, 1.0], "n_iter": [30]}
    best, table = select_parameters(cs_l1_wavelet, y[:1], mask, ref[:1], grid=grid)
    assert len(table) == 3 and list(table["psnr_mean"]) == sorted(table["psnr_mean"], reverse=True)
    assert best == {"lam": 1e-3, "n_iter": 30}
    with pytest.raises(ValueError, match="grid"):
        select_parameters(cs_l1_wavelet, y, mask, ref, grid={"lam": []})


def test_fast_soft_thresholds_equal_the_prox():
    """The solvers' in-place soft-thresholds equal the reference prox ``_common.soft_threshold``."""
    from mrtl.recon._common import soft_threshold
    from mrtl.recon.cs import soft_threshold_
    from mrtl.recon.spirit import _joint_soft_threshold_

    gen = torch.Generator().manual_seed(3)
    c = torch.randn(2, 4, 16, 16, dtype=torch.complex128, generator=gen)
    c[0, 0, 0, 0] = 0  # |c| = 0 must give 0, not NaN
    thr = torch.tensor([0.5, 1.2], dtype=torch.float64)[:, None, None, None]
    want = soft_threshold(c, thr, joint_dim=1)
    torch.testing.assert_close(_joint_soft_threshold_(c.clone(), thr), want, atol=1e-12, rtol=0)
    c1 = c[:, 0]
    want1 = soft_threshold(c1, thr[..., 0])
    got = c1.clone()
    l1 = soft_threshold_(got, thr[..., 0])
    torch.testing.assert_close(got, want1, atol=1e-12, rtol=0)
    torch.testing.assert_close(l1, want1.abs().sum(dim=(-2, -1)), atol=1e-10, rtol=0)
    for z in (0.0,):  # threshold 0 is the identity (no NaN from 0/0)
        got = c1.clone()
        soft_threshold_(got, torch.full((2, 1, 1), z, dtype=torch.float64))
        torch.testing.assert_close(got, c1)


def test_spirit_apply_equals_broadcast_definition():
    gen = torch.Generator().manual_seed(4)
    G = torch.randn(2, 3, 3, 8, 8, dtype=torch.complex64, generator=gen)
    x = torch.randn(2, 3, 8, 8, dtype=torch.complex64, generator=gen)
    torch.testing.assert_close(spirit_apply(x, G), (G * x.unsqueeze(-4)).sum(dim=-3))
    torch.testing.assert_close(spirit_apply(x, G[0]), (G[0] * x.unsqueeze(-4)).sum(dim=-3))
