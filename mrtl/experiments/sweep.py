"""Study 2: the Ntrain x Ntune sweep with the 0.05% convergence rule (Figs. 4-5)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from . import _common as C
from .compare import sweep_convergence
from .config import SweepConfig
from .results import (StudyResult, claim_table, domain_label, method_name, paired_differences, summarize_records,
                      table_id, write_results)
from ..utils import atomic_write_text

__all__ = ["ntune_sweep", "sweep_claims"]


class _Cells:
    """Finished grid cells as JSON files under ``<output_dir>/cells/`` (resumable sweep)."""

    def __init__(self, output_dir: str | None, cfg=None):
        self.dir = None if output_dir is None else Path(output_dir) / "cells"
        self.mem: dict[str, list[dict]] = {}
        # A cell is reused only if it was computed with the same settings: a rerun after a
        # change of epochs, widths, learning rates or seeds recomputes instead of mixing.
        self.fingerprint = None if cfg is None else C.settings_fingerprint(cfg)

    @staticmethod
    def key(R, method, n_train, n_tune, seed: int = 0) -> str:
        return f"s{seed}_R{R}_{method}_ntrain{n_train}_ntune{n_tune}"

    def get_state(self, seed: int) -> dict | None:
        """What a seed chose on validation (learning rates, epochs, curves), if saved with these settings."""
        if self.dir is None or not (self.dir / f"s{seed}_choices.json").exists():
            return self.mem.get(f"state{seed}")
        saved = json.loads((self.dir / f"s{seed}_choices.json").read_text())
        return saved["state"] if saved.get("fingerprint") == self.fingerprint else None

    def put_state(self, seed: int, state: dict) -> None:
        self.mem[f"state{seed}"] = state
        if self.dir is not None:
            atomic_write_text(self.dir / f"s{seed}_choices.json",
                              json.dumps({"fingerprint": self.fingerprint, "state": state}, default=float))

    def get(self, key: str) -> list[dict] | None:
        if key in self.mem:
            return self.mem[key]
        if self.dir is not None and (self.dir / f"{key}.json").exists():
            saved = json.loads((self.dir / f"{key}.json").read_text())
            if saved.get("fingerprint") != self.fingerprint:
                return None  # computed with other settings: recompute
            rows = saved["rows"]
            self.mem[key] = rows
            return rows
        return None

    def put(self, key: str, rows: list[dict], seconds: float) -> None:
        self.mem[key] = rows
        if self.dir is not None:
            atomic_write_text(self.dir / f"{key}.json", json.dumps({"key": key, "fingerprint": self.fingerprint, "seconds": round(seconds, 2), "rows": rows}))


def _one_seed(cfg: SweepConfig, cells: _Cells, timings: dict):
    """One seed: train and select everything on train/tune/val, then evaluate on the test split.

    Returns ``(rows, tracker_state, skipped, computed)``. A seed whose cells are all finished
    (with these settings) is read back instead of recomputed."""
    s = cfg.seed
    tab, dom = table_id(cfg.target, sweep=True), domain_label(cfg.target)
    n_tune_pos = [n for n in cfg.n_tune_list if n > 0]
    ref_n_train = cfg.reference_n_train or max(cfg.n_train_list)
    ref_n = len(C.get_source(cfg.target, "train", cfg, ref_n_train))
    Tm, Nm = method_name(cfg.target), method_name(cfg.source)
    n_real = {n: len(C.get_source(cfg.source, "train", cfg, n)) for n in cfg.n_train_list}
    wanted = []  # (R, method, n_train, n_tune, stage)
    for R in cfg.R_list:
        wanted += [(R, Tm, ref_n, n, "raw" if n == 0 else "tuned") for n in sorted({0, cfg.reference_n_tune})]
        for n_train in cfg.n_train_list:
            wanted += [(R, Nm, n_real[n_train], n, "raw" if n == 0 else "tuned") for n in cfg.n_tune_list]
        if cfg.scratch:
            wanted += [(R, "Scratch", 0, n, "-") for n in n_tune_pos]
    keys = [cells.key(R, m, nt, n, seed=s) for R, m, nt, n, _ in wanted]
    state = cells.get_state(s)
    if state is not None and all(cells.get(k) is not None for k in keys):
        return [r for k in keys for r in cells.get(k)], state, len(keys), 0
    tr = C.Tracker(cfg)
    nets: dict[str, tuple] = {}
    for R in cfg.R_list:
        val = C.undersampled(C.get_source(cfg.target, "val", cfg, cfg.n_val), R, cfg, "val", seed_offset=4000)
        src_val = val if cfg.source == cfg.target else C.undersampled(C.get_source(cfg.source, "val", cfg, cfg.n_val), R,
                                                                      cfg, "val", seed_offset=4100)
        tunes: dict[int, object] = {}

        def tune_data(n):
            if n not in tunes:
                tunes[n] = C.undersampled(C.get_source(cfg.target, "tune", cfg, n), R, cfg, "tune", seed_offset=2000)
            return tunes[n]

        def fine_tune_all(pre, method, n_train, grid_n, seed_base, label):
            # the largest Ntune first: the learning rate is chosen there (and reused below)
            for n in sorted(grid_n, reverse=True):
                if n == 0:
                    nets[cells.key(R, method, n_train, 0, seed=s)] = (pre, method, n_train, 0, "raw")
                    continue
                td = tune_data(n)

                def run_ft(lr, n=n, td=td):
                    return C.finetune(C.trained_copy(pre), td, val, cfg,
                                      C.ckpt_dir(cfg, f"ft_{method}_R{R}_n{n_train}_t{n}_lr{lr:g}"), seed=seed_base + n, lr=lr)

                t0 = time.perf_counter()
                net = tr.train("finetune", f"{label} Ntune {n}", R, run_ft)
                timings[f"s{s}_ft_{method}_R{R}_n{n_train}_t{n}"] = round(time.perf_counter() - t0, 2)
                nets[cells.key(R, method, n_train, n, seed=s)] = (net, method, n_train, len(td), "tuned")

        # transferred networks (the largest Ntrain first: learning rates are chosen there)
        for ni, n_train in sorted(enumerate(cfg.n_train_list), key=lambda t: -t[1]):
            src = C.get_source(cfg.source, "train", cfg, n_train)

            def run_pre(lr, src=src, ni=ni):
                m = C.new_cascade(cfg, "single", seed=s + 11 + ni)
                return C.pretrain(m, C.undersampled(src, R, cfg, "train", seed_offset=3100 + ni), src_val, cfg,
                                  C.ckpt_dir(cfg, f"pre_{cfg.source}_R{R}_n{len(src)}_lr{lr:g}"), seed=s + 1 + ni, lr=lr)

            t0 = time.perf_counter()
            pre = tr.train("pretrain", f"{Nm} Ntrain {len(src)} pretraining", R, run_pre)
            timings[f"s{s}_pre_{cfg.source}_R{R}_n{len(src)}"] = round(time.perf_counter() - t0, 2)
            C.log(f"seed {s} R={R}: pretrained on {len(src)} {cfg.source} images")
            fine_tune_all(pre, Nm, len(src), cfg.n_tune_list, s + 200 + 10 * ni, f"{Nm} Ntrain {len(src)}")
        # the in-domain reference
        ref_src = C.get_source(cfg.target, "train", cfg, ref_n_train)

        def run_ref(lr):
            m = C.new_cascade(cfg, "single", seed=s + 1)
            return C.pretrain(m, C.undersampled(ref_src, R, cfg, "train", seed_offset=3000), val, cfg,
                              C.ckpt_dir(cfg, f"pre_{cfg.target}_R{R}_n{ref_n}_lr{lr:g}"), seed=s, lr=lr)

        ref = tr.train("pretrain", f"{Tm} Ntrain {ref_n} pretraining", R, run_ref)
        fine_tune_all(ref, Tm, ref_n, sorted({0, cfg.reference_n_tune}), s + 100, f"{Tm} Ntrain {ref_n}")
        # from scratch on the Ntune images only (the largest Ntune first)
        if cfg.scratch:
            for n in sorted(n_tune_pos, reverse=True):
                td = tune_data(n)

                def run_scratch(lr, n=n, td=td):
                    return C.finetune(C.new_cascade(cfg, "single", seed=s + 999), td, val, cfg,
                                      C.ckpt_dir(cfg, f"ft_Scratch_R{R}_n0_t{n}_lr{lr:g}"), seed=s + 500 + n, lr=lr)

                t0 = time.perf_counter()
                net = tr.train("scratch", f"Scratch Ntune {n}", R, run_scratch)
                timings[f"s{s}_scratch_R{R}_t{n}"] = round(time.perf_counter() - t0, 2)
                nets[cells.key(R, "Scratch", 0, n, seed=s)] = (net, "Scratch", 0, len(td), "-")
        C.log(f"seed {s} R={R}: training done")
    state = {"lr": dict(tr.lr), "training": tr.training, "curves": tr.curves, "selections": tr.selections}
    cells.put_state(s, state)
    # the evaluation step: the only place the test split is read
    rows: list[dict] = []
    computed = 0
    with C.evaluation_phase():
        test_src = C.get_source(cfg.target, "test", cfg, cfg.n_test)
        for R in cfg.R_list:
            test = C.undersampled(test_src, R, cfg, "test", seed_offset=1000)
            key = dict(table=tab, test_domain=dom, coils="single", R=int(R))
            for R_, method, n_train, n, _stage in wanted:
                if R_ != R:
                    continue
                k = cells.key(R, method, n_train, n, seed=s)
                net, method, n_train, n_used, stage = nets[k]
                recs = C.records_to_rows(C.evaluate(net, test, cfg), **key, method=method, stage=stage,
                                         n_train=n_train, n_tune=n_used, seed=s)
                cells.put(k, recs, 0.0)
                computed += 1
                rows += recs
    return rows, state, 0, computed


def sweep_claims(cfg: SweepConfig, table: pd.DataFrame) -> list[dict]:
    """Pretrained-and-tuned minus from-scratch at each Ntune and Ntrain, and the in-domain
    reference minus the transferred network at the reference's Ntune (paired, per R)."""
    tab = table_id(cfg.target, sweep=True)
    Nm, Tm = method_name(cfg.source), method_name(cfg.target)
    claims = []
    tr = table[(table["method"] == Nm)]
    n_trains = sorted(set(tr["n_train"]))
    if cfg.scratch:
        for n in sorted(set(table.loc[table["method"] == "Scratch", "n_tune"])):
            for nt in n_trains:
                claims.append(dict(id=f"{tab}_pretrained{nt}_minus_scratch_ntune{n}",
                                   claim=f"pretrained on {nt} natural images and fine-tuned on {n} slices beats training from scratch on them",
                                   terms=[(1, dict(table=tab, method=Nm, n_train=nt, n_tune=n)),
                                          (-1, dict(table=tab, method="Scratch", n_tune=n))], paper=None))
    ref = table[(table["method"] == Tm) & (table["stage"] == "tuned")]
    if len(ref) and n_trains:
        n_ref = int(ref["n_tune"].max())
        if n_ref in set(tr["n_tune"]):
            claims.append(dict(id=f"{tab}_reference_minus_transferred_ntune{n_ref}",
                               claim=f"the in-domain reference stays ahead of the natural-image network (Ntrain {n_trains[-1]}) after fine-tuning on {n_ref} slices",
                               terms=[(1, dict(table=tab, method=Tm, stage="tuned")),
                                      (-1, dict(table=tab, method=Nm, n_train=n_trains[-1], n_tune=n_ref))], paper=None))
    return claims


def ntune_sweep(cfg: SweepConfig | None = None) -> StudyResult:
    """PSNR against Ntune for several Ntrain (Fig. 4) and Ntune at convergence (Fig. 5).

    For each seed and R: the in-domain reference (``<target>``-trained on ``reference_n_train``
    images, fine-tuned on ``reference_n_tune``); for each ``n_train`` in ``n_train_list`` a
    cascade pretrained on that many ``source`` images, evaluated raw (``n_tune = 0``) and
    fine-tuned on each ``n_tune`` target images (spread over the fine-tuning split); and a
    cascade trained from scratch on the same ``n_tune`` images with the same budget and
    stopping rule. Every epoch is chosen by validation PSNR with early stopping; learning
    rates are chosen on validation at the largest Ntrain and Ntune and reused. The test images
    are read only after all training (:func:`mrtl.experiments._common.evaluation_phase`).

    The grid is resumable: each evaluated (seed, R, method, Ntrain, Ntune) cell is written to
    ``<output_dir>/cells/<key>.json`` with a fingerprint of the settings, a seed whose cells
    are all there is read back, and training is checkpointed under ``checkpoints/``.

    Args:
        cfg: the configuration (default :meth:`SweepConfig.small`).

    Returns:
        :class:`StudyResult`; ``extra`` holds ``convergence`` (Ntune at convergence per R and
        Ntrain, the 0.05% rule, on the mean over seeds) and ``pretrained_minus_scratch`` (paired
        PSNR differences with hierarchical bootstrap intervals); ``frames`` as
        :func:`mrtl.experiments.single_coil_transfer`.
    """
    cfg = SweepConfig.small() if cfg is None else cfg
    if not isinstance(cfg, SweepConfig):
        raise TypeError(f"cfg: expected a SweepConfig, got {type(cfg).__name__}")
    cfg.validate()
    t_start = time.perf_counter()
    cells = _Cells(cfg.output_dir, cfg)
    skipped, computed = 0, 0
    rows: list[dict] = []
    timings: dict = {}
    states = []
    with C.threads(cfg) as n_threads:
        for s in cfg.seeds:
            scfg = cfg.replace(seed=s)
            C.setup(scfg)
            r, state, sk, co = _one_seed(scfg, cells, timings)
            rows += r
            states.append(state)
            skipped += sk
            computed += co
    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image)
    conv = sweep_convergence(table, tol=cfg.tol, transferred=method_name(cfg.source))
    claims = claim_table(per_image, sweep_claims(cfg, table))
    pms = []
    for _, c in claims.iterrows():
        if "_minus_scratch_" in c["id"]:
            nt = int(c["id"].split("pretrained")[1].split("_")[0])
            n = int(c["id"].split("ntune")[1])
            pms.append(dict(R=c["R"], n_tune=n, n_train=nt, dpsnr_mean=float(c["estimate"]), ci_low=float(c["ci_low"]),
                            ci_high=float(c["ci_high"]), verdict=c["verdict"], per_seed=c["per_seed"]))
    import pandas as _pd

    frames = {"training": _pd.DataFrame([r for st in states for r in st["training"]]),
              "curves": _pd.DataFrame([r for st in states for r in st["curves"]]),
              "selections": _pd.DataFrame([r for st in states for r in st["selections"]]), "claims": claims}
    extra = {"convergence": conv.to_dict(orient="records"), "pretrained_minus_scratch": pms,
             "seeds": list(cfg.seeds), "num_threads": n_threads,
             "lr": {str(s): st["lr"] for s, st in zip(cfg.seeds, states)}, "timings_s": timings,
             "cells_skipped": skipped, "cells_computed": computed,
             "wall_time_s": round(time.perf_counter() - t_start, 1)}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict(), frames=frames)
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "sweep")
        import matplotlib.pyplot as plt

        from .plots import plot_curves, plot_sweep, save_figure

        fig = plot_sweep(table, conv)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/sweep.png")
        plt.close(fig)
        fig = plot_curves(frames["curves"])
        result.paths["curves_figure"] = save_figure(fig, f"{cfg.output_dir}/sweep_curves.png")
        plt.close(fig)
    return result
