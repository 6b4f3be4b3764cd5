"""Study configurations with explicit ``tiny`` / ``small`` / ``full`` presets.

The three studies of the paper (Dar et al., MRM 2020) take a config dataclass:

- :class:`TransferConfig`: single-coil domain transfer (Table 1, Supp. Tables 1-2);
- :class:`SweepConfig`: the Ntrain x Ntune sweep with the 0.05% convergence rule (Figs. 4-5);
- :class:`MulticoilConfig`: multi-coil transfer against L1-SPIRiT (Table 2, Figs. 6-7).

Presets:

- ``full``: the paper's settings (256x256, 5 subnetworks of 64 channels, 20 epochs per
  subnetwork, 100 fine-tuning epochs, Adam lr 1e-4 / 1e-5, batch 50, Ntrain 500-4000,
  Ntune 0-100, R 2-10). Needs user data (``natural_dir``, ``t1_dir``, ``t2_dir``,
  ``fastmri_dir``) and a GPU.
The model, training and fine-tuning numbers of ``full`` and ``small`` come from
:mod:`mrtl.presets` (``PAPER``, ``SMALL``, ``DEFAULT_R``), the one place they are written; the
class defaults of every config are its ``small`` preset (``SweepConfig() == SweepConfig.small()``).
:meth:`StudyConfig.validate` only checks (with :mod:`mrtl._validate`; R with
``check_acceleration``); canonical forms (tuples, sorted Ntune lists) are made at construction.

- ``small``: the CPU preset used for ``results/small/``, the book and ``make demo``. 64x64
  images; cascades of 3 subnetworks x 16 channels (4 hidden layers); 128 pretraining images
  per source (natural crops; T1 has only 78 bundled training slices, so its network sees all
  78). Every choice is made on the target's validation slab (12 T1 slices, never the test
  slab): pretraining runs at most 8 epochs per subnetwork, fine-tuning and the from-scratch
  baseline at most 100 epochs, each with early stopping on validation PSNR (patience 2 epochs
  per subnetwork, 10 epochs end to end; the same rule and budget for fine-tuned and
  from-scratch networks); learning rates come from small grids (pretraining 1e-3 / 3e-3,
  fine-tuning and from scratch 3e-4 / 1e-3 / 3e-3), CS lambda and iterations per R from a
  4 x 2 grid. Three seeds (0, 1, 2: weights, crops, masks and batch order change with the
  seed); torch uses one CPU thread inside a run, so the numbers do not depend on the machine's
  thread count. The sweep uses R = 4, Ntrain 32/128, Ntune 0/2/4/8/20; the multi-coil study R = 4,
  4 virtual coils, 2 subnetworks x 12 channels, a 3x3 SPIRiT kernel in the CC layers (the
  8x8 calibration square of a 64x64 mask is too small for 7x7), L1-SPIRiT's kernel, lambda
  and iterations from a validation grid. The sizes are what fits three seeds of the three
  studies in well under an hour on 2 cores.
- ``tiny``: 32x32, 2 subnetworks of 8 channels, one or two epochs, one seed: for the test
  suite only; its numbers mean nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from .._validate import check_acceleration, check_bool, check_choice, check_float, check_int
from ..presets import DEFAULT_R, PAPER, SMALL, SMALL_LR_GRID, SMALL_LR_GRID_PRETRAIN, STOPPING

__all__ = ["StudyConfig", "TransferConfig", "SweepConfig", "MulticoilConfig", "EfficiencyConfig", "make_config", "SCALES",
           "STUDIES"]

SCALES = ("tiny", "small", "full")
STUDIES = ("transfer", "sweep", "multicoil")
_DOMAINS = ("natural", "t1", "t2", "t1_synth", "pd")
_DEVICES = ("cpu", "cuda", "auto", "mps")


def _err(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{name}: expected {expected}, got {got!r}")


def _check_distinct(name: str, v) -> None:
    if len(set(v)) != len(v):
        raise _err(name, "distinct values", list(v))


def _as_list(name: str, v: Any, kind: str) -> tuple:
    """``v`` as a tuple (a single value is a 1-tuple); a non-empty list is required."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name}: expected a list of {kind}, got {type(v).__name__} {v!r}")
    if len(v) == 0:
        raise _err(name, f"a non-empty list of {kind}", v)
    return tuple(v)


def _check_int_list(name: str, v: Any, low: int = 0) -> tuple[int, ...]:
    """A non-empty list of distinct ints >= ``low`` (``mrtl._validate.check_int`` per element)."""
    v = _as_list(name, v, "ints")
    out = tuple(check_int(x, f"{name}[{i}]", low=low) for i, x in enumerate(v))
    _check_distinct(name, out)
    return out


def _check_float_list(name: str, v: Any, low_open: bool = True) -> tuple[float, ...]:
    """A non-empty list of distinct finite numbers > 0 (>= 0 with ``low_open=False``)."""
    v = _as_list(name, v, "numbers")
    out = tuple(check_float(x, f"{name}[{i}]", low=0.0, low_open=low_open) for i, x in enumerate(v))
    _check_distinct(name, out)
    return out


def _check_R_list(name: str, v: Any) -> tuple[int, ...]:
    """Acceleration factors: integers (the studies' mask banks and tables are per integer R),
    each checked by :func:`mrtl._validate.check_acceleration` (the one R check of mrtl), within
    the paper's range R = 2..12."""
    v = _as_list(name, v, "ints")
    out = []
    for i, x in enumerate(v):
        check_int(x, f"{name}[{i}]")
        out.append(int(check_acceleration(x, f"{name}[{i}]", low=2.0, high=12.0)))
    _check_distinct(name, out)
    return tuple(out)


@dataclass
class StudyConfig:
    """Settings shared by every study (one field per notebook parameter where they overlap).

    Attributes:
        scale: "tiny", "small" or "full" (which preset the other fields came from).
        device: "cpu", "cuda", "mps" or "auto".
        seed: first seed; the study runs seeds ``seed, seed + 1, ..., seed + n_seeds - 1``.
            Masks, crops of the photos, weights and batch order derive from each seed.
        n_seeds: number of seeds (small: 3; tables report mean and sd over seeds).
        size: image side (square images, ``size x size``).
        R_list: acceleration factors (paper: 2, 4, 6, 8, 10).
        n_train: number of pretraining images per source network (paper: 2000).
        n_test: number of test images (None = all of the test split).
        n_val: validation images per domain (None = all of the ``val`` split). Every choice
            (epochs, learning rates, CS/L1-SPIRiT parameters) is made on them.
        n_subnets, width, depth: cascade size (paper: 5 subnetworks, 64 channels, 4 hidden layers).
        epochs: maximum pretraining epochs per subnetwork (paper: 20).
        pretrain_patience: early stopping of each subnetwork on validation PSNR (None: run
            every epoch, keep the best).
        ft_epochs: maximum end-to-end epochs of fine-tuning and of the from-scratch baseline
            (paper: 100 fine-tuning epochs).
        patience: early stopping of fine-tuning and of the from-scratch baseline on validation
            PSNR (the same rule for both; None: run every epoch, keep the best).
        lr_pretrain, lr_finetune: Adam learning rates when no grid is given (paper: 1e-4, 1e-5).
        lr_scratch: learning rate of the from-scratch baseline when no grid is given.
        lr_grid_pretrain: pretraining learning rates tried on validation (None: ``lr_pretrain``).
        lr_grid: learning rates tried on validation for fine-tuning and, separately, for the
            from-scratch baseline (the same grid for both; None: ``lr_finetune``/``lr_scratch``).
            The choice is made at the first network of each kind in a study and seed (the first
            R), recorded in the results, and reused for the others.
        batch_size: pretraining mini-batch size (paper: 50).
        ft_batch_size: fine-tuning (and from-scratch) mini-batch size (paper: 50). Small scale
            uses 4, so that 20 target images give 5 updates per epoch.
        n_masks: masks per bank (paper: 100 train + 100 disjoint test).
        natural_dir, t1_dir, t2_dir, fastmri_dir: user data folders; None = bundled data.
        output_dir: where results are written (None = do not write).
        num_threads: torch CPU threads inside a run (restored afterwards). CPU results depend
            on the thread count (reductions are split differently), so the small preset fixes
            it to 1; None leaves it as is.
    """

    # the small preset (mrtl.presets.SMALL) is the default of every field
    scale: str = "small"
    device: str = "cpu"
    seed: int = 0
    n_seeds: int = 3
    size: int = SMALL["data"]["size"]
    R_list: tuple[int, ...] = (DEFAULT_R, 8)
    n_train: int = 128
    n_test: int | None = None
    n_val: int | None = None
    n_subnets: int = SMALL["model"]["n_subnets"]
    width: int = SMALL["model"]["width"]
    depth: int = SMALL["model"]["depth"]
    epochs: int = SMALL["train"]["epochs_per_subnet"]
    pretrain_patience: int | None = STOPPING["small"]["train"]["patience"]
    ft_epochs: int = SMALL["finetune"]["epochs"]
    patience: int | None = STOPPING["small"]["finetune"]["patience"]
    lr_pretrain: float = SMALL["train"]["lr"]
    lr_finetune: float = SMALL["finetune"]["lr"]
    lr_scratch: float = SMALL["finetune"]["lr"]
    lr_grid_pretrain: tuple[float, ...] | None = SMALL_LR_GRID_PRETRAIN
    lr_grid: tuple[float, ...] | None = SMALL_LR_GRID
    batch_size: int = SMALL["train"]["batch_size"]
    ft_batch_size: int = SMALL["finetune"]["batch_size"]
    n_masks: int = 100
    natural_dir: str | None = None
    t1_dir: str | None = None
    t2_dir: str | None = None
    fastmri_dir: str | None = None
    output_dir: str | None = None
    num_threads: int | None = 1

    study: ClassVar[str] = ""

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, scale: str, **overrides) -> "StudyConfig":
        """Return the ``scale`` preset ("tiny", "small" or "full") with ``overrides`` applied."""
        if scale not in SCALES:
            raise _err("scale", f"one of {SCALES}", scale)
        base = dict(getattr(cls, f"_{scale}")())
        base["scale"] = scale
        base.update(overrides)
        return cls.from_dict(base)

    @classmethod
    def tiny(cls, **overrides):
        return cls.preset("tiny", **overrides)

    @classmethod
    def small(cls, **overrides):
        return cls.preset("small", **overrides)

    @classmethod
    def full(cls, **overrides):
        return cls.preset("full", **overrides)

    @classmethod
    def _tiny(cls) -> dict:
        return dict(size=32, R_list=(DEFAULT_R,), n_train=12, n_test=4, n_val=4, n_subnets=2, width=8, depth=2,
                    epochs=1, ft_epochs=2, patience=1, pretrain_patience=1, n_seeds=1, lr_grid_pretrain=None,
                    lr_grid=None, batch_size=4, ft_batch_size=4, n_masks=8, device="cpu")

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        m, t, f = PAPER["model"], PAPER["train"], PAPER["finetune"]
        return dict(size=PAPER["data"]["size"], R_list=(2, 4, 6, 8, 10), n_train=2000, n_test=None, n_val=None,
                    n_subnets=m["n_subnets"], width=m["width"], depth=m["depth"], epochs=t["epochs_per_subnet"],
                    ft_epochs=f["epochs"], lr_pretrain=t["lr"], lr_finetune=f["lr"], lr_scratch=t["lr"],
                    lr_grid_pretrain=None, lr_grid=None, pretrain_patience=None, patience=20,
                    n_seeds=1, batch_size=t["batch_size"], ft_batch_size=f["batch_size"], n_masks=100, device="cuda",
                    num_threads=None)

    @property
    def seeds(self) -> tuple[int, ...]:
        """The seeds the study runs: ``seed, seed + 1, ..., seed + n_seeds - 1``."""
        return tuple(self.seed + k for k in range(self.n_seeds))

    def lr_candidates(self, kind: str) -> tuple[float, ...]:
        """Learning rates tried on validation for ``kind`` ("pretrain", "finetune", "scratch")."""
        if kind == "pretrain":
            return self.lr_grid_pretrain or (self.lr_pretrain,)
        if kind not in ("finetune", "scratch"):
            raise _err("kind", "'pretrain', 'finetune' or 'scratch'", kind)
        return self.lr_grid or ((self.lr_finetune,) if kind == "finetune" else (self.lr_scratch,))

    # ------------------------------------------------------------- conversions
    @classmethod
    def from_dict(cls, d: dict) -> "StudyConfig":
        """Build a config from a dict (unknown keys are an error, tuples may come as lists)."""
        if not isinstance(d, dict):
            raise TypeError(f"config: expected a dict, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config: unknown key(s) {unknown} for {cls.__name__}; known keys: {sorted(names)}")
        kw = {}
        for k, v in d.items():
            kw[k] = tuple(v) if isinstance(v, list) else v
        cfg = cls(**kw)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        """Plain-JSON dict of every field (tuples become lists)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes) -> "StudyConfig":
        """Copy with ``changes`` applied and validated."""
        d = self.to_dict()
        d.update(changes)
        return type(self).from_dict(d)

    # -------------------------------------------------------------- validation
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = ("R_list", "lr_grid_pretrain", "lr_grid")
    _SORTED_FIELDS: ClassVar[tuple[str, ...]] = ()
    _PATH_FIELDS: ClassVar[tuple[str, ...]] = ("natural_dir", "t1_dir", "t2_dir", "fastmri_dir", "output_dir")

    def __post_init__(self) -> None:
        """Canonical forms at construction (never in :meth:`validate`, which only checks): lists
        and single values of list fields become tuples, ``*_sorted`` lists are sorted, paths
        become strings. Anything else is left for :meth:`validate` to report."""
        for name in self._LIST_FIELDS + self._SORTED_FIELDS:
            v = getattr(self, name)
            if isinstance(v, list):
                v = tuple(v)
            elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
                v = (v,)
            if name in self._SORTED_FIELDS and isinstance(v, tuple) and all(
                    isinstance(x, int) and not isinstance(x, bool) for x in v):
                v = tuple(sorted(v))
            setattr(self, name, v)
        for name in self._PATH_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, str) and hasattr(v, "__fspath__"):
                setattr(self, name, str(v))

    def validate(self) -> "StudyConfig":
        """Check every field; raise ``ValueError``/``TypeError`` naming the field. The config is
        not changed (canonical forms are made at construction, :meth:`__post_init__`).

        Returns:
            ``self``, unchanged.
        """
        check_choice(self.scale, "scale", SCALES)
        if self.device not in _DEVICES and not str(self.device).startswith("cuda:"):
            raise _err("device", f"one of {_DEVICES} or 'cuda:N'", self.device)
        check_int(self.seed, "seed", low=0)
        check_int(self.size, "size", low=16)
        if self.size % 8:
            raise _err("size", "a multiple of 8 (wavelet levels and pooling need it)", self.size)
        _check_R_list("R_list", self.R_list)
        check_int(self.n_train, "n_train", low=1)
        for name in ("n_test", "n_val", "patience", "pretrain_patience", "num_threads"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name, low=1)
        check_int(self.n_seeds, "n_seeds", low=1)
        for name in ("lr_grid_pretrain", "lr_grid"):
            if getattr(self, name) is not None:
                _check_float_list(name, getattr(self, name))
        for name in ("n_subnets", "width", "depth", "epochs", "batch_size", "ft_batch_size", "n_masks"):
            check_int(getattr(self, name), name, low=1)
        check_int(self.ft_epochs, "ft_epochs", low=0)
        for name in ("lr_pretrain", "lr_finetune", "lr_scratch"):
            check_float(getattr(self, name), name, low=0.0, low_open=True)
        for name in self._PATH_FIELDS:
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name}: expected a folder (str) or None, got {type(v).__name__} {v!r}")
        self._validate_study()
        return self

    def _validate_study(self) -> None:
        pass


@dataclass
class TransferConfig(StudyConfig):
    """Single-coil domain transfer (Table 1, Supp. Tables 1-2).

    Attributes (besides :class:`StudyConfig`):
        targets: test domains ("t1" -> table T1, "t2" -> table S2).
        sources: pretraining domains; the one equal to the target is the in-domain reference.
        n_tune: fine-tuning images from the target domain (paper: "a few tens"; Fig. 2 uses 20).
        scratch: also train the from-scratch baseline (random init, the Ntune images only).
        cs: also run L1-wavelet CS (Supp. Table 1) on the same test images and masks.
        cs_lam_grid, cs_iter_grid: the grid from which CS's lambda (relative to max|A^H y|) and
            FISTA iterations are chosen per R and target on the validation images
            (``mrtl.recon.select_parameters``; the paper tuned 1e-3 and 80 / 120 iterations for
            its 256x256 data; they need not transfer to other sizes).
    """

    targets: tuple[str, ...] = ("t1",)
    sources: tuple[str, ...] = ("natural", "t1", "t2")
    n_tune: int = 20
    scratch: bool = True
    cs: bool = True
    cs_lam_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3)
    cs_iter_grid: tuple[int, ...] = (80, 300)

    study: ClassVar[str] = "transfer"
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = StudyConfig._LIST_FIELDS + ("targets", "sources", "cs_lam_grid",
                                                                          "cs_iter_grid")

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), sources=("natural", "t1"), n_tune=4, cs_lam_grid=(1e-3, 1e-2), cs_iter_grid=(5,))

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), targets=("t1", "t2"), n_tune=20)

    def _validate_study(self) -> None:
        for name, vals in (("targets", self.targets), ("sources", self.sources)):
            if not isinstance(vals, (list, tuple)) or not vals:
                raise _err(name, "a non-empty list of domains", vals)
            for v in vals:
                if v not in _DOMAINS:
                    raise _err(name, f"domains from {_DOMAINS}", list(vals))
        check_int(self.n_tune, "n_tune", low=1)
        _check_int_list("cs_iter_grid", self.cs_iter_grid, low=1)
        _check_float_list("cs_lam_grid", self.cs_lam_grid, low_open=False)
        for name in ("scratch", "cs"):
            check_bool(getattr(self, name), name)


@dataclass
class SweepConfig(StudyConfig):
    """Ntrain x Ntune sweep (Figs. 4-5): PSNR against Ntune for several Ntrain.

    Attributes (besides :class:`StudyConfig`):
        target: test domain ("t1" as in Fig. 4, "t2" as in Supp. Fig. 4).
        source: transferred source domain (paper: ImageNet, i.e. "natural").
        n_train_list: pretraining set sizes for the source network (paper: 500-4000).
        n_tune_list: fine-tuning set sizes (paper: 0-100); 0 means the raw network.
        reference_n_train, reference_n_tune: the in-domain reference network (paper: 4000 and
            100); ``reference_n_train=None`` uses ``max(n_train_list)``.
        scratch: also train the from-scratch baseline at each Ntune > 0.
        tol: the convergence rule's threshold as a fraction of the reference PSNR (0.05%).
    """

    target: str = "t1"
    source: str = "natural"
    n_train_list: tuple[int, ...] = (32, 128)
    n_tune_list: tuple[int, ...] = (0, 2, 4, 8, 20)
    reference_n_train: int | None = None
    reference_n_tune: int = 20
    scratch: bool = True
    tol: float = 5e-4
    R_list: tuple[int, ...] = (DEFAULT_R,)

    study: ClassVar[str] = "sweep"
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = StudyConfig._LIST_FIELDS + ("n_train_list",)
    _SORTED_FIELDS: ClassVar[tuple[str, ...]] = ("n_tune_list",)

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), n_train_list=(6, 12), n_tune_list=(0, 2), reference_n_tune=2)

    @classmethod
    def _small(cls) -> dict:
        return dict()  # the class defaults: SweepConfig() == SweepConfig.small()

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), n_train_list=(500, 1000, 2000, 4000),
                    n_tune_list=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100), reference_n_tune=100)

    def _validate_study(self) -> None:
        for name in ("target", "source"):
            if getattr(self, name) not in _DOMAINS:
                raise _err(name, f"one of {_DOMAINS}", getattr(self, name))
        _check_int_list("n_train_list", self.n_train_list, low=1)
        _check_int_list("n_tune_list", self.n_tune_list, low=0)
        if self.reference_n_train is not None:
            check_int(self.reference_n_train, "reference_n_train", low=1)
        check_int(self.reference_n_tune, "reference_n_tune", low=0)
        check_float(self.tol, "tol", low=0.0, low_open=True)
        check_bool(self.scratch, "scratch")


@dataclass
class MulticoilConfig(StudyConfig):
    """Multi-coil transfer (Table 2, Figs. 6-7).

    A network is pretrained on synthetic complex multi-coil natural images, fine-tuned on
    multi-coil T1 images, and compared with a T1-trained network and L1-SPIRiT.

    Attributes (besides :class:`StudyConfig`):
        coils: number of (virtual) coils (paper: 32 compressed to 8 by GCC).
        n_train_target: images for the in-domain (T1-trained) network (paper: 360).
        n_tune_list: fine-tuning set sizes for PSNR against Ntune (paper: 0-100).
        spirit_kernel_grid, spirit_lam_grid, spirit_iter_grid: the grid from which L1-SPIRiT's
            kernel size, lambda and POCS iterations are chosen per R on the validation images
            (paper: 7x7, 1e-3, per-R iterations 20/30/45/65/80, tuned on its own data).
        kernel_size: the SPIRiT kernel of the cascade's CC layers (Eq. 14).
        scratch: also train a cascade from scratch on each Ntune > 0 set.
    """

    coils: int = 4
    n_train_target: int = 24
    n_tune_list: tuple[int, ...] = (0, 4, 12)
    spirit_kernel_grid: tuple[int, ...] = (3, 5)
    spirit_lam_grid: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    spirit_iter_grid: tuple[int, ...] = (30, 80)
    kernel_size: int = 3
    scratch: bool = True
    n_train: int = 48
    n_test: int | None = None
    width: int = 12
    n_subnets: int = 2
    epochs: int = 4
    ft_epochs: int = 60
    patience: int | None = 8
    lr_grid_pretrain: tuple[float, ...] | None = (1e-3, 3e-3)
    lr_grid: tuple[float, ...] | None = (1e-3, 3e-3)
    R_list: tuple[int, ...] = (DEFAULT_R,)

    study: ClassVar[str] = "multicoil"
    _LIST_FIELDS: ClassVar[tuple[str, ...]] = StudyConfig._LIST_FIELDS + ("spirit_kernel_grid", "spirit_lam_grid",
                                                                          "spirit_iter_grid")
    _SORTED_FIELDS: ClassVar[tuple[str, ...]] = ("n_tune_list",)

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), coils=2, n_train_target=6, n_tune_list=(0, 2), kernel_size=3,
                    spirit_kernel_grid=(3,), spirit_lam_grid=(1e-3,), spirit_iter_grid=(3,))

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), coils=8, n_train_target=360, kernel_size=7, spirit_kernel_grid=(5, 7),
                    spirit_lam_grid=(3e-4, 1e-3, 3e-3), spirit_iter_grid=(20, 45, 80),
                    n_tune_list=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100))

    def _validate_study(self) -> None:
        check_int(self.coils, "coils", low=1)
        check_int(self.n_train_target, "n_train_target", low=1)
        _check_int_list("n_tune_list", self.n_tune_list, low=0)
        _check_float_list("spirit_lam_grid", self.spirit_lam_grid, low_open=False)
        _check_int_list("spirit_iter_grid", self.spirit_iter_grid, low=1)
        _check_int_list("spirit_kernel_grid", self.spirit_kernel_grid, low=1)
        check_int(self.kernel_size, "kernel_size", low=1)
        for k in (self.kernel_size, *self.spirit_kernel_grid):
            if k % 2 == 0:
                raise _err("kernel_size" if k == self.kernel_size else "spirit_kernel_grid", "odd kernel sizes", k)


_BY_STUDY = {"transfer": TransferConfig, "sweep": SweepConfig, "multicoil": MulticoilConfig}


def make_config(study: str, scale: str = "small", **overrides) -> StudyConfig:
    """Return the config of ``study`` ("transfer", "sweep", "multicoil") at ``scale``.

    ``overrides`` whose value is None are ignored, so that a notebook can pass its parameters
    straight through (``epochs=None`` = the preset's value; ``t1_dir=None`` = bundled data).
    """
    if study not in _BY_STUDY:
        raise _err("study", f"one of {STUDIES}", study)
    cls = _BY_STUDY[study]
    kw = {k: v for k, v in overrides.items() if v is not None}
    return cls.preset(scale, **kw)


# The data-efficiency study (beyond the paper: self-supervised and parameter-efficient
# fine-tuning) keeps its config in its own module; registered here so make_config knows it.
from .efficiency_config import EfficiencyConfig  # noqa: E402

_BY_STUDY["efficiency"] = EfficiencyConfig
STUDIES = STUDIES + ("efficiency",)
