"""The settings presets, defined once: the paper's full scale and the small CPU scale.

Every other place reads these values: the defaults of :func:`mrtl.train.train_sequential` and
:func:`mrtl.train.finetune` (the paper's), ``mrtl.train.PAPER`` / ``mrtl.train.SMALL``, the study
configs of :mod:`mrtl.experiments.config` (``full`` and ``small`` presets), the command line
(``mrtl evaluate --R``) and ``configs/*.yaml`` (``tests/test_experiments.py`` checks that
every YAML file agrees with these values).

This module imports nothing from mrtl, so any layer may read it.

- :data:`PAPER`: Dar et al. 2020, Methods, "Network training": 5 subnetworks of 64 channels
  (4 hidden layers), 20 epochs per subnetwork (Eq. 11) at Adam lr 1e-4, 100 end-to-end
  fine-tuning epochs at lr 1e-5, betas (0.9, 0.999), L2 penalty gamma = 1e-6 (Eq. 5), batch 50,
  256 x 256 images.
- :data:`SMALL`: the CPU scale of the checked-in ``results/small/`` studies (64 x 64, 3 subnetworks
  of 16 channels, at most 8 epochs per subnetwork and 100 fine-tuning epochs, each stopped early
  on validation PSNR; the paper's learning rates learn almost nothing in the few epochs a CPU
  allows). Its learning rates are the middle of the study's validation grids
  (:data:`SMALL_LR_GRID`): the studies try every rate of the grid on the validation slices and
  record the one chosen (``results/small/*/*_selections.csv``; 3e-3 for most fine-tuned
  networks). Before, ``mrtl.train.SMALL`` held a second CPU preset (5 x 32 channels, fine-tuning
  lr 1e-4) that no checked-in result used; it now is this one.
"""

from __future__ import annotations

__all__ = ["DEFAULT_R", "PAPER", "SMALL", "SMALL_LR_GRID", "SMALL_LR_GRID_PRETRAIN", "STOPPING", "preset"]

#: The default acceleration factor R (the paper's headline setting and every example's).
DEFAULT_R: int = 4

_ADAM = dict(betas=(0.9, 0.999), weight_decay=1e-6)

#: The paper's full-scale settings (Methods, "Network training"). ``data`` is the image side and R.
PAPER: dict = {
    "model": dict(n_subnets=5, width=64, depth=4, subnet="conv", dc_lam=None),
    "train": dict(epochs_per_subnet=20, lr=1e-4, **_ADAM, batch_size=50),
    "finetune": dict(epochs=100, lr=1e-5, **_ADAM, batch_size=50),
    "data": dict(size=256, R=DEFAULT_R),
}

#: The small CPU scale (64 x 64, minutes on two cores) of ``results/small/`` and the book.
SMALL: dict = {
    "model": dict(n_subnets=3, width=16, depth=4, subnet="conv", dc_lam=None),
    "train": dict(epochs_per_subnet=8, lr=1e-3, **_ADAM, batch_size=8),
    "finetune": dict(epochs=100, lr=1e-3, **_ADAM, batch_size=4),
    "data": dict(size=64, R=DEFAULT_R),
}

#: Early stopping of the small scale on validation PSNR (the epoch budgets above are maxima);
#: the paper trains every epoch (no stopping rule).
STOPPING: dict = {
    "small": {"train": dict(patience=2, select_on="psnr"), "finetune": dict(patience=10, select_on="psnr")},
    "paper": {"train": dict(patience=None, select_on="loss"), "finetune": dict(patience=None, select_on="loss")},
}

#: The learning rates the small studies try on validation: fine-tuning (and the from-scratch
#: baseline, the same grid for a fair comparison) and pretraining.
SMALL_LR_GRID: tuple = (3e-4, 1e-3, 3e-3)
SMALL_LR_GRID_PRETRAIN: tuple = (1e-3, 3e-3)


def preset(scale: str) -> dict:
    """A deep copy of the ``"paper"`` or ``"small"`` preset (``model``, ``train``, ``finetune``,
    ``data``), with the stopping rule merged into ``train`` and ``finetune``.

    Args:
        scale: ``"paper"`` or ``"small"``.

    Returns:
        A new dict (editing it changes nothing here).
    """
    if scale not in ("paper", "small"):
        raise ValueError(f"scale: expected 'paper' or 'small', got {scale!r}")
    base = PAPER if scale == "paper" else SMALL
    out = {k: dict(v) for k, v in base.items()}
    for phase in ("train", "finetune"):
        out[phase].update(STOPPING[scale][phase])
    return out
