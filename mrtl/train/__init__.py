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

Modules: :mod:`~mrtl.train.trainer` (:class:`Trainer`, one stage or phase; :class:`TrainSettings`,
the settings both functions share; :func:`train_sequential`, :func:`finetune`),
:mod:`~mrtl.train.loss` (:func:`hybrid_loss`), :mod:`~mrtl.train.checkpoint` (files, RNG state,
seeding), :mod:`~mrtl.train.inference` (:func:`reconstruct`, :func:`evaluate`),
:mod:`~mrtl.train.distributed` (torchrun). The data container :class:`~mrtl.data.TrainData` and
:func:`~mrtl.data.as_train_data` live in :mod:`mrtl.data.train_data`; the presets in
:mod:`mrtl.presets`. Every name below is importable from ``mrtl.train``.
"""


from __future__ import annotations

from ..data.train_data import TrainData, as_train_data
from ..presets import PAPER, SMALL
from .checkpoint import ARCH_LIMITS, CKPT_FORMAT, load_checkpoint, load_model, model_from_checkpoint, save_model
from .inference import MAX_RECON_PIXELS, evaluate, reconstruct
from .loss import hybrid_loss
from .trainer import (
    DIVERGENCE_DB,
    FINETUNE_KEYS,
    TRAIN_KEYS,
    Trainer,
    TrainingDiverged,
    TrainSettings,
    finetune,
    train_sequential,
)

__all__ = [
    "PAPER",
    "SMALL",
    "TrainData",
    "as_train_data",
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
    "CKPT_FORMAT",
    "Trainer",
    "TrainSettings",
]
