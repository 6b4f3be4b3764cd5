"""mrtl.linops: adjoint tests for every operator, agreement with sigpy's SENSE operator, shapes."""

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from helpers import check_adjoint, check_linear, random_complex
from mrtl.fft import fft2c, ifft2c
from mrtl.linops import (
    LinearOperator,
    MultiCoilFourier,
    SingleCoilFourier,
    coil_combine,
    rss,
    sense_expand,
    zero_filled,
)
from mrtl.masks import poisson_disc

H, W, C, B = 24, 20, 4, 3


@pytest.fixture(scope="module")
def mask():
    return poisson_disc((H, W), 3, calib=6, seed=0)


@pytest.fixture(scope="module")
def masks():
    return torch.stack([poisson_disc((H, W), 3, calib=6, seed=s) for s in range(B)])


@pytest.fixture(scope="module")
def maps():
    return random_complex((C, H, W), seed=7)


class _Fn:
    """Wrap a pair of functions as an operator for check_adjoint."""

    def __init__(self, f, fh):
        self.forward, self.adjoint = f, fh


@pytest.mark.parametrize("xshape", [(H, W), (B, H, W), (2, B, H, W)])
def test_single_coil_adjoint(mask, xshape):
    A = SingleCoilFourier(mask)
    check_adjoint(A, xshape)
    check_adjoint(A.H, xshape)
    check_linear(A, xshape)


def test_single_coil_batched_mask_adjoint(masks):
    A = SingleCoilFourier(masks)
    check_adjoint(A, (B, H, W))
    y = A(random_complex((B, H, W)))
    for b in range(B):  # each slice gets its own mask
        assert bool((y[b][~masks[b]] == 0).all())


@pytest.mark.parametrize("batched_mask", [False, True])
@pytest.mark.parametrize("batched_maps", [False, True])
def test_multi_coil_adjoint(mask, masks, maps, batched_mask, batched_maps):
    m = masks if batched_mask else mask
    s = random_complex((B, C, H, W), seed=3) if batched_maps else maps
    A = MultiCoilFourier(m, s)
    check_adjoint(A, (B, H, W))
    check_adjoint(A.H, (B, C, H, W))
    check_linear(A, (B, H, W))
    assert A.H.H is A


def test_multi_coil_complex64_maps_promoted(mask, maps):
    check_adjoint(MultiCoilFourier(mask, maps.to(torch.complex64)), (B, H, W))


@pytest.mark.parametrize("batched", [False, True])
def test_sense_expand_and_coil_combine_adjoint(maps, batched):
    s = random_complex((B, C, H, W), seed=5) if batched else maps
    check_adjoint(_Fn(lambda x: sense_expand(x, s), lambda y: coil_combine(y, s)), (B, H, W))


def test_zero_filled_is_adjoint(mask, maps):
    A = MultiCoilFourier(mask, maps)
    k = random_complex((B, C, H, W), seed=9)
    torch.testing.assert_close(zero_filled(k, mask, maps), A.H(k))
    check_adjoint(_Fn(lambda x: A(x), lambda y: zero_filled(y, mask, maps)), (B, H, W))
    A1 = SingleCoilFourier(mask)
    k1 = random_complex((B, H, W), seed=10)
    torch.testing.assert_close(zero_filled(k1, mask), A1.H(k1))
    # without a mask the k-space is taken as given; without maps coil images come back
    torch.testing.assert_close(zero_filled(k), ifft2c(k))


def test_zero_filled_batched_mask_over_coils(masks, maps):
    k = random_complex((B, C, H, W), seed=11)
    out = zero_filled(k, masks)
    ref = ifft2c(k * masks[:, None])
    torch.testing.assert_close(out, ref)


def test_multi_coil_matches_sigpy_sense(mask, maps):
    """A = M F S equals sigpy.mri.linop.Sense(maps, weights=mask) (centred, orthonormal FFT)."""
    x = random_complex((H, W), seed=12)
    ours = MultiCoilFourier(mask, maps)(x).numpy()
    S = sigpy.mri.linop.Sense(maps.numpy(), weights=mask.numpy().astype(np.float64))
    theirs = S(x.numpy())
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    y = random_complex((C, H, W), seed=13)
    np.testing.assert_allclose(MultiCoilFourier(mask, maps).H(y).numpy(), S.H(y.numpy() * mask.numpy()), atol=1e-10)


def test_fully_sampled_single_coil_is_unitary():
    full = torch.ones(H, W, dtype=torch.bool)
    x = random_complex((B, H, W), seed=14)
    A = SingleCoilFourier(full)
    torch.testing.assert_close(A.H(A(x)), x)
    torch.testing.assert_close(A(x), fft2c(x))


def test_normal_is_projection(mask):
    """A^H A for A = M F is an orthogonal projection: idempotent, norm non-increasing."""
    A = SingleCoilFourier(mask)
    x = random_complex((B, H, W), seed=15)
    n1 = A.normal(x)
    torch.testing.assert_close(A.normal(n1), n1)
    assert torch.linalg.vector_norm(n1) <= torch.linalg.vector_norm(x)


def test_rss_and_combine_with_normalised_maps():
    """For maps with sum |S|^2 = 1, S^H S x = x and rss(S x) = |x|."""
    s = random_complex((C, H, W), seed=16)
    s = s / torch.sqrt((s.abs() ** 2).sum(0, keepdim=True))
    x = random_complex((B, H, W), seed=17)
    coils = sense_expand(x, s)
    torch.testing.assert_close(coil_combine(coils, s), x)
    torch.testing.assert_close(rss(coils), x.abs())
    torch.testing.assert_close(rss(coils.abs().double()), x.abs())
    torch.testing.assert_close(rss(coils.movedim(-3, 0), dim=0), x.abs())


def test_shapes_and_dtypes(mask, maps):
    A = MultiCoilFourier(mask, maps)
    assert isinstance(A, LinearOperator)
    assert A.ishape == (H, W) and A.oshape == (C, H, W)
    x = random_complex((B, H, W), dtype=torch.complex64)
    y = A(x)
    assert y.dtype == torch.complex128  # maps are complex128 here: promoted
    A64 = MultiCoilFourier(mask, maps.to(torch.complex64))
    assert A64(x).dtype == torch.complex64 and tuple(A64(x).shape) == (B, C, H, W)
    assert SingleCoilFourier(mask)(x).dtype == torch.complex64
    with pytest.raises(ValueError, match="x: expected shape"):
        A(random_complex((B, H + 1, W)))
    with pytest.raises(ValueError, match="y: expected shape"):
        A.H(random_complex((B, C + 1, H, W)))
    with pytest.raises(TypeError, match="x: expected a complex tensor"):
        A(torch.randn(B, H, W))


# -- the operator algebra: composition, .H, .N, prox_l2 (data consistency) -----------------------


def _np_fft2c(x):
    """Centred orthonormal 2D FFT with numpy (an independent reference for fft2c)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _np_ifft2c(k):
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _np_prox(z, y, m, lam, maps=None):
    """Eq. 7-9 with numpy: sampled k-space -> y (lam None) or (F z + lam y) / (1 + lam)."""
    if maps is not None:
        z = z[..., None, :, :] * maps
    k = _np_fft2c(z)
    k = np.where(m, y if lam is None else (k + lam * y) / (1 + lam), k)
    x = _np_ifft2c(k)
    return x if maps is None else (np.conj(maps) * x).sum(-3)


def _ops(mask, masks, maps):
    from mrtl.linops import Sense, Spirit
    from mrtl.wavelets import WaveletTransform

    A1 = SingleCoilFourier(mask)
    Ab = SingleCoilFourier(masks)
    Ac = MultiCoilFourier(mask)  # M F on coil images
    S = Sense(maps)
    Am = MultiCoilFourier(mask, maps)
    G = Spirit(random_complex((C, C, H, W), seed=21))
    Wv = WaveletTransform((24, 16), "db2", level=2, shift=(3, 5))
    return [
        ("single", A1, (B, H, W)),
        ("single batched mask", Ab, (B, H, W)),
        ("single .H", A1.H, (B, H, W)),
        ("single .N", A1.N, (B, H, W)),
        ("coil images", Ac, (B, C, H, W)),
        ("sense", S, (B, H, W)),
        ("multi", Am, (B, H, W)),
        ("multi .N", Am.N, (B, H, W)),
        ("M F @ S", Ac @ S, (B, H, W)),
        ("S^H @ M F^H @ M F @ S", S.H @ Ac.H @ Ac @ S, (B, H, W)),
        ("spirit G", G, (B, C, H, W)),
        ("spirit G.H", G.H, (B, C, H, W)),
        ("M F @ G", Ac @ G, (B, C, H, W)),
        ("wavelet shifted", Wv, (B, 24, 16)),
        ("wavelet shifted .H", Wv.H, (B, 24, 16)),
        ("wavelet @ wavelet.H", Wv @ Wv.H, (B, 24, 16)),
    ]


@pytest.mark.parametrize("i", range(16))
def test_every_operator_passes_the_adjoint_test(mask, masks, maps, i):
    name, op, xshape = _ops(mask, masks, maps)[i]
    check_adjoint(op, xshape)
    check_linear(op, xshape)
    check_adjoint(op.H, tuple(op(random_complex(xshape)).shape))  # .H of every operator, too


def test_composition_normal_and_adjoint_match_numpy(mask, maps):
    """A @ B, .H and .N against numpy's FFT (an independent reference)."""
    from mrtl.linops import Sense

    Am = MultiCoilFourier(mask, maps)
    comp = MultiCoilFourier(mask) @ Sense(maps)
    x = random_complex((B, H, W), seed=30)
    ref = _np_fft2c(x.numpy()[:, None] * maps.numpy()) * mask.numpy()
    np.testing.assert_allclose(comp(x).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(Am(x).numpy(), ref, atol=1e-12)
    y = random_complex((B, C, H, W), seed=31)
    ref_h = (np.conj(maps.numpy()) * _np_ifft2c(y.numpy() * mask.numpy())).sum(-3)
    np.testing.assert_allclose(comp.H(y).numpy(), ref_h, atol=1e-12)
    np.testing.assert_allclose(Am.N(x).numpy(), (np.conj(maps.numpy()) * _np_ifft2c(ref)).sum(-3), atol=1e-12)
    torch.testing.assert_close(Am.normal(x), Am.H(Am(x)))
    N = Am.N
    assert N.H is N  # self-adjoint


def test_composition_shape_mismatch_is_an_error(mask):
    from mrtl.linops import Sense

    with pytest.raises(ValueError, match="A @ B"):
        SingleCoilFourier(mask) @ Sense(random_complex((C, H + 2, W), seed=1))
    with pytest.raises(TypeError):
        SingleCoilFourier(mask) @ torch.ones(H, W)


@pytest.mark.parametrize("lam", [None, 0.5, 4.0])
@pytest.mark.parametrize("kind", ["single", "single batched", "coil images", "maps"])
def test_prox_l2_is_eq7_to_9(mask, masks, maps, lam, kind):
    """prox_l2 against a numpy implementation of Eq. 8-9 (hard and soft), and its defining
    property: it minimises ||x - z||^2 + lam ||A x - y||^2 (the gradient vanishes)."""
    m = masks if kind == "single batched" else mask
    if kind == "maps":
        A, zshape, mm = MultiCoilFourier(mask, maps), (B, H, W), mask.numpy()
    elif kind == "coil images":
        A, zshape, mm = MultiCoilFourier(mask), (B, C, H, W), mask.numpy()
    else:
        A, zshape, mm = SingleCoilFourier(m), (B, H, W), m.numpy()
    z = random_complex(zshape, seed=40)
    y = A(random_complex(zshape, seed=41))
    out = A.prox_l2(z, y, lam)
    ref = _np_prox(z.numpy(), y.numpy(), mm, lam, maps.numpy() if kind == "maps" else None)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    torch.testing.assert_close(A.prox_l2(z, y, lam, validate=False), out)
    if kind != "maps":  # without maps it is the exact proximal step
        if lam is None:  # hard: A x = y and the unsampled part of z is kept
            torch.testing.assert_close(A(out), y)
        else:  # gradient of ||x - z||^2 + lam ||A x - y||^2 is zero
            torch.testing.assert_close(out - z + lam * A.H(A(out) - y), torch.zeros_like(z), atol=1e-12, rtol=0)


def test_prox_l2_errors(mask):
    A = SingleCoilFourier(mask)
    z = random_complex((B, H, W), seed=1)
    with pytest.raises(ValueError, match="lam"):
        A.prox_l2(z, A(z), 0.0)
    with pytest.raises(ValueError, match="y"):
        A.prox_l2(z, A(z)[..., :-1], None)
    with pytest.raises(NotImplementedError, match="prox_l2"):
        A.H.prox_l2(z, z, None)


def test_wavelet_operator_shift_matches_pywt():
    """The shifted wavelet operator is pywt's periodised transform of the rolled image."""
    import pywt

    from mrtl.wavelets import WaveletTransform

    x = random_complex((2, 16, 24), seed=50)
    Wv = WaveletTransform((16, 24), "db2", level=2, shift=(3, -5))
    rolled = np.roll(x.numpy(), (3, -5), axis=(-2, -1))
    ref = np.stack([pywt.coeffs_to_array(pywt.wavedec2(r, "db2", mode="periodization", level=2))[0] for r in rolled])
    np.testing.assert_allclose(Wv(x).numpy(), ref, atol=1e-12)
    torch.testing.assert_close(Wv.H(Wv(x)), x)
    torch.testing.assert_close(Wv.forward(x, shift=(0, 0)), WaveletTransform((16, 24), "db2", level=2)(x))
    g = torch.Generator().manual_seed(0)
    s = Wv.draw_shift(g)
    assert Wv.shift == s and all(0 <= v < 4 for v in s)
    with pytest.raises(TypeError, match="shift"):
        Wv.shift = "a"
