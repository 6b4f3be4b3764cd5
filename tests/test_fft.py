"""mrtl.fft: centred orthonormal FFTs against sigpy, unitarity and inversion."""

import numpy as np
import pytest
import sigpy
import torch

from helpers import check_adjoint, random_complex
from mrtl.fft import fft2c, ifft2c

SHAPES = [(8, 8), (7, 9), (16, 5), (3, 12, 10), (2, 3, 11, 13)]


class _FFT:
    forward = staticmethod(fft2c)
    adjoint = staticmethod(ifft2c)


@pytest.mark.parametrize("shape", SHAPES)
def test_fft2c_matches_sigpy(shape):
    x = random_complex(shape, seed=1)
    ref = sigpy.fft(x.numpy(), axes=(-2, -1), center=True, norm="ortho")
    np.testing.assert_allclose(fft2c(x).numpy(), ref, rtol=0, atol=1e-12)
    ref_inv = sigpy.ifft(x.numpy(), axes=(-2, -1), center=True, norm="ortho")
    np.testing.assert_allclose(ifft2c(x).numpy(), ref_inv, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_inverse_and_norm(shape):
    x = random_complex(shape, seed=2)
    torch.testing.assert_close(ifft2c(fft2c(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(fft2c(ifft2c(x)), x, rtol=0, atol=1e-12)
    n = torch.linalg.vector_norm(x)
    torch.testing.assert_close(torch.linalg.vector_norm(fft2c(x)), n, rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.linalg.vector_norm(ifft2c(x)), n, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9)])
def test_fft_adjoint_is_inverse(shape):
    check_adjoint(_FFT(), shape)


@pytest.mark.parametrize("shape", [(8, 8), (7, 9), (6, 11)])
def test_dc_at_centre_index(shape):
    """A constant image puts all its energy at (H // 2, W // 2)."""
    x = torch.ones(shape, dtype=torch.complex128)
    k = fft2c(x)
    h, w = shape
    assert abs(k[h // 2, w // 2] - np.sqrt(h * w)) < 1e-10
    k[h // 2, w // 2] = 0
    assert float(k.abs().max()) < 1e-10


def test_dtype_kept():
    x = random_complex((4, 6), dtype=torch.complex64)
    assert fft2c(x).dtype == torch.complex64
    assert ifft2c(x.to(torch.complex128)).dtype == torch.complex128
