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

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

__all__ = ["StudyConfig", "TransferConfig", "SweepConfig", "MulticoilConfig", "make_config", "SCALES", "STUDIES"]

SCALES = ("tiny", "small", "full")
STUDIES = ("transfer", "sweep", "multicoil")
_DOMAINS = ("natural", "t1", "t2", "t1_synth", "pd")
_DEVICES = ("cpu", "cuda", "auto", "mps")


def _err(name: str, expected: str, got: Any) -> ValueError:
    return ValueError(f"{name}: expected {expected}, got {got!r}")


def _check_int(name: str, v: Any, low: int = 0) -> None:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if v < low:
        raise _err(name, f"an int >= {low}", v)


def _check_pos_float(name: str, v: Any, low_open: bool = True) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(v).__name__} {v!r}")
    if v != v or v in (float("inf"), float("-inf")):
        raise _err(name, "a finite number", v)
    if (v <= 0) if low_open else (v < 0):
        raise _err(name, "a positive number" if low_open else "a number >= 0", v)


def _check_int_list(name: str, v: Any, low: int = 0, nonempty: bool = True) -> tuple[int, ...]:
    if isinstance(v, (int,)) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, (list, tuple)):
        raise TypeError(f"{name}: expected a list of ints, got {type(v).__name__} {v!r}")
    if nonempty and len(v) == 0:
        raise _err(name, "a non-empty list of ints", v)
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"{name}: expected a list of ints, got element {x!r} ({type(x).__name__})")
        if x < low:
            raise _err(name, f"ints >= {low}", list(v))
    if len(set(v)) != len(v):
        raise _err(name, "distinct values", list(v))
    return tuple(v)


def _check_float_list(name: str, v: Any, low_open: bool = True) -> tuple[float, ...]:
    """A non-empty list of distinct finite numbers > 0 (>= 0 with ``low_open=False``)."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = (v,)
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        raise _err(name, "a non-empty list of numbers", v)
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise TypeError(f"{name}: expected a list of numbers, got element {x!r} ({type(x).__name__})")
        if x != x or x in (float("inf"), float("-inf")) or ((x <= 0) if low_open else (x < 0)):
            raise _err(name, "finite numbers > 0" if low_open else "finite numbers >= 0", list(v))
    if len(set(v)) != len(v):
        raise _err(name, "distinct values", list(v))
    return tuple(float(x) for x in v)


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

    scale: str = "small"
    device: str = "cpu"
    seed: int = 0
    n_seeds: int = 3
    size: int = 64
    R_list: tuple[int, ...] = (4, 8)
    n_train: int = 128
    n_test: int | None = None
    n_val: int | None = None
    n_subnets: int = 3
    width: int = 16
    depth: int = 4
    epochs: int = 8
    pretrain_patience: int | None = 2
    ft_epochs: int = 100
    patience: int | None = 10
    lr_pretrain: float = 1e-3
    lr_finetune: float = 1e-3
    lr_scratch: float = 1e-3
    lr_grid_pretrain: tuple[float, ...] | None = (1e-3, 3e-3)
    lr_grid: tuple[float, ...] | None = (3e-4, 1e-3, 3e-3)
    batch_size: int = 8
    ft_batch_size: int = 4
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
        return dict(size=32, R_list=(4,), n_train=12, n_test=4, n_val=4, n_subnets=2, width=8, depth=2,
                    epochs=1, ft_epochs=2, patience=1, pretrain_patience=1, n_seeds=1, lr_grid_pretrain=None,
                    lr_grid=None, batch_size=4, ft_batch_size=4, n_masks=8, device="cpu")

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        return dict(size=256, R_list=(2, 4, 6, 8, 10), n_train=2000, n_test=None, n_val=None, n_subnets=5,
                    width=64, depth=4, epochs=20, ft_epochs=100, lr_pretrain=1e-4, lr_finetune=1e-5,
                    lr_scratch=1e-4, lr_grid_pretrain=None, lr_grid=None, pretrain_patience=None, patience=20,
                    n_seeds=1, batch_size=50, ft_batch_size=50, n_masks=100, device="cuda", num_threads=None)

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
    def validate(self) -> "StudyConfig":
        """Check every field; raise ``ValueError``/``TypeError`` naming the field."""
        if self.scale not in SCALES:
            raise _err("scale", f"one of {SCALES}", self.scale)
        if self.device not in _DEVICES and not str(self.device).startswith("cuda:"):
            raise _err("device", f"one of {_DEVICES} or 'cuda:N'", self.device)
        _check_int("seed", self.seed)
        _check_int("size", self.size, low=16)
        if self.size % 8:
            raise _err("size", "a multiple of 8 (wavelet levels and pooling need it)", self.size)
        self.R_list = _check_int_list("R_list", self.R_list, low=2)
        if max(self.R_list) > 12:
            raise _err("R_list", "acceleration factors in [2, 12]", list(self.R_list))
        _check_int("n_train", self.n_train, low=1)
        if self.n_test is not None:
            _check_int("n_test", self.n_test, low=1)
        if self.n_val is not None:
            _check_int("n_val", self.n_val, low=1)
        _check_int("n_seeds", self.n_seeds, low=1)
        for name in ("patience", "pretrain_patience"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1)
        for name in ("lr_grid_pretrain", "lr_grid"):
            if getattr(self, name) is not None:
                setattr(self, name, _check_float_list(name, getattr(self, name)))
        _check_int("n_subnets", self.n_subnets, low=1)
        _check_int("width", self.width, low=1)
        _check_int("depth", self.depth, low=1)
        _check_int("epochs", self.epochs, low=1)
        _check_int("ft_epochs", self.ft_epochs, low=0)
        for name in ("lr_pretrain", "lr_finetune", "lr_scratch"):
            _check_pos_float(name, getattr(self, name))
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("ft_batch_size", self.ft_batch_size, low=1)
        _check_int("n_masks", self.n_masks, low=1)
        for name in ("natural_dir", "t1_dir", "t2_dir", "fastmri_dir", "output_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                v = str(v)
                setattr(self, name, v)
        if self.num_threads is not None:
            _check_int("num_threads", self.num_threads, low=1)
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

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), sources=("natural", "t1"), n_tune=4, cs_lam_grid=(1e-3, 1e-2), cs_iter_grid=(5,))

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), targets=("t1", "t2"), n_tune=20)

    def _validate_study(self) -> None:
        if isinstance(self.targets, str):
            self.targets = (self.targets,)
        if isinstance(self.sources, str):
            self.sources = (self.sources,)
        for name, vals in (("targets", self.targets), ("sources", self.sources)):
            if not vals:
                raise _err(name, "a non-empty list of domains", vals)
            for v in vals:
                if v not in _DOMAINS:
                    raise _err(name, f"domains from {_DOMAINS}", list(vals))
        _check_int("n_tune", self.n_tune, low=1)
        self.cs_iter_grid = _check_int_list("cs_iter_grid", self.cs_iter_grid, low=1)
        self.cs_lam_grid = _check_float_list("cs_lam_grid", self.cs_lam_grid, low_open=False)
        for name in ("scratch", "cs"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name}: expected a bool, got {getattr(self, name)!r}")


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
    n_train_list: tuple[int, ...] = (20, 80)
    n_tune_list: tuple[int, ...] = (0, 2, 4, 8, 20)
    reference_n_train: int | None = None
    reference_n_tune: int = 20
    scratch: bool = True
    tol: float = 5e-4
    R_list: tuple[int, ...] = (4,)

    study: ClassVar[str] = "sweep"

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), n_train_list=(6, 12), n_tune_list=(0, 2), reference_n_tune=2)

    @classmethod
    def _small(cls) -> dict:
        return dict(R_list=(4,), n_train_list=(32, 128))

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), n_train_list=(500, 1000, 2000, 4000),
                    n_tune_list=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100), reference_n_tune=100)

    def _validate_study(self) -> None:
        for name in ("target", "source"):
            if getattr(self, name) not in _DOMAINS:
                raise _err(name, f"one of {_DOMAINS}", getattr(self, name))
        self.n_train_list = _check_int_list("n_train_list", self.n_train_list, low=1)
        self.n_tune_list = tuple(sorted(_check_int_list("n_tune_list", self.n_tune_list, low=0)))
        if self.reference_n_train is not None:
            _check_int("reference_n_train", self.reference_n_train, low=1)
        _check_int("reference_n_tune", self.reference_n_tune, low=0)
        _check_pos_float("tol", self.tol)
        if not isinstance(self.scratch, bool):
            raise TypeError(f"scratch: expected a bool, got {self.scratch!r}")


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
    R_list: tuple[int, ...] = (4,)

    study: ClassVar[str] = "multicoil"

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
        _check_int("coils", self.coils, low=1)
        _check_int("n_train_target", self.n_train_target, low=1)
        self.n_tune_list = tuple(sorted(_check_int_list("n_tune_list", self.n_tune_list, low=0)))
        self.spirit_lam_grid = _check_float_list("spirit_lam_grid", self.spirit_lam_grid, low_open=False)
        self.spirit_iter_grid = _check_int_list("spirit_iter_grid", self.spirit_iter_grid, low=1)
        self.spirit_kernel_grid = _check_int_list("spirit_kernel_grid", self.spirit_kernel_grid, low=1)
        _check_int("kernel_size", self.kernel_size, low=1)
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
