"""Loaders for data sets that users download themselves (nothing here downloads anything).

- :class:`PhotoFolder`: JPEG/PNG photos (ImageNet val, DIV2K, BSDS...), L channel of LAB.
- :class:`NiftiFolder`: NIfTI volumes (IXI names understood), axial slices with enough tissue.
- :class:`FastMRIFolder`: fastMRI multi-coil HDF5 (``kspace`` of shape (slices, coils, H, W)).

A missing path raises ``FileNotFoundError`` that says what to download and where to put it;
unreadable, empty or wrong-shaped files raise ``ValueError`` naming the file.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import coils
from .._validate import check_choice, check_float, check_int, check_shape2d
from ..fft import ifft2c
from .sources import ImageRecord

__all__ = ["PhotoFolder", "NiftiFolder", "FastMRIFolder", "CoilRecord", "parse_ixi_name", "crop_or_pad", "read_array"]

_PHOTO_EXT = (".jpg", ".jpeg", ".png", ".JPEG", ".JPG", ".PNG")
_IXI = re.compile(r"^(IXI\d+)-([A-Za-z]+)-(\d+)-(T1|T2|PD|MRA|DTI)(?:[-_.].*)?$")


def _missing(root: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{root}: no such folder. {what}")


_PHOTO_HELP = (
    "Download a photo collection yourself (e.g. the ImageNet ILSVRC validation set from image-net.org, "
    "DIV2K from data.vision.ee.ethz.ch/cvl/DIV2K, or BSDS500) and pass the folder holding the "
    "JPEG/PNG files (searched recursively), e.g. PhotoFolder('~/data/imagenet/val'). "
    "For a small offline set use mrtl.data.bundled('natural')."
)
_NIFTI_HELP = (
    "Download MR volumes yourself, e.g. IXI (T1/T2/PD NIfTI, brain-development.org/ixi-dataset: "
    "IXI-T1.tar, IXI-T2.tar, IXI-PD.tar), unpack them into one folder (files like "
    "IXI002-Guys-0828-T2.nii.gz) and pass that folder, e.g. NiftiFolder('~/data/IXI-T2'). "
    "For a small offline set use mrtl.data.bundled('t1')."
)
_FASTMRI_HELP = (
    "Download fastMRI multi-coil data yourself (fastmri.med.nyu.edu, e.g. brain_multicoil_val), "
    "unpack the .h5 files into one folder and pass it, e.g. FastMRIFolder('~/data/fastmri/multicoil_val')."
)


def _check_file(p: Path, what: str) -> None:
    """``FileNotFoundError`` for a missing file or a dangling symbolic link, ``ValueError`` for a folder."""
    if p.is_symlink() and not p.exists():
        raise FileNotFoundError(
            f"{what}: {str(p)!r} is a broken symbolic link (its target {os.readlink(p)!r} does not exist); "
            "fix or remove the link"
        )
    if not p.exists():
        raise FileNotFoundError(f"{what}: {str(p)!r} does not exist")
    if p.is_dir():
        raise ValueError(f"{what}: {str(p)!r} is a folder; expected a file")


def read_array(path, what: str = "path", key: str | None = None, default_key: str | None = "kspace") -> np.ndarray:
    """Read one array from a ``.npy`` file or one dataset of an HDF5 (``.h5``/``.hdf5``) file.

    HDF5: the dataset ``key``; without ``key`` the dataset ``default_key`` (``"kspace"``, as in
    fastMRI files), which must exist: a file without it is an error listing the datasets it holds
    (never silently another dataset). ``default_key=None`` accepts a file holding exactly one
    dataset. ``.npy`` files are read without pickle.

    Args:
        path: the file.
        what: the argument's name for error messages (e.g. ``"--input"``).
        key: dataset name inside an HDF5 file.
        default_key: dataset read when ``key`` is None (HDF5 only).

    Returns:
        The array (``numpy.ndarray``).

    Raises:
        FileNotFoundError: a missing file or a broken symbolic link.
        ValueError: a folder, an unknown suffix, an empty/truncated/corrupt file, a missing dataset,
            or a key naming an HDF5 group instead of a dataset. Every message names the file.
    """
    p = Path(os.path.expanduser(str(path)))
    _check_file(p, what)
    suffix = p.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            f = h5py.File(p, "r")
        except OSError as e:
            raise ValueError(f"{what}: {str(p)!r} is not a readable HDF5 file (corrupt, truncated or another format: {e})") from e
        with f:
            names = []
            f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
            if key is None and default_key is None:
                if len(names) != 1:
                    raise ValueError(
                        f"{what}: {str(p)!r} holds {len(names)} datasets {names[:20]}; expected exactly one "
                        "(or name one with key=...)"
                    )
                k = names[0]
            else:
                k = key if key is not None else default_key
            if k not in f:
                how = "pass the dataset's name as key (mrtl reconstruct: --key NAME)"
                raise ValueError(f"{what}: {str(p)!r} has no dataset {k!r}; it holds the datasets {names[:20]}; {how}")
            obj = f[k]
            if not isinstance(obj, h5py.Dataset):
                raise ValueError(
                    f"{what}: {k!r} in {str(p)!r} is an HDF5 {type(obj).__name__.lower()}, not a dataset; "
                    f"expected an array (datasets in the file: {names[:20]})"
                )
            try:
                return np.asarray(obj[()])
            except (OSError, ValueError, TypeError) as e:
                raise ValueError(f"{what}: cannot read dataset {k!r} of {str(p)!r} (truncated or corrupt: {e})") from e
    if suffix == ".npy":
        try:
            return np.load(p, allow_pickle=False)
        except EOFError as e:
            raise ValueError(f"{what}: {str(p)!r} is empty; expected an array written by numpy.save") from e
        except (ValueError, OSError) as e:
            raise ValueError(
                f"{what}: cannot read {str(p)!r} as a .npy array (truncated, corrupt or holding Python objects: {e})"
            ) from e
    raise ValueError(f"{what}: expected a .npy or .h5 file, got {str(p)!r}")


def crop_or_pad(img: torch.Tensor, size) -> torch.Tensor:
    """Centre-crop or zero-pad the last two axes of ``img`` to ``size``."""
    H, W = check_shape2d(size, "size")
    h, w = img.shape[-2:]
    if h >= H:
        t = (h - H) // 2
        img = img[..., t : t + H, :]
    else:
        p = H - h
        img = torch.nn.functional.pad(img, (0, 0, p // 2, p - p // 2))
    if w >= W:
        l = (w - W) // 2
        img = img[..., :, l : l + W]
    else:
        p = W - w
        img = torch.nn.functional.pad(img, (p // 2, p - p // 2))
    return img


def parse_ixi_name(name: str) -> tuple[str, str] | None:
    """``"IXI002-Guys-0828-T2.nii.gz"`` -> ``("IXI002", "T2")``; None for a non-IXI name."""
    stem = Path(name).name
    for ext in (".nii.gz", ".nii"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
    m = _IXI.match(stem)
    return (m.group(1), m.group(4)) if m else None


class PhotoFolder(torch.utils.data.Dataset):
    """A folder of JPEG/PNG photos, converted to the L channel of LAB (paper, Methods).

    Args:
        root: folder; searched recursively unless ``recursive=False``.
        size: output side (int or (H, W)); photos are centre-cropped or zero-padded to it.
        recursive: search subfolders.

    Each photo is one subject (its path relative to ``root``). Images are float32 in [0, 1]
    (L / 100).
    """

    def __init__(self, root, size=256, recursive: bool = True):
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise _missing(self.root, _PHOTO_HELP)
        self.size = check_shape2d(size, "size")
        it = self.root.rglob("*") if recursive else self.root.glob("*")
        self.files = sorted(p for p in it if p.is_file() and p.suffix in _PHOTO_EXT)
        if not self.files:
            raise FileNotFoundError(f"{self.root}: no .jpg/.jpeg/.png files found{' (searched recursively)' if recursive else ''}. {_PHOTO_HELP}")
        self.subjects = [str(p.relative_to(self.root)) for p in self.files]
        self.item_subjects = list(self.subjects)  # subject of every item, without loading it
        self.domain = "natural"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> ImageRecord:
        from PIL import Image, UnidentifiedImageError
        from skimage.color import rgb2lab

        i = _index(i, len(self))
        f = self.files[i]
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise ValueError(f"{f}: cannot read this image file ({e})") from e
        if rgb.size == 0 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"{f}: empty image")
        L = rgb2lab(rgb)[..., 0].astype(np.float32) / 100.0
        img = crop_or_pad(torch.from_numpy(L), self.size)
        return ImageRecord(img, self.subjects[i], str(f), i, False)


def _index(i, n: int) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"index: expected an integer, got {type(i).__name__}")
    if i < -n or i >= n:
        raise IndexError(f"index {i} out of range for {n} items")
    return int(i) % n


def _load_nifti(f: Path) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(str(f))
        img = nib.as_closest_canonical(img)  # RAS: axis 2 is inferior -> superior
        vol = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises many types for broken files
        raise ValueError(f"{f}: cannot read this NIfTI file ({type(e).__name__}: {e})") from e
    if vol.ndim == 4 and vol.shape[3] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3 or min(vol.shape) < 1:
        raise ValueError(f"{f}: expected a 3D volume, got shape {vol.shape}")
    if not np.isfinite(vol).all():
        raise ValueError(f"{f}: the volume contains NaN/Inf values")
    return vol


class NiftiFolder(torch.utils.data.Dataset):
    """Axial slices with enough tissue from a folder of NIfTI volumes.

    IXI names are understood (``IXI002-Guys-0828-T2.nii.gz`` -> subject ``"IXI002"``, contrast
    ``"T2"``); any other ``*.nii`` / ``*.nii.gz`` is one subject named after the file stem.

    Args:
        root: folder (searched recursively).
        size: output side; slices (anterior up) are centre-cropped or zero-padded to it.
        min_tissue_fraction: keep a slice when at least this fraction of its pixels are above
            10% of the volume's 99th percentile.
        contrast: keep only IXI files of this contrast (``"T1"``, ``"T2"``, ``"PD"``); None keeps all.

    Volumes are scanned once at construction (to find the slices) and read again lazily; each
    image is in storage scale divided by the volume's 99.9th percentile.
    """

    def __init__(self, root, size=256, min_tissue_fraction: float = 0.15, contrast: str | None = None):
        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise _missing(self.root, _NIFTI_HELP)
        self.size = check_shape2d(size, "size")
        self.min_tissue_fraction = check_float(min_tissue_fraction, "min_tissue_fraction", low=0.0, high=1.0)
        if contrast is not None:
            check_choice(contrast, "contrast", ("T1", "T2", "PD"))
        self.contrast = contrast
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and (p.name.endswith(".nii") or p.name.endswith(".nii.gz")))
        entries = []
        for f in files:
            ixi = parse_ixi_name(f.name)
            if ixi is not None:
                subj, con = ixi
                if contrast is not None and con != contrast:
                    continue
            else:
                if contrast is not None:
                    continue
                subj, con = f.name[: -7] if f.name.endswith(".nii.gz") else f.stem, None
            entries.append((f, subj, con))
        if not entries:
            what = f" of contrast {contrast}" if contrast else ""
            raise FileNotFoundError(f"{self.root}: no .nii/.nii.gz files{what} found. {_NIFTI_HELP}")
        self.files = [e[0] for e in entries]
        self.contrasts = [e[2] for e in entries]
        self._subj = [e[1] for e in entries]
        self._slices: list[tuple[int, int]] = []
        self._scale: list[float] = []
        for fi, f in enumerate(self.files):
            vol = _load_nifti(f)
            ref = float(np.percentile(vol, 99.9))
            if ref <= 0:
                raise ValueError(f"{f}: the volume is empty (all values <= 0)")
            self._scale.append(ref)
            frac = (vol > 0.1 * float(np.percentile(vol, 99))).mean(axis=(0, 1))
            for z in np.nonzero(frac >= self.min_tissue_fraction)[0]:
                self._slices.append((fi, int(z)))
        if not self._slices:
            raise ValueError(f"{self.root}: no axial slice has a tissue fraction >= {self.min_tissue_fraction}")
        self.subjects = list(dict.fromkeys(self._subj[fi] for fi, _ in self._slices))
        self.item_subjects = [self._subj[fi] for fi, _ in self._slices]  # without loading the slices
        self.domain = contrast.lower() if contrast else "mr"
        self._cache: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self._slices)

    def __getitem__(self, i: int) -> ImageRecord:
        i = _index(i, len(self))
        fi, z = self._slices[i]
        if self._cache is None or self._cache[0] != fi:
            self._cache = (fi, _load_nifti(self.files[fi]))
        vol = self._cache[1]
        sl = np.ascontiguousarray(vol[:, :, z].T[::-1, :]) / self._scale[fi]
        img = crop_or_pad(torch.from_numpy(sl.astype(np.float32)), self.size)
        return ImageRecord(img, self._subj[fi], f"{self.files[fi].name} z={z}", i, False)


class CoilRecord(NamedTuple):
    """One multi-coil slice from :class:`FastMRIFolder`.

    Attributes:
        kspace: ``(C, H, W)`` complex64 fully sampled coil k-space (centred, as ``fft2c``).
        coil_images: ``(C, H, W)`` complex64, ``ifft2c(kspace)``.
        maps: ``(C, H, W)`` complex64 coil maps (ESPIRiT), or None when ``maps=None``.
        image: ``(H, W)`` complex64 coil-combined image ``S^H x`` (root-sum-of-squares without maps).
        subject, source, index, synthetic: as in :class:`ImageRecord`.
    """

    kspace: torch.Tensor
    coil_images: torch.Tensor
    maps: torch.Tensor | None
    image: torch.Tensor
    subject: str
    source: str
    index: int
    synthetic: bool


#: Default bound on the HDF5 files a :class:`FastMRIFolder` keeps open per process.
MAX_OPEN_FILES = 16


class FastMRIFolder(torch.utils.data.Dataset):
    """fastMRI multi-coil HDF5 files: coil k-space, coil images and (lazily cached) coil maps.

    Args:
        root: folder with ``*.h5`` files holding ``kspace`` of shape (slices, coils, H, W)
            (``ismrmrd_header`` and other keys are ignored).
        n_virtual: compress to this many virtual coils (None: keep all).
        compress_method: ``"gcc"`` or ``"svd"`` (through ``mrtl.coils.compress``).
        maps: ``"espirit"`` to estimate coil maps (``mrtl.coils.espirit_maps``), or None.
        cache_dir: folder to cache the maps in (``<file stem>_s<slice>_maps.npy``); None: no cache.
        max_open: at most this many HDF5 files stay open per process (least recently used are
            closed first), so a folder of thousands of files works at the usual limit of 1024 open
            files (``ulimit -n``); reads go slice by slice through a file, so a small number is enough.

    fastMRI stores k-space with the DC at the centre; ``ifft2c`` gives the coil images. The HDF5
    files are opened only inside ``__getitem__`` (handles per process), never before a
    ``DataLoader`` forks its workers. Each file is one subject. :meth:`close` closes them.
    """

    def __init__(self, root, n_virtual: int | None = None, compress_method: str = "gcc", maps: str | None = "espirit", cache_dir=None,
                 max_open: int = MAX_OPEN_FILES):
        import h5py

        self.root = Path(os.path.expanduser(str(root)))
        if not self.root.is_dir():
            raise _missing(self.root, _FASTMRI_HELP)
        self.n_virtual = None if n_virtual is None else check_int(n_virtual, "n_virtual", low=1)
        self.compress_method = check_choice(compress_method, "compress_method", ("gcc", "svd"))
        self.maps = check_choice(maps, "maps", ("espirit", None))
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        found = sorted(self.root.rglob("*.h5"))
        for p in found:
            if p.is_symlink() and not p.exists():
                _check_file(p, "root")  # a broken link names itself instead of vanishing from the list
        self.files = [p for p in found if p.is_file()]
        if not self.files:
            raise FileNotFoundError(f"{self.root}: no .h5 files found. {_FASTMRI_HELP}")
        self._slices: list[tuple[int, int]] = []
        self.shapes = []
        for fi, f in enumerate(self.files):  # metadata only; the handle is closed again at once
            try:
                with h5py.File(f, "r") as h:
                    if "kspace" not in h:
                        raise ValueError(f"{f}: no 'kspace' dataset (keys: {sorted(h.keys())}); expected a fastMRI file")
                    if not isinstance(h["kspace"], h5py.Dataset):
                        raise ValueError(f"{f}: 'kspace' is an HDF5 group, not a dataset; expected a fastMRI file "
                                         "with a 'kspace' array of shape (slices, coils, H, W)")
                    shp = tuple(h["kspace"].shape)
            except OSError as e:
                raise ValueError(f"{f}: cannot read this HDF5 file ({e})") from e
            if len(shp) != 4 or min(shp) < 1:
                raise ValueError(f"{f}: expected 'kspace' of shape (slices, coils, H, W), got {shp}")
            if self.n_virtual is not None and self.n_virtual > shp[1]:
                raise ValueError(f"n_virtual: {self.n_virtual} is more than the {shp[1]} coils in {f}")
            self.shapes.append(shp)
            self._slices += [(fi, s) for s in range(shp[0])]
        self.subjects = [f.stem for f in self.files]
        self.item_subjects = [self.files[fi].stem for fi, _ in self._slices]  # without reading k-space
        self.domain = "fastmri"
        self.max_open = check_int(max_open, "max_open", low=1)
        self._handles: "OrderedDict[int, object]" = OrderedDict()
        self._pid = None

    def __len__(self) -> int:
        return len(self._slices)

    def close(self) -> None:
        """Close every HDF5 file this process opened (they are reopened on the next read)."""
        for h in self._handles.values():
            try:
                h.close()
            except Exception:  # pragma: no cover - closing a broken handle
                pass
        self._handles.clear()

    def __del__(self):
        try:
            if self._pid == os.getpid():
                self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def _file(self, fi: int):
        """The open HDF5 file ``fi``: at most ``max_open`` stay open (least recently used closed first)."""
        import h5py

        if self._pid != os.getpid():  # never reuse handles across a fork
            self._handles, self._pid = OrderedDict(), os.getpid()
        if fi in self._handles:
            self._handles.move_to_end(fi)
            return self._handles[fi]
        while len(self._handles) >= self.max_open:
            _, old = self._handles.popitem(last=False)
            old.close()
        f = self.files[fi]
        try:
            h = h5py.File(f, "r")
        except OSError as e:
            if getattr(e, "errno", None) == 24 or "Too many open files" in str(e):
                raise OSError(
                    e.errno, f"{f}: cannot open: too many open files (the limit of this process, ulimit -n, is reached; "
                    f"this data set keeps at most max_open={self.max_open} files open: lower it or raise the limit)"
                ) from e
            raise ValueError(f"{f}: cannot open this HDF5 file ({e})") from e
        self._handles[fi] = h
        return h

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_handles"], d["_pid"] = OrderedDict(), None
        return d

    def _compress(self, k: torch.Tensor) -> torch.Tensor:
        if self.n_virtual is None:
            return k
        return coils.compress(k, self.n_virtual, method=self.compress_method)

    def _maps(self, fi: int, s: int, k: torch.Tensor) -> torch.Tensor:
        path = None
        if self.cache_dir is not None:
            tag = f"_v{self.n_virtual}{self.compress_method}" if self.n_virtual else ""
            path = self.cache_dir / f"{self.files[fi].stem}_s{s}{tag}_maps.npy"
            if path.exists():
                return torch.from_numpy(np.load(path))
        m = torch.as_tensor(coils.espirit_maps(k)).to(torch.complex64)
        if path is not None:
            from ..utils import atomic_write_bytes
            import io

            buf = io.BytesIO()
            np.save(buf, m.numpy())
            atomic_write_bytes(path, buf.getvalue())
        return m

    def __getitem__(self, i: int) -> CoilRecord:
        i = _index(i, len(self))
        fi, s = self._slices[i]
        f = self.files[fi]
        try:
            arr = np.asarray(self._file(fi)["kspace"][s])
        except (OSError, KeyError) as e:
            raise ValueError(f"{f}: cannot read slice {s} of 'kspace' ({e})") from e
        if not np.iscomplexobj(arr):
            raise ValueError(f"{f}: 'kspace' must be complex, got dtype {arr.dtype}")
        k = torch.from_numpy(arr.astype(np.complex64))
        if not bool(torch.isfinite(k).all()):
            raise ValueError(f"{f}: slice {s} of 'kspace' contains NaN/Inf")
        k = self._compress(k).to(torch.complex64)
        x = ifft2c(k)
        m = self._maps(fi, s, k) if self.maps == "espirit" else None
        if m is not None:
            img = (m.conj() * x).sum(0)
        else:
            img = (x.abs() ** 2).sum(0).sqrt().to(torch.complex64)
        return CoilRecord(k, x, m, img, f.stem, f"{f.name} slice {s}", i, False)
