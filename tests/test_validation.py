"""Bad input gives ValueError/TypeError whose message names the argument (and what was given).

Each row: (id, callable, exception type, regex the message must match). The regex starts with
the argument's name, as every mrtl message does ("R: expected ..., got ...").
"""

import math

import numpy as np
import pytest
import torch

from mrtl import fft, linops, masks

Z = torch.zeros(8, 8, dtype=torch.complex64)
ONES = torch.ones(8, 8, dtype=torch.complex64)
M = torch.ones(8, 8, dtype=torch.bool)
MAPS = torch.ones(2, 8, 8, dtype=torch.complex64)


def _nan():
    x = ONES.clone()
    x[1, 2] = complex(float("nan"), 0)
    return x


def _inf():
    x = ONES.clone()
    x[0, 0] = complex(float("inf"), 0)
    return x


def _wav():
    from mrtl import wavelets

    return wavelets


def _met():
    from mrtl import metrics

    return metrics


def _val():
    from mrtl import _validate

    return _validate


CASES = [
    # fft
    ("fft-rank", lambda: fft.fft2c(torch.ones(5, dtype=torch.complex64)), ValueError, r"^x: expected at least 2 dimensions.*got shape \(5,\)"),
    ("fft-dtype", lambda: fft.ifft2c(torch.ones(4, 4, dtype=torch.int64)), TypeError, r"^k: expected a complex or floating tensor.*int64"),
    ("fft-type", lambda: fft.fft2c([[1.0, 2.0]]), TypeError, r"^x: expected a torch.Tensor or numpy.ndarray, got list"),
    # masks
    ("R-high", lambda: masks.poisson_disc((64, 64), 25), ValueError, r"^R: expected a number <= 20.0, got 25.0"),
    ("R-low", lambda: masks.cartesian_1d((64, 64), 0.5), ValueError, r"^R: expected a number >= 1.0, got 0.5"),
    ("R-nan", lambda: masks.MaskBank(math.nan, (64, 64)), ValueError, r"^R: expected a finite number, got nan"),
    ("R-type", lambda: masks.poisson_disc((64, 64), "4"), TypeError, r"^R: expected a real number, got str"),
    ("shape-nonpositive", lambda: masks.poisson_disc((0, 64), 4), ValueError, r"^shape: expected positive integer sizes, got \(0, 64\)"),
    ("shape-rank", lambda: masks.cartesian_1d((4, 64, 64), 4), ValueError, r"^shape: expected a pair of positive integers \(H, W\), got \(4, 64, 64\)"),
    ("shape-tiny", lambda: masks.poisson_disc((2, 64), 4), ValueError, r"^shape: expected both sides >= 4"),
    ("calib-too-big", lambda: masks.poisson_disc((64, 64), 10, calib=40), ValueError, r"^calib: a 40x40 calibration square"),
    ("calib-larger-than-image", lambda: masks.poisson_disc((64, 64), 4, calib=65), ValueError, r"^calib: expected an integer in \[0, 64\], got 65"),
    ("seed-negative", lambda: masks.poisson_disc((64, 64), 4, seed=-1), ValueError, r"^seed: expected an integer in \[0, inf\], got -1"),
    ("seed-float", lambda: masks.cartesian_1d((64, 64), 4, seed=1.5), TypeError, r"^seed: expected an integer, got float"),
    ("center-fraction", lambda: masks.cartesian_1d((64, 64), 8, center_fraction=0.5), ValueError, r"^center_fraction: 0.5 gives 32 centre columns"),
    ("kind", lambda: masks.cartesian_1d((64, 64), 4, kind="radial"), ValueError, r"^kind: expected one of \('random', 'equispaced'\), got 'radial'"),
    ("bank-split", lambda: masks.MaskBank(4, (32, 32), split="validation"), ValueError, r"^split: expected one of .*got 'validation'"),
    ("bank-n", lambda: masks.MaskBank(4, (32, 32), n=0), ValueError, r"^n: expected an integer in \[1, inf\], got 0"),
    ("mask-all-zero", lambda: masks.achieved_acceleration(torch.zeros(8, 8, dtype=torch.bool)), ValueError, r"^mask: the mask samples nothing"),
    ("mask-values", lambda: masks.achieved_acceleration(torch.full((8, 8), 0.5)), ValueError, r"^mask: expected a boolean or 0/1 mask"),
    ("flag-string", lambda: _val().check_bool("maybe", "train.resume"), TypeError, r"^train.resume: expected true or false, got str 'maybe'"),
    ("flag-int", lambda: _val().check_bool(1, "resume"), TypeError, r"^resume: expected true or false, got int 1"),
    # linops
    ("op-mask-all-zero", lambda: linops.SingleCoilFourier(torch.zeros(8, 8, dtype=torch.bool)), ValueError, r"^mask: the mask samples nothing"),
    ("op-mask-rank", lambda: linops.SingleCoilFourier(torch.ones(8, dtype=torch.bool)), ValueError, r"^mask: expected at least 2 dimensions"),
    ("op-real-input", lambda: linops.SingleCoilFourier(M)(torch.ones(8, 8)), TypeError, r"^x: expected a complex tensor .*float32"),
    ("op-shape", lambda: linops.SingleCoilFourier(M)(torch.ones(8, 9, dtype=torch.complex64)), ValueError, r"^x: expected shape \(\.\.\., 8, 8\), got \(8, 9\)"),
    ("op-nan", lambda: linops.SingleCoilFourier(M)(_nan()), ValueError, r"^x: contains 1 NaN/Inf"),
    ("op-adjoint-inf", lambda: linops.SingleCoilFourier(M).H(_inf()), ValueError, r"^y: contains 1 NaN/Inf"),
    ("maps-rank", lambda: linops.MultiCoilFourier(M, ONES), ValueError, r"^maps: expected 3 or 4 dimensions"),
    ("maps-real", lambda: linops.MultiCoilFourier(M, MAPS.real), TypeError, r"^maps: expected a complex tensor"),
    ("maps-size", lambda: linops.MultiCoilFourier(M, torch.ones(2, 8, 9, dtype=torch.complex64)), ValueError, r"^maps: image size \(8, 9\) differs"),
    ("mask-batch-mismatch", lambda: linops.MultiCoilFourier(torch.ones(3, 8, 8, dtype=torch.bool), torch.ones(2, 2, 8, 8, dtype=torch.complex64)), ValueError, r"^mask: batch size 3 does not broadcast"),
    ("zf-mask-broadcast", lambda: linops.zero_filled(torch.ones(3, 8, 8, dtype=torch.complex64), torch.ones(2, 8, 8, dtype=torch.bool)), ValueError, r"^mask: mask of shape \(2, 8, 8\) does not broadcast"),
    ("zf-real-kspace", lambda: linops.zero_filled(torch.ones(8, 8), M), TypeError, r"^kspace: expected a complex tensor"),
    ("combine-coils", lambda: linops.coil_combine(torch.ones(3, 8, 8, dtype=torch.complex64), MAPS), ValueError, r"^maps: .*does not broadcast against coil_images"),
    ("rss-dim", lambda: linops.rss(torch.ones(2, 8, 8), dim=3), ValueError, r"^dim: expected a dimension of a 3-D tensor, got 3"),
    ("rss-bool", lambda: linops.rss(torch.ones(2, 8, 8, dtype=torch.bool)), TypeError, r"^coil_images: expected a floating or complex tensor"),
    # wavelets (mrtl.wavelets)
    ("wavelet-name", lambda: _wav().wavedec2(torch.ones(16, 16), wavelet="haar9"), ValueError, r"^wavelet: "),
    ("wavelet-level", lambda: _wav().wavedec2(torch.ones(16, 16), wavelet="db1", level=-1), ValueError, r"^level: expected an integer >= 0"),
    ("wavelet-rank", lambda: _wav().wavedec2(torch.ones(16), wavelet="db1"), ValueError, r"^x: expected at least 2 dimensions"),
    ("wavelet-nan", lambda: _wav().wavedec2(torch.full((16, 16), float("nan")), wavelet="db1"), ValueError, r"^x: contains 256 NaN/Inf"),
    # metrics (mrtl.metrics)
    ("metric-shape", lambda: _met().psnr(torch.ones(2, 8, 8), ref=torch.ones(2, 8, 9)), ValueError, r"^recon: "),
    ("metric-rank", lambda: _met().ssim(torch.ones(8), ref=torch.ones(8)), ValueError, r"^recon: expected \(H, W\), \(B, H, W\)"),
    ("metric-nan", lambda: _met().psnr(torch.ones(8, 8), ref=torch.full((8, 8), float("nan"))), ValueError, r"^ref: contains 64 NaN/Inf"),
    ("metric-data-range", lambda: _met().psnr(torch.ones(8, 8), ref=torch.ones(8, 8), data_range=-1.0), ValueError, r"^data_range: expected a finite number > 0"),
]


def test_enough_cases():
    assert len(CASES) >= 12
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("fn, exc, pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(fn, exc, pattern):
    with pytest.raises(exc, match=pattern) as info:
        fn()
    assert type(info.value) is exc  # not a subclass hiding a different failure


def test_numpy_input_accepted_where_valid():
    """The same entry points accept valid numpy input (the failures above are about content)."""
    k = fft.fft2c(np.ones((4, 4), dtype=np.complex64))
    assert k.dtype == torch.complex64
    assert masks.achieved_acceleration(np.ones((4, 4), dtype=bool)) == 1.0


# ------------------------------------------------------------ the mrtl command line: one line per failure
def _cli(argv, capsys):
    from mrtl.cli import main

    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def _tiny_ckpt(path):
    from mrtl.models import Cascade
    from mrtl.train import save_model

    save_model(Cascade(n_subnets=1, width=4, depth=1, seed=0), path, image_shape=(32, 32))
    return path


_TINY_TRAIN = "model: {n_subnets: 1, width: 4, depth: 1}\ndata: {domain: t1, size: 32, n: 4, n_val: 2}\n" \
              "train: {epochs_per_subnet: 1, batch_size: 2}\n"


def test_cli_corrupt_checkpoint_in_out_says_it_blocks_resume(tmp_path, capsys):
    (tmp_path / "cfg.yaml").write_text(_TINY_TRAIN)
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint_pretrain.pt").write_bytes(b"\x80\x02garbage" * 10)
    rc, err = _cli(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out)], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith("mrtl train: error: ")
    assert str(out / "checkpoint_pretrain.pt") in err[0] and "resum" in err[0] and "move it away" in err[0]


@pytest.mark.parametrize("content, words", [
    (b"", "EOFError"), (b"PK\x03\x04trunc", "cannot be read as a checkpoint"),
    (b"\x80\x02}q\x00.", "cannot be read as a checkpoint"),
    # a garbled pickle stream on which torch.load raises IndexError
    (b"\x80\x02" + np.random.default_rng(0).bytes(800)[500:], "cannot be read as a checkpoint")])
def test_cli_unreadable_checkpoint_is_one_line(tmp_path, capsys, content, words):
    bad = tmp_path / "model.pt"
    bad.write_bytes(content)
    rc, err = _cli(["evaluate", "--ckpt", str(bad), "--data", "t1", "--size", "32", "--n", "2"], capsys)
    assert rc == 2 and len(err) == 1 and str(bad) in err[0] and (words in err[0] or "not an mrtl" in err[0])


def test_cli_malformed_yaml_names_file_and_line(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model: {n_subnets: 1}\ntrain: {epochs_per_subnet: [1\n")
    rc, err = _cli(["train", "--config", str(cfg), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and str(cfg) in err[0] and "malformed YAML at line" in err[0]


def test_cli_decompression_bomb_is_one_line(tmp_path, capsys, monkeypatch):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        Image.new("L", (64, 64), color=40 * i).save(photos / f"p{i}.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64x64 is then "a bomb" (> 2x the limit)
    (tmp_path / "cfg.yaml").write_text("model: {n_subnets: 1, width: 4, depth: 1}\n"
                                       f"data: {{path: {photos}, format: photos, size: 32}}\n"
                                       "train: {epochs_per_subnet: 1, batch_size: 2}\n")
    rc, err = _cli(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and "p0.png" in err[0] and "decompression bomb" in err[0]


def test_cli_internal_error_is_one_line_with_a_debug_hint(capsys, monkeypatch):
    import mrtl.data.cli as dcli

    def buggy(args):
        return [][1]  # an IndexError: a bug, not bad input

    monkeypatch.setattr(dcli, "_info", buggy)
    rc, err = _cli(["data", "info"], capsys)
    assert rc == 1 and len(err) == 1 and "internal error" in err[0] and "MRTL_DEBUG=1" in err[0]
    monkeypatch.setenv("MRTL_DEBUG", "1")
    with pytest.raises(IndexError):
        _cli(["data", "info"], capsys)


def test_cli_ctrl_c_exits_130(capsys, monkeypatch):
    import mrtl.data.cli as dcli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(dcli, "_info", interrupted)
    rc, err = _cli(["data", "info"], capsys)
    assert rc == 130 and len(err) == 1 and "interrupted" in err[0]


def test_cli_reconstruct_bad_files_are_one_line(tmp_path, capsys):
    ck = _tiny_ckpt(tmp_path / "m.pt")
    k = np.zeros((2, 32, 32), dtype=np.complex64)
    good = tmp_path / "k.npy"
    np.save(good, k)
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((32, 32), dtype=bool))
    trunc = tmp_path / "trunc.npy"
    trunc.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    h5 = tmp_path / "bad.h5"
    h5.write_bytes(b"not hdf5 at all" * 10)
    link = tmp_path / "dangling.npy"
    link.symlink_to(tmp_path / "gone.npy")
    zero = tmp_path / "no_slices.npy"
    np.save(zero, np.zeros((0, 32, 32), dtype=np.complex64))
    for bad in (trunc, empty, h5, link, zero):
        rc, err = _cli(["reconstruct", "--ckpt", str(ck), "--input", str(bad), "--mask", str(mask),
                        "--output", str(tmp_path / "out.npy")], capsys)
        assert rc == 2 and len(err) == 1 and bad.name in err[0], (bad.name, err)
        assert not (tmp_path / "out.npy").exists()


@pytest.mark.parametrize("section, key, value, words", [
    ("train", "resume", "maybe", "train.resume: expected true or false, got str 'maybe'"),
    ("data", "n_val", 0, "data.n_val: expected an integer in [1, inf], got 0"),
    ("train", "stages", [5], "train.stages: expected an integer in [1, 1], got 5"),
])
def test_cli_config_errors_name_the_field_of_the_file(tmp_path, capsys, section, key, value, words):
    import json

    cfg = {"model": {"n_subnets": 1, "width": 4, "depth": 1, "seed": 0}, "data": {"domain": "t1", "size": 32, "n": 4},
           "train": {"epochs_per_subnet": 1, "batch_size": 2}}
    cfg[section][key] = value
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    rc, err = _cli(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "o").exists()  # refused before anything was trained or written


def test_acceleration_is_checked_by_one_function():
    """Every R check in the package goes through ``check_acceleration`` (one rule, one message):
    no module validates an acceleration with a bare ``check_float``."""
    import re
    from pathlib import Path

    import mrtl
    import mrtl.recon
    from mrtl._validate import check_acceleration

    root = Path(mrtl.__file__).parent
    bare = re.compile(r"check_float\(\s*\w*(acceleration|\bR\b)\w*\s*,")
    offenders = [f"{p.relative_to(root)}:{i}" for p in root.rglob("*.py") if p.name != "_validate.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if bare.search(line)]
    assert not offenders, f"R checked with a bare check_float at {offenders}"
    with pytest.raises(ValueError, match="^R: "):
        mrtl.recon.default_cs_lambda(0.5)
    with pytest.raises(ValueError, match="^R: "):
        mrtl.recon.spirit.default_spirit_iterations(0.9)
    assert check_acceleration(64.0, high=None) == 64.0  # a measured R may exceed the 20 cap
