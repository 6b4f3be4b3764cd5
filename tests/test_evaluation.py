"""The evaluation protocol of the studies (issue "Honest evaluation"): the test split is read only by
the final evaluation step, every choice is made on validation (epochs by early stopping with the
same rule for fine-tuned and from-scratch networks, learning rates, CS parameters), seed statistics
and hierarchical-bootstrap intervals (checked against analytic values), determinism across thread
counts, the comparison with the paper at the same R, the manifest's dirty flag, and the README's and
the book's numbers generated from the checked-in results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mrtl.experiments import (MulticoilConfig, SweepConfig, TransferConfig, bootstrap_ci, claim_table, compare,
                              load_paper_table, summarize_records, verdict)
from mrtl.experiments import _common as C

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------- the test split
@pytest.fixture(scope="module")
def access_log():
    """Run the three tiny studies with every data load and every training call recorded."""
    import mrtl.data
    import mrtl.train

    events: list[tuple] = []
    orig = (mrtl.data.bundled, mrtl.train.train_sequential, mrtl.train.finetune)

    def bundled(domain, split="train", *a, **k):
        events.append(("load", domain, split, C.evaluating()))
        return orig[0](domain, split, *a, **k)

    def train_sequential(*a, **k):
        events.append(("train", "pretrain", None, C.evaluating()))
        return orig[1](*a, **k)

    def finetune(*a, **k):
        events.append(("train", "finetune", None, C.evaluating()))
        return orig[2](*a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(mrtl.data, "bundled", bundled)
    mp.setattr(mrtl.train, "train_sequential", train_sequential)
    mp.setattr(mrtl.train, "finetune", finetune)
    from mrtl.experiments import multicoil_transfer, ntune_sweep, single_coil_transfer

    logs = {}
    try:
        for name, fn, cfg in (("transfer", single_coil_transfer, TransferConfig.tiny(lr_grid=(1e-3, 1e-2))),
                              ("sweep", ntune_sweep, SweepConfig.tiny(n_train_list=(6,), n_tune_list=(0, 2))),
                              ("multicoil", multicoil_transfer, MulticoilConfig.tiny())):
            events.clear()
            res = fn(cfg)
            logs[name] = (list(events), res)
    finally:
        mp.undo()
    return logs


@pytest.mark.parametrize("study", ["transfer", "sweep", "multicoil"])
def test_test_split_is_read_only_by_the_evaluation_step(access_log, study):
    events, res = access_log[study]
    tests = [i for i, e in enumerate(events) if e[0] == "load" and e[2] == "test"]
    trains = [i for i, e in enumerate(events) if e[0] == "train"]
    assert tests and trains, "the study must train networks and read the test split"
    # every read of the test split happens inside the evaluation step, after all training
    assert all(events[i][3] for i in tests)
    assert min(tests) > max(trains)
    # no training inside the evaluation step; choices were made on the validation split
    assert not any(events[i][3] for i in trains)
    assert any(e[0] == "load" and e[2] == "val" for e in events)


def test_reading_the_test_split_outside_the_evaluation_step_raises():
    cfg = TransferConfig.tiny()
    with pytest.raises(RuntimeError, match="test split"):
        C.get_source("t1", "test", cfg, 2)
    with C.evaluation_phase():
        assert len(C.get_source("t1", "test", cfg, 2)) == 2
        with pytest.raises(RuntimeError, match="evaluation"):
            C.finetune(C.new_cascade(cfg), None, None, cfg, None, seed=0)
    assert not C.evaluating()


# --------------------------------------------------------------------- choices on validation
def test_epochs_are_chosen_by_validation_psnr_with_one_rule(access_log):
    _, res = access_log["transfer"]
    tr, curves = res.training, res.curves
    ft = tr[tr["kind"].isin(["finetune", "scratch"])]
    # fine-tuned and from-scratch networks: the same budget and the same stopping rule
    assert ft["max_epochs"].nunique() == 1 and ft["patience"].nunique() == 1
    # the epoch kept is the best validation PSNR of the curve (first maximum), independently
    for _, row in tr.iterrows():
        c = curves[(curves["network"] == row["network"]) & (curves["R"] == row["R"]) & (curves["lr"] == row["lr"])
                   & (curves["stage"] == row["stage"]) & (curves["seed"] == row["seed"])].sort_values("epoch")
        assert len(c), row["network"]
        assert row["best_epoch"] == int(c["epoch"].iloc[int(np.argmax(c["val_psnr"].to_numpy()))])
        assert row["stop_epoch"] == int(c["epoch"].max()) <= row["max_epochs"]


def test_learning_rate_is_the_best_on_validation_and_recorded(access_log):
    _, res = access_log["transfer"]
    tr = res.training
    for kind in ("finetune", "scratch"):
        first = tr[(tr["kind"] == kind)].groupby("network", sort=False).filter(lambda g: g["lr"].nunique() > 1)
        assert set(first["lr"]) == {1e-3, 1e-2}, "both rates of the grid were tried"
        best = first.loc[first["val_psnr_best"].idxmax(), "lr"]
        assert first.loc[first["chosen"].astype(bool), "lr"].unique().tolist() == [best]
        assert res.extra["per_seed"]["0"]["lr"][kind] == best
    # the chosen rate is reused for the other networks of that kind
    tuned = tr[(tr["kind"] == "finetune") & tr["chosen"].astype(bool)]
    assert tuned["lr"].nunique() == 1


def test_cs_parameters_are_the_validation_optimum(access_log):
    _, res = access_log["transfer"]
    sel = res.frames["selections"]
    cs = sel[sel["what"] == "CS"].iloc[0]
    grid = pd.DataFrame(json.loads(cs["val_psnr"]))
    chosen = json.loads(cs["chosen"])
    top = grid.loc[grid["psnr_mean"].idxmax()]
    assert (chosen["lam"], chosen["n_iter"]) == (top["lam"], top["n_iter"])
    assert res.extra["per_seed"]["0"]["cs"]["t1_R4"] == chosen


def test_multicoil_summary_has_indomain_and_scratch_beside_transferred(access_log):
    _, res = access_log["multicoil"]
    ids = set(res.claims["id"])
    assert {"T2_natural_minus_spirit", "T2_indomain_minus_natural", "T2_natural_minus_scratch"} <= ids
    assert {"SPIRiT", "T1-trained", "Natural-trained", "Scratch"} <= set(res.table["method"])


# ------------------------------------------------------------------------- seed statistics
def _fake_per_image(seed_means, n_img=20, noise=0.01, rng=0):
    r = np.random.default_rng(rng)
    rows = []
    for s, m in enumerate(seed_means):
        for i in range(n_img):
            base = 30 + r.normal(0, 2)  # shared slice difficulty
            for method, off in (("A", m), ("B", 0.0)):
                rows.append(dict(table="T1", test_domain="T1", coils="single", R=4, method=method, stage="-",
                                 n_train=0, n_tune=0, image=i, seed=s, psnr=base + off + r.normal(0, noise), ssim=0.9))
    return pd.DataFrame(rows)


def test_bootstrap_matches_the_normal_interval_for_one_seed():
    r = np.random.default_rng(1)
    x = r.normal(0.5, 1.0, 400)
    mean, lo, hi = bootstrap_ci(pd.DataFrame({"d": x}), "d")
    half = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert mean == pytest.approx(x.mean())
    assert lo == pytest.approx(x.mean() - half, abs=0.2 * half) and hi == pytest.approx(x.mean() + half, abs=0.2 * half)


def test_hierarchical_bootstrap_carries_the_seed_spread():
    per = _fake_per_image([0.2, 1.0, 1.8], noise=0.01)
    d = per[per.method == "A"].set_index(["seed", "image"])["psnr"] - per[per.method == "B"].set_index(["seed", "image"])["psnr"]
    df = d.rename("d").reset_index()
    mean, lo, hi = bootstrap_ci(df, "d")
    _, flo, fhi = bootstrap_ci(df.drop(columns="seed"), "d")  # slices only, seeds ignored
    assert mean == pytest.approx(1.0, abs=0.01)
    assert lo < 0.6 and hi > 1.4  # the seed means span 0.2..1.8
    assert (hi - lo) > 3 * (fhi - flo)


def test_verdicts():
    assert verdict(0.1, 0.5) == "holds" and verdict(-0.1, 0.5) == "within noise" and verdict(-0.5, -0.1) == "does not hold"
    assert verdict(-0.5, -0.1, direction=-1) == "holds"


def test_claim_table_and_seed_sd_against_a_direct_computation():
    per = _fake_per_image([0.3, 0.5, 0.7], noise=0.05)
    per8 = per.assign(R=8, psnr=per["psnr"] - 3)  # the same difference at R = 8 (shifted PSNRs)
    per = pd.concat([per, per8], ignore_index=True)
    claims = claim_table(per, [dict(id="a_minus_b", claim="A beats B", a=dict(method="A"), b=dict(method="B"))])
    row = claims.iloc[0]
    a = per[per.method == "A"].set_index(["seed", "R", "image"])["psnr"]
    b = per[per.method == "B"].set_index(["seed", "R", "image"])["psnr"]
    per_seed = (a - b).groupby(level="seed").mean()
    assert row["estimate"] == pytest.approx(per_seed.mean())
    assert json.loads(row["per_seed"]) == pytest.approx(per_seed.round(3).tolist())
    assert row["R"] == "4 8" and row["n_seeds"] == 3 and row["verdict"] == "holds"
    t = summarize_records(per)
    ta = t[(t.method == "A") & (t.R == 4)].iloc[0]
    seed_means = per[(per.method == "A") & (per.R == 4)].groupby("seed")["psnr"].mean()
    assert ta["psnr_mean"] == pytest.approx(seed_means.mean())
    assert ta["psnr_sd_seeds"] == pytest.approx(np.std(seed_means.to_numpy(), ddof=1))
    assert ta["n_seeds"] == 3 and ta["n"] == 20


# ----------------------------------------------------------------------- determinism on CPU
def test_same_numbers_whatever_the_callers_thread_count():
    from mrtl.experiments import single_coil_transfer

    cfg = TransferConfig.tiny(sources=("natural",), cs=False, scratch=False)
    before = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(single_coil_transfer(cfg).per_image)
            assert torch.get_num_threads() == n  # the study restores the caller's setting
    finally:
        torch.set_num_threads(before)
    pd.testing.assert_frame_equal(out[0], out[1])


# ----------------------------------------------------------------- the comparison, the manifest
def test_compare_uses_the_same_R_on_both_sides():
    paper = load_paper_table()
    ours = paper[(paper["table"] == "T1") & paper["R"].isin([4, 8])]
    h = compare(ours, paper).headlines.set_index("quantity")
    for q in ("raw gap (in-domain - natural), dB", "tuned gap (in-domain - natural), dB", "transferred tuned - CS, dB"):
        # our numbers are the paper's own rows at R = 4, 8: the paper side must agree exactly
        assert h.loc[q, "paper"] == pytest.approx(h.loc[q, "ours"])
    assert h.loc["raw gap (in-domain - natural), dB", "paper_quoted"] == 1.97
    assert h.loc["raw gap (in-domain - natural), dB", "R"] == "4 8"


def test_manifest_dirty_flag_ignores_outputs_under_results(monkeypatch):
    from mrtl.experiments import runner

    def fake_git(porcelain):
        return lambda *args: porcelain if args[0] == "status" else "abc"

    monkeypatch.setattr(runner, "_git", fake_git("?? results/transfer/small-1/\n M results/small/sweep/sweep.csv"))
    m = runner.collect_manifest("transfer", "tiny", {"seed": 0}, 1.0, "finished", "r")
    assert m["git_dirty"] is False and m["git_dirty_files"] == []
    monkeypatch.setattr(runner, "_git", fake_git("?? results/x.csv\n M mrtl/train.py\n?? notes.txt"))
    m = runner.collect_manifest("transfer", "tiny", {"seed": 0}, 1.0, "finished", "r")
    assert m["git_dirty"] is True and m["git_dirty_files"] == ["mrtl/train.py", "notes.txt"]
    # the git helper strips its output, so the first line may have lost its leading space
    monkeypatch.setattr(runner, "_git", fake_git("M README.md\n M mrtl/models.py"))
    m = runner.collect_manifest("transfer", "tiny", {"seed": 0}, 1.0, "finished", "r")
    assert m["git_dirty_files"] == ["README.md", "mrtl/models.py"]


# ----------------------------------------------------------- numbers generated from results
def test_readme_and_book_numbers_are_generated_from_the_checked_in_results():
    """README's results section and the book's snippet equal what tools/results_snippets.py
    generates from results/small/ (so no number in them is typed by hand)."""
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "results_snippets.py"), "--check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_readme_states_every_claim_of_the_checked_in_results_with_its_interval_and_verdict():
    """Independent of the generator: each claim in results/small/*/<study>_claims.csv appears in
    README.md with its estimate, its interval and its verdict, as the files give them."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Results at small scale"):readme.index("## Reading the course")]
    found = 0
    for study in ("transfer", "sweep", "multicoil"):
        f = ROOT / "results" / "small" / study / f"{study}_claims.csv"
        if not f.exists():
            continue
        for _, c in pd.read_csv(f).iterrows():
            row = next((ln for ln in section.splitlines() if ln.startswith(f"| {c['claim']} |")), None)
            assert row is not None, f"{study}: claim {c['id']} is not in the README"
            assert f"{c['estimate']:+.2f} [{c['ci_low']:+.2f}, {c['ci_high']:+.2f}]" in row and f"**{c['verdict']}**" in row
            found += 1
    assert found > 0
