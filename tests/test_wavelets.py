"""mrtl.wavelets against PyWavelets (periodization mode) and against the orthogonality properties."""

import warnings

import numpy as np
import pytest
import pywt
import torch

import mrtl.wavelets as mw
from mrtl.wavelets import WaveletTransform, available_wavelets, max_level, wavedec2, waverec2

SHAPES = [(32, 32), (16, 64), (48, 8)]  # square and non-square, all even
WAVELETS = ["db1", "db2", "db4", "db8"]


def _levels(shape):
    """Levels 1 .. the deepest one the size allows (beyond pywt's max_level as well)."""
    return range(1, min(mw._divisible_level(shape[0]), mw._divisible_level(shape[1])) + 1)


def _pywt_dec(x, wavelet, level):
    with warnings.catch_warnings():  # pywt warns for levels beyond its max_level
        warnings.simplefilter("ignore", UserWarning)
        return pywt.wavedec2(x, wavelet, mode="periodization", level=level, axes=(-2, -1))


def _pywt_packed(x, wavelet, level):
    flat = x.reshape(-1, *x.shape[-2:])
    arr = np.stack([pywt.coeffs_to_array(_pywt_dec(xi, wavelet, level))[0] for xi in flat])
    return arr.reshape(x.shape)


@pytest.fixture(params=["dense", "conv"])
def backend(request, monkeypatch):
    """Run each test through both step implementations (GEMM for short axes, conv2d for long)."""
    if request.param == "conv":
        monkeypatch.setattr(mw, "_DENSE_MAX", 0)
    return request.param


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_wavedec2_equals_pywt_float64(wavelet, shape, backend):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *shape))
    for level in _levels(shape):
        ours = wavedec2(torch.from_numpy(x), wavelet, level)
        ref = _pywt_dec(x, wavelet, level)
        assert len(ours) == len(ref) == level + 1
        np.testing.assert_allclose(ours[0].numpy(), ref[0], atol=1e-10, rtol=0)
        for d_ours, d_ref in zip(ours[1:], ref[1:]):
            for a, b in zip(d_ours, d_ref):  # cH, cV, cD in pywt's order
                assert a.shape == b.shape
                np.testing.assert_allclose(a.numpy(), b, atol=1e-10, rtol=0)
        # the packed layout equals pywt.coeffs_to_array
        packed = WaveletTransform(shape, wavelet, level).forward(torch.from_numpy(x))
        np.testing.assert_allclose(packed.numpy(), _pywt_packed(x, wavelet, level), atol=1e-10, rtol=0)


@pytest.mark.parametrize("wavelet", ["db1", "db4", "db8", "sym4", "coif2"])
def test_packed_float32_equals_pywt(wavelet, backend):
    rng = np.random.default_rng(1)
    shape = (32, 64)
    x = rng.standard_normal((3, *shape)).astype(np.float32)
    for level in (1, 3, max_level(shape, wavelet)):
        W = WaveletTransform(shape, wavelet, level)
        c = W.forward(torch.from_numpy(x))
        assert c.dtype == torch.float32
        ref = _pywt_packed(x.astype(np.float64), wavelet, level)
        err = np.linalg.norm(c.numpy() - ref) / np.linalg.norm(ref)
        assert err < 1e-4, err
        np.testing.assert_allclose(c.numpy(), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)


@pytest.mark.parametrize("wavelet", WAVELETS)
@pytest.mark.parametrize("shape", SHAPES)
def test_exact_reconstruction(wavelet, shape, backend):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, *shape, dtype=torch.float64, generator=gen)
    x0 = x.clone()
    for level in [0, *_levels(shape)]:
        W = WaveletTransform(shape, wavelet, level)
        torch.testing.assert_close(W.inverse(W.forward(x)), x, atol=1e-12, rtol=0)
        torch.testing.assert_close(waverec2(wavedec2(x, wavelet, level), wavelet), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(x, x0, atol=0, rtol=0)  # inputs are not modified


def test_waverec2_accepts_pywt_coefficients():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 32))
    coeffs = _pywt_dec(x, "db4", 2)
    rec = waverec2(coeffs, "db4")
    np.testing.assert_allclose(rec.numpy(), x, atol=1e-12)
    np.testing.assert_allclose(rec.numpy(), pywt.waverec2(coeffs, "db4", mode="periodization"), atol=1e-12)


@pytest.mark.parametrize("wavelet", ["db1", "db4", "db8"])
def test_unitarity_and_adjoint(wavelet, backend):
    """||W x|| = ||x|| and <W x, y> = <x, W^H y> for complex x, y (W is orthogonal)."""
    gen = torch.Generator().manual_seed(4)
    shape = (32, 16)
    W = WaveletTransform(shape, wavelet, level=3)
    x = torch.randn(4, *shape, dtype=torch.complex128, generator=gen)
    y = torch.randn(4, *shape, dtype=torch.complex128, generator=gen)
    Wx = W.forward(x)
    torch.testing.assert_close(torch.linalg.vector_norm(Wx), torch.linalg.vector_norm(x), atol=1e-10, rtol=0)
    lhs = torch.vdot(Wx.flatten(), y.flatten())
    rhs = torch.vdot(x.flatten(), W.adjoint(y).flatten())
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    # the transform is a real matrix with orthonormal columns: W^T W = I on a basis
    n = shape[0] * shape[1]
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    M = W.forward(eye).reshape(n, n)
    torch.testing.assert_close(M @ M.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)


def test_complex_input_is_real_and_imag_parts():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 16, dtype=torch.complex64, generator=gen)
    W = WaveletTransform((16, 16), "db2", 2)
    c = W.forward(x)
    assert c.dtype == torch.complex64 and c.shape == x.shape
    torch.testing.assert_close(c.real, W.forward(x.real.contiguous()))
    torch.testing.assert_close(c.imag, W.forward(x.imag.contiguous()))
    ref = _pywt_packed(x.numpy().astype(np.complex128), "db2", 2)
    np.testing.assert_allclose(c.numpy(), ref, atol=1e-5)
    coeffs = wavedec2(x, "db2", 2)
    assert all(t.dtype == torch.complex64 for t in [coeffs[0], *coeffs[1], *coeffs[2]])
    torch.testing.assert_close(waverec2(coeffs, "db2"), x, atol=1e-5, rtol=0)


def test_batching_over_leading_dims():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 16, 32, dtype=torch.float64, generator=gen)
    W = WaveletTransform((16, 32), "db4", 2)
    c = W.forward(x)
    assert c.shape == x.shape
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(c[i, j], W.forward(x[i, j]), atol=1e-13, rtol=0)
    unbatched = wavedec2(x[1, 2], "db4", 2)
    batched = wavedec2(x, "db4", 2)
    torch.testing.assert_close(batched[0][1, 2], unbatched[0])
    torch.testing.assert_close(batched[1][2][1, 2], unbatched[1][2])


def test_numpy_input_accepted():
    x = np.random.default_rng(7).standard_normal((8, 8))
    c = WaveletTransform((8, 8), "db1", 1).forward(x)
    np.testing.assert_allclose(c.numpy(), _pywt_packed(x, "db1", 1), atol=1e-12)


def test_shift_roundtrip_and_definition():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 32, 32, dtype=torch.complex128, generator=gen)
    W = WaveletTransform((32, 32), "db4", 3)
    for shift in [(0, 0), (3, -5), (-1, 31), (40, 7)]:
        c = W.forward(x, shift=shift)
        torch.testing.assert_close(c, W.forward(torch.roll(x, shift, dims=(-2, -1))))
        torch.testing.assert_close(W.inverse(c, shift=shift), x, atol=1e-12, rtol=0)
        # still an orthogonal transform: the shifted adjoint is the shifted inverse
        y = torch.randn(2, 32, 32, dtype=torch.complex128, generator=gen)
        lhs = torch.vdot(c.flatten(), y.flatten())
        rhs = torch.vdot(x.flatten(), W.adjoint(y, shift=shift).flatten())
        assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    # a shift that is not a multiple of 2**level changes the coefficients (it is not a no-op)
    assert not torch.allclose(W.forward(x, shift=(1, 0)), W.forward(x))
    # a shift by a multiple of 2**level permutes coefficients within each subband
    c8 = W.forward(x, shift=(8, 0))
    c0 = W.forward(x)
    torch.testing.assert_close(c8[..., 16:32, :16], torch.roll(c0[..., 16:32, :16], 4, dims=-2))


def test_max_level_matches_pywt():
    for wavelet in ["db1", "db2", "db4", "db8"]:
        for shape in [(256, 256), (320, 320), (64, 128), (16, 16)]:
            divisible = min(int(np.log2(s & -s)) for s in shape)  # 2-adic valuation
            assert max_level(shape, wavelet) == min(pywt.dwtn_max_level(shape, wavelet), divisible)
    assert max_level((256, 256), "db4") == pywt.dwtn_max_level((256, 256), "db4") == 5
    assert max_level((320, 320), "db4") == 5
    assert max_level((320, 320), "db1") == 6  # pywt says 8, but 320 = 2**6 * 5
    # capped by divisibility: 200 = 8 * 25
    assert max_level((200, 200), "db1") == 3
    assert WaveletTransform((200, 200), "db1").level == 3


def test_all_listed_wavelets_are_orthogonal_and_include_db1_to_db8():
    names = available_wavelets()
    for k in range(1, 9):
        assert f"db{k}" in names
    assert "bior2.2" not in names


@pytest.mark.parametrize("wavelet", ["db3", "db5", "db6", "db7", "sym8", "coif3", "haar"])
def test_other_orthogonal_wavelets(wavelet):
    x = np.random.default_rng(9).standard_normal((32, 64))
    level = 2
    c = WaveletTransform((32, 64), wavelet, level).forward(torch.from_numpy(x))
    np.testing.assert_allclose(c.numpy(), _pywt_packed(x, wavelet, level), atol=1e-10)


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match=r"wavelet: .*'db4'.*got 'bior2.2'.*db8"):
        WaveletTransform((16, 16), "bior2.2")
    with pytest.raises(ValueError, match="wavelet: .*got 'nope'"):
        wavedec2(torch.zeros(8, 8), "nope")
    with pytest.raises(TypeError, match="wavelet: "):
        max_level((8, 8), 4)
    with pytest.raises(ValueError, match=r"level: image size \(20, 24\) must be divisible by 2\*\*level = 8"):
        WaveletTransform((20, 24), "db1", 3)
    with pytest.raises(ValueError, match="level: expected an integer >= 0"):
        wavedec2(torch.zeros(8, 8), "db1", -1)
    with pytest.raises(TypeError, match="level: "):
        wavedec2(torch.zeros(8, 8), "db1", 1.5)
    with pytest.raises(ValueError, match="shape: "):
        WaveletTransform((0, 8))
    W = WaveletTransform((16, 16), "db2", 2)
    with pytest.raises(ValueError, match=r"x: expected trailing shape \(16, 16\)"):
        W.forward(torch.zeros(16, 8))
    with pytest.raises(ValueError, match=r"c: expected trailing shape"):
        W.inverse(torch.zeros(8, 16))
    with pytest.raises(ValueError, match="x: contains 1 NaN/Inf"):
        x = torch.zeros(16, 16)
        x[3, 4] = float("nan")
        W.forward(x)
    with pytest.raises(TypeError, match="x: expected a floating or complex tensor"):
        W.forward(torch.zeros(16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="x: expected at least 2 dimensions"):
        wavedec2(torch.zeros(16), "db1")
    with pytest.raises(TypeError, match="shift: expected a pair of integers"):
        W.forward(torch.zeros(16, 16), shift=(1.5, 2))
    with pytest.raises(ValueError, match=r"coeffs\[1\]: expected detail arrays of shape"):
        waverec2([torch.zeros(4, 4), (torch.zeros(4, 4), torch.zeros(4, 4), torch.zeros(2, 2))], "db1")


def test_gradients_flow():
    W = WaveletTransform((16, 16), "db4", 2)
    x = torch.randn(2, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(10), requires_grad=True)
    (W.forward(x) ** 2).sum().backward()  # ||W x||^2 = ||x||^2 -> gradient 2 x
    torch.testing.assert_close(x.grad, 2 * x.detach(), atol=1e-12, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.float64])
def test_cuda_matches_cpu(dtype, backend):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 64, 32, dtype=dtype, generator=gen)
    W = WaveletTransform((64, 32), "db4", 3)
    c_cpu = W.forward(x)
    c_gpu = W.forward(x.cuda())
    assert c_gpu.device.type == "cuda" and c_gpu.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(c_gpu.cpu(), c_cpu, atol=tol, rtol=tol)
    torch.testing.assert_close(W.inverse(c_gpu).cpu(), x, atol=tol, rtol=tol)
    coeffs = wavedec2(x.cuda(), "db4", 3)
    assert all(t.device.type == "cuda" for t in [coeffs[0], *coeffs[1]])


def test_shared_adjoint_helper():
    from helpers import check_adjoint

    W = WaveletTransform((16, 32), "db4", 2)
    check_adjoint(W, (3, 16, 32), dtype=torch.complex128)
    check_adjoint(W, (3, 16, 32), dtype=torch.float64)


@pytest.mark.parametrize("level", [0, 1, 3])
def test_shift_folded_into_matrices_equals_roll(level, backend):
    """The cyclic shift is folded into the level-1 matrices (dense) or applied by the step
    (conv): both must equal the definition, roll then transform, and invert exactly."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(3, 16, 24, dtype=torch.float64, generator=gen)
    W = WaveletTransform((16, 24), "db2", level)
    for shift in [(5, -7), (-3, 0), (0, 11)]:
        c = W.forward(x, shift=shift)
        ref = _pywt_packed(torch.roll(x, shift, dims=(-2, -1)).numpy(), "db2", level) if level else None
        if level:
            np.testing.assert_allclose(c.numpy(), ref, atol=1e-10, rtol=0)
        else:
            torch.testing.assert_close(c, torch.roll(x, shift, dims=(-2, -1)))
        torch.testing.assert_close(W.inverse(c, shift=shift), x, atol=1e-12, rtol=0)


def test_nan_detected_by_fast_check():
    W = WaveletTransform((8, 8), "db1", 1)
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.zeros(2, 8, 8)
        x[1, 3, 4] = bad
        with pytest.raises(ValueError, match="x: contains 1 NaN/Inf"):
            W.forward(x)
    # finite values whose sum overflows are accepted (the exact check decides)
    big = torch.full((2, 8, 8), 3e38, dtype=torch.float32)
    assert torch.isfinite(W.forward(big.double())).all()
    W.forward(big)  # no error
