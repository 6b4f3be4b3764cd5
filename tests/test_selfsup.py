"""Tests of mrtl.selfsup: SSDU splits and loss (Yaman et al., MRM 2020), SSDU fine-tuning and
ZS-SSL (Yaman et al., ICLR 2022). Properties only: partitions, calibration kept, seeds, the
analytic loss, no reference read, data consistency, improvement over the raw network."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import tiny_train_data

from mrtl.fft import fft2c
from mrtl.masks import poisson_disc
from mrtl.models import Cascade
from mrtl.selfsup import detect_calib, split_mask, ssdu_finetune, ssdu_loss, zsssl
from mrtl.train import TrainData, load_model


@pytest.mark.parametrize("shape", [(32, 32), (48, 40)])
@pytest.mark.parametrize("rho", [0.2, 0.4, 0.6])
@pytest.mark.parametrize("kind", ["gaussian", "uniform"])
def test_split_is_a_partition_of_the_acquired_locations(shape, rho, kind):
    calib = 8
    mask = poisson_disc(shape, 3, calib=calib, seed=3)
    dc, lo = split_mask(mask, rho=rho, kind=kind, calib=calib, generator=1)
    assert dc.dtype == torch.bool and dc.shape == mask.shape and lo.shape == mask.shape
    assert torch.equal(dc | lo, mask)
    assert not bool((dc & lo).any())
    n_cand = int(mask.sum()) - calib * calib
    assert int(lo.sum()) == min(round(rho * int(mask.sum())), n_cand)
    # the calibration square (centred as mrtl.masks draws it) is entirely in the DC set
    r0, c0 = shape[0] // 2 - calib // 2, shape[1] // 2 - calib // 2
    assert bool(dc[r0 : r0 + calib, c0 : c0 + calib].all())


def test_split_batched_detects_calibration_and_is_seeded():
    masks = torch.stack([poisson_disc((32, 32), 4, calib=c, seed=s) for s, c in ((0, 8), (1, 12), (2, 10))])
    for m in masks:
        assert detect_calib(m) >= 8
    dc, lo = split_mask(masks, rho=0.4)
    for b, c in enumerate((8, 12, 10)):
        r0 = 16 - c // 2
        assert bool(dc[b, r0 : r0 + c, r0 : r0 + c].all())
        assert torch.equal(dc[b] | lo[b], masks[b]) and not bool((dc[b] & lo[b]).any())
    dc2, lo2 = split_mask(masks, rho=0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lo, lo2)  # None means seed 0
    _, lo3 = split_mask(masks, rho=0.4, generator=5)
    assert not torch.equal(lo, lo3)


def test_gaussian_selection_is_closer_to_the_centre_than_uniform():
    mask = torch.ones(64, 64, dtype=torch.bool)
    r = torch.hypot(*torch.meshgrid(torch.arange(64.0) - 32, torch.arange(64.0) - 32, indexing="ij"))
    _, lg = split_mask(mask, rho=0.2, kind="gaussian", calib=0, generator=0)
    _, lu = split_mask(mask, rho=0.2, kind="uniform", calib=0, generator=0)
    assert float(r[lg].mean()) < 0.8 * float(r[lu].mean())


def test_split_rejects_bad_arguments():
    m = poisson_disc((32, 32), 4, seed=0)
    with pytest.raises(ValueError, match="rho"):
        split_mask(m, rho=1.0)
    with pytest.raises(ValueError, match="kind"):
        split_mask(m, kind="poisson")
    with pytest.raises(TypeError, match="generator"):
        split_mask(m, generator="x")


def test_ssdu_loss_analytic_values():
    g = torch.Generator().manual_seed(0)
    k = torch.randn(2, 3, 16, 16, dtype=torch.complex64, generator=g)
    lo = torch.rand(2, 16, 16, generator=g) < 0.3
    assert float(ssdu_loss(torch.zeros_like(k), k, lo)) == pytest.approx(2.0, rel=1e-5)  # 1 (L2) + 1 (L1)
    pred = k.clone()
    pred[:, :, ~lo[0]] += 5.0  # errors off the loss set do not count
    per = ssdu_loss(pred, k, lo, reduction="none")
    assert float(per[0]) == pytest.approx(0.0, abs=1e-6)
    # a half-size prediction: ||y/2||/||y|| = 1/2 for both norms
    assert float(ssdu_loss(k / 2, k, lo)) == pytest.approx(1.0, rel=1e-5)


def _nan_reference(td: TrainData) -> TrainData:
    return TrainData(td.x_u, td.kspace, td.mask, torch.full_like(td.reference, float("nan")), td.maps, td.G_img, td.meta)


def test_ssdu_never_reads_the_reference():
    td = tiny_train_data(n=6, size=16, seed=0)
    val = tiny_train_data(n=3, size=16, seed=1)
    kw = dict(rho=0.4, n_splits=2, epochs=2, lr=1e-3, batch_size=2, seed=0, patience=2)
    m1, h1 = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, val=val, **kw)
    m2, h2 = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), _nan_reference(td), val=_nan_reference(val), **kw)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert bool(torch.isfinite(a).all()), k
        assert torch.equal(a, b), k
    assert [r["val_loss"] for r in h1["history"]] == [r["val_loss"] for r in h2["history"]]
    assert all(math.isfinite(r["val_loss"]) for r in h2["history"])
    # and with no reference at all (None)
    m3, _ = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), TrainData(td.x_u, td.kspace, td.mask, None), val=val, **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m3.state_dict().values()))


def test_ssdu_checkpoint_resume_and_best_model(tmp_path):
    td = tiny_train_data(n=4, size=16, seed=0)
    kw = dict(n_splits=2, epochs=2, lr=1e-3, batch_size=2, seed=0, out_dir=tmp_path)
    m1, h1 = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, **kw)
    assert (tmp_path / "checkpoint_ssdu.pt").is_file() and (tmp_path / "best_ssdu.pt").is_file()
    saved = load_model(tmp_path / "best_ssdu.pt")
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), saved.state_dict().values()))
    # a rerun finds the finished run and returns its result without training again
    m2, h2 = ssdu_finetune(Cascade(2, width=4, depth=1, seed=1), td, **kw)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))


def test_ssdu_multicoil_runs_without_reference():
    from mrtl.data import ImageRecord, UndersampledDataset
    from mrtl.train import as_train_data

    g = torch.Generator().manual_seed(0)

    src = [ImageRecord(torch.nn.functional.avg_pool2d(torch.rand(1, 1, 35, 35, generator=g), 4, 1)[0, 0], "s", "x", i, True)
           for i in range(2)]
    masks = torch.stack([poisson_disc((32, 32), 3, seed=s) for s in range(2)])
    td = as_train_data(UndersampledDataset(src, masks, coils="simulate", n_coils=4, n_virtual=4, n_map_sets=1, seed=0))
    assert td.G_img is not None
    model = Cascade(2, coils="multi", width=4, depth=1, seed=0)
    m, h = ssdu_finetune(model, _nan_reference(td), n_splits=2, epochs=1, lr=1e-3, batch_size=2)
    assert all(bool(torch.isfinite(p).all()) for p in m.parameters())
    assert math.isfinite(h["history"][-1]["train_loss"])


def test_ssdu_from_natural_pretraining_beats_the_raw_network_on_t1_validation():
    """Acceptance (issue 13): bundled T1, 64x64, R = 4, shipped natural checkpoint; only the
    validation PSNR (never used in training) needs the reference."""
    from mrtl.checkpoints import path
    from mrtl.data import UndersampledDataset, bundled
    from mrtl.masks import MaskBank
    from mrtl.train import as_train_data, evaluate

    bank = MaskBank(4, (64, 64), n=100, seed=0, split="test")
    tune = as_train_data(UndersampledDataset(bundled("t1", "tune", size=64), bank, seed=0))
    val = as_train_data(UndersampledDataset(bundled("t1", "val", size=64), bank, seed=1))
    model = load_model(path(4))
    p0 = sum(r["psnr"] for r in evaluate(model, val)) / len(val)
    tune_nan = TrainData(tune.x_u[:10], tune.kspace[:10], tune.mask[:10], None)
    model, h = ssdu_finetune(model, tune_nan, val=TrainData(val.x_u, val.kspace, val.mask, None), rho=0.2,
                             kind="uniform", n_splits=2, epochs=4, lr=1e-3, batch_size=4, seed=0)
    p1 = sum(r["psnr"] for r in evaluate(model, val)) / len(val)
    assert h["best_epoch"] is not None and h["best_epoch"] > 0
    print(f"T1 val PSNR: raw natural {p0:.2f} dB, after SSDU {p1:.2f} dB")
    assert p1 > p0 + 0.1, (p0, p1)


def test_zsssl_stops_keeps_best_and_is_data_consistent():
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 35, 35, generator=g), 4, 1)[0, 0].to(torch.complex64)
    mask = poisson_disc((32, 32), 3, seed=0)
    k = fft2c(x) * mask
    img, info = zsssl(k, mask, model_kwargs=dict(n_subnets=2, width=4, depth=1), n_splits=2, max_epochs=40,
                      patience=2, lr=3e-3, seed=0)
    assert img.shape == (32, 32) and bool(torch.isfinite(img).all())
    vl = info["val_loss"]
    assert info["stopped_epoch"] <= 40 and len(vl) == info["stopped_epoch"] + 1
    assert vl[info["best_epoch"]] == min(vl)  # the best epoch is kept
    if info["early_stopped"]:
        assert info["stopped_epoch"] - info["best_epoch"] == 2
    # the final reconstruction uses all acquired data in (hard) DC
    torch.testing.assert_close(fft2c(img)[mask], k[mask], rtol=1e-4, atol=1e-4)
    img2, info2 = zsssl(k, mask, model_kwargs=dict(n_subnets=2, width=4, depth=1), n_splits=2, max_epochs=40,
                        patience=2, lr=3e-3, seed=0)
    assert torch.equal(img, img2)  # seeded


def test_zsssl_transfer_init_from_the_shipped_checkpoint_is_not_modified():
    from mrtl.checkpoints import path
    from mrtl.data import bundled

    init = load_model(path(4))
    before = {k: v.clone() for k, v in init.state_dict().items()}
    x = bundled("t1", "val", size=64)[0].image.to(torch.complex64)
    mask = poisson_disc((64, 64), 4, seed=7)
    k = fft2c(x) * mask
    img, info = zsssl(k, mask, init=init, n_splits=2, max_epochs=3, patience=1, lr=1e-3)
    assert bool(torch.isfinite(img).all()) and info["seconds"] > 0
    assert all(torch.equal(v, init.state_dict()[n]) for n, v in before.items())
    with pytest.raises(ValueError, match="model_kwargs"):
        zsssl(k, mask)


def test_ssdu_interrupted_run_resumes_to_the_same_weights(tmp_path):
    td, val = tiny_train_data(n=4, size=16, seed=0), tiny_train_data(n=2, size=16, seed=1)
    kw = dict(n_splits=2, epochs=3, lr=1e-3, batch_size=2, seed=0, val=val)
    ref, h_ref = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, **kw)

    def stop(info):
        if info["epoch"] == 1 and info["step"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, out_dir=tmp_path, callback=stop, **kw)
    seen = []
    got, h = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, out_dir=tmp_path, callback=seen.append, **kw)
    assert sorted({s["epoch"] for s in seen}) == [1, 2]  # epoch 0 was finished and saved: not redone
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), got.state_dict().values()))
    assert [r["val_loss"] for r in h["history"]] == [r["val_loss"] for r in h_ref["history"]]


def test_ssdu_divergence_raises_and_restores():
    from mrtl.train import TrainingDiverged

    td = tiny_train_data(n=4, size=16, seed=0)
    model = Cascade(2, width=4, depth=1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="lr="):
        ssdu_finetune(model, td, n_splits=2, epochs=3, lr=1e30, batch_size=2)
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_ssdu_accepts_sample_datasets_with_nan_references():
    td = tiny_train_data(n=4, size=16, seed=0)
    samples = [{"zero_filled": td.x_u[i], "kspace": td.kspace[i], "mask": td.mask[i],
                "reference": torch.full((16, 16), float("nan")), "maps": None} for i in range(4)]
    no_zf = [{"kspace": td.kspace[i], "mask": td.mask[i]} for i in range(4)]  # no reference field at all
    kw = dict(n_splits=2, epochs=1, lr=1e-3, batch_size=2, seed=0)
    a, _ = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), samples, **kw)
    b, _ = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), no_zf, **kw)
    c, _ = ssdu_finetune(Cascade(2, width=4, depth=1, seed=0), td, **kw)
    for x, y, z in zip(a.state_dict().values(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(x, z) and torch.allclose(y, z, atol=1e-6)


def test_shipped_checkpoints_match_their_readme_and_load_weights_only():
    import hashlib
    import re

    from mrtl.checkpoints import FOLDER, available, path
    from mrtl.selfsup import shipped_checkpoint

    readme = (FOLDER / "README.md").read_text()
    assert available() == [4, 8]
    for R in (4, 8):
        p = path(R)
        assert p == shipped_checkpoint(R)
        assert p.stat().st_size < 3 * 2**20  # a few MB at most
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        assert re.search(rf"`natural_R{R}\.pt` \| {R} \| {p.stat().st_size} \|.*`{digest}`", readme)
        torch.load(p, map_location="cpu", weights_only=True)
        m = load_model(p)
        assert m.coils == "single" and m.image_shape == (64, 64)
    with pytest.raises(ValueError, match="R = 4 and 8"):
        path(6)


def test_zsssl_multicoil_single_slice():
    from mrtl.data import ImageRecord, UndersampledDataset
    from mrtl.train import as_train_data

    g = torch.Generator().manual_seed(1)
    src = [ImageRecord(torch.nn.functional.avg_pool2d(torch.rand(1, 1, 35, 35, generator=g), 4, 1)[0, 0], "s", "x", 0, True)]
    td = as_train_data(UndersampledDataset(src, poisson_disc((32, 32), 3, seed=0)[None], coils="simulate", n_coils=4,
                                           n_virtual=4, n_map_sets=1, seed=0), cc=False)
    img, info = zsssl(td.kspace[0], td.mask[0], td.maps[0], model_kwargs=dict(n_subnets=2, coils="multi", width=4, depth=1),
                      n_splits=2, max_epochs=3, patience=1, lr=1e-3)
    assert img.shape == (32, 32) and bool(torch.isfinite(img).all()) and info["stopped_epoch"] <= 3
    with pytest.raises(ValueError, match="maps"):
        zsssl(td.kspace[0], td.mask[0], model_kwargs=dict(n_subnets=2, coils="multi", width=4, depth=1))
