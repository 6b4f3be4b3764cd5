"""``mrtl adapt`` end to end on bundled slices with the shipped checkpoint (what a fresh clone
has): supervised on fully sampled images, SSDU on undersampled k-space + masks; one-line errors."""

from __future__ import annotations

import json

import numpy as np
import torch

from mrtl.cli import main
from mrtl.data import bundled
from mrtl.fft import fft2c
from mrtl.masks import poisson_disc
from mrtl.train import load_model


def _write_slices(tmp_path, n=4):
    imgs, us = tmp_path / "imgs", tmp_path / "us"
    imgs.mkdir()
    us.mkdir()
    src = bundled("t1", "tune", size=64)
    for i in range(n):
        img = src[i].image.numpy()
        np.save(imgs / f"t1_{i}.npy", img)
        m = poisson_disc((64, 64), 4, seed=20 + i)
        np.save(us / f"s{i}_kspace.npy", (fft2c(torch.as_tensor(img).to(torch.complex64)) * m).numpy())
        np.save(us / f"s{i}_mask.npy", m.numpy())
    return imgs, us


def test_adapt_supervised_and_ssdu_end_to_end(tmp_path, capsys):
    imgs, us = _write_slices(tmp_path)
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    assert main(["adapt", "--data", str(imgs), "--output", str(out1), "--epochs", "1", "--seed", "0"]) == 0
    s1 = json.loads((out1 / "summary.json").read_text())
    assert s1["mode"] == "supervised" and np.isfinite(s1["val_psnr_after"]) and s1["n_tune"] + s1["n_val"] == 4
    assert "validation PSNR" in capsys.readouterr().out
    assert main(["adapt", "--data", str(us), "--output", str(out2), "--epochs", "1", "--R", "4"]) == 0
    s2 = json.loads((out2 / "summary.json").read_text())
    assert s2["mode"] == "ssdu" and np.isfinite(s2["val_loss_best"]) and s2["val_loss_best"] <= s2["val_loss_before"]
    assert "self-validation" in capsys.readouterr().out
    # images with --mode ssdu: simulated undersampling, the slices keep the bank's R
    assert main(["adapt", "--data", str(imgs), "--output", str(tmp_path / "o3"), "--epochs", "1", "--mode", "ssdu"]) == 0
    assert json.loads((tmp_path / "o3" / "summary.json").read_text())["mode"] == "ssdu"
    for out in (out1, out2):
        load_model(out / "model.pt")
        recs = sorted((out / "recon").glob("*.npy"))
        assert len(recs) == 4
        r = np.load(recs[0])
        assert r.shape == (64, 64) and np.iscomplexobj(r) and np.isfinite(r).all()
    # the SSDU reconstruction keeps the acquired k-space (hard DC), at the scale of the input
    k, m = np.load(us / "s0_kspace.npy"), np.load(us / "s0_mask.npy")
    r = np.load(out2 / "recon" / "s0.npy")
    np.testing.assert_allclose(fft2c(torch.as_tensor(r))[torch.as_tensor(m)].numpy(), k[m], rtol=1e-3, atol=1e-3)


def test_adapt_errors_are_one_line(tmp_path, capsys):
    _, us = _write_slices(tmp_path, n=2)
    (us / "s1_mask.npy").unlink()
    assert main(["adapt", "--data", str(us), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "s1_mask.npy" in err and "mrtl adapt: error" in err
    assert main(["adapt", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "o")]) == 2
    assert "--data" in capsys.readouterr().err
    (us / "s1_kspace.npy").unlink()  # one slice left: nothing to validate on
    assert main(["adapt", "--data", str(us), "--output", str(tmp_path / "o"), "--mode", "ssdu"]) == 2
    assert "at least 2" in capsys.readouterr().err


def test_adapt_help_explains_each_option(capsys):
    import argparse

    import pytest

    from mrtl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    with pytest.raises(SystemExit) as e:
        main(["adapt", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for a in sub.choices["adapt"]._actions:
        if a.option_strings and a.dest != "help":
            assert a.help and len(a.help) > 10 and a.option_strings[0] in out, a.option_strings
