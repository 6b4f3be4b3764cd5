"""Tests of mrtl.train: sequential training (Eq. 11) beats zero-filling on the bundled data,
fine-tuning lowers the target loss, resume reproduces an uninterrupted run bit for bit, seeds,
checkpoints, logs, model selection, evaluate/reconstruct and errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_train_data

from mrtl.data import UndersampledDataset, bundled
from mrtl.fft import fft2c
from mrtl.masks import MaskBank
from mrtl.models import Cascade
from mrtl.train import (
    PAPER,
    SMALL,
    as_train_data,
    evaluate,
    finetune,
    hybrid_loss,
    load_checkpoint,
    load_model,
    reconstruct,
    train_sequential,
)


class _Subset:
    def __init__(self, src, n):
        self.src, self.n = src, min(n, len(src))

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.src[i]


def _dataset(domain, split, size=64, R=4, n=None, bank_split="train", seed=0):
    src = bundled(domain, split, size=size)
    if n is not None:
        src = _Subset(src, n)
    return UndersampledDataset(src, MaskBank(R, (size, size), n=100, seed=0, split=bank_split), seed=seed)


def _tiny(n=12, size=16, seed=0):
    """A tiny synthetic single-coil set (smooth random images) for the mechanics tests."""
    return tiny_train_data(n, size, seed)


KW = dict(lr=1e-3, batch_size=4, progress_bar=False, device="cpu")


@pytest.fixture(scope="module")
def t1_trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("t1")
    model = Cascade(2, width=16, depth=2, seed=0)
    res = train_sequential(model, _dataset("t1", "train"), _dataset("t1", "val", bank_split="test"),
                           epochs_per_subnet=2, lr=1e-3, batch_size=8, out_dir=out, progress_bar=False, device="cpu")
    return model, res, out


def test_cascade_beats_zero_filling_by_3db(t1_trained):
    model, res, out = t1_trained
    test = _dataset("t1", "test", bank_split="test")
    recs = evaluate(model, test, batch_size=16)
    assert len(recs) == len(test)
    gain = sum(r["psnr"] - r["psnr_zf"] for r in recs) / len(recs)
    assert gain >= 3.0, gain
    assert sum(r["ssim"] > r["ssim_zf"] for r in recs) >= 0.9 * len(recs)
    # logs: one row per epoch and stage, CSV and JSON
    rows = json.loads((out / "log_pretrain.json").read_text())
    assert [(r["stage"], r["epoch"]) for r in rows] == [(p, e) for p in (1, 2) for e in (1, 2)]
    assert (out / "log_pretrain.csv").read_text().count("\n") == 5
    # best checkpoint rebuilds the same network
    m2 = load_model(out / "best_pretrain.pt")
    for a, b in zip(model.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert m2.image_shape == (64, 64)


def test_finetune_on_20_target_images_lowers_target_loss(tmp_path):
    nat = _dataset("natural", "train", size=32, n=32)
    model = Cascade(2, width=8, depth=2, seed=1)
    train_sequential(model, nat, None, epochs_per_subnet=1, lr=1e-3, batch_size=8, progress_bar=False, device="cpu")
    tune = _dataset("t1", "tune", size=32, n=20)
    assert len(tune) == 20
    val = _dataset("t1", "val", size=32, bank_split="test")
    res = finetune(model, tune, val, epochs=3, lr=1e-4, batch_size=5, select_best=False, progress_bar=False,
                   device="cpu", out_dir=tmp_path)
    h = res["history"]
    assert h[0]["epoch"] == 0 and len(h) == 4
    assert h[-1]["val_loss"] < h[0]["val_loss"]
    assert (tmp_path / "best_finetune.pt").is_file()


def _weights(m):
    return [t.clone() for t in m.state_dict().values()]


def test_resume_after_interruption_is_bit_identical(tmp_path):
    tr, va = _tiny(12, seed=0), _tiny(4, seed=1)
    kw = dict(KW, epochs_per_subnet=2)
    ref = Cascade(2, width=4, depth=1, seed=0)
    train_sequential(ref, tr, va, out_dir=tmp_path / "a", **kw)
    finetune(ref, tr, va, epochs=2, out_dir=tmp_path / "a", **KW)

    # same seed, fresh run: identical weights
    again = Cascade(2, width=4, depth=1, seed=0)
    train_sequential(again, tr, va, out_dir=None, **kw)
    finetune(again, tr, va, epochs=2, **KW)
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(again)))

    class Boom(Exception):
        pass

    def killer(after):
        count = {"n": 0}

        def cb(info):
            count["n"] += 1
            if count["n"] == after:
                raise Boom

        return cb

    # interrupted in stage 2, epoch 2 (3 batches per epoch): steps 1..9 done, 10 kills
    m = Cascade(2, width=4, depth=1, seed=0)
    with pytest.raises(Boom):
        train_sequential(m, tr, va, out_dir=tmp_path / "b", callback=killer(11), **kw)
    ck = load_checkpoint(tmp_path / "b" / "checkpoint_pretrain.pt")
    assert (ck["stage"], ck["epoch"]) == (2, 1)
    assert set(ck["rng"]) >= {"torch", "numpy", "python"} and "optimizer" in ck
    m = Cascade(2, width=4, depth=7, seed=5)  # a wrong architecture cannot resume
    with pytest.raises(ValueError, match="different architecture"):
        train_sequential(m, tr, va, out_dir=tmp_path / "b", **kw)
    m = Cascade(2, width=4, depth=1, seed=123)  # the checkpoint's weights replace these
    train_sequential(m, tr, va, out_dir=tmp_path / "b", **kw)
    with pytest.raises(Boom):
        finetune(m, tr, va, epochs=2, out_dir=tmp_path / "b", callback=killer(4), **KW)
    finetune(m, tr, va, epochs=2, out_dir=tmp_path / "b", **KW)
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(m)))
    # the logs are complete despite the interruption
    rows = json.loads((tmp_path / "b" / "log_pretrain.json").read_text())
    assert [(r["stage"], r["epoch"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_cache_prefix_equals_recompute_and_best_epoch_selected():
    tr, va = _tiny(12, seed=2), _tiny(4, seed=3)
    a, b = Cascade(2, width=4, depth=1, seed=0), Cascade(2, width=4, depth=1, seed=0)
    ra = train_sequential(a, tr, va, epochs_per_subnet=3, cache_prefix=True, **KW)
    train_sequential(b, tr, va, epochs_per_subnet=3, cache_prefix=False, **KW)
    for x, y in zip(_weights(a), _weights(b)):
        assert torch.allclose(x, y, atol=1e-5)
    # the kept weights are those of the best validation epoch of the last stage
    last = [r["val_loss"] for r in ra["history"] if r["stage"] == 2]
    with torch.no_grad():
        out = a(va.x_u, va.kspace, va.mask)
    assert float(hybrid_loss(out, va.reference)) == pytest.approx(min(last), rel=1e-4)
    assert ra["best"][2][1] == pytest.approx(min(last))


def test_hybrid_loss_is_mse_plus_mae():
    a = torch.tensor([[[1.0, -2.0]]], dtype=torch.complex64)
    b = torch.tensor([[[0.0, 0.0]]], dtype=torch.complex64)
    # magnitudes 1, 2: MSE (1 + 4)/2 + MAE (1 + 2)/2
    assert float(hybrid_loss(a, b)) == pytest.approx(2.5 + 1.5)
    # complex: real/imag parts (1, 0), (-2, 0): MSE 5/4, MAE 3/4
    assert float(hybrid_loss(a, b, coils="multi")) == pytest.approx(1.25 + 0.75)
    # a misspelt option is an error (it used to fall back silently: "Multi" -> multi-coil, "sum" -> mean)
    with pytest.raises(ValueError, match="coils"):
        hybrid_loss(a, b, coils="Multi")
    with pytest.raises(ValueError, match="reduction"):
        hybrid_loss(a, b, reduction="sum")


def test_presets_are_the_papers_and_the_defaults():
    """PAPER is the paper's Methods ("Network training"), typed here from the paper, and it is
    what train_sequential/finetune use when given nothing; SMALL builds a cascade."""
    import inspect

    assert PAPER["train"]["lr"] == 1e-4 and PAPER["finetune"]["lr"] == 1e-5
    assert PAPER["train"]["epochs_per_subnet"] == 20 and PAPER["finetune"]["epochs"] == 100
    assert PAPER["train"]["batch_size"] == 50 and PAPER["model"]["width"] == 64 and PAPER["model"]["n_subnets"] == 5
    assert PAPER["train"]["weight_decay"] == 1e-6 and tuple(PAPER["train"]["betas"]) == (0.9, 0.999)
    from mrtl.train import TrainSettings

    for fn, phase, settings in ((train_sequential, "train", TrainSettings.pretrain()),
                                (finetune, "finetune", TrainSettings.finetune())):
        defaults = {k: v.default for k, v in inspect.signature(fn).parameters.items()}  # as help() shows them
        for key, value in PAPER[phase].items():
            assert defaults[key] == value, (fn.__name__, key)
            assert getattr(settings, "epochs" if key.startswith("epochs") else key) == value, (phase, key)
    Cascade(**SMALL["model"])


def test_reconstruct_scale_invariant_and_data_consistent():
    d = _tiny(3, seed=4)
    m = Cascade(2, width=4, depth=1, seed=0)
    out = reconstruct(m, d.kspace, d.mask)
    assert out.shape == d.kspace.shape
    out5 = reconstruct(m, 5 * d.kspace, d.mask)
    assert torch.allclose(out5, 5 * out, atol=1e-4 * float(out5.abs().max()))
    k = fft2c(out)
    assert torch.allclose(k[d.mask], d.kspace[d.mask], atol=1e-4)
    one = reconstruct(m, d.kspace[0], d.mask[0])
    assert one.shape == d.kspace.shape[1:] and torch.allclose(one, out[0], atol=1e-5)


def test_multicoil_training_runs_with_cc():
    """Multi-coil (simulated 8 coils, per-sample SPIRiT CC) trains end to end and improves."""
    ds = UndersampledDataset(_Subset(bundled("t1", "train", size=32), 16), MaskBank(3, (32, 32), n=20, seed=0),
                             coils="simulate", n_map_sets=2, n_coils=8, n_virtual=4)
    data = as_train_data(ds)
    assert data.G_img is not None and data.G_img.shape[1:3] == (4, 4)
    m = Cascade(2, "multi", width=8, depth=1, seed=0)
    train_sequential(m, data, data, epochs_per_subnet=3, **KW)
    recs = evaluate(m, data)
    gain = sum(r["psnr"] - r["psnr_zf"] for r in recs) / len(recs)
    assert gain > 1.0, gain


def test_errors():
    tr = _tiny(4)
    m = Cascade(1, width=4, depth=1)
    with pytest.raises(ValueError, match="lr"):
        train_sequential(m, tr, lr=-1.0, **{k: v for k, v in KW.items() if k != "lr"})
    with pytest.raises(TypeError, match="train_set"):
        train_sequential(m, 5, **KW)
    with pytest.raises(ValueError, match="multi-coil cascade|single-coil data"):
        train_sequential(Cascade(1, "multi", width=4, depth=1), tr, **KW)
    with pytest.raises(TypeError, match="model"):
        finetune("not a model", tr, **KW)
    with pytest.raises(ValueError, match=r"stages\[1\]"):  # names the argument (it used to say 'p')
        train_sequential(m, tr, stages=[1, 2], **KW)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_model("/nonexistent/ckpt.pt")


# ----------------------------------------------------------------------------------------------
# early stopping (patience) and selection by validation PSNR


def _stop_rule(curve, first_epoch, patience, budget):
    """Independent statement of the rule: the best epoch is the first maximum of the validation
    PSNR so far; the run stops after the first epoch ``e`` with ``e - best(e) >= patience``, or at
    ``budget``. ``curve[i]`` is the score of epoch ``first_epoch + i``."""
    best = first_epoch
    for i, v in enumerate(curve):
        e = first_epoch + i
        if v > curve[best - first_epoch]:
            best = e
        if e - best >= patience:
            return best, e
    return best, first_epoch + len(curve) - 1


def _skimage_val_psnr(model, val, upto=None):
    """Mean validation PSNR of the cascade's output after ``upto`` stages, by scikit-image."""
    from skimage.metrics import peak_signal_noise_ratio

    with torch.no_grad():
        out = model(val.x_u, val.kspace, val.mask, upto=upto).abs().double().numpy()
    ref = val.reference.abs().double().numpy()
    return sum(peak_signal_noise_ratio(r, o, data_range=r.max() - r.min()) for r, o in zip(ref, out)) / len(ref)


def test_early_stopping_stops_patience_epochs_after_the_best_epoch_and_keeps_its_weights(tmp_path):
    tr, va = _tiny(12, seed=0), _tiny(6, seed=1)
    kw = dict(KW, lr=3e-2, select_on="psnr")
    budget, pat = 8, 2
    full = train_sequential(Cascade(2, width=4, depth=1, seed=0), tr, va, epochs_per_subnet=budget, **kw)
    m = Cascade(2, width=4, depth=1, seed=0)
    res = train_sequential(m, tr, va, epochs_per_subnet=budget, patience=pat, out_dir=tmp_path / "pre", **kw)
    early = 0
    for p in (1, 2):
        s = res["stages"][p]
        curve = s["val_psnr"]
        assert s["epochs"] == list(range(1, len(curve) + 1))
        assert curve == [r["val_psnr"] for r in res["history"] if r["stage"] == p]
        best, stop = _stop_rule(curve, 1, pat, budget)
        assert (s["best_epoch"], s["stopped_epoch"]) == (best, stop)
        assert s["early_stopped"] == (stop < budget)
        if stop < budget:
            early += 1
            assert stop == best + pat and len(curve) == stop
        assert res["best"][p] == (best, pytest.approx(max(curve)))
        # the kept weights are the best epoch's: an independent PSNR of stage p's output
        assert _skimage_val_psnr(m, va, upto=p) == pytest.approx(max(curve), abs=1e-3)
    assert early >= 1  # the setting is chosen so that the rule fires
    # stage 1 of the run without early stopping went through the same epochs first
    c1 = res["stages"][1]["val_psnr"]
    assert full["stages"][1]["val_psnr"][: len(c1)] == c1 and len(full["stages"][1]["val_psnr"]) == budget
    # recorded in the files too
    summ = json.loads((tmp_path / "pre" / "summary_pretrain.json").read_text())
    assert [(d["stage"], d["best_epoch"], d["stopped_epoch"]) for d in summ] == [
        (p, res["stages"][p]["best_epoch"], res["stages"][p]["stopped_epoch"]) for p in (1, 2)]
    rows = json.loads((tmp_path / "pre" / "log_pretrain.json").read_text())
    assert [r["val_psnr"] for r in rows if r["stage"] == 2] == pytest.approx(res["stages"][2]["val_psnr"])

    # fine-tuning: epoch 0 (before fine-tuning) is a candidate too
    ft = finetune(m, tr, va, epochs=budget, patience=pat, out_dir=tmp_path / "ft", **dict(kw, lr=1e-2))
    s = ft["summary"]
    assert s["epochs"][0] == 0
    best, stop = _stop_rule(s["val_psnr"], 0, pat, budget)
    assert (s["best_epoch"], s["stopped_epoch"]) == (best, stop)
    assert _skimage_val_psnr(m, va) == pytest.approx(max(s["val_psnr"]), abs=1e-3)
    assert json.loads((tmp_path / "ft" / "summary_finetune.json").read_text())[0]["stopped_epoch"] == stop


def test_early_stopping_resumes_with_its_counter(tmp_path):
    """Killed after the best epoch, the resumed run keeps counting from the best epoch in the
    checkpoint (not from the restart) and ends exactly like the uninterrupted run."""
    tr, va = _tiny(12, seed=0), _tiny(6, seed=1)
    kw = dict(KW, lr=3e-2, select_on="psnr", epochs_per_subnet=8, patience=2)
    ref = Cascade(2, width=4, depth=1, seed=0)
    r0 = train_sequential(ref, tr, va, **kw)
    s1 = r0["stages"][1]
    assert s1["early_stopped"]

    class Boom(Exception):
        pass

    steps = {"n": 0}

    def cb(info):  # kill in the last epoch of stage 1 (3 steps per epoch)
        steps["n"] += 1
        if info["stage"] == 1 and info["epoch"] == s1["stopped_epoch"] - 1:
            raise Boom

    m = Cascade(2, width=4, depth=1, seed=0)
    with pytest.raises(Boom):
        train_sequential(m, tr, va, out_dir=tmp_path, callback=cb, **kw)
    ck = load_checkpoint(tmp_path / "checkpoint_pretrain.pt")
    assert ck["epoch"] == s1["stopped_epoch"] - 1 and ck["best"]["epoch"] == s1["best_epoch"]
    assert ck["since_best"] == ck["epoch"] - s1["best_epoch"] and ck["patience"] == 2
    m = Cascade(2, width=4, depth=1, seed=9)
    r1 = train_sequential(m, tr, va, out_dir=tmp_path, **kw)
    assert r1["stages"] == r0["stages"] and r1["best"] == r0["best"]
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(m)))


def test_early_stopping_arguments_are_checked():
    tr = _tiny(4)
    m = Cascade(1, width=4, depth=1)
    with pytest.raises(ValueError, match="patience"):
        train_sequential(m, tr, tr, epochs_per_subnet=1, patience=0, **KW)
    with pytest.raises(ValueError, match="select_on"):
        finetune(m, tr, tr, epochs=1, select_on="ssim", **KW)
    with pytest.raises(ValueError, match="select_on.*val_set"):
        finetune(m, tr, None, epochs=1, select_on="psnr", **KW)


# ----------------------------------------------------------------------------------------------
# kill at every write boundary: the resumed run ends with the files of an uninterrupted run


class _Killed(Exception):
    pass


class _FrozenClock:
    """Stands in for ``time`` in mrtl.train so that the logged seconds are the same in every run
    (the only nondeterministic bytes in the files)."""

    @staticmethod
    def perf_counter():
        return 0.0


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _pipeline(out, phase, patience=None):
    """Pretraining (2 stages x 2 epochs) or fine-tuning (2 epochs) of a tiny cascade in ``out``,
    resumable from there (as ``mrtl train`` / ``mrtl finetune`` run them)."""
    tr, va = _tiny(8, seed=0), _tiny(4, seed=1)
    m = Cascade(2, width=4, depth=1, seed=0)
    kw = dict(KW, patience=patience) if patience else KW
    if phase == "pretrain":
        train_sequential(m, tr, va, epochs_per_subnet=2, out_dir=out, **kw)
    else:
        finetune(m, tr, va, epochs=2, out_dir=out, **kw)
    return m


def _count_writes(monkeypatch, kill_after=None):
    import mrtl.utils

    real = mrtl.utils.atomic_write_bytes
    count = {"n": 0}

    def counted(path, data):
        out = real(path, data)
        count["n"] += 1
        if count["n"] == kill_after:
            raise _Killed(f"killed after write {count['n']} ({path})")
        return out

    monkeypatch.setattr(mrtl.utils, "atomic_write_bytes", counted)
    return count


@pytest.mark.parametrize("phase", ["pretrain", "finetune"])
def test_kill_at_every_write_boundary_then_resume_gives_the_uninterrupted_files(tmp_path, monkeypatch, phase):
    """A kill after any write (checkpoint, log, summary, best model) and a rerun end with exactly
    the files of an uninterrupted run, byte for byte, and the same weights. Regression: a kill
    after the last checkpoint but before ``best_<phase>.pt`` left the last subnetwork at its
    random initialisation in ``best_pretrain.pt`` and never wrote ``best_finetune.pt``."""
    import mrtl.train.trainer

    monkeypatch.setattr(mrtl.train.trainer, "time", _FrozenClock)
    with monkeypatch.context() as mp:
        count = _count_writes(mp)
        ref_model = _pipeline(tmp_path / "ref", phase)
    n_writes = count["n"]
    ref = _files(tmp_path / "ref")
    assert f"best_{phase}.pt" in ref and f"checkpoint_{phase}.pt" in ref
    assert n_writes >= 10
    for k in range(1, n_writes + 1):
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as mp:
            _count_writes(mp, kill_after=k)
            with pytest.raises(_Killed):
                _pipeline(out, phase)
        m = _pipeline(out, phase)  # the rerun resumes
        got = _files(out)
        assert sorted(got) == sorted(ref), f"kill after write {k}: files differ"
        for name in ref:
            assert got[name] == ref[name], f"kill after write {k}: {name} differs from the uninterrupted run"
        assert all(torch.equal(a, b) for a, b in zip(_weights(ref_model), _weights(m))), k


# ----------------------------------------------------------------------------------------------
# divergence guard and non-finite data/weights


def _finite(m):
    return all(bool(torch.isfinite(t).all()) for t in m.state_dict().values())


@pytest.mark.parametrize("with_val", [True, False])
def test_huge_learning_rate_stops_with_a_clear_error_and_finite_weights(tmp_path, with_val):
    """lr 1e6 used to finish (exit 0) with a validation PSNR of about -370 dB, and fine-tuning
    without a validation set left NaN weights in the model and in best_finetune.pt."""
    from mrtl.train import TrainingDiverged

    tr, va = _tiny(8, seed=0), (_tiny(4, seed=1) if with_val else None)
    # a non-finite loss in the first epoch
    m = Cascade(2, width=4, depth=1, seed=0)
    with pytest.raises(TrainingDiverged, match=r"pretrain stage 1, epoch 1/2: the training loss is (inf|nan); no checkpoint "
                                               r".*Lower the learning rate \(lr=1e\+06\)"):
        train_sequential(m, tr, va, epochs_per_subnet=2, out_dir=tmp_path / "p", **dict(KW, lr=1e6))
    assert _finite(m)
    assert not (tmp_path / "p" / "best_pretrain.pt").exists()
    m = Cascade(2, width=4, depth=1, seed=0)
    before = _weights(m)
    with pytest.raises(TrainingDiverged, match=r"finetune, epoch 1/2: the training loss is nan"):
        finetune(m, tr, va, epochs=2, out_dir=tmp_path / "f", **dict(KW, lr=1e6))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(m)))  # the weights before fine-tuning
    assert not (tmp_path / "f" / "best_finetune.pt").exists()
    # a finite loss but a collapsed image (validation PSNR about -190 dB; training loss 1e20)
    for fn, kw in ((train_sequential, dict(epochs_per_subnet=2)), (finetune, dict(epochs=2))):
        m = Cascade(2, width=4, depth=1, seed=0)
        what = "validation PSNR fell to" if with_val else "training loss rose to"
        with pytest.raises(TrainingDiverged, match=rf"(pretrain stage \d|finetune), epoch \d/2: the ({what}|training loss is (nan|inf))"):
            fn(m, tr, va, out_dir=tmp_path / fn.__name__, **dict(KW, lr=1e3), **kw)
        assert _finite(m)
        for f in (tmp_path / fn.__name__).glob("*.pt"):
            load_checkpoint(f)  # whatever was written holds finite weights


def test_divergence_keeps_the_last_good_checkpoint_and_a_rerun_resumes(tmp_path):
    from mrtl.train import TrainingDiverged

    tr, va = _tiny(8, seed=0), _tiny(4, seed=1)
    kw = dict(KW, epochs_per_subnet=2)
    ref = Cascade(2, width=4, depth=1, seed=0)
    train_sequential(ref, tr, va, **kw)
    m = Cascade(2, width=4, depth=1, seed=0)

    def poison(info):  # a NaN weight in stage 2, epoch 2 (as from an overflowing gradient)
        if (info["stage"], info["epoch"], info["step"]) == (2, 1, 0):
            with torch.no_grad():
                next(m.subnets[1].parameters()).view(-1)[0] = float("nan")

    with pytest.raises(TrainingDiverged, match=r"pretrain stage 2, epoch 2/2: .*last good checkpoint "
                                               r"\(pretrain stage 2 epoch 1\) is kept in .*checkpoint_pretrain.pt"):
        train_sequential(m, tr, va, out_dir=tmp_path, callback=poison, **kw)
    assert _finite(m)
    ck = load_checkpoint(tmp_path / "checkpoint_pretrain.pt")
    assert (ck["stage"], ck["epoch"]) == (2, 1)
    m2 = Cascade(2, width=4, depth=1, seed=0)
    train_sequential(m2, tr, va, out_dir=tmp_path, **kw)  # resumes from stage 2 epoch 1
    assert all(torch.equal(a, b) for a, b in zip(_weights(ref), _weights(m2)))


def test_non_finite_weights_are_refused_at_load(tmp_path):
    from mrtl.train import model_from_checkpoint, save_model

    m = Cascade(2, width=4, depth=1, seed=0)
    with torch.no_grad():
        next(m.subnets[1].parameters()).view(-1)[0] = float("inf")
    save_model(m, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"non-finite \(NaN/Inf\) weights .*subnets\.1\..*diverged"):
        load_model(tmp_path / "bad.pt")
    ck = torch.load(tmp_path / "bad.pt", weights_only=True)
    with pytest.raises(ValueError, match="non-finite"):
        model_from_checkpoint(ck)


def test_as_train_data_refuses_nan_naming_the_field_and_sample():
    d = _tiny(4, seed=0)
    ref = d.reference.clone()
    ref[2, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="train_set: reference of sample 2 contains NaN/Inf"):
        train_sequential(Cascade(1, width=4, depth=1), type(d)(d.x_u, d.kspace, d.mask, ref), epochs_per_subnet=1, **KW)
    samples = [dict(zero_filled=d.x_u[i], kspace=d.kspace[i], mask=d.mask[i], reference=d.reference[i], maps=None) for i in range(4)]
    samples[1]["kspace"] = d.kspace[1].clone()
    samples[1]["kspace"][0, 0] = complex(float("inf"), 0)
    with pytest.raises(ValueError, match="val_set: kspace of sample 1 contains NaN/Inf"):
        as_train_data(samples, name="val_set")


def test_reconstruct_restores_the_training_input_scale(tmp_path):
    """reconstruct(normalize=True) used to scale each zero-filled image to a 99th percentile of
    1, while training data have the *reference* at 1 (zero-filled inputs lower): the network saw
    other input scales than in training. Now the training set's median is saved and restored."""
    import numpy as np

    from mrtl.fft import ifft2c

    tr, tune = _tiny(8, seed=0), _tiny(5, seed=5)
    tune = type(tune)(tune.x_u * 0.7, tune.kspace * 0.7, tune.mask, tune.reference * 0.7)
    m = Cascade(2, width=4, depth=1, seed=0)
    train_sequential(m, tr, None, epochs_per_subnet=1, out_dir=tmp_path / "pre", **KW)
    median_p99 = lambda d: float(np.median([np.percentile(np.abs(x), 99) for x in d.x_u.numpy()]))  # noqa: E731
    assert m.input_p99 == pytest.approx(median_p99(tr), rel=1e-5)
    assert load_model(tmp_path / "pre" / "best_pretrain.pt").input_p99 == m.input_p99
    finetune(m, tune, None, epochs=1, out_dir=tmp_path / "ft", **KW)  # the target domain's scale
    m2 = load_model(tmp_path / "ft" / "best_finetune.pt")
    assert m2.input_p99 == pytest.approx(median_p99(tune), rel=1e-5) and abs(m2.input_p99 - m.input_p99) < 1e-9
    d = _tiny(3, seed=4)
    k = d.kspace * 77.0
    out = reconstruct(m2, k, d.mask)
    # by hand: each image scaled so that its zero-filled 99th percentile is input_p99
    s = torch.tensor([np.percentile(np.abs(x), 99) / m2.input_p99 for x in ifft2c(k).numpy()], dtype=torch.float32)
    by_hand = reconstruct(m2, k / s[:, None, None], d.mask, normalize=False) * s[:, None, None]
    assert torch.allclose(out, by_hand, atol=1e-4 * float(out.abs().max()))


def test_checkpoint_architecture_is_bounded_before_building(tmp_path):
    """A checkpoint claiming 10**7 subnetworks (or 10**5 channels) burnt minutes and GBs (or died
    in the allocator) before failing; now the metadata is checked first."""
    from mrtl.train import save_model

    save_model(Cascade(1, width=4, depth=1, seed=0), tmp_path / "ok.pt")
    ck = torch.load(tmp_path / "ok.pt", weights_only=True)
    for key, value in (("width", 10**5), ("n_subnets", 10**7), ("depth", -3), ("width", "64")):
        bad = dict(ck, arch=dict(ck["arch"], **{key: value}))
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(ValueError, match=rf"bad\.pt.*claims {key}=.*outside the supported range"):
            load_model(tmp_path / "bad.pt")
    torch.save(dict(ck, arch=dict(ck["arch"], layers=3)), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"unknown architecture keys \['layers'\]"):
        load_model(tmp_path / "bad.pt")
    assert load_model(tmp_path / "ok.pt").n_subnets == 1


def test_reconstruct_refuses_huge_slices_with_a_clear_error():
    from mrtl.train import MAX_RECON_PIXELS

    m = Cascade(1, width=4, depth=1, seed=0)
    side = int(MAX_RECON_PIXELS**0.5)
    k = torch.zeros(side + 1, side, dtype=torch.complex64)
    with pytest.raises(ValueError, match=rf"kspace: slices of {side + 1}x{side} exceed .* GB per slice.*max_pixels=None"):
        reconstruct(m, k, torch.ones(side + 1, side, dtype=torch.bool))
    d = _tiny(1, seed=0)
    with pytest.raises(ValueError, match="16x16 exceed the limit of 100 pixels"):
        reconstruct(m, d.kspace, d.mask, max_pixels=100)
    assert reconstruct(m, d.kspace, d.mask, max_pixels=None).shape == d.kspace.shape


# ----------------------------------------------------------------------------------------------
# the amp (bf16 autocast) code path, exercised on CPU


@pytest.mark.parametrize("coils", ["single", "multi"])
def test_amp_path_runs_on_cpu(coils):
    """amp=True used to be ignored off CUDA, so the bf16 path (complex tensors meeting bf16
    activations) never ran in tests; it now runs on CPU the same way: one stage, fine-tuning,
    evaluate and reconstruct, with bf16 convolutions and float32/complex64 everything else."""
    if coils == "single":
        d = _tiny(8, seed=0)
    else:
        ds = UndersampledDataset(_Subset(bundled("t1", "train", size=16), 6), MaskBank(2, (16, 16), n=5, seed=0),
                                 coils="simulate", n_map_sets=1, n_coils=4, n_virtual=2)
        d = as_train_data(ds)
    m = Cascade(2, coils, width=4, depth=1, seed=0)
    conv_dtypes = []
    hook = next(x for x in m.modules() if isinstance(x, torch.nn.Conv2d)).register_forward_hook(
        lambda mod, i, o: conv_dtypes.append(o.dtype))
    ref = Cascade(2, coils, width=4, depth=1, seed=0)
    kw = dict(KW, lr=1e-3)
    train_sequential(m, d, d, epochs_per_subnet=1, stages=[1], amp=True, **kw)
    train_sequential(ref, d, d, epochs_per_subnet=1, stages=[1], amp=False, **kw)
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    res = finetune(m, d, d, epochs=1, amp=True, **kw)
    assert all(t.dtype == torch.float32 for t in m.state_dict().values() if t.is_floating_point())
    assert _finite(m) and all(r["val_loss"] == r["val_loss"] for r in res["history"])
    recs, recs32 = evaluate(m, d, amp=True), evaluate(m, d, amp=False)
    assert all(abs(a["psnr"] - b["psnr"]) < 0.5 for a, b in zip(recs, recs32))  # bf16 precision only
    out = reconstruct(m, d.kspace, d.mask, maps=d.maps, G_img=d.G_img, amp=True)
    assert out.dtype == torch.complex64 and bool(torch.isfinite(out).all())
    # bf16 changes the numbers only at its precision: the same weights without amp agree closely
    out32 = reconstruct(m, d.kspace, d.mask, maps=d.maps, G_img=d.G_img, amp=False)
    assert float((out - out32).abs().max()) < 0.05 * float(out32.abs().max())
    # and hard DC holds exactly on the sampled points with amp too (single-coil: k-space equal)
    if coils == "single":
        assert torch.allclose(fft2c(out)[d.mask], d.kspace[d.mask], atol=1e-4 * float(d.kspace.abs().max()))
    hook.remove()


# ---------------------------------------------------------------- the package's shared pieces
def test_unknown_keyword_is_a_type_error_naming_it():
    """The settings are TrainSettings' fields, not a signature, so the functions check keywords
    themselves: a misspelt or foreign one is a TypeError naming it, the function and the valid
    keywords (before any training or device work)."""
    from mrtl.train import TrainSettings

    tr = _tiny(4)
    m = Cascade(1, width=4, depth=1, seed=0)
    before = _weights(m)
    with pytest.raises(TypeError, match=r"train_sequential\(\).*'pacience'.*did you mean 'patience'") as e:
        train_sequential(m, tr, pacience=2, **KW)
    assert "valid keywords: epochs_per_subnet, lr," in str(e.value) and "resample_masks" in str(e.value)
    # each phase names its own epoch count: E per subnetwork (Eq. 11) vs the fine-tuning budget
    with pytest.raises(TypeError, match=r"train_sequential\(\).*'epochs'.*'epochs_per_subnet'"):
        train_sequential(m, tr, epochs=1, **KW)
    with pytest.raises(TypeError, match=r"finetune\(\).*'epochs_per_subnet'.*'epochs'"):
        finetune(m, tr, epochs_per_subnet=1, **KW)
    with pytest.raises(TypeError, match=r"TrainSettings.pretrain\(\).*'bach_size'"):
        TrainSettings.pretrain(bach_size=4)
    with pytest.raises(TypeError, match="settings: expected mrtl.train.TrainSettings"):
        finetune(m, tr, None, dict(lr=1e-3))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(m)))


@pytest.mark.parametrize("key, value", [("stages", [1]), ("cache_prefix", False), ("resample_masks", False)])
def test_finetune_refuses_pretraining_only_settings(key, value):
    """cache_prefix, stages and resample_masks mean something only in sequential pretraining:
    finetune refuses them (it used to be a plain TypeError of the signature) instead of
    ignoring them; the message says why."""
    from mrtl.train import TrainSettings

    m = Cascade(1, width=4, depth=1, seed=0)
    with pytest.raises(TypeError, match=rf"finetune\(\).*'{key}': it applies to sequential pretraining only"):
        finetune(m, _tiny(4), epochs=1, **{key: value}, **KW)
    with pytest.raises(TypeError, match=key):
        TrainSettings.finetune(**{key: value})


def test_settings_object_and_overrides_train_like_keywords():
    """settings=TrainSettings.pretrain(...)/finetune(...) plus keyword overrides (which replace
    its fields) trains bit for bit like the same values given as keywords; the override really
    acts (the object's own lr gives other weights) and the object is not changed."""
    from mrtl.train import TrainSettings

    tr, va = _tiny(8, seed=0), _tiny(4, seed=1)
    kw = dict(KW, lr=3e-3, seed=2)

    def run(**call):
        m = Cascade(2, width=4, depth=1, seed=0)
        train_sequential(m, tr, va, **call.pop("pre", {}))
        finetune(m, tr, va, **call.pop("ft", {}))
        return _weights(m)

    pre = TrainSettings.pretrain(epochs_per_subnet=1, **KW)
    ft = TrainSettings.finetune(epochs=1, **KW)
    by_object = run(pre=dict(settings=pre, lr=3e-3, seed=2), ft=dict(settings=ft, epochs=2, lr=3e-3, seed=2))
    by_keywords = run(pre=dict(epochs_per_subnet=1, **kw), ft=dict(epochs=2, **kw))
    assert all(torch.equal(a, b) for a, b in zip(by_object, by_keywords))
    without_override = run(pre=dict(settings=pre), ft=dict(settings=ft))
    assert not all(torch.equal(a, b) for a, b in zip(by_object, without_override))
    assert (pre.epochs, pre.lr, pre.seed, ft.epochs, ft.lr) == (1, KW["lr"], 0, 1, KW["lr"])


def test_config_keys_are_the_settings_of_each_phase():
    """TRAIN_KEYS/FINETUNE_KEYS (what a config file's ``train``/``finetune`` sections may hold)
    are derived from TrainSettings' fields; typed out here to catch a field lost or added."""
    import dataclasses

    from mrtl.train import FINETUNE_KEYS, TRAIN_KEYS, TrainSettings

    common = {"lr", "betas", "weight_decay", "batch_size", "device", "amp", "tf32", "out_dir", "resume", "seed",
              "select_best", "patience", "select_on", "log_every", "progress_bar"}
    assert set(TRAIN_KEYS) == common | {"epochs_per_subnet", "cache_prefix", "stages", "resample_masks"}
    assert set(FINETUNE_KEYS) == common | {"epochs"}
    assert len(TRAIN_KEYS) == len(set(TRAIN_KEYS)) and len(FINETUNE_KEYS) == len(set(FINETUNE_KEYS))
    # every field is a keyword of pretraining (callback is not a config key: a function)
    assert {f.name for f in dataclasses.fields(TrainSettings)} == (set(TRAIN_KEYS) - {"epochs_per_subnet"}) | {
        "epochs", "callback"}

def test_validation_psnr_is_the_metrics_formula():
    """The trainer's validation PSNR is mrtl.metrics.psnr (one implementation), except that a NaN
    output scores NaN (the divergence guard reads it) instead of raising."""
    from mrtl.metrics import psnr
    from mrtl.train.trainer import _psnr_batch

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 16, 16, generator=g, dtype=torch.float32) + 1j * torch.randn(3, 16, 16, generator=g)
    out = ref + 0.1 * torch.randn(3, 16, 16, generator=g, dtype=torch.complex64)
    assert torch.equal(_psnr_batch(out, ref), psnr(out, ref=ref))
    bad = out.clone()
    bad[1, 0, 0] = float("nan")
    got = _psnr_batch(bad, ref)
    assert torch.isnan(got[1]) and torch.isfinite(got[[0, 2]]).all()


def test_checked_in_checkpoint_still_loads():
    """The checkpoint format (CKPT_FORMAT) is unchanged: the training checkpoint checked in under
    results/small/sweep/checkpoints/ (written before mrtl.train became a package) loads, rebuilds
    its cascade and reconstructs finite images."""
    from pathlib import Path

    from mrtl.train import CKPT_FORMAT, model_from_checkpoint

    root = Path(__file__).resolve().parents[1] / "results" / "small" / "sweep" / "checkpoints"
    files = sorted(root.rglob("checkpoint_*.pt"))
    assert files, "no checked-in checkpoint found under results/small/sweep/checkpoints"
    ck = load_checkpoint(files[0])
    assert ck["format"] == CKPT_FORMAT and {"optimizer", "rng", "phase", "epoch", "history"} <= set(ck)
    model = model_from_checkpoint(ck)
    k = fft2c(torch.rand(1, 64, 64).to(torch.complex64))
    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, ::2] = True
    assert torch.isfinite(reconstruct(model, k, mask).abs()).all()


@pytest.mark.parametrize("p99, expected", [(0.9, 0.9), (float("nan"), None), (-1.0, None), (0.0, None), ("0.9", None)])
def test_checkpoint_input_scale_is_kept_only_when_usable(tmp_path, p99, expected):
    """A model file's input scale (input_p99) is restored when it is a finite positive number and
    dropped otherwise (reconstruct then scales inputs to 1), and the image size comes back."""
    from mrtl.train import save_model

    m = Cascade(n_subnets=1, width=4, depth=1, seed=0)
    save_model(m, tmp_path / "m.pt", image_shape=(32, 32), extra={"input_p99": p99})
    back = load_model(tmp_path / "m.pt")
    assert back.input_p99 == expected and back.image_shape == (32, 32)
