"""Undersampling datasets: an image source plus a mask bank gives training samples.

Single-coil (paper, Eq. 1): ``y = M (F x + n)``, zero-filled input ``F^H y``; a magnitude image
is a complex image with zero phase, as in the paper.
Multi-coil (paper, Eq. 3 and 12): ``y = M (F S x + n)``, zero-filled input ``S^H F^H y``
(the coil-combined image, Eq. 14's ``A* x_u``).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from .._validate import check_choice, check_float, check_int
from ..linops import MultiCoilFourier, SingleCoilFourier
from .loaders import CoilRecord
from .simulate import add_sinusoidal_phase, coil_map_bank
from .sources import normalize

__all__ = ["Sample", "UndersampledDataset", "collate"]


class Sample(NamedTuple):
    """One training/testing sample (batched by :func:`collate`).

    Attributes:
        zero_filled: ``(H, W)`` complex64 zero-filled image (multi-coil: coil-combined ``S^H F^H y``).
        kspace: undersampled k-space, ``(H, W)`` or ``(C, H, W)`` complex64, zero where not sampled.
        mask: ``(H, W)`` bool sampling mask.
        reference: ``(H, W)`` complex64 fully sampled image, normalized so that the 99th
            percentile of its magnitude is 1.
        maps: ``(C, H, W)`` complex64 coil maps, or an empty ``(0, H, W)`` tensor for single-coil.
        subject: subject id.
        source: origin string of the image.
        R: the acceleration the mask was drawn for: the bank's ``R`` (``mrtl.masks.MaskBank.R``),
            or, for a bank of plain masks, the mask's achieved ``H * W / sampled``. It travels
            with the sample (and :class:`~mrtl.data.TrainData`) so that the reconstructions
            (e.g. ``cs_l1_wavelet(..., R=...)``) use it instead of re-deriving it from the mask.
    """

    zero_filled: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor
    maps: torch.Tensor
    subject: str | list
    source: str | list
    R: float | torch.Tensor


def collate(samples: list[Sample]) -> Sample:
    """Stack samples into a batch: tensors get a leading batch axis, ``subject``/``source`` become lists.

    Use as ``DataLoader(dataset, batch_size=..., collate_fn=collate)``; ``R`` becomes a ``(B,)``
    float64 tensor.
    """
    if not samples:
        raise ValueError("samples: expected at least one sample, got an empty list")
    return Sample(
        torch.stack([s.zero_filled for s in samples]),
        torch.stack([s.kspace for s in samples]),
        torch.stack([s.mask for s in samples]),
        torch.stack([s.reference for s in samples]),
        torch.stack([s.maps for s in samples]),
        [s.subject for s in samples],
        [s.source for s in samples],
        torch.tensor([float(s.R) for s in samples], dtype=torch.float64),
    )


class _TensorBank:
    def __init__(self, masks: torch.Tensor):
        self.masks = masks

    def __len__(self):
        return self.masks.shape[0]

    def __getitem__(self, i):
        return self.masks[i]


def _as_bank(mask_bank):
    if isinstance(mask_bank, np.ndarray):
        mask_bank = torch.from_numpy(mask_bank)
    if isinstance(mask_bank, torch.Tensor):
        m = mask_bank
        if m.ndim == 2:
            m = m[None]
        if m.ndim != 3:
            raise ValueError(f"mask_bank: expected a (n, H, W) or (H, W) mask tensor, got shape {tuple(m.shape)}")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError("mask_bank: expected boolean or 0/1 masks")
            m = m != 0
        if m.shape[0] == 0:
            raise ValueError("mask_bank: the bank holds no masks")
        return _TensorBank(m)
    if hasattr(mask_bank, "__len__") and hasattr(mask_bank, "__getitem__") and not isinstance(mask_bank, (str, bytes, dict)):
        if len(mask_bank) == 0:
            raise ValueError("mask_bank: the bank holds no masks")
        return mask_bank
    raise TypeError(f"mask_bank: expected a MaskBank, a sequence of (H, W) masks or a (n, H, W) tensor, got {type(mask_bank).__name__}")


class UndersampledDataset(torch.utils.data.Dataset):
    """Turn an image source and a mask bank into undersampled training samples (:class:`Sample`).

    Args:
        source: an image source (``len``, ``__getitem__ -> ImageRecord``), e.g. :func:`bundled`,
            :class:`PhotoFolder`, :class:`NiftiFolder`; or :class:`FastMRIFolder` (records with
            real coil k-space and maps; then ``coils`` must be None).
        mask_bank: a ``mrtl.masks.MaskBank``, a sequence of ``(H, W)`` bool masks, or a
            ``(n, H, W)`` / ``(H, W)`` bool tensor; masks must match the image size.
        coils: None (single-coil) or ``"simulate"`` (multi-coil with a bank of simulated 8-coil
            maps, :func:`mrtl.data.simulate.coil_map_bank`).
        noise_std: standard deviation of complex white Gaussian noise added to the sampled
            k-space (each of real/imaginary has ``noise_std / sqrt(2)``), relative to the
            normalized image; 0 for none.
        augment: random flips and (square images) 90-degree rotations.
        seed: base seed; sample ``i`` in epoch ``e`` is drawn with ``np.random.default_rng([seed, i, e])``.
        phase: ``"zero"`` (magnitude with zero phase, the paper's single-coil setting) or
            ``"sinusoidal"`` (random sinusoidal phase, the paper's multi-coil simulation);
            default: ``"sinusoidal"`` when ``coils="simulate"``, else ``"zero"``.
        n_map_sets, n_coils, n_virtual: size of the simulated coil-map bank (8 sets, 32 -> 8 coils).

    The mask of sample ``i`` is ``mask_bank[j]`` with ``j`` drawn from ``(seed, i, epoch)``: the same
    seed gives the same samples; :meth:`set_epoch` varies masks (and augmentation, phase, coil maps,
    noise) between epochs. The epoch lives in shared memory, so ``DataLoader`` workers see it
    too, persistent ones (``persistent_workers=True``) included: call ``set_epoch`` before
    ``iter(loader)`` (workers start prefetching when the iterator is created).
    """

    def __init__(
        self,
        source,
        mask_bank,
        coils: str | None = None,
        noise_std: float = 0.0,
        augment: bool = False,
        seed: int = 0,
        phase: str | None = None,
        n_map_sets: int = 8,
        n_coils: int = 32,
        n_virtual: int = 8,
    ):
        if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise TypeError(f"source: expected an image source (a sequence of ImageRecord), got {type(source).__name__}")
        if len(source) == 0:
            raise ValueError("source: the image source is empty")
        self.source = source
        self.mask_bank = _as_bank(mask_bank)
        self.coils = check_choice(coils, "coils", (None, "simulate"))
        self.noise_std = check_float(noise_std, "noise_std", low=0.0)
        if not isinstance(augment, bool):
            raise TypeError(f"augment: expected a bool, got {type(augment).__name__}")
        self.augment = augment
        self.seed = check_int(seed, "seed")
        if phase is None:
            phase = "sinusoidal" if coils == "simulate" else "zero"
        self.phase = check_choice(phase, "phase", ("zero", "sinusoidal"))
        self.n_map_sets = check_int(n_map_sets, "n_map_sets", low=1)
        self.n_coils = check_int(n_coils, "n_coils", low=1)
        self.n_virtual = check_int(n_virtual, "n_virtual", low=1, high=self.n_coils)
        # one int64 in shared memory: a persistent DataLoader worker holds its own copy of the
        # dataset, and a plain attribute set in the main process would never reach it
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._maps_shape, self._maps = None, None
        if self.coils == "simulate":  # build the map bank once, before any DataLoader worker starts
            first = source[0]
            if isinstance(first, CoilRecord):
                raise ValueError("coils: must be None for a source with real coil k-space (FastMRIFolder)")
            self._maps_shape = tuple(torch.as_tensor(first.image).shape[-2:])
            self._maps = coil_map_bank(self._maps_shape, self.n_map_sets, self.n_coils, self.n_virtual, seed=self.seed)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and the index, determines each sample's random draws
        (seen by every DataLoader worker, persistent ones included)."""
        self._epoch.fill_(check_int(epoch, "epoch", low=0))

    @property
    def epoch(self) -> int:
        """The current epoch (see :meth:`set_epoch`)."""
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def subjects(self):
        return getattr(self.source, "subjects", None)

    def _mask(self, rng, shape) -> tuple[torch.Tensor, float]:
        """A mask of the bank and its R (the bank's, else the mask's achieved one)."""
        j = int(rng.integers(len(self.mask_bank)))
        m = torch.as_tensor(self.mask_bank[j])
        if m.dtype != torch.bool:
            m = m != 0
        if tuple(m.shape) != tuple(shape):
            raise ValueError(f"mask_bank: mask {j} has shape {tuple(m.shape)} but the images are {tuple(shape)}; build the bank with shape={tuple(shape)}")
        R = getattr(self.mask_bank, "R", None)
        if R is None:
            n = int(m.sum())
            if n == 0:
                raise ValueError(f"mask_bank: mask {j} samples nothing")
            R = m.numel() / n
        return m, float(R)

    def _noise(self, rng, shape) -> torch.Tensor:
        if self.noise_std == 0:
            return torch.zeros(shape, dtype=torch.complex64)
        s = self.noise_std / np.sqrt(2)
        n = rng.standard_normal((2, *shape)).astype(np.float32) * s
        return torch.complex(torch.from_numpy(n[0]), torch.from_numpy(n[1]))

    def __getitem__(self, i: int) -> Sample:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index: expected an integer, got {type(i).__name__}")
        n = len(self)
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for {n} samples")
        i = int(i) % n
        rng = np.random.default_rng([self.seed, i, self.epoch])
        rec = self.source[i]
        if isinstance(rec, CoilRecord):
            return self._real_multicoil(rec, rng)
        x = torch.as_tensor(rec.image)
        if x.ndim != 2:
            raise ValueError(f"source: record {i} ({rec.source}) has shape {tuple(x.shape)}; expected a 2D (H, W) image")
        if self.augment:
            if rng.random() < 0.5:
                x = x.flip(-1)
            if rng.random() < 0.5:
                x = x.flip(-2)
            if x.shape[-1] == x.shape[-2]:
                x = torch.rot90(x, int(rng.integers(4)), dims=(-2, -1))
        if self.phase == "sinusoidal":
            x = add_sinusoidal_phase(x, rng)
        else:
            x = x.to(torch.complex64) if not x.is_complex() else x.to(torch.complex64)
        x = normalize(x)
        H, W = x.shape
        mask, R = self._mask(rng, (H, W))
        if self.coils is None:
            A = SingleCoilFourier(mask, validate=False)  # A = M F (Eq. 1)
            k = A.forward(x, validate=False) + mask * self._noise(rng, (H, W))  # y = A x + M n
            zf = A.adjoint(k, validate=False)  # x_u = A^H y (Eq. 3)
            maps = torch.zeros((0, H, W), dtype=torch.complex64)
        else:
            if (H, W) == self._maps_shape:
                bank = self._maps
            else:
                bank = coil_map_bank((H, W), self.n_map_sets, self.n_coils, self.n_virtual, seed=self.seed)
            maps = bank[int(rng.integers(bank.shape[0]))].clone()
            A = MultiCoilFourier(mask, maps, validate=False)  # A = M F S
            k = A.forward(x, validate=False) + mask * self._noise(rng, maps.shape)
            zf = A.adjoint(k, validate=False)
        return Sample(zf.to(torch.complex64), k.to(torch.complex64), mask, x.to(torch.complex64), maps, rec.subject, rec.source, R)

    def _real_multicoil(self, rec: CoilRecord, rng) -> Sample:
        if self.coils is not None:
            raise ValueError("coils: must be None for a source with real coil k-space (FastMRIFolder)")
        if rec.maps is None:
            raise ValueError(f"source: {rec.source} has no coil maps; build FastMRIFolder with maps='espirit'")
        ref, scale = normalize(rec.image, return_scale=True)
        kfull = rec.kspace * scale
        C, H, W = kfull.shape
        mask, R = self._mask(rng, (H, W))
        k = mask * (kfull + self._noise(rng, (C, H, W)))
        zf = MultiCoilFourier(mask, rec.maps, validate=False).adjoint(k, validate=False)  # A^H y
        return Sample(zf.to(torch.complex64), k.to(torch.complex64), mask, ref.to(torch.complex64), rec.maps.to(torch.complex64), rec.subject, rec.source, R)
