"""Reusable test helpers shared by the test modules.

``check_adjoint`` is the dot-product test for a linear operator: for random ``x`` and ``y``,
``<A x, y> == <x, A^H y>`` (complex inner product, conjugate on the left). It works for any
object with ``forward``/``adjoint`` methods (``mrtl.linops.LinearOperator``,
``mrtl.wavelets.WaveletTransform``) or with ``__call__`` and ``.H``.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["random_complex", "check_adjoint", "check_linear"]


def random_complex(shape: Sequence[int], dtype: torch.dtype = torch.complex128, seed: int = 0) -> torch.Tensor:
    """Standard complex Gaussian test data of ``shape`` (seeded, CPU)."""
    g = torch.Generator().manual_seed(seed)
    real_dtype = torch.float64 if dtype in (torch.complex128, torch.float64) else torch.float32
    re = torch.randn(tuple(shape), generator=g, dtype=real_dtype)
    if not dtype.is_complex:
        return re.to(dtype)
    im = torch.randn(tuple(shape), generator=g, dtype=real_dtype)
    return torch.complex(re, im).to(dtype)


def _forward(op):
    return op.forward if hasattr(op, "forward") else op


def _adjoint(op):
    if hasattr(op, "adjoint"):
        return op.adjoint
    return op.H


def _inner(a: torch.Tensor, b: torch.Tensor) -> complex:
    """<a, b> = sum(conj(a) * b)."""
    a = a.to(torch.complex128) if a.is_complex() or b.is_complex() else a.double()
    b = b.to(a.dtype)
    return complex((a.conj() * b).sum().item())


def check_adjoint(
    op,
    x,
    y=None,
    dtype: torch.dtype = torch.complex128,
    rtol: float = 1e-10,
    seed: int = 0,
) -> tuple[complex, complex]:
    """Assert ``<A x, y> == <x, A^H y>`` for random data.

    Args:
        op: the operator: ``op.forward``/``op.adjoint`` methods, or callable with ``op.H``.
        x: an input tensor, or the input shape (random data of ``dtype`` is drawn).
        y: an output tensor, or an output shape, or None (random data shaped like ``A x``).
        dtype: dtype of the random data (complex128 by default, so that ``rtol`` can be tight).
        rtol: tolerance relative to ``||A x|| ||y||`` (a scale-aware bound on the difference).
        seed: seed for the random data.

    Returns:
        ``(<A x, y>, <x, A^H y>)``.
    """
    if not isinstance(x, torch.Tensor):
        x = random_complex(tuple(x), dtype, seed)
    ax = _forward(op)(x)
    if y is None:
        y = random_complex(tuple(ax.shape), ax.dtype if ax.is_complex() or ax.is_floating_point() else dtype, seed + 1)
    elif not isinstance(y, torch.Tensor):
        y = random_complex(tuple(y), dtype, seed + 1)
    assert tuple(ax.shape) == tuple(y.shape), f"A x has shape {tuple(ax.shape)} but y has {tuple(y.shape)}"
    ahy = _adjoint(op)(y)
    assert tuple(ahy.shape) == tuple(x.shape), f"A^H y has shape {tuple(ahy.shape)} but x has {tuple(x.shape)}"
    lhs = _inner(ax, y)
    rhs = _inner(x, ahy)
    scale = float(torch.linalg.vector_norm(ax.to(torch.complex128)) * torch.linalg.vector_norm(y.to(torch.complex128)))
    assert scale > 0, "adjoint test is vacuous: A x or y is zero"
    assert abs(lhs - rhs) <= rtol * scale, (
        f"adjoint test failed: <Ax, y> = {lhs}, <x, A^H y> = {rhs}, |diff| / (|Ax||y|) = {abs(lhs - rhs) / scale:.3e} > {rtol}"
    )
    return lhs, rhs


def check_linear(op, x_shape, dtype: torch.dtype = torch.complex128, rtol: float = 1e-10, seed: int = 0) -> None:
    """Assert ``A(a x1 + x2) == a A x1 + A x2`` for random complex ``a``, ``x1``, ``x2``."""
    x1 = random_complex(tuple(x_shape), dtype, seed)
    x2 = random_complex(tuple(x_shape), dtype, seed + 1)
    a = complex(0.7, -1.3) if dtype.is_complex else 0.7
    f = _forward(op)
    lhs = f(a * x1 + x2)
    rhs = a * f(x1) + f(x2)
    err = float(torch.linalg.vector_norm(lhs - rhs))
    ref = float(torch.linalg.vector_norm(rhs))
    assert err <= rtol * max(ref, 1e-300), f"linearity test failed: relative error {err / max(ref, 1e-300):.3e}"


def tiny_train_data(n=12, size=16, seed=0):
    """A tiny synthetic single-coil ``TrainData`` (smooth random images normalized so the 99th
    percentile is 1, per-sample random masks with a fully sampled centre) for trainer tests."""
    from mrtl.fft import fft2c, ifft2c
    from mrtl.train import TrainData

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 3, size + 3, generator=g), 4, 1)[:, 0]
    x = (x / x.flatten(1).quantile(0.99, dim=1)[:, None, None]).to(torch.complex64)
    mask = torch.rand(n, size, size, generator=g) < 0.3
    mask[:, size // 2 - 2 : size // 2 + 2, size // 2 - 2 : size // 2 + 2] = True
    k = fft2c(x) * mask
    return TrainData(ifft2c(k), k, mask, x)
