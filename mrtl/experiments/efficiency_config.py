"""Configuration of the data-efficiency study (:mod:`mrtl.experiments.efficiency`).

Kept apart from :mod:`mrtl.experiments.config` (which registers it) so that the study's many
settings do not crowd the paper's three configs; like them it imports no torch.

Presets:

- ``small`` (the checked-in ``results/small/efficiency/``): 64x64 T1 slices, R = 4 and 8,
  Ntune in {0, 1, 2, 4, 8, 20, 50} (the 20 slices of the T1 fine-tuning split, then the 78 of its
  training split: no network of this study is trained on T1 otherwise), three seeds. The natural
  network (3 x 16 channels) is pretrained in the study for each seed and R on 64 natural crops (at
  most 8 epochs per subnetwork, stopped on validation PSNR of natural crops; learning rate 3e-3,
  the rate every seed of the transfer study chose on validation), so the intervals include the
  pretraining's randomness; ``pretrained="shipped"`` uses the repository's checkpoints
  instead. Every network trained
  end to end gets the same budget: at most ``ft_epochs`` epochs and at most ``ft_image_budget``
  image presentations (so Ntune = 50 runs 12 epochs, Ntune <= 15 runs 40), early stopping with
  ``patience`` 5 on validation: PSNR on the 8 validation slices for the supervised methods, the
  self-supervised loss on the held-out k-space of the same slices for SSDU (never their fully
  sampled images); SSDU draws one split per slice (``ssdu_n_splits``). Learning rates from
  ``lr_grid`` are chosen on validation once per method and seed, at ``lr_select_n_tune``
  slices. ZS-SSL runs on ``zs_n_test`` test slices only (one network per slice and init).
  Sized so that the whole study runs in well under an hour on 2 shared CPU cores (the run time
  is recorded in the results).
- ``full``: the paper's cascade (5 x 64) at 256x256 on user data, pretrained in the study on
  ``n_train`` natural images (``pretrained="train"``), 3 seeds, a GPU.
- ``tiny``: 32x32, 2 x 8 channels, a natural network pretrained in the study for one epoch;
  for the test suite only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .._validate import check_choice, check_float, check_int
from .config import DEFAULT_R, StudyConfig, _check_float_list, _check_int_list, _DOMAINS, _err

__all__ = ["EfficiencyConfig", "EFFICIENCY_METHODS", "PEFT_KINDS"]

#: The methods the study can run (``methods`` picks a subset).
EFFICIENCY_METHODS = ("scratch", "finetune", "ssdu", "peft", "zsssl", "cs")
#: The parameter subsets of :func:`mrtl.peft.select_parameters`.
PEFT_KINDS = ("all", "dc", "last", "norm_bias")


@dataclass
class EfficiencyConfig(StudyConfig):
    """One data-efficiency curve per method: test PSNR against Ntune (Yaman et al. 2020, 2022).

    Attributes (besides :class:`~mrtl.experiments.config.StudyConfig`):
        target: the target domain (T1 slices).
        n_tune_list: numbers of target slices (0 = the raw pretrained network; for ZS-SSL and CS,
            which use no target training slices, their single value is drawn at 0 / as a line).
        methods: subset of :data:`EFFICIENCY_METHODS`.
        pretrained: "shipped" (the repository's natural-image checkpoints, R = 4 and 8) or
            "train" (pretrain on ``n_train`` natural images inside the study, with the shared
            pretraining rule of :func:`mrtl.experiments._common.pretrain`).
        ft_image_budget: at most this many image presentations per end-to-end training
            (epochs = min(ft_epochs, max(ft_min_epochs, ceil(budget / Ntune)))); None: ft_epochs.
        ft_min_epochs: the least number of epochs a large Ntune gets under the budget.
        lr_select_n_tune: the Ntune at which each method's learning rate is chosen on validation
            (then reused for every Ntune and R of the seed).
        ssdu_rho, ssdu_n_splits, ssdu_kind: SSDU's loss fraction, splits per slice, split density.
        peft_which: the parameter subset of the PEFT curve (:data:`PEFT_KINDS`).
        zs_n_test: test slices ZS-SSL runs on (spread over the test split; the other methods run
            on all, and claims about ZS-SSL pair it with them on these slices only).
        zs_max_epochs, zs_patience, zs_n_splits, zs_val_frac: ZS-SSL's budget, self-validation
            stopping rule, splits per epoch and self-validation fraction.
        zs_lr_grid: ZS-SSL learning rates, chosen on ``zs_n_val`` validation slices by PSNR.
        zs_n_val: validation slices for ZS-SSL's learning rate.
        cs_lam_grid, cs_iter_grid: the CS grid chosen on validation (as the transfer study).
    """

    target: str = "t1"
    n_tune_list: tuple[int, ...] = (0, 1, 2, 4, 8, 20, 50)
    methods: tuple[str, ...] = EFFICIENCY_METHODS
    pretrained: str = "train"
    n_train: int = 64
    lr_grid_pretrain: tuple[float, ...] | None = (3e-3,)
    n_val: int | None = 8
    ft_epochs: int = 40
    patience: int | None = 5
    ft_image_budget: int | None = 600
    ft_min_epochs: int = 10
    lr_grid: tuple[float, ...] | None = (1e-3, 3e-3)
    lr_select_n_tune: int = 8
    ssdu_rho: float = 0.4
    ssdu_n_splits: int = 1
    ssdu_kind: str = "gaussian"
    peft_which: str = "last"
    zs_n_test: int = 4
    zs_max_epochs: int = 40
    zs_patience: int = 8
    zs_n_splits: int = 2
    zs_val_frac: float = 0.2
    zs_lr_grid: tuple[float, ...] = (1e-3, 3e-3)
    zs_n_val: int = 1
    cs_lam_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    cs_iter_grid: tuple[int, ...] = (300,)

    study: ClassVar[str] = "efficiency"
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = StudyConfig._LIST_FIELDS + ("methods", "zs_lr_grid", "cs_lam_grid",
                                                                          "cs_iter_grid")
    _SORTED_FIELDS: ClassVar[tuple[str, ...]] = ("n_tune_list",)

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), n_tune_list=(0, 1, 2), pretrained="train", n_train=8, ft_epochs=2,
                    ft_image_budget=None, ft_min_epochs=1, lr_select_n_tune=2, patience=1, ssdu_n_splits=1,
                    zs_n_test=1, zs_max_epochs=2, zs_patience=1, zs_n_splits=1, zs_lr_grid=(1e-3,), zs_n_val=1,
                    cs_lam_grid=(1e-3,), cs_iter_grid=(5,))

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), R_list=(DEFAULT_R, 8), pretrained="train", n_seeds=3, ft_epochs=100,
                    patience=10, ft_image_budget=None, lr_grid=(1e-5, 1e-4), zs_n_test=8, zs_max_epochs=100,
                    zs_patience=25, zs_n_splits=4, zs_lr_grid=(1e-4, 5e-4), zs_n_val=2, n_val=None,
                    cs_lam_grid=(3e-4, 1e-3, 3e-3), cs_iter_grid=(80, 300))

    def lr_candidates(self, kind: str) -> tuple[float, ...]:
        """Learning rates tried on validation for ``kind``: "pretrain" as every study; the
        end-to-end kinds of this study ("finetune", "scratch", "ssdu", "peft") share ``lr_grid``."""
        if kind in ("ssdu", "peft"):
            return self.lr_grid or (self.lr_finetune,)
        return super().lr_candidates(kind)

    def max_epochs(self, n_tune: int) -> int:
        """The epoch budget of an end-to-end training on ``n_tune`` slices (the same for every
        method): ``min(ft_epochs, max(ft_min_epochs, ceil(ft_image_budget / n_tune)))``."""
        if self.ft_image_budget is None or n_tune <= 0:
            return self.ft_epochs
        return int(min(self.ft_epochs, max(self.ft_min_epochs, -(-self.ft_image_budget // n_tune))))

    def _validate_study(self) -> None:
        if self.target not in _DOMAINS:
            raise _err("target", f"one of {_DOMAINS}", self.target)
        _check_int_list("n_tune_list", self.n_tune_list, low=0)
        if not isinstance(self.methods, tuple) or not self.methods:
            raise _err("methods", f"a non-empty list from {EFFICIENCY_METHODS}", self.methods)
        for i, m in enumerate(self.methods):
            check_choice(m, f"methods[{i}]", EFFICIENCY_METHODS)
        if len(set(self.methods)) != len(self.methods):
            raise _err("methods", "distinct values", list(self.methods))
        check_choice(self.pretrained, "pretrained", ("shipped", "train"))
        check_choice(self.peft_which, "peft_which", PEFT_KINDS)
        check_choice(self.ssdu_kind, "ssdu_kind", ("gaussian", "uniform"))
        if self.ft_image_budget is not None:
            check_int(self.ft_image_budget, "ft_image_budget", low=1)
        for name in ("ft_min_epochs", "lr_select_n_tune", "ssdu_n_splits", "zs_n_test", "zs_max_epochs",
                     "zs_patience", "zs_n_splits", "zs_n_val"):
            check_int(getattr(self, name), name, low=1)
        for name in ("ssdu_rho", "zs_val_frac"):  # fractions of the acquired locations, strictly inside (0, 1)
            if check_float(getattr(self, name), name, low=0.0, high=1.0, low_open=True) >= 1.0:
                raise _err(name, "a fraction in (0, 1)", getattr(self, name))
        _check_float_list("zs_lr_grid", self.zs_lr_grid)
        _check_float_list("cs_lam_grid", self.cs_lam_grid, low_open=False)
        _check_int_list("cs_iter_grid", self.cs_iter_grid, low=1)
        if self.pretrained == "shipped" and self.size != 64:
            raise _err("pretrained", "'train' for a size other than 64 (the shipped checkpoints are 64x64)",
                       self.pretrained)
