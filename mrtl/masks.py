"""Undersampling masks: variable-density Poisson disc (2D), 1D Cartesian, and mask banks.

The paper undersamples every dataset with variable-density Poisson-disc masks (its ref. 50)
at R = 2, 4, 6, 8, 10, with 100 masks for training and a different 100 for testing
(Methods, "Undersampling patterns"). The undersampling operator M of Eq. 1-3 and 7-9 is the
diagonal matrix holding such a mask.

Conventions:
    * Masks are ``torch.bool`` tensors ``(H, W)`` in the centred k-space convention of
      :func:`mrtl.fft.fft2c`: the DC sample sits at ``(H // 2, W // 2)``.
    * The fully sampled calibration square of side ``calib`` covers rows
      ``H // 2 - calib // 2 ... H // 2 - calib // 2 + calib - 1`` (and likewise columns); for an
      even ``calib`` this is exactly the square ``sigpy.mri.poisson`` fills.
    * The acceleration R is ``H * W / (number of sampled points)``.

Poisson-disc masks come from mrtl's own numba kernel (dart throwing: random sequential
addition over the k-space grid, :func:`_poisson_raw`), not from sigpy's Bridson sampler, but
with sigpy's density law (``sigpy.mri.poisson``): the minimum distance
between samples grows as ``1 + s r`` with the k-space radius ``r`` beyond the calibration
square (``r = 1`` at the edge; corners beyond ``r = 1`` are left empty, as sigpy's
``crop_corner=True``). sigpy's own acceleration drifts by up to its ``tol``; here the slope
``s`` is calibrated once per (shape, R, calib) by bisection on a fixed calibration seed, and
every mask is then brought to exactly ``round(H * W / R)`` samples by adding samples with
probability proportional to the local density (or removing samples uniformly), so the
achieved R is within rounding of the request (far inside the 5% that ``MaskBank``'s contract in
CONTRIBUTING.md allows).
"""

from __future__ import annotations

import functools
import hashlib
import math
import numbers
from typing import Iterator

import numpy as np
import torch

from ._validate import (
    check_acceleration,
    check_choice,
    check_float,
    check_int,
    check_mask,
    check_shape2d,
)

__all__ = [
    "default_calib",
    "poisson_disc",
    "cartesian_1d",
    "achieved_acceleration",
    "MaskBank",
    "clear_cache",
]

KINDS = ("poisson", "cartesian_random", "cartesian_equispaced")
SPLITS = ("train", "val", "test")
# Split keys for the seed streams: train and test masks are drawn from different streams of
# numpy's SeedSequence, and per-mask seeds carry the split in their lowest bits, so that no
# seed is ever shared by two splits.
_SPLIT_KEY = {"train": 0, "val": 1, "test": 2}


def _check_seed(seed, name: str = "seed") -> int:
    return check_int(seed, name, low=0)


def default_calib(shape) -> int:
    """Default side of the fully sampled calibration square.

    About 8% of the smaller image side, rounded to an even number, at least 8 (and at most the
    smaller side): 20 for 256x256, 26 for 320x320, 8 for 64x64.

    Args:
        shape: image shape ``(H, W)`` (an int means square).

    Returns:
        The calibration side in samples.
    """
    h, w = check_shape2d(shape, "shape")
    side = min(h, w)
    return int(min(side, max(8, 2 * round(0.04 * side))))


def _calib_slices(h: int, w: int, calib: int) -> tuple[slice, slice]:
    r0 = h // 2 - calib // 2
    c0 = w // 2 - calib // 2
    return slice(r0, r0 + calib), slice(c0, c0 + calib)


def _check_calib(calib, shape: tuple[int, int]) -> int:
    if calib is None:
        return default_calib(shape)
    return check_int(calib, "calib", low=0, high=min(shape))


@functools.lru_cache(maxsize=64)
def _radius_map(h: int, w: int, calib: int) -> np.ndarray:
    """sigpy's normalised radius beyond the calibration square (0 inside, 1 at the edge)."""
    y, x = np.mgrid[:h, :w].astype(np.float64)
    dx = np.maximum(np.abs(x - w // 2) - calib / 2, 0)
    dy = np.maximum(np.abs(y - h // 2) - calib / 2, 0)
    dx = dx / dx.max() if dx.max() > 0 else dx
    dy = dy / dy.max() if dy.max() > 0 else dy
    r = np.sqrt(dx**2 + dy**2)
    r.setflags(write=False)
    return r


@functools.lru_cache(maxsize=1)
def _dart_kernel():
    """Compile (once per process, cached on disk by numba) the dart-throwing kernel."""
    import numba

    @numba.njit(cache=True, nogil=True)
    def dart_throw(order, radius_x, radius_y, mask):  # pragma: no cover - compiled
        h, w = mask.shape
        for k in range(order.shape[0]):
            idx = order[k]
            py = idx // w
            px = idx - py * w
            if mask[py, px]:
                continue
            rx = radius_x[py, px]
            ry = radius_y[py, px]
            y0 = max(int(py - ry), 0)
            y1 = min(int(py + ry) + 1, h)
            x0 = max(int(px - rx), 0)
            x1 = min(int(px + rx) + 1, w)
            ok = True
            for y in range(y0, y1):
                dy = (y - py) / ry
                for x in range(x0, x1):
                    if mask[y, x]:
                        dx = (x - px) / rx
                        if dx * dx + dy * dy < 1.0:
                            ok = False
                            break
                if not ok:
                    break
            if ok:
                mask[py, px] = True
        return mask

    return dart_throw


_OFFSET = 0.5  # radius at the calibration edge; < 1 keeps a fully sampled core and R continuous in the slope


def _poisson_raw(h: int, w: int, calib: int, slope: float, seed: int, max_attempts: int = 30) -> np.ndarray:
    """One variable-density Poisson-disc draw (boolean, corners cropped, calibration square filled).

    Dart throwing on the k-space grid (random sequential addition): pixels are visited in a
    random order and accepted when no accepted sample lies within the elliptical radius
    ``(1 + slope r) * (W, H) / max(H, W)`` (at least 1) -- sigpy's density law. The
    calibration square is placed first, so samples keep their distance from it as well.
    ``max_attempts`` has no effect (see :func:`poisson_disc`).
    """
    r = _radius_map(h, w, calib)
    radius_x = (_OFFSET + r * slope) * w / max(h, w)
    radius_y = (_OFFSET + r * slope) * h / max(h, w)
    mask = np.zeros((h, w), dtype=np.bool_)
    rows, cols = _calib_slices(h, w, calib)
    mask[rows, cols] = True
    order = np.random.default_rng(seed).permutation(h * w)
    order = order[(r < 1).ravel()[order]]  # corners beyond r = 1 stay empty (sigpy's crop_corner)
    return _dart_kernel()(order.astype(np.int64), radius_x, radius_y, mask)


_CALIBRATION_SEED = 20200101  # fixed: the slope depends only on (shape, R, calib), never on the mask seed


@functools.lru_cache(maxsize=256)
def _calibrate_slope(h: int, w: int, R: float, calib: int, max_attempts: int) -> float:
    """Find the density slope at which a reference draw reaches R within 1%.

    The slope is bracketed by doubling from 2 (large slopes are slow: the disc radius grows
    with the slope), then bisected. It depends only on its arguments, never on a mask's seed.
    """
    target = R
    cap = float(max(h, w))
    best, best_err = 0.0, math.inf

    def achieved_at(slope: float) -> float:
        nonlocal best, best_err
        m = _poisson_raw(h, w, calib, slope, _CALIBRATION_SEED, max_attempts)
        achieved = h * w / max(int(m.sum()), 1)
        err = abs(achieved - target) / target
        if err < best_err:
            best, best_err = slope, err
        return achieved

    lo, hi = 0.0, 2.0
    while achieved_at(hi) < target and hi < cap and best_err >= 0.01:
        lo, hi = hi, min(2 * hi, cap)
    for _ in range(40):
        if best_err < 0.01 or hi - lo < 1e-4:
            break
        mid = 0.5 * (lo + hi)
        if achieved_at(mid) < target:
            lo = mid
        else:
            hi = mid
    return best


def _adjust_count(mask: np.ndarray, n_target: int, calib_mask: np.ndarray, density: np.ndarray, rng) -> np.ndarray:
    """Add samples (probability ~ density) or remove them (uniformly) until ``n_target``."""
    n = int(mask.sum())
    if n > n_target:
        cand = np.flatnonzero(mask & ~calib_mask)
        drop = rng.choice(cand, size=n - n_target, replace=False)
        mask.flat[drop] = False
    elif n < n_target:
        cand = np.flatnonzero(~mask)
        p = density.flat[cand]
        p = p / p.sum()
        add = rng.choice(cand, size=n_target - n, replace=False, p=p)
        mask.flat[add] = True
    return mask


def _poisson_np(h: int, w: int, R: float, calib: int, seed: int, max_attempts: int) -> np.ndarray:
    n_total = h * w
    n_target = int(round(n_total / R))
    n_target = min(max(n_target, calib * calib, 1), n_total)
    if n_target == n_total:
        return np.ones((h, w), dtype=bool)
    slope = _calibrate_slope(h, w, float(R), calib, int(max_attempts))
    s_poisson, s_adjust = np.random.SeedSequence(seed).generate_state(2)
    mask = _poisson_raw(h, w, calib, slope, int(s_poisson), max_attempts)
    calib_mask = np.zeros((h, w), dtype=bool)
    rows, cols = _calib_slices(h, w, calib)
    calib_mask[rows, cols] = True
    r = _radius_map(h, w, calib)
    # local density of a Poisson disc with radius (1 + s r): ~ 1 / (1 + s r)^2; corners
    # (r >= 1, empty in sigpy) only receive samples when nothing else is left.
    density = 1.0 / (1.0 + slope * r) ** 2
    density = np.where(r < 1, density, 1e-9 * density)
    rng = np.random.default_rng(int(s_adjust))
    return _adjust_count(mask, n_target, calib_mask, density, rng)


def poisson_disc(shape, R, calib=None, seed: int = 0, max_attempts: int = 30) -> torch.Tensor:
    """Variable-density Poisson-disc mask with a fully sampled calibration square.

    This is the undersampling pattern of the paper (M in Eq. 1-3, 7-9). The minimum distance
    between samples grows linearly with the k-space radius (sigpy's law), so the centre is
    sampled densely and the periphery sparsely; the corners beyond the inscribed ellipse are
    empty. The achieved acceleration is ``H * W / round(H * W / R)``.

    Args:
        shape: image shape ``(H, W)`` (an int means square); both sides at least 4.
        R: the acceleration, in [1, 20].
        calib: side of the fully sampled centre square; default :func:`default_calib`.
            The square alone must not exceed the requested number of samples.
        seed: non-negative integer; same seed, same mask.
        max_attempts: has no effect (checked, then ignored). It was Bridson's number of
            candidate points per active sample in sigpy's sampler; mrtl's dart-throwing kernel
            visits every pixel once instead, so there is nothing to attempt. Kept so that
            existing calls still work.

    Returns:
        ``(H, W)`` boolean tensor, DC at ``(H // 2, W // 2)`` as in :func:`mrtl.fft.fft2c`.
    """
    h, w = check_shape2d(shape, "shape")
    if min(h, w) < 4:
        raise ValueError(f"shape: expected both sides >= 4 for a Poisson-disc mask, got {(h, w)!r}")
    R = check_acceleration(R)
    calib = _check_calib(calib, (h, w))
    seed = _check_seed(seed)
    max_attempts = check_int(max_attempts, "max_attempts", low=1)
    if calib * calib > h * w / R * 1.0000001:
        raise ValueError(
            f"calib: a {calib}x{calib} calibration square alone samples {calib * calib} of {h * w} points "
            f"(R = {h * w / calib**2:.2f}), more than R = {R:g} allows; use a smaller calib"
        )
    return torch.from_numpy(_poisson_np(h, w, R, calib, seed, max_attempts))


def _cartesian_np(h: int, w: int, R: float, center_fraction: float, kind: str, seed: int) -> np.ndarray:
    n_low = max(1, int(round(w * center_fraction)))
    n_target = int(round(w / R))
    if n_low > max(n_target, 1):
        raise ValueError(
            f"center_fraction: {center_fraction} gives {n_low} centre columns of {w}, more than the "
            f"{n_target} columns R = {R:g} allows; use a smaller center_fraction"
        )
    cols = np.zeros(w, dtype=bool)
    c0 = w // 2 - n_low // 2
    cols[c0 : c0 + n_low] = True
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if kind == "random":
        # exactly round(W / R) columns: the centre plus uniformly drawn outer columns
        cand = np.flatnonzero(~cols)
        n_extra = n_target - n_low
        if n_extra > 0:
            cols[rng.choice(cand, size=n_extra, replace=False)] = True
    else:  # equispaced, as fastMRI's EquispacedMaskFractionFunc
        if n_target > n_low:
            spacing = (w - n_low) / (n_target - n_low)
            offset = int(rng.integers(0, max(1, int(round(spacing)))))
            picks = np.around(np.arange(offset, w, spacing)).astype(int)
            cols[picks[picks < w]] = True
    mask = np.zeros((h, w), dtype=bool)
    mask[:, cols] = True
    return mask


def cartesian_1d(shape, R, center_fraction: float = 0.08, kind: str = "random", seed: int = 0) -> torch.Tensor:
    """1D Cartesian mask (fastMRI style): whole k-space columns (phase encodes along W).

    ``round(W * center_fraction)`` centre columns are always sampled. ``kind="random"`` adds
    uniformly drawn columns until exactly ``round(W / R)`` columns are sampled (fastMRI draws
    each column independently; the exact count keeps R on target). ``kind="equispaced"`` adds
    columns at a spacing chosen so that the total is about ``W / R``, from a random offset.

    Args:
        shape: image shape ``(H, W)``.
        R: the acceleration, in [1, 20].
        center_fraction: fraction of columns in the fully sampled centre, in (0, 1].
        kind: "random" or "equispaced".
        seed: non-negative integer.

    Returns:
        ``(H, W)`` boolean tensor, the centre block around column ``W // 2``.
    """
    h, w = check_shape2d(shape, "shape")
    R = check_acceleration(R)
    center_fraction = check_float(center_fraction, "center_fraction", low=0.0, high=1.0, low_open=True)
    check_choice(kind, "kind", ("random", "equispaced"))
    seed = _check_seed(seed)
    return torch.from_numpy(_cartesian_np(h, w, R, center_fraction, kind, seed))


def achieved_acceleration(mask) -> float:
    """Acceleration actually achieved by a mask: number of points / number sampled.

    Args:
        mask: boolean (or 0/1) ``(..., H, W)`` tensor or array; for a stack of masks the
            overall ratio is returned.

    Returns:
        R as a float.
    """
    mask = check_mask(mask, "mask")
    return float(mask.numel() / int(mask.sum()))


def _mask_hash(m: np.ndarray) -> bytes:
    return hashlib.sha1(np.packbits(m).tobytes()).digest()


_BANK_CACHE: dict[tuple, tuple[torch.Tensor, tuple[int, ...]]] = {}


def clear_cache() -> None:
    """Forget cached mask banks and calibrated slopes (they are cached per process)."""
    _BANK_CACHE.clear()
    _calibrate_slope.cache_clear()


class MaskBank:
    """A reproducible bank of ``n`` masks for one acceleration and image shape.

    The paper trains with 100 masks and tests with a different 100 (Methods). Mask ``i`` of a
    bank is the mask generator called with seed ``bank.seeds[i]``; the seeds come from
    ``numpy.random.SeedSequence(seed, spawn_key=(split,))`` and carry the split in their two
    lowest bits, so train, val and test banks never share a seed. Within a bank, a duplicate
    mask is replaced by a draw from the next seed of the stream (possible only for Cartesian
    masks at high R on few columns); ``kind="cartesian_equispaced"`` has only about R distinct
    patterns, so that kind allows repeats. Use :meth:`overlap` to verify disjointness.
    Banks are cached per process by their arguments.

    Args:
        R: the acceleration, in [1, 20].
        shape: image shape ``(H, W)``.
        n: number of masks (>= 1).
        seed: non-negative integer.
        split: "train", "val" or "test".
        kind: "poisson", "cartesian_random" or "cartesian_equispaced".
        calib: Poisson calibration side (default :func:`default_calib`); ignored for Cartesian.
        center_fraction: Cartesian centre fraction; ignored for Poisson.

    Attributes:
        masks: ``(n, H, W)`` boolean tensor.
        seeds: the per-mask seeds.
    """

    def __init__(
        self,
        R,
        shape,
        n: int = 100,
        seed: int = 0,
        split: str = "train",
        kind: str = "poisson",
        calib=None,
        center_fraction: float = 0.08,
    ):
        self.R = check_acceleration(R)
        self.shape = check_shape2d(shape, "shape")
        self.n = check_int(n, "n", low=1)
        self.seed = _check_seed(seed)
        self.split = check_choice(split, "split", SPLITS)
        self.kind = check_choice(kind, "kind", KINDS)
        if kind == "poisson":
            self.calib = _check_calib(calib, self.shape)
            self.center_fraction = None
        else:
            self.calib = None
            self.center_fraction = check_float(center_fraction, "center_fraction", low=0.0, high=1.0, low_open=True)
        key = (self.kind, self.R, self.shape, self.n, self.seed, self.split, self.calib, self.center_fraction)
        if key not in _BANK_CACHE:
            _BANK_CACHE[key] = self._generate()
        masks, seeds = _BANK_CACHE[key]
        self.masks = masks.clone()
        self.seeds = seeds

    def _one(self, s: int) -> np.ndarray:
        h, w = self.shape
        if self.kind == "poisson":
            return poisson_disc(self.shape, self.R, calib=self.calib, seed=s).numpy()
        kind = "random" if self.kind == "cartesian_random" else "equispaced"
        return _cartesian_np(h, w, self.R, self.center_fraction, kind, s)

    def _generate(self) -> tuple[torch.Tensor, tuple[int, ...]]:
        ss = np.random.SeedSequence(self.seed, spawn_key=(_SPLIT_KEY[self.split],))
        allow_repeats = self.kind == "cartesian_equispaced"
        budget = 20 * self.n + 100
        raw = ss.generate_state(budget, dtype=np.uint64)
        # lowest two bits = split key: seeds of different splits are distinct by construction
        stream = [int((int(v) >> 2) << 2 | _SPLIT_KEY[self.split]) for v in raw]
        masks, seeds, seen = [], [], set()
        from .utils import progress

        it = iter(stream)
        for _ in progress(range(self.n), desc=f"masks R={self.R:g}", total=self.n, enable=self.n * self.shape[0] * self.shape[1] > 2e6):
            for s in it:
                m = self._one(s)
                hsh = _mask_hash(m)
                if allow_repeats or hsh not in seen:
                    seen.add(hsh)
                    masks.append(m)
                    seeds.append(s)
                    break
            else:
                raise ValueError(
                    f"n: could not draw {self.n} distinct {self.kind} masks at R = {self.R} "
                    f"for shape {self.shape}; only {len(masks)} exist in {budget} draws; ask for fewer"
                )
        return torch.from_numpy(np.stack(masks)), tuple(seeds)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i) -> torch.Tensor:
        if isinstance(i, numbers.Integral) and not isinstance(i, bool):
            if not -self.n <= i < self.n:
                raise IndexError(f"i: expected an index in [-{self.n}, {self.n - 1}], got {i}")
            return self.masks[int(i)]
        return self.masks[i]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter(self.masks)

    def __repr__(self) -> str:
        return (
            f"MaskBank(R={self.R:g}, shape={self.shape}, n={self.n}, seed={self.seed}, "
            f"split={self.split!r}, kind={self.kind!r}, achieved R={self.achieved().mean():.3f})"
        )

    def achieved(self) -> torch.Tensor:
        """``(n,)`` achieved acceleration of every mask (float64)."""
        h, w = self.shape
        return (h * w) / self.masks.flatten(1).sum(1).double()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` masks uniformly with replacement.

        Args:
            n: number of masks (>= 1).
            generator: a seeded ``torch.Generator`` for reproducibility (None: torch's global RNG).

        Returns:
            ``(n, H, W)`` boolean tensor.
        """
        n = check_int(n, "n", low=1)
        idx = torch.randint(0, self.n, (n,), generator=generator)
        return self.masks[idx]

    def overlap(self, other: "MaskBank") -> int:
        """Number of masks of this bank that also occur in ``other`` (0 for disjoint banks)."""
        if not isinstance(other, MaskBank):
            raise TypeError(f"other: expected a MaskBank, got {type(other).__name__}")
        theirs = {_mask_hash(m) for m in other.masks.numpy()}
        return sum(_mask_hash(m) in theirs for m in self.masks.numpy())
