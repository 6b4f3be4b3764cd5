"""Small utilities shared by every layer: progress bars, seeding, devices, atomic writes."""

from __future__ import annotations

import io
import os
import random
import tempfile
from pathlib import Path
from typing import Iterable, TypeVar

import numpy as np
import torch

__all__ = [
    "progress",
    "quiet",
    "seed_everything",
    "get_device",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_save_torch",
]

T = TypeVar("T")


def quiet() -> bool:
    """True when progress bars should be hidden (``MRTL_QUIET=1``, as CI sets)."""
    return os.environ.get("MRTL_QUIET", "0") not in ("", "0", "false", "False")


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, enable: bool = True, **kw) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar unless quiet (``MRTL_QUIET=1``) or ``enable=False``."""
    if not enable or quiet():
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kw)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; return a CPU ``torch.Generator`` seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def get_device(device: str | torch.device | None = None) -> torch.device:
    """Resolve ``device``: None or "auto" gives CUDA when available, else CPU.

    Raises:
        ValueError: if CUDA is asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was requested but CUDA is not available on this machine; use 'cpu'")
    return dev


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then rename.

    An interrupted write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8); see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
