"""Tests for mrtl.coils: birdcage maps, ESPIRiT (sigpy backend), SVD and GCC compression."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mrtl.coils import birdcage_maps, compress, compression_matrices, espirit_maps
from mrtl.fft import fft2c

N = 96


@pytest.fixture(scope="module")
def phantom():
    d = np.load(Path(__file__).resolve().parents[1] / "data" / "t1_colin27.npz")
    img = d["images"][60].astype(np.float32)
    from skimage.transform import resize

    img = resize(img, (N, N), anti_aliasing=True).astype(np.float32)
    return torch.from_numpy(img / np.percentile(img, 99)).to(torch.complex64)


def test_birdcage_matches_sigpy():
    import sigpy.mri as mr

    m = birdcage_maps(8, (32, 40))
    assert m.shape == (8, 32, 40) and m.dtype == torch.complex64
    np.testing.assert_allclose(m.numpy(), mr.birdcage_maps((8, 32, 40), r=1.5), rtol=1e-5, atol=1e-6)


def test_espirit_recovers_birdcage_maps(phantom):
    """|correlation| between ESPIRiT and true maps (over coils, per pixel) > 0.99 inside the
    object: the maps agree up to a common phase. This also checks the FFT convention: a
    shifted k-space would give maps that do not match."""
    maps = birdcage_maps(8, (N, N))
    k = fft2c(maps * phantom)
    est = espirit_maps(k, calib=24)
    assert est.shape == (8, N, N)
    inside = phantom.abs() > 0.1
    num = (est.conj() * maps).sum(0).abs()
    den = est.abs().pow(2).sum(0).sqrt() * maps.abs().pow(2).sum(0).sqrt()
    corr = num[inside] / den[inside]
    assert float(corr.min()) > 0.99, float(corr.min())


def test_espirit_bad_inputs(phantom):
    maps = birdcage_maps(4, (N, N))
    k = fft2c(maps * phantom)
    with pytest.raises(ValueError, match="calib"):
        espirit_maps(k, calib=6, kernel_size=6)
    with pytest.raises(TypeError, match="complex"):
        espirit_maps(k.real)


@pytest.fixture(scope="module")
def kspace16(phantom):
    maps = birdcage_maps(16, (N, N), r=1.2)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(16, N, N, dtype=torch.complex64, generator=g)
    return fft2c(maps * phantom) + noise


@pytest.mark.parametrize("V", [2, 4, 8])
def test_gcc_keeps_at_least_svd_energy(kspace16, V):
    e = kspace16.abs().pow(2).sum()
    e_svd = compress(kspace16, V, "svd").abs().pow(2).sum() / e
    e_gcc = compress(kspace16, V, "gcc").abs().pow(2).sum() / e
    assert e_gcc >= e_svd * (1 - 1e-5), (float(e_gcc), float(e_svd))
    assert e_svd <= 1 + 1e-4 and e_gcc <= 1 + 1e-4


def test_svd_compression_matches_numpy_svd(kspace16):
    """SVD compression keeps exactly the energy of the V largest singular values."""
    V = 4
    s = np.linalg.svd(kspace16.numpy().reshape(16, -1).astype(np.complex128), compute_uv=False)
    e = compress(kspace16, V, "svd").abs().pow(2).sum() / kspace16.abs().pow(2).sum()
    np.testing.assert_allclose(float(e), (s[:V] ** 2).sum() / (s**2).sum(), rtol=1e-4)


def test_compression_matrices_unitary_and_aligned(kspace16):
    m = compression_matrices(kspace16, 4, "gcc").to(torch.complex128)
    assert m.shape == (N, 4, 16)
    eye = torch.eye(4, dtype=m.dtype)
    torch.testing.assert_close(m @ m.conj().transpose(-2, -1), eye.expand(N, 4, 4), rtol=1e-4, atol=1e-4)
    # alignment: neighbouring matrices are closer than without the Procrustes step
    k = kspace16.to(torch.complex128)
    h = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=-1), dim=-1, norm="ortho"), dim=-1)
    cov = torch.einsum("cyx,dyx->xcd", h, h.conj())
    raw = torch.linalg.eigh(cov)[1].flip(-1)[..., :4].conj().transpose(-2, -1)
    d_aligned = (m[1:] - m[:-1]).abs().pow(2).sum()
    d_raw = (raw[1:] - raw[:-1]).abs().pow(2).sum()
    assert d_aligned < d_raw


def test_full_compression_is_lossless(kspace16):
    for method in ("svd", "gcc"):
        c = compress(kspace16, 16, method)
        np.testing.assert_allclose(float(c.to(torch.complex128).norm()), float(kspace16.to(torch.complex128).norm()), rtol=1e-5)


def test_compress_batched_and_readout_dim(kspace16):
    b = torch.stack([kspace16, 2 * kspace16])
    out = compress(b, 4, "gcc")
    assert out.shape == (2, 4, N, N)
    torch.testing.assert_close(out[0], compress(kspace16, 4, "gcc"))
    t = compress(kspace16.transpose(-2, -1), 4, "gcc", readout_dim=-2)
    torch.testing.assert_close(t.transpose(-2, -1), compress(kspace16, 4, "gcc"), rtol=1e-4, atol=1e-4)


def test_compress_bad_inputs(kspace16):
    with pytest.raises(ValueError, match="n_virtual"):
        compress(kspace16, 17)
    with pytest.raises(ValueError, match="method"):
        compress(kspace16, 4, method="pca")
    with pytest.raises(ValueError, match="readout_dim"):
        compress(kspace16, 4, readout_dim=0)


def test_coil_last_arrays_are_refused():
    """Regression: (H, W, C) k-space was read as H coils of W x C images."""
    from mrtl.fft import fft2c

    k = fft2c(birdcage_maps(4, (64, 64)))
    with pytest.raises(ValueError, match=r"kspace: shape \(64, 64, 4\) looks coil-last .*permute\(2, 0, 1\)"):
        compress(k.permute(1, 2, 0), 2)
    with pytest.raises(ValueError, match=r"looks coil-last .*permute\(0, 3, 1, 2\)"):
        compress(k.permute(1, 2, 0)[None], 2)
    with pytest.raises(ValueError, match="coil-last"):
        espirit_maps(k.permute(1, 2, 0), calib=16)
    assert compress(k, 2).shape == (2, 64, 64)  # coils first is fine


@pytest.mark.skipif(shutil.which("bart") is None, reason="the `bart` binary is not installed (Debian package bart)")
def test_gcc_matches_bart(kspace16, tmp_path):
    import subprocess

    def write_cfl(name, arr):
        arr = np.asarray(arr, dtype=np.complex64)
        with open(f"{name}.hdr", "w") as f:
            f.write("# Dimensions\n" + " ".join(str(s) for s in arr.shape) + "\n")
        arr.T.tofile(f"{name}.cfl")

    def read_cfl(name):
        dims = [int(s) for s in open(f"{name}.hdr").read().split("\n")[1].split()]
        a = np.fromfile(f"{name}.cfl", dtype=np.complex64)
        return a.reshape(dims, order="F")

    # bart dims: (readout x, phase y, z, coils); mrtl: (C, H=phase, W=readout)
    k = kspace16.numpy().transpose(2, 1, 0)[:, :, None, :]
    write_cfl(tmp_path / "k", k)
    subprocess.run(["bart", "cc", "-G", "-p", "4", "-A", str(tmp_path / "k"), str(tmp_path / "c")], check=True)
    c = read_cfl(tmp_path / "c")
    e_bart = (np.abs(c) ** 2).sum() / (np.abs(k) ** 2).sum()
    e_ours = float(compress(kspace16, 4, "gcc").abs().pow(2).sum() / kspace16.abs().pow(2).sum())
    assert e_ours >= e_bart - 1e-3, (e_ours, e_bart)
