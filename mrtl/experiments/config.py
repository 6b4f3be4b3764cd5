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
  images; cascades of 3 subnetworks x 32 channels (4 hidden layers); 128 pretraining images
  per source (natural crops; T1 has only 78 bundled training slices, so its network sees all
  78), 3 epochs per subnetwork at lr 1e-3 (batch 8, prefixes cached); 30 fine-tuning epochs at
  lr 1e-3 on the 20 bundled T1 fine-tuning slices (batch 4, so 5 updates per epoch); the
  from-scratch baseline gets exactly the same budget (30 epochs at lr 1e-3). The learning
  rates are raised from the paper's (1e-4 / 1e-5) because with them almost nothing is learned
  in the few hundred updates a CPU allows (DESIGN.md, "Small-scale facts"). Fine-tuning at
  1e-3 rather than 1e-4 was measured on the sweep (R = 4, Ntrain 128): with 1e-4 the
  fine-tuned natural network stayed 0.4-1.5 dB below the from-scratch baseline at every
  Ntune; with 1e-3 it is ahead from Ntune = 4 on. The sizes are what fits the demo's time
  budget on 2 cores. The sweep uses R = 4, Ntrain 32/128, Ntune 0/2/4/8/20; the multi-coil study R = 4,
  4 virtual coils, 2 subnetworks x 12 channels, a 3x3 SPIRiT kernel (the 8x8 calibration
  square of a 64x64 mask is too small for 5x5 or 7x7: L1-SPIRiT diverged with 5x5).
- ``tiny``: 32x32, 2 subnetworks of 8 channels, one epoch: for the test suite only; its
  numbers mean nothing.
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


@dataclass
class StudyConfig:
    """Settings shared by every study (one field per notebook parameter where they overlap).

    Attributes:
        scale: "tiny", "small" or "full" (which preset the other fields came from).
        device: "cpu", "cuda", "mps" or "auto".
        seed: base seed; masks, splits, weights and batches derive from it.
        size: image side (square images, ``size x size``).
        R_list: acceleration factors (paper: 2, 4, 6, 8, 10).
        n_train: number of pretraining images per source network (paper: 2000).
        n_test: number of test images (None = all of the test split).
        n_val: validation images held out from the fine-tuning split (model selection).
        n_subnets, width, depth: cascade size (paper: 5 subnetworks, 64 channels, 4 hidden layers).
        epochs: pretraining epochs per subnetwork (paper: 20).
        ft_epochs: fine-tuning epochs, end to end (paper: 100).
        lr_pretrain, lr_finetune: Adam learning rates (paper: 1e-4, 1e-5).
        lr_scratch: learning rate of the from-scratch baseline (random init, trained on the
            Ntune images only for ``ft_epochs`` epochs).
        batch_size: pretraining mini-batch size (paper: 50).
        ft_batch_size: fine-tuning (and from-scratch) mini-batch size (paper: 50). Small scale
            uses 4, so that 20 target images give 5 updates per epoch.
        n_masks: masks per bank (paper: 100 train + 100 disjoint test).
        natural_dir, t1_dir, t2_dir, fastmri_dir: user data folders; None = bundled data.
        output_dir: where results are written (None = do not write).
        num_threads: torch CPU threads (None = leave as is).
    """

    scale: str = "small"
    device: str = "cpu"
    seed: int = 0
    size: int = 64
    R_list: tuple[int, ...] = (4, 8)
    n_train: int = 128
    n_test: int | None = None
    n_val: int = 0
    n_subnets: int = 3
    width: int = 32
    depth: int = 4
    epochs: int = 3
    ft_epochs: int = 30
    lr_pretrain: float = 1e-3
    lr_finetune: float = 1e-3
    lr_scratch: float = 1e-3
    batch_size: int = 8
    ft_batch_size: int = 4
    n_masks: int = 100
    natural_dir: str | None = None
    t1_dir: str | None = None
    t2_dir: str | None = None
    fastmri_dir: str | None = None
    output_dir: str | None = None
    num_threads: int | None = None

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
        return dict(size=32, R_list=(4,), n_train=12, n_test=4, n_val=0, n_subnets=2, width=8, depth=2,
                    epochs=1, ft_epochs=1, batch_size=4, ft_batch_size=4, n_masks=8, device="cpu")

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        return dict(size=256, R_list=(2, 4, 6, 8, 10), n_train=2000, n_test=None, n_val=0, n_subnets=5,
                    width=64, depth=4, epochs=20, ft_epochs=100, lr_pretrain=1e-4, lr_finetune=1e-5,
                    lr_scratch=1e-4, batch_size=50, ft_batch_size=50, n_masks=100, device="cuda")

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
        _check_int("n_val", self.n_val)
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
        cs_lam, cs_iter: CS regularization and iterations (paper: 1e-3, 80 for T1 / 120 for T2).
    """

    targets: tuple[str, ...] = ("t1",)
    sources: tuple[str, ...] = ("natural", "t1", "t2")
    n_tune: int = 20
    scratch: bool = True
    cs: bool = True
    cs_lam: float = 1e-3
    cs_iter: int = 80

    study: ClassVar[str] = "transfer"

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), sources=("natural", "t1"), n_tune=4, cs_iter=5)

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
        _check_int("cs_iter", self.cs_iter, low=1)
        _check_pos_float("cs_lam", self.cs_lam, low_open=False)
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
        spirit_lam, spirit_iter, kernel_size: L1-SPIRiT settings (paper: 1e-3, per-R
            iterations 20/30/45/65/80, 7x7 kernel); ``spirit_iter=None`` = the paper's per-R values.
            ``kernel_size`` is also the SPIRiT kernel of the cascade's CC layers.
        scratch: also train a cascade from scratch on each Ntune > 0 set.
    """

    coils: int = 4
    n_train_target: int = 24
    n_tune_list: tuple[int, ...] = (0, 4, 12)
    spirit_lam: float = 1e-3
    spirit_iter: int | None = None
    kernel_size: int = 3
    scratch: bool = True
    n_train: int = 48
    n_test: int | None = 10
    width: int = 12
    n_subnets: int = 2
    epochs: int = 2
    ft_epochs: int = 12
    R_list: tuple[int, ...] = (4,)

    study: ClassVar[str] = "multicoil"

    @classmethod
    def _tiny(cls) -> dict:
        return dict(StudyConfig._tiny(), coils=2, n_train_target=6, n_tune_list=(0, 2), kernel_size=3, spirit_iter=3)

    @classmethod
    def _small(cls) -> dict:
        return dict()

    @classmethod
    def _full(cls) -> dict:
        return dict(StudyConfig._full(), coils=8, n_train_target=360, kernel_size=7,
                    n_tune_list=(0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100))

    def _validate_study(self) -> None:
        _check_int("coils", self.coils, low=1)
        _check_int("n_train_target", self.n_train_target, low=1)
        self.n_tune_list = tuple(sorted(_check_int_list("n_tune_list", self.n_tune_list, low=0)))
        _check_pos_float("spirit_lam", self.spirit_lam, low_open=False)
        if self.spirit_iter is not None:
            _check_int("spirit_iter", self.spirit_iter, low=1)
        _check_int("kernel_size", self.kernel_size, low=1)
        if self.kernel_size % 2 == 0:
            raise _err("kernel_size", "an odd int", self.kernel_size)


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
