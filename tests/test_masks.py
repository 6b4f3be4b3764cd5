"""mrtl.masks: achieved acceleration, calibration square, density, seeds, banks, sigpy agreement."""

import numpy as np
import pytest
import torch

from mrtl.fft import fft2c
from mrtl.masks import (
    MaskBank,
    _radius_map,
    achieved_acceleration,
    cartesian_1d,
    default_calib,
    poisson_disc,
)


def _calib_block(mask, calib):
    h, w = mask.shape
    r0, c0 = h // 2 - calib // 2, w // 2 - calib // 2
    return mask[r0 : r0 + calib, c0 : c0 + calib]


@pytest.mark.parametrize("shape", [(256, 256), (320, 320)])
@pytest.mark.parametrize("R", [2, 3, 4, 5, 6, 7, 8, 9, 10])
def test_poisson_achieved_acceleration(shape, R):
    m = poisson_disc(shape, R, seed=3)
    assert m.dtype == torch.bool and tuple(m.shape) == shape
    n = int(m.sum())
    assert abs(shape[0] * shape[1] / n - R) / R < 0.05
    assert abs(achieved_acceleration(m) - R) / R < 0.02  # the tighter goal
    assert bool(_calib_block(m, default_calib(shape)).all())


@pytest.mark.parametrize("shape", [(64, 64), (65, 97), (97, 64), (128, 80)])
@pytest.mark.parametrize("R", [2, 4.5, 10])
def test_poisson_odd_and_non_square(shape, R):
    m = poisson_disc(shape, R, seed=1)
    assert tuple(m.shape) == shape
    assert abs(achieved_acceleration(m) - R) / R < 0.05
    assert bool(_calib_block(m, default_calib(shape)).all())


@pytest.mark.parametrize("calib", [0, 9, 24])
def test_calib_configurable(calib):
    m = poisson_disc((96, 96), 4, calib=calib, seed=0)
    assert abs(achieved_acceleration(m) - 4) / 4 < 0.05
    if calib:
        assert bool(_calib_block(m, calib).all())
        # the square ends where the mask stops being fully sampled along the centre row
        assert bool(m[96 // 2, 96 // 2 - calib // 2 : 96 // 2 - calib // 2 + calib].all())


def test_default_calib():
    assert default_calib((256, 256)) == 20
    assert default_calib((320, 320)) == 26
    assert default_calib((64, 64)) == 8
    assert default_calib((6, 40)) == 6  # never more than the smaller side


@pytest.mark.parametrize("R", [4, 8])
def test_poisson_variable_density(R):
    shape = (128, 128)
    r = _radius_map(*shape, default_calib(shape))
    m = np.mean([poisson_disc(shape, R, seed=s).numpy() for s in range(3)], axis=0)
    inner = m[(r > 0) & (r < 0.3)].mean()
    middle = m[(r >= 0.3) & (r < 0.6)].mean()
    outer = m[(r >= 0.6) & (r < 1)].mean()
    assert inner > middle > outer > 0
    assert m[r >= 1].max() == 0  # corners cropped, as sigpy's crop_corner


def test_poisson_seed_reproducible():
    a = poisson_disc((96, 80), 6, seed=11)
    b = poisson_disc((96, 80), 6, seed=11)
    c = poisson_disc((96, 80), 6, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_poisson_is_a_poisson_disc_far_from_centre():
    """Outside the fully sampled core no two samples are neighbours (disc radius > 1 there)."""
    m = poisson_disc((128, 128), 8, seed=2).numpy()
    r = _radius_map(128, 128, default_calib((128, 128)))
    outer = m & (r > 0.6)
    ys, xs = np.nonzero(outer)
    pairs = 0
    for dy, dx in [(0, 1), (1, 0), (1, 1), (1, -1)]:
        y2, x2 = ys + dy, xs + dx
        ok = (y2 < 128) & (x2 >= 0) & (x2 < 128)
        pairs += int(m[y2[ok], x2[ok]].sum())
    # the few samples added to hit R exactly may touch; the sampler's own never do
    assert pairs <= 0.02 * len(ys)


def test_centring_matches_sigpy_and_fft2c():
    """The calibration square is where sigpy.mri.poisson puts it, around the DC index of fft2c."""
    import sigpy.mri

    shape, calib = (64, 64), 12
    ours = poisson_disc(shape, 5, calib=calib, seed=0).numpy()
    theirs = np.abs(sigpy.mri.poisson(shape, 5, calib=(calib, calib), seed=0)) > 0
    block = np.zeros(shape, bool)
    block[shape[0] // 2 - calib // 2 : shape[0] // 2 + calib // 2, shape[1] // 2 - calib // 2 : shape[1] // 2 + calib // 2] = True
    assert theirs[block].all() and ours[block].all()
    # DC of fft2c: a constant image has k-space support only at (H // 2, W // 2), inside the block
    k = fft2c(torch.ones(shape, dtype=torch.complex128)).abs().numpy()
    dc = np.unravel_index(np.argmax(k), shape)
    assert dc == (shape[0] // 2, shape[1] // 2) and block[dc]
    # both leave the corners beyond the inscribed ellipse empty
    r = _radius_map(*shape, calib)
    assert not ours[r >= 1].any() and not theirs[r >= 1].any()


def test_density_profile_close_to_sigpy():
    """Same density law (disc radius linear in k-space radius): band densities agree loosely."""
    import sigpy.mri

    shape, R = (128, 128), 6
    calib = default_calib(shape)
    r = _radius_map(*shape, calib)
    bands = [(0.0, 0.33), (0.33, 0.66), (0.66, 1.0)]

    def profile(ms):
        m = np.mean(ms, axis=0)
        return np.array([m[(r > a) & (r < b)].mean() for a, b in bands])

    ours = profile([poisson_disc(shape, R, seed=s).numpy() for s in range(3)])
    theirs = profile([np.abs(sigpy.mri.poisson(shape, R, calib=(calib, calib), seed=s)) > 0 for s in range(3)])
    assert np.all(np.diff(ours) < 0) and np.all(np.diff(theirs) < 0)
    np.testing.assert_allclose(ours, theirs, atol=0.2)


@pytest.mark.parametrize("kind", ["random", "equispaced"])
@pytest.mark.parametrize("R", [4, 8])
def test_cartesian(kind, R):
    shape = (64, 128)
    m = cartesian_1d(shape, R, center_fraction=0.08, kind=kind, seed=5)
    cols = m.any(0)
    assert bool((m == cols[None, :]).all())  # whole columns
    n_low = round(128 * 0.08)
    c0 = 128 // 2 - n_low // 2
    assert bool(cols[c0 : c0 + n_low].all()) and bool(cols[128 // 2])
    tol = 0.01 if kind == "random" else 0.1
    assert abs(achieved_acceleration(m) - R) / R <= tol
    if kind == "equispaced":
        outer = np.flatnonzero(cols.numpy() & ~np.isin(np.arange(128), np.arange(c0, c0 + n_low)))
        gaps = np.diff(outer)
        straddle = (outer[:-1] < c0) & (outer[1:] >= c0 + n_low)
        gaps = gaps[~straddle]
        assert gaps.max() - gaps.min() <= 1  # equal spacing (up to rounding) away from the centre
    assert torch.equal(m, cartesian_1d(shape, R, kind=kind, seed=5))


def test_cartesian_random_seed_changes_mask():
    assert not torch.equal(cartesian_1d((32, 128), 4, seed=0), cartesian_1d((32, 128), 4, seed=1))


def test_maskbank_reproducible_and_disjoint():
    tr = MaskBank(6, (64, 64), n=20, seed=4, split="train")
    tr2 = MaskBank(6, (64, 64), n=20, seed=4, split="train")
    te = MaskBank(6, (64, 64), n=20, seed=4, split="test")
    other = MaskBank(6, (64, 64), n=20, seed=5, split="train")
    assert len(tr) == 20 and tuple(tr.masks.shape) == (20, 64, 64) and tr.masks.dtype == torch.bool
    assert torch.equal(tr.masks, tr2.masks)
    assert not torch.equal(tr.masks, other.masks)
    # disjoint: seeds by construction, masks by comparison; no duplicates within a bank
    assert not set(tr.seeds) & set(te.seeds)
    assert tr.overlap(te) == 0 and te.overlap(tr) == 0
    assert tr.overlap(tr) == 20
    flat = {bytes(np.packbits(m)) for m in tr.masks.numpy()}
    assert len(flat) == 20
    # mask i is poisson_disc with the recorded seed
    assert torch.equal(tr[3], poisson_disc((64, 64), 6, seed=tr.seeds[3]))
    assert torch.all((tr.achieved() - 6).abs() / 6 < 0.05)


def test_maskbank_sample_and_kinds():
    b = MaskBank(4, (32, 48), n=10, seed=0, kind="cartesian_random")
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    s1, s2 = b.sample(5, g1), b.sample(5, g2)
    assert tuple(s1.shape) == (5, 32, 48) and torch.equal(s1, s2)
    assert all(any(torch.equal(m, bm) for bm in b.masks) for m in s1)
    te = MaskBank(4, (32, 48), n=10, seed=0, kind="cartesian_random", split="test")
    assert b.overlap(te) == 0
    eq = MaskBank(4, (32, 48), n=5, kind="cartesian_equispaced")
    assert tuple(eq.masks.shape) == (5, 32, 48)


def test_maskbank_cache_returns_copies():
    a = MaskBank(4, (32, 32), n=3, seed=9)
    a.masks[:] = False
    b = MaskBank(4, (32, 32), n=3, seed=9)
    assert bool(b.masks.any())
