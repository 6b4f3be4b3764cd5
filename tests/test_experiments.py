"""Tests of mrtl.experiments: configs, the long results format, the comparison with the paper
(headline numbers recomputed from the paper's table must equal the numbers its text quotes),
the convergence rule (against an analytic curve), tiny end-to-end studies, the resumable sweep,
the papermill runner and the CLI."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
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


def _yaml_configs():
    return sorted((ROOT / "configs").glob("*.yaml"))


def test_presets_are_defined_once_and_every_config_agrees():
    """mrtl.presets is the one source of settings: mrtl.train.SMALL/PAPER are it, the study
    presets (small and full), the command line's default R and every configs/*.yaml agree with it.
    Editing one value in any of these places fails here."""
    import inspect

    import yaml

    from mrtl import presets, train, train_cli

    assert train.SMALL is presets.SMALL and train.PAPER is presets.PAPER
    assert inspect.signature(train_cli.build_dataset).parameters["R"].default == presets.DEFAULT_R
    for scale, cfg in (("small", TransferConfig.small()), ("paper", TransferConfig.full())):
        p = presets.preset(scale)
        m, t, f = p["model"], p["train"], p["finetune"]
        assert (cfg.n_subnets, cfg.width, cfg.depth) == (m["n_subnets"], m["width"], m["depth"])
        assert (cfg.epochs, cfg.lr_pretrain, cfg.batch_size) == (t["epochs_per_subnet"], t["lr"], t["batch_size"])
        assert (cfg.ft_epochs, cfg.lr_finetune, cfg.ft_batch_size) == (f["epochs"], f["lr"], f["batch_size"])
        assert cfg.size == p["data"]["size"] and presets.DEFAULT_R in cfg.R_list
        if scale == "small":
            assert (cfg.pretrain_patience, cfg.patience) == (t["patience"], f["patience"])
            assert cfg.lr_grid == presets.SMALL_LR_GRID and cfg.lr_grid_pretrain == presets.SMALL_LR_GRID_PRETRAIN
            assert f["lr"] in cfg.lr_grid and t["lr"] in cfg.lr_grid_pretrain  # the YAML rates are grid points
    for c in (SweepConfig, MulticoilConfig):
        assert presets.DEFAULT_R in c.small().R_list and c.small().size == presets.SMALL["data"]["size"]
    files = _yaml_configs()
    assert {f.name for f in files} >= {"small_t1.yaml", "small_finetune_t1.yaml", "paper_natural.yaml",
                                       "paper_finetune.yaml"}
    for path in files:
        scale = path.name.split("_")[0]
        assert scale in ("small", "paper"), f"{path.name}: name it small_* or paper_* (the preset it follows)"
        p = presets.preset(scale)
        doc = yaml.safe_load(path.read_text())
        phases = [s for s in ("train", "finetune") if s in doc]
        assert phases, path.name
        for section, body in doc.items():
            for key, value in body.items():
                if key in p.get(section, {}):
                    want = p[section][key]
                    got = tuple(value) if isinstance(value, list) else value
                    assert got == want, f"{path.name}: {section}.{key} = {value!r}, the {scale} preset says {want!r}"
        for phase in phases:  # the settings that matter are written out, not left to other defaults
            need = {"lr", "batch_size", "epochs_per_subnet" if phase == "train" else "epochs"}
            assert need <= set(doc[phase]), (path.name, phase, need - set(doc[phase]))
        assert doc["data"]["R"] == presets.DEFAULT_R and doc["data"]["size"] == p["data"]["size"]
        if scale == "small" and "finetune" in doc:
            assert doc["data"]["n"] == TransferConfig.small().n_tune


def test_default_config_is_the_small_preset():
    """SweepConfig() and SweepConfig.small() used to differ (Ntrain 20/80 against 32/128)."""
    for cls in (TransferConfig, SweepConfig, MulticoilConfig):
        assert cls() == cls.small(), cls.__name__


def test_validate_checks_without_changing_the_config():
    """validate() only checks; canonical forms (tuples, sorted Ntune lists, str paths) are made at
    construction. It used to sort n_tune_list, turn lists into tuples and paths into strings."""
    cfg = SweepConfig.small()
    cfg.n_tune_list = (20, 0, 4)
    cfg.lr_grid = [1e-3, 3e-3]
    before = {f: getattr(cfg, f) for f in cfg.to_dict()}
    assert cfg.validate() is cfg
    assert {f: getattr(cfg, f) for f in cfg.to_dict()} == before
    assert cfg.n_tune_list == (20, 0, 4) and isinstance(cfg.lr_grid, list)
    built = SweepConfig(n_tune_list=[20, 0, 4], output_dir=Path("out"), R_list=8)
    assert built.n_tune_list == (0, 4, 20) and built.output_dir == "out" and built.R_list == (8,)
    cfg.R_list = (4, 30)
    with pytest.raises(ValueError, match=r"R_list\[1\]"):
        cfg.validate()


def test_R_is_checked_by_the_one_acceleration_check(monkeypatch):
    """The study configs and the command line check R with mrtl._validate.check_acceleration."""
    import mrtl._validate as v
    from mrtl import train_cli
    from mrtl.experiments import config

    seen = []
    real = v.check_acceleration

    def spy(R, name="R", **kw):
        seen.append(name)
        return real(R, name, **kw)

    monkeypatch.setattr(config, "check_acceleration", spy)
    monkeypatch.setattr(train_cli, "check_acceleration", spy)
    TransferConfig.small()
    assert seen == ["R_list[0]", "R_list[1]"]
    with pytest.raises(ValueError, match="data.R"):
        train_cli.build_dataset("t1", split="val", size=32, R=0.5, n=1)
    assert seen[-1] == "data.R"


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


def test_reference_table_is_complete_and_consistent():
    """reference/paper_tables.csv (the paper's Table 1, Table 2 and Supp. Table 2) has every
    method at every R once, and, as in any undersampling study, quality falls as R grows; a
    typo in a transcribed number would typically break the monotone order or the headline
    numbers checked above."""
    paper = load_paper_table()
    assert not paper.duplicated(["table", "R", "method", "stage"]).any()
    for (table, method, stage), g in paper.groupby(["table", "method", "stage"]):
        g = g.sort_values("R")
        assert g["R"].tolist() == [2, 4, 6, 8, 10], (table, method, stage)
        assert g["psnr_mean"].is_monotonic_decreasing and g["ssim_mean"].is_monotonic_decreasing, (table, method)
        assert (g["psnr_std"] > 0).all() and g["ssim_mean"].between(0, 1).all()


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
    n_cells = len(list((tmp_path / "cells").glob("s0_R*.json")))
    # reference raw + tuned, natural at Ntune 0 and 2, scratch at 2 (and the seed's validation choices)
    assert n_cells == 5 and first.extra["cells_computed"] == 5 and (tmp_path / "cells" / "s0_choices.json").exists()
    second = ntune_sweep(cfg)
    assert second.extra["cells_computed"] == 0 and second.extra["cells_skipped"] == 5
    pd.testing.assert_frame_equal(first.table, second.table)
    assert {"Natural-trained", "T1-trained", "Scratch"} <= set(first.table["method"])
    assert (tmp_path / "sweep.png").exists() and "convergence" in first.extra
    # Other settings (here the fine-tuning budget) must not resume from cells computed with
    # the old ones: every cell that depends on them is recomputed, none is reused silently.
    third = ntune_sweep(cfg.replace(ft_epochs=cfg.ft_epochs + 1))
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


@pytest.fixture(scope="module")
def tiny_reproduce(tmp_path_factory):
    """An uninterrupted ``mrtl reproduce --study transfer --scale tiny -p seed 1 --run-id t1``
    (with the progress bar on and the umask 022); returns (final folder, stderr)."""
    pytest.importorskip("papermill")
    from mrtl.experiments import run_study

    root = tmp_path_factory.mktemp("reproduce")
    umask = os.umask(0o022)
    err_file = root.parent / f"{root.name}.stderr"
    bar = io.StringIO()
    saved = os.dup(2)
    try:  # the progress bar writes to sys.stderr, the kernel to file descriptor 2
        with open(err_file, "w") as f, contextlib.redirect_stderr(bar):
            os.dup2(f.fileno(), 2)
            final = run_study("transfer", "tiny", {"seed": 1}, results_root=root, run_id="t1", progress_bar=True)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.umask(umask)
    return final, bar.getvalue() + err_file.read_text()


def test_papermill_runner_tiny(tiny_reproduce):
    final, err = tiny_reproduce
    tmp_path = final.parents[1]
    # progress per cell, and no kernel chatter about its local TCP sockets
    assert "transfer (tiny)" in err and "cell" in err and "without encryption" not in err
    files = sorted(p.relative_to(final).as_posix() for p in final.rglob("*") if p.is_file())
    assert all((final / f).stat().st_mode & 0o777 == 0o644 for f in files)  # the umask, like any new file
    assert final == tmp_path / "transfer" / "t1"
    for f in ("transfer.ipynb", "transfer.csv", "transfer.json", "transfer_per_image.csv", "transfer.png", "manifest.json"):
        assert (final / f).exists(), f
    man = json.loads((final / "manifest.json").read_text())
    assert man["status"] == "finished" and man["study"] == "transfer" and man["scale"] == "tiny"
    assert man["seeds"] == {"seed": 1} and man["parameters"]["recompute"] is True and man["wall_time_s"] > 0
    # the seeds the study actually ran and the thread count inside the run
    assert man["seeds_used"] == [1] and man["num_threads"] == TransferConfig.tiny().num_threads
    assert man["versions"]["torch"] and man["versions"]["mrtl"] and "cpu_count" in man["device"]
    assert "git_commit" in man
    assert sorted(man["files"] + ["manifest.json"]) == files  # the manifest lists what the run wrote
    assert not (tmp_path / "transfer" / "tmp").exists() and not (final / "checkpoints").exists()
    t = pd.read_csv(final / "transfer.csv")
    assert list(t.columns[:10]) == COLUMNS and (t["n"] == TransferConfig.tiny().n_test).all()
    nb = json.loads((final / "transfer.ipynb").read_text())
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])
    assert any("injected-parameters" in c.get("metadata", {}).get("tags", []) for c in nb["cells"])


# ------------------------------------------------- mrtl reproduce: nothing is lost, runs resume
def _finished_work(root: Path, run_id: str, content: str = "new", scale: str = "tiny") -> Path:
    """The state a run leaves when it is killed after its notebook finished and its manifest was
    written, but before its folder was moved into place: the next run only has to place it."""
    work = root / "transfer" / "tmp" / run_id
    (work / "checkpoints" / "x").mkdir(parents=True)
    (work / "checkpoints" / "x" / "best_pretrain.pt").write_bytes(b"weights")
    (work / "transfer.csv").write_text(content)
    man = {"study": "transfer", "scale": scale, "run_id": run_id, "status": "finished", "files": ["transfer.csv"]}
    (work / "manifest.json").write_text(json.dumps(man))
    return work


def _finished_run(folder: Path, content: str = "old") -> Path:
    folder.mkdir(parents=True)
    (folder / "transfer.csv").write_text(content)
    man = {"study": "transfer", "scale": "tiny", "run_id": folder.name, "status": "finished", "files": ["transfer.csv"]}
    (folder / "manifest.json").write_text(json.dumps(man))
    return folder


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def test_reproduce_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    from mrtl.cli import main

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("months of work")
    before = _tree(tmp_path)
    rc = main(["reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", str(tmp_path / "r"),
               "--output", str(notes), "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and "--output" in err and "not a run folder made by mrtl" in err and len(err.strip().splitlines()) == 1
    assert _tree(tmp_path) == before  # nothing created, moved or deleted


def test_reproduce_output_at_the_study_root_moves_no_earlier_run(tmp_path, capsys):
    from mrtl.cli import main

    root = tmp_path / "results"
    _finished_run(root / "transfer" / "run-1")
    _finished_run(root / "transfer" / "run-2")
    before = _tree(tmp_path)
    for output in (root / "transfer", root):
        rc = main(["reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", str(root),
                   "--output", str(output), "--overwrite"])
        assert rc == 2 and "--output" in capsys.readouterr().err
    assert _tree(tmp_path) == before


def test_finished_run_is_replaced_only_with_overwrite_and_only_its_own_files(tmp_path):
    from mrtl.experiments import run_study

    root = tmp_path / "results"
    final = _finished_run(root / "transfer" / "r1", "old")
    work = _finished_work(root, "r1", "new")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_study("transfer", "tiny", results_root=root, run_id="r1")
    (final / "my_notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="my_notes.txt"):
        run_study("transfer", "tiny", results_root=root, run_id="r1", overwrite=True)
    assert (final / "transfer.csv").read_text() == "old" and (final / "my_notes.txt").exists() and work.exists()
    (final / "my_notes.txt").unlink()
    assert run_study("transfer", "tiny", results_root=root, run_id="r1", overwrite=True) == final
    assert (final / "transfer.csv").read_text() == "new" and not (final / "checkpoints").exists()
    assert sorted(p.name for p in (root / "transfer").iterdir()) == ["r1"]  # no tmp/, nothing parked


def test_resume_finds_a_run_with_a_custom_run_id(tmp_path):
    from mrtl.experiments import run_study

    root = tmp_path / "results"
    _finished_work(root, "my-experiment")
    _finished_work(root, "other-scale", scale="small")
    assert run_study("transfer", "tiny", results_root=root, resume=True) == root / "transfer" / "my-experiment"
    with pytest.raises(FileNotFoundError, match="--resume: no unfinished run 'nope'"):
        run_study("transfer", "tiny", results_root=root, resume=True, run_id="nope")


def test_reproduce_cleans_what_killed_runs_left(tmp_path):
    from mrtl import utils
    from mrtl.experiments import run_study

    root = tmp_path / "results"
    work = _finished_work(root, "r")
    dead_pid = 2**22 + 7  # above Linux's largest pid_max: no such process
    stale = work / "checkpoints" / "x" / f".best_pretrain.pt.mrtl-{utils._host_tag()}-{dead_pid}-0123abcd.tmp"
    stale.write_bytes(b"half a checkpoint")
    (work / ".mrtl-trash-1" / "y").mkdir(parents=True)  # checkpoints whose deletion was interrupted
    parked = root / "transfer" / f".r.mrtl-replaced-{dead_pid}"  # a swap interrupted between its renames
    parked.mkdir()
    (work / "user.txt").write_text("kept")  # files in the working folder are moved, never deleted
    final = run_study("transfer", "tiny", results_root=root, run_id="r")
    assert sorted(p.relative_to(final).as_posix() for p in final.rglob("*")) == ["manifest.json", "transfer.csv", "user.txt"]
    assert not parked.exists()


def test_reproduce_checks_parameters_before_running(tmp_path, capsys):
    from mrtl.cli import main
    from mrtl.experiments import run_study

    for params, words in (({"epochz": 3}, "-p epochz: not a parameter of the transfer study"),
                          ({"epochs": 0}, "-p epochs: expected an integer in "),
                          ({"device": "tpu"}, "-p device"),
                          ({"output_dir": "x"}, "-p output_dir: set by mrtl reproduce; use --output"),
                          ({"t1_dir": str(tmp_path / "missing")}, "-p t1_dir")):
        with pytest.raises((ValueError, TypeError, FileNotFoundError), match=words.replace("(", r"\(")):
            run_study("transfer", "tiny", params, results_root=tmp_path / "r")
    rc = main(["reproduce", "--study", "all", "--scale", "tiny", "--results-root", str(tmp_path / "r"),
               "-p", "nonsense", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "-p nonsense" in err and "Passed unknown parameter" not in err
    assert not (tmp_path / "r").exists()


def test_reproduce_without_the_book_extra_names_it(tmp_path, monkeypatch, capsys):
    """papermill/jupytext come with the mrtl[book] extra, not with pip install mrtl: without them
    mrtl reproduce stops at once with one line naming the extra (it used to fail deep inside the
    run as an 'internal error')."""
    import sys

    from mrtl.cli import main
    from mrtl.experiments import run_study

    monkeypatch.setitem(sys.modules, "papermill", None)  # import papermill raises ImportError
    rc = main(["reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "mrtl[book]" in err and "papermill" in err and "internal error" not in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ImportError, match=r"mrtl\[book\]"):
        run_study("transfer", "tiny", results_root=tmp_path / "r")
    monkeypatch.setitem(sys.modules, "jupytext", None)
    with pytest.raises(ImportError, match="papermill and jupytext"):
        run_study("transfer", "tiny", results_root=tmp_path / "r")


def test_reproduce_finds_the_repository_by_its_files(tmp_path, monkeypatch, capsys):
    """The repository is the folder holding pyproject.toml, mrtl/ and book/experiments/: above the
    package, else the working directory or a parent; otherwise a clear error (it used to take the
    package's grandparent blindly)."""
    from mrtl.cli import main
    from mrtl.experiments import runner

    assert runner.find_repo_root() == ROOT
    monkeypatch.setattr(runner, "__file__", str(tmp_path / "site-packages" / "mrtl" / "experiments" / "runner.py"))
    monkeypatch.chdir(tmp_path)
    assert runner.find_repo_root() is None
    with pytest.raises(FileNotFoundError, match="no mrtl repository found"):
        runner.repo_root(required=True)
    assert runner.repo_root() == tmp_path / "site-packages"  # only where results would be looked up
    rc = main(["reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "no mrtl repository found" in err and "book/experiments" in err
    clone = tmp_path / "clone"
    (clone / "mrtl").mkdir(parents=True)
    (clone / "mrtl" / "__init__.py").write_text("")
    (clone / "book" / "experiments" / "x").mkdir(parents=True)
    assert runner.find_repo_root(clone / "book") is None  # no pyproject.toml: not the repository
    (clone / "pyproject.toml").write_text("")
    monkeypatch.chdir(clone / "book" / "experiments" / "x")
    assert runner.find_repo_root() == clone


def test_reproduce_refuses_a_run_in_progress(tmp_path):
    fcntl = pytest.importorskip("fcntl", reason="run locking uses POSIX flock")
    from mrtl.experiments import run_study

    work = _finished_work(tmp_path, "busy")
    fd = os.open(work, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="in progress"):
            run_study("transfer", "tiny", results_root=tmp_path, run_id="busy")
    finally:
        os.close(fd)
    assert (work / "transfer.csv").exists()


def test_reproduce_failing_notebook_is_one_line_and_resumable(tmp_path, capfd):
    pytest.importorskip("papermill")
    from mrtl.cli import main

    empty = tmp_path / "empty_t1"
    empty.mkdir()
    root = tmp_path / "r"
    args = ["reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", str(root), "--run-id", "f",
            "-p", "t1_dir", str(empty)]
    assert main(args) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("mrtl reproduce: error:")]
    assert len(err) == 1 and "the transfer notebook failed in cell" in err[0] and str(empty) in err[0]
    man = json.loads((root / "transfer" / "tmp" / "f" / "manifest.json").read_text())
    assert man["status"] == "failed" and not (root / "transfer" / "f").exists()


# ----------------------------------------------- killed at every write boundary, resumed, bit for bit
#
# A "write boundary" is the commit of an atomic write (mrtl.utils.atomic_write_bytes renames its
# temporary over the target). The run is killed (SIGKILL, so no cleanup code runs) just before a
# boundary, i.e. with the new content complete in its temporary but not yet renamed; the next run
# resumes and is killed at the first boundary it reaches that the chain has not yet killed, and
# so on until a run finishes. Wall-clock fields (seconds per epoch, wall times) are the only
# allowed differences; everything else, weights included, must be bit-identical to an
# uninterrupted run.

_VOLATILE = {"seconds", "images_per_s", "wall_time_s", "timings_s", "finished_utc", "command"}


def _canon(x) -> str:
    import torch

    if isinstance(x, dict):
        return "{" + ",".join(f"{_canon(k)}:{_canon(v)}" for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))
                              if k not in _VOLATILE) + "}"
    if isinstance(x, (list, tuple)):
        return "[" + ",".join(_canon(v) for v in x) + "]"
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        return f"T({t.dtype},{tuple(t.shape)},{t.numpy().tobytes().hex() if t.numel() else ''})"
    return repr(x)


def _normalized(path: Path, root: Path | None = None) -> bytes:
    """The content of a result file without its wall-clock fields (exact otherwise); the run's
    own folder ``root``, which a config records, reads as ``<run>``."""
    import csv
    import io

    import torch

    def text():
        t = path.read_text()
        return t.replace(str(root), "<run>") if root is not None else t

    if path.suffix == ".pt":
        return _canon(torch.load(path, map_location="cpu", weights_only=False)).replace(str(root), "<run>").encode()
    if path.suffix == ".json":
        return _canon(json.loads(text())).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text())))
        keep = [i for i, h in enumerate(rows[0]) if h not in _VOLATILE] if rows else []
        return "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rows).encode()
    return path.read_bytes()


def _assert_same_run(got: Path, want: Path, got_root: Path | None = None, want_root: Path | None = None,
                     skip=("manifest.json",)) -> int:
    """Assert that the run folders ``got`` and ``want`` hold the same files with the same content
    (wall-clock fields aside; paths under ``*_root`` compare equal); return how many are
    byte-identical."""
    got_root, want_root = got_root or got, want_root or want
    files = sorted(p.relative_to(want).as_posix() for p in want.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == files
    exact = 0
    for rel in files:
        if rel in skip or rel.endswith(".ipynb"):
            continue
        a, b = got / rel, want / rel
        assert _normalized(a, got_root) == _normalized(b, want_root), rel
        if a.read_bytes() == b.read_bytes():
            exact += 1
        else:  # only wall-clock fields may differ
            assert a.suffix in (".pt", ".json", ".csv") and _normalized(a, got_root) != a.read_bytes(), rel
    return exact


def _kill_before_new_boundaries(base: Path, seen: set, report_fd: int) -> None:
    """In this (child) process: SIGKILL at the first atomic-write commit not yet in ``seen``."""
    import hashlib
    import signal

    real_replace = os.replace

    def replace(src, dst, *a, **k):
        s, d = Path(src), Path(dst)
        if s.is_file() and ".mrtl-" in s.name:  # the commit of mrtl.utils.atomic_write_bytes
            probe = s.with_name(f"{s.name}.probe{d.suffix}")
            probe.write_bytes(s.read_bytes())
            new = _normalized(probe, base)
            probe.unlink()
            old = _normalized(d, base) if d.exists() else None
            if new != old:
                key = f"{os.path.relpath(d, base)}:{hashlib.sha1(new).hexdigest()}"
                if key not in seen:
                    os.write(report_fd, (key + "\n").encode())
                    os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *a, **k)

    os.replace = replace


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="kills forked copies of the test process (needs os.fork, POSIX)")
def test_study_killed_at_every_write_boundary_resumes_bit_for_bit(tmp_path, monkeypatch):
    """What the notebook of ``mrtl reproduce --study transfer --scale tiny`` runs (the study with
    its checkpoints, results and figures), killed at every write boundary in turn."""
    import functools

    import torch

    from mrtl.experiments import load_or_run
    from mrtl.experiments import results as results_mod

    if hasattr(results_mod, "bootstrap_ci"):  # fewer resamples: the same in every run, and ~20x faster
        monkeypatch.setattr(results_mod, "bootstrap_ci", functools.partial(results_mod.bootstrap_ci, n_boot=100))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in every process, and fork-safe
    try:
        load_or_run(make_config("transfer", "tiny", output_dir=str(tmp_path / "ref")), recompute=True)
        chain = tmp_path / "chain"
        seen: set[str] = set()
        for n_runs in range(1, 400):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                os.close(r)
                code = 3
                try:
                    _kill_before_new_boundaries(chain, seen, w)
                    load_or_run(make_config("transfer", "tiny", output_dir=str(chain)), recompute=True)
                    code = 0
                finally:
                    os._exit(code)
            os.close(w)
            with os.fdopen(r) as f:
                seen.update(f.read().split())
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status):
                assert os.WEXITSTATUS(status) == 0, "a resumed run failed"
                break
            assert n_runs < 399, "the chain does not end: a resumed run never reaches the state of the killed one"
    finally:
        torch.set_num_threads(threads)
    kinds = {k.split(":")[0].rsplit("/", 1)[-1] for k in seen}
    # every kind of boundary was hit: per-epoch checkpoints, best weights, logs, results, figures
    assert {"checkpoint_pretrain.pt", "best_pretrain.pt", "checkpoint_finetune.pt", "best_finetune.pt",
            "transfer.csv", "transfer.json", "transfer.png"} <= kinds, kinds
    assert n_runs == len(seen) + 1 and len(seen) > 30
    exact = _assert_same_run(chain, tmp_path / "ref")
    assert exact >= 5  # results tables and figures are byte-identical, not only equal after normalising
    assert not [p for p in chain.rglob("*.tmp")]  # every killed write's temporary was cleaned


# the `mrtl` command, with os.replace patched to SIGKILL the whole run (its process group) just
# before the first rename it reaches that is not listed in the state file (argv[1]); the
# kernel's own writes are left alone here (the study test above kills those)
_KILLING_CLI = """
import os, re, signal, sys
state, root = sys.argv[1], sys.argv[2]
seen = set(open(state).read().split()) if os.path.exists(state) else set()
real_replace = os.replace
def replace(src, dst, *a, **k):
    s, d = os.path.abspath(src), os.path.abspath(dst)
    if os.path.isdir(s):
        key = "dir:" + re.sub(r"[0-9]+", "N", os.path.basename(s)) + "->" + re.sub(r"[0-9]+", "N", os.path.relpath(d, root))
    else:
        key = "file:" + os.path.relpath(d, root)
    if key not in seen:
        with open(state, "a") as f:
            f.write(key + "\\n")
        os.killpg(os.getpgid(0), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.replace = replace
from mrtl.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="kills process groups (POSIX)")
def test_reproduce_killed_at_every_runner_boundary_resumes_bit_for_bit(tmp_path, tiny_reproduce):
    """``mrtl reproduce --overwrite`` over an earlier run, killed before each of its own commits
    (marker, input notebook, manifest, deletion of the checkpoints, parking the earlier run,
    moving the run into place) and rerun with the same command: the final folder equals the
    uninterrupted run's, and nothing is left behind."""
    import signal
    import subprocess
    import sys

    want, _ = tiny_reproduce
    root = tmp_path / "results"
    _finished_run(root / "transfer" / "t1", "an earlier run")
    state = tmp_path / "killed.txt"
    env = dict(os.environ, MRTL_QUIET="1")
    cmd = [sys.executable, "-c", _KILLING_CLI, str(state), str(root), "reproduce", "--study", "transfer",
           "--scale", "tiny", "-p", "seed", "1", "--results-root", str(root), "--run-id", "t1", "--overwrite"]
    codes = []
    for _ in range(12):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, start_new_session=True, timeout=600)
        codes.append(proc.returncode)
        if proc.returncode != -signal.SIGKILL:
            break
    assert codes[-1] == 0, proc.stderr[-2000:]
    killed = state.read_text().split()
    assert len(codes) == len(killed) + 1 and len(killed) >= 6, (codes, killed)
    for what in ("file:transfer/tmp/t1/.mrtl-run.json", "file:transfer/tmp/t1/manifest.json",
                 "dir:checkpoints->transfer/tmp/tN/.mrtl-trash-N", "dir:tN->transfer/.tN.mrtl-replaced-N",
                 "dir:tN->transfer/tN"):
        assert what in killed, (what, killed)
    got = root / "transfer" / "t1"
    assert _assert_same_run(got, want, root, want.parents[1]) >= 5
    man = json.loads((got / "manifest.json").read_text())
    assert man["status"] == "finished" and man["files"] == json.loads((want / "manifest.json").read_text())["files"]
    assert sorted(p.name for p in (root / "transfer").iterdir()) == ["t1"]  # no tmp/, nothing parked
    assert not [p for p in got.rglob("*") if ".mrtl-" in p.name]


def test_multicoil_spirit_baseline_chooses_the_clipping_on_validation():
    """L1-SPIRiT's singular-value clipping (``stabilize``) is a validation choice of the
    multi-coil study, not forced on: on the study's own validation images (seed 0, R = 4, the
    3x3 kernel) the unclipped operator converges and is better by several dB, and the grid
    search picks it (a baseline with the clipping forced on would be handicapped)."""
    import mrtl.experiments._common as C
    from mrtl.experiments.config import MulticoilConfig
    from mrtl.experiments.multicoil import _mc_data, _spirit
    from mrtl.recon import select_parameters

    cfg = MulticoilConfig.small().replace(seed=0)
    C.setup(cfg)
    val = _mc_data(C.get_source("t1", "val", cfg, 6), 4, cfg, "val", 4000, "zero")
    grid = {"kernel_size": [3], "lam": [1e-3], "n_iter": [30], "stabilize": [True, False]}
    with pytest.warns(UserWarning):  # the calibration note: G amplifies (gain > 1)
        best, tab = select_parameters(_spirit, val.kspace, val.mask, val.reference, grid=grid, maps=val.maps)
    by = {bool(r["stabilize"]): float(r["psnr_mean"]) for _, r in tab.iterrows()}
    assert best["stabilize"] is False or best["stabilize"] == False  # noqa: E712
    assert by[False] > by[True] + 1.0, by
