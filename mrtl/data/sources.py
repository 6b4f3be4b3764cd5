"""Image sources: records, normalization, subject splits and the bundled data set.

An image source is a sequence (``len``, ``__getitem__ -> ImageRecord``) with ``.subjects`` (the
distinct subject ids, in order) and ``.domain``. Splits are always by subject, so that no subject
(a volume, a synthetic draw, a photo) is in two of train / tune / val / test.
"""

from __future__ import annotations

import json
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .._validate import as_tensor, check_choice, check_int, check_shape2d

__all__ = [
    "ImageRecord",
    "normalize",
    "resize",
    "split_by_subject",
    "bundled",
    "BundledSource",
    "DOMAINS",
    "SPLITS",
    "data_dir",
    "manifest",
]

DOMAINS = ("natural", "t1", "t2", "t1_synth", "pd")
SPLITS = ("train", "tune", "val", "test", "all")


class ImageRecord(NamedTuple):
    """One 2D image and where it came from.

    Attributes:
        image: ``(H, W)`` float32 magnitude (or complex64) torch tensor, in storage scale.
        subject: subject id (a volume, a synthetic draw, a photo); splits never share one.
        source: a short human-readable origin, e.g. ``"colin27 z=85"``, ``"synthetic t2 ..."``.
        index: position of the record in its source.
        synthetic: True for simulated images.
    """

    image: torch.Tensor
    subject: str
    source: str
    index: int
    synthetic: bool


def normalize(img, return_scale: bool = False):
    """Scale an image so that the 99th percentile of its magnitude is 1 (the project convention).

    Args:
        img: ``(..., H, W)`` real or complex tensor/array; the percentile is taken over all of it.
        return_scale: also return the factor the image was multiplied with.

    Returns:
        the scaled tensor (same dtype), and the scale if ``return_scale``.
    """
    x = as_tensor(img, "img")
    if not (x.is_floating_point() or x.is_complex()):
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("img: contains NaN/Inf values; expected finite data")
    mag = x.abs().flatten().to(torch.float64)
    if mag.numel() == 0:
        raise ValueError("img: empty image")
    p99 = float(torch.quantile(mag, 0.99)) if mag.numel() <= 16_000_000 else float(np.percentile(mag.numpy(), 99))
    if p99 <= 0:
        p99 = float(mag.max())
        if p99 <= 0:
            raise ValueError("img: the image is all zero; cannot normalize")
    scale = 1.0 / p99
    out = x * scale
    return (out, scale) if return_scale else out


def resize(img: torch.Tensor, size) -> torch.Tensor:
    """Resize a ``(H, W)`` image to ``size``: area averaging when shrinking (anti-aliased), bilinear when growing.

    Complex images are resized as real and imaginary parts.
    """
    size = check_shape2d(size, "size")
    if tuple(img.shape[-2:]) == size:
        return img
    if img.is_complex():
        return torch.complex(resize(img.real, size), resize(img.imag, size))
    x = img.to(torch.float32)[None, None]
    shrink = size[0] <= img.shape[-2] and size[1] <= img.shape[-1]
    if shrink:
        x = F.interpolate(x, size=size, mode="area")
    else:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x[0, 0]


def split_by_subject(subjects: Sequence[str], fractions: Sequence[float], seed: int = 0) -> list[list[str]]:
    """Split distinct subjects at random into groups with the given fractions.

    Args:
        subjects: subject ids (repeats allowed: one per image); the distinct ids are split.
        fractions: non-negative fractions, one per group, summing to 1 (e.g. ``(0.7, 0.1, 0.1, 0.1)``).
        seed: random seed.

    Returns:
        one sorted list of subject ids per fraction; no subject is in two lists, all are used.
        Every group with a positive fraction gets at least one subject when there are enough.
    """
    check_int(seed, "seed")
    fr = np.asarray(list(fractions), dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0:
        raise ValueError(f"fractions: expected a non-empty sequence of numbers, got {fractions!r}")
    if not np.all(np.isfinite(fr)) or (fr < 0).any() or abs(fr.sum() - 1) > 1e-6:
        raise ValueError(f"fractions: expected non-negative numbers summing to 1, got {list(fractions)!r}")
    uniq = sorted(set(str(s) for s in subjects))
    n = len(uniq)
    if n == 0:
        raise ValueError("subjects: expected at least one subject id, got none")
    counts = np.floor(fr * n).astype(int)
    rem = fr * n - counts
    for i in np.argsort(-rem, kind="stable")[: n - counts.sum()]:
        counts[i] += 1
    # give every positive-fraction group at least one subject, taken from the largest group
    for i in np.where((fr > 0) & (counts == 0))[0]:
        j = int(np.argmax(counts))
        if counts[j] > 1:
            counts[j] -= 1
            counts[i] += 1
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for c in counts:
        out.append(sorted(uniq[k] for k in perm[start : start + c]))
        start += c
    return out


# ---------------------------------------------------------------------------------------------
def data_dir() -> Path:
    """The folder with the bundled ``.npz`` files (``$MRTL_DATA_DIR`` or the repository's ``data/``)."""
    env = os.environ.get("MRTL_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


@lru_cache(maxsize=None)
def manifest() -> dict:
    """The build manifest (``data/manifest.json``): per domain, file, counts, source, license, sha256."""
    p = data_dir() / "manifest.json"
    if not p.exists():
        raise FileNotFoundError(
            f"{p} not found: the bundled data ships with the mrtl repository (data/); clone the repository "
            "(pip install -e .) or set MRTL_DATA_DIR to a folder holding the bundled .npz files"
        )
    return json.loads(p.read_text())


@lru_cache(maxsize=None)
def _load_npz(domain: str) -> dict:
    m = manifest()
    if domain not in m:
        raise ValueError(f"domain: {domain!r} is not in the bundled manifest ({sorted(m)})")
    path = data_dir() / m[domain]["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the bundled file for domain {domain!r} is missing; restore data/ from the repository")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: corrupt bundled file ({e}); restore it from the repository") from e


class BundledSource(torch.utils.data.Dataset):
    """One split of one bundled domain (see :func:`bundled`)."""

    def __init__(self, domain: str, split: str = "train", size=None, crop: int = 256, crops_per_photo: int | None = None, seed: int = 0):
        self.domain = check_choice(domain, "domain", DOMAINS)
        self.split = check_choice(split, "split", SPLITS)
        self.size = None if size is None else check_shape2d(size, "size")
        self.seed = check_int(seed, "seed")
        info = manifest()[domain]
        self.synthetic = bool(info["synthetic"])
        self.license = info["license"]
        z = _load_npz(domain)
        if domain == "natural":
            self.crop = check_int(crop, "crop", low=8)
            meta = json.loads(str(z["meta"]))
            photos = [m for m in meta if split == "all" or m["split"] == split]
            if crops_per_photo is None:
                crops_per_photo = 16 if split in ("train", "all") else 4
            self.crops_per_photo = check_int(crops_per_photo, "crops_per_photo", low=1)
            self._photos = [(m["name"], z[f"photo_{m['name']}"]) for m in photos]
            self._items = [(p, k) for p in range(len(self._photos)) for k in range(self.crops_per_photo)]
            self.subjects = [name for name, _ in self._photos]
            self.item_subjects = [self._photos[p][0] for p, _ in self._items]
            self.positions = None
        else:
            keep = np.nonzero((z["split"] == split) | (split == "all"))[0]
            if keep.size == 0:
                have = sorted(set(z["split"].tolist()))
                raise ValueError(f"split: the bundled domain {domain!r} has no {split!r} images; it has {have + ['all']}")
            self._images = z["images"]
            self._keep = keep
            self._subject = z["subject"]
            self._z = z["z"] if "z" in z else z.get("slice_location")
            self._scale = float(np.iinfo(self._images.dtype).max) if domain != "pd" else float(self._images.max())
            self.subjects = list(dict.fromkeys(str(s) for s in self._subject[keep]))
            self.item_subjects = [str(s) for s in self._subject[keep]]
            #: per record: axial slice index z of its volume (PD: the DICOM SliceLocation in mm)
            self.positions = [float(v) if domain == "pd" else int(v) for v in self._z[keep]]

    def __len__(self) -> int:
        return len(self._items) if self.domain == "natural" else len(self._keep)

    def _photo_crop(self, i: int) -> tuple[torch.Tensor, str]:
        p, k = self._items[i]
        name, L = self._photos[p]
        h, w = L.shape
        c = min(self.crop, h, w)
        rng = np.random.default_rng([self.seed, p, k])
        if k == 0:  # the first crop of every photo is the centre crop
            t, l = (h - c) // 2, (w - c) // 2
        else:
            t, l = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
        img = torch.from_numpy(L[t : t + c, l : l + c].astype(np.float32) / 255.0)
        if c < self.crop:  # zero-pad small photos to the crop size
            img = F.pad(img, ((self.crop - c) // 2, self.crop - c - (self.crop - c) // 2, (self.crop - c) // 2, self.crop - c - (self.crop - c) // 2))
        return img, f"{name} crop {k} at ({t},{l}) size {c}"

    def __getitem__(self, i: int) -> ImageRecord:
        n = len(self)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"index: expected an integer, got {type(i).__name__}")
        if i < -n or i >= n:
            raise IndexError(f"index {i} out of range for {n} images ({self.domain}/{self.split})")
        i = int(i) % n
        if self.domain == "natural":
            img, src = self._photo_crop(i)
            subject = self._photos[self._items[i][0]][0]
        else:
            j = int(self._keep[i])
            img = torch.from_numpy(self._images[j].astype(np.float32) / self._scale)
            subject = str(self._subject[j])
            tag = {"t1": "colin27 z=", "pd": "papaya PD slice_location=", "t2": "SYNTHETIC T2w z=", "t1_synth": "SYNTHETIC T1w z="}[self.domain]
            src = f"{tag}{self._z[j]}"
        if self.size is not None:
            img = resize(img, self.size)
        return ImageRecord(img, subject, src, i, self.synthetic)

    def __repr__(self) -> str:
        return f"BundledSource(domain={self.domain!r}, split={self.split!r}, n={len(self)}, subjects={len(self.subjects)}, size={self.size})"


def bundled(domain: str, split: str = "train", size=None, **kw) -> BundledSource:
    """The bundled data set (``data/``) for one domain and split.

    Domains: ``"natural"`` (real photos, L channel of LAB), ``"t1"`` (real Colin27 T1, 256x256),
    ``"t2"`` (SYNTHETIC T2-weighted, 128x128), ``"t1_synth"`` (SYNTHETIC T1-weighted twin of the
    same draws), ``"pd"`` (real PD, 20 slices, ``split="test"`` or ``"all"`` only).

    Args:
        domain: one of ``DOMAINS``.
        split: ``"train"``, ``"tune"``, ``"val"``, ``"test"`` or ``"all"``.
        size: ``(H, W)`` (or an int) to resize every image to (area averaging of the whole field
            of view for brain slices, so the whole head stays; for photos the crop is resized);
            None keeps the stored size (photos: ``crop`` x ``crop``).
        crop: photos only: side of the square crops taken from each photo (default 256; photos
            smaller than that are zero-padded).
        crops_per_photo: photos only: crops per photo (default 16 for train/all, 4 otherwise); the
            first is the centre crop, the others at seeded random positions.
        seed: photos only: seed of the crop positions.

    Returns:
        a :class:`BundledSource` (a sequence of :class:`ImageRecord`, with ``.subjects`` and ``.domain``).
    """
    return BundledSource(domain, split, size=size, **kw)
