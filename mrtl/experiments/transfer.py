"""Study 1: single-coil domain transfer (Table 1, Supp. Tables 1-2)."""

from __future__ import annotations

import copy
import time

import pandas as pd

from . import _common as C
from .config import TransferConfig
from .results import StudyResult, domain_label, method_name, paired_differences, summarize_records, table_id, write_results

__all__ = ["single_coil_transfer"]


def single_coil_transfer(cfg: TransferConfig | None = None) -> StudyResult:
    """Networks pretrained on each source domain, tested on each target domain, raw and fine-tuned.

    For every target domain and every R in ``cfg.R_list``:

    1. a cascade (Eq. 10) is trained sequentially (Eq. 11) on ``n_train`` images of each
       source domain (natural, T1, T2), with masks from the training bank;
    2. each is evaluated on the target's test images with masks from the disjoint test bank
       (stage ``raw``), then fine-tuned end to end on ``n_tune`` target images spread over the
       target's fine-tuning split and evaluated again (stage ``tuned``);
    3. on the same test images and masks: L1-wavelet CS (Eq. 2; Supp. Table 1), the
       zero-filled input, and a cascade trained from scratch (random init) on the same
       ``n_tune`` images for ``ft_epochs`` epochs at ``lr_scratch`` (method ``Scratch``).

    Args:
        cfg: the configuration (default :meth:`TransferConfig.small`).

    Returns:
        :class:`StudyResult` with the long table (tables ``T1`` / ``S2``), per-image metrics,
        paired differences against the in-domain tuned network, and timings in ``extra``.
        With ``cfg.output_dir`` set, ``transfer.csv``/``.json``/``_per_image.csv``/
        ``_paired.csv`` and ``transfer.png`` are written there (checkpoints under
        ``checkpoints/``, which make a rerun resume).
    """
    cfg = TransferConfig.small() if cfg is None else cfg
    if not isinstance(cfg, TransferConfig):
        raise TypeError(f"cfg: expected a TransferConfig, got {type(cfg).__name__}")
    cfg.validate()
    C.setup(cfg)
    t_start = time.perf_counter()
    rows: list[dict] = []
    timings: dict[str, float] = {}
    n_train_used: dict[str, int] = {}
    for target in cfg.targets:
        tab, dom = table_id(target), domain_label(target)
        test_src = C.get_source(target, "test", cfg, cfg.n_test)
        tune_src = C.get_source(target, "tune", cfg, cfg.n_tune)
        for R in cfg.R_list:
            key = dict(table=tab, test_domain=dom, coils="single", R=int(R))
            test = C.undersampled(test_src, R, cfg, "test", seed_offset=1000)
            tune = C.undersampled(tune_src, R, cfg, "tune", seed_offset=2000)
            n_tune = len(tune)
            # baselines on the same images and masks
            rows += C.records_to_rows(C.zero_filled_records(test), **key, method="Zero-filled", stage="-", n_train=0, n_tune=0)
            if cfg.cs:
                cs_iter = cfg.cs_iter if target != "t2" or cfg.scale == "tiny" else max(cfg.cs_iter, 120)
                recs, t = C.cs_records(test, cfg, cfg.cs_lam, cs_iter)
                timings[f"cs_{target}_R{R}"] = round(t, 2)
                C.log(f"R={R}: CS on {len(test)} {target} test images in {t:.0f} s")
                rows += C.records_to_rows(recs, **key, method="CS", stage="-", n_train=0, n_tune=0)
            for si, source in enumerate(cfg.sources):
                src = C.get_source(source, "train", cfg, cfg.n_train)
                train = C.undersampled(src, R, cfg, "train", seed_offset=3000 + si)
                n_train_used[source] = len(train)
                model = C.new_cascade(cfg, "single", seed=cfg.seed + 10 * si + 1)
                t = C.pretrain(model, train, cfg, C.ckpt_dir(cfg, f"pre_{source}_R{R}_n{len(train)}"), seed=cfg.seed + si)
                timings[f"pretrain_{source}_R{R}"] = round(t, 2)
                C.log(f"R={R}: pretrained on {len(train)} {source} images in {t:.0f} s")
                m = method_name(source)
                rows += C.records_to_rows(C.evaluate(model, test, cfg), **key, method=m, stage="raw",
                                          n_train=len(train), n_tune=0)
                tuned = copy.deepcopy(model)
                t = C.finetune(tuned, tune, cfg, C.ckpt_dir(cfg, f"ft_{source}_to_{target}_R{R}_n{len(train)}_t{n_tune}"),
                               seed=cfg.seed + 100 + si)
                timings[f"finetune_{source}_to_{target}_R{R}"] = round(t, 2)
                C.log(f"R={R}: fine-tuned the {source} network on {n_tune} {target} images in {t:.0f} s")
                rows += C.records_to_rows(C.evaluate(tuned, test, cfg), **key, method=m, stage="tuned",
                                          n_train=len(train), n_tune=n_tune)
            if cfg.scratch:
                model = C.new_cascade(cfg, "single", seed=cfg.seed + 999)
                t = C.finetune(model, tune, cfg, C.ckpt_dir(cfg, f"scratch_{target}_R{R}_t{n_tune}"),
                               seed=cfg.seed + 500, lr=cfg.lr_scratch)
                timings[f"scratch_{target}_R{R}"] = round(t, 2)
                C.log(f"R={R}: trained from scratch on {n_tune} {target} images in {t:.0f} s")
                rows += C.records_to_rows(C.evaluate(model, test, cfg), **key, method="Scratch", stage="-",
                                          n_train=0, n_tune=n_tune)
    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image)
    extra = {"timings_s": timings, "n_train_per_source": n_train_used, "wall_time_s": round(time.perf_counter() - t_start, 1),
             "n_test": int(per_image.groupby(["table", "R", "method", "stage"]).size().max())}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict())
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "transfer")
        from .plots import plot_transfer, save_figure

        try:
            from .compare import load_paper_table

            paper = load_paper_table()
        except FileNotFoundError:
            paper = None
        import matplotlib.pyplot as plt

        fig = plot_transfer(table[table["method"] != "Zero-filled"], paper)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/transfer.png")
        plt.close(fig)
    return result
