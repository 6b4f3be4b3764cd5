"""The data-efficiency study (mrtl.experiments.efficiency): its config, a tiny end-to-end run with
every method (the test split read only by the evaluation step, SSDU handed no reference image,
ZS-SSL handed only k-space and mask), results written and read back, the claims and compute
table, the papermill parameters, and the checked-in small results."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from mrtl.experiments import EfficiencyConfig, make_config, read_results
from mrtl.experiments import _common as C

ROOT = Path(__file__).resolve().parents[1]
CHECKED_IN = ROOT / "results" / "small" / "efficiency"


# ------------------------------------------------------------------------------- config
def test_config_presets_and_budget():
    assert EfficiencyConfig() == EfficiencyConfig.small() == make_config("efficiency", "small")
    small = EfficiencyConfig.small()
    # the grid: Ntune 0 (raw), 1, 2, 4, 8, 20, 50 at R = 4 and 8, three seeds
    assert small.n_tune_list == (0, 1, 2, 4, 8, 20, 50) and small.R_list == (4, 8) and small.n_seeds >= 3
    assert set(small.methods) == {"scratch", "finetune", "ssdu", "peft", "zsssl", "cs"}
    # one budget of image presentations for every end-to-end training: ceil(600 / n), within [10, 40]
    assert [small.max_epochs(n) for n in (1, 8, 15, 16, 20, 50, 100)] == [40, 40, 40, 38, 30, 12, 10]
    assert EfficiencyConfig.full().pretrained == "train" and EfficiencyConfig.full().size == 256
    # the new training kinds take the shared learning-rate grid
    assert small.lr_candidates("ssdu") == small.lr_candidates("peft") == small.lr_candidates("finetune") == small.lr_grid


@pytest.mark.parametrize("bad, words", [
    (dict(methods=("scratch", "magic")), "methods[1]"),
    (dict(peft_which="everything"), "peft_which"),
    (dict(ssdu_rho=1.0), "ssdu_rho"),
    (dict(zs_val_frac=0.0), "zs_val_frac"),
    (dict(pretrained="shipped", size=32), "pretrained"),
    (dict(n_tune_list=(0, 2, 2)), "n_tune_list"),
])
def test_config_errors_name_the_field(bad, words):
    with pytest.raises((ValueError, TypeError)) as err:
        EfficiencyConfig.small(**bad)
    assert words in str(err.value)


def test_reproduce_knows_the_study_and_checks_its_parameters():
    pytest.importorskip("papermill")
    from mrtl.experiments.runner import NOTEBOOKS, check_parameters, notebook_parameters

    assert NOTEBOOKS["efficiency"] == "book/experiments/efficiency.md"
    params = notebook_parameters("efficiency")
    assert {"scale", "output_dir", "recompute", "n_tune_list", "peft_which", "seed", "n_seeds"} <= set(params)
    check_parameters("efficiency", "small", {"n_tune_list": [0, 2], "peft_which": "dc"})
    with pytest.raises(ValueError, match="peft_which"):
        check_parameters("efficiency", "small", {"peft_which": "everything"})
    with pytest.raises(ValueError, match="not a parameter of the efficiency study"):
        check_parameters("efficiency", "small", {"epochz": 3})


# ------------------------------------------------------------------- tiny end to end
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny study with every method, with data loads, training calls and what the
    self-supervised methods were given recorded."""
    import mrtl.data
    import mrtl.selfsup as selfsup
    import mrtl.train
    from mrtl.experiments.efficiency import data_efficiency

    events: list[tuple] = []
    seen: dict[str, list] = {"ssdu_refs_finite": [], "zsssl_args": []}
    orig = dict(bundled=mrtl.data.bundled, finetune=mrtl.train.finetune, ssdu=selfsup.ssdu_finetune,
                zsssl=selfsup.zsssl)

    def bundled(domain, split="train", *a, **k):
        events.append(("load", domain, split, C.evaluating()))
        return orig["bundled"](domain, split, *a, **k)

    def finetune(*a, **k):
        events.append(("train", "finetune", None, C.evaluating()))
        return orig["finetune"](*a, **k)

    def ssdu(model, data, *a, **k):
        events.append(("train", "ssdu", None, C.evaluating()))
        for d in (data, k.get("val")):
            if d is not None:
                seen["ssdu_refs_finite"].append(bool(torch.isfinite(d.reference).any()))
        return orig["ssdu"](model, data, *a, **k)

    def zsssl(*a, **k):
        events.append(("train", "zsssl", None, C.evaluating()))
        seen["zsssl_args"].append((len(a), sorted(k)))
        return orig["zsssl"](*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(mrtl.data, "bundled", bundled)
    mp.setattr(mrtl.train, "finetune", finetune)
    mp.setattr(selfsup, "ssdu_finetune", ssdu)
    mp.setattr(selfsup, "zsssl", zsssl)
    out = tmp_path_factory.mktemp("efficiency")
    cfg = EfficiencyConfig.tiny(output_dir=str(out))
    try:
        res = data_efficiency(cfg)
    finally:
        mp.undo()
    return cfg, res, out, events, seen


def test_tiny_study_runs_every_method_end_to_end(tiny_run):
    cfg, res, out, _, _ = tiny_run
    t = res.table
    have = set(zip(t["method"], t["stage"], t["n_tune"]))
    for n in (1, 2):
        for ms in (("Scratch", "-"), ("Natural-trained", "tuned"), ("SSDU", "tuned"), (f"PEFT ({cfg.peft_which})", "tuned")):
            assert (*ms, n) in have, (ms, n)
    for ms in (("Natural-trained", "raw"), ("ZS-SSL (random init)", "-"), ("ZS-SSL (natural init)", "-"), ("CS", "-"),
               ("Zero-filled", "-")):
        assert (*ms, 0) in have, ms
    assert t["psnr_mean"].notna().all()
    # ZS-SSL ran on zs_n_test scans, every other method on all test slices
    n_img = t.set_index(["method", "stage", "n_tune"])["n"]
    assert n_img[("ZS-SSL (natural init)", "-", 0)] == cfg.zs_n_test
    assert n_img[("CS", "-", 0)] == n_img[("SSDU", "tuned", 2)] == cfg.n_test
    # claims with intervals and a verdict; the ZS-SSL claims pair on its scans only
    cl = res.claims
    assert len(cl) and cl["verdict"].isin(["holds", "within noise", "does not hold"]).all()
    assert (cl["ci_low"] <= cl["estimate"]).all() and (cl["estimate"] <= cl["ci_high"]).all()
    assert cl.set_index("id").loc["zs_natural_minus_cs", "n_images"] == cfg.zs_n_test
    # compute: seconds for every method that trains, per run
    comp = pd.DataFrame(res.extra["compute"])
    assert {"Scratch", "Natural-trained", "SSDU", f"PEFT ({cfg.peft_which})", "ZS-SSL (natural init)"} <= set(comp["method"])
    assert (comp["seconds"] >= 0).all()


def test_tiny_study_reads_test_once_and_gives_ssdu_no_reference(tiny_run):
    _, _, _, events, seen = tiny_run
    tests = [i for i, e in enumerate(events) if e[0] == "load" and e[2] == "test"]
    trains = [i for i, e in enumerate(events) if e[0] == "train" and e[1] != "zsssl"]
    assert tests and trains
    assert all(events[i][3] for i in tests) and min(tests) > max(trains)
    # supervised and SSDU training happen before the evaluation step, never inside it
    assert not any(events[i][3] for i in trains)
    # ZS-SSL is the one method trained in the evaluation step (on each test scan's own k-space);
    # it is given k-space and mask only (two positional arguments, no reference keyword)
    assert any(e[1] == "zsssl" and e[3] for e in events)
    for n_pos, keys in seen["zsssl_args"]:
        assert n_pos == 2 and not any("ref" in k for k in keys)
    # SSDU's training and validation data carry no finite reference value
    assert seen["ssdu_refs_finite"] and not any(seen["ssdu_refs_finite"])


def test_tiny_study_writes_and_reads_back(tiny_run):
    _, res, out, _, _ = tiny_run
    for name in ("efficiency.csv", "efficiency_per_image.csv", "efficiency_claims.csv", "efficiency_training.csv",
                 "efficiency.json", "efficiency.png"):
        assert (out / name).exists(), name
    back = read_results(out, "efficiency")
    pd.testing.assert_frame_equal(back.table.reset_index(drop=True), res.table.reset_index(drop=True),
                                  check_dtype=False, atol=1e-4)
    assert back.extra["compute_table"] and back.extra["seeds"] == [0]
    assert list(back.claims["id"]) == list(res.claims["id"])


# ----------------------------------------------------------------- checked-in results
@pytest.mark.skipif(not (CHECKED_IN / "efficiency.csv").exists(),
                    reason="results/small/efficiency/ is not checked in yet: mrtl reproduce --study efficiency")
def test_checked_in_results_are_complete():
    res = read_results(CHECKED_IN, "efficiency")
    cfg = EfficiencyConfig.small()
    man = json.loads((CHECKED_IN / "manifest.json").read_text())
    assert man["status"] == "finished" and man["study"] == "efficiency" and len(man["seeds_used"]) >= 3
    t = res.table
    for R in cfg.R_list:
        for n in cfg.n_tune_list[1:]:
            assert ((t["R"] == R) & (t["n_tune"] == n) & (t["method"] == "SSDU")).any(), (R, n)
    assert (res.claims["n_seeds"] >= 3).all()
    # every number of the page's table comes from these files: the figure is drawn from the table
    assert (CHECKED_IN / "efficiency.png").exists()


def test_verdict_summary_sorts_each_ntune_by_its_verdict():
    from mrtl.experiments.efficiency import verdict_summary

    claims = pd.DataFrame([
        dict(id="supervised_minus_ssdu_ntune1", claim="", n_tune=1, estimate=0.05, ci_low=-0.1, ci_high=0.2,
             verdict="within noise", n_images=24, n_seeds=3),
        dict(id="supervised_minus_ssdu_ntune8", claim="", n_tune=8, estimate=1.2, ci_low=0.9, ci_high=1.5,
             verdict="holds", n_images=24, n_seeds=3),
        dict(id="ssdu_minus_raw_ntune2", claim="", n_tune=2, estimate=-0.3, ci_low=-0.5, ci_high=-0.1,
             verdict="does not hold", n_images=24, n_seeds=3),
        dict(id="raw_minus_cs", claim="the raw natural network beats CS", n_tune=0, estimate=0.1, ci_low=-0.01,
             ci_high=0.2, verdict="within noise", n_images=24, n_seeds=3),
    ])
    text = verdict_summary(claims).splitlines()
    sup = next(line for line in text if line.startswith("- supervised fine-tuning vs SSDU"))
    assert "**wins** at Ntune 8 (+1.20 [+0.90, +1.50] dB)" in sup and "**ties** at Ntune 1 (+0.05" in sup
    assert "loses" not in sup
    raw = next(line for line in text if line.startswith("- SSDU (no reference) vs the raw"))
    assert "**loses** at Ntune 2 (-0.30 [-0.50, -0.10] dB)" in raw
    assert "- the raw natural network beats CS: +0.10 [-0.01, +0.20] dB, **within noise**" in text[-1]
