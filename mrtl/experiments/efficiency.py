"""Study 4 (beyond the paper): one data-efficiency curve per method.

Test PSNR against the number of target slices Ntune, at each R, for

- **Scratch**: a cascade trained from random weights on the Ntune slices (supervised);
- **Natural-trained, tuned**: the paper's recipe, a natural-image cascade fine-tuned end to end
  on the Ntune fully sampled slices (Dar et al. 2020); Ntune = 0 is the raw network;
- **SSDU**: the same pretrained cascade fine-tuned on the Ntune slices' *undersampled* k-space
  only (Yaman et al., MRM 2020: the acquired locations are split into a data-consistency set
  and a loss set; :func:`mrtl.selfsup.ssdu_finetune`), epochs and learning rate chosen on the
  self-supervised loss of the validation slices, never their fully sampled images;
- **PEFT**: parameter-efficient fine-tuning of one parameter subset (:mod:`mrtl.peft`);
- **ZS-SSL**: a network trained on each test scan alone (Yaman, Hosseini and Akçakaya, ICLR
  2022: a third, self-validation split stops it), from random weights and from the natural
  network (:func:`mrtl.selfsup.zsssl`); it uses no target training slices (Ntune = 0);
- **CS**: L1-wavelet CS with lambda and iterations chosen on validation (a flat line).

Every choice is made on the validation slices (learning rates from a small grid at one Ntune,
reused; epochs by early stopping), the test slices are read once, in the evaluation step
(:func:`mrtl.experiments._common.evaluation_phase`), and the claims are paired differences with
hierarchical-bootstrap intervals over seeds and slices (:func:`mrtl.experiments.results.claim_table`).
The compute each method used (training seconds) is recorded per seed, R and Ntune.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pandas as pd
import torch

from . import _common as C
from .efficiency_config import EfficiencyConfig
from .results import StudyResult, claim_table, domain_label, paired_differences, summarize_records, write_results

__all__ = ["data_efficiency", "efficiency_claims", "plot_efficiency", "compute_table", "method_labels", "verdict_summary",
           "TABLE_ID", "RAW", "TUNED", "SCRATCH", "SSDU", "ZS_RANDOM", "ZS_NATURAL"]

#: The table id of this study's rows (not one of the paper's tables).
TABLE_ID = "EFF"
NAT = "Natural-trained"
RAW = (NAT, "raw")
TUNED = (NAT, "tuned")
SCRATCH = ("Scratch", "-")
SSDU = ("SSDU", "tuned")
ZS_RANDOM = ("ZS-SSL (random init)", "-")
ZS_NATURAL = ("ZS-SSL (natural init)", "-")
_CS = ("CS", "-")


def _peft(cfg: EfficiencyConfig) -> tuple[str, str]:
    return (f"PEFT ({cfg.peft_which})", "tuned")


def method_labels(cfg: EfficiencyConfig) -> dict[tuple[str, str], str]:
    """(method, stage) of the results -> the label of the figures and tables."""
    return {RAW: "natural, raw", TUNED: "natural + supervised fine-tuning (the paper)",
            SSDU: "natural + SSDU (no reference)", _peft(cfg): f"natural + PEFT ({cfg.peft_which})",
            SCRATCH: "scratch (supervised)", ZS_RANDOM: "ZS-SSL, random init (per scan)",
            ZS_NATURAL: "ZS-SSL, natural init (per scan)", _CS: "CS (validation-tuned)",
            ("Zero-filled", "-"): "zero-filled"}


# ------------------------------------------------------------------------------ data
class _Pool(torch.utils.data.Dataset):
    """Target slices for fine-tuning: the tune split, then the train split (no network of the
    study is trained on the target's train split otherwise, so it can serve Ntune > len(tune))."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.domain = getattr(self.parts[0], "domain", None)

    def __len__(self) -> int:
        return sum(len(p) for p in self.parts)

    def __getitem__(self, i):
        for p in self.parts:
            if i < len(p):
                return p[i]
            i -= len(p)
        raise IndexError(i)


def _tune_source(cfg: EfficiencyConfig, n: int):
    """``n`` target slices: spread over the tune split when it has enough, else all of it plus
    slices spread over the train split."""
    tune = C.get_source(cfg.target, "tune", cfg, None)
    if n <= len(tune):
        return C.get_source(cfg.target, "tune", cfg, n)
    train = C.get_source(cfg.target, "train", cfg, None)
    if n > len(tune) + len(train):
        raise ValueError(f"n_tune_list: {n} target slices asked for, the {cfg.target} tune and train splits hold "
                         f"{len(tune)} + {len(train)}")
    return _Pool([tune, C.Subset(train, C.spread(len(train), n - len(tune)))])


def _without_reference(data):
    """``data`` with its fully sampled images replaced by NaN: what the self-supervised methods
    get, so that any read of the reference would poison the loss instead of passing silently."""
    return dataclasses.replace(data, reference=torch.full_like(data.reference, float("nan")))


# ------------------------------------------------------------------------ networks
# Settings that change no end-to-end training of the study (ZS-SSL and CS run without checkpoints;
# which methods run does not change any one network); SSDU's and PEFT's own settings go into their
# checkpoint names. A rerun with other such settings reuses the finished networks.
_CKPT_NEUTRAL = ("methods", "zs_n_test", "zs_max_epochs", "zs_patience", "zs_n_splits", "zs_val_frac", "zs_lr_grid",
                 "zs_n_val", "cs_lam_grid", "cs_iter_grid", "ssdu_rho", "ssdu_n_splits", "ssdu_kind", "peft_which")


def _ckpt(cfg: EfficiencyConfig, name: str):
    """``<output_dir>/checkpoints/<fingerprint>/<name>`` (as :func:`mrtl.experiments._common.ckpt_dir`,
    with a fingerprint of the settings that change the trained networks), or None."""
    import hashlib
    from pathlib import Path

    if cfg.output_dir is None:
        return None
    keep = {k: v for k, v in cfg.to_dict().items() if k not in C._NEUTRAL + _CKPT_NEUTRAL}
    fp = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(cfg.output_dir) / "checkpoints" / fp / name


def _shipped(R: int, cfg: EfficiencyConfig):
    """The repository's natural-image checkpoint for ``R`` (:mod:`mrtl.selfsup`); its
    architecture must be the config's (the from-scratch cascade and ZS-SSL's random init are
    built from the config, so every method has the same network)."""
    from .. import selfsup
    from ..train import load_model

    model = load_model(selfsup.shipped_checkpoint(R))
    arch = getattr(model, "arch", {})
    want = dict(n_subnets=cfg.n_subnets, width=cfg.width, depth=cfg.depth)
    got = {k: arch.get(k) for k in want}
    if got != want:
        raise ValueError(f"pretrained: the shipped R={R} checkpoint is {got}, the config {want}; set "
                         "n_subnets/width/depth to the checkpoint's or use pretrained='train'")
    return model


def _timed(run, ckpt_of, spent: list):
    """``run(lr)`` with its training seconds appended to ``spent``. The seconds are kept beside
    the run's checkpoint (``efficiency_seconds.json``), so a rerun that loads a finished network
    reports the training it took, not the load (a run interrupted and resumed reports only the
    part after the resume)."""
    from ..utils import atomic_write_text

    def wrapped(lr):
        t0 = time.perf_counter()
        out = run(lr)
        secs = time.perf_counter() - t0
        d = ckpt_of(lr)
        if d is not None and d.is_dir():
            f = d / "efficiency_seconds.json"
            if f.exists():
                secs = float(json.loads(f.read_text())["seconds"])
            else:
                atomic_write_text(f, json.dumps({"seconds": round(secs, 3)}))
        spent.append(secs)
        return out

    return wrapped


def _stage_from_summary(summary: dict | None, history=None) -> list[dict]:
    return [dict(summary, stage=0)] if summary else []


def _ssdu_stage(history, max_epochs, patience) -> tuple[list[dict], float, list[dict]]:
    """A history of :mod:`mrtl.selfsup` / :mod:`mrtl.peft` (rows ``epoch, val_loss``) as a
    training summary: the kept and stop epoch by the validation loss (for SSDU the self-supervised
    loss: the validation images are not read), the score (minus the best validation loss) and the
    curve rows."""
    rows = history if isinstance(history, list) else history.get("history", [])
    ep = [int(r["epoch"]) for r in rows if r.get("val_loss") is not None]
    vl = [float(r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    if not ep:
        return [], float("nan"), []
    best = int(np.nanargmin(vl))
    info = history if isinstance(history, dict) else {}
    best_epoch = info.get("best_epoch", ep[best])
    best_epoch = ep[best] if best_epoch is None else int(best_epoch)
    st = dict(stage=0, epochs=[], val_psnr=[], best_epoch=best_epoch,
              stopped_epoch=int(info.get("stopped_epoch", max(ep))), max_epochs=max_epochs, patience=patience)
    curve = [dict(epoch=e, val_loss=v) for e, v in zip(ep, vl)]
    return [st], -vl[best], curve


def _one_seed(cfg: EfficiencyConfig, timings: dict):
    """Train and choose everything on tune/val, then evaluate once on the test split."""
    from .. import metrics

    s = cfg.seed
    tr = C.Tracker(cfg)
    nets: list[tuple[dict, tuple[str, str], int, object]] = []
    cs_params: dict = {}
    compute: list[dict] = []
    ss_curves: list[dict] = []
    pre_nets: dict = {}
    zs_lr: dict = {}
    methods = set(cfg.methods)
    n_pos = [n for n in cfg.n_tune_list if n > 0]
    # the learning rate of each method is chosen at lr_select_n_tune (or the largest Ntune below it)
    first = max([n for n in n_pos if n <= cfg.lr_select_n_tune] or n_pos[:1] or [0])
    order = ([first] if first in n_pos else []) + [n for n in n_pos if n != first]
    val_src = C.get_source(cfg.target, "val", cfg, cfg.n_val)
    dom = domain_label(cfg.target)

    spent: list[float] = []  # seconds of the training runs of the current tr.train call (see _timed)

    def note(method, R, n, t0, search):
        secs = round(sum(spent) if spent else time.perf_counter() - t0, 2)
        spent.clear()
        compute.append(dict(seed=s, R=int(R), method=method[0], stage=method[1], n_tune=int(n), seconds=secs,
                            includes_lr_search=bool(search)))
        return secs

    for R in cfg.R_list:
        key = dict(table=TABLE_ID, test_domain=dom, coils="single", R=int(R))
        val = C.undersampled(val_src, R, cfg, "val", seed_offset=4000)
        val_ss = _without_reference(val)
        # the pretrained natural-image network
        t0 = time.perf_counter()
        if cfg.pretrained == "shipped":
            pre = _shipped(R, cfg)
        else:
            src = C.get_source("natural", "train", cfg, cfg.n_train)
            sval = C.undersampled(C.get_source("natural", "val", cfg, cfg.n_val), R, cfg, "val", seed_offset=4100)

            def run_pre(lr, src=src, sval=sval):
                m = C.new_cascade(cfg, "single", seed=s + 1)
                return C.pretrain(m, C.undersampled(src, R, cfg, "train", seed_offset=3000), sval, cfg,
                                  _ckpt(cfg, f"pre_natural_R{R}_n{len(src)}_lr{lr:g}"), seed=s, lr=lr)

            pre = tr.train("pretrain", f"{NAT} pretraining", R, _timed(
                run_pre, lambda lr, n=len(src): _ckpt(cfg, f"pre_natural_R{R}_n{n}_lr{lr:g}"), spent))
        note(("pretraining", cfg.pretrained), R, 0, t0, False)
        pre_nets[R] = pre
        nets.append((key, RAW, 0, pre))
        if "cs" in methods:
            t0 = time.perf_counter()
            cs_params[int(R)] = C.select_cs(val, cfg, tr, R)
            note(("CS parameter search (validation)", "-"), R, 0, t0, True)
        for n in order:
            td = C.undersampled(_tune_source(cfg, n), R, cfg, "tune", seed_offset=2000)
            ncfg = cfg.replace(ft_epochs=cfg.max_epochs(n))
            search = n == first and R == cfg.R_list[0]
            def train_method(kind, method, label, name, run):
                """``run(lr, out_dir)`` trained (its learning rate chosen on validation the first
                time), timed and checkpointed under ``<name>_lr<lr>``; the network joins ``nets``."""
                ckpt = lambda lr: _ckpt(cfg, f"{name}_lr{lr:g}")  # noqa: E731
                t0 = time.perf_counter()
                net = tr.train(kind, label, R, _timed(lambda lr: run(lr, ckpt(lr)), ckpt, spent))
                nets.append((key, method, len(td), net))
                note(method, R, n, t0, search)

            if "scratch" in methods:
                def run_scratch(lr, out_dir):
                    return C.finetune(C.new_cascade(cfg, "single", seed=s + 999), td, val, ncfg, out_dir,
                                      seed=s + 500 + n, lr=lr)

                train_method("scratch", SCRATCH, f"Scratch Ntune {n}", f"scratch_R{R}_t{n}", run_scratch)
            if "finetune" in methods:
                def run_ft(lr, out_dir):
                    return C.finetune(C.trained_copy(pre), td, val, ncfg, out_dir, seed=s + 100 + n, lr=lr)

                train_method("finetune", TUNED, f"{NAT} fine-tuning Ntune {n}", f"ft_R{R}_t{n}", run_ft)
            if "peft" in methods:
                def run_peft(lr, out_dir):
                    from ..peft import finetune_peft

                    C._no_training("peft")
                    net, hist = finetune_peft(
                        C.trained_copy(pre), td, cfg.peft_which, val=val, epochs=ncfg.ft_epochs, lr=lr,
                        batch_size=min(cfg.ft_batch_size, len(td)), patience=cfg.patience, seed=s + 300 + n,
                        out_dir=out_dir, resume=cfg.output_dir is not None, device=cfg.device, progress_bar=False)
                    # its epoch is chosen by the validation loss (mrtl.peft); the learning rate, as
                    # every other method's, by the validation PSNR of the network kept
                    stages, _, _ = _ssdu_stage(hist, ncfg.ft_epochs, cfg.patience)
                    score = float(np.mean([r["psnr"] for r in C.evaluate(net, val, cfg)]))
                    return net, stages, score

                train_method("peft", _peft(cfg), f"PEFT ({cfg.peft_which}) Ntune {n}",
                             f"peft_{cfg.peft_which}_R{R}_t{n}", run_peft)
            if "ssdu" in methods:
                td_ss = _without_reference(td)

                def run_ssdu(lr, out_dir):
                    from ..selfsup import ssdu_finetune

                    C._no_training("ssdu")
                    net, hist = ssdu_finetune(
                        C.trained_copy(pre), td_ss, rho=cfg.ssdu_rho, n_splits=cfg.ssdu_n_splits, kind=cfg.ssdu_kind,
                        epochs=ncfg.ft_epochs, lr=lr, batch_size=min(cfg.ft_batch_size, len(td_ss)), val=val_ss,
                        patience=cfg.patience, seed=s + 700 + n, out_dir=out_dir, resume=cfg.output_dir is not None,
                        device=cfg.device, progress_bar=False)
                    stages, score, curve = _ssdu_stage(hist, ncfg.ft_epochs, cfg.patience)
                    for row in curve:
                        ss_curves.append(dict(row, seed=s, R=int(R), network=f"SSDU Ntune {n}", lr=float(lr)))
                    return net, stages, score

                train_method("ssdu", SSDU, f"SSDU Ntune {n}",
                             f"ssdu_{cfg.ssdu_kind}_rho{cfg.ssdu_rho:g}_k{cfg.ssdu_n_splits}_R{R}_t{n}", run_ssdu)
            C.log(f"seed {s} R={R}: Ntune {n} trained")
        # ZS-SSL's learning rate, per init, on validation slices (by PSNR against their references,
        # the same rule as every supervised choice; the test scans are never scored before the end)
        if "zsssl" in methods:
            from ..selfsup import zsssl

            vidx = C.spread(len(val), cfg.zs_n_val)
            for init, label in (("random", ZS_RANDOM), ("natural", ZS_NATURAL)):
                kind = f"zsssl_{init}"
                if kind in zs_lr:
                    continue
                tried = []
                for lr in cfg.zs_lr_grid:
                    ps = []
                    for i in vidx:
                        img, _ = zsssl(val.kspace[i], val.mask[i], init=None if init == "random" else pre,
                                       model_kwargs=_model_kwargs(cfg), rho=cfg.ssdu_rho, val_frac=cfg.zs_val_frac,
                                       n_splits=cfg.zs_n_splits, max_epochs=cfg.zs_max_epochs,
                                       patience=cfg.zs_patience, lr=lr, seed=s + 800 + i, device=cfg.device,
                                       progress_bar=False)
                        ps.append(float(metrics.psnr(_batched(img), ref=val.reference[i:i + 1])[0]))
                    tried.append((float(np.mean(ps)), lr))
                best = max(range(len(tried)), key=lambda k: (tried[k][0], -k))
                zs_lr[kind] = tried[best][1]
                tr.selections.append(dict(seed=s, R=int(R), what=f"lr {kind}", network=label[0],
                                          grid=json.dumps([t[1] for t in tried]),
                                          val_psnr=json.dumps([round(t[0], 4) for t in tried]),
                                          chosen=json.dumps(tried[best][1])))
    # ------------------------------------------------ the evaluation step: the test split, once
    rows: list[dict] = []
    zs_info: list[dict] = []
    with C.evaluation_phase():
        test_src = C.get_source(cfg.target, "test", cfg, cfg.n_test)
        for R in cfg.R_list:
            key = dict(table=TABLE_ID, test_domain=dom, coils="single", R=int(R))
            test = C.undersampled(test_src, R, cfg, "test", seed_offset=1000)
            rows += C.records_to_rows(C.zero_filled_records(test), **key, method="Zero-filled", stage="-",
                                      n_train=0, n_tune=0)
            if "cs" in methods:
                p = cs_params[int(R)]
                recs, t = C.cs_records(test, cfg, p["lam"], p["n_iter"])
                timings[f"s{s}_cs_R{R}"] = round(t, 2)
                compute.append(dict(seed=s, R=int(R), method="CS", stage="-", n_tune=0, seconds=round(t, 2),
                                    includes_lr_search=False, per="test set (reconstruction)"))
                rows += C.records_to_rows(recs, **key, method="CS", stage="-", n_train=0, n_tune=0)
            for k, (m, stage), n_tu, net in nets:
                if k == key:
                    rows += C.records_to_rows(C.evaluate(net, test, cfg), **key, method=m, stage=stage,
                                              n_train=0, n_tune=n_tu)
            if "zsssl" in methods:
                # ZS-SSL trains on each test scan's own undersampled k-space (that is the method);
                # it is given k-space and mask only, and is scored against the reference afterwards
                from ..selfsup import zsssl

                for i in C.spread(len(test), cfg.zs_n_test):
                    for init, (m, stage) in (("random", ZS_RANDOM), ("natural", ZS_NATURAL)):
                        t0 = time.perf_counter()
                        img, info = zsssl(test.kspace[i], test.mask[i], init=None if init == "random" else pre_nets[R],
                                          model_kwargs=_model_kwargs(cfg), rho=cfg.ssdu_rho,
                                          val_frac=cfg.zs_val_frac, n_splits=cfg.zs_n_splits,
                                          max_epochs=cfg.zs_max_epochs, patience=cfg.zs_patience,
                                          lr=zs_lr[f"zsssl_{init}"], seed=s + 900 + i, device=cfg.device,
                                          progress_bar=False)
                        secs = time.perf_counter() - t0
                        ref = test.reference[i:i + 1]
                        img = _batched(img)
                        meta = test.meta[i] if test.meta else {}
                        rows.append(dict(key, method=m, stage=stage, n_train=0, n_tune=0, image=int(i),
                                         subject=meta.get("subject"), psnr=float(metrics.psnr(img, ref=ref)[0]),
                                         ssim=float(metrics.ssim(img, ref=ref)[0])))
                        compute.append(dict(seed=s, R=int(R), method=m, stage=stage, n_tune=0,
                                            seconds=round(secs, 2), includes_lr_search=False, per="one test scan"))
                        zs_info.append(dict(seed=s, R=int(R), method=m, image=int(i), seconds=round(secs, 2),
                                            lr=zs_lr[f"zsssl_{init}"], **_zs_summary(info)))
    for r in rows:
        r["seed"] = s
    if "ssdu" in tr.lr:  # the curves at the learning rate chosen on the self-supervised validation loss
        ss_curves = [c for c in ss_curves if c["lr"] == tr.lr["ssdu"]]
    return rows, tr, dict(lr=dict(tr.lr, **zs_lr), cs={str(R): p for R, p in cs_params.items()}), compute, \
        ss_curves, zs_info


def _model_kwargs(cfg: EfficiencyConfig) -> dict:
    return dict(n_subnets=cfg.n_subnets, width=cfg.width, depth=cfg.depth)


def _batched(img) -> torch.Tensor:
    img = torch.as_tensor(img).detach().cpu()
    return img[None] if img.ndim == 2 else img


def _zs_summary(info: dict) -> dict:
    """The JSON-friendly part of ZS-SSL's ``info``: stop and kept epoch, best self-validation loss."""
    out = {}
    for k in ("stop_epoch", "best_epoch", "stopped_epoch", "epochs_run", "best_val_loss"):
        if k in info and isinstance(info[k], (int, float)):
            out[k] = info[k]
    return out


# --------------------------------------------------------------------------- claims
def efficiency_claims(cfg: EfficiencyConfig, per_image: pd.DataFrame) -> list[dict]:
    """The study's claims as paired differences (averaged over R): per Ntune, each fine-tuning
    method against the raw network, against each other and against scratch; ZS-SSL against the
    raw network, CS and each other; the largest-Ntune networks against CS."""
    have = set(zip(per_image["method"], per_image["stage"]))
    T = dict(table=TABLE_ID)

    def sel(ms, n=None):
        d = dict(T, method=ms[0], stage=ms[1])
        if n is not None:
            d["n_tune"] = n
        return d

    peft = _peft(cfg)
    claims = []
    for n in [n for n in cfg.n_tune_list if n > 0]:
        pairs = [("ssdu_minus_raw", SSDU, RAW, f"SSDU fine-tuning on {n} undersampled slices (no reference) improves the raw natural network"),
                 ("supervised_minus_ssdu", TUNED, SSDU, f"supervised fine-tuning on {n} fully sampled slices beats SSDU on the same slices undersampled"),
                 ("supervised_minus_scratch", TUNED, SCRATCH, f"natural pretraining + supervised fine-tuning beats supervised training from scratch on {n} slices"),
                 ("ssdu_minus_scratch", SSDU, SCRATCH, f"natural pretraining + SSDU (no reference) beats supervised training from scratch on {n} slices"),
                 ("supervised_minus_peft", TUNED, peft, f"fine-tuning every weight beats PEFT ({cfg.peft_which}) on {n} slices")]
        for cid, a, b, text in pairs:
            if a in have and b in have:
                claims.append(dict(id=f"{cid}_ntune{n}", claim=text, n_tune=n,
                                   terms=[(1, sel(a, n if a != RAW else None)), (-1, sel(b, n if b != RAW else None))],
                                   paper=None))
    zs = [("zs_natural_minus_random", ZS_NATURAL, ZS_RANDOM, "ZS-SSL from the natural network beats ZS-SSL from random weights"),
          ("zs_natural_minus_raw", ZS_NATURAL, RAW, "ZS-SSL from the natural network improves the raw natural network (on each scan alone)"),
          ("zs_natural_minus_cs", ZS_NATURAL, _CS, "ZS-SSL from the natural network beats CS"),
          ("zs_random_minus_cs", ZS_RANDOM, _CS, "ZS-SSL from random weights beats CS"),
          ("raw_minus_cs", RAW, _CS, "the raw natural network beats CS")]
    n_max = max(cfg.n_tune_list)
    if n_max > 0:
        zs += [("supervised_max_minus_cs", (TUNED, n_max), _CS, f"supervised fine-tuning on {n_max} slices beats CS"),
               ("ssdu_max_minus_cs", (SSDU, n_max), _CS, f"SSDU on {n_max} slices beats CS"),
               ("ssdu_max_minus_zs_natural", (SSDU, n_max), ZS_NATURAL,
                f"SSDU on {n_max} slices beats ZS-SSL from the natural network (on the ZS-SSL scans)")]
    for cid, a, b, text in zs:
        an = a[1] if isinstance(a[1], int) else None
        a_ms = a[0] if an is not None else a
        if a_ms in have and b in have:
            claims.append(dict(id=cid, claim=text, n_tune=an if an is not None else 0,
                               terms=[(1, sel(a_ms, an)), (-1, sel(b))], paper=None))
    return claims


def _claims(cfg: EfficiencyConfig, per_image: pd.DataFrame) -> pd.DataFrame:
    spec = efficiency_claims(cfg, per_image)
    out = claim_table(per_image, spec)
    out.insert(2, "n_tune", [c["n_tune"] for c in spec])
    return out


_COMPARISONS = {
    "ssdu_minus_raw": "SSDU (no reference) vs the raw natural network",
    "supervised_minus_ssdu": "supervised fine-tuning vs SSDU on the same slices",
    "supervised_minus_scratch": "natural pretraining + supervised fine-tuning vs supervised training from scratch",
    "ssdu_minus_scratch": "natural pretraining + SSDU (no reference) vs supervised training from scratch",
    "supervised_minus_peft": "fine-tuning every weight vs PEFT",
}


def verdict_summary(claims: pd.DataFrame) -> str:
    """The claims as plain sentences (Markdown): for each comparison, at which Ntune the first
    method wins (interval above zero), ties (interval contains zero) or loses (interval below
    zero), with the estimates and intervals; then the claims without Ntune. Every number comes
    from ``claims`` (the study's ``efficiency_claims.csv``)."""
    if claims is None or len(claims) == 0:
        return "No claims were computed."
    word = {"holds": "wins", "within noise": "ties", "does not hold": "loses"}
    lines = []
    c = claims.assign(base=claims["id"].str.replace(r"_ntune\d+$", "", regex=True))
    for base, text in _COMPARISONS.items():
        g = c[c["base"] == base].sort_values("n_tune")
        if g.empty:
            continue
        parts = []
        for v in ("holds", "within noise", "does not hold"):
            h = g[g["verdict"] == v]
            if len(h):
                cells = ", ".join(f"{int(r.n_tune)} ({r.estimate:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] dB)"
                                  for r in h.itertuples())
                parts.append(f"**{word[v]}** at Ntune {cells}")
        lines.append(f"- {text}: the former " + "; ".join(parts) + ".")
    rest = c[~c["base"].isin(list(_COMPARISONS))]
    for r in rest.itertuples():
        lines.append(f"- {r.claim}: {r.estimate:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] dB, **{r.verdict}** "
                     f"(over {int(r.n_images)} test slices and {int(r.n_seeds)} seeds).")
    return "\n".join(lines)


# -------------------------------------------------------------------------- tables
def compute_table(compute: pd.DataFrame | list) -> pd.DataFrame:
    """Training seconds per method and Ntune: mean over seeds and R of each run (and for ZS-SSL
    and CS, per test scan / per test set), with the runs that included the learning-rate search."""
    c = pd.DataFrame(compute)
    if c.empty:
        return c
    c = c.assign(method=c["method"].replace({"pretraining": "natural pretraining (shared)"}))
    g = c.groupby(["method", "stage", "n_tune"], sort=False)
    out = g.agg(seconds_mean=("seconds", "mean"), seconds_sd=("seconds", "std"), runs=("seconds", "size")).reset_index()
    return out.round(2)


def plot_efficiency(table: pd.DataFrame, cfg: EfficiencyConfig | dict | None = None):
    """PSNR against Ntune, one panel per R: one curve per method (mean over seeds, bars = sd over
    seeds); the fine-tuned curves start at the raw network (Ntune = 0), ZS-SSL is drawn at 0, CS
    as a horizontal line."""
    import matplotlib.pyplot as plt

    which = (cfg.get("peft_which") if isinstance(cfg, dict) else getattr(cfg, "peft_which", None)) or "last"
    labels = method_labels(EfficiencyConfig(peft_which=which, scale="small"))
    t = table[table["table"] == TABLE_ID] if "table" in table.columns else table
    Rs = sorted(set(t["R"]))
    fig, axes = plt.subplots(1, len(Rs), figsize=(min(5.0 * len(Rs), 10.0), 4.6), squeeze=False)
    sd = "psnr_sd_seeds" if "psnr_sd_seeds" in t.columns else "psnr_std"
    colors = {TUNED: "tab:orange", SSDU: "tab:green", (f"PEFT ({which})", "tuned"): "tab:purple",
              SCRATCH: "tab:gray", ZS_RANDOM: "tab:cyan", ZS_NATURAL: "tab:blue"}
    for ax, R in zip(axes[0], Rs):
        g = t[t["R"] == R]
        raw = g[(g["method"] == RAW[0]) & (g["stage"] == RAW[1])]
        pos = sorted(set(g.loc[g["n_tune"] > 0, "n_tune"]))
        xmap = {n: i + 1 for i, n in enumerate(pos)}  # evenly spaced Ntune, 0 at the left
        for ms, col in colors.items():
            rows = g[(g["method"] == ms[0]) & (g["stage"] == ms[1])].sort_values("n_tune")
            if rows.empty:
                continue
            if ms in (ZS_RANDOM, ZS_NATURAL):
                off = -0.08 if ms == ZS_RANDOM else 0.08
                n_scans = int(rows["n"].iloc[0]) if "n" in rows.columns else None
                ax.errorbar([off], rows["psnr_mean"], yerr=rows[sd].fillna(0), fmt="D", color=col, capsize=3,
                            label=labels[ms] + (f", {n_scans} test scans" if n_scans else ""))
                continue
            if ms != SCRATCH and not raw.empty:
                rows = pd.concat([raw, rows])
            x = [xmap.get(int(n), 0) for n in rows["n_tune"]]
            ax.errorbar(x, rows["psnr_mean"], yerr=rows[sd].fillna(0), marker="o", ms=4, color=col, capsize=2,
                        label=labels.get(ms, ms[0]))
        cs = g[g["method"] == "CS"]
        if not cs.empty:
            ax.axhline(float(cs["psnr_mean"].iloc[0]), color="tab:red", ls="--", label=labels[_CS])
        ax.set_xticks([0] + [xmap[n] for n in pos], ["0\n(raw)"] + [str(n) for n in pos])
        ax.set_xlabel("target slices $N_{tune}$")
        ax.set_ylabel("test PSNR (dB)")
        ax.set_title(f"R = {R}")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


# ---------------------------------------------------------------------------- study
def data_efficiency(cfg: EfficiencyConfig | None = None) -> StudyResult:
    """Test PSNR against Ntune for every method (see the module docstring), with claims.

    For every seed and R: the natural-image network (shipped or pretrained here) is scored raw
    and fine-tuned on each Ntune target slices with the supervised loss (the paper), with SSDU
    (undersampled k-space only) and with PEFT; a cascade is trained from scratch on the same
    slices; all with the same epoch budget (:meth:`EfficiencyConfig.max_epochs`) and early
    stopping rule, learning rates chosen on validation at ``lr_select_n_tune`` slices and reused.
    CS's parameters are chosen on validation. Then, in the evaluation step, every network and CS
    are scored on the test slices, and ZS-SSL (random and natural init) is run on each of the
    first ``zs_n_test`` test scans from its undersampled k-space alone.

    Args:
        cfg: the configuration (default :meth:`EfficiencyConfig.small`).

    Returns:
        :class:`StudyResult` with the long table (table id ``EFF``), per-image metrics, paired
        differences against CS, and ``frames``: ``claims``, ``training``, ``curves``,
        ``selections``; ``extra`` holds ``compute`` (seconds per run), ``compute_table``,
        ``ssdu_curves`` (self-supervised validation loss per epoch), ``zsssl`` (per scan: stop
        epoch, seconds), ``lr`` and ``cs`` (choices per seed), ``seeds``, ``wall_time_s``.
    """
    cfg = EfficiencyConfig.small() if cfg is None else cfg
    if not isinstance(cfg, EfficiencyConfig):
        raise TypeError(f"cfg: expected an EfficiencyConfig, got {type(cfg).__name__}")
    cfg.validate()
    t_start = time.perf_counter()
    rows, trackers, compute, ss_curves, zs_info = [], [], [], [], []
    timings: dict = {}
    per_seed: dict = {}
    with C.threads(cfg) as n_threads:
        for s in cfg.seeds:
            scfg = cfg.replace(seed=s)
            C.setup(scfg)
            t0 = time.perf_counter()
            r, tr, info, comp, ssc, zsi = _one_seed(scfg, timings)
            rows += r
            trackers.append(tr)
            compute += comp
            ss_curves += ssc
            zs_info += zsi
            per_seed[str(s)] = dict(info, wall_time_s=round(time.perf_counter() - t0, 1))
    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image, reference=_CS) if "cs" in cfg.methods else pd.DataFrame()
    frames = C.tracker_frames(trackers)
    frames["claims"] = _claims(cfg, per_image)
    extra = {"seeds": list(cfg.seeds), "num_threads": n_threads, "per_seed": per_seed, "timings_s": timings,
             "compute": compute, "compute_table": compute_table(compute).to_dict(orient="records"),
             "ssdu_curves": ss_curves, "zsssl": zs_info, "labels": {f"{m}|{s}": v for (m, s), v in method_labels(cfg).items()},
             "n_test": int(per_image[per_image["method"] == "Zero-filled"].groupby(["R", "seed"]).size().max()),
             "wall_time_s": round(time.perf_counter() - t_start, 1)}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict(),
                         frames=frames)
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "efficiency")
        import matplotlib.pyplot as plt

        from .plots import plot_curves, save_figure

        fig = plot_efficiency(table, cfg)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/efficiency.png")
        plt.close(fig)
        if len(frames["curves"]):  # the networks of the largest Ntune (one line per seed)
            cur = frames["curves"]
            cur = cur[cur["network"].str.endswith(f"Ntune {max(cfg.n_tune_list)}")]
            fig = plot_curves(cur, kinds=("finetune", "scratch", "peft"))
            result.paths["curves_figure"] = save_figure(fig, f"{cfg.output_dir}/efficiency_curves.png")
            plt.close(fig)
    return result
