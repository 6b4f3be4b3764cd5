"""Simulation for training data: random sinusoidal phase and a bank of simulated coil maps.

Paper (Methods, "Multi-coil natural images"): complex natural images were simulated from
magnitude images "by adding sinusoidal phase at random spatial frequencies along each axis
varying from -pi to +pi"; "the amplitude of the sinusoids was normalized between 0 and 1".
Multi-coil images were then formed with coil maps. The paper took ESPIRiT maps from two
reserved subjects; without such data here we use simulated birdcage maps (32 coils, sigpy)
compressed to 8 virtual coils.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .._validate import check_int, check_shape2d

__all__ = ["sinusoidal_phase", "add_sinusoidal_phase", "coil_map_bank", "compress_maps"]


def sinusoidal_phase(shape, rng: np.random.Generator) -> torch.Tensor:
    """A random smooth phase map in [-pi, pi] made of one sinusoid along each axis.

    ``phi(y, x) = pi * (sin(w_y * v + t_y) + sin(w_x * u + t_x)) / 2`` with normalized coordinates
    ``u, v`` in [-1, 1) over the field of view, spatial frequencies ``w`` uniform in [-pi, pi]
    (so at most half a cycle per half field of view) and offsets ``t`` uniform in [-pi, pi].

    Args:
        shape: ``(H, W)``.
        rng: a numpy ``Generator`` (everything random is seeded).

    Returns:
        ``(H, W)`` float32 phase in radians.
    """
    H, W = check_shape2d(shape, "shape")
    wy, wx, ty, tx = rng.uniform(-np.pi, np.pi, 4)
    v = (np.arange(H) - H / 2) / (H / 2)
    u = (np.arange(W) - W / 2) / (W / 2)
    phi = np.pi * (np.sin(wy * v + ty)[:, None] + np.sin(wx * u + tx)[None, :]) / 2
    return torch.from_numpy(phi.astype(np.float32))


def add_sinusoidal_phase(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Complex image ``a * exp(i phi)``: amplitude ``a = |image| / max|image|`` in [0, 1], phase from
    :func:`sinusoidal_phase` (paper, Methods, multi-coil natural images)."""
    a = image.abs().to(torch.float32)
    m = float(a.max())
    if m > 0:
        a = a / m
    phi = sinusoidal_phase(tuple(a.shape[-2:]), rng)
    return torch.polar(a, phi).to(torch.complex64)


def compress_maps(maps: torch.Tensor, n_virtual: int) -> torch.Tensor:
    """SVD coil compression of coil maps ``(C, H, W) -> (V, H, W)``, then ``sum_c |S_c|^2 = 1``.

    The compression matrix is the leading ``n_virtual`` left singular vectors of the maps
    reshaped to ``(C, H*W)``: the same linear combination that SVD compression of the coil data
    would apply, so compressed data equal ``M F S_v x`` exactly. The maps are then rescaled so
    that the sum of squares over coils is 1 at every pixel (where it is non-zero).
    """
    C = maps.shape[0]
    n_virtual = check_int(n_virtual, "n_virtual", low=1, high=C)
    A = maps.reshape(C, -1).to(torch.complex128)
    U, _, _ = torch.linalg.svd(A, full_matrices=False)
    V = (U[:, :n_virtual].conj().T @ A).reshape(n_virtual, *maps.shape[1:])
    rss = (V.abs() ** 2).sum(0).sqrt()
    V = torch.where(rss > 0, V / rss.clamp_min(1e-12), torch.zeros_like(V))
    return V.to(torch.complex64)


@lru_cache(maxsize=8)
def _bank(shape: tuple[int, int], n_sets: int, n_coils: int, n_virtual: int, seed: int) -> torch.Tensor:
    import sigpy.mri

    H, W = shape
    rng = np.random.default_rng([seed, H, W, n_coils, n_virtual])
    out = []
    for _ in range(n_sets):
        r = rng.uniform(1.2, 2.0)  # relative coil-ring radius (sensitivity falloff)
        pad = (max(2, H // 8), max(2, W // 8))
        big = sigpy.mri.birdcage_maps((n_coils, H + 2 * pad[0], W + 2 * pad[1]), r=r, dtype=np.complex64)
        t, l = rng.integers(0, 2 * pad[0] + 1), rng.integers(0, 2 * pad[1] + 1)  # random shift
        m = torch.from_numpy(np.ascontiguousarray(big[:, t : t + H, l : l + W]))
        m = m * np.exp(1j * rng.uniform(-np.pi, np.pi))  # random global phase
        out.append(compress_maps(m, n_virtual))
    return torch.stack(out)


def coil_map_bank(shape, n_sets: int = 8, n_coils: int = 32, n_virtual: int = 8, seed: int = 0) -> torch.Tensor:
    """A small, cached bank of simulated multi-coil sensitivity maps.

    Each set: ``sigpy.mri.birdcage_maps`` with ``n_coils`` coils (ring radius uniform in
    [1.2, 2.0]), computed on a field of view 25% larger and cropped at a random shift, times a
    random global phase, then compressed to ``n_virtual`` coils (:func:`compress_maps`) and
    normalized so that ``sum_c |S_c|^2 = 1`` at every pixel.

    Args:
        shape: ``(H, W)``.
        n_sets: number of map sets.
        n_coils: physical coils before compression (paper: 32).
        n_virtual: virtual coils after compression (paper: 8).
        seed: random seed.

    Returns:
        ``(n_sets, n_virtual, H, W)`` complex64 (a cached tensor: clone before modifying it).
    """
    shape = check_shape2d(shape, "shape")
    n_sets = check_int(n_sets, "n_sets", low=1)
    n_coils = check_int(n_coils, "n_coils", low=1)
    n_virtual = check_int(n_virtual, "n_virtual", low=1, high=n_coils)
    seed = check_int(seed, "seed")
    return _bank(shape, n_sets, n_coils, n_virtual, seed)
