"""Study 3: multi-coil transfer against L1-SPIRiT (Table 2, Figs. 6-7)."""

from __future__ import annotations

import copy
import time

import pandas as pd
import torch

from . import _common as C
from .config import MulticoilConfig
from .results import StudyResult, method_name, paired_differences, summarize_records, write_results

__all__ = ["multicoil_transfer"]


def _with_spirit_operator(data, kernel_size: int):
    """Attach per-image SPIRiT image-space operators (Eq. 13; Tikhonov 1e-2) calibrated on the
    fully sampled centre of each image's undersampled k-space."""
    from ..recon import spirit_calibrate

    G = []
    for i in range(0, len(data), 16):
        ker = spirit_calibrate(data.kspace[i:i + 16], kernel_size=kernel_size, tikhonov=1e-2)
        G.append(torch.as_tensor(ker.image_operator(tuple(data.kspace.shape[-2:]))).to(torch.complex64))
    data.G_img = torch.cat(G)
    return data


def _mc_data(source, R, cfg, split, seed_offset, phase):
    data = C.undersampled(source, R, cfg, split, coils=cfg.coils, seed_offset=seed_offset, cc=False, phase=phase)
    return _with_spirit_operator(data, cfg.kernel_size)


def multicoil_transfer(cfg: MulticoilConfig | None = None) -> StudyResult:
    """Synthetic multi-coil natural images -> multi-coil T1, against a T1-trained network and L1-SPIRiT.

    For each R: a multi-coil cascade (separate real/imaginary subnetworks, CC and DC layers,
    Eq. 14) is trained sequentially on ``n_train`` complex natural images (random sinusoidal
    phase, simulated coil maps; Methods), evaluated on multi-coil T1 test images (raw), then
    fine-tuned end to end on each ``n_tune`` in ``n_tune_list`` T1 images. A cascade trained on
    ``n_train_target`` T1 images (and fine-tuned end to end on them), L1-SPIRiT (POCS, Eq. 3)
    and, if ``scratch``, a cascade trained from scratch on the ``n_tune`` images are evaluated
    on the same test images and masks.

    Data: with ``fastmri_dir`` the target is real multi-coil k-space (``mrtl.data.FastMRIFolder``),
    split by subject; otherwise the bundled T1 slices (``t1_dir`` or Colin27) are simulated as
    multi-coil with ``cfg.coils`` virtual coils (magnitude images with zero phase times coil maps).

    Args:
        cfg: the configuration (default :meth:`MulticoilConfig.small`).

    Returns:
        :class:`StudyResult` (table ``T2``; all Ntune values, the Table 2 rows are the largest).
    """
    cfg = MulticoilConfig.small() if cfg is None else cfg
    if not isinstance(cfg, MulticoilConfig):
        raise TypeError(f"cfg: expected a MulticoilConfig, got {type(cfg).__name__}")
    cfg.validate()
    C.setup(cfg)
    t_start = time.perf_counter()
    rows: list[dict] = []
    timings: dict[str, float] = {}
    if cfg.fastmri_dir is not None:
        target_src = _fastmri_splits(cfg)
    else:
        target_src = {s: (lambda s=s, n=None: C.get_source("t1", s, cfg, n)) for s in ("train", "tune", "test")}
    nat_src = C.get_source("natural", "train", cfg, cfg.n_train)
    n_tune_pos = [n for n in cfg.n_tune_list if n > 0]
    for R in cfg.R_list:
        key = dict(table="T2", test_domain="T1", coils="multi", R=int(R))
        test = _mc_data(target_src["test"](n=cfg.n_test), R, cfg, "test", 1000, "zero")
        rows += C.records_to_rows(C.zero_filled_records(test), **key, method="Zero-filled", stage="-", n_train=0, n_tune=0)
        # L1-SPIRiT on the same k-space and masks
        from ..recon import l1_spirit_pocs, spirit_calibrate

        t0 = time.perf_counter()
        ker = spirit_calibrate(test.kspace, kernel_size=cfg.kernel_size, tikhonov=1e-2)
        res = l1_spirit_pocs(test.kspace, test.mask, ker, lam=cfg.spirit_lam, n_iter=cfg.spirit_iter, maps=test.maps)
        timings[f"spirit_R{R}"] = round(time.perf_counter() - t0, 2)
        C.log(f"R={R}: L1-SPIRiT on {len(test)} test images in {timings[f'spirit_R{R}']:.0f} s")
        rows += C.records_to_rows(C.score(res.image, test), **key, method="SPIRiT", stage="-", n_train=0, n_tune=0)
        # in-domain: trained (and fine-tuned end to end) on T1 multi-coil images
        t1_train = _mc_data(target_src["train"](n=cfg.n_train_target), R, cfg, "train", 3000, "zero")
        m = C.new_cascade(cfg, "multi", seed=cfg.seed + 1)
        t = C.pretrain(m, t1_train, cfg, C.ckpt_dir(cfg, f"mc_pre_t1_R{R}_n{len(t1_train)}"), seed=cfg.seed)
        t += C.finetune(m, t1_train, cfg, C.ckpt_dir(cfg, f"mc_ft_t1_R{R}_n{len(t1_train)}"), seed=cfg.seed + 1)
        timings[f"t1_trained_R{R}"] = round(t, 2)
        C.log(f"R={R}: T1-trained multi-coil network ({len(t1_train)} images) in {t:.0f} s")
        rows += C.records_to_rows(C.evaluate(m, test, cfg), **key, method=method_name("t1"), stage="-",
                                  n_train=len(t1_train), n_tune=0)
        # natural-image network: raw, then fine-tuned on each Ntune
        nat = _mc_data(nat_src, R, cfg, "train", 3100, "sinusoidal")
        m = C.new_cascade(cfg, "multi", seed=cfg.seed + 11)
        timings[f"pretrain_natural_R{R}"] = round(
            C.pretrain(m, nat, cfg, C.ckpt_dir(cfg, f"mc_pre_natural_R{R}_n{len(nat)}"), seed=cfg.seed + 1), 2)
        if 0 in cfg.n_tune_list:
            rows += C.records_to_rows(C.evaluate(m, test, cfg), **key, method=method_name("natural"), stage="raw",
                                      n_train=len(nat), n_tune=0)
        for n in n_tune_pos:
            tune = _mc_data(target_src["tune"](n=n), R, cfg, "tune", 2000, "zero")
            net = copy.deepcopy(m)
            timings[f"finetune_natural_R{R}_t{n}"] = round(
                C.finetune(net, tune, cfg, C.ckpt_dir(cfg, f"mc_ft_natural_R{R}_t{n}"), seed=cfg.seed + 100 + n), 2)
            C.log(f"R={R}: fine-tuned the natural network on {n} T1 images")
            rows += C.records_to_rows(C.evaluate(net, test, cfg), **key, method=method_name("natural"), stage="tuned",
                                      n_train=len(nat), n_tune=len(tune))
            if cfg.scratch:
                s = C.new_cascade(cfg, "multi", seed=cfg.seed + 999)
                timings[f"scratch_R{R}_t{n}"] = round(
                    C.finetune(s, tune, cfg, C.ckpt_dir(cfg, f"mc_scratch_R{R}_t{n}"), seed=cfg.seed + 500 + n,
                               lr=cfg.lr_scratch), 2)
                rows += C.records_to_rows(C.evaluate(s, test, cfg), **key, method="Scratch", stage="-",
                                          n_train=0, n_tune=len(tune))
    per_image = pd.DataFrame(rows)
    table = summarize_records(per_image)
    paired = paired_differences(per_image, reference=("SPIRiT", "-"))
    extra = {"timings_s": timings, "wall_time_s": round(time.perf_counter() - t_start, 1)}
    result = StudyResult(table=table, per_image=per_image, paired=paired, extra=extra, config=cfg.to_dict())
    if cfg.output_dir is not None:
        write_results(result, cfg.output_dir, "multicoil")
        import matplotlib.pyplot as plt

        from .plots import plot_multicoil, save_figure

        fig = plot_multicoil(table)
        result.paths["figure"] = save_figure(fig, f"{cfg.output_dir}/multicoil.png")
        plt.close(fig)
    return result


def _fastmri_splits(cfg: MulticoilConfig) -> dict:
    """Subject-level train/tune/test splits of a fastMRI folder (``cfg.fastmri_dir``)."""
    from ..data import FastMRIFolder, split_by_subject

    src = FastMRIFolder(cfg.fastmri_dir, n_virtual=cfg.coils)
    subj = [str(s) for s in getattr(src, "item_subjects", None) or [src[i].subject for i in range(len(src))]]
    groups = split_by_subject(subj, C.USER_SPLIT_FRACTIONS, seed=cfg.seed)
    out = {}
    for name, gi in (("train", 0), ("tune", 1), ("test", 3)):
        keep = set(groups[gi])
        idx = [i for i, s in enumerate(subj) if s in keep]

        def make(n=None, idx=idx):
            return C.Subset(src, [idx[j] for j in C.spread(len(idx), n)])

        out[name] = make
    return out
