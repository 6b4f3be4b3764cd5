"""Parameter-efficient fine-tuning of a pretrained cascade.

Dar et al. (MRM 2020) fine-tune *all* weights of the pretrained cascade end to end (Eq. 5 loss,
gradients through the DC/CC layers, Eq. 16-17). With very few target slices, tuning a small
subset can be as good and cheaper to store; this module fine-tunes only:

* ``"dc"``: the data-consistency weights (the learned lambda of each DC layer, Eq. 7-9). A
  cascade with hard DC (``dc_lam=None``, the paper's choice) has no such parameter:
  :func:`select_parameters` then raises, and :func:`make_dc_learnable` turns every DC layer into
  a soft one with a learnable lambda (a large starting lambda keeps it close to hard DC);
* ``"last"``: the last convolution of each subnetwork (both the real and the imaginary network
  of a multi-coil subnetwork, Eq. 14);
* ``"norm_bias"``: every bias (and the affine parameters of normalisation layers, if any; the
  paper's subnetworks have none), in the spirit of bias-only tuning;
* ``"all"``: everything (the paper's fine-tuning, for comparison).

:func:`finetune_peft` runs the supervised fine-tuning of Eq. 5 (MSE + MAE of
:func:`mrtl.train.hybrid_loss`, weight penalty as Adam's weight decay) on the selected
parameters only. It uses its own small loop (:func:`mrtl.selfsup._fit`, shared with SSDU)
because :func:`mrtl.train.finetune` optimises every parameter of the cascade.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn as nn

from ._validate import check_choice, check_float, check_int
from .models import Cascade, DataConsistency

__all__ = ["WHICH", "select_parameters", "trainable_count", "parameters_of", "make_dc_learnable", "finetune_peft"]

#: the parameter subsets :func:`select_parameters` knows
WHICH = ("all", "dc", "last", "norm_bias")

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _last_convs(model: Cascade) -> list[nn.Conv2d]:
    out = []
    for block in model.subnets:
        nets = [block.net] if hasattr(block, "net") else [block.net_re, block.net_im]
        for net in nets:
            convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
            if convs:
                out.append(convs[-1])
    return out


def parameters_of(model: Cascade, which: str) -> list[nn.Parameter]:
    """The parameters of subset ``which`` (see the module docstring), without changing anything.

    Raises:
        ValueError: ``which`` unknown, or ``"dc"`` for a cascade with hard DC (no DC parameter;
            use :func:`make_dc_learnable` first).
    """
    if not isinstance(model, Cascade):
        raise TypeError(f"model: expected mrtl.models.Cascade, got {type(model).__name__}")
    check_choice(which, "which", WHICH)
    if which == "all":
        return list(model.parameters())
    if which == "dc":
        ps = [p for dc in model.dcs for p in dc.parameters()]
        if not ps:
            raise ValueError("which: 'dc' has nothing to tune: this cascade uses hard DC (dc_lam=None, lambda = infinity) "
                             "or a fixed lambda; call mrtl.peft.make_dc_learnable(model, lam=...) first to give every DC "
                             "layer a learnable lambda")
        return ps
    if which == "last":
        return [p for conv in _last_convs(model) for p in conv.parameters()]
    seen, ps = set(), []
    for mod in model.modules():
        for name, p in mod.named_parameters(recurse=False):
            if (name == "bias" or isinstance(mod, _NORMS)) and id(p) not in seen:
                seen.add(id(p))
                ps.append(p)
    return ps


def trainable_count(model: nn.Module) -> int:
    """Number of scalar parameters with ``requires_grad``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


def select_parameters(model: Cascade, which: str) -> int:
    """Make only the parameters of ``which`` trainable (``requires_grad``), freeze the rest.

    Args:
        model: a :class:`~mrtl.models.Cascade`.
        which: ``"all"``, ``"dc"`` (DC lambdas), ``"last"`` (last conv of each subnetwork) or
            ``"norm_bias"`` (biases and normalisation parameters).

    Returns:
        The number of trainable scalar parameters (:func:`trainable_count`).
    """
    ps = parameters_of(model, which)
    keep = {id(p) for p in ps}
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    return trainable_count(model)


def make_dc_learnable(model: Cascade, lam: float = 1e3) -> Cascade:
    """Give every DC layer of ``model`` a learnable lambda (soft DC, Eq. 7-9), in place.

    A hard-DC cascade (lambda = infinity) has no DC parameter to fine-tune; soft DC with
    lambda = ``lam`` replaces sampled k-space by ``(F x + lam y) / (1 + lam)``, which for the
    default 1e3 differs from hard DC by 0.1% of the network's k-space. Layers that already learn
    lambda are kept. The architecture record (``model.arch``: ``dc_lam``, ``learn_lam``) is
    updated so that :func:`mrtl.train.save_model` / ``load_model`` rebuild the same model.

    Returns:
        ``model``.
    """
    lam = check_float(lam, "lam", low=0.0, low_open=True)
    dev = next(model.parameters()).device
    for i, dc in enumerate(model.dcs):
        if not dc.learn_lam:
            start = lam if dc.log_lam is None else float(dc.lam)
            model.dcs[i] = DataConsistency(start, learn_lam=True).to(dev)
    model.arch["dc_lam"] = model.arch.get("dc_lam") or lam
    model.arch["learn_lam"] = True
    return model


def finetune_peft(model: Cascade, data, which: str, *, val=None, epochs: int = 20, lr: float = 1e-3,
                  batch_size: int = 4, weight_decay: float = 1e-6, patience: Optional[int] = None, seed: int = 0,
                  out_dir=None, resume: bool = True, device=None, progress_bar: bool = False) -> tuple[Cascade, dict]:
    """Supervised fine-tuning (Eq. 5 loss, end to end through DC/CC, Eq. 16-17) of only the
    parameters ``which`` (:func:`select_parameters`); the others stay bit-identical.

    Args:
        model: the pretrained :class:`~mrtl.models.Cascade`, tuned in place.
        data: the target slices (:class:`~mrtl.data.TrainData` or a dataset of ``Sample``s, with
            fully sampled references).
        which: ``"all"``, ``"dc"``, ``"last"`` or ``"norm_bias"``.
        val: validation slices; the epoch with the lowest validation loss (Eq. 5) is kept and
            drives ``patience`` (None: the training loss).
        epochs, lr, batch_size, weight_decay, patience, seed: as :func:`mrtl.train.finetune`.
        out_dir: ``checkpoint_peft_<which>.pt`` (atomic, per epoch, resumed) and
            ``best_peft_<which>.pt``; None writes nothing.
        resume, device, progress_bar: as :func:`mrtl.train.finetune`.

    Returns:
        ``(model, history)``: rows ``epoch, train_loss, val_loss, seconds``, ``best_epoch``,
        ``best_score``, ``stopped_epoch``, ``early_stopped``, ``seconds``, ``trainable``
        (count) and ``total`` (all parameters).
    """
    from .data.train_data import as_train_data, check_compatible, input_p99
    from .selfsup import _fit, _history_out
    from .train import hybrid_loss
    from .utils import get_device

    ps = parameters_of(model, which)
    epochs = check_int(epochs, "epochs", low=0)
    check_float(lr, "lr", low=0.0, low_open=True)
    batch_size = check_int(batch_size, "batch_size", low=1)
    check_float(weight_decay, "weight_decay", low=0.0)
    if patience is not None:
        patience = check_int(patience, "patience", low=1)
    dev = get_device(device)
    td = as_train_data(data, name="data").to(dev)
    check_compatible(model, td, "data")
    vd = None
    if val is not None:
        vd = as_train_data(val, name="val").to(dev)
        check_compatible(model, vd, "val")
    model.to(dev)
    model.remember_training_data(input_p99=input_p99(td))
    count = select_parameters(model, which)

    def run(d, idx):
        b = d.batch(idx)
        return model(b["x_u"], b["kspace"], b["mask"], b["maps"], b["G_img"]), b["reference"]

    def batch_loss(idx):
        out, ref = run(td, idx.to(dev))
        return hybrid_loss(out, ref, model.coils, reduction="none")

    def val_score():
        tot, n = 0.0, 0
        for s in range(0, len(vd), 16):
            out, ref = run(vd, torch.arange(s, min(s + 16, len(vd)), device=dev))
            per = hybrid_loss(out, ref, model.coils, reduction="none")
            tot, n = tot + float(per.sum()), n + per.numel()
        return tot / max(n, 1)

    t0 = time.perf_counter()
    res = _fit(model, ps, n_items=len(td), batch_loss=batch_loss, val_score=None if vd is None else val_score,
               epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay, patience=patience, seed=seed,
               out_dir=out_dir, resume=resume, phase=f"peft_{which}", image_shape=td.shape, progress_bar=progress_bar)
    model.remember_training_data(image_shape=td.shape)
    h = _history_out(res, epochs, patience, time.perf_counter() - t0)
    h.update(trainable=count, total=int(sum(p.numel() for p in model.parameters())))
    return model, h
