"""The training loop: sequential pretraining (Eq. 11) and end-to-end fine-tuning, one
:class:`Trainer` per stage or phase, with the settings of both in one :class:`TrainSettings`.

See the package docstring (:mod:`mrtl.train`) for the rules (loss, weight penalty, model
selection, early stopping, divergence guard, checkpoints and resume, logs, DDP).
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import inspect
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from .._validate import check_choice, check_float, check_int
from ..data.train_data import TrainData, as_train_data, check_compatible, input_p99
from ..metrics import psnr_magnitudes
from ..models import Cascade
from ..presets import PAPER
from ..utils import atomic_write_text, get_device, progress
from .checkpoint import load_resume, save_model, save_torch, seed_all, set_rng_state, training_checkpoint
from .distributed import barrier, ddp_device, dist_info
from .inference import batch_indices
from .loss import hybrid_loss

__all__ = ["TrainSettings", "Trainer", "TrainingDiverged", "DIVERGENCE_DB", "train_sequential", "finetune",
           "TRAIN_KEYS", "FINETUNE_KEYS"]

#: Divergence guard: an epoch whose validation PSNR falls this many dB below the PSNR of the
#: phase's starting point (the stage input ``u_{p-1}`` in pretraining, the model before
#: fine-tuning) stops training; without a validation set, a training loss ``10**(DIVERGENCE_DB/10)``
#: times that of the starting point does. 30 dB is a 1000-fold error: no healthy epoch comes near
#: it (lr 1e3 on the tiny test data gives -188 dB), and the selected best epoch could otherwise be
#: such an image.
DIVERGENCE_DB = 30.0

_PT, _PF = PAPER["train"], PAPER["finetune"]

#: Per phase: the function that runs it, the keyword its ``epochs`` goes by, and its defaults
#: (:data:`mrtl.presets.PAPER`).
_PHASES = {"pretrain": ("train_sequential", "epochs_per_subnet", _PT), "finetune": ("finetune", "epochs", _PF)}

#: The fields that only sequential pretraining reads (refused as keywords by :func:`finetune`).
_PRETRAIN_ONLY = ("cache_prefix", "stages", "resample_masks")


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or weights, or collapsed (see :data:`DIVERGENCE_DB`).
    The message names the phase, stage and epoch, and the last good checkpoint kept on disk."""


# ----------------------------------------------------------------------------------------------
# settings


@dataclass
class TrainSettings:
    """The settings of :func:`train_sequential` and :func:`finetune`, written once for both.

    Build them with :meth:`pretrain` / :meth:`finetune` (the phase's defaults, the paper's:
    :data:`mrtl.presets.PAPER`, ``"train"`` and ``"finetune"``), or give the fields as keywords
    to the two functions. ``epochs`` goes by the keyword ``epochs_per_subnet`` in pretraining and
    ``epochs`` in fine-tuning; the last three fields apply to pretraining only.

    Args:
        epochs: the epoch budget of a phase: E, epochs per subnetwork, in sequential pretraining
            (Eq. 11; paper: 20), or the fine-tuning epochs (paper: 100); the maximum when
            ``patience`` is set.
        lr: Adam learning rate (paper: 1e-4 pretraining, 1e-5 fine-tuning).
        betas: Adam betas (paper: 0.9, 0.999).
        weight_decay: gamma of Eq. 5/11 (paper: 1e-6), penalty ``gamma ||theta_p||^2`` (Adam's
            coupled weight decay ``2 * gamma``, its gradient).
        batch_size: global batch size (paper: 50), split across ranks under torchrun.
        device: "cpu", "cuda", None (auto).
        amp: bf16 autocast of the subnetworks (DC/CC stay in float32): for speed on CUDA; the
            same path runs on CPU (slower there, but it is how tests exercise it without a GPU).
        tf32: allow TF32 matmuls/convolutions on CUDA.
        out_dir: folder for checkpoints and logs (``*_pretrain.*`` / ``*_finetune.*``; None:
            nothing written, no resume).
        resume: continue from ``out_dir/checkpoint_<phase>.pt`` if present.
        seed: seeds the batch order (and the global RNGs).
        select_best: keep the best epoch (of each stage in pretraining; by ``select_on``, the
            lowest training loss without a validation set).
        patience: early stopping: end a stage (or fine-tuning) once its selection score has not
            improved for ``patience`` consecutive epochs (so it stops after epoch
            ``best + patience``); ``epochs`` is then the maximum budget. None: run every epoch.
        select_on: ``"loss"`` (validation loss, Eq. 5) or ``"psnr"`` (validation PSNR, needs a
            validation set): the score that picks the best epoch and drives ``patience``.
        log_every: print a line every this many epochs (0: never).
        progress_bar: show tqdm bars (also silenced by ``MRTL_QUIET=1``).
        callback: called after every optimisation step with a dict (phase, stage, epoch, step,
            loss); raising from it interrupts training (used to test resume).
        cache_prefix: (pretraining) cache the frozen prefix output once per stage (False
            recomputes it every batch; same result, slower).
        stages: (pretraining) train only these stages (1-based; default all).
        resample_masks: (pretraining) when the training set has ``set_epoch``
            (``UndersampledDataset``), call ``set_epoch(p - 1)`` before stage p, so each stage
            draws new masks from the bank (masks stay fixed within a stage, which the prefix
            cache needs).
    """

    epochs: int
    lr: float
    betas: Sequence[float] = _PT["betas"]
    weight_decay: float = _PT["weight_decay"]
    batch_size: int = _PT["batch_size"]
    device: Any = None
    amp: bool = False
    tf32: bool = True
    out_dir: Any = None
    resume: bool = True
    seed: int = 0
    select_best: bool = True
    patience: Optional[int] = None
    select_on: str = "loss"
    log_every: int = 0
    progress_bar: bool = True
    callback: Optional[Callable[[dict], None]] = None
    cache_prefix: bool = True
    stages: Optional[Sequence[int]] = None
    resample_masks: bool = True

    @classmethod
    def pretrain(cls, **overrides) -> "TrainSettings":
        """Sequential pretraining's settings: ``PAPER["train"]`` with ``overrides`` (the keywords
        of :func:`train_sequential`, ``epochs_per_subnet`` for ``epochs``)."""
        return cls.for_phase("pretrain", None, overrides, caller="TrainSettings.pretrain")

    @classmethod
    def finetune(cls, **overrides) -> "TrainSettings":
        """Fine-tuning's settings: ``PAPER["finetune"]`` with ``overrides`` (the keywords of
        :func:`finetune`; no pretraining-only fields)."""
        return cls.for_phase("finetune", None, overrides, caller="TrainSettings.finetune")

    @classmethod
    def keywords(cls, phase: str) -> tuple[str, ...]:
        """The keywords a phase takes, in field order: ``epochs`` under the phase's name
        (``epochs_per_subnet``/``epochs``), the pretraining-only fields only for ``"pretrain"``."""
        epochs_key = _PHASES[check_choice(phase, "phase", tuple(_PHASES))][1]
        return tuple(epochs_key if f.name == "epochs" else f.name for f in dataclasses.fields(cls)
                     if phase == "pretrain" or f.name not in _PRETRAIN_ONLY)

    @classmethod
    def for_phase(cls, phase: str, settings: Optional["TrainSettings"] = None, overrides: Optional[dict] = None,
                  caller: Optional[str] = None) -> "TrainSettings":
        """The settings of one call: ``settings`` (default: the phase's paper defaults) with the
        fields named in ``overrides`` (keywords as :meth:`keywords`) replaced.

        Raises:
            TypeError: a keyword the phase does not take (named, with the valid ones), or
                ``settings`` that is not a :class:`TrainSettings`.
        """
        valid = cls.keywords(phase)
        fn, epochs_key, preset = _PHASES[phase]
        caller = caller or fn
        overrides = dict(overrides or {})
        for k in overrides:
            if k in valid:
                continue
            if k in _PRETRAIN_ONLY:
                why = f"{k!r}: it applies to sequential pretraining only (train_sequential)"
            else:
                other = {v[1] for v in _PHASES.values()} - {epochs_key}
                hint = (f" (this phase's epoch count is {epochs_key!r})" if k in other
                        else "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(k, valid, n=1)))
                why = f"{k!r}{hint}"
            raise TypeError(f"{caller}() got an unexpected keyword argument {why}; valid keywords: {', '.join(valid)}")
        fields = {("epochs" if k == epochs_key else k): v for k, v in overrides.items()}
        if settings is None:
            return cls(**({("epochs" if k == epochs_key else k): v for k, v in preset.items()} | fields))
        if not isinstance(settings, TrainSettings):
            raise TypeError(f"settings: expected mrtl.train.TrainSettings (e.g. TrainSettings.{phase}(...)) or None, "
                            f"got {type(settings).__name__}")
        return dataclasses.replace(settings, **fields)

    def checked(self, epochs_name: str, has_val: bool) -> "TrainSettings":
        """A validated copy (``patience`` as an int); errors name the argument (``epochs_name``
        for ``epochs``)."""
        epochs = check_int(self.epochs, epochs_name, low=0)
        check_float(self.lr, "lr", low=0.0, low_open=True)
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
            raise ValueError(f"betas: expected a pair (beta1, beta2), got {self.betas!r}")
        for i, b in enumerate(self.betas):
            check_float(b, f"betas[{i}]", low=0.0, high=1.0)
        check_float(self.weight_decay, "weight_decay", low=0.0)
        check_int(self.batch_size, "batch_size", low=1)
        patience = self.patience
        if patience is not None:
            patience = check_int(patience, "patience", low=1)
        check_choice(self.select_on, "select_on", ("loss", "psnr"))
        if self.select_on == "psnr" and not has_val:
            raise ValueError("select_on: 'psnr' selects epochs by validation PSNR and needs a val_set; "
                             "give val_set or use select_on='loss' (training loss without a validation set)")
        return dataclasses.replace(self, epochs=epochs, patience=patience)

    @property
    def criterion(self) -> str:
        return "val_psnr" if self.select_on == "psnr" else "val_loss"


# ----------------------------------------------------------------------------------------------
# one phase


class _StageModule(nn.Module):
    """Stage p (or the whole cascade when p is None) as one module, so DDP can wrap it."""

    def __init__(self, model: Cascade, p: Optional[int]):
        super().__init__()
        self.model, self.p = model, p

    def forward(self, x_in, kspace, mask, maps, G_img):
        m = self.model
        if self.p is None:
            state = m.prefix(x_in, kspace, mask, maps, G_img, validate=False)
        else:
            state = m.forward_stage(self.p, x_in, kspace, mask, maps, G_img, validate=False)
        return m.output(state, maps)


def _psnr_batch(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Validation PSNR per image (``mrtl.metrics.psnr``'s formula; NaN stays NaN)."""
    return psnr_magnitudes(out.abs().double(), ref.abs().double(), min_mse=1e-30)


def _phase_summary(history, phase, stage, epochs, patience, crit, best, stopped) -> dict:
    """Per phase/stage record: budget, stopping rule, best and stop epochs, learning curves."""
    rows = [h for h in history if h.get("phase") == phase and h.get("stage") == stage]
    return {
        "phase": phase, "stage": stage, "max_epochs": epochs, "patience": patience, "select_on": crit,
        "best_epoch": None if best is None else int(best["epoch"]),
        "best_score": None if best is None else float(best.get("metric", best.get("val_loss"))),
        "stopped_epoch": int(stopped),
        "early_stopped": bool(patience is not None and stopped < epochs),
        "epochs": [int(r["epoch"]) for r in rows],
        "val_psnr": [float(r["val_psnr"]) for r in rows],
        "val_loss": [float(r["val_loss"]) for r in rows],
        "train_loss": [float(r["train_loss"]) for r in rows],
    }


class Trainer:
    """Trains one phase: stage ``stage`` of pretraining (subnetwork p and its DC layer, the
    earlier ones frozen, Eq. 11) or, with ``phase="finetune"``, the whole cascade end to end, for
    at most ``settings.epochs`` epochs.

    Early stopping: with ``settings.patience``, stop once the selection score (:meth:`score`)
    has not improved (strictly) for ``patience`` epochs, i.e. after epoch ``best + patience``.
    The best epoch and its weights live in the per-epoch checkpoint, so the patience counter
    survives a resume.

    Attributes:
        model, phase, stage, settings: what is trained and how.
        p: the stage trained (None: all, fine-tuning).
        train, val: the data (:class:`~mrtl.data.TrainData`); ``train_state``/``val_state`` the
            cached (or lazily recomputed) stage inputs ``u_{p-1}``, None in fine-tuning.
        params, module, optimizer: the trainable parameters, the (DDP-wrapped) stage, Adam.
        history: the per-epoch log (shared with the caller, appended to).
        best: the best epoch so far (``score, metric, val_loss, val_psnr, epoch, state``) or None.
        start_epoch: the first epoch to run (after a resume, the epochs already done).
        base_psnr, base_loss: the starting point of the divergence guard.
        initial_weights: the trained weights when :meth:`run` started (put back on divergence
            when no epoch was better).
    """

    def __init__(self, model: Cascade, *, phase: str, stage: int, settings: TrainSettings, train: TrainData,
                 val: Optional[TrainData], history: list, device, rank: int = 0, world: int = 1,
                 train_state=None, val_state=None, extra_ckpt: Optional[dict] = None):
        self.model, self.phase, self.stage, self.settings = model, phase, stage, settings
        self.p = None if phase == "finetune" else stage
        self.train, self.val, self.train_state, self.val_state = train, val, train_state, val_state
        self.history, self.device, self.rank, self.world = history, device, rank, world
        self.extra_ckpt = dict(extra_ckpt or {})
        self.has_val = val is not None
        self.crit = settings.criterion if self.has_val else "train_loss"
        out_dir = settings.out_dir
        self.ckpt_path = None if out_dir is None else Path(out_dir) / f"checkpoint_{phase}.pt"
        self.best: Optional[dict] = None
        self.start_epoch = 0
        self.base_psnr = self.base_loss = float("nan")
        self.initial_weights: Optional[dict] = None  # the stage's weights when run() starts

        self.params = list(model.parameters() if self.p is None else model.stage_parameters(self.p))
        for q in model.parameters():
            q.requires_grad_(False)
        for q in self.params:
            q.requires_grad_(True)
        module = _StageModule(model, self.p)
        if world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
        self.module = module
        s = settings
        self.optimizer = torch.optim.Adam(self.params, lr=s.lr, betas=tuple(s.betas), weight_decay=2.0 * s.weight_decay)

    # -- weights of the trained stage ------------------------------------------------------------
    def stage_weights(self) -> dict:
        """A copy of the weights being trained (the whole cascade, or subnetwork p and DC p)."""
        m, p = self.model, self.p
        if p is None:
            return {k: v.detach().clone() for k, v in m.state_dict().items()}
        return ({k: v.detach().clone() for k, v in m.subnets[p - 1].state_dict().items()}
                | {"dc." + k: v.detach().clone() for k, v in m.dcs[p - 1].state_dict().items()})

    def restore(self, sd: dict) -> None:
        """Put back weights from :meth:`stage_weights`."""
        m, p = self.model, self.p
        if p is None:
            m.load_state_dict(sd)
        else:
            m.subnets[p - 1].load_state_dict({k: v for k, v in sd.items() if not k.startswith("dc.")})
            m.dcs[p - 1].load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("dc.")})

    # -- data ------------------------------------------------------------------------------------
    def _inputs(self, data: TrainData, idx, state):
        b = data.batch(idx)
        return (state[idx] if state is not None else b["x_u"]), b

    def _batches(self, data: TrainData):
        return batch_indices(len(data), self.settings.batch_size, data.x_u.device)

    # -- scores ----------------------------------------------------------------------------------
    def validate(self) -> tuple[float, float]:
        """(validation loss, validation PSNR) of the current weights (NaN, NaN without val)."""
        val, model = self.val, self.model
        if val is None:
            return float("nan"), float("nan")
        model.eval()
        losses, psnrs = [], []
        with torch.no_grad():
            for idx in self._batches(val):
                x_in, b = self._inputs(val, idx, self.val_state)
                out = _StageModule(model, self.p)(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
                losses.append(hybrid_loss(out, b["reference"], model.coils, reduction="none"))
                psnrs.append(_psnr_batch(out, b["reference"]))
        model.train()
        return float(torch.cat(losses).mean()), float(torch.cat(psnrs).mean())

    def score(self, val_loss: float, val_psnr: float, train_loss: float) -> float:
        """The model-selection score of an epoch, lower is better: the validation loss, minus the
        validation PSNR (``select_on="psnr"``), or the training loss without a validation set."""
        if not self.has_val:
            return train_loss
        return -val_psnr if self.settings.select_on == "psnr" else val_loss

    def _record(self, epoch: int, tl: float, vl: float, vp: float) -> Optional[dict]:
        """The best-epoch record if epoch ``epoch`` improves (strictly) on the best so far."""
        score = self.score(vl, vp, tl)
        if score != score:  # NaN never improves
            return None
        if self.best is None or score < self.best["score"]:
            metric = {"val_psnr": vp, "val_loss": vl, "train_loss": tl}[self.crit]
            return {"score": score, "metric": metric, "val_loss": vl if self.has_val else tl, "val_psnr": vp,
                    "epoch": epoch, "state": self.stage_weights()}
        return None

    def _starting_point(self) -> tuple[float, float]:
        """(validation PSNR, training loss) of the phase's starting point, for the divergence guard."""
        model, val, train, p = self.model, self.val, self.train, self.p
        if val is not None:
            vp0 = float("nan")
            with torch.no_grad():
                if p is None:
                    vp0 = self.validate()[1]
                else:  # the stage input u_{p-1} (cached prefix or recomputed)
                    ps = []
                    for idx in self._batches(val):
                        x_in, b = self._inputs(val, idx, self.val_state)
                        ps.append(_psnr_batch(model.output(x_in, b["maps"]), b["reference"]))
                    vp0 = float(torch.cat(ps).mean())
            return vp0, float("nan")
        tl0, cnt0 = 0.0, 0
        model.eval()
        with torch.no_grad():
            for idx in self._batches(train):
                x_in, b = self._inputs(train, idx, self.train_state)
                if p is not None:
                    out = model.output(x_in, b["maps"])
                else:
                    out = _StageModule(model, None)(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
                per = hybrid_loss(out, b["reference"], model.coils, reduction="none")
                tl0, cnt0 = tl0 + float(per.sum()), cnt0 + per.numel()
        model.train()
        return float("nan"), tl0 / max(cnt0, 1)

    # -- divergence ------------------------------------------------------------------------------
    def _diverged(self, epoch: int, why: str):
        """Put back the best (else the starting) weights and stop with a message naming the
        phase, stage, epoch and the checkpoint kept."""
        self.restore(self.best["state"] if self.best is not None else self.initial_weights)
        for q in self.model.parameters():
            q.requires_grad_(True)
        where = f"{self.phase}" + (f" stage {self.stage}" if self.p is not None else "") + f", epoch {epoch}/{self.settings.epochs}"
        path = self.ckpt_path
        if path is None:
            kept = "nothing is saved (no out_dir)"
        elif path.is_file():
            try:
                ck = torch.load(path, map_location="cpu", weights_only=True)
                at = f"{ck['phase']}" + (f" stage {ck['stage']}" if ck["phase"] == "pretrain" else "") + f" epoch {ck['epoch']}"
            except Exception:  # noqa: BLE001 - only for the message
                at = "unreadable"
            kept = f"the last good checkpoint ({at}) is kept in {str(path)!r} and a rerun resumes from it"
        else:
            kept = f"no checkpoint of this phase was written yet in {str(self.settings.out_dir)!r}"
        raise TrainingDiverged(f"training diverged in {where}: {why}; {kept}. Lower the learning rate (lr={self.settings.lr:g})")

    def _check_training(self, epoch: int, train_loss: float) -> None:
        """Stop (:class:`TrainingDiverged`) on a non-finite training loss or weights."""
        if not np.isfinite(train_loss):
            self._diverged(epoch, f"the training loss is {train_loss}")
        if not bool(torch.stack([q.detach().isfinite().all() for q in self.params]).all()):
            self._diverged(epoch, "the weights hold NaN/Inf values")

    def _check_collapse(self, epoch: int, train_loss: float, vl: float, vp: float) -> None:
        """Stop (:class:`TrainingDiverged`) on a non-finite validation score or a collapse
        (:data:`DIVERGENCE_DB` below the starting point)."""
        start = "stage input" if self.p is not None else "model before fine-tuning"
        if self.val is not None:
            if not (np.isfinite(vl) and np.isfinite(vp)):
                self._diverged(epoch, f"the validation loss is {vl} (PSNR {vp} dB)")
            if vp < self.base_psnr - DIVERGENCE_DB:
                self._diverged(epoch, f"the validation PSNR fell to {vp:.1f} dB, more than {DIVERGENCE_DB:g} dB below "
                                      f"the {self.base_psnr:.1f} dB of the {start}")
        elif train_loss > self.base_loss * 10 ** (DIVERGENCE_DB / 10):
            self._diverged(epoch, f"the training loss rose to {train_loss:.3g}, over {10 ** (DIVERGENCE_DB / 10):g} times "
                                  f"the {self.base_loss:.3g} of the {start}")

    # -- the loop --------------------------------------------------------------------------------
    def _resume(self, ckpt: dict) -> None:
        s = self.settings
        self.optimizer.load_state_dict(ckpt["optimizer"])
        for g in self.optimizer.param_groups:  # the arguments of this call, not those saved (e.g. a lower lr after divergence)
            g.update(lr=s.lr, betas=tuple(s.betas), weight_decay=2.0 * s.weight_decay)
        self.start_epoch = int(ckpt["epoch"])
        best = ckpt.get("best")
        if best is not None and "metric" not in best:  # a checkpoint from before early stopping
            best = dict(best, metric=best["val_loss"], score=best["val_loss"])
        self.best = best
        set_rng_state(ckpt["rng"])

    def _stop_now(self, done_epochs: int) -> bool:
        patience = self.settings.patience
        return patience is not None and self.best is not None and done_epochs - int(self.best["epoch"]) >= patience

    def _train_epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch over the training data in the order of ``(seed, phase, stage, epoch)``;
        returns (mean training loss over all ranks, seconds)."""
        s, train, world, rank = self.settings, self.train, self.world, self.rank
        n = len(train)
        order = _epoch_order(n, s.seed, self.phase, self.stage, epoch).to(train.x_u.device)
        t0 = time.perf_counter()
        tot, cnt = torch.zeros((), device=self.device), 0
        batches = range(0, n, s.batch_size)
        desc = f"{self.phase} stage {self.stage} epoch {epoch + 1}/{s.epochs}"
        for bi, start in enumerate(progress(batches, desc=desc, enable=s.progress_bar and rank == 0)):
            idx_global = order[start : start + s.batch_size]
            n_global = idx_global.numel()
            idx = torch.tensor_split(idx_global, world)[rank] if world > 1 else idx_global
            x_in, b = self._inputs(train, idx, self.train_state)
            out = self.module(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
            per = hybrid_loss(out, b["reference"], self.model.coils, reduction="none")
            loss = per.sum() * (world / n_global)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            tot += per.detach().sum()
            cnt += per.numel()
            if s.callback is not None:
                s.callback(dict(phase=self.phase, stage=self.stage, epoch=epoch, step=bi,
                                loss=float(per.detach().mean()) if per.numel() else float("nan")))
        train_loss = float(tot) / max(cnt, 1)
        if world > 1:
            import torch.distributed as dist

            t = torch.tensor([float(tot), float(cnt)], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            train_loss = float(t[0] / t[1].clamp_min(1))
        return train_loss, time.perf_counter() - t0

    def _log_row(self, epoch, train_loss, vl, vp, secs) -> dict:
        n = len(self.train)
        return dict(phase=self.phase, stage=self.stage, epoch=epoch, train_loss=train_loss, val_loss=vl, val_psnr=vp,
                    lr=self.settings.lr, seconds=round(secs, 4), images_per_s=round(n / secs, 3) if secs > 0 else float("nan"))

    def _save_epoch(self, epoch: int) -> None:
        """The logs, then the epoch's checkpoint: the commit point of the epoch (a kill between
        the two redoes the epoch and rewrites the same logs)."""
        s = self.settings
        write_logs(s.out_dir, self.phase, self.history, self.rank)
        best = self.best
        ckpt = training_checkpoint(
            self.model, phase=self.phase, stage=self.stage, epoch=epoch, epochs=s.epochs, history=self.history,
            image_shape=self.train.shape, complete=False, optimizer=self.optimizer, best=best,
            since_best=None if best is None else epoch - int(best["epoch"]), patience=s.patience,
            select_on=self.crit, divergence_base=[self.base_psnr, self.base_loss], **self.extra_ckpt)
        save_torch(ckpt, self.ckpt_path)

    def _quiet(self) -> bool:
        return not self.settings.log_every or self.rank != 0 or bool(os.environ.get("MRTL_QUIET"))

    def run(self, resume_ckpt: Optional[dict] = None) -> tuple[Optional[dict], dict]:
        """Train the phase (continuing from ``resume_ckpt``, a checkpoint of this phase and stage).

        Returns:
            ``(best, summary)``: the best epoch's record (None when nothing was scored) and the
            per-stage summary (budget, stopping rule, best and stop epochs, learning curves).
        """
        s, model = self.settings, self.model
        if resume_ckpt is not None:
            self._resume(resume_ckpt)
        self.initial_weights = self.stage_weights()
        if resume_ckpt is not None and resume_ckpt.get("divergence_base") is not None:
            self.base_psnr, self.base_loss = resume_ckpt["divergence_base"]  # measured before the interruption
        else:
            self.base_psnr, self.base_loss = self._starting_point()

        if self.phase == "finetune" and self.start_epoch == 0 and resume_ckpt is None:
            vl, vp = self.validate()
            self.history.append(dict(phase=self.phase, stage=self.stage, epoch=0, train_loss=float("nan"), val_loss=vl,
                                     val_psnr=vp, lr=s.lr, seconds=0.0, images_per_s=float("nan")))
            # without a validation set there is no epoch-0 score (the training loss of epoch 0 does
            # not exist), so selection starts at epoch 1; a NaN "best" would never be beaten and
            # select_best would silently undo the whole fine-tuning
            if self.has_val:
                self.best = self._record(0, float("nan"), vl, vp)
            write_logs(s.out_dir, self.phase, self.history, self.rank)

        model.train()
        epoch = self.start_epoch
        while epoch < s.epochs and not self._stop_now(epoch):
            train_loss, secs = self._train_epoch(epoch)
            self._check_training(epoch + 1, train_loss)
            vl, vp = self.validate()
            self._check_collapse(epoch + 1, train_loss, vl, vp)
            epoch += 1
            self.history.append(self._log_row(epoch, train_loss, vl, vp, secs))
            new = self._record(epoch, train_loss, vl, vp)
            if new is not None:
                self.best = new
            if s.out_dir is not None and self.rank == 0:
                self._save_epoch(epoch)
            if not self._quiet() and epoch % s.log_every == 0:
                print(f"[{self.phase} stage {self.stage}] epoch {epoch}/{s.epochs}: train {train_loss:.5f} "
                      f"val {vl:.5f} PSNR {vp:.2f} dB")
        stopped = epoch
        best = self.best
        if not self._quiet() and best is not None:
            why = (f"no {self.crit} improvement for {s.patience} epochs" if self._stop_now(stopped) and stopped < s.epochs
                   else "budget reached")
            print(f"[{self.phase} stage {self.stage}] stopped after epoch {stopped}/{s.epochs} ({why}); best epoch "
                  f"{best['epoch']} ({self.crit} {best['metric']:.5g})")
        if s.select_best and best is not None:
            self.restore(best["state"])
        for q in model.parameters():
            q.requires_grad_(True)
        return best, _phase_summary(self.history, self.phase, self.stage, s.epochs, s.patience, self.crit, best, stopped)


def _epoch_order(n: int, seed: int, phase: str, stage: int, epoch: int) -> torch.Tensor:
    """The batch order of an epoch: a permutation that depends only on ``(seed, phase, stage,
    epoch)`` (so a resumed run draws the same batches)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + {"pretrain": 1, "finetune": 2}[phase] * 10_007 + stage * 101 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


# ----------------------------------------------------------------------------------------------
# logs


def write_logs(out_dir, phase: str, history: list, rank: int) -> None:
    """``log_<phase>.csv`` and ``log_<phase>.json``: one row per epoch (rank 0, atomic)."""
    if out_dir is None or rank != 0:
        return
    rows = [h for h in history if h.get("phase") == phase]
    if not rows:
        return
    keys = list(rows[0].keys())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(Path(out_dir) / f"log_{phase}.csv", buf.getvalue())
    atomic_write_text(Path(out_dir) / f"log_{phase}.json", json.dumps(rows, indent=1, default=float))


def write_summary(out_dir, phase: str, summaries: list, rank: int) -> None:
    """``summary_<phase>.json``: per stage, the budget, stopping rule, best and stop epochs and the
    learning curves (validation PSNR/loss and training loss per epoch)."""
    if out_dir is None or rank != 0:
        return
    atomic_write_text(Path(out_dir) / f"summary_{phase}.json", json.dumps(summaries, indent=1, default=float))


# ----------------------------------------------------------------------------------------------
# the frozen prefix of sequential training


def _compute_prefix(model: Cascade, data: TrainData, upto: int, batch_size: int) -> torch.Tensor:
    """``u_upto`` for every sample, with the frozen stages ``1..upto`` (run once per stage)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for idx in batch_indices(len(data), batch_size, data.x_u.device):
            b = data.batch(idx)
            outs.append(model.prefix(b["x_u"], b["kspace"], b["mask"], b["maps"], b["G_img"], upto=upto, validate=False))
    model.train()
    return torch.cat(outs)


class _LazyPrefix:
    """Indexable stand-in for a cached prefix that recomputes it per batch (``cache_prefix=False``)."""

    def __init__(self, model, data, upto):
        self.model, self.data, self.upto = model, data, upto

    def __getitem__(self, idx):
        b = self.data.batch(idx)
        with torch.no_grad():
            return self.model.prefix(b["x_u"], b["kspace"], b["mask"], b["maps"], b["G_img"], upto=self.upto, validate=False)


# ----------------------------------------------------------------------------------------------
# public API


def _setup(model, settings: TrainSettings):
    """Check the model and seed, pick the device (per rank under torchrun), move the model and
    switch autocast; returns ``(device, rank, world)``."""
    if not isinstance(model, Cascade):
        raise TypeError(f"model: expected mrtl.models.Cascade, got {type(model).__name__}")
    check_int(settings.seed, "seed")
    device = ddp_device(get_device(settings.device))
    rank, world = dist_info()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(settings.tf32)
        torch.backends.cudnn.allow_tf32 = bool(settings.tf32)
        torch.backends.cudnn.benchmark = True
    model.to(device)
    model.use_amp(bool(settings.amp))  # CUDA and CPU alike (one code path)
    return device, rank, world


def _load_data(dataset, name: str, model: Cascade, device) -> TrainData:
    data = as_train_data(dataset, name=name).to(device)
    check_compatible(model, data, name)
    return data


def train_sequential(model: Cascade, train_set, val_set=None, settings: Optional[TrainSettings] = None,
                     **overrides) -> dict:
    """Sequential training of the subnetworks (Eq. 11): subnetwork p is trained with 1..p-1 frozen.

    Args:
        model: the :class:`~mrtl.models.Cascade` (trained in place).
        train_set: training samples (``mrtl.data.UndersampledDataset``, any sequence of
            ``Sample``-like records, or :class:`~mrtl.data.TrainData`).
        val_set: validation samples (same kinds), or None (model selection by training loss).
        settings: a :class:`TrainSettings` (default: ``TrainSettings.pretrain()``, the paper's).
        **overrides: fields of :class:`TrainSettings` (documented there, with the paper's
            values), each replacing that of ``settings``; ``epochs_per_subnet`` is its
            ``epochs``: E, the epochs of each subnetwork (Eq. 11; paper: 20), the maximum budget
            of a stage when ``patience`` is set. Selection and early stopping act per stage;
            the files are ``*_pretrain.*``.

    Returns:
        ``{"history": [per-epoch rows], "best": {stage: (epoch, score)}, "stages": {stage: summary},
        "out_dir": ...}``: ``score`` is the selection criterion at the best epoch (validation
        loss, validation PSNR in dB, or training loss without validation). Each summary holds
        ``max_epochs, patience, select_on, best_epoch, best_score, stopped_epoch,
        early_stopped`` and the learning curves ``epochs, val_psnr, val_loss, train_loss``; the
        same list is written to ``summary_pretrain.json``.

    Raises:
        TypeError: a keyword that is not a pretraining setting (named, with the valid ones).
    """
    settings = TrainSettings.for_phase("pretrain", settings, overrides)
    device, rank, world = _setup(model, settings)
    settings = settings.checked("epochs_per_subnet", val_set is not None)
    stages = (list(range(1, model.n_subnets + 1)) if settings.stages is None
              else [check_int(s, f"stages[{i}]", low=1, high=model.n_subnets) for i, s in enumerate(settings.stages)])
    train = _load_data(train_set, "train_set", model, device)
    val = None if val_set is None else _load_data(val_set, "val_set", model, device)
    if val is not None and val.shape != train.shape:
        raise ValueError(f"val_set: image size {val.shape} differs from train_set's {train.shape}")
    model.remember_training_data(input_p99=input_p99(train))  # saved with the model; reconstruct() scales inputs to it
    out_dir = settings.out_dir
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ck = load_resume(out_dir, "pretrain", model, settings.resume)
    history: list = []
    done_stages: set = set()
    resume_stage = None
    summaries: dict = {}
    bests: dict = {}
    if ck is not None:
        # a stage whose epoch loop finished but was not yet marked done gets its best weights
        # restored by its Trainer (its loop has nothing left to run, so only the selection runs)
        model.load_state_dict(ck["model"])
        history = list(ck["history"])
        done_stages = set(ck.get("done_stages", []))
        resume_stage = int(ck["stage"])
        summaries = {int(k): v for k, v in (ck.get("summaries") or {}).items()}
        bests = {int(k): tuple(v) for k, v in (ck.get("bests") or {}).items()}
    seed_all(settings.seed, None if ck is None else ck["rng"])  # a resume continues the interrupted run's RNG streams
    for p in stages:
        if p in done_stages:
            continue
        if settings.resample_masks and hasattr(train_set, "set_epoch") and not isinstance(train_set, TrainData):
            # a fresh draw of masks (and augmentation) per stage, fixed within the stage
            train_set.set_epoch(p - 1)
            train = as_train_data(train_set, name="train_set").to(device)
        rc = ck if (ck is not None and resume_stage == p) else None
        if settings.cache_prefix:
            train_state = _compute_prefix(model, train, p - 1, settings.batch_size)
            val_state = None if val is None else _compute_prefix(model, val, p - 1, settings.batch_size)
        else:  # recompute the frozen prefix for every batch (same result, slower)
            train_state = _LazyPrefix(model, train, p - 1)
            val_state = None if val is None else _LazyPrefix(model, val, p - 1)
        trainer = Trainer(model, phase="pretrain", stage=p, settings=settings, train=train, val=val, history=history,
                          device=device, rank=rank, world=world, train_state=train_state, val_state=val_state,
                          extra_ckpt={"done_stages": sorted(done_stages), "summaries": dict(summaries),
                                      "bests": dict(bests)})
        best, summ = trainer.run(rc)
        done_stages.add(p)
        summaries[p] = summ
        if best is not None:
            bests[p] = (best["epoch"], best["metric"])
        if out_dir is not None and rank == 0:
            # everything derived from the stage first (model file, logs, summary), then the
            # checkpoint that marks the stage done (with its best weights restored), so that a
            # kill between these writes redoes only the selection and rewrites the same files
            save_model(model, Path(out_dir) / "best_pretrain.pt", image_shape=train.shape)
            write_logs(out_dir, "pretrain", history, rank)
            write_summary(out_dir, "pretrain", [summaries[k] for k in sorted(summaries)], rank)
            save_torch(training_checkpoint(
                model, phase="pretrain", stage=p, epoch=summ["stopped_epoch"], epochs=settings.epochs,
                history=history, image_shape=train.shape, complete=done_stages >= set(stages),
                done_stages=sorted(done_stages), summaries=dict(summaries), bests=dict(bests),
            ), Path(out_dir) / "checkpoint_pretrain.pt")
    model.remember_training_data(image_shape=train.shape)
    barrier(world)
    return {"history": history, "best": bests, "stages": {k: summaries[k] for k in sorted(summaries)},
            "out_dir": None if out_dir is None else str(out_dir)}


def finetune(model: Cascade, tune_set, val_set=None, settings: Optional[TrainSettings] = None, **overrides) -> dict:
    """End-to-end fine-tuning through all subnetworks and DC/CC layers (Eq. 16-17 gradients).

    Args:
        model: a (pre)trained :class:`~mrtl.models.Cascade`, tuned in place.
        tune_set: the Ntune target-domain samples.
        val_set: target-domain validation samples (or None).
        settings: a :class:`TrainSettings` (default: ``TrainSettings.finetune()``, the paper's);
            its pretraining-only fields (``cache_prefix``, ``stages``, ``resample_masks``) are not read.
        **overrides: fields of :class:`TrainSettings` (documented there, with the paper's
            values), each replacing that of ``settings``, except the pretraining-only ones
            (refused): ``epochs`` is the fine-tuning budget (paper: 100), ``lr`` (paper: 1e-5).
            With a validation set, epoch 0 (the weights before fine-tuning) is a candidate of
            the selection and of ``patience``. The files are ``*_finetune.*``.

    Returns:
        ``{"history": rows (epoch 0 = before fine-tuning), "best": (epoch, score), "summary":
        {...}, "out_dir"}`` with ``score`` and the summary as in :func:`train_sequential`
        (the summary is also written to ``summary_finetune.json`` as a one-element list).

    Raises:
        TypeError: a keyword that is not a fine-tuning setting (named, with the valid ones).
    """
    settings = TrainSettings.for_phase("finetune", settings, overrides)
    device, rank, world = _setup(model, settings)
    settings = settings.checked("epochs", val_set is not None)
    out_dir = settings.out_dir
    tune = _load_data(tune_set, "tune_set", model, device)
    val = None if val_set is None else _load_data(val_set, "val_set", model, device)
    model.remember_training_data(input_p99=input_p99(tune))  # the target domain's input scale (see train_sequential)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ck = load_resume(out_dir, "finetune", model, settings.resume)
    history: list = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        history = list(ck["history"])
        if ck.get("complete"):
            model.remember_training_data(image_shape=tune.shape)
            return {"history": history, "best": None if ck.get("best_result") is None else tuple(ck["best_result"]),
                    "summary": ck.get("summary"), "out_dir": str(out_dir)}
    seed_all(settings.seed)  # the Trainer continues the RNG streams of an interrupted run
    trainer = Trainer(model, phase="finetune", stage=0, settings=settings, train=tune, val=val, history=history,
                      device=device, rank=rank, world=world)
    best, summ = trainer.run(ck)
    model.remember_training_data(image_shape=tune.shape)
    best_result = None if best is None else (best["epoch"], best["metric"])
    if out_dir is not None and rank == 0:
        # derived files first, the completion checkpoint last (see train_sequential)
        save_model(model, Path(out_dir) / "best_finetune.pt", image_shape=tune.shape)
        write_logs(out_dir, "finetune", history, rank)
        write_summary(out_dir, "finetune", [summ], rank)
        save_torch(training_checkpoint(
            model, phase="finetune", stage=0, epoch=summ["stopped_epoch"], epochs=settings.epochs, history=history,
            image_shape=tune.shape, complete=True, summary=summ, best_result=best_result,
        ), Path(out_dir) / "checkpoint_finetune.pt")
    barrier(world)
    return {"history": history, "best": best_result, "summary": summ,
            "out_dir": None if out_dir is None else str(out_dir)}


def _phase_signature(fn, phase: str) -> None:
    """Give ``fn`` (:func:`train_sequential`/:func:`finetune`) the signature its calls actually
    bind: its own parameters, then every keyword of :meth:`TrainSettings.keywords` with the
    phase's default, generated from the fields (for ``help()``, editors and the book's keyword
    checks); the settings themselves stay written once, in :class:`TrainSettings`."""
    sig = inspect.signature(fn)
    own = [q for q in sig.parameters.values() if q.kind is not q.VAR_KEYWORD]
    defaults, epochs_key = TrainSettings.for_phase(phase), _PHASES[phase][1]
    types = {f.name: f.type for f in dataclasses.fields(TrainSettings)}
    kw = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=getattr(defaults, f), annotation=types[f])
          for k, f in ((k, "epochs" if k == epochs_key else k) for k in TrainSettings.keywords(phase))]
    fn.__signature__ = sig.replace(parameters=own + kw)


_phase_signature(train_sequential, "pretrain")
_phase_signature(finetune, "finetune")

#: The settings :func:`train_sequential` / :func:`finetune` take as keywords (the keys of the
#: ``train`` and ``finetune`` sections of a config file): the fields of :class:`TrainSettings`
#: (``epochs`` as ``epochs_per_subnet`` / ``epochs``; the pretraining-only fields only in
#: ``TRAIN_KEYS``), without ``callback`` (a function has no place in a file).
TRAIN_KEYS = tuple(k for k in TrainSettings.keywords("pretrain") if k != "callback")
FINETUNE_KEYS = tuple(k for k in TrainSettings.keywords("finetune") if k != "callback")
