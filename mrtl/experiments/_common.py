"""Shared plumbing of the studies: sources and splits, datasets, training, evaluation, CS.

Everything here calls the public APIs of the lower layers (``mrtl.data``, ``mrtl.masks``,
``mrtl.train``, ``mrtl.recon``, ``mrtl.metrics``).
"""

from __future__ import annotations

import hashlib
import json

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .config import StudyConfig

# subject-level split of a user folder (no predefined splits): train / tune / val / test
USER_SPLIT_FRACTIONS = (0.7, 0.1, 0.05, 0.15)
_SPLIT_INDEX = {"train": 0, "tune": 1, "val": 2, "test": 3}


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

    Evenly spread subsets keep fine-tuning slices spread over the training range (DESIGN.md:
    a contiguous slab next to the test slab biases the comparison)."""
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

    With the domain's folder in the config (``natural_dir``, ``t1_dir``, ``t2_dir``) the folder
    is split by subject (``USER_SPLIT_FRACTIONS``, seeded); otherwise the bundled data and
    their fixed splits are used (``mrtl.data.bundled``).
    """
    from .. import data as mdata

    folder = {"natural": cfg.natural_dir, "t1": cfg.t1_dir, "t2": cfg.t2_dir}.get(domain)
    if folder is None:
        src = mdata.bundled(domain, split, size=cfg.size)
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
    from ..train import TrainData

    idx = torch.as_tensor(spread(len(data), n), dtype=torch.long)
    sel = lambda t: None if t is None else t[idx]  # noqa: E731
    meta = None if data.meta is None else [data.meta[i] for i in idx.tolist()]
    return TrainData(sel(data.x_u), sel(data.kspace), sel(data.mask), sel(data.reference), sel(data.maps),
                     sel(data.G_img), meta)


def new_cascade(cfg: StudyConfig, coils: str = "single", seed: int = 0):
    from ..models import Cascade

    return Cascade(n_subnets=cfg.n_subnets, coils=coils, width=cfg.width, depth=cfg.depth, seed=seed)


def pretrain(model, data, cfg: StudyConfig, ckpt_dir: Path | None, seed: int):
    """Sequential training (Eq. 11) with the config's pretraining settings; resumable via ``ckpt_dir``."""
    from ..train import train_sequential

    t0 = time.perf_counter()
    train_sequential(model, data, None, epochs_per_subnet=cfg.epochs, lr=cfg.lr_pretrain,
                     batch_size=min(cfg.batch_size, len(data)), device=cfg.device, out_dir=ckpt_dir,
                     resume=ckpt_dir is not None, seed=seed, progress_bar=False)
    return time.perf_counter() - t0


def finetune(model, data, cfg: StudyConfig, ckpt_dir: Path | None, seed: int, lr: float | None = None):
    """End-to-end fine-tuning (paper: 100 epochs, lr 1e-5) on ``data``; resumable via ``ckpt_dir``."""
    from ..train import finetune as _ft

    t0 = time.perf_counter()
    if cfg.ft_epochs > 0 and len(data) > 0:
        # select_best=False: without a validation set, mrtl.train.finetune's model selection
        # compares against a NaN epoch-0 score and would silently restore the pre-fine-tuning
        # weights; we keep the last epoch (the paper fine-tunes for a fixed 100 epochs).
        _ft(model, data, None, epochs=cfg.ft_epochs, lr=cfg.lr_finetune if lr is None else lr,
            batch_size=min(cfg.ft_batch_size, len(data)), device=cfg.device, out_dir=ckpt_dir,
            resume=ckpt_dir is not None, seed=seed, progress_bar=False, select_best=False)
    return time.perf_counter() - t0


def evaluate(model, data, cfg: StudyConfig) -> list[dict]:
    """Per-image PSNR/SSIM of ``model`` on ``data`` (``mrtl.train.evaluate``)."""
    from ..train import evaluate as _ev

    return _ev(model, data, batch_size=32, device=cfg.device)


def score(images: torch.Tensor, data) -> list[dict]:
    """Per-image PSNR/SSIM of reconstructions ``images`` against ``data.reference`` (``mrtl.metrics``)."""
    from ..metrics import psnr, ssim

    images = images.detach().cpu()
    ref = data.reference.cpu()
    p, s = psnr(images, ref), ssim(images, ref)
    out = []
    for i in range(len(p)):
        m = data.meta[i] if data.meta else {}
        out.append(dict(index=i, subject=m.get("subject"), psnr=float(p[i]), ssim=float(s[i])))
    return out


def zero_filled_records(data) -> list[dict]:
    return score(data.x_u, data)


def cs_records(data, cfg, lam: float, n_iter: int) -> tuple[list[dict], float]:
    """L1-wavelet CS (Eq. 2; db4, nonlinear CG) on the same k-space and masks as the networks."""
    from ..recon import cs_l1_wavelet

    t0 = time.perf_counter()
    dev = torch.device("cuda") if str(cfg.device).startswith("cuda") and torch.cuda.is_available() else torch.device("cpu")
    res = cs_l1_wavelet(data.kspace.to(dev), data.mask.to(dev), lam=lam, n_iter=n_iter)
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


# Fields that do not change a trained network (where it is written, the grid axes).
_NEUTRAL = ("output_dir", "num_threads", "scale", "R_list", "n_train_list", "n_tune_list", "device")


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
