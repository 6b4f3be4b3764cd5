"""Tests of ``mrtl train | finetune | evaluate | reconstruct`` (mrtl.train_cli): a tiny end-to-end
run through the command line, and clear errors for bad configs, foreign checkpoints, mismatched
image sizes and missing data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import yaml

from mrtl.cli import main
from mrtl.fft import fft2c

TINY = {
    "model": {"n_subnets": 1, "width": 4, "depth": 1, "seed": 0},
    "data": {"domain": "t1", "size": 32, "R": 3, "n": 8, "n_val": 4, "n_masks": 10},
    "train": {"epochs_per_subnet": 1, "lr": 1e-3, "batch_size": 4, "progress_bar": False, "device": "cpu"},
}


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    cfg = _write(d / "cfg.yaml", TINY)
    assert main(["train", "--config", cfg, "--out", str(d / "run")]) == 0
    return d


def test_train_evaluate_reconstruct_finetune(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "best_pretrain.pt")
    assert (trained / "run" / "log_pretrain.csv").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--ckpt", ckpt, "--data", "t1", "--size", "32", "--n", "4", "--R", "3",
                 "--output", str(tmp_path / "per_image.csv")]) == 0
    out = capsys.readouterr().out
    assert "network" in out and "zero-filled" in out and "psnr_mean" in out and "ssim_mean" in out
    assert (tmp_path / "per_image.csv").read_text().count("\n") == 5

    # reconstruct: .npy and .h5 inputs give the same data-consistent result
    g = torch.Generator().manual_seed(0)
    img = torch.rand(2, 32, 32, generator=g)
    mask = torch.rand(32, 32, generator=g) < 0.4
    k = (fft2c(img) * mask).numpy()
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", mask.numpy())
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"] = k
    for inp, outp in (("k.npy", "a.npy"), ("k.h5", "b.npy")):
        assert main(["reconstruct", "--ckpt", ckpt, "--input", str(tmp_path / inp), "--mask", str(tmp_path / "m.npy"),
                     "--output", str(tmp_path / outp)]) == 0
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (2, 32, 32) and np.array_equal(a, b)
    ka = fft2c(torch.from_numpy(a)).numpy()
    np.testing.assert_allclose(ka[:, mask.numpy()], k[:, mask.numpy()], atol=1e-4)

    ft = _write(tmp_path / "ft.yaml", {"data": {"domain": "t1", "split": "tune", "size": 32, "R": 3, "n": 4, "n_val": 4},
                                       "finetune": {"epochs": 1, "lr": 1e-4, "batch_size": 4, "progress_bar": False, "device": "cpu"}})
    assert main(["finetune", "--from", ckpt, "--config", ft, "--out", str(tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "best_finetune.pt").is_file()


def test_unknown_key_lists_valid_keys(tmp_path, capsys):
    cfg = {**TINY, "train": {**TINY["train"], "learning_rate": 1e-3}}
    assert main(["train", "--config", _write(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "valid keys" in err and "'lr'" in err
    assert main(["train", "--config", _write(tmp_path / "d.yaml", {"optimizer": {}})]) == 2
    assert "unknown section" in capsys.readouterr().err


def test_checkpoint_from_another_architecture(trained, tmp_path, capsys):
    # resuming into an out_dir that holds another architecture's checkpoint
    cfg = {**TINY, "model": {**TINY["model"], "width": 6}}
    assert main(["train", "--config", _write(tmp_path / "c.yaml", cfg), "--out", str(trained / "run")]) == 2
    assert "different architecture" in capsys.readouterr().err
    # a file that is not an mrtl checkpoint
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    assert main(["evaluate", "--ckpt", str(tmp_path / "foreign.pt"), "--data", "t1"]) == 2
    assert "not an mrtl cascade checkpoint" in capsys.readouterr().err


def test_mismatched_image_size(trained, tmp_path, capsys):
    ckpt = str(trained / "run" / "best_pretrain.pt")
    assert main(["evaluate", "--ckpt", ckpt, "--data", "t1", "--size", "16", "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert "(16, 16)" in err and "(32, 32)" in err
    np.save(tmp_path / "k.npy", np.zeros((48, 48), np.complex64))
    np.save(tmp_path / "m.npy", np.ones((48, 48), bool))
    assert main(["reconstruct", "--ckpt", ckpt, "--input", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m.npy"),
                 "--output", str(tmp_path / "o.npy")]) == 2
    assert "(48, 48)" in capsys.readouterr().err


def test_missing_data_path_and_files(tmp_path, capsys):
    cfg = {**TINY, "data": {"path": str(tmp_path / "no_such_folder"), "size": 32}}
    assert main(["train", "--config", _write(tmp_path / "c.yaml", cfg)]) == 2
    err = capsys.readouterr().err
    assert "no_such_folder" in err and "does not exist" in err
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt", str(tmp_path / "none.pt"), "--data", "t1"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", ["train", "finetune", "evaluate", "reconstruct"])
def test_help_explains_each_option(cmd, capsys):
    import argparse

    from mrtl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices[cmd]
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    opts = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(opts) >= 2
    for a in opts:
        assert a.help and len(a.help) > 10, a.option_strings
        assert a.option_strings[0] in out and " ".join(a.help.split())[:25] in out


def test_reconstruct_refuses_a_checkpoint_with_nan_weights(trained, tmp_path, capsys):
    """A NaN-weight checkpoint used to give an all-NaN output file and exit 0."""
    from mrtl.train import load_checkpoint

    ck = torch.load(trained / "run" / "best_pretrain.pt", weights_only=True)
    name = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][name] = torch.full_like(ck["model"][name], float("nan"))
    torch.save(ck, tmp_path / "nan.pt")
    np.save(tmp_path / "k.npy", np.ones((32, 32), np.complex64))
    np.save(tmp_path / "m.npy", np.ones((32, 32), bool))
    assert main(["reconstruct", "--ckpt", str(tmp_path / "nan.pt"), "--input", str(tmp_path / "k.npy"), "--mask",
                 str(tmp_path / "m.npy"), "--output", str(tmp_path / "o.npy")]) != 0
    err = capsys.readouterr().err
    assert "nan.pt" in err and "non-finite" in err and name in err
    assert not (tmp_path / "o.npy").exists()
    load_checkpoint(trained / "run" / "best_pretrain.pt")  # the good one still loads


def test_reconstruct_streams_batches_and_equals_the_whole_array(trained, tmp_path, monkeypatch):
    """mrtl reconstruct reads and writes batch by batch (memory bounded by the batch): the file
    equals numpy.save of the library's whole-array reconstruction; a failure leaves nothing."""
    from mrtl.train import load_model, reconstruct

    ckpt = str(trained / "run" / "best_pretrain.pt")
    g = torch.Generator().manual_seed(1)
    img = torch.rand(7, 32, 32, generator=g)
    mask = torch.rand(7, 32, 32, generator=g) < 0.4
    k = (fft2c(img) * mask).to(torch.complex128).numpy()  # complex128 input is read as complex64
    np.save(tmp_path / "k.npy", k)
    np.save(tmp_path / "m.npy", mask.numpy())
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["kspace"] = k
    want = reconstruct(load_model(ckpt), torch.from_numpy(k).to(torch.complex64), mask).numpy()
    np.save(tmp_path / "want.npy", want)
    for inp in ("k.npy", "k.h5"):
        assert main(["reconstruct", "--ckpt", ckpt, "--input", str(tmp_path / inp), "--mask", str(tmp_path / "m.npy"),
                     "--output", str(tmp_path / "o.npy"), "--batch-size", "3"]) == 0
        got = np.load(tmp_path / "o.npy")
        assert got.shape == (7, 32, 32) and got.dtype == np.complex64
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
        assert len((tmp_path / "o.npy").read_bytes()) == len((tmp_path / "want.npy").read_bytes())
    # the batches are read one at a time: no read spans more than --batch-size slices
    import mrtl.train_cli as tc

    reads = []
    real = tc._LazyArray.read
    monkeypatch.setattr(tc._LazyArray, "read", lambda self, s=None, e=None: reads.append((self.what, s, e)) or real(self, s, e))
    assert main(["reconstruct", "--ckpt", ckpt, "--input", str(tmp_path / "k.npy"), "--mask", str(tmp_path / "m.npy"),
                 "--output", str(tmp_path / "o2.npy"), "--batch-size", "3"]) == 0
    assert [r for r in reads if r[0] == "--input"] == [("--input", 0, 3), ("--input", 3, 6), ("--input", 6, 7)]
    # a failure in the middle (NaN in slice 5) leaves neither the output nor a temporary file
    k[5, 0, 0] = np.nan
    np.save(tmp_path / "bad.npy", k)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["reconstruct", "--ckpt", ckpt, "--input", str(tmp_path / "bad.npy"), "--mask", str(tmp_path / "m.npy"),
                 "--output", str(tmp_path / "o3.npy"), "--batch-size", "3"]) != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_train_seeds_the_model_and_validates_on_its_own_masks(tmp_path, monkeypatch):
    """``mrtl train`` without ``model.seed`` still gives the same initial weights every time (the
    training seed seeds them), and its validation set draws from the 'val' mask bank, never the
    test bank that ``mrtl evaluate`` uses."""
    import mrtl.train
    from mrtl.masks import MaskBank

    seen = []

    def capture(model, train_set, val_set, **kw):
        seen.append(({k: v.clone() for k, v in model.state_dict().items()}, val_set))
        return {"history": [], "stages": {}}

    monkeypatch.setattr(mrtl.train, "train_sequential", capture)
    cfg = {**TINY, "model": {k: v for k, v in TINY["model"].items() if k != "seed"}}
    for i in range(2):
        torch.manual_seed(100 + i)  # a different global RNG state each time
        assert main(["train", "--config", _write(tmp_path / f"c{i}.yaml", cfg), "--out", str(tmp_path / f"o{i}")]) == 0
    (w0, val), (w1, _) = seen
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    d = TINY["data"]
    test_bank = MaskBank(d["R"], (d["size"], d["size"]), n=d["n_masks"], seed=0, split="test")
    val_masks = {val.mask_bank.masks[i].numpy().tobytes() for i in range(len(val.mask_bank))}
    assert val.mask_bank.split == "val"
    assert not val_masks & {m.numpy().tobytes() for m in test_bank.masks}
