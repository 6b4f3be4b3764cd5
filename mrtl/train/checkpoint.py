"""Checkpoints: model files, per-epoch training checkpoints, RNG state (``CKPT_FORMAT``).

Two kinds of files, one format (a dict saved with ``torch.save`` and read with
``weights_only=True``):

* model files (``best_<phase>.pt``, :func:`save_model`): ``format, arch, model, image_shape,
  input_p99``;
* training checkpoints (``checkpoint_<phase>.pt``, :func:`training_checkpoint`): the same plus
  ``optimizer, rng, phase, stage, epoch, epochs, best, history, complete`` and the keys of the
  phase (per epoch: ``since_best, patience, select_on, divergence_base``; pretraining:
  ``done_stages, summaries, bests``; a finished fine-tuning: ``summary, best_result``).

Every file is written atomically from a canonical copy (:func:`save_torch`), so a resumed run
writes the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import inspect
import random
import sys
from pathlib import Path
from typing import Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from ..models import Cascade
from ..utils import atomic_save_torch, seed_everything

__all__ = ["CKPT_FORMAT", "ARCH_LIMITS", "save_model", "load_checkpoint", "load_model", "model_from_checkpoint",
           "training_checkpoint", "save_torch", "rng_state", "set_rng_state", "seed_all", "load_resume"]

CKPT_FORMAT = "mrtl-cascade-1"

#: Bounds on the architecture a checkpoint may claim (checked before anything is built, so a
#: corrupt or hostile file fails at once instead of allocating GBs for 10**7 subnetworks); far
#: above the paper's 5 x 64 channels x 4 layers.
ARCH_LIMITS = {"n_subnets": 100, "width": 1024, "depth": 100}


# ----------------------------------------------------------------------------------------------
# RNG state and seeding


def rng_state() -> dict:
    """The torch, numpy, python (and CUDA) global RNG states, in a ``weights_only``-loadable form."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": [py[0], list(py[1]), py[2]],
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s: dict):
    """Restore the global RNG states saved by :func:`rng_state`."""
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_all(seed: int, state: Optional[dict] = None) -> None:
    """Seed the torch, numpy and python global RNGs from ``seed`` (:func:`mrtl.utils.seed_everything`,
    the one seeding point of training), then, when resuming, continue the streams where the
    interrupted run was (``state`` from :func:`rng_state`)."""
    seed_everything(seed)
    if state is not None:
        set_rng_state(state)


# ----------------------------------------------------------------------------------------------
# files


def _canonical(obj):
    """``obj`` with every string interned, so that equal content pickles to equal bytes: pickle
    refers back to a string it has already written only when it is the *same* object, and the
    strings of a resumed run (read back from a checkpoint) are other objects than the literals
    of an uninterrupted run. This makes checkpoints of a resumed run bit-identical."""
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


def save_torch(obj, path) -> Path:
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
    return save_torch(obj, path)


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
    model.remember_training_data(image_shape=ckpt.get("image_shape") or None, input_p99=ckpt.get("input_p99"))
    return model


def _check_arch(model: Cascade, ckpt: dict, path):
    a, b = ckpt.get("arch", {}), model.config()
    diff = {k: (a.get(k), b.get(k)) for k in set(a) | set(b) if a.get(k) != b.get(k)}
    if diff:
        desc = ", ".join(f"{k}: checkpoint {v[0]!r} vs model {v[1]!r}" for k, v in sorted(diff.items()))
        raise ValueError(f"checkpoint: {str(path)!r} holds a different architecture ({desc})")


def training_checkpoint(model: Cascade, *, phase: str, stage: int, epoch: int, epochs: int, history: list,
                        image_shape, complete: bool, optimizer: Optional[torch.optim.Optimizer] = None,
                        best: Optional[dict] = None, **extra) -> dict:
    """The training checkpoint (``checkpoint_<phase>.pt``) of ``model`` now: architecture, a copy
    of the weights, the optimizer state (``{}`` at the end of a stage/phase), the global RNG
    states, where training is (phase, stage, epoch of at most ``epochs``), the stage's best epoch
    so far (with its weights), the log and ``extra`` phase-specific keys (see the module doc).
    """
    ckpt = {"format": CKPT_FORMAT, "arch": model.config(), "model": _model_state(model),
            "optimizer": {} if optimizer is None else optimizer.state_dict(), "rng": rng_state(),
            "phase": phase, "stage": stage, "epoch": epoch, "epochs": epochs, "best": best, "history": history,
            "image_shape": list(image_shape), "complete": complete}
    ckpt.update(extra)
    return ckpt


def load_resume(out_dir, phase: str, model: Cascade, resume: bool) -> Optional[dict]:
    """The checkpoint to resume ``phase`` from (``out_dir/checkpoint_<phase>.pt``), or None
    (``resume`` off, no ``out_dir``, no file). A file of another architecture is an error."""
    if not resume or out_dir is None:
        return None
    path = Path(out_dir) / f"checkpoint_{phase}.pt"
    if not path.is_file():
        return None
    ckpt = load_checkpoint(path)
    _check_arch(model, ckpt, path)
    return ckpt
