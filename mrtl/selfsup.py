"""Fine-tuning without fully sampled data: SSDU and zero-shot self-supervised learning (ZS-SSL).

The transfer-learning recipe of Dar et al. (MRM 2020) fine-tunes a pretrained cascade (Eq. 10
single-coil, Eq. 14 multi-coil) with the supervised loss of Eq. 5, which needs fully sampled
target images. This module fine-tunes with the *measurements alone*:

* **SSDU** (Yaman et al., "Self-supervised learning of physics-guided reconstruction neural
  networks without fully sampled reference data", MRM 84:3172-3191, 2020): the acquired
  locations Omega of each slice are split into a data-consistency set Theta and a loss set
  Lambda (``|Lambda| = rho |Omega|``, rho = 0.4, Gaussian or uniform selection, the fully
  sampled calibration region kept in Theta). The network sees only ``y_Theta`` (its DC layers,
  Eq. 7-9 of Dar et al., use Theta) and is trained to predict the held-out ``y_Lambda`` with the
  normalised L1-L2 loss :func:`ssdu_loss`. Several fixed splits per slice ("multi-mask SSDU")
  use the data better. Because Lambda is a random subset of the acquired locations, disjoint
  from Theta, the k-space loss on Lambda is a proxy of the image error that never needs the
  reference.
* **ZS-SSL** (Yaman, Hosseini, Akcakaya, "Zero-shot self-supervised learning for MRI
  reconstruction", ICLR 2022): SSDU on a *single* scan, with a third set Gamma (self-validation)
  held out first: the network is trained on splits of ``Omega \\ Gamma``, the loss on Gamma
  (with ``Omega \\ Gamma`` in DC) decides when to stop (no improvement for ``patience`` epochs,
  the best weights kept), and the final image uses all of Omega in DC. A pretrained network
  (natural images or another contrast) is a transfer-learning initialisation that converges
  faster than a random one.

Nothing here reads a fully sampled reference: :func:`ssdu_finetune` ignores ``TrainData.reference``
(it may be None or NaN), and :func:`zsssl` takes only k-space, mask and maps.

Public API: :func:`split_mask`, :func:`ssdu_loss`, :func:`ssdu_finetune`, :func:`zsssl`,
:func:`shipped_checkpoint`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ._validate import check_choice, check_float, check_int, check_mask
from .data.train_data import TrainData, calibrate_G, percentile99
from .fft import fft2c, ifft2c
from .linops import zero_filled
from .models import Cascade
from .utils import get_device, progress

__all__ = ["split_mask", "ssdu_loss", "ssdu_finetune", "zsssl", "shipped_checkpoint", "detect_calib", "as_unsupervised_data"]

# ----------------------------------------------------------------------------------------------
# splitting the acquired locations


def detect_calib(mask: torch.Tensor) -> int:
    """Side of the largest fully sampled square centred like :func:`mrtl.masks.poisson_disc`'s
    calibration region (``mrtl.masks``: rows ``H//2 - c//2 ...``) in one ``(H, W)`` mask; 0 if
    the centre sample is not acquired."""
    H, W = mask.shape[-2:]
    c = 0
    while c < min(H, W):
        n = c + 1
        r0, c0 = H // 2 - n // 2, W // 2 - n // 2
        if r0 < 0 or c0 < 0 or not bool(mask[r0 : r0 + n, c0 : c0 + n].all()):
            break
        c = n
    return c


def _calib_region(H: int, W: int, c: int, device) -> torch.Tensor:
    reg = torch.zeros(H, W, dtype=torch.bool, device=device)
    if c > 0:
        r0, c0 = H // 2 - c // 2, W // 2 - c // 2
        reg[r0 : r0 + c, c0 : c0 + c] = True
    return reg


def _weights(H: int, W: int, kind: str) -> torch.Tensor:
    if kind == "uniform":
        return torch.ones(H, W, dtype=torch.float64)
    # SSDU's Gaussian selection: density of a 2D Gaussian centred on the k-space centre with
    # standard deviations H/4 and W/4 (Yaman et al. 2020, Methods)
    y = torch.arange(H, dtype=torch.float64) - H // 2
    x = torch.arange(W, dtype=torch.float64) - W // 2
    return torch.exp(-0.5 * ((y[:, None] / (H / 4)) ** 2 + (x[None, :] / (W / 4)) ** 2))


def split_mask(mask, rho: float = 0.4, kind: str = "gaussian", calib: Optional[int] = None,
               generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Partition the acquired k-space locations into a DC set Theta and a loss set Lambda (SSDU,
    Yaman et al., MRM 2020: ``Omega = Theta u Lambda``, disjoint).

    ``round(rho |Omega|)`` locations (at most the acquired ones outside the calibration square)
    are drawn without replacement into Lambda, with probability proportional to a 2D Gaussian
    centred on the k-space centre (standard deviations ``H/4``, ``W/4``; ``kind="gaussian"``) or
    uniformly (``kind="uniform"``); the fully sampled calibration square always stays in Theta,
    so SPIRiT calibration and the low frequencies are in the network's DC layers (Eq. 7-9 of
    Dar et al. 2020).

    Args:
        mask: acquired locations Omega, ``(H, W)`` or ``(B, H, W)`` boolean (or 0/1).
        rho: ``|Lambda| / |Omega|`` in (0, 1) (SSDU: 0.4).
        kind: ``"gaussian"`` or ``"uniform"`` selection.
        calib: side of the centred fully sampled square kept in Theta; None detects it per mask
            (:func:`detect_calib`), 0 keeps nothing.
        generator: a ``torch.Generator``, an int seed, or None (seed 0): the same seed gives
            the same split on every machine (selection runs on the CPU).

    Returns:
        ``(dc_mask, loss_mask)``: boolean tensors of the shape of ``mask`` with
        ``dc_mask | loss_mask == mask`` and ``dc_mask & loss_mask`` empty.
    """
    mask = check_mask(mask, "mask")
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask: expected (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    rho = check_float(rho, "rho", low=0.0, high=1.0, low_open=True)
    if rho >= 1.0:
        raise ValueError(f"rho: expected a fraction in (0, 1) (the DC set must keep samples), got {rho}")
    check_choice(kind, "kind", ("gaussian", "uniform"))
    if generator is None or (isinstance(generator, int) and not isinstance(generator, bool)):
        g = torch.Generator().manual_seed(0 if generator is None else check_int(generator, "generator", low=0))
    elif isinstance(generator, torch.Generator):
        g = generator
    else:
        raise TypeError(f"generator: expected a torch.Generator, an int seed or None, got {type(generator).__name__}")
    batched = mask.ndim == 3
    ms = mask if batched else mask[None]
    H, W = ms.shape[-2:]
    if calib is not None:
        calib = check_int(calib, "calib", low=0, high=min(H, W))
    w = _weights(H, W, kind).flatten()
    dcs, losses = [], []
    for m in ms.cpu():
        c = detect_calib(m) if calib is None else calib
        cand = (m & ~_calib_region(H, W, c, m.device)).flatten()
        n_acq, n_cand = int(m.sum()), int(cand.sum())
        n_loss = min(int(round(rho * n_acq)), n_cand)
        if n_loss < 1:
            raise ValueError(f"mask: only {n_cand} acquired locations lie outside the {c}x{c} calibration square, "
                             f"too few for a loss set of rho={rho} of {n_acq} samples; use a larger rho or calib=0")
        p = torch.where(cand, w, torch.zeros_like(w))
        idx = torch.multinomial(p, n_loss, replacement=False, generator=g)
        loss = torch.zeros(H * W, dtype=torch.bool)
        loss[idx] = True
        loss = loss.view(H, W)
        dcs.append(m & ~loss)
        losses.append(loss)
    dc, lo = torch.stack(dcs).to(mask.device), torch.stack(losses).to(mask.device)
    return (dc, lo) if batched else (dc[0], lo[0])


# ----------------------------------------------------------------------------------------------
# the loss


def ssdu_loss(pred_kspace: torch.Tensor, kspace: torch.Tensor, loss_mask: torch.Tensor,
              reduction: str = "mean", eps: float = 1e-12) -> torch.Tensor:
    """The normalised L1-L2 loss of SSDU (Yaman et al., MRM 2020) on the loss set
    Lambda: ``||y_L - E_L x||_2 / ||y_L||_2 + ||y_L - E_L x||_1 / ||y_L||_1``, per slice.

    Args:
        pred_kspace: the network's k-space ``F x`` (single-coil ``(B, H, W)``) or coil k-space
            ``F S x`` (``(B, C, H, W)``), complex.
        kspace: the measured k-space, same shape.
        loss_mask: Lambda, ``(H, W)`` or ``(B, H, W)`` boolean (broadcast over coils).
        reduction: ``"mean"`` over the batch or ``"none"`` (one value per slice, ``(B,)``).
        eps: guards an empty loss set (the loss is then 0).

    Returns:
        The loss (a scalar, or ``(B,)``).
    """
    check_choice(reduction, "reduction", ("mean", "none"))
    if pred_kspace.shape != kspace.shape:
        raise ValueError(f"pred_kspace: expected the shape of kspace {tuple(kspace.shape)}, got {tuple(pred_kspace.shape)}")
    m = loss_mask.to(kspace.device)
    if m.ndim == 3 and kspace.ndim == 4:
        m = m[:, None]
    m = m.to(torch.float32)
    B = kspace.shape[0]
    y = (kspace * m).reshape(B, -1)
    r = ((kspace - pred_kspace) * m).reshape(B, -1)
    l2 = torch.linalg.vector_norm(r, 2, dim=1) / torch.linalg.vector_norm(y, 2, dim=1).clamp_min(eps)
    l1 = r.abs().sum(dim=1) / y.abs().sum(dim=1).clamp_min(eps)
    per = l2 + l1
    return per if reduction == "none" else per.mean()


# ----------------------------------------------------------------------------------------------
# data without references


def _finite(t, what, name):
    if t is None:
        return
    ok = torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
    if not bool(ok.all()):
        bad = int((~ok).nonzero()[0, 0])
        raise ValueError(f"{name}: {what} of sample {bad} contains NaN/Inf values; expected finite data")


class _NoReference:
    """A dataset view that never hands out the reference (SSDU must not read it)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        s = self.ds[i]
        get = (lambda k: s.get(k)) if isinstance(s, dict) else (lambda k: getattr(s, k, None))
        k, m, maps = get("kspace"), get("mask"), get("maps")
        if k is None or m is None:
            raise ValueError(f"data: sample {i} has no kspace/mask; SSDU needs the undersampled k-space and its mask")
        k = torch.as_tensor(np.asarray(k)) if not isinstance(k, torch.Tensor) else k
        m = torch.as_tensor(np.asarray(m)).to(torch.bool)
        if maps is not None:
            maps = torch.as_tensor(np.asarray(maps)) if not isinstance(maps, torch.Tensor) else maps
            if maps.shape[0] == 0:
                maps = None
        zf = get("zero_filled")
        if zf is None:
            k64 = k.to(torch.complex64)
            zf = zero_filled(k64, m[None] if k64.ndim == 3 else m, maps=maps.to(torch.complex64) if maps is not None else None)
        zf = torch.as_tensor(zf)
        return {"zero_filled": zf, "kspace": k, "mask": m, "maps": maps, "G_img": get("G_img"),
                "reference": torch.zeros(zf.shape[-2:], dtype=torch.complex64),  # a placeholder, dropped below
                "subject": get("subject"), "source": get("source")}


def as_unsupervised_data(data, name: str = "data", cc: bool = True) -> TrainData:
    """``data`` (a :class:`~mrtl.data.TrainData` or a dataset of ``Sample``-like records) as
    :class:`~mrtl.data.TrainData` with ``reference=None``: the reference is never read (it may be
    missing, None or NaN). Multi-coil data without ``G_img`` get SPIRiT operators calibrated from
    the undersampled k-space's calibration region (``mrtl.data.train_data.calibrate_G``).
    """
    from .data.train_data import as_train_data

    if isinstance(data, TrainData):
        td = dataclasses.replace(data, reference=None)
    else:
        if data is None or not hasattr(data, "__len__") or not hasattr(data, "__getitem__"):
            raise TypeError(f"{name}: expected a dataset (len() and [i] giving samples) or TrainData, got {type(data).__name__}")
        d = as_train_data(_NoReference(data), cc=False, name=name)
        td = dataclasses.replace(d, reference=None)
    for what, t in (("zero_filled", td.x_u), ("kspace", td.kspace), ("maps", td.maps), ("G_img", td.G_img)):
        _finite(t, what, name)
    if td.mask.ndim == 2:
        td.mask = td.mask[None].expand(len(td), -1, -1)
    if td.kspace.ndim == 4 and td.G_img is None and cc:
        td.G_img = calibrate_G(td.kspace, td.mask)
    return td


def _check_model_data(model, td: TrainData, name: str):
    multi = td.kspace.ndim == 4
    if multi != (model.coils == "multi"):
        raise ValueError(f"{name}: {'multi' if multi else 'single'}-coil data (kspace {tuple(td.kspace.shape)}) "
                         f"given to a {model.coils}-coil cascade")
    if multi and td.maps is None:
        raise ValueError(f"{name}: multi-coil samples need coil maps (Sample.maps)")


def _ssdu_forward(model: Cascade, kspace, dc_mask, maps=None, G_img=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the cascade on the DC part of the data (``y_Theta``, ``Theta`` in every DC layer);
    returns ``(predicted (coil) k-space, final state)``: ``F u_P`` with ``u_P`` the image
    (single-coil) or the coil images (multi-coil, Eq. 14) of the last stage."""
    multi = kspace.ndim == 4
    m = dc_mask[:, None] if multi else dc_mask
    k_dc = kspace * m
    x_u = ifft2c(k_dc)
    if multi:
        x_u = (x_u * maps.conj()).sum(dim=-3)
    state = model.prefix(x_u, k_dc, dc_mask, maps, G_img, validate=False)
    return fft2c(state), state


# ----------------------------------------------------------------------------------------------
# a small training loop (any trainable subset, any per-item loss)


def _fit(model: Cascade, params: list, *, n_items: int, batch_loss: Callable, val_score: Optional[Callable],
         epochs: int, lr: float, batch_size: int, weight_decay: float, patience: Optional[int], seed: int,
         out_dir, resume: bool, phase: str, image_shape, progress_bar: bool, select_best: bool = True,
         callback: Optional[Callable[[dict], None]] = None) -> dict:
    """Adam on ``params`` (the rest frozen) over ``n_items`` items per epoch in a seeded order;
    ``batch_loss(idx) -> (b,)`` per-item losses, ``val_score() -> float`` (lower is better; None:
    the training loss selects). Per-epoch atomic checkpoint ``out_dir/checkpoint_<phase>.pt``
    (resumed when ``resume``), best weights kept, early stopping after ``patience`` epochs
    without improvement, :class:`mrtl.train.TrainingDiverged` on a non-finite loss; ``callback``
    is called after every step with ``phase, epoch, step, loss`` (raising from it interrupts the
    run, which a rerun resumes from the last finished epoch)."""
    from .train import TrainingDiverged, save_model
    from .train.checkpoint import load_resume, save_torch, training_checkpoint

    for q in model.parameters():
        q.requires_grad_(False)
    for q in params:
        q.requires_grad_(True)
    if not params:
        raise ValueError("params: no trainable parameters selected")
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), weight_decay=2.0 * weight_decay)
    ckpt_path = None if out_dir is None else Path(out_dir) / f"checkpoint_{phase}.pt"
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
    ck = load_resume(out_dir, phase, model, resume)
    history: list = []
    best = None
    start = 0
    snap = lambda: {k: v.detach().clone() for k, v in model.state_dict().items()}  # noqa: E731
    if ck is not None:
        model.load_state_dict(ck["model"])
        history, best = list(ck["history"]), ck.get("best")
        if ck.get("complete"):
            return {"history": history, "best": best, "stopped_epoch": int(ck["epoch"]), "resumed": True}
        opt.load_state_dict(ck["optimizer"])
        for gr in opt.param_groups:
            gr.update(lr=lr)
        start = int(ck["epoch"])
    initial = snap()
    if start == 0 and ck is None and val_score is not None:
        model.eval()
        with torch.no_grad():
            v0 = float(val_score())
        model.train()
        history.append({"epoch": 0, "train_loss": float("nan"), "val_loss": v0, "seconds": 0.0})
        if math.isfinite(v0):
            best = {"epoch": 0, "score": v0, "state": snap()}

    def diverged(epoch, why):
        model.load_state_dict(best["state"] if best is not None else initial)
        for q in model.parameters():
            q.requires_grad_(True)
        kept = ("nothing is saved (no out_dir)" if ckpt_path is None else
                f"the last good checkpoint is kept in {str(ckpt_path)!r} and a rerun resumes from it")
        raise TrainingDiverged(f"training diverged in {phase}, epoch {epoch}/{epochs}: {why}; {kept}. Lower the learning rate (lr={lr:g})")

    epoch = start
    model.train()
    while epoch < epochs:
        if patience is not None and best is not None and epoch - int(best["epoch"]) >= patience:
            break
        g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + sum(map(ord, phase))) % (2**63))
        order = torch.randperm(n_items, generator=g)
        t0 = time.perf_counter()
        tot, cnt = 0.0, 0
        batches = range(0, n_items, batch_size)
        for s in progress(batches, desc=f"{phase} epoch {epoch + 1}/{epochs}", enable=progress_bar):
            idx = order[s : s + batch_size]
            per = batch_loss(idx)
            loss = per.mean()
            if not bool(torch.isfinite(loss)):
                diverged(epoch + 1, f"the training loss is {float(loss.detach())}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot, cnt = tot + float(per.detach().sum()), cnt + per.numel()
            if callback is not None:
                callback({"phase": phase, "epoch": epoch, "step": s // batch_size, "loss": float(loss.detach())})
        train_loss = tot / max(cnt, 1)
        if not all(bool(torch.isfinite(q).all()) for q in params):
            diverged(epoch + 1, "the weights hold NaN/Inf values")
        vl = float("nan")
        if val_score is not None:
            model.eval()
            with torch.no_grad():
                vl = float(val_score())
            model.train()
            if not math.isfinite(vl):
                diverged(epoch + 1, f"the validation loss is {vl}")
        epoch += 1
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": vl, "seconds": round(time.perf_counter() - t0, 4)})
        score = vl if val_score is not None else train_loss
        if best is None or score < best["score"]:
            best = {"epoch": epoch, "score": score, "state": snap()}
        if ckpt_path is not None:
            save_torch(training_checkpoint(model, phase=phase, stage=0, epoch=epoch, epochs=epochs, history=history,
                                           image_shape=image_shape, complete=False, optimizer=opt, best=best), ckpt_path)
    if select_best and best is not None:
        model.load_state_dict(best["state"])
    for q in model.parameters():
        q.requires_grad_(True)
    if out_dir is not None:
        save_model(model, Path(out_dir) / f"best_{phase}.pt", image_shape=image_shape)
        save_torch(training_checkpoint(model, phase=phase, stage=0, epoch=epoch, epochs=epochs, history=history,
                                       image_shape=image_shape, complete=True, best=best), ckpt_path)
    return {"history": history, "best": best, "stopped_epoch": epoch, "resumed": False}


def _history_out(res: dict, epochs: int, patience, seconds: float) -> dict:
    best = res["best"]
    return {"history": res["history"], "best_epoch": None if best is None else int(best["epoch"]),
            "best_score": None if best is None else float(best["score"]), "stopped_epoch": int(res["stopped_epoch"]),
            "early_stopped": bool(patience is not None and res["stopped_epoch"] < epochs), "seconds": round(seconds, 3)}


def _make_splits(mask: torch.Tensor, n_splits: int, rho: float, kind: str, seed: int):
    """``(dc, loss)`` of shape ``(N, K, H, W)``: ``n_splits`` fixed splits per slice."""
    g = torch.Generator().manual_seed(seed)
    N, H, W = mask.shape
    rep = mask.cpu()[:, None].expand(N, n_splits, H, W).reshape(N * n_splits, H, W)
    dc, lo = split_mask(rep, rho=rho, kind=kind, generator=g)
    return dc.view(N, n_splits, H, W).to(mask.device), lo.view(N, n_splits, H, W).to(mask.device)


# ----------------------------------------------------------------------------------------------
# SSDU fine-tuning


def ssdu_finetune(model: Cascade, data, *, rho: float = 0.4, n_splits: int = 4, kind: str = "gaussian",
                  epochs: int = 20, lr: float = 1e-3, batch_size: int = 4, weight_decay: float = 1e-6,
                  val=None, patience: Optional[int] = None, seed: int = 0, out_dir=None, resume: bool = True,
                  device=None, progress_bar: bool = False,
                  callback: Optional[Callable[[dict], None]] = None) -> tuple[Cascade, dict]:
    """Self-supervised fine-tuning of a (pretrained) cascade with SSDU (Yaman et al., MRM 2020).

    Each slice gets ``n_splits`` fixed, seeded splits ``Omega = Theta_j u Lambda_j``
    (:func:`split_mask`, multi-mask SSDU); a training item is one (slice, split): the cascade runs
    on ``y_Theta`` with Theta in all its DC layers (Eq. 7-9 and 10/14 of Dar et al. 2020) and the
    loss is :func:`ssdu_loss` between its k-space and ``y_Lambda``. Gradients flow end to end
    through the DC/CC layers as in supervised fine-tuning (Eq. 16-17 of Dar et al.). Model
    selection and early stopping use the same self-supervised loss on ``val`` (one fixed split
    per validation slice, another seed): no fully sampled image is touched anywhere.

    Args:
        model: a :class:`~mrtl.models.Cascade`, tuned in place (and returned).
        data: target slices: :class:`~mrtl.data.TrainData` or a dataset of ``Sample``-like records
            (``kspace``, ``mask``, ``maps`` for multi-coil; ``reference`` is never read and may be
            absent, None or NaN). Multi-coil data without ``G_img`` get SPIRiT operators
            calibrated from the undersampled data's calibration region.
        rho: loss-set fraction ``|Lambda| / |Omega|`` (SSDU: 0.4).
        n_splits: splits per slice (multi-mask SSDU).
        kind: ``"gaussian"`` or ``"uniform"`` selection of Lambda.
        epochs: passes over all (slice, split) items; the maximum with ``patience``.
        lr: Adam learning rate; batch_size: items per step; weight_decay: gamma of Eq. 5.
        val: validation slices (same kinds), or None (the training loss selects the epoch).
        patience: stop when the validation loss has not improved for this many epochs.
        seed: seeds the splits and the batch order (CPU runs are deterministic).
        out_dir: folder for ``checkpoint_ssdu.pt`` (atomic, per epoch; resumed) and
            ``best_ssdu.pt``; None writes nothing.
        resume: continue from ``out_dir/checkpoint_ssdu.pt``.
        device: None (auto), "cpu", "cuda".
        progress_bar: tqdm bars (silenced by ``MRTL_QUIET=1``).
        callback: called after every step with a dict (``phase, epoch, step, loss``); raising
            from it interrupts training (a rerun with ``resume`` continues, bit for bit on CPU).

    Returns:
        ``(model, history)`` with ``history``: ``history`` (rows ``epoch, train_loss, val_loss,
        seconds``; epoch 0 is the model before fine-tuning when ``val`` is given),
        ``best_epoch``, ``best_score``, ``stopped_epoch``, ``early_stopped``, ``seconds``.

    Raises:
        mrtl.train.TrainingDiverged: a non-finite loss or weights (the best weights are put back).
    """
    from .data.train_data import input_p99

    if not isinstance(model, Cascade):
        raise TypeError(f"model: expected mrtl.models.Cascade, got {type(model).__name__}")
    n_splits = check_int(n_splits, "n_splits", low=1)
    epochs = check_int(epochs, "epochs", low=0)
    check_float(lr, "lr", low=0.0, low_open=True)
    batch_size = check_int(batch_size, "batch_size", low=1)
    weight_decay = check_float(weight_decay, "weight_decay", low=0.0)
    seed = check_int(seed, "seed", low=0)
    if patience is not None:
        patience = check_int(patience, "patience", low=1)
    check_float(rho, "rho", low=0.0, high=1.0, low_open=True)
    check_choice(kind, "kind", ("gaussian", "uniform"))
    dev = get_device(device)
    td = as_unsupervised_data(data, "data").to(dev)
    _check_model_data(model, td, "data")
    vd = None
    if val is not None:
        vd = as_unsupervised_data(val, "val").to(dev)
        _check_model_data(model, vd, "val")
        if vd.shape != td.shape:
            raise ValueError(f"val: image size {vd.shape} differs from data's {td.shape}")
    model.to(dev)
    model.remember_training_data(input_p99=input_p99(td))
    dc, lo = _make_splits(td.mask, n_splits, rho, kind, seed)
    vdc = vlo = None
    if vd is not None:
        vdc, vlo = _make_splits(vd.mask, 1, rho, kind, seed + 1)
    N = len(td)

    def sel(t, i):
        return None if t is None else t[i]

    def batch_loss(idx):
        idx = idx.to(dev)
        i, j = idx // n_splits, idx % n_splits
        pred, _ = _ssdu_forward(model, td.kspace[i], dc[i, j], sel(td.maps, i), sel(td.G_img, i))
        return ssdu_loss(pred, td.kspace[i], lo[i, j], reduction="none")

    def val_score():
        tot, n = 0.0, 0
        for s in range(0, len(vd), max(batch_size, 8)):
            i = torch.arange(s, min(s + max(batch_size, 8), len(vd)), device=dev)
            pred, _ = _ssdu_forward(model, vd.kspace[i], vdc[i, 0], sel(vd.maps, i), sel(vd.G_img, i))
            per = ssdu_loss(pred, vd.kspace[i], vlo[i, 0], reduction="none")
            tot, n = tot + float(per.sum()), n + per.numel()
        return tot / max(n, 1)

    t0 = time.perf_counter()
    res = _fit(model, list(model.parameters()), n_items=N * n_splits, batch_loss=batch_loss,
               val_score=None if vd is None else val_score, epochs=epochs, lr=lr, batch_size=batch_size,
               weight_decay=weight_decay, patience=patience, seed=seed, out_dir=out_dir, resume=resume, phase="ssdu",
               image_shape=td.shape, progress_bar=progress_bar, callback=callback)
    model.remember_training_data(image_shape=td.shape)
    return model, _history_out(res, epochs, patience, time.perf_counter() - t0)


# ----------------------------------------------------------------------------------------------
# ZS-SSL


def _load_init(init, model_kwargs, seed):
    from .train import load_model

    if init is None:
        if not model_kwargs:
            raise ValueError("model_kwargs: a random initialisation (init=None) needs the architecture, e.g. "
                             "model_kwargs=dict(n_subnets=3, width=16, depth=4)")
        return Cascade(**dict(model_kwargs), seed=seed)
    if isinstance(init, Cascade):
        return copy.deepcopy(init)
    if isinstance(init, (str, Path)):
        return load_model(init)
    raise TypeError(f"init: expected None, a mrtl.models.Cascade or a checkpoint path, got {type(init).__name__}")


def zsssl(kspace, mask, maps=None, *, init=None, model_kwargs: Optional[dict] = None, rho: float = 0.4,
          val_frac: float = 0.2, n_splits: int = 10, max_epochs: int = 100, patience: int = 10, lr: float = 1e-3,
          kind: str = "gaussian", seed: int = 0, device=None, progress_bar: bool = False) -> tuple[torch.Tensor, dict]:
    """Zero-shot self-supervised reconstruction of ONE undersampled slice (ZS-SSL, Yaman et al.,
    ICLR 2022).

    The acquired locations are split three ways: a self-validation set Gamma
    (``val_frac |Omega|``) is held out first; the rest ``Omega \\ Gamma`` is split ``n_splits``
    times into DC and loss sets (:func:`split_mask`, ``rho``). Each epoch runs the cascade on
    every split (batch 1) with :func:`ssdu_loss`; the self-validation loss is the loss on Gamma of
    the cascade run with all of ``Omega \\ Gamma`` in DC. Training stops when it has not improved
    for ``patience`` epochs and the best weights are kept (the paper's automated early stopping).
    The final image uses all acquired data Omega in the DC layers (Eq. 7-9 of Dar et al. 2020).

    Args:
        kspace: the slice's k-space, single-coil ``(H, W)`` or multi-coil ``(C, H, W)`` (zeros
            off the mask), complex.
        mask: ``(H, W)`` acquired locations Omega.
        maps: coil maps ``(C, H, W)`` (multi-coil only); the SPIRiT operator of the CC layers is
            calibrated from the slice's calibration region.
        init: None (random weights, ``Cascade(**model_kwargs)``), a :class:`~mrtl.models.Cascade`
            (copied, not changed) or a checkpoint path: the transfer-learning initialisation.
        model_kwargs: architecture for ``init=None``.
        rho: loss-set fraction of each DC/loss split.
        val_frac: ``|Gamma| / |Omega|``.
        n_splits: DC/loss splits of ``Omega \\ Gamma``.
        max_epochs, patience: the epoch budget and the self-validation stopping rule.
        lr: Adam learning rate. kind: selection of the sets (``"gaussian"``/``"uniform"``).
        seed: seeds the splits, the random initialisation and the order (deterministic on CPU).
        device, progress_bar: as :func:`ssdu_finetune`.

    Returns:
        ``(image, info)``: the complex ``(H, W)`` reconstruction (CPU) at the scale of ``kspace``,
        and ``info`` with ``train_loss`` and ``val_loss`` per epoch (``val_loss[0]`` before
        training), ``best_epoch``, ``stopped_epoch``, ``early_stopped``, ``seconds`` and ``model``
        (the trained cascade with the best weights).
    """
    t_start = time.perf_counter()
    model = _load_init(init, model_kwargs, check_int(seed, "seed", low=0))
    multi = model.coils == "multi"
    from ._validate import check_complex

    kspace = check_complex(kspace, "kspace", ndim=3 if multi else 2).to(torch.complex64)
    mask = check_mask(mask, "mask", shape=tuple(kspace.shape[-2:]))
    if mask.ndim != 2:
        raise ValueError(f"mask: expected one (H, W) mask, got shape {tuple(mask.shape)}")
    if multi:
        if maps is None:
            raise ValueError("maps: a multi-coil cascade needs coil maps (C, H, W)")
        maps = check_complex(maps, "maps", ndim=3).to(torch.complex64)
        if maps.shape != kspace.shape:
            raise ValueError(f"maps: expected shape {tuple(kspace.shape)}, got {tuple(maps.shape)}")
    elif maps is not None:
        raise ValueError("maps: a single-coil cascade takes no coil maps")
    check_float(val_frac, "val_frac", low=0.0, high=1.0, low_open=True)
    n_splits = check_int(n_splits, "n_splits", low=1)
    max_epochs = check_int(max_epochs, "max_epochs", low=1)
    patience = check_int(patience, "patience", low=1)
    dev = get_device(device)
    k = (kspace * (mask[None] if multi else mask))[None].cpu()
    m = mask[None].cpu()
    # the input scale the network was trained at (as mrtl.train.reconstruct); undone at the end
    x_full = zero_filled(k, maps=maps[None] if multi else None)
    scale = float((percentile99(x_full) / (model.input_p99 or 1.0)).clamp_min(1e-12))
    k = k / scale
    G = calibrate_G(k, m) if multi else None
    mp = maps[None] if multi else None
    rest, gamma = split_mask(m, rho=val_frac, kind=kind, generator=seed)
    dc, lo = _make_splits(rest, n_splits, rho, kind, seed + 1)
    k, m, rest, gamma, dc, lo = (t.to(dev) for t in (k, m, rest, gamma, dc, lo))
    mp = None if mp is None else mp.to(dev)
    G = None if G is None else G.to(dev)
    model.to(dev)
    model.remember_training_data(input_p99=float(percentile99(x_full / scale)[0]), image_shape=tuple(k.shape[-2:]))

    def batch_loss(idx):
        j = idx.to(dev)
        B = j.numel()
        pred, _ = _ssdu_forward(model, k.expand(B, *k.shape[1:]), dc[0, j],
                                None if mp is None else mp.expand(B, *mp.shape[1:]),
                                None if G is None else G.expand(B, *G.shape[1:]))
        return ssdu_loss(pred, k.expand(B, *k.shape[1:]), lo[0, j], reduction="none")

    def val_score():
        pred, _ = _ssdu_forward(model, k, rest, mp, G)
        return float(ssdu_loss(pred, k, gamma))

    res = _fit(model, list(model.parameters()), n_items=n_splits, batch_loss=batch_loss, val_score=val_score,
               epochs=max_epochs, lr=lr, batch_size=1, weight_decay=0.0, patience=patience, seed=seed, out_dir=None,
               resume=False, phase="zsssl", image_shape=tuple(k.shape[-2:]), progress_bar=progress_bar)
    model.eval()
    with torch.no_grad():
        x_u = zero_filled(k, maps=mp)
        img = model(x_u, k, m, mp, G)[0].cpu() * scale
    hist = res["history"]
    info = {"train_loss": [h["train_loss"] for h in hist], "val_loss": [h["val_loss"] for h in hist],
            "best_epoch": int(res["best"]["epoch"]) if res["best"] is not None else None,
            "stopped_epoch": int(res["stopped_epoch"]), "early_stopped": res["stopped_epoch"] < max_epochs,
            "seconds": round(time.perf_counter() - t_start, 3), "model": model.cpu()}
    return img, info


# ----------------------------------------------------------------------------------------------
# shipped checkpoints


def shipped_checkpoint(R: int) -> Path:
    """Path of the natural-image-pretrained checkpoint shipped with mrtl for acceleration ``R``
    (4 or 8; ``mrtl/checkpoints/natural_R{R}.pt``, trained by
    ``python tools/train_shipped_checkpoints.py``; load it with :func:`mrtl.train.load_model`)."""
    from .checkpoints import path

    return path(R)
