"""Datasets materialised as tensors for training and evaluation (:class:`TrainData`).

:func:`as_train_data` turns any sequence of ``Sample``-like records (``mrtl.data.UndersampledDataset``)
into one :class:`TrainData` of stacked tensors, checks sizes and finite values (naming the sample
and the field), and gives multi-coil samples their per-sample SPIRiT operators (the CC layers of
Eq. 14). ``mrtl.train`` trains and evaluates on it; it is re-exported there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch

__all__ = ["TrainData", "as_train_data", "input_p99", "percentile99", "check_compatible", "calibrate_G"]


@dataclass
class TrainData:
    """A dataset materialised as tensors (``N`` samples, all on one device).

    ``x_u`` zero-filled images ``(N, H, W)``; ``kspace`` ``(N, H, W)`` or ``(N, C, H, W)``;
    ``mask`` ``(N, H, W)`` bool; ``reference`` ``(N, H, W)`` complex; ``maps`` ``(N, C, H, W)``
    or None; ``G_img`` ``(N, C, C, H, W)`` or None; ``meta`` one dict per sample (subject,
    source); ``R`` ``(N,)`` float64, the acceleration each mask was drawn for (``Sample.R``;
    None measures each mask's ``H * W / sampled``). Use :meth:`subset` to select samples
    (it keeps every field, ``R`` included)."""

    x_u: torch.Tensor
    kspace: torch.Tensor
    mask: torch.Tensor
    reference: torch.Tensor
    maps: Optional[torch.Tensor] = None
    G_img: Optional[torch.Tensor] = None
    meta: Optional[list] = None
    R: Optional[torch.Tensor] = None

    def __post_init__(self):
        n = int(self.x_u.shape[0])
        if self.R is None:  # data that did not carry their R: measure it from the masks
            m = torch.as_tensor(self.mask)
            m = m.expand(n, *m.shape[-2:]) if m.ndim == 2 else m
            sampled = m.reshape(m.shape[0], -1).sum(1).to(torch.float64)
            self.R = ((m.shape[-2] * m.shape[-1]) / sampled.clamp_min(1)).cpu()
        else:
            R = torch.as_tensor(self.R, dtype=torch.float64).cpu()  # metadata: kept on the CPU
            self.R = R.reshape(1).expand(n).clone() if R.numel() == 1 else R.reshape(-1)
            if self.R.numel() != n:
                raise ValueError(f"R: expected one acceleration per sample ({n}), got {R.numel()} values")
            if not bool(torch.isfinite(self.R).all()) or bool((self.R < 1).any()):
                raise ValueError(f"R: expected finite values >= 1, got {self.R.tolist()}")

    def __len__(self) -> int:
        return int(self.x_u.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.x_u.shape[-2:])

    def batch(self, idx: torch.Tensor) -> dict:
        out = dict(x_u=self.x_u[idx], kspace=self.kspace[idx], mask=self.mask[idx], reference=self.reference[idx])
        out["maps"] = None if self.maps is None else self.maps[idx]
        out["G_img"] = None if self.G_img is None else self.G_img[idx]
        return out

    def to(self, device) -> "TrainData":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TrainData(mv(self.x_u), mv(self.kspace), mv(self.mask), mv(self.reference), mv(self.maps), mv(self.G_img),
                         self.meta, self.R)  # R stays a CPU tensor: it is metadata, not model input

    def subset(self, idx) -> "TrainData":
        """The samples ``idx`` (an index tensor, list or slice), every field (``meta``, ``R``) kept."""
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        sel = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        meta = None if self.meta is None else [self.meta[int(i)] for i in idx]
        return TrainData(sel(self.x_u), sel(self.kspace), sel(self.mask), sel(self.reference), sel(self.maps),
                         sel(self.G_img), meta, self.R[idx])


def _field(sample, name):
    if isinstance(sample, Mapping):
        return sample.get(name)
    return getattr(sample, name, None)


def _to_complex(t, name):
    t = torch.as_tensor(np.asarray(t)) if not isinstance(t, torch.Tensor) else t
    if not t.is_complex():
        t = t.to(torch.float32).to(torch.complex64)
    return t.to(torch.complex64)


def calibrate_G(kspace: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample SPIRiT image-space operators ``(N, C, C, H, W)`` (7x7 kernel, Tikhonov 1e-2)."""
    from ..recon import spirit_calibrate  # a lower layer; imported when first needed

    H, W = kspace.shape[-2:]
    out = []
    for s in range(0, kspace.shape[0], 16):
        k = kspace[s : s + 16] * mask[s : s + 16, None]
        ker = spirit_calibrate(k, kernel_size=7, tikhonov=1e-2)
        out.append(torch.as_tensor(ker.image_operator((H, W))).to(torch.complex64).reshape(-1, *k.shape[1:2], *k.shape[1:]))
    return torch.cat(out)


def as_train_data(dataset, cc: bool = True, name: str = "dataset") -> TrainData:
    """Materialise ``dataset`` (a :class:`TrainData`, or a sequence of samples with the fields
    ``zero_filled, kspace, mask, reference, maps`` such as ``mrtl.data.UndersampledDataset``)
    into tensors. Multi-coil data get per-sample SPIRiT operators when ``cc`` (unless the
    samples carry ``G_img``).

    Raises:
        ValueError: a field holds NaN/Inf values (the message names the field and the first
            sample), sizes differ, or a field is missing.
    """
    if isinstance(dataset, TrainData):
        _check_finite_data(dataset, name)
        return dataset
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"{name}: expected a dataset (len() and [i] giving samples) or TrainData, got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{name}: the dataset is empty")
    xs, ks, ms, rs, maps, gs, meta, Rs = [], [], [], [], [], [], [], []
    for i in range(n):
        s = dataset[i]
        for f in ("zero_filled", "kspace", "mask", "reference"):
            if _field(s, f) is None:
                raise ValueError(f"{name}: sample {i} has no field {f!r} (expected mrtl.data.Sample fields)")
        xs.append(_to_complex(_field(s, "zero_filled"), "zero_filled"))
        ks.append(_to_complex(_field(s, "kspace"), "kspace"))
        ms.append(torch.as_tensor(_field(s, "mask")).to(torch.bool))
        rs.append(_to_complex(_field(s, "reference"), "reference"))
        mp = _field(s, "maps")
        maps.append(None if mp is None or mp.shape[0] == 0 else _to_complex(mp, "maps"))  # (0, H, W): single-coil
        g = _field(s, "G_img")
        gs.append(None if g is None else _to_complex(g, "G_img"))
        meta.append({"index": i, "subject": _field(s, "subject"), "source": _field(s, "source")})
        Rs.append(_field(s, "R"))
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise ValueError(f"{name}: all images must have one size, got {sorted(shapes)}")
    for i in range(n):  # per sample, so that the error names the sample and the field
        H, W = xs[i].shape[-2:]
        for nm, t in (("kspace", ks[i]), ("mask", ms[i]), ("reference", rs[i]), ("maps", maps[i])):
            if t is not None and tuple(t.shape[-2:]) != (H, W):
                raise ValueError(f"{name}: sample {i} has {nm} of size {tuple(t.shape[-2:])} but zero_filled of size {(H, W)}; expected equal sizes")
        if tuple(rs[i].shape) != tuple(xs[i].shape):
            raise ValueError(f"{name}: sample {i} has reference of shape {tuple(rs[i].shape)} but zero_filled {tuple(xs[i].shape)}")
        if maps[i] is not None and tuple(maps[i].shape) != tuple(ks[i].shape):
            raise ValueError(f"{name}: sample {i} has maps of shape {tuple(maps[i].shape)} but kspace {tuple(ks[i].shape)}; expected one map per coil")
    if len({tuple(k.shape) for k in ks}) != 1:
        raise ValueError(f"{name}: all samples must have one k-space shape, got {sorted({tuple(k.shape) for k in ks})}")
    x_u, kspace, mask, ref = torch.stack(xs), torch.stack(ks), torch.stack(ms), torch.stack(rs)
    if mask.ndim == 2:
        mask = mask[None].expand(n, -1, -1)
    maps_t = None if any(m is None for m in maps) else torch.stack(maps)
    G = None if any(g is None for g in gs) else torch.stack(gs)
    if kspace.ndim == 4 and G is None and cc:
        G = calibrate_G(kspace, mask)
    if any(r is None for r in Rs):  # records without R: measured from their masks
        R = None
    else:
        R = torch.tensor([float(r) for r in Rs], dtype=torch.float64)
    data = TrainData(x_u, kspace, mask, ref, maps_t, G, meta, R)
    _check_finite_data(data, name)
    return data


def _check_finite_data(data: TrainData, name: str):
    """Refuse NaN/Inf in any field: one such sample makes the loss, and then every weight, NaN."""
    for nm, t in (("zero_filled", data.x_u), ("kspace", data.kspace), ("reference", data.reference),
                  ("maps", data.maps), ("G_img", data.G_img)):
        if t is None or not (t.is_floating_point() or t.is_complex()):
            continue
        ok = torch.isfinite(t).reshape(t.shape[0], -1).all(dim=1)
        if not bool(ok.all()):
            bad = int((~ok).nonzero()[0, 0])
            raise ValueError(f"{name}: {nm} of sample {bad} contains NaN/Inf values ({int((~ok).sum())} of "
                             f"{t.shape[0]} samples affected); expected finite data")


def percentile99(images: torch.Tensor, chunk: int = 2**22) -> torch.Tensor:
    """99th percentile of ``|image|`` per image ``(B,)`` (float32), in chunks of images
    (``torch.quantile`` refuses inputs above 2**24 elements)."""
    mags = images.abs().flatten(1)
    per = max(1, chunk // max(1, mags.shape[1]))
    return torch.cat([torch.quantile(mags[s : s + per].float(), 0.99, dim=1) for s in range(0, mags.shape[0], per)])


def input_p99(data: TrainData) -> float:
    """The median over samples of the 99th percentile of ``|x_u|``: the input scale the network
    was trained at, which :func:`mrtl.train.reconstruct` restores (``mrtl.data`` normalises the *reference*
    so its 99th percentile is 1; the zero-filled input's is lower, e.g. about 0.91 for the
    bundled T1 slices at R = 4 and 0.83 at R = 8)."""
    return float(torch.quantile(percentile99(data.x_u).double(), 0.5))


def check_compatible(model, data: TrainData, name: str):
    """Refuse data whose coil layout does not match the cascade (``model.coils``), naming ``name``."""
    multi = data.kspace.ndim == 4
    if multi != (model.coils == "multi"):
        raise ValueError(
            f"{name}: {'multi' if multi else 'single'}-coil data (kspace {tuple(data.kspace.shape)}) "
            f"given to a {model.coils}-coil cascade"
        )
    if multi and data.maps is None:
        raise ValueError(f"{name}: multi-coil samples need coil maps (Sample.maps)")

