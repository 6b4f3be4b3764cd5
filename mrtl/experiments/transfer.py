"""Study 1: single-coil domain transfer (Table 1, Supp. Tables 1-2)."""

from __future__ import annotations

import time

import pandas as pd

from . import _common as C
from .config import TransferConfig
from .results import (StudyResult, claim_table, domain_label, method_name, paired_differences, summarize_records,
                      table_id, write_results)

__all__ = ["single_coil_transfer", "transfer_claims"]


def _one_seed(cfg: TransferConfig, timings: dict) -> tuple[list[dict], C.Tracker, dict]:
    """Train and select everything on train/tune/val, then evaluate once on the test split."""
    tr = C.Tracker(cfg)
    nets: list[tuple[dict, str, str, int, int, object]] = []  # (key, method, stage, n_train, n_tune, model)
    cs_params: dict = {}
    n_train_used: dict = {}
    s = cfg.seed
    for target in cfg.targets:
        tab, dom = table_id(target), domain_label(target)
        tune_src = C.get_source(target, "tune", cfg, cfg.n_tune)
        val_src = C.get_source(target, "val", cfg, cfg.n_val)
        for R in cfg.R_list:
            key = dict(table=tab, test_domain=dom, coils="single", R=int(R))
            tune = C.undersampled(tune_src, R, cfg, "tune", seed_offset=2000)
            val = C.undersampled(val_src, R, cfg, "val", seed_offset=4000)
            n_tune = len(tune)
            if cfg.cs:
                t0 = time.perf_counter()
                cs_params[(target, int(R))] = C.select_cs(val, cfg, tr, R)
                timings[f"s{s}_cs_select_{target}_R{R}"] = round(time.perf_counter() - t0, 2)
                C.log(f"seed {s} R={R}: CS parameters chosen on {len(val)} validation images: {cs_params[(target, int(R))]}")
            for si, source in enumerate(cfg.sources):
                src = C.get_source(source, "train", cfg, cfg.n_train)
                train = C.undersampled(src, R, cfg, "train", seed_offset=3000 + si)
                sval = val if source == target else C.undersampled(C.get_source(source, "val", cfg, cfg.n_val), R, cfg,
                                                                   "val", seed_offset=4100 + si)
                n_train_used[source] = len(train)
                m = method_name(source)

                def run_pre(lr, si=si, source=source, train=train, sval=sval):
                    model = C.new_cascade(cfg, "single", seed=s + 10 * si + 1)
                    return C.pretrain(model, train, sval, cfg, C.ckpt_dir(cfg, f"pre_{source}_R{R}_n{len(train)}_lr{lr:g}"),
                                      seed=s + si, lr=lr)

                t0 = time.perf_counter()
                raw = tr.train("pretrain", f"{m} pretraining", R, run_pre)
                timings[f"s{s}_pretrain_{source}_R{R}"] = round(time.perf_counter() - t0, 2)
                C.log(f"seed {s} R={R}: pretrained on {len(train)} {source} images in {timings[f's{s}_pretrain_{source}_R{R}']:.0f} s")
                nets.append((key, m, "raw", len(train), 0, raw))

                def run_ft(lr, si=si, source=source, raw=raw, n_train=len(train)):
                    net = C.trained_copy(raw)
                    return C.finetune(net, tune, val, cfg,
                                      C.ckpt_dir(cfg, f"ft_{source}_to_{target}_R{R}_n{n_train}_t{n_tune}_lr{lr:g}"),
                                      seed=s + 100 + si, lr=lr)

                t0 = time.perf_counter()
                tuned = tr.train("finetune", f"{m} fine-tuning", R, run_ft)
                timings[f"s{s}_finetune_{source}_to_{target}_R{R}"] = round(time.perf_counter() - t0, 2)
                C.log(f"seed {s} R={R}: fine-tuned the {source} network on {n_tune} {target} images")
                nets.append((key, m, "tuned", len(train), n_tune, tuned))
            if cfg.scratch:
                def run_scratch(lr):
                    net = C.new_cascade(cfg, "single", seed=s + 999)
                    return C.finetune(net, tune, val, cfg, C.ckpt_dir(cfg, f"scratch_{target}_R{R}_t{n_tune}_lr{lr:g}"),
                                      seed=s + 500, lr=lr)

                t0 = time.perf_counter()
                scratch = tr.train("scratch", "Scratch", R, run_scratch)
                timings[f"s{s}_scratch_{target}_R{R}"] = round(time.perf_counter() - t0, 2)
                C.log(f"seed {s} R={R}: trained from scratch on {n_tune} {target} images")
                nets.append((key, "Scratch", "-", 0, n_tune, scratch))
    # the evaluation step: the only place the test split is read
    rows: list[dict] = []
    with C.evaluation_phase():
        for target in cfg.targets:
            test_src = C.get_source(target, "test", cfg, cfg.n_test)
            for R in cfg.R_list:
                key = dict(table=table_id(target), test_domain=domain_label(target), coils="single", R=int(R))
                test = C.undersampled(test_src, R, cfg, "test", seed_offset=1000)
                rows += C.records_to_rows(C.zero_filled_records(test), **key, method="Zero-filled", stage="-",
                                          n_train=0, n_tune=0)
                if cfg.cs:
                    p = cs_params[(target, int(R))]
                    recs, t = C.cs_records(test, cfg, p["lam"], p["n_iter"])
                    timings[f"s{s}_cs_{target}_R{R}"] = round(t, 2)
                    rows += C.records_to_rows(recs, **key, method="CS", stage="-", n_train=0, n_tune=0)
                for k, m, stage, n_tr, n_tu, net in nets:
                    if k == key:
                        rows += C.records_to_rows(C.evaluate(net, test, cfg), **key, method=m, stage=stage,
                                                  n_train=n_tr, n_tune=n_tu)
    for r in rows:
        r["seed"] = s
    info = {"n_train_per_source": n_train_used,
            "cs": {f"{t}_R{R}": p for (t, R), p in cs_params.items()}, "lr": dict(tr.lr)}
    return rows, tr, info


def transfer_claims(cfg: TransferConfig, paper: pd.DataFrame | None = None) -> list[dict]:
    """The paper's headline claims for this study as paired differences (see
    :func:`mrtl.experiments.results.claim_table`), with the paper's value on the same R."""
    from .compare import paper_claim_value

    claims = []
    Rs = list(cfg.R_list)
    for target in cfg.targets:
        tab, dom = table_id(target), domain_label(target)
        inn, nat = f"{dom}-trained", "Natural-trained"
        T = dict(table=tab)
        others = [method_name(s) for s in cfg.sources if s != target]
        spec = []
        if inn in [method_name(s) for s in cfg.sources] and "natural" in cfg.sources and target != "natural":
            spec += [
                dict(id=f"{tab}_raw_gap", claim=f"raw: the in-domain ({dom}) network beats the natural-image network",
                     terms=[(1, dict(T, method=inn, stage="raw")), (-1, dict(T, method=nat, stage="raw"))]),
                dict(id=f"{tab}_tuned_gap", claim=f"fine-tuned: the in-domain ({dom}) network still beats the natural-image network",
                     terms=[(1, dict(T, method=inn, stage="tuned")), (-1, dict(T, method=nat, stage="tuned"))]),
                dict(id=f"{tab}_gap_closed", claim="fine-tuning closes part of the in-domain minus natural gap (raw gap minus tuned gap)",
                     terms=[(1, dict(T, method=inn, stage="raw")), (-1, dict(T, method=nat, stage="raw")),
                            (-1, dict(T, method=inn, stage="tuned")), (1, dict(T, method=nat, stage="tuned"))]),
            ]
        if "natural" in cfg.sources:
            spec.append(dict(id=f"{tab}_finetune_gain", claim="fine-tuning improves the natural-image network",
                             terms=[(1, dict(T, method=nat, stage="tuned")), (-1, dict(T, method=nat, stage="raw"))]))
        if cfg.cs and others:
            spec.append(dict(id=f"{tab}_transferred_minus_cs",
                             claim="the domain-transferred networks, fine-tuned, beat CS (mean over sources)",
                             terms=[(1, dict(T, method=others, stage="tuned")), (-1, dict(T, method="CS", stage="-"))]))
        if cfg.scratch and "natural" in cfg.sources:
            spec.append(dict(id=f"{tab}_natural_minus_scratch",
                             claim=f"the fine-tuned natural-image network beats a network trained from scratch on the same {cfg.n_tune} slices",
                             terms=[(1, dict(T, method=nat, stage="tuned")), (-1, dict(T, method="Scratch", stage="-"))]))
            if len(Rs) > 1:
                for R in Rs:
                    spec.append(dict(id=f"{tab}_natural_minus_scratch_R{R}", R=[R],
                                     claim=f"as above, at R = {R}",
                                     terms=[(1, dict(T, method=nat, stage="tuned")), (-1, dict(T, method="Scratch", stage="-"))]))
        for c in spec:
            c["paper"] = paper_claim_value(paper, c["terms"], c.get("R") or Rs) if paper is not None else None
        claims += spec
    return claims


def single_coil_transfer(cfg: TransferConfig | None = None) -> StudyResult:
    """Networks pretrained on each source domain, tested on each target domain, raw and fine-tuned.

    For every seed in ``cfg.seeds``, every target domain and every R in ``cfg.R_list``:

    1. a cascade (Eq. 10) is trained sequentially (Eq. 11) on ``n_train`` images of each
       source domain (natural, T1, T2), with masks from the training bank; each subnetwork runs
       at most ``cfg.epochs`` epochs, stopped early and restored to its best epoch by PSNR on
       the source's validation images;
    2. each is fine-tuned end to end on ``n_tune`` target images spread over the target's
       fine-tuning split, at most ``cfg.ft_epochs`` epochs with early stopping on the target's
       validation images (epoch 0, the raw network, is a candidate);
    3. a cascade is trained from scratch (random init) on the same ``n_tune`` images with the
       same budget and stopping rule (method ``Scratch``);
    4. CS's lambda and iterations are chosen on the target's validation images
       (``cfg.cs_lam_grid x cfg.cs_iter_grid``); learning rates are chosen on validation the
       first time each kind of training runs (pretraining, fine-tuning, from scratch), and
       reused (:class:`mrtl.experiments._common.Tracker`);
    5. only then are the test images read (with masks from the disjoint test bank) and every
       network (raw and tuned), CS and the zero-filled input are scored on them.

    Args:
        cfg: the configuration (default :meth:`TransferConfig.small`).

    Returns:
        :class:`StudyResult`: the long table (tables ``T1`` / ``S2``; mean over seeds and slices,
        std across slices, sd over seeds), per-image metrics (with ``seed``), paired differences
        against the in-domain tuned network with bootstrap intervals, and ``frames``: ``claims``
        (the headline claims with intervals and verdicts), ``training`` (chosen learning rates,
        best and stop epochs), ``curves`` (validation PSNR per epoch) and ``selections``.
        With ``cfg.output_dir`` set, everything is written there (checkpoints under
        ``checkpoints/``, which make a rerun resume).
    """
    cfg = TransferConfig.small() if cfg is None else cfg
    if not isinstance(cfg, TransferConfig):
        raise TypeError(f"cfg: expected a TransferConfig, got {type(cfg).__name__}")
    cfg.validate()
    t_start = time.perf_counter()
    rows: list[dict] = []
    timings: dict[str, float] = {}
    trackers: list[C.Tracker] = []
    per_seed: dict = {}
    with C.threads(cfg) as n_threads:
        for s in cfg.seeds:
            scfg = cfg.replace(seed=s)
            C.setup(scfg)
            t0 = time.perf_counter()
            r, tr, info = _one_seed(scfg, timings)
            rows += r
            trackers.append(tr)
            per_seed[str(s)] = dict(info, wall_time_s=round(time.perf_counter() - t0, 1))
    return _finish(cfg, rows, trackers, per_seed, timings, n_threads, t_start)


def _finish(cfg, rows, trackers, per_seed, timings, n_threads, t_start) -> StudyResult:
    from .compare import load_paper_table_or_none

    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image)
    paper = load_paper_table_or_none()
    claims = claim_table(per_image, transfer_claims(cfg, paper))
    frames = C.tracker_frames(trackers)
    frames["claims"] = claims
    extra = {"seeds": list(cfg.seeds), "num_threads": n_threads, "per_seed": per_seed, "timings_s": timings,
             "n_train_per_source": next(iter(per_seed.values()))["n_train_per_source"] if per_seed else {},
             "wall_time_s": round(time.perf_counter() - t_start, 1),
             "n_test": int(per_image.groupby(["table", "R", "method", "stage", "seed"]).size().max())}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict(), frames=frames)
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "transfer")
        import matplotlib.pyplot as plt

        from .plots import plot_curves, plot_transfer, save_figure

        fig = plot_transfer(table[table["method"] != "Zero-filled"], paper)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/transfer.png")
        plt.close(fig)
        fig = plot_curves(frames["curves"])
        result.paths["curves_figure"] = save_figure(fig, f"{cfg.output_dir}/transfer_curves.png")
        plt.close(fig)
    return result
