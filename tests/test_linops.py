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
