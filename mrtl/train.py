"""Training the cascade: sequential training of the subnetworks (Eq. 11), end-to-end fine-tuning,
evaluation and reconstruction (Dar et al. 2020, Methods, "Network training").

One trainer serves both phases:

* the loss is the hybrid MSE + MAE of Eq. 5 (per-pixel means), computed on the output of the
  stage *after* its DC layer (the image the cascade actually produces): magnitudes for
  single-coil (the paper's networks output magnitude), real and imaginary parts for multi-coil;
* the L2 weight penalty ``gamma ||theta||^2`` of Eq. 5/11 is Adam's coupled ``weight_decay``
  set to ``2 * gamma`` (the gradient of ``gamma ||theta||^2``), applied to all parameters;
* Adam (betas 0.9, 0.999), batch 50, lr 1e-4 (pretraining) / 1e-5 (fine-tuning) in
  :data:`PAPER`; :data:`SMALL` is the CPU preset of ``results/small/`` (lr 1e-3, 3 x 16 channels;
  both from :mod:`mrtl.presets`);
* the whole dataset is materialised once as tensors on the training device (masks stay fixed per
  sample); in sequential training the frozen prefix ``1..p-1`` is run once per stage and its
  output cached, so an epoch of stage p runs only subnetwork p and its DC/CC layers;
* validation each epoch (loss and PSNR); the best epoch of each stage (lowest validation loss,
  or highest validation PSNR with ``select_on="psnr"``) is kept (``select_best``) and written to
  ``best_<phase>.pt``; with ``patience`` a stage/phase stops early once that score has not
  improved for ``patience`` epochs (the epoch count is then the maximum budget), the same rule
  for pretraining and fine-tuning; ``summary_<phase>.json`` records per stage the best and stop
  epochs and the learning curves;
* ``checkpoint_<phase>.pt`` is written atomically after every epoch with the model, optimizer,
  RNG states (torch, numpy, python), phase, stage, epoch, the stage's best weights and the log;
  ``resume=True`` continues from it and reproduces an uninterrupted run bit for bit on CPU
  (batch order depends only on ``(seed, phase, stage, epoch)``);
* ``log_<phase>.csv`` / ``log_<phase>.json`` hold one row per epoch;
* under ``torchrun`` (``WORLD_SIZE > 1``) the trainable stage is wrapped in
  DistributedDataParallel (NCCL on CUDA, gloo on CPU). ``batch_size`` is the *global* batch:
  each batch is split across ranks and the loss scaled so that the averaged gradient equals
  the single-process full-batch gradient. Checkpoints and logs are written by rank 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from ._validate import check_float, check_int
from .fft import ifft2c
from .models import Cascade, coil_combine
from .presets import PAPER, SMALL
from .utils import atomic_save_torch, atomic_write_text, get_device, progress

__all__ = [
    "PAPER",
    "SMALL",
    "TrainData",
    "hybrid_loss",
    "train_sequential",
    "finetune",
    "evaluate",
    "reconstruct",
    "save_model",
    "load_model",
    "model_from_checkpoint",
    "load_checkpoint",
    "TRAIN_KEYS",
    "FINETUNE_KEYS",
    "TrainingDiverged",
    "DIVERGENCE_DB",
    "ARCH_LIMITS",
    "MAX_RECON_PIXELS",
]

CKPT_FORMAT = "mrtl-cascade-1"

#: Divergence guard: an epoch whose validation PSNR falls this many dB below the PSNR of the
#: phase's starting point (the stage input ``u_{p-1}`` in pretraining, the model before
#: fine-tuning) stops training; without a validation set, a training loss ``10**(DIVERGENCE_DB/10)``
#: times that of the starting point does. 30 dB is a 1000-fold error: no healthy epoch comes near
#: it (lr 1e3 on the tiny test data gives -188 dB), and the selected best epoch could otherwise be
#: such an image.
DIVERGENCE_DB = 30.0


#: Bounds on the architecture a checkpoint may claim (checked before anything is built, so a
#: corrupt or hostile file fails at once instead of allocating GBs for 10**7 subnetworks); far
#: above the paper's 5 x 64 channels x 4 layers.
ARCH_LIMITS = {"n_subnets": 100, "width": 1024, "depth": 100}

#: Largest image (pixels per slice) :func:`reconstruct` accepts by default: 2048 x 2048. A pass
#: of the paper's 64-channel cascade holds a few float32 activations of ``H x W x 64`` per image
#: (about 3 GB at 4096 x 4096); pass ``max_pixels=None`` to go beyond.
MAX_RECON_PIXELS = 2048 * 2048


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or weights, or collapsed (see :data:`DIVERGENCE_DB`).
    The message names the phase, stage and epoch, and the last good checkpoint kept on disk."""

# PAPER (the paper's full-scale settings, Methods "Network training") and SMALL (the CPU scale of
# results/small/) are defined once, in mrtl.presets; the defaults of train_sequential/finetune
# are PAPER's.
_PT, _PF = PAPER["train"], PAPER["finetune"]


# ----------------------------------------------------------------------------------------------
# data


@dataclass
class TrainData:
    """A dataset materialised as tensors (``N`` samples, all on one device).

    ``x_u`` zero-filled images ``(N, H, W)``; ``kspace`` ``(N, H, W)`` or ``(N, C, H, W)``;
    ``mask`` ``(N, H, W)`` bool; ``reference`` ``(N, H, W)`` complex; ``maps`` ``(N, C, H, W)``
    or None; ``G_img`` ``(N, C, C, H, W)`` or None; ``meta`` one dict per sample (subject,
    source)."""

    x_u: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor
    maps: Optional[torch.Tensor] = None
    G_img: Optional[torch.Tensor] = None
    meta: Optional[list] = None

    def __len__(self) -> int:
        return int(self.x_u.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x_u.shape[-2:])

    def batch(self, idx: torch.Tensor) -> dict:
        out = dict(x_u=self.x_u[idx], kspace=self.kspace[idx], mask=self.mask[idx], reference=self.reference[idx])
        out["maps"] = None if self.maps is None else self.maps[idx]
        out["G_img"] = None if self.G_img is None else self.G_img[idx]
        return out

    def to(self, device) -> "TrainData":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TrainData(mv(self.x_u), mv(self.kspace), mv(self.mask), mv(self.reference), mv(self.maps), mv(self.G_img), self.meta)


def _field(sample, name):
    if isinstance(sample, Mapping):
        return sample.get(name)
    return getattr(sample, name, None)


def _to_complex(t, name):
    t = torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t
    if not t.is_complex():
        t = t.to(torch.float32).to(torch.complex64)
    return t.to(torch.complex64)


def _calibrate_G(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample SPIRiT image-space operators ``(N, C, C, H, W)`` (7x7 kernel, Tikhonov 1e-2)."""
    from .recon import spirit_calibrate  # layer 4, imported lazily

    H, W = kspace.shape[-2:]
    out = []
    for s in range(0, kspace.shape[0], 16):
        k = kspace[s : s + 16] * mask[s : s + 16, None]
        ker = spirit_calibrate(k, kernel_size=7, tikhonov=1e-2)
        out.append(torch.as_tensor(ker.image_operator((H, W))).to(torch.complex64).reshape(-1, *k.shape[1:2], *k.shape[1:]))
    return torch.cat(out)


def as_train_data(dataset, cc: bool = True, name: str = "dataset") -> TrainData:
    """Materialise ``dataset`` (a :class:`TrainData`, or a sequence of samples with the fields
    ``zero_filled, kspace, mask, reference, maps`` such as ``mrtl.data.UndersampledDataset``)
    into tensors. Multi-coil data get per-sample SPIRiT operators when ``cc`` (unless the
    samples carry ``G_img``).

    Raises:
        ValueError: a field holds NaN/Inf values (the message names the field and the first
            sample), sizes differ, or a field is missing.
    """
    if isinstance(dataset, TrainData):
        _check_finite_data(dataset, name)
        return dataset
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"{name}: expected a dataset (len() and [i] giving samples) or TrainData, got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty")
    xs, ks, ms, rs, maps, gs, meta = [], [], [], [], [], [], []
    for i in range(n):
        s = dataset[i]
        for f in ("zero_filled", "kspace", "mask", "reference"):
            if _field(s, f) is None:
                raise ValueError(f"{name}: sample {i} has no field {f!r} (expected mrtl.data.Sample fields)")
        xs.append(_to_complex(_field(s, "zero_filled"), "zero_filled"))
        ks.append(_to_complex(_field(s, "kspace"), "kspace"))
        ms.append(torch.as_tensor(_field(s, "mask")).to(torch.bool))
        rs.append(_to_complex(_field(s, "reference"), "reference"))
        mp = _field(s, "maps")
        maps.append(None if mp is None or mp.shape[0] == 0 else _to_complex(mp, "maps"))  # (0, H, W): single-coil
        g = _field(s, "G_img")
        gs.append(None if g is None else _to_complex(g, "G_img"))
        meta.append({"index": i, "subject": _field(s, "subject"), "source": _field(s, "source")})
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"{name}: all images must have one size, got {sorted(shapes)}")
    for i in range(n):  # per sample, so that the error names the sample and the field
        H, W = xs[i].shape[-2:]
        for nm, t in (("kspace", ks[i]), ("mask", ms[i]), ("reference", rs[i]), ("maps", maps[i])):
            if t is not None and tuple(t.shape[-2:]) != (H, W):
                raise ValueError(f"{name}: sample {i} has {nm} of size {tuple(t.shape[-2:])} but zero_filled of size {(H, W)}; expected equal sizes")
        if tuple(rs[i].shape) != tuple(xs[i].shape):
            raise ValueError(f"{name}: sample {i} has reference of shape {tuple(rs[i].shape)} but zero_filled {tuple(xs[i].shape)}")
        if maps[i] is not None and tuple(maps[i].shape) != tuple(ks[i].shape):
            raise ValueError(f"{name}: sample {i} has maps of shape {tuple(maps[i].shape)} but kspace {tuple(ks[i].shape)}; expected one map per coil")
    if len({tuple(k.shape) for k in ks}) != 1:
        raise ValueError(f"{name}: all samples must have one k-space shape, got {sorted({tuple(k.shape) for k in ks})}")
    x_u, kspace, mask, ref = torch.stack(xs), torch.stack(ks), torch.stack(ms), torch.stack(rs)
    if mask.ndim == 2:
        mask = mask[None].expand(n, -1, -1)
    maps_t = None if any(m is None for m in maps) else torch.stack(maps)
    G = None if any(g is None for g in gs) else torch.stack(gs)
    if kspace.ndim == 4 and G is None and cc:
        G = _calibrate_G(kspace, mask)
    data = TrainData(x_u, kspace, mask, ref, maps_t, G, meta)
    _check_finite_data(data, name)
    return data


def _check_finite_data(data: TrainData, name: str):
    """Refuse NaN/Inf in any field: one such sample makes the loss, and then every weight, NaN."""
    for nm, t in (("zero_filled", data.x_u), ("kspace", data.kspace), ("reference", data.reference),
                  ("maps", data.maps), ("G_img", data.G_img)):
        if t is None or not (t.is_floating_point() or t.is_complex()):
            continue
        ok = torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(f"{name}: {nm} of sample {bad} contains NaN/Inf values ({int((~ok).sum())} of "
                             f"{t.shape[0]} samples affected); expected finite data")


def _p99(images: torch.Tensor, chunk: int = 2**22) -> torch.Tensor:
    """99th percentile of ``|image|`` per image ``(B,)`` (float32), in chunks of images
    (``torch.quantile`` refuses inputs above 2**24 elements)."""
    mags = images.abs().flatten(1)
    per = max(1, chunk // max(1, mags.shape[1]))
    return torch.cat([torch.quantile(mags[s : s + per].float(), 0.99, dim=1) for s in range(0, mags.shape[0], per)])


def _input_p99(data: TrainData) -> float:
    """The median over samples of the 99th percentile of ``|x_u|``: the input scale the network
    was trained at, which :func:`reconstruct` restores (``mrtl.data`` normalises the *reference*
    so its 99th percentile is 1; the zero-filled input's is lower, e.g. about 0.91 for the
    bundled T1 slices at R = 4 and 0.83 at R = 8)."""
    return float(torch.quantile(_p99(data.x_u).double(), 0.5))


def _check_compatible(model: Cascade, data: TrainData, name: str):
    multi = data.kspace.ndim == 4
    if multi != (model.coils == "multi"):
        raise ValueError(
            f"{name}: {'multi' if multi else 'single'}-coil data (kspace {tuple(data.kspace.shape)}) "
            f"given to a {model.coils}-coil cascade"
        )
    if multi and data.maps is None:
        raise ValueError(f"{name}: multi-coil samples need coil maps (Sample.maps)")


# ----------------------------------------------------------------------------------------------
# loss, distributed helpers, RNG state


def hybrid_loss(output: torch.Tensor, reference: torch.Tensor, coils: str = "single", reduction: str = "mean") -> torch.Tensor:
    """Eq. 5 without the weight penalty: MSE + MAE (per-pixel means).

    Single-coil compares magnitudes (the network outputs a magnitude image); multi-coil compares
    real and imaginary parts. ``reduction="none"`` returns one value per image ``(B,)``.
    """
    if coils == "single":
        d = output.abs() - reference.abs()
    else:
        d = torch.view_as_real(output - reference.to(output.dtype))
    d = d.reshape(d.shape[0], -1).float()
    per = (d * d).mean(dim=1) + d.abs().mean(dim=1)
    return per if reduction == "none" else per.mean()


def _dist_info():
    """(rank, world_size), initialising the process group from torchrun's env vars if needed."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MRTL_DDP_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def _ddp_device(device):
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def _rng_state() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py[0], list(py[1]), py[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _epoch_order(n: int, seed: int, phase: str, stage: int, epoch: int) -> torch.Tensor:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + {"pretrain": 1, "finetune": 2}[phase] * 10_007 + stage * 101 + epoch) % (2**63))
    return torch.randperm(n, generator=g)


# ----------------------------------------------------------------------------------------------
# checkpoints


def _canonical(obj):
    """``obj`` with every string interned, so that equal content pickles to equal bytes: pickle
    refers back to a string it has already written only when it is the *same* object, and the
    strings of a resumed run (read back from a checkpoint) are other objects than the literals
    of an uninterrupted run. This makes checkpoints of a resumed run bit-identical."""
    import sys

    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):  # dict or OrderedDict (a state_dict, with its _metadata)
        out = type(obj)((_canonical(k), _canonical(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = _canonical(obj._metadata)
        return out
    if isinstance(obj, list):
        return [_canonical(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_canonical(v) for v in obj)
    return obj


def _save_torch(obj, path) -> Path:
    """Atomic ``torch.save`` of a canonical copy of ``obj`` (see :func:`_canonical`)."""
    return atomic_save_torch(_canonical(obj), path)


def _model_state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_model(model: Cascade, path, image_shape=None, extra: Optional[dict] = None) -> Path:
    """Write a model-only checkpoint (architecture + weights) atomically."""
    obj = {"format": CKPT_FORMAT, "arch": model.config(), "model": model.state_dict(),
           "image_shape": list(image_shape) if image_shape is not None else getattr(model, "image_shape", None),
           "input_p99": getattr(model, "input_p99", None)}
    if extra:
        obj.update(extra)
    return _save_torch(obj, path)


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)`` with clear errors for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: {str(path)!r} does not exist; train a model first (mrtl train) or give the right path")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CKPT_FORMAT or "arch" not in ckpt:
        raise ValueError(f"checkpoint: {str(path)!r} is not an mrtl cascade checkpoint (format {CKPT_FORMAT!r})")
    _check_arch_bounds(ckpt, path)
    _check_finite_weights(ckpt, path)
    return ckpt


def _check_arch_bounds(ckpt: dict, path=None):
    """Refuse architecture metadata outside :data:`ARCH_LIMITS` or with unknown keys, before any
    model is built."""
    import inspect

    where = "the checkpoint" if path is None else repr(str(path))
    arch = ckpt.get("arch")
    if not isinstance(arch, Mapping):
        raise ValueError(f"checkpoint: {where} has no architecture ('arch'); it is not an mrtl cascade checkpoint")
    valid = set(inspect.signature(Cascade).parameters) - {"seed"}
    unknown = sorted(set(arch) - valid)
    if unknown:
        raise ValueError(f"checkpoint: {where} has unknown architecture keys {unknown}; valid keys: {sorted(valid)}")
    for key, high in ARCH_LIMITS.items():
        v = arch.get(key)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not (0 <= v <= high):
            raise ValueError(f"checkpoint: {where} claims {key}={v!r}, outside the supported range [0, {high}] "
                             f"(mrtl.train.ARCH_LIMITS); the file is corrupt or not written by mrtl")


def _check_finite_weights(ckpt: dict, path=None):
    """Refuse a checkpoint whose weights hold NaN/Inf (a diverged run): every image it made
    would be NaN."""
    sd = ckpt.get("model")
    if not isinstance(sd, Mapping):
        raise ValueError(f"checkpoint: {str(path)!r} has no model weights")
    bad = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        where = "the checkpoint" if path is None else repr(str(path))
        raise ValueError(f"checkpoint: {where} holds non-finite (NaN/Inf) weights in {len(bad)} tensor(s), e.g. "
                         f"{bad[0]!r}: it comes from a diverged run; retrain (e.g. with a lower lr) instead of using it")


def load_model(path, map_location="cpu") -> Cascade:
    """Rebuild a :class:`~mrtl.models.Cascade` from a checkpoint written by this module."""
    return model_from_checkpoint(load_checkpoint(path, map_location))


def model_from_checkpoint(ckpt: dict) -> Cascade:
    """Rebuild a :class:`~mrtl.models.Cascade` from a checkpoint already read by :func:`load_checkpoint`."""
    _check_arch_bounds(ckpt)
    _check_finite_weights(ckpt)
    model = Cascade(**ckpt["arch"])
    model.load_state_dict(ckpt["model"])
    model.image_shape = tuple(ckpt["image_shape"]) if ckpt.get("image_shape") else None
    p99 = ckpt.get("input_p99")
    model.input_p99 = float(p99) if isinstance(p99, (int, float)) and np.isfinite(p99) and p99 > 0 else None
    return model


def _check_arch(model: Cascade, ckpt: dict, path):
    a, b = ckpt.get("arch", {}), model.config()
    diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if diff:
        desc = ", ".join(f"{k}: checkpoint {v[0]!r} vs model {v[1]!r}" for k, v in sorted(diff.items()))
        raise ValueError(f"checkpoint: {str(path)!r} holds a different architecture ({desc})")


# ----------------------------------------------------------------------------------------------
# the generic loop


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
            state = m._stage(self.p, x_in, kspace, mask, maps, G_img)
        return m.output(state, maps)


def _psnr_batch(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR on magnitudes with data range = max - min of the reference (the mrtl.metrics rule)."""
    a, b = out.abs().flatten(1).double(), ref.abs().flatten(1).double()
    mse = ((a - b) ** 2).mean(1)
    rng = b.max(1).values - b.min(1).values
    return 10 * torch.log10(rng**2 / mse.clamp_min(1e-30))


def _inputs(model: Cascade, data: TrainData, idx, state=None):
    b = data.batch(idx)
    x_in = state[idx] if state is not None else b["x_u"]
    return x_in, b


def _score(select_on: str, val_loss: float, val_psnr: float, train_loss: float, has_val: bool) -> float:
    """The model-selection score of an epoch, lower is better: the validation loss, minus the
    validation PSNR (``select_on="psnr"``), or the training loss when there is no validation set."""
    if not has_val:
        return train_loss
    return -val_psnr if select_on == "psnr" else val_loss


def _criterion(select_on: str, has_val: bool) -> str:
    return ("val_psnr" if select_on == "psnr" else "val_loss") if has_val else "train_loss"


def _phase_summary(history, phase, stage, epochs, patience, select_on, has_val, best, stopped) -> dict:
    """Per phase/stage record: budget, stopping rule, best and stop epochs, learning curves."""
    rows = [h for h in history if h.get("phase") == phase and h.get("stage") == stage]
    crit = _criterion(select_on, has_val)
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


def _run_phase(
    *, model: Cascade, phase: str, stage: int, epochs: int, train: TrainData, val: Optional[TrainData],
    train_state, val_state, lr, betas, weight_decay, batch_size, seed, device, out_dir, resume_ckpt,
    history, log_every, callback, select_best, rank, world, extra_ckpt, progress_bar, patience=None,
    select_on="loss",
):
    """Train stage ``stage`` (or all, ``stage=0`` in fine-tuning) for at most ``epochs`` epochs.

    Early stopping: with ``patience`` set, stop once the selection score (``_score``) has not
    improved (strictly) for ``patience`` epochs, i.e. after epoch ``best_epoch + patience``.
    The best epoch and its weights live in the per-epoch checkpoint, so the number of epochs
    since the best one (the patience counter) survives a resume.

    Returns:
        ``(best, summary)``: the best epoch's record (None when nothing was scored) and the
        :func:`_phase_summary` of the phase.
    """
    p = None if phase == "finetune" else stage
    params = [q for q in (model.parameters() if p is None else model.stage_parameters(p))]
    for q in model.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    module = _StageModule(model, p)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.Adam(params, lr=lr, betas=tuple(betas), weight_decay=2.0 * weight_decay)
    coils = model.coils
    has_val = val is not None
    start_epoch, best = 0, None
    if resume_ckpt is not None:
        opt.load_state_dict(resume_ckpt["optimizer"])
        for g in opt.param_groups:  # the arguments of this call, not those saved (e.g. a lower lr after divergence)
            g.update(lr=lr, betas=tuple(betas), weight_decay=2.0 * weight_decay)
        start_epoch = int(resume_ckpt["epoch"])
        best = resume_ckpt.get("best")
        if best is not None and "metric" not in best:  # a checkpoint from before early stopping
            best = dict(best, metric=best["val_loss"], score=best["val_loss"])
        _set_rng_state(resume_ckpt["rng"])

    def evaluate_val():
        if val is None:
            return float("nan"), float("nan")
        model.eval()
        losses, psnrs = [], []
        with torch.no_grad():
            for s in range(0, len(val), batch_size):
                idx = torch.arange(s, min(s + batch_size, len(val)), device=val.x_u.device)
                x_in, b = _inputs(model, val, idx, val_state)
                out = _StageModule(model, p)(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
                losses.append(hybrid_loss(out, b["reference"], coils, reduction="none"))
                psnrs.append(_psnr_batch(out, b["reference"]))
        model.train()
        return float(torch.cat(losses).mean()), float(torch.cat(psnrs).mean())

    stage_params = (lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}) if p is None else (
        lambda: {k: v.detach().clone() for k, v in model.subnets[p - 1].state_dict().items()}
        | {"dc." + k: v.detach().clone() for k, v in model.dcs[p - 1].state_dict().items()}
    )

    def restore(sd):
        if p is None:
            model.load_state_dict(sd)
        else:
            model.subnets[p - 1].load_state_dict({k: v for k, v in sd.items() if not k.startswith("dc.")})
            model.dcs[p - 1].load_state_dict({k[3:]: v for k, v in sd.items() if k.startswith("dc.")})

    crit = _criterion(select_on, has_val)

    def record(epoch, tl, vl, vp):
        """The best-epoch record if epoch ``epoch`` improves (strictly) on the best so far."""
        score = _score(select_on, vl, vp, tl, has_val)
        if score != score:  # NaN never improves
            return None
        if best is None or score < best["score"]:
            metric = {"val_psnr": vp, "val_loss": vl, "train_loss": tl}[crit]
            return {"score": score, "metric": metric, "val_loss": vl if has_val else tl, "val_psnr": vp,
                    "epoch": epoch, "state": stage_params()}
        return None

    initial_state = stage_params()
    ckpt_path = None if out_dir is None else Path(out_dir) / f"checkpoint_{phase}.pt"

    def starting_point():
        """(validation PSNR, training loss) of the phase's starting point, for the divergence guard."""
        vp0 = float("nan")
        if val is not None:
            with torch.no_grad():
                if p is None:
                    vp0 = evaluate_val()[1]
                else:  # the stage input u_{p-1} (cached prefix or recomputed)
                    ps = []
                    for s in range(0, len(val), batch_size):
                        idx = torch.arange(s, min(s + batch_size, len(val)), device=val.x_u.device)
                        x_in, b = _inputs(model, val, idx, val_state)
                        ps.append(_psnr_batch(model.output(x_in, b["maps"]), b["reference"]))
                    vp0 = float(torch.cat(ps).mean())
            return vp0, float("nan")
        tl0, cnt0 = 0.0, 0
        model.eval()
        with torch.no_grad():
            for s in range(0, n, batch_size):
                idx = torch.arange(s, min(s + batch_size, n), device=train.x_u.device)
                x_in, b = _inputs(model, train, idx, train_state)
                out = model.output(x_in, b["maps"]) if p is not None else _StageModule(model, None)(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
                per = hybrid_loss(out, b["reference"], coils, reduction="none")
                tl0, cnt0 = tl0 + float(per.sum()), cnt0 + per.numel()
        model.train()
        return float("nan"), tl0 / max(cnt0, 1)

    def diverged(epoch, why):
        """Put back the best (else the starting) weights and stop with a message naming the
        phase, stage, epoch and the checkpoint kept."""
        restore(best["state"] if best is not None else initial_state)
        for q in model.parameters():
            q.requires_grad_(True)
        where = f"{phase}" + (f" stage {stage}" if p is not None else "") + f", epoch {epoch}/{epochs}"
        if ckpt_path is None:
            kept = "nothing is saved (no out_dir)"
        elif ckpt_path.is_file():
            try:
                ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
                at = f"{ck['phase']}" + (f" stage {ck['stage']}" if ck["phase"] == "pretrain" else "") + f" epoch {ck['epoch']}"
            except Exception:  # noqa: BLE001 - only for the message
                at = "unreadable"
            kept = f"the last good checkpoint ({at}) is kept in {str(ckpt_path)!r} and a rerun resumes from it"
        else:
            kept = f"no checkpoint of this phase was written yet in {str(out_dir)!r}"
        raise TrainingDiverged(f"training diverged in {where}: {why}; {kept}. Lower the learning rate (lr={lr:g})")

    n = len(train)
    if resume_ckpt is not None and resume_ckpt.get("divergence_base") is not None:
        base_psnr, base_loss = resume_ckpt["divergence_base"]  # measured before the interruption
    else:
        base_psnr, base_loss = starting_point()

    if phase == "finetune" and start_epoch == 0 and resume_ckpt is None:
        vl, vp = evaluate_val()
        history.append(dict(phase=phase, stage=stage, epoch=0, train_loss=float("nan"), val_loss=vl, val_psnr=vp,
                            lr=lr, seconds=0.0, images_per_s=float("nan")))
        # without a validation set there is no epoch-0 score (the training loss of epoch 0 does
        # not exist), so selection starts at epoch 1; a NaN "best" would never be beaten and
        # select_best would silently undo the whole fine-tuning
        if has_val:
            best = record(0, float("nan"), vl, vp)
        _write_logs(out_dir, phase, history, rank)

    def stop_now(done_epochs):
        return patience is not None and best is not None and done_epochs - int(best["epoch"]) >= patience

    model.train()
    epoch = start_epoch
    while epoch < epochs and not stop_now(epoch):
        order = _epoch_order(n, seed, phase, stage, epoch).to(train.x_u.device)
        t0 = time.perf_counter()
        tot, cnt = torch.zeros((), device=device), 0
        batches = range(0, n, batch_size)
        for bi, s in enumerate(progress(batches, desc=f"{phase} stage {stage} epoch {epoch + 1}/{epochs}", enable=progress_bar and rank == 0)):
            idx_global = order[s : s + batch_size]
            n_global = idx_global.numel()
            idx = torch.tensor_split(idx_global, world)[rank] if world > 1 else idx_global
            x_in, b = _inputs(model, train, idx, train_state)
            out = module(x_in, b["kspace"], b["mask"], b["maps"], b["G_img"])
            per = hybrid_loss(out, b["reference"], coils, reduction="none")
            loss = per.sum() * (world / n_global)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += per.detach().sum()
            cnt += per.numel()
            if callback is not None:
                callback(dict(phase=phase, stage=stage, epoch=epoch, step=bi, loss=float(per.detach().mean()) if per.numel() else float("nan")))
        train_loss = float(tot) / max(cnt, 1)
        if world > 1:
            import torch.distributed as dist

            t = torch.tensor([float(tot), float(cnt)], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            train_loss = float(t[0] / t[1].clamp_min(1))
        secs = time.perf_counter() - t0
        if not np.isfinite(train_loss):
            diverged(epoch + 1, f"the training loss is {train_loss}")
        if not bool(torch.stack([q.detach().isfinite().all() for q in params]).all()):
            diverged(epoch + 1, "the weights hold NaN/Inf values")
        vl, vp = evaluate_val()
        if val is not None:
            if not (np.isfinite(vl) and np.isfinite(vp)):
                diverged(epoch + 1, f"the validation loss is {vl} (PSNR {vp} dB)")
            if vp < base_psnr - DIVERGENCE_DB:
                diverged(epoch + 1, f"the validation PSNR fell to {vp:.1f} dB, more than {DIVERGENCE_DB:g} dB below "
                                    f"the {base_psnr:.1f} dB of the {'stage input' if p is not None else 'model before fine-tuning'}")
        elif train_loss > base_loss * 10 ** (DIVERGENCE_DB / 10):
            diverged(epoch + 1, f"the training loss rose to {train_loss:.3g}, over {10 ** (DIVERGENCE_DB / 10):g} times "
                                f"the {base_loss:.3g} of the {'stage input' if p is not None else 'model before fine-tuning'}")
        epoch += 1
        history.append(dict(phase=phase, stage=stage, epoch=epoch, train_loss=train_loss, val_loss=vl, val_psnr=vp,
                            lr=lr, seconds=round(secs, 4), images_per_s=round(n / secs, 3) if secs > 0 else float("nan")))
        new = record(epoch, train_loss, vl, vp)
        if new is not None:
            best = new
        if out_dir is not None and rank == 0:
            # the logs first, the checkpoint last: the checkpoint is the commit point of the
            # epoch (a kill between the two redoes the epoch and rewrites the same logs)
            _write_logs(out_dir, phase, history, rank)
            ckpt = {
                "format": CKPT_FORMAT, "arch": model.config(), "model": _model_state(model), "optimizer": opt.state_dict(),
                "rng": _rng_state(), "phase": phase, "stage": stage, "epoch": epoch, "epochs": epochs, "best": best,
                "since_best": None if best is None else epoch - int(best["epoch"]), "patience": patience,
                "select_on": crit, "history": history, "image_shape": list(train.shape), "complete": False,
                "divergence_base": [base_psnr, base_loss],
            }
            ckpt.update(extra_ckpt)
            _save_torch(ckpt, Path(out_dir) / f"checkpoint_{phase}.pt")
        if log_every and rank == 0 and epoch % log_every == 0 and not os.environ.get("MRTL_QUIET"):
            print(f"[{phase} stage {stage}] epoch {epoch}/{epochs}: train {train_loss:.5f} val {vl:.5f} PSNR {vp:.2f} dB")
    stopped = epoch
    if log_every and rank == 0 and not os.environ.get("MRTL_QUIET") and best is not None:
        why = f"no {crit} improvement for {patience} epochs" if stop_now(stopped) and stopped < epochs else "budget reached"
        print(f"[{phase} stage {stage}] stopped after epoch {stopped}/{epochs} ({why}); best epoch {best['epoch']} "
              f"({crit} {best['metric']:.5g})")
    if select_best and best is not None:
        restore(best["state"])
    for q in model.parameters():
        q.requires_grad_(True)
    summary = _phase_summary(history, phase, stage, epochs, patience, select_on, has_val, best, stopped)
    return best, summary


def _write_logs(out_dir, phase, history, rank):
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


def _common_setup(model, device, amp, tf32, seed):
    if not isinstance(model, Cascade):
        raise TypeError(f"model: expected mrtl.models.Cascade, got {type(model).__name__}")
    check_int(seed, "seed")
    device = _ddp_device(get_device(device))
    rank, world = _dist_info()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
        torch.backends.cudnn.allow_tf32 = bool(tf32)
        torch.backends.cudnn.benchmark = True
    model.to(device)
    model.autocast_dtype = torch.bfloat16 if amp else None  # CUDA and CPU alike (one code path)
    return device, rank, world


def _load_resume(out_dir, phase, model, resume):
    if not resume or out_dir is None:
        return None
    path = Path(out_dir) / f"checkpoint_{phase}.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    _check_arch(model, ckpt, path)
    return ckpt


def _batched(model_fn, n, bs, device):
    for s in range(0, n, bs):
        yield torch.arange(s, min(s + bs, n), device=device)


def _compute_prefix(model: Cascade, data: TrainData, upto: int, batch_size: int) -> torch.Tensor:
    """``u_upto`` for every sample, with the frozen stages ``1..upto`` (run once per stage)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for idx in _batched(None, len(data), batch_size, data.x_u.device):
            b = data.batch(idx)
            outs.append(model.prefix(b["x_u"], b["kspace"], b["mask"], b["maps"], b["G_img"], upto=upto, validate=False))
    model.train()
    return torch.cat(outs)


# ----------------------------------------------------------------------------------------------
# public API

TRAIN_KEYS = (
    "epochs_per_subnet", "lr", "betas", "weight_decay", "batch_size", "device", "amp", "tf32", "out_dir", "resume",
    "seed", "cache_prefix", "select_best", "patience", "select_on", "log_every", "progress_bar", "stages",
    "resample_masks",
)
FINETUNE_KEYS = (
    "epochs", "lr", "betas", "weight_decay", "batch_size", "device", "amp", "tf32", "out_dir", "resume", "seed",
    "select_best", "patience", "select_on", "log_every", "progress_bar",
)


def _check_hparams(lr, betas, weight_decay, batch_size):
    check_float(lr, "lr", low=0.0, low_open=True)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise ValueError(f"betas: expected a pair (beta1, beta2), got {betas!r}")
    for i, b in enumerate(betas):
        check_float(b, f"betas[{i}]", low=0.0, high=1.0)
    check_float(weight_decay, "weight_decay", low=0.0)
    check_int(batch_size, "batch_size", low=1)


def _check_stopping(patience, select_on, has_val):
    from ._validate import check_choice

    if patience is not None:
        patience = check_int(patience, "patience", low=1)
    check_choice(select_on, "select_on", ("loss", "psnr"))
    if select_on == "psnr" and not has_val:
        raise ValueError("select_on: 'psnr' selects epochs by validation PSNR and needs a val_set; "
                         "give val_set or use select_on='loss' (training loss without a validation set)")
    return patience


def _write_summary(out_dir, phase, summaries, rank):
    """``summary_<phase>.json``: per stage, the budget, stopping rule, best and stop epochs and the
    learning curves (validation PSNR/loss and training loss per epoch)."""
    if out_dir is None or rank != 0:
        return
    atomic_write_text(Path(out_dir) / f"summary_{phase}.json", json.dumps(summaries, indent=1, default=float))


def train_sequential(
    model: Cascade,
    train_set,
    val_set=None,
    epochs_per_subnet: int = _PT["epochs_per_subnet"],
    lr: float = _PT["lr"],
    betas: Sequence[float] = _PT["betas"],
    weight_decay: float = _PT["weight_decay"],
    batch_size: int = _PT["batch_size"],
    device=None,
    amp: bool = False,
    tf32: bool = True,
    out_dir=None,
    resume: bool = True,
    seed: int = 0,
    cache_prefix: bool = True,
    select_best: bool = True,
    patience: Optional[int] = None,
    select_on: str = "loss",
    log_every: int = 0,
    progress_bar: bool = True,
    stages: Optional[Sequence[int]] = None,
    resample_masks: bool = True,
    callback: Optional[Callable[[dict], None]] = None,
) -> dict:
    """Sequential training of the subnetworks (Eq. 11): subnetwork p is trained with 1..p-1 frozen.

    Args:
        model: the :class:`~mrtl.models.Cascade` (trained in place).
        train_set: training samples (``mrtl.data.UndersampledDataset``, any sequence of
            ``Sample``-like records, or :class:`TrainData`).
        val_set: validation samples (same kinds), or None (model selection by training loss).
        epochs_per_subnet: E, epochs per subnetwork (paper: 20).
        lr: Adam learning rate (paper: 1e-4).
        betas: Adam betas (paper: 0.9, 0.999).
        weight_decay: gamma of Eq. 5/11 (paper: 1e-6), penalty ``gamma ||theta_p||^2``.
        batch_size: global batch size (paper: 50).
        device: "cpu", "cuda", None (auto).
        amp: bf16 autocast of the subnetworks (DC/CC stay in float32): for speed on CUDA; the
            same path runs on CPU (slower there, but it is how tests exercise it without a GPU).
        tf32: allow TF32 matmuls/convolutions on CUDA.
        out_dir: folder for checkpoints and logs (None: nothing written, no resume).
        resume: continue from ``out_dir/checkpoint_pretrain.pt`` if present.
        seed: seeds the batch order (and the global RNGs).
        cache_prefix: cache the frozen prefix output once per stage (False recomputes it every
            batch; same result, slower).
        select_best: keep each stage's best epoch (by ``select_on``; the lowest training loss
            without a validation set).
        patience: early stopping: end a stage once its selection score has not improved for
            ``patience`` consecutive epochs (so it stops after epoch ``best + patience``);
            ``epochs_per_subnet`` is then the maximum budget. None: always run every epoch.
        select_on: ``"loss"`` (validation loss, Eq. 5) or ``"psnr"`` (validation PSNR, needs
            ``val_set``): the score that picks the best epoch and drives ``patience``.
        log_every: print a line every this many epochs (0: never).
        progress_bar: show tqdm bars (also silenced by ``MRTL_QUIET=1``).
        stages: train only these stages (1-based; default all).
        resample_masks: when ``train_set`` has ``set_epoch`` (``UndersampledDataset``), call
            ``set_epoch(p - 1)`` before stage p, so each stage draws new masks from the bank
            (masks stay fixed within a stage, which the prefix cache needs).
        callback: called after every optimisation step with a dict (phase, stage, epoch, step,
            loss); raising from it interrupts training (used to test resume).

    Returns:
        ``{"history": [per-epoch rows], "best": {stage: (epoch, score)}, "stages": {stage: summary},
        "out_dir": ...}``: ``score`` is the selection criterion at the best epoch (validation
        loss, validation PSNR in dB, or training loss without validation). Each summary holds
        ``max_epochs, patience, select_on, best_epoch, best_score, stopped_epoch,
        early_stopped`` and the learning curves ``epochs, val_psnr, val_loss, train_loss``; the
        same list is written to ``summary_pretrain.json``.
    """
    device, rank, world = _common_setup(model, device, amp, tf32, seed)
    epochs_per_subnet = check_int(epochs_per_subnet, "epochs_per_subnet", low=0)
    _check_hparams(lr, betas, weight_decay, batch_size)
    patience = _check_stopping(patience, select_on, val_set is not None)
    stages = list(range(1, model.n_subnets + 1)) if stages is None else [model._check_p(s) for s in stages]
    train = as_train_data(train_set, name="train_set").to(device)
    val = None if val_set is None else as_train_data(val_set, name="val_set").to(device)
    _check_compatible(model, train, "train_set")
    if val is not None:
        _check_compatible(model, val, "val_set")
        if val.shape != train.shape:
            raise ValueError(f"val_set: image size {val.shape} differs from train_set's {train.shape}")
    model.input_p99 = _input_p99(train)  # saved with the model; reconstruct() scales inputs to it
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ck = _load_resume(out_dir, "pretrain", model, resume)
    history: list = []
    done_stages: set = set()
    resume_stage = None
    summaries: dict = {}
    bests: dict = {}
    if ck is not None:
        # a stage whose epoch loop finished but was not yet marked done gets its best weights
        # restored by _run_phase (its loop has nothing left to run, so only the selection runs)
        model.load_state_dict(ck["model"])
        history = list(ck["history"])
        done_stages = set(ck.get("done_stages", []))
        resume_stage = int(ck["stage"])
        summaries = {int(k): v for k, v in (ck.get("summaries") or {}).items()}
        bests = {int(k): tuple(v) for k, v in (ck.get("bests") or {}).items()}
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    if ck is not None:  # continue the RNG streams where the interrupted run was
        _set_rng_state(ck["rng"])
    for p in stages:
        if p in done_stages:
            continue
        if resample_masks and hasattr(train_set, "set_epoch") and not isinstance(train_set, TrainData):
            # a fresh draw of masks (and augmentation) per stage, fixed within the stage
            train_set.set_epoch(p - 1)
            train = as_train_data(train_set, name="train_set").to(device)
        rc = ck if (ck is not None and resume_stage == p) else None
        if cache_prefix:
            train_state = _compute_prefix(model, train, p - 1, batch_size)
            val_state = None if val is None else _compute_prefix(model, val, p - 1, batch_size)
        else:  # recompute the frozen prefix for every batch (same result, slower)
            train_state = _LazyPrefix(model, train, p - 1)
            val_state = None if val is None else _LazyPrefix(model, val, p - 1)
        best, summ = _run_phase(
            model=model, phase="pretrain", stage=p, epochs=epochs_per_subnet, train=train, val=val,
            train_state=train_state, val_state=val_state, lr=lr, betas=betas, weight_decay=weight_decay,
            batch_size=batch_size, seed=seed, device=device, out_dir=out_dir, resume_ckpt=rc, history=history,
            log_every=log_every, callback=callback, select_best=select_best, rank=rank, world=world,
            extra_ckpt={"done_stages": sorted(done_stages), "summaries": dict(summaries), "bests": dict(bests)},
            progress_bar=progress_bar, patience=patience, select_on=select_on,
        )
        done_stages.add(p)
        summaries[p] = summ
        if best is not None:
            bests[p] = (best["epoch"], best["metric"])
        if out_dir is not None and rank == 0:
            # everything derived from the stage first (model file, logs, summary), then the
            # checkpoint that marks the stage done (with its best weights restored), so that a
            # kill between these writes redoes only the selection and rewrites the same files
            save_model(model, Path(out_dir) / "best_pretrain.pt", image_shape=train.shape)
            _write_logs(out_dir, "pretrain", history, rank)
            _write_summary(out_dir, "pretrain", [summaries[k] for k in sorted(summaries)], rank)
            ckpt = {"format": CKPT_FORMAT, "arch": model.config(), "model": _model_state(model), "optimizer": {},
                    "rng": _rng_state(), "phase": "pretrain", "stage": p, "epoch": summ["stopped_epoch"],
                    "epochs": epochs_per_subnet, "best": None, "history": history, "image_shape": list(train.shape),
                    "done_stages": sorted(done_stages), "summaries": dict(summaries), "bests": dict(bests),
                    "complete": done_stages >= set(stages)}
            _save_torch(ckpt, Path(out_dir) / "checkpoint_pretrain.pt")
    model.image_shape = train.shape
    _barrier(world)
    return {"history": history, "best": bests, "stages": {k: summaries[k] for k in sorted(summaries)},
            "out_dir": None if out_dir is None else str(out_dir)}


class _LazyPrefix:
    """Indexable stand-in for a cached prefix that recomputes it per batch (``cache_prefix=False``)."""

    def __init__(self, model, data, upto):
        self.model, self.data, self.upto = model, data, upto

    def __getitem__(self, idx):
        b = self.data.batch(idx)
        with torch.no_grad():
            return self.model.prefix(b["x_u"], b["kspace"], b["mask"], b["maps"], b["G_img"], upto=self.upto, validate=False)


def _barrier(world):
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def finetune(
    model: Cascade,
    tune_set,
    val_set=None,
    epochs: int = _PF["epochs"],
    lr: float = _PF["lr"],
    betas: Sequence[float] = _PF["betas"],
    weight_decay: float = _PF["weight_decay"],
    batch_size: int = _PF["batch_size"],
    device=None,
    amp: bool = False,
    tf32: bool = True,
    out_dir=None,
    resume: bool = True,
    seed: int = 0,
    select_best: bool = True,
    patience: Optional[int] = None,
    select_on: str = "loss",
    log_every: int = 0,
    progress_bar: bool = True,
    callback: Optional[Callable[[dict], None]] = None,
) -> dict:
    """End-to-end fine-tuning through all subnetworks and DC/CC layers (Eq. 16-17 gradients).

    Args:
        model: a (pre)trained :class:`~mrtl.models.Cascade`, tuned in place.
        tune_set: the Ntune target-domain samples.
        val_set: target-domain validation samples (or None).
        epochs: fine-tuning epochs (paper: 100); the maximum budget when ``patience`` is set.
        lr: Adam learning rate (paper: 1e-5).
        patience, select_on: early stopping and the selection score, as :func:`train_sequential`;
            with a validation set, epoch 0 (the weights before fine-tuning) is a candidate.
        Other arguments: as :func:`train_sequential` (files are ``*_finetune.*``).

    Returns:
        ``{"history": rows (epoch 0 = before fine-tuning), "best": (epoch, score), "summary":
        {...}, "out_dir"}`` with ``score`` and the summary as in :func:`train_sequential`
        (the summary is also written to ``summary_finetune.json`` as a one-element list).
    """
    device, rank, world = _common_setup(model, device, amp, tf32, seed)
    epochs = check_int(epochs, "epochs", low=0)
    _check_hparams(lr, betas, weight_decay, batch_size)
    patience = _check_stopping(patience, select_on, val_set is not None)
    tune = as_train_data(tune_set, name="tune_set").to(device)
    val = None if val_set is None else as_train_data(val_set, name="val_set").to(device)
    _check_compatible(model, tune, "tune_set")
    if val is not None:
        _check_compatible(model, val, "val_set")
    model.input_p99 = _input_p99(tune)  # the target domain's input scale (see train_sequential)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ck = _load_resume(out_dir, "finetune", model, resume)
    history: list = []
    if ck is not None:
        model.load_state_dict(ck["model"])
        history = list(ck["history"])
        if ck.get("complete"):
            model.image_shape = tune.shape
            return {"history": history, "best": None if ck.get("best_result") is None else tuple(ck["best_result"]),
                    "summary": ck.get("summary"), "out_dir": str(out_dir)}
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    best, summ = _run_phase(
        model=model, phase="finetune", stage=0, epochs=epochs, train=tune, val=val, train_state=None, val_state=None,
        lr=lr, betas=betas, weight_decay=weight_decay, batch_size=batch_size, seed=seed, device=device, out_dir=out_dir,
        resume_ckpt=ck, history=history, log_every=log_every, callback=callback, select_best=select_best, rank=rank,
        world=world, extra_ckpt={}, progress_bar=progress_bar, patience=patience, select_on=select_on,
    )
    model.image_shape = tune.shape
    best_result = None if best is None else (best["epoch"], best["metric"])
    if out_dir is not None and rank == 0:
        # derived files first, the completion checkpoint last (see train_sequential)
        save_model(model, Path(out_dir) / "best_finetune.pt", image_shape=tune.shape)
        _write_logs(out_dir, "finetune", history, rank)
        _write_summary(out_dir, "finetune", [summ], rank)
        ckpt = {"format": CKPT_FORMAT, "arch": model.config(), "model": _model_state(model), "optimizer": {},
                "rng": _rng_state(), "phase": "finetune", "stage": 0, "epoch": summ["stopped_epoch"], "epochs": epochs,
                "best": None, "history": history, "image_shape": list(tune.shape), "summary": summ,
                "best_result": best_result, "complete": True}
        _save_torch(ckpt, Path(out_dir) / "checkpoint_finetune.pt")
    _barrier(world)
    return {"history": history, "best": best_result, "summary": summ,
            "out_dir": None if out_dir is None else str(out_dir)}


def evaluate(model: Cascade, dataset, batch_size: int = 32, device=None, progress_bar: bool = False,
             amp: Optional[bool] = None) -> list[dict]:
    """Reconstruct every sample and score it (PSNR, SSIM on magnitudes; ``mrtl.metrics``).

    Args:
        model: a trained cascade.
        dataset: samples (as :func:`train_sequential`).
        batch_size: images per forward pass.
        device: None (auto), "cpu" or "cuda".
        amp: bf16 autocast of the subnetworks (True/False); None keeps the model's setting.

    Returns:
        One dict per image: ``index, subject, source, psnr, ssim, psnr_zf, ssim_zf`` (the last
        two for the zero-filled input).
    """
    from .metrics import psnr, ssim

    batch_size = check_int(batch_size, "batch_size", low=1)
    device = get_device(device)
    data = as_train_data(dataset, name="dataset")
    _check_compatible(model, data, "dataset")
    if amp is not None:
        model.autocast_dtype = torch.bfloat16 if amp else None
    model.to(device).eval()
    records = []
    with torch.no_grad():
        for idx in progress(list(_batched(None, len(data), batch_size, "cpu")), desc="evaluate", enable=progress_bar):
            b = data.batch(idx.to(data.x_u.device))
            bd = {k: (None if v is None else v.to(device)) for k, v in b.items()}
            out = model.output(model.prefix(bd["x_u"], bd["kspace"], bd["mask"], bd["maps"], bd["G_img"], validate=False), bd["maps"]).cpu()
            ref, x_u = b["reference"].cpu(), b["x_u"].cpu()  # TrainData may live on a GPU
            p, s = psnr(out, ref=ref), ssim(out, ref=ref)
            pz, sz = psnr(x_u, ref=ref), ssim(x_u, ref=ref)
            for j, i in enumerate(idx.tolist()):
                m = data.meta[i] if data.meta else {"index": i}
                records.append(dict(index=i, subject=m.get("subject"), source=m.get("source"), psnr=float(p[j]),
                                    ssim=float(s[j]), psnr_zf=float(pz[j]), ssim_zf=float(sz[j])))
    return records


def reconstruct(model: Cascade, kspace, mask, maps=None, G_img=None, batch_size: int = 32, device=None,
                normalize: bool = True, max_pixels: Optional[int] = MAX_RECON_PIXELS,
                amp: Optional[bool] = None) -> torch.Tensor:
    """Reconstruct undersampled k-space with a trained cascade.

    Args:
        model: a trained :class:`~mrtl.models.Cascade`.
        kspace: ``(H, W)``/``(B, H, W)`` single-coil or ``(C, H, W)``/``(B, C, H, W)`` multi-coil,
            centred (``mrtl.fft.fft2c`` convention), complex; values off the mask are ignored.
        mask: ``(H, W)`` or ``(B, H, W)`` boolean.
        maps: coil maps (multi-coil).
        G_img: SPIRiT image-space operator (multi-coil; None: calibrated from ``kspace`` when
            ``mrtl.recon`` is available).
        batch_size: images per forward pass.
        device: None (auto), "cpu" or "cuda".
        normalize: scale each image to the input scale the network was trained at and undo it
            after: the 99th percentile of the zero-filled magnitude is set to ``model.input_p99``
            (the median over the training/tuning set, saved in the checkpoint; 1 for a model
            without it). Training data are normalised so that the *reference's* 99th percentile
            is 1, so the zero-filled input's is below 1 (about 0.91 for T1 at R = 4, 0.83 at
            R = 8); scaling it to 1 instead feeds the network inputs hotter than in training.
            On the bundled T1 test slices (64x64, a small cascade) the measured difference is
            small: this rule is +0.03 dB (R = 4) and +0.06 dB (R = 8) above the training scale,
            the old rule +0.00 dB (``python benchmarks/bench_train.py --normalization``); it is
            the default because it matches what the network saw, not for a large gain.
            False: use the k-space as given (already at the training scale).
        max_pixels: refuse slices with more pixels than this (default :data:`MAX_RECON_PIXELS`,
            2048 x 2048) with an error that estimates the memory needed; None: no limit.
        amp: bf16 autocast of the subnetworks (True/False); None keeps the model's setting.

    Returns:
        Complex image(s) ``(B, H, W)`` (``(H, W)`` for unbatched input), on the CPU.
    """
    from ._validate import check_complex, check_mask

    multi = model.coils == "multi"
    kspace = check_complex(kspace, "kspace", ndim=(3, 4) if multi else (2, 3))
    # everything is prepared on the CPU and moved to ``device`` batch by batch (inputs may live
    # on a GPU: mixing them with the CPU scale/output tensors below would fail)
    kspace = kspace.detach().cpu()
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu()
    if isinstance(G_img, torch.Tensor):
        G_img = G_img.detach().cpu()
    unbatched = kspace.ndim == (3 if multi else 2)
    batch_size = check_int(batch_size, "batch_size", low=1)
    H, W = kspace.shape[-2:]
    if max_pixels is not None and H * W > max_pixels:
        gb = 3 * H * W * model.arch["width"] * 4 / 2**30  # a few float32 activations of width channels
        raise ValueError(f"kspace: slices of {H}x{W} exceed the limit of {max_pixels} pixels (mrtl.train.MAX_RECON_PIXELS); "
                         f"one pass of this cascade needs about {gb:.1f} GB per slice. Crop or resample the data, or pass "
                         f"max_pixels=None to reconstruct anyway")
    if unbatched:
        kspace = kspace[None]
    mask = check_mask(mask, "mask", shape=(kspace.shape[0], *kspace.shape[-2:]))  # (B, H, W), also multi-coil
    if mask.ndim == 2:
        mask = mask[None].expand(kspace.shape[0], -1, -1)
    if multi:
        if maps is None:
            raise ValueError("maps: a multi-coil cascade needs coil maps (C, H, W) or (B, C, H, W)")
        maps = check_complex(maps, "maps", ndim=(3, 4))
        if maps.ndim == 3:
            maps = maps[None].expand(kspace.shape[0], -1, -1, -1)
        if tuple(maps.shape) != tuple(kspace.shape):
            raise ValueError(f"maps: expected shape {tuple(kspace.shape)}, got {tuple(maps.shape)}")
    elif maps is not None:
        raise ValueError("maps: a single-coil cascade takes no coil maps")
    device = get_device(device)
    kspace = kspace.to(torch.complex64) * (mask[:, None] if multi else mask)
    coil_zf = ifft2c(kspace)
    x_u = coil_combine(coil_zf, maps) if multi else coil_zf
    scale = torch.ones(kspace.shape[0])
    if normalize:
        target = getattr(model, "input_p99", None) or 1.0
        scale = (_p99(x_u) / target).clamp_min(1e-12)
    sc = scale.view(-1, *([1] * (kspace.ndim - 1)))
    kspace, x_u = kspace / sc, x_u / scale.view(-1, 1, 1)
    if multi and G_img is None:
        G_img = _calibrate_G(kspace, mask)
    elif G_img is not None:
        G_img = check_complex(G_img, "G_img", ndim=(4, 5))
        if G_img.ndim == 4:
            G_img = G_img[None].expand(kspace.shape[0], -1, -1, -1, -1)
    if amp is not None:
        model.autocast_dtype = torch.bfloat16 if amp else None
    model.to(device).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, kspace.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            mv = lambda t: None if t is None else t[sl].to(device)  # noqa: E731
            outs.append(model(mv(x_u), mv(kspace), mv(mask), mv(maps), mv(G_img)).cpu())
    out = torch.cat(outs) * scale.view(-1, 1, 1)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("reconstruct: the network produced NaN/Inf values for these inputs (finite weights and "
                         "k-space); check that the k-space scale and mask match the training data")
    return out[0] if unbatched else out
