"""Tests for mrtl.data: bundled data, loaders, splits, normalization and undersampling datasets.

References are independent of the code under test: sigpy's centred FFT, numpy percentiles,
hashlib, skimage's rgb2lab, and properties (hard data consistency, disjoint splits).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import sigpy
import torch

from mrtl import data as D
from mrtl.data import (
    FastMRIFolder,
    ImageRecord,
    NiftiFolder,
    PhotoFolder,
    Sample,
    UndersampledDataset,
    bundled,
    collate,
    normalize,
    split_by_subject,
)

DATA = Path(__file__).resolve().parents[1] / "data"
SPLITS = ("train", "tune", "val", "test")


def _fft(x):  # independent reference: sigpy's centred orthonormal FFT
    return torch.from_numpy(np.asarray(sigpy.fft(np.asarray(x), axes=(-2, -1), center=True, norm="ortho")))


def _ifft(k):
    return torch.from_numpy(np.asarray(sigpy.ifft(np.asarray(k), axes=(-2, -1), center=True, norm="ortho")))


def _random_masks(n, shape, p=0.3, seed=0):
    g = np.random.default_rng(seed)
    m = g.random((n, *shape)) < p
    m[:, shape[0] // 2, shape[1] // 2] = True
    return torch.from_numpy(m)


# ----------------------------------------------------------------------------- bundled data
def test_checksums_match_files_and_readme():
    sums = json.loads((DATA / "checksums.json").read_text())
    readme = (DATA / "README.md").read_text()
    assert set(sums) == {p.name for p in DATA.glob("*.npz")}
    total = 0
    for name, want in sums.items():
        h = hashlib.sha256((DATA / name).read_bytes()).hexdigest()
        assert h == want, f"{name}: sha256 {h} differs from checksums.json"
        assert want in readme, f"{name}: its sha256 is not recorded in data/README.md"
        total += (DATA / name).stat().st_size
    assert total <= 15.5e6, f"bundled data is {total / 1e6:.1f} MB, budget ~15 MB"


def _readme_counts():
    """Counts per domain and split from the table in data/README.md."""
    rows = {}
    for line in (DATA / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|\s*(real|SYNTHETIC)\s*\|.*\|\s*(\d+)/(\d+)\s*\|\s*(\d+)/(\d+)\s*\|\s*(\d+)/(\d+)\s*\|\s*(\d+)/(\d+)\s*\|", line)
        if m:
            v = [int(x) for x in m.groups()[2:]]
            rows[m.group(1)] = {"synthetic": m.group(2) == "SYNTHETIC", **{s: (v[2 * i], v[2 * i + 1]) for i, s in enumerate(SPLITS)}}
    return rows


@pytest.mark.parametrize("domain", D.DOMAINS)
def test_bundled_domain_loads_with_documented_counts(domain):
    doc = _readme_counts()[domain]
    for split in SPLITS:
        n_img, n_subj = doc[split]
        if n_img == 0:
            with pytest.raises(ValueError, match="split"):
                bundled(domain, split)
            continue
        src = bundled(domain, split)
        n = len(src.subjects) if domain == "natural" else len(src)
        assert (n, len(src.subjects)) == (n_img, n_subj), (domain, split)
        assert src.domain == domain
        for i in (0, len(src) - 1):
            rec = src[i]
            assert isinstance(rec, ImageRecord)
            assert rec.synthetic == doc["synthetic"]
            assert rec.subject in src.subjects
            img = rec.image
            assert img.dtype == torch.float32 and img.ndim == 2
            assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
            assert (img > 0.05).float().mean() > 0.05, "image has almost no content"
        if doc["synthetic"]:
            assert "SYNTHETIC" in src[0].source


def test_bundled_sizes_and_resize_keeps_whole_field_of_view():
    assert bundled("t1", "test")[0].image.shape == (256, 256)
    assert bundled("pd", "test")[0].image.shape == (256, 256)
    assert bundled("natural", "test")[0].image.shape == (256, 256)
    full = bundled("t1", "test")[3].image
    small = bundled("t1", "test", size=(64, 64))[3].image
    assert small.shape == (64, 64)
    # area averaging of the whole FOV: each output pixel is the mean of a 4x4 block
    ref = full.reshape(64, 4, 64, 4).mean(dim=(1, 3))
    torch.testing.assert_close(small, ref, rtol=1e-5, atol=1e-6)
    nat = bundled("natural", "val", size=32)[0].image
    assert nat.shape == (32, 32)


def test_synthetic_twins_share_subjects_and_splits():
    for split in SPLITS:
        a, b = bundled("t2", split), bundled("t1_synth", split)
        assert a.subjects == b.subjects and len(a) == len(b)
        assert a.positions == b.positions
    # contrast check from the signal equations: CSF is bright on T2w and dark on T1w, so the
    # two twins of a slice are negatively related inside the ventricles (brightest T2w pixels)
    t2, t1 = bundled("t2", "test")[5].image, bundled("t1_synth", "test")[5].image
    csf = t2 > torch.quantile(t2[t2 > 0.05], 0.98)
    brain = t2 > 0.1
    assert t1[csf].mean() < t1[brain].mean()


@pytest.mark.parametrize("domain", ["natural", "t2", "t1_synth"])
def test_splits_are_disjoint_by_subject(domain):
    subj = {s: set(bundled(domain, s).subjects) for s in SPLITS}
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not subj[a] & subj[b], (domain, a, b)
    assert set().union(*subj.values()) == set(bundled(domain, "all").subjects)
    src = bundled(domain, "val")
    assert src.item_subjects == [src[i].subject for i in range(len(src))]


def test_colin27_slabs_have_gaps_of_at_least_10_slices():
    z = {s: np.array(bundled("t1", s).positions) for s in SPLITS}
    for held in ("test", "val"):
        others = np.concatenate([z[s] for s in SPLITS if s != held])
        gap = np.abs(z[held][:, None] - others[None, :]).min()
        assert gap >= 10, f"{held} slab is only {gap} slices from another split"
    # fine-tuning slices are spread over the training range, not one slab
    train = z["train"]
    assert z["tune"].min() < np.percentile(train, 10) and z["tune"].max() > np.percentile(train, 90)
    assert not set(z["tune"]) & set(train)
    assert len(set(bundled("t1", "all").subjects)) == 1


# ----------------------------------------------------------------------------- normalize/splits
def test_normalize_99th_percentile_is_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 50, generator=g) * 7 + 1j * torch.randn(40, 50, generator=g)
    y, s = normalize(x, return_scale=True)
    assert np.isclose(np.percentile(np.abs(y.numpy()), 99), 1.0, rtol=1e-5)
    torch.testing.assert_close(y, x * s)
    r = normalize(np.abs(np.random.default_rng(1).normal(size=(16, 16))))
    assert np.isclose(np.percentile(r.numpy(), 99), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="all zero"):
        normalize(torch.zeros(8, 8))
    bad = torch.ones(8, 8)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        normalize(bad)


def test_split_by_subject():
    subjects = [f"s{i}" for i in range(23) for _ in range(3)]
    parts = split_by_subject(subjects, (0.7, 0.1, 0.1, 0.1), seed=4)
    flat = [s for p in parts for s in p]
    assert len(flat) == len(set(flat)) == 23
    for p, f in zip(parts, (0.7, 0.1, 0.1, 0.1)):  # sizes round the fractions of 23 subjects
        assert abs(len(p) - f * 23) < 1
    assert parts == split_by_subject(subjects, (0.7, 0.1, 0.1, 0.1), seed=4)
    assert parts != split_by_subject(subjects, (0.7, 0.1, 0.1, 0.1), seed=5)
    assert [len(p) for p in split_by_subject(["a", "b", "c"], (0.98, 0.01, 0.01), seed=0)] == [1, 1, 1]
    with pytest.raises(ValueError, match="fractions"):
        split_by_subject(subjects, (0.5, 0.6))
    with pytest.raises(ValueError, match="subjects"):
        split_by_subject([], (1.0,))


# ----------------------------------------------------------------------------- datasets
@pytest.fixture(scope="module")
def t1_small():
    return bundled("t1", "test", size=(32, 32))


def test_single_coil_sample_hard_data_consistency(t1_small):
    masks = _random_masks(7, (32, 32))
    ds = UndersampledDataset(t1_small, masks, seed=3)
    s = ds[2]
    assert isinstance(s, Sample)
    assert s.reference.dtype == torch.complex64 and s.reference.shape == (32, 32)
    assert torch.all(s.reference.imag == 0), "single-coil: magnitude image with zero phase"
    assert np.isclose(np.percentile(s.reference.abs().numpy(), 99), 1.0, rtol=1e-4)
    assert s.mask.dtype == torch.bool and any(torch.equal(s.mask, m) for m in masks)
    full = _fft(s.reference)
    torch.testing.assert_close(s.kspace[s.mask], full[s.mask].to(torch.complex64), rtol=1e-4, atol=1e-5)
    assert torch.all(s.kspace[~s.mask] == 0)
    torch.testing.assert_close(s.zero_filled, _ifft(s.kspace).to(torch.complex64), rtol=1e-4, atol=1e-5)
    assert s.maps.shape == (0, 32, 32)
    # the reference is the normalized source image
    torch.testing.assert_close(s.reference.real, normalize(t1_small[2].image))


def test_noise_only_on_sampled_points(t1_small):
    masks = _random_masks(3, (32, 32), p=0.5)
    s = UndersampledDataset(t1_small, masks, noise_std=0.1, seed=0)[0]
    d = s.kspace - s.mask * _fft(s.reference).to(torch.complex64)
    assert torch.all(d[~s.mask] == 0)
    std = float(d[s.mask].abs().pow(2).mean().sqrt())
    assert 0.08 < std < 0.12  # ~500 complex samples of std 0.1


def test_multicoil_simulation_sample(t1_small):
    masks = _random_masks(5, (32, 32))
    ds = UndersampledDataset(t1_small, masks, coils="simulate", seed=1)
    s = ds[4]
    C = s.maps.shape[0]
    assert s.maps.shape == (8, 32, 32) and s.kspace.shape == (8, 32, 32)
    torch.testing.assert_close((s.maps.abs() ** 2).sum(0), torch.ones(32, 32), rtol=1e-4, atol=1e-5)
    full = _fft(s.maps * s.reference)
    mm = s.mask.expand(C, -1, -1)
    torch.testing.assert_close(s.kspace[mm], full[mm].to(torch.complex64), rtol=1e-4, atol=1e-5)
    assert torch.all(s.kspace[~mm] == 0)
    zf = (s.maps.conj() * _ifft(s.kspace)).sum(0)
    torch.testing.assert_close(s.zero_filled, zf.to(torch.complex64), rtol=1e-4, atol=1e-5)
    # complex reference: random sinusoidal phase on the (normalized) magnitude
    assert float(s.reference.angle().std()) > 0.1
    assert float(s.reference.angle().abs().max()) <= np.pi + 1e-6
    mag = t1_small[4].image
    torch.testing.assert_close(s.reference.abs(), normalize(mag), rtol=1e-4, atol=1e-5)
    # coil maps differ across samples/epochs (a bank), and are not all the same coil
    ds.set_epoch(1)
    maps = {tuple(ds[i].maps[0, 16, :4].real.tolist()) for i in range(len(ds))}
    assert len(maps) > 1


def test_coil_map_bank_compression_matches_svd_bound():
    import sigpy.mri

    bank = D.coil_map_bank((24, 24), n_sets=3, seed=0)
    assert bank.shape == (3, 8, 24, 24) and bank.dtype == torch.complex64
    torch.testing.assert_close((bank.abs() ** 2).sum(1), torch.ones(3, 24, 24), rtol=1e-4, atol=1e-5)
    assert torch.equal(bank, D.coil_map_bank((24, 24), n_sets=3, seed=0))
    # compress_maps = leading left singular vectors of the (C, H*W) maps, then unit RSS per
    # pixel; compare magnitudes (singular vectors are defined up to a phase) with numpy's SVD
    m = torch.from_numpy(sigpy.mri.birdcage_maps((32, 24, 24), dtype=np.complex64))
    v = D.compress_maps(m, 8)
    A = m.reshape(32, -1).numpy().astype(np.complex128)
    U = np.linalg.svd(A, full_matrices=False)[0][:, :8]
    proj = U.conj().T @ A
    want = np.abs(proj) / np.sqrt((np.abs(proj) ** 2).sum(0, keepdims=True))
    np.testing.assert_allclose(v.abs().reshape(8, -1).numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="n_virtual"):
        D.compress_maps(m, 33)


def test_determinism_epochs_and_augmentation(t1_small):
    masks = _random_masks(50, (32, 32))
    a = UndersampledDataset(t1_small, masks, seed=7, augment=True, noise_std=0.01)
    b = UndersampledDataset(t1_small, masks, seed=7, augment=True, noise_std=0.01)
    for i in (0, 5):
        for x, y in zip(a[i][:5], b[i][:5]):
            assert torch.equal(x, y)
    m0 = [a[i].mask for i in range(10)]
    a.set_epoch(1)
    m1 = [a[i].mask for i in range(10)]
    assert any(not torch.equal(x, y) for x, y in zip(m0, m1))
    a.set_epoch(0)
    assert all(torch.equal(a[i].mask, m0[i]) for i in range(10))
    c = UndersampledDataset(t1_small, masks, seed=8, augment=True)
    assert any(not torch.equal(c[i].mask, m0[i]) for i in range(10))
    # augmentation only flips/rotates: the set of magnitudes is unchanged
    ref = normalize(t1_small[3].image).flatten().sort().values
    got = a[3].reference.abs().flatten().sort().values
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_dataloader_two_workers_matches_single_process(t1_small):
    masks = _random_masks(20, (32, 32))
    ds = UndersampledDataset(t1_small, masks, coils="simulate", seed=0)
    kw = dict(batch_size=4, shuffle=False, collate_fn=collate)
    b0 = list(torch.utils.data.DataLoader(ds, num_workers=0, **kw))
    b2 = list(torch.utils.data.DataLoader(ds, num_workers=2, **kw))
    assert len(b0) == len(b2) == 6
    for x, y in zip(b0, b2):
        assert x.zero_filled.shape == (4, 32, 32) and x.kspace.shape == (4, 8, 32, 32)
        assert x.maps.shape == (4, 8, 32, 32) and x.mask.shape == (4, 32, 32)
        assert isinstance(x.subject, list) and len(x.source) == 4
        for u, v in zip(x[:5], y[:5]):
            assert torch.equal(u, v)


def test_persistent_workers_follow_set_epoch(t1_small):
    """Persistent DataLoader workers keep their own copy of the dataset: set_epoch in the main
    process used to never reach them, so every epoch repeated epoch 0's masks and noise."""
    ds = UndersampledDataset(t1_small, _random_masks(50, (32, 32)), noise_std=0.05, seed=2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True, collate_fn=collate)
    got = {}
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got[epoch] = [(b.mask, b.kspace) for b in loader]
    for epoch in (0, 1, 2):  # each epoch equals the single-process samples of that epoch
        ds.set_epoch(epoch)
        want = [ds[i] for i in range(len(ds))]
        masks = torch.cat([m for m, _ in got[epoch]])
        kspace = torch.cat([k for _, k in got[epoch]])
        assert torch.equal(masks, torch.stack([s.mask for s in want])), epoch
        assert torch.equal(kspace, torch.stack([s.kspace for s in want])), epoch
    assert not torch.equal(torch.cat([m for m, _ in got[0]]), torch.cat([m for m, _ in got[1]]))
    assert ds.epoch == 2


def test_maskbank_from_mrtl_masks(t1_small):
    from mrtl.masks import MaskBank

    bank = MaskBank(4, (32, 32), n=5, seed=0)
    s = UndersampledDataset(t1_small, bank)[0]
    assert any(torch.equal(s.mask, bank[i]) for i in range(5))


def test_R_travels_with_the_sample(t1_small):
    """R is set once (the bank's) and carried by Sample, collate and TrainData (subsets included):
    the nominal R, not the mask's achieved one; a bank of plain masks gives each mask's H*W/sampled."""
    from mrtl.data import as_train_data
    from mrtl.masks import MaskBank, achieved_acceleration

    bank = MaskBank(6, (32, 32), n=5, seed=0)
    ds = UndersampledDataset(t1_small, bank)
    assert ds[0].R == 6.0 and abs(achieved_acceleration(ds[0].mask) - 6) > 1e-6  # nominal, not re-measured
    batch = collate([ds[0], ds[1]])
    assert batch.R.dtype == torch.float64 and batch.R.tolist() == [6.0, 6.0]
    td = as_train_data(ds)
    assert td.R.tolist() == [6.0] * len(ds)
    sub = td.subset([2, 0])
    assert sub.R.tolist() == [6.0, 6.0] and sub.meta[0]["index"] == 2 and torch.equal(sub.mask[1], td.mask[0])
    masks = _random_masks(3, (32, 32), p=0.25)
    plain = UndersampledDataset(t1_small, masks, seed=1)
    for i in range(3):
        s = plain[i]
        assert s.R == pytest.approx(32 * 32 / int(s.mask.sum()))
    bare = type(td)(td.x_u, td.kspace, td.mask, td.reference)  # data that did not carry R: measured
    torch.testing.assert_close(bare.R, 32 * 32 / td.mask.flatten(1).sum(1).double())
    with pytest.raises(ValueError, match="^R: "):
        type(td)(td.x_u, td.kspace, td.mask, td.reference, R=torch.ones(2))


def test_dataset_input_validation(t1_small):
    with pytest.raises(ValueError, match="mask_bank"):
        UndersampledDataset(t1_small, _random_masks(2, (16, 16)))[0]
    with pytest.raises(ValueError, match="noise_std"):
        UndersampledDataset(t1_small, _random_masks(2, (32, 32)), noise_std=-1)
    with pytest.raises(ValueError, match="coils"):
        UndersampledDataset(t1_small, _random_masks(2, (32, 32)), coils="espirit")
    with pytest.raises(TypeError, match="mask_bank"):
        UndersampledDataset(t1_small, "masks")
    with pytest.raises(ValueError, match="domain"):
        bundled("imagenet")
    with pytest.raises(ValueError, match="split"):
        bundled("t1", "training")


# ----------------------------------------------------------------------------- user-data loaders
def _nifti(path, vol):
    import nibabel as nib

    nib.save(nib.Nifti1Image(vol.astype(np.float32), np.eye(4)), str(path))


def test_nifti_folder_ixi_names_and_tissue_slices(tmp_path):
    vol = np.zeros((20, 24, 12), np.float32)
    vol[4:16, 5:19, 3:9] = 100.0  # 6 axial slices with 12*14/(20*24) = 35% tissue
    vol[9:11, 11:13, 10] = 100.0  # a slice with < 1% tissue
    _nifti(tmp_path / "IXI002-Guys-0828-T2.nii.gz", vol)
    _nifti(tmp_path / "IXI002-Guys-0828-T1.nii.gz", vol * 2)
    (tmp_path / "sub").mkdir()
    _nifti(tmp_path / "sub" / "brainA.nii", vol)
    assert D.parse_ixi_name("IXI002-Guys-0828-T2.nii.gz") == ("IXI002", "T2")
    assert D.parse_ixi_name("IXI123-HH-1234-PD.nii") == ("IXI123", "PD")
    assert D.parse_ixi_name("brainA.nii") is None
    src = NiftiFolder(tmp_path, size=32, contrast="T2")
    assert src.subjects == ["IXI002"] and len(src) == 6
    rec = src[0]
    assert rec.image.shape == (32, 32) and rec.subject == "IXI002" and not rec.synthetic
    assert float(rec.image.max()) == pytest.approx(1.0)
    assert float((rec.image > 0.5).sum()) == 12 * 14
    assert src.item_subjects == [src[i].subject for i in range(len(src))]
    alls = NiftiFolder(tmp_path, size=16, min_tissue_fraction=0.2)
    assert sorted(set(alls.subjects)) == ["IXI002", "brainA"] and len(alls) == 18
    assert alls[0].image.shape == (16, 16)


def test_photo_folder_l_channel(tmp_path):
    from PIL import Image
    from skimage.color import rgb2lab

    g = np.random.default_rng(0)
    rgb = g.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (tmp_path / "deep").mkdir()
    Image.fromarray(rgb[:12, :10]).save(tmp_path / "deep" / "b.jpg", quality=95)
    src = PhotoFolder(tmp_path, size=16)
    assert len(src) == 2 and src.subjects == ["a.png", "deep/b.jpg"]
    a = src[0].image
    want = rgb2lab(rgb)[..., 0][2:18, 7:23] / 100
    np.testing.assert_allclose(a.numpy(), want, atol=1e-5)
    b = src[1].image  # 12x10 zero-padded to 16x16
    assert b.shape == (16, 16) and torch.all(b[:2] == 0) and torch.all(b[:, :3] == 0) and b[2:14, 3:13].min() > 0
    assert len(PhotoFolder(tmp_path, size=16, recursive=False)) == 1


def _h5(path, kspace):
    import h5py

    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("ismrmrd_header", data=b"<xml/>")


def test_fastmri_folder_and_dataset_with_workers(tmp_path):
    import sigpy.mri

    g = np.random.default_rng(0)
    maps = sigpy.mri.birdcage_maps((4, 24, 24), dtype=np.complex64)
    yy, xx = np.mgrid[:24, :24]
    img = ((yy - 12) ** 2 + (xx - 12) ** 2 < 80).astype(np.complex64) * (1 + 0.2 * g.random((24, 24)))
    k = np.stack([sigpy.fft(maps * img * s, axes=(-2, -1), center=True) for s in (1.0, 2.0, 3.0)]).astype(np.complex64)
    _h5(tmp_path / "file_brain_1.h5", k)
    _h5(tmp_path / "file_brain_2.h5", k[:2])
    src = FastMRIFolder(tmp_path, maps=None)
    assert len(src) == 5 and src.subjects == ["file_brain_1", "file_brain_2"]
    assert src.item_subjects == [src[i].subject for i in range(5)]
    r = src[1]
    assert r.kspace.shape == (4, 24, 24) and r.maps is None
    torch.testing.assert_close(r.coil_images, _ifft(k[1]).to(torch.complex64), rtol=1e-4, atol=1e-4)
    rss = np.sqrt((np.abs(np.asarray(sigpy.ifft(k[1], axes=(-2, -1), center=True))) ** 2).sum(0))
    np.testing.assert_allclose(r.image.real.numpy(), rss, rtol=1e-4, atol=1e-4)
    # with ESPIRiT maps: coil combination recovers the image up to a phase; samples keep DC
    src = FastMRIFolder(tmp_path, maps="espirit", cache_dir=tmp_path / "cache")
    r = src[0]
    assert r.maps.shape == (4, 24, 24)
    inside = np.abs(img) > 0
    ratio = np.abs(r.image.numpy())[inside] / np.abs(img)[inside]
    assert np.median(ratio) == pytest.approx(1.0, rel=0.1)
    assert len(list((tmp_path / "cache").glob("*_maps.npy"))) == 1
    ds = UndersampledDataset(src, _random_masks(3, (24, 24)), seed=0)
    kw = dict(batch_size=5, collate_fn=collate)
    b0 = next(iter(torch.utils.data.DataLoader(ds, num_workers=0, **kw)))
    b2 = next(iter(torch.utils.data.DataLoader(ds, num_workers=2, **kw)))
    assert b0.kspace.shape == (5, 4, 24, 24) and b0.maps.shape == (5, 4, 24, 24)
    assert torch.equal(b0.kspace, b2.kspace) and torch.equal(b0.zero_filled, b2.zero_filled)
    s = ds[0]
    assert np.isclose(np.percentile(s.reference.abs().numpy(), 99), 1.0, rtol=1e-4)
    assert torch.all(s.kspace[:, ~s.mask] == 0)
    torch.testing.assert_close(s.zero_filled, (s.maps.conj() * _ifft(s.kspace)).sum(0).to(torch.complex64), rtol=1e-4, atol=1e-5)
    # SVD compression to 2 virtual coils
    r2 = FastMRIFolder(tmp_path, n_virtual=2, compress_method="svd", maps=None)[0]
    assert r2.kspace.shape == (2, 24, 24)
    assert float((r2.kspace.abs() ** 2).sum()) <= float((torch.from_numpy(k[0]).abs() ** 2).sum()) * (1 + 1e-5)


_FEW_FILES_SCRIPT = """
import resource, sys
import numpy as np
from mrtl.data import FastMRIFolder
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[2]), hard))
src = FastMRIFolder(sys.argv[1], maps=None)
for i in range(len(src)):
    k = src[i].kspace
    assert float(k[0, 0, 0].real) == i, (i, float(k[0, 0, 0].real))
for i in range(len(src) - 1, -1, -3):  # again, out of order
    assert float(src[i].kspace[0, 0, 0].real) == i
print("open handles", len(src._handles))
"""


def test_fastmri_folder_bounds_open_files_under_a_low_ulimit(tmp_path):
    """Regression: one handle per file stayed open forever, so a folder with more files than the
    open-file limit failed (with a misleading message) part way through."""
    import os
    import subprocess
    import sys

    n_files, limit = 120, 80  # the interpreter, torch and h5py use about 20-40 descriptors
    for f in range(n_files):
        k = np.zeros((2, 2, 8, 8), np.complex64)
        k[:, 0, 0, 0] = [2 * f, 2 * f + 1]  # slice s of file f carries the value 2 f + s
        _h5(tmp_path / f"file_{f:03d}.h5", k)
    script = tmp_path / "run.py"
    script.write_text(_FEW_FILES_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))  # this checkout's mrtl
    r = subprocess.run([sys.executable, str(script), str(tmp_path), str(limit)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "open handles 16" in r.stdout
    src = FastMRIFolder(tmp_path, maps=None, max_open=3)
    for i in range(0, 40, 2):
        src[i]
    assert len(src._handles) == 3
    src.close()
    assert len(src._handles) == 0 and float(src[5].kspace[0, 0, 0].real) == 5.0


def test_corrupt_empty_and_wrong_shaped_files_name_the_file(tmp_path):
    bad = tmp_path / "nii"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(ValueError, match="broken.nii.gz"):
        NiftiFolder(bad)
    flat = tmp_path / "flat"
    flat.mkdir()
    _nifti(flat / "flat.nii.gz", np.zeros((8, 8, 4)))
    with pytest.raises(ValueError, match="flat.nii.gz"):
        NiftiFolder(flat)
    ph = tmp_path / "ph"
    ph.mkdir()
    (ph / "empty.png").write_bytes(b"")
    src = PhotoFolder(ph, size=8)
    with pytest.raises(ValueError, match="empty.png"):
        src[0]
    h = tmp_path / "h5"
    h.mkdir()
    _h5(h / "wrong.h5", np.zeros((4, 8, 8), np.complex64))
    with pytest.raises(ValueError, match=r"wrong\.h5.*\(slices, coils, H, W\)"):
        FastMRIFolder(h, maps=None)
    (h / "wrong.h5").unlink()
    (h / "garbage.h5").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="garbage.h5"):
        FastMRIFolder(h, maps=None)
    (h / "garbage.h5").unlink()
    _h5(h / "real.h5", np.zeros((1, 2, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"real\.h5.*complex"):
        FastMRIFolder(h, maps=None)[0]


def test_read_array_npy_and_h5_inputs_fail_clearly(tmp_path):
    import h5py

    from mrtl.data import read_array

    k = (np.arange(12.0).reshape(3, 4) * (1 + 1j)).astype(np.complex64)
    np.save(tmp_path / "k.npy", k)
    np.testing.assert_array_equal(read_array(tmp_path / "k.npy", "--input"), k)
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset("ismrmrd_header", data=np.zeros(5))  # first in the file, not k-space
        f.create_dataset("kspace", data=k)
    np.testing.assert_array_equal(read_array(tmp_path / "k.h5", "--input"), k)
    # a file without 'kspace' used to reconstruct its first dataset silently
    with h5py.File(tmp_path / "nok.h5", "w") as f:
        f.create_dataset("data", data=np.zeros((3, 4), np.complex64))
        f.create_dataset("other", data=k)
    with pytest.raises(ValueError, match=r"--input: .*nok\.h5.* no dataset 'kspace'.*\['data', 'other'\]"):
        read_array(tmp_path / "nok.h5", "--input")
    np.testing.assert_array_equal(read_array(tmp_path / "nok.h5", "--input", key="other"), k)
    from mrtl.train_cli import _read_array  # the reader of `mrtl reconstruct --input`

    with pytest.raises(ValueError, match="no dataset 'kspace'"):
        _read_array(tmp_path / "nok.h5", "--input")
    with pytest.raises(ValueError, match="exactly one"):
        read_array(tmp_path / "nok.h5", "--mask", default_key=None)
    # 'kspace' that is a group
    with h5py.File(tmp_path / "grp.h5", "w") as f:
        f.create_group("kspace").create_dataset("x", data=k)
    with pytest.raises(ValueError, match=r"'kspace' in .*grp\.h5.* group, not a dataset"):
        read_array(tmp_path / "grp.h5", "--input")
    # corrupt / truncated HDF5
    (tmp_path / "bad.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match=r"--input: .*bad\.h5.* not a readable HDF5 file"):
        read_array(tmp_path / "bad.h5", "--input")
    raw = (tmp_path / "k.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.h5"):
        read_array(tmp_path / "cut.h5", "--input")
    # empty and truncated .npy
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ValueError, match=r"--mask: .*empty\.npy.* is empty"):
        read_array(tmp_path / "empty.npy", "--mask")
    raw = (tmp_path / "k.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match=r"--mask: cannot read .*cut\.npy.*truncated"):
        read_array(tmp_path / "cut.npy", "--mask")
    (tmp_path / "hdr.npy").write_bytes(raw[:20])
    with pytest.raises(ValueError, match=r"hdr\.npy"):
        read_array(tmp_path / "hdr.npy", "--mask")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"obj\.npy"):  # never unpickled
        read_array(tmp_path / "obj.npy", "--mask")
    # dangling links, folders, missing files, other formats
    (tmp_path / "dangling.npy").symlink_to(tmp_path / "gone.npy")
    with pytest.raises(FileNotFoundError, match=r"dangling\.npy.* broken symbolic link .*gone\.npy"):
        read_array(tmp_path / "dangling.npy", "--input")
    with pytest.raises(FileNotFoundError, match=r"--input: .*nothere\.npy.* does not exist"):
        read_array(tmp_path / "nothere.npy", "--input")
    with pytest.raises(ValueError, match="is a folder"):
        read_array(tmp_path, "--input")
    (tmp_path / "k.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"expected a \.npy or \.h5 file"):
        read_array(tmp_path / "k.txt", "--input")


def test_fastmri_folder_group_kspace_and_dangling_link_name_the_file(tmp_path):
    import h5py

    with h5py.File(tmp_path / "grp.h5", "w") as f:
        f.create_group("kspace")
    with pytest.raises(ValueError, match=r"grp\.h5: 'kspace' is an HDF5 group"):
        FastMRIFolder(tmp_path, maps=None)
    (tmp_path / "grp.h5").unlink()
    _h5(tmp_path / "ok.h5", np.ones((1, 2, 8, 8), np.complex64))
    (tmp_path / "link.h5").symlink_to(tmp_path / "moved_away.h5")
    with pytest.raises(FileNotFoundError, match=r"link\.h5.* broken symbolic link"):
        FastMRIFolder(tmp_path, maps=None)


@pytest.mark.parametrize(
    "cls,hint",
    [(PhotoFolder, "image-net.org"), (NiftiFolder, "brain-development.org/ixi-dataset"), (FastMRIFolder, "fastmri.med.nyu.edu")],
)
def test_missing_path_says_what_to_download(tmp_path, cls, hint):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        cls(missing)
    assert str(missing) in str(e.value) and hint in str(e.value)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(FileNotFoundError, match=hint.replace(".", r"\.")):
        cls(tmp_path / "emptydir")


# ----------------------------------------------------------------------------- info / CLI / figure
def test_info_and_cli(capsys):
    rows = D.info(print_table=False)
    doc = _readme_counts()
    assert [r["domain"] for r in rows] == list(D.DOMAINS)
    for r in rows:
        assert r["synthetic"] == doc[r["domain"]]["synthetic"]
        assert all(r["images"][s] == doc[r["domain"]][s][0] for s in SPLITS)
        assert r["license"]
    from mrtl.cli import main

    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    for d in D.DOMAINS:
        assert d in out
    assert "SYNTHETIC" in out and "MB" in out


def test_show_examples_grid():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = D.show_examples(size=(32, 32))
    assert len([a for a in fig.axes if a.images]) == len(D.DOMAINS)
    plt.close(fig)
    fig = D.show_examples(["t1", "pd"])
    assert len(fig.axes) == 2
    plt.close(fig)
