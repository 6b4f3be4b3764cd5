"""Shared plumbing of the studies: sources and splits, datasets, training, evaluation, CS.

Everything here calls the public APIs of the lower layers (``mrtl.data``, ``mrtl.masks``,
``mrtl.train``, ``mrtl.recon``, ``mrtl.metrics``).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .config import StudyConfig

# subject-level split of a user folder (no predefined splits): train / tune / val / test
USER_SPLIT_FRACTIONS = (0.7, 0.1, 0.05, 0.15)
_SPLIT_INDEX = {"train": 0, "tune": 1, "val": 2, "test": 3}

# The test split is read only inside ``evaluation_phase()``: every choice (epochs, learning
# rates, CS/L1-SPIRiT parameters) is made before, on the validation split.
_EVALUATING = False


@contextlib.contextmanager
def evaluation_phase():
    """The final evaluation step of a study: the only place where the test split may be read.

    Inside it, :func:`get_source` serves ``split="test"`` and training raises; outside it,
    reading the test split raises ``RuntimeError``.
    """
    global _EVALUATING
    prev, _EVALUATING = _EVALUATING, True
    try:
        yield
    finally:
        _EVALUATING = prev


def evaluating() -> bool:
    """True inside :func:`evaluation_phase`."""
    return _EVALUATING


def _no_test(split: str) -> None:
    if split == "test" and not _EVALUATING:
        raise RuntimeError("split: the test split is read only by the final evaluation step "
                           "(mrtl.experiments._common.evaluation_phase); choose parameters on 'val'")


def _no_training(what: str) -> None:
    if _EVALUATING:
        raise RuntimeError(f"{what}: no training inside the evaluation step (the test split is loaded)")


class Subset(torch.utils.data.Dataset):
    """A view of ``source`` at ``indices`` (keeps ``domain`` and the subjects it covers)."""

    def __init__(self, source, indices: Sequence[int]):
        self.source = source
        self.indices = [int(i) for i in indices]
        self.domain = getattr(source, "domain", None)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.source[self.indices[i]]

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(str(self.source[j].subject) for j in self.indices))


def spread(n_avail: int, n: int | None) -> list[int]:
    """``n`` indices spread evenly over ``range(n_avail)`` (all of them if ``n`` is None or larger).

    Evenly spread subsets keep fine-tuning slices spread over the training range (a contiguous
    slab next to the test slab would bias the comparison)."""
    if n is None or n >= n_avail:
        return list(range(n_avail))
    if n <= 0:
        return []
    return sorted(set(np.linspace(0, n_avail - 1, n).round().astype(int).tolist()))


def _item_subjects(src) -> list[str]:
    if hasattr(src, "_slices") and hasattr(src, "_subj"):  # NiftiFolder: no image reads
        return [str(src._subj[fi]) for fi, _ in src._slices]
    subs = getattr(src, "subjects", None)
    if subs is not None and len(subs) == len(src):  # PhotoFolder: one subject per photo
        return [str(s) for s in subs]
    return [str(src[i].subject) for i in range(len(src))]


def get_source(domain: str, split: str, cfg: StudyConfig, n: int | None = None):
    """The images of ``domain`` for ``split`` ("train", "tune", "val", "test"), ``n`` of them spread evenly.

    ``split="test"`` is served only inside :func:`evaluation_phase`. With the domain's folder in the config (``natural_dir``, ``t1_dir``, ``t2_dir``) the folder
    is split by subject (``USER_SPLIT_FRACTIONS``, seeded); otherwise the bundled data and
    their fixed splits are used (``mrtl.data.bundled``).
    """
    from .. import data as mdata

    _no_test(split)
    folder = {"natural": cfg.natural_dir, "t1": cfg.t1_dir, "t2": cfg.t2_dir}.get(domain)
    if folder is None:
        # the photos' crop positions change with the seed (brain slices are fixed images)
        kw = {"seed": int(cfg.seed)} if domain == "natural" else {}
        src = mdata.bundled(domain, split, size=cfg.size, **kw)
        return Subset(src, spread(len(src), n))
    if domain == "natural":
        src = mdata.PhotoFolder(folder, size=cfg.size)
    else:
        src = mdata.NiftiFolder(folder, size=cfg.size, contrast=None)
    subj = _item_subjects(src)
    groups = mdata.split_by_subject(subj, USER_SPLIT_FRACTIONS, seed=cfg.seed)
    keep = set(groups[_SPLIT_INDEX[split]])
    idx = [i for i, s in enumerate(subj) if s in keep]
    if not idx:
        raise ValueError(f"{domain}_dir: {folder} has too few subjects for a {split!r} split "
                         f"(fractions {USER_SPLIT_FRACTIONS}); add subjects")
    return Subset(src, [idx[j] for j in spread(len(idx), n)])


def mask_bank(R: int, cfg: StudyConfig, split: str):
    """The paper's mask banks: ``cfg.n_masks`` train masks and a disjoint test bank."""
    from ..masks import MaskBank

    return MaskBank(R, (cfg.size, cfg.size), n=cfg.n_masks, seed=cfg.seed, split=split)


def undersampled(source, R: int, cfg: StudyConfig, split: str, coils: int | None = None, seed_offset: int = 0,
                 cc: bool = True, phase: str | None = None):
    """Materialised training/testing tensors (``mrtl.train.TrainData``) for ``source`` at ``R``.

    Masks come from the ``train`` bank for training/fine-tuning data and the disjoint ``test``
    bank for test data; the mask of each image is fixed by the seed.
    """
    from ..data import UndersampledDataset
    from ..train import as_train_data

    bank = mask_bank(R, cfg, "test" if split == "test" else "train")
    if coils is None or isinstance(getattr(source, "source", source), _coil_source_types()):
        kw = {}
    else:  # simulated multi-coil: ``coils`` virtual coils from a bank of birdcage maps
        kw = dict(coils="simulate", n_virtual=int(coils), n_coils=max(int(coils), 2 * int(coils)))
        if phase is not None:
            kw["phase"] = phase
    ds = UndersampledDataset(source, bank, seed=cfg.seed + seed_offset, **kw)
    data = as_train_data(ds, cc=cc, name=f"{getattr(source, 'domain', 'data')}/{split}")
    if data.maps is not None and data.maps.shape[1] == 0:  # single-coil samples carry empty maps
        data.maps = None
    return data


def _coil_source_types() -> tuple:
    from ..data import FastMRIFolder

    return (FastMRIFolder,)


def subset_data(data, n: int):
    """The first ``n`` samples of a ``TrainData`` spread evenly (same indices for every call)."""
    return data.subset(torch.as_tensor(spread(len(data), n), dtype=torch.long))


def new_cascade(cfg: StudyConfig, coils: str = "single", seed: int = 0):
    from ..models import Cascade

    return Cascade(n_subnets=cfg.n_subnets, coils=coils, width=cfg.width, depth=cfg.depth, seed=seed)


class Tracker:
    """What one seed of a study chose on validation: learning rates, best and stop epochs,
    learning curves, and the CS / L1-SPIRiT parameters (one instance per seed).

    Attributes:
        lr: ``{kind: lr}`` chosen on validation ("pretrain", "finetune", "scratch").
        training: one row per trained network (and per learning rate tried).
        curves: validation PSNR per epoch of every trained network.
        selections: the CS / L1-SPIRiT grids with their validation PSNR.
    """

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.lr: dict[str, float] = {}
        self.training: list[dict] = []
        self.curves: list[dict] = []
        self.selections: list[dict] = []

    def _record(self, network: str, R: int, kind: str, lr: float, stages: list[dict], chosen: bool, seconds: float):
        for st in stages:
            ep, vp = st.get("epochs", []), st.get("val_psnr", [])
            best = st.get("best_epoch")
            best_psnr = next((p for e, p in zip(ep, vp) if e == best), float("nan"))
            self.training.append(dict(seed=self.cfg.seed, R=int(R), network=network, kind=kind, stage=int(st.get("stage", 0)),
                                      lr=float(lr), chosen=bool(chosen), max_epochs=st.get("max_epochs"),
                                      patience=st.get("patience"), best_epoch=best, stop_epoch=st.get("stopped_epoch"),
                                      val_psnr_best=float(best_psnr), seconds=round(seconds, 2)))
            for e, p in zip(ep, vp):
                self.curves.append(dict(seed=self.cfg.seed, R=int(R), network=network, kind=kind,
                                        stage=int(st.get("stage", 0)), lr=float(lr), chosen=bool(chosen),
                                        epoch=int(e), val_psnr=float(p)))

    def train(self, kind: str, network: str, R: int, run: Callable[[float], tuple]) -> object:
        """Train with the learning rate of ``kind``, choosing it on validation the first time.

        Args:
            kind: "pretrain", "finetune" or "scratch".
            network: a label for the tables (e.g. "Natural-trained tuned").
            R: acceleration.
            run: ``run(lr) -> (model, stages, score)`` trains one network at ``lr`` with early
                stopping; ``stages`` are the per-stage summaries of ``mrtl.train`` and
                ``score`` the validation PSNR of the selected epoch (higher is better).

        Returns:
            The trained model (the best learning rate's, the first time).
        """
        _no_training(network)
        if kind in self.lr:
            t0 = time.perf_counter()
            model, stages, _ = run(self.lr[kind])
            self._record(network, R, kind, self.lr[kind], stages, True, time.perf_counter() - t0)
            return model
        from ..train import TrainingDiverged

        tried = []
        grid = self.cfg.lr_candidates(kind)
        for lr in grid:
            t0 = time.perf_counter()
            try:
                model, stages, score = run(lr)
            except TrainingDiverged as exc:
                if len(grid) == 1:
                    raise
                # a rate of the grid that diverges is rejected (scored NaN), not fatal
                log(f"R={R}: {network} at lr {lr:g} diverged ({exc}); rejected")
                model, stages, score = None, [], float("nan")
            tried.append((score, lr, model, stages, time.perf_counter() - t0))
            log(f"R={R}: {network} at lr {lr:g}: validation PSNR {score:.2f} dB")
        if all(t[0] != t[0] for t in tried):
            raise TrainingDiverged(f"{network}: every learning rate of {list(grid)} diverged or scored NaN on validation")
        # the highest validation PSNR; NaN never wins; ties go to the first (smallest) rate
        best = max(range(len(tried)), key=lambda i: (tried[i][0] == tried[i][0], tried[i][0] if tried[i][0] == tried[i][0] else 0, -i))
        for i, (score, lr, model, stages, secs) in enumerate(tried):
            self._record(network, R, kind, lr, stages, i == best, secs)
        self.lr[kind] = tried[best][1]
        self.selections.append(dict(seed=self.cfg.seed, R=int(R), what=f"lr {kind}", network=network,
                                    grid=json.dumps([t[1] for t in tried]),
                                    val_psnr=json.dumps([round(t[0], 4) for t in tried]), chosen=json.dumps(tried[best][1])))
        return tried[best][2]


def _score(stage: dict) -> float:
    ep, vp = stage.get("epochs", []), stage.get("val_psnr", [])
    return float(next((p for e, p in zip(ep, vp) if e == stage.get("best_epoch")), float("nan")))


def pretrain(model, data, val, cfg: StudyConfig, ckpt_dir: Path | None, seed: int, lr: float | None = None):
    """Sequential training (Eq. 11): at most ``cfg.epochs`` epochs per subnetwork, each stage
    stopped early (``cfg.pretrain_patience``) and its best epoch kept, both by validation PSNR
    on ``val``; resumable via ``ckpt_dir``.

    Returns:
        ``(model, stages, score)``: per-stage summaries of ``mrtl.train.train_sequential`` and the
        last stage's validation PSNR at its selected epoch.
    """
    from ..train import train_sequential

    _no_training("pretrain")
    out = train_sequential(model, data, val, epochs_per_subnet=cfg.epochs, lr=cfg.lr_pretrain if lr is None else lr,
                           batch_size=min(cfg.batch_size, len(data)), device=cfg.device, out_dir=ckpt_dir,
                           resume=ckpt_dir is not None, seed=seed, progress_bar=False,
                           patience=cfg.pretrain_patience, select_on="psnr", select_best=True)
    stages = [dict(v, stage=int(k)) for k, v in sorted(out.get("stages", {}).items())]
    return model, stages, (_score(stages[-1]) if stages else float("nan"))


def finetune(model, data, val, cfg: StudyConfig, ckpt_dir: Path | None, seed: int, lr: float | None = None):
    """End-to-end training of ``model`` on ``data`` (fine-tuning, or the from-scratch baseline
    from random weights): at most ``cfg.ft_epochs`` epochs, stopped early after ``cfg.patience``
    epochs without improvement and restored to its best epoch, both by validation PSNR on
    ``val`` (epoch 0, the starting weights, is a candidate). Resumable via ``ckpt_dir``.

    Returns:
        ``(model, stages, score)`` as :func:`pretrain` (one stage).
    """
    from ..train import finetune as _ft

    _no_training("finetune")
    if cfg.ft_epochs == 0 or len(data) == 0:
        return model, [], float("nan")
    out = _ft(model, data, val, epochs=cfg.ft_epochs, lr=cfg.lr_finetune if lr is None else lr,
              batch_size=min(cfg.ft_batch_size, len(data)), device=cfg.device, out_dir=ckpt_dir,
              resume=ckpt_dir is not None, seed=seed, progress_bar=False, patience=cfg.patience,
              select_on="psnr", select_best=True)
    summ = out.get("summary")
    stages = [dict(summ, stage=0)] if summ else []
    return model, stages, (_score(stages[0]) if stages else float("nan"))


def trained_copy(model):
    """A deep copy (fine-tuning starts from the same pretrained weights for every lr tried)."""
    return copy.deepcopy(model)


def evaluate(model, data, cfg: StudyConfig) -> list[dict]:
    """Per-image PSNR/SSIM of ``model`` on ``data`` (``mrtl.train.evaluate``)."""
    from ..train import evaluate as _ev

    return _ev(model, data, batch_size=32, device=cfg.device)


def score(images: torch.Tensor, data) -> list[dict]:
    """Per-image PSNR/SSIM of reconstructions ``images`` against ``data.reference`` (``mrtl.metrics``)."""
    from ..metrics import psnr, ssim

    images = images.detach().cpu()
    ref = data.reference.cpu()
    p, s = psnr(images, ref=ref), ssim(images, ref=ref)
    out = []
    for i in range(len(p)):
        m = data.meta[i] if data.meta else {}
        out.append(dict(index=i, subject=m.get("subject"), psnr=float(p[i]), ssim=float(s[i])))
    return out


def zero_filled_records(data) -> list[dict]:
    return score(data.x_u, data)


def _recon_device(cfg) -> torch.device:
    return torch.device("cuda") if str(cfg.device).startswith("cuda") and torch.cuda.is_available() else torch.device("cpu")


def select_cs(val, cfg, tracker: Tracker | None = None, R: int = 0) -> dict:
    """CS parameters (lambda, iterations) chosen on the validation data ``val`` from
    ``cfg.cs_lam_grid x cfg.cs_iter_grid`` by mean PSNR (``mrtl.recon.select_parameters``)."""
    from ..recon import cs_l1_wavelet, select_parameters

    dev = _recon_device(cfg)
    grid = {"lam": list(cfg.cs_lam_grid), "n_iter": list(cfg.cs_iter_grid)}
    best, table = select_parameters(cs_l1_wavelet, val.kspace.to(dev), val.mask.to(dev), val.reference.to(dev), grid=grid,
                                    R=val.R)  # the R the data carry (used only by a grid without lam)
    if tracker is not None:
        tracker.selections.append(dict(seed=cfg.seed, R=int(R), what="CS", network="CS", grid=json.dumps(grid),
                                       val_psnr=table.to_json(orient="records"), chosen=json.dumps(best)))
    return best


def cs_records(data, cfg, lam: float, n_iter: int) -> tuple[list[dict], float]:
    """L1-wavelet CS (Eq. 2; db4, FISTA with random shifts) on the same k-space and masks as the networks."""
    from ..recon import cs_l1_wavelet

    t0 = time.perf_counter()
    dev = _recon_device(cfg)
    res = cs_l1_wavelet(data.kspace.to(dev), data.mask.to(dev), lam=lam, n_iter=n_iter, R=data.R)
    return score(res.image, data), time.perf_counter() - t0


def records_to_rows(records: list[dict], **keys) -> list[dict]:
    """Per-image rows in the results format (``image`` = test index)."""
    return [dict(keys, image=int(r["index"]), subject=r.get("subject"), psnr=float(r["psnr"]),
                 ssim=float(r["ssim"])) for r in records]


def log(msg: str) -> None:
    """One progress line (silent when ``MRTL_QUIET=1``)."""
    from ..utils import quiet

    if not quiet():
        print(f"[mrtl.experiments {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup(cfg: StudyConfig) -> None:
    from ..utils import seed_everything

    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    seed_everything(cfg.seed)


@contextlib.contextmanager
def threads(cfg: StudyConfig):
    """Run with ``cfg.num_threads`` torch threads (CPU results depend on the thread count) and
    restore the caller's setting afterwards."""
    prev = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(prev)


# Fields that do not change a trained network (where it is written, the grid axes, how many
# seeds run: each seed's work is keyed by its own seed).
_NEUTRAL = ("output_dir", "scale", "R_list", "n_train_list", "n_tune_list", "device", "n_seeds")


def settings_fingerprint(cfg: StudyConfig) -> str:
    """A short hash of every setting that changes the numbers (not paths or grid axes).

    Checkpoints and sweep cells are keyed by it, so a rerun with other epochs, widths,
    learning rates or seeds recomputes instead of resuming from work done with other settings.
    """
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _NEUTRAL}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ckpt_dir(cfg: StudyConfig, name: str) -> Path | None:
    """``<output_dir>/checkpoints/<fingerprint>/<name>`` (None when nothing is written)."""
    if cfg.output_dir is None:
        return None
    return Path(cfg.output_dir) / "checkpoints" / settings_fingerprint(cfg) / name


def tracker_frames(trackers: Sequence[Tracker]) -> dict:
    """The ``training``, ``curves`` and ``selections`` tables of a study from its per-seed trackers."""
    import pandas as pd

    return {
        "training": pd.DataFrame([r for t in trackers for r in t.training]),
        "curves": pd.DataFrame([r for t in trackers for r in t.curves]),
        "selections": pd.DataFrame([r for t in trackers for r in t.selections]),
    }
