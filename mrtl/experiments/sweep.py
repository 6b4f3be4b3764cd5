"""Study 2: the Ntrain x Ntune sweep with the 0.05% convergence rule (Figs. 4-5)."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pandas as pd

from . import _common as C
from .compare import sweep_convergence
from .config import SweepConfig
from .results import StudyResult, domain_label, method_name, paired_differences, summarize_records, table_id, write_results
from ..utils import atomic_write_text

__all__ = ["ntune_sweep"]


class _Cells:
    """Finished grid cells as JSON files under ``<output_dir>/cells/`` (resumable sweep)."""

    def __init__(self, output_dir: str | None, cfg=None):
        self.dir = None if output_dir is None else Path(output_dir) / "cells"
        self.mem: dict[str, list[dict]] = {}
        # A cell is reused only if it was computed with the same settings: a rerun after a
        # change of epochs, widths, learning rates or seeds recomputes instead of mixing.
        self.fingerprint = None if cfg is None else C.settings_fingerprint(cfg)

    @staticmethod
    def key(R, method, n_train, n_tune) -> str:
        return f"R{R}_{method}_ntrain{n_train}_ntune{n_tune}"

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


def ntune_sweep(cfg: SweepConfig | None = None) -> StudyResult:
    """PSNR against Ntune for several Ntrain (Fig. 4) and Ntune at convergence (Fig. 5).

    For each R: the in-domain reference (``<target>``-trained on ``reference_n_train`` images,
    fine-tuned on ``reference_n_tune``); for each ``n_train`` in ``n_train_list`` a cascade
    pretrained on that many ``source`` images, evaluated raw (``n_tune = 0``) and fine-tuned on
    each ``n_tune`` target images (spread over the fine-tuning split); and a cascade trained
    from scratch on the same ``n_tune`` images with the fine-tuning budget (``ft_epochs``
    epochs, ``lr_scratch``). All on the same test images and test masks.

    The grid is resumable: each finished (R, method, Ntrain, Ntune) cell is written to
    ``<output_dir>/cells/<key>.json`` and skipped when the sweep is rerun (pretraining is also
    checkpointed under ``checkpoints/``).

    Args:
        cfg: the configuration (default :meth:`SweepConfig.small`).

    Returns:
        :class:`StudyResult`; ``extra`` holds ``convergence`` (Ntune at convergence per R and
        Ntrain, the 0.05% rule) and ``pretrained_minus_scratch`` (paired PSNR differences).
    """
    cfg = SweepConfig.small() if cfg is None else cfg
    if not isinstance(cfg, SweepConfig):
        raise TypeError(f"cfg: expected a SweepConfig, got {type(cfg).__name__}")
    cfg.validate()
    C.setup(cfg)
    t_start = time.perf_counter()
    cells = _Cells(cfg.output_dir, cfg)
    skipped, computed = 0, 0
    tab, dom = table_id(cfg.target, sweep=True), domain_label(cfg.target)
    test_src = C.get_source(cfg.target, "test", cfg, cfg.n_test)
    n_tune_pos = [n for n in cfg.n_tune_list if n > 0]
    ref_n_train = cfg.reference_n_train or max(cfg.n_train_list)
    rows: list[dict] = []
    for R in cfg.R_list:
        key = dict(table=tab, test_domain=dom, coils="single", R=int(R))
        test = None

        def get_test():
            nonlocal test
            if test is None:
                test = C.undersampled(test_src, R, cfg, "test", seed_offset=1000)
            return test

        def tune_data(n):
            return C.undersampled(C.get_source(cfg.target, "tune", cfg, n), R, cfg, "tune", seed_offset=2000)

        def run_cells(method, n_train, pretrain_fn, tunes, stage_of, ft_lr=None, seed=0):
            """Evaluate a (pre)trained network raw and after fine-tuning on each n in ``tunes``."""
            nonlocal skipped, computed
            todo = [n for n in tunes if cells.get(cells.key(R, method, n_train, n)) is None]
            skipped += len(tunes) - len(todo)
            if not todo:
                return
            model = pretrain_fn()
            for n in todo:
                t0 = time.perf_counter()
                if n == 0:
                    net = model
                    n_used = 0
                else:
                    net = copy.deepcopy(model)
                    td = tune_data(n)
                    n_used = len(td)
                    C.finetune(net, td, cfg, C.ckpt_dir(cfg, f"ft_{method}_R{R}_n{n_train}_t{n}"), seed=seed + n, lr=ft_lr)
                recs = C.records_to_rows(C.evaluate(net, get_test(), cfg), **key, method=method, stage=stage_of(n),
                                         n_train=n_train, n_tune=n_used)
                cells.put(cells.key(R, method, n_train, n), recs, time.perf_counter() - t0)
                computed += 1
                C.log(f"R={R}: cell {method} Ntrain={n_train} Ntune={n} done in {time.perf_counter() - t0:.0f} s")

        # the in-domain reference
        ref_src = C.get_source(cfg.target, "train", cfg, ref_n_train)
        ref_n = len(ref_src)

        def pre_ref():
            m = C.new_cascade(cfg, "single", seed=cfg.seed + 1)
            C.pretrain(m, C.undersampled(ref_src, R, cfg, "train", seed_offset=3000), cfg,
                       C.ckpt_dir(cfg, f"pre_{cfg.target}_R{R}_n{ref_n}"), seed=cfg.seed)
            return m

        run_cells(method_name(cfg.target), ref_n, pre_ref, sorted({0, cfg.reference_n_tune}),
                  lambda n: "raw" if n == 0 else "tuned", seed=cfg.seed + 100)
        # transferred networks
        for ni, n_train in enumerate(cfg.n_train_list):
            src = C.get_source(cfg.source, "train", cfg, n_train)
            n_real = len(src)

            def pre_src(src=src, n_real=n_real, ni=ni):
                m = C.new_cascade(cfg, "single", seed=cfg.seed + 11 + ni)
                C.pretrain(m, C.undersampled(src, R, cfg, "train", seed_offset=3100 + ni), cfg,
                           C.ckpt_dir(cfg, f"pre_{cfg.source}_R{R}_n{n_real}"), seed=cfg.seed + 1 + ni)
                return m

            run_cells(method_name(cfg.source), n_real, pre_src, list(cfg.n_tune_list),
                      lambda n: "raw" if n == 0 else "tuned", seed=cfg.seed + 200 + 10 * ni)
        # from scratch on the Ntune images only
        if cfg.scratch and n_tune_pos:
            run_cells("Scratch", 0, lambda: C.new_cascade(cfg, "single", seed=cfg.seed + 999), n_tune_pos,
                      lambda n: "-", ft_lr=cfg.lr_scratch, seed=cfg.seed + 500)
        # gather every cell of this R in a fixed order
        wanted = [(method_name(cfg.target), ref_n, n) for n in sorted({0, cfg.reference_n_tune})]
        for n_train in cfg.n_train_list:
            n_real = len(C.get_source(cfg.source, "train", cfg, n_train))
            wanted += [(method_name(cfg.source), n_real, n) for n in cfg.n_tune_list]
        if cfg.scratch:
            wanted += [("Scratch", 0, n) for n in n_tune_pos]
        for method, n_train, n in wanted:
            rows += cells.get(cells.key(R, method, n_train, n)) or []
    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image)
    conv = sweep_convergence(table, tol=cfg.tol, transferred=method_name(cfg.source))
    # pretrained-and-tuned minus from-scratch, paired per image, at each Ntune
    pms = []
    if cfg.scratch:
        for R in cfg.R_list:
            g = per_image[per_image["R"] == R]
            scr = g[g["method"] == "Scratch"]
            for n in sorted(set(scr["n_tune"])):
                s = scr[scr["n_tune"] == n].set_index("image")["psnr"]
                tr = g[(g["method"] == method_name(cfg.source)) & (g["n_tune"] == n)]
                for n_train, t in tr.groupby("n_train"):
                    d = (t.set_index("image")["psnr"] - s).dropna()
                    pms.append(dict(R=int(R), n_tune=int(n), n_train=int(n_train), dpsnr_mean=float(d.mean()),
                                    dpsnr_std=float(d.std(ddof=0)), n=int(len(d))))
    extra = {"convergence": conv.to_dict(orient="records"), "pretrained_minus_scratch": pms,
             "cells_skipped": skipped, "cells_computed": computed,
             "wall_time_s": round(time.perf_counter() - t_start, 1)}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict())
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "sweep")
        import matplotlib.pyplot as plt

        from .plots import plot_sweep, save_figure

        fig = plot_sweep(table, conv)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/sweep.png")
        plt.close(fig)
    return result
