"""Tests of mrtl.experiments: configs, the long results format, the comparison with the paper
(headline numbers recomputed from the paper's table must equal the numbers its text quotes),
the convergence rule (against an analytic curve), tiny end-to-end studies, the resumable sweep,
the papermill runner and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mrtl.experiments import (COLUMNS, MulticoilConfig, SweepConfig, TransferConfig, compare, convergence_ntune,
                              headline_numbers, load_paper_table, make_config, paired_differences, side_by_side,
                              summarize_records)
from mrtl.experiments.compare import PAPER_HEADLINES
from mrtl.experiments.results import KEYS, StudyResult, read_results, write_results
from mrtl.experiments.runner import parse_parameters

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------ configs
def test_full_preset_is_the_papers_settings():
    cfg = TransferConfig.full()
    # Methods, "Network training": 256x256, 5 subnetworks x 64 channels, 20 epochs each,
    # 100 fine-tuning epochs, Adam lr 1e-4 / 1e-5, batch 50, R = 2..10, 100 masks per bank.
    assert (cfg.size, cfg.n_subnets, cfg.width, cfg.depth) == (256, 5, 64, 4)
    assert (cfg.epochs, cfg.ft_epochs, cfg.batch_size, cfg.n_masks) == (20, 100, 50, 100)
    assert (cfg.lr_pretrain, cfg.lr_finetune) == (1e-4, 1e-5)
    assert cfg.R_list == (2, 4, 6, 8, 10) and cfg.n_train == 2000 and set(cfg.targets) == {"t1", "t2"}
    sw = SweepConfig.full()
    assert sw.n_train_list == (500, 1000, 2000, 4000) and min(sw.n_tune_list) == 0 and max(sw.n_tune_list) == 100
    assert MulticoilConfig.full().coils == 8 and MulticoilConfig.full().kernel_size == 7


def test_full_preset_agrees_with_train_presets():
    train = pytest.importorskip("mrtl.train")
    cfg = TransferConfig.full()
    assert cfg.epochs == train.PAPER["train"]["epochs_per_subnet"] and cfg.lr_pretrain == train.PAPER["train"]["lr"]
    assert cfg.ft_epochs == train.PAPER["finetune"]["epochs"] and cfg.lr_finetune == train.PAPER["finetune"]["lr"]
    assert cfg.width == train.PAPER["model"]["width"] and cfg.n_subnets == train.PAPER["model"]["n_subnets"]


def test_small_preset_uses_the_cpu_learning_rates():
    cfg = TransferConfig.small()
    full = TransferConfig.full()
    # larger rates than the paper's (a CPU affords few updates), and the from-scratch baseline
    # gets exactly the fine-tuning budget (same rate, same epochs), so the comparison is fair
    assert cfg.lr_pretrain > full.lr_pretrain and cfg.lr_finetune > full.lr_finetune
    assert cfg.lr_scratch == cfg.lr_finetune and cfg.R_list == (4, 8) and cfg.size == 64
    assert set(cfg.sources) == {"natural", "t1", "t2"} and cfg.targets == ("t1",)


@pytest.mark.parametrize("bad, exc, words", [
    (dict(scale="huge"), ValueError, "scale"),
    (dict(epochs=-1), ValueError, "epochs"),
    (dict(epochs=2.5), TypeError, "epochs"),
    (dict(R_list=[4, 4]), ValueError, "R_list"),
    (dict(R_list=[1]), ValueError, "R_list"),
    (dict(lr_pretrain=float("nan")), ValueError, "lr_pretrain"),
    (dict(size=30), ValueError, "size"),
    (dict(sources=["imagenet"]), ValueError, "sources"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(n_tune=0), ValueError, "n_tune"),
])
def test_config_validation_names_the_field(bad, exc, words):
    with pytest.raises(exc, match=words):
        TransferConfig.small().replace(**bad)


def test_unknown_key_and_make_config():
    with pytest.raises(ValueError, match="unknown key"):
        TransferConfig.from_dict({"epochz": 3})
    cfg = make_config("sweep", "small", epochs=None, n_tune_list=[20, 0, 4], R_list=[8])
    assert cfg.n_tune_list == (0, 4, 20) and cfg.R_list == (8,) and cfg.epochs == SweepConfig.small().epochs
    with pytest.raises(ValueError, match="study"):
        make_config("table9")
    rt = TransferConfig.from_dict(json.loads(TransferConfig.small().to_json()))
    assert rt == TransferConfig.small()


# --------------------------------------------------------------------------- paper comparison
def test_headlines_recomputed_from_the_paper_table_match_its_text():
    paper = load_paper_table()
    assert list(paper.columns[:10]) == COLUMNS
    h = headline_numbers(paper)
    for key in [("T1", "raw gap (in-domain - natural), dB"), ("T1", "tuned gap (in-domain - natural), dB"),
                ("T1", "transferred tuned - CS, dB"), ("S2", "raw gap (in-domain - natural), dB"),
                ("S2", "tuned gap (in-domain - natural), dB"), ("S2", "transferred tuned - CS, dB"),
                ("T2", "natural tuned - SPIRiT, dB")]:
        assert abs(h[key] - PAPER_HEADLINES[key]) <= 0.01, (key, h[key])


def test_reference_copy_equals_shared_table():
    shared = ROOT.parent / "shared" / "reference" / "paper_tables.csv"
    if not shared.exists():
        pytest.skip("../shared is not beside this clone")
    assert (ROOT / "reference" / "paper_tables.csv").read_text() == shared.read_text()


def test_side_by_side_maps_natural_to_imagenet():
    paper = load_paper_table()
    ours = paper[paper["table"] == "T1"].copy()
    ours["method"] = ours["method"].replace({"ImageNet-trained": "Natural-trained"})
    ours["psnr_mean"] += 1.0
    t = side_by_side(ours, paper)
    assert len(t) == len(ours) and np.allclose(t["dpsnr"], 1.0)
    comp = compare(ours, paper)
    ours_h = comp.headlines.set_index(["table", "quantity"])
    # a constant offset leaves the gaps unchanged
    assert abs(ours_h.loc[("T1", "raw gap (in-domain - natural), dB"), "ours"] - 1.97) < 0.01
    assert "ImageNet-trained" in str(comp) and "Headline" in str(comp)


def test_convergence_rule_against_an_analytic_curve():
    # PSNR(n) = P - a exp(-n / tau): the per-sample change ~ (a / tau) exp(-n / tau) falls below
    # tol * P_ref at n* = tau * ln(a / (tau * tol * P_ref)).
    P, a, tau, tol = 35.0, 4.0, 12.0, 5e-4
    n = np.arange(0, 101)
    psnr = P - a * np.exp(-n / tau)
    n_star = tau * math.log(a / (tau * tol * P))
    got = convergence_ntune(n, psnr, P, tol=tol)
    # the forward difference over [n, n+1] is below the derivative at n, so the grid answer is
    # within one sample before the analytic crossing
    assert n_star - 1.0 <= got <= n_star + 1e-9
    # shuffled input, same answer
    perm = np.random.default_rng(0).permutation(len(n))
    assert convergence_ntune(n[perm], psnr[perm], P, tol=tol) == got


def test_convergence_rule_literal_vs_sustained_and_errors():
    n = [0, 10, 20, 30, 40]
    p = [30.0, 30.01, 31.0, 31.01, 31.02]  # a flat step, then a jump, then flat
    assert convergence_ntune(n, p, 31.0, sustained=False) == 0
    assert convergence_ntune(n, p, 31.0, sustained=True) == 20
    assert math.isnan(convergence_ntune([0, 10], [20.0, 25.0], 30.0))
    with pytest.raises(ValueError, match="psnr"):
        convergence_ntune([0, 10], [20.0, float("nan")], 30.0)
    with pytest.raises(ValueError, match="psnr_ref"):
        convergence_ntune([0, 10], [20.0, 21.0], -1.0)
    with pytest.raises(ValueError, match="distinct"):
        convergence_ntune([0, 0], [20.0, 21.0], 30.0)


# ------------------------------------------------------------------------------- long format
def _per_image(rng, n=6):
    rows = []
    base = rng.uniform(25, 35, n)
    for method, stage, off in (("T1-trained", "tuned", 0.0), ("Natural-trained", "raw", -2.0), ("CS", "-", -5.0)):
        for i in range(n):
            rows.append(dict(table="T1", test_domain="T1", coils="single", R=4, method=method, stage=stage,
                             n_train=10, n_tune=0, image=i, subject="s", psnr=base[i] + off,
                             ssim=0.9 + 0.01 * off / 5 + 0.001 * i))
    return pd.DataFrame(rows)


def test_summarize_and_paired_differences():
    per = _per_image(np.random.default_rng(1))
    t = summarize_records(per)
    assert list(t.columns[:10]) == COLUMNS
    cs = per[per["method"] == "CS"]["psnr"].to_numpy()
    row = t[t["method"] == "CS"].iloc[0]
    assert np.isclose(row["psnr_mean"], cs.mean()) and np.isclose(row["psnr_std"], cs.std()) and row["n"] == 6
    d = paired_differences(per).set_index("method")
    # constant per-image offsets: paired mean = offset, paired std = 0 (the across-image std is not)
    assert np.isclose(d.loc["CS", "dpsnr_mean"], -5.0) and d.loc["CS", "dpsnr_std"] < 1e-9
    assert np.isclose(d.loc["Natural-trained", "dpsnr_mean"], -2.0)
    with pytest.raises(ValueError, match="NaN"):
        summarize_records(per.assign(psnr=np.nan))
    with pytest.raises(ValueError, match="missing"):
        summarize_records(per.drop(columns=["n_tune"]))


def test_write_and_read_results(tmp_path):
    per = _per_image(np.random.default_rng(2))
    res = StudyResult(summarize_records(per), per, paired_differences(per), extra={"x": np.float64(1.5)}, config={"a": 1})
    paths = write_results(res, tmp_path, "transfer")
    assert set(paths) == {"csv", "per_image", "paired", "json"}
    back = read_results(tmp_path, "transfer")
    assert np.allclose(back.table["psnr_mean"], res.table["psnr_mean"], atol=1e-4)
    assert back.extra == {"x": 1.5} and back.config == {"a": 1}
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temporaries
    with pytest.raises(FileNotFoundError, match="sweep.csv"):
        read_results(tmp_path, "sweep")


def test_parse_parameters():
    p = parse_parameters([["R_list", "[4, 8]"], ["lr", "1e-3"], ["t1_dir", "None"], ["device", "cuda"], ["epochs", "3"]])
    assert p == {"R_list": [4, 8], "lr": 1e-3, "t1_dir": None, "device": "cuda", "epochs": 3}
    with pytest.raises(ValueError, match="identifier"):
        parse_parameters([["a-b", "1"]])


def test_cli_compare(tmp_path, capsys):
    from mrtl.cli import main

    paper = load_paper_table()
    ours = paper[paper["table"] == "S2"]
    p = tmp_path / "ours.csv"
    ours.to_csv(p, index=False)
    assert main(["compare", str(p), "--output", str(tmp_path / "side.csv")]) == 0
    out = capsys.readouterr().out
    assert "tuned gap" in out and (tmp_path / "side.csv").exists()
    assert main(["compare", str(tmp_path / "missing.csv")]) == 2


# ------------------------------------------------------------------ tiny end-to-end studies


@pytest.fixture(scope="module")
def tiny_transfer(tmp_path_factory):
    from mrtl.experiments import single_coil_transfer

    out = tmp_path_factory.mktemp("transfer")
    return single_coil_transfer(TransferConfig.tiny(output_dir=str(out))), out


def test_transfer_tiny_end_to_end(tiny_transfer):
    res, out = tiny_transfer
    for f in ("transfer.csv", "transfer.json", "transfer_per_image.csv", "transfer_paired.csv", "transfer.png"):
        assert (out / f).exists(), f
    t = res.table
    assert list(t.columns[:10]) == COLUMNS and np.isfinite(t[["psnr_mean", "ssim_mean"]].to_numpy()).all()
    got = set(zip(t["method"], t["stage"]))
    assert {("Natural-trained", "raw"), ("Natural-trained", "tuned"), ("T1-trained", "raw"), ("T1-trained", "tuned"),
            ("CS", "-"), ("Scratch", "-"), ("Zero-filled", "-")} <= got
    # every method is scored on the same test images
    per = res.per_image
    images = {k: frozenset(g["image"]) for k, g in per.groupby(["method", "stage"])}
    assert len(set(images.values())) == 1 and len(next(iter(images.values()))) == TransferConfig.tiny().n_test
    # paired mean difference == difference of means (same images), a property of the pairing
    ref = t[(t["method"] == "T1-trained") & (t["stage"] == "tuned")]["psnr_mean"].iloc[0]
    cs = t[t["method"] == "CS"]["psnr_mean"].iloc[0]
    d = res.paired[(res.paired["method"] == "CS")]["dpsnr_mean"].iloc[0]
    assert abs(d - (cs - ref)) < 1e-6
    # fine-tuning changes the network (a model selection that silently restores the
    # pre-fine-tuning weights would give identical per-image numbers)
    raw = per[(per["method"] == "Natural-trained") & (per["stage"] == "raw")].sort_values("image")["psnr"].to_numpy()
    tuned = per[(per["method"] == "Natural-trained") & (per["stage"] == "tuned")].sort_values("image")["psnr"].to_numpy()
    assert np.abs(raw - tuned).max() > 0
    # the comparison runs on our table
    comp = compare(t)
    assert ("T1", "raw gap (in-domain - natural), dB") in set(zip(comp.headlines["table"], comp.headlines["quantity"]))
    assert not (out / "checkpoints").exists() or any((out / "checkpoints").iterdir())


def test_sweep_resumes_finished_cells(tmp_path):
    from mrtl.experiments import ntune_sweep

    cfg = SweepConfig.tiny(output_dir=str(tmp_path), n_train_list=(6,), n_tune_list=(0, 2))
    first = ntune_sweep(cfg)
    n_cells = len(list((tmp_path / "cells").glob("*.json")))
    # reference raw + tuned, natural at Ntune 0 and 2, scratch at 2
    assert n_cells == 5 and first.extra["cells_computed"] == 5
    second = ntune_sweep(cfg)
    assert second.extra["cells_computed"] == 0 and second.extra["cells_skipped"] == 5
    pd.testing.assert_frame_equal(first.table, second.table)
    assert {"Natural-trained", "T1-trained", "Scratch"} <= set(first.table["method"])
    assert (tmp_path / "sweep.png").exists() and "convergence" in first.extra
    # Other settings (here the fine-tuning budget) must not resume from cells computed with
    # the old ones: every cell that depends on them is recomputed, none is reused silently.
    third = ntune_sweep(cfg.replace(ft_epochs=2))
    assert third.extra["cells_skipped"] == 0 and third.extra["cells_computed"] == 5


def test_multicoil_tiny(tmp_path):
    from mrtl.experiments import multicoil_transfer

    res = multicoil_transfer(MulticoilConfig.tiny(output_dir=str(tmp_path)))
    t = res.table
    assert set(t["coils"]) == {"multi"} and set(t["table"]) == {"T2"}
    assert {"SPIRiT", "T1-trained", "Natural-trained", "Zero-filled", "Scratch"} <= set(t["method"])
    assert np.isfinite(t["psnr_mean"]).all() and (tmp_path / "multicoil.csv").exists()
    # L1-SPIRiT uses the data: it must beat the zero-filled input on the same images
    zf = t[t["method"] == "Zero-filled"]["psnr_mean"].iloc[0]
    assert t[t["method"] == "SPIRiT"]["psnr_mean"].iloc[0] > zf


def test_papermill_runner_tiny(tmp_path):
    pytest.importorskip("papermill")
    from mrtl.experiments import run_study

    final = run_study("transfer", "tiny", {"seed": 1}, results_root=tmp_path, run_id="t1")
    assert final == tmp_path / "transfer" / "t1"
    for f in ("transfer.ipynb", "transfer.csv", "transfer.json", "transfer_per_image.csv", "transfer.png", "manifest.json"):
        assert (final / f).exists(), f
    man = json.loads((final / "manifest.json").read_text())
    assert man["status"] == "finished" and man["study"] == "transfer" and man["scale"] == "tiny"
    assert man["seeds"] == {"seed": 1} and man["parameters"]["recompute"] is True and man["wall_time_s"] > 0
    assert man["versions"]["torch"] and man["versions"]["mrtl"] and "cpu_count" in man["device"]
    assert "git_commit" in man
    assert not (tmp_path / "transfer" / "tmp").exists() and not (final / "checkpoints").exists()
    t = pd.read_csv(final / "transfer.csv")
    assert list(t.columns[:10]) == COLUMNS and (t["n"] == TransferConfig.tiny().n_test).all()
    nb = json.loads((final / "transfer.ipynb").read_text())
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
