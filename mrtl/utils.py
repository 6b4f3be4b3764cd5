"""Small utilities shared by every layer: progress bars, seeding, devices, atomic writes."""

from __future__ import annotations

import glob
import hashlib
import io
import os
import random
import re
import secrets
import socket
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
    "clean_stale_temps",
    "is_stale_temp",
]

T = TypeVar("T")


def quiet() -> bool:
    """True when progress bars should be hidden (``MRTL_QUIET=1``, as CI sets)."""
    return os.environ.get("MRTL_QUIET", "0") not in ("", "0", "false", "False")


def progress(iterable: Iterable[T], desc: str | None = None, total: int | None = None, enable: bool = True, **kw) -> Iterable[T]:
    """Wrap ``iterable`` in a tqdm progress bar unless quiet (``MRTL_QUIET=1``) or ``enable=False``."""
    if not enable or quiet():
        return iterable
    import warnings

    from tqdm import TqdmWarning

    with warnings.catch_warnings():
        # In a notebook without ipywidgets, tqdm.auto warns "IProgress not found" (with the path of
        # the reader's venv) and falls back to the text bar; the text bar is what we want there.
        warnings.simplefilter("ignore", TqdmWarning)
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

    Args:
        device: None, "auto", "cpu", "cuda", "cuda:N", "mps" or a ``torch.device``.

    Raises:
        ValueError: if the name is not a device type torch knows (e.g. "tpu"), or CUDA/MPS is
            asked for but not available.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected a device name such as 'cpu', 'cuda', 'cuda:0' or 'auto', "
                        f"got {type(device).__name__} {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device: expected 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto', got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} was requested but CUDA is not available on this machine; use 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device: {device!r} was requested but this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s); use 'cuda:0'..'cuda:{torch.cuda.device_count() - 1}'")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device: {device!r} was requested but MPS is not available on this machine; use 'cpu'")
    return dev


# ---------------------------------------------------------------------------------------- atomic writes
# A write goes to a temporary file beside the target, named ``.<name>.mrtl-<host>-<pid>-<token>.tmp``,
# which is renamed over the target once complete. A process killed mid-write leaves that
# temporary behind; its name says that mrtl made it and which process did, so the next write of
# the same file (or :func:`clean_stale_temps` on the folder) removes it once that process is gone.
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.mrtl-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # exists but belongs to someone else (or cannot tell)
        return True
    return True


def is_stale_temp(path: str | os.PathLike) -> bool:
    """True if ``path`` is a temporary file of an mrtl atomic write whose process has ended.

    Only files named by :func:`atomic_write_bytes` on this machine qualify (a temporary of
    another machine sharing the folder, or of a live process, is never stale).
    """
    m = _TEMP_RE.match(Path(path).name)
    return bool(m) and m["host"] == _host_tag() and not _pid_alive(int(m["pid"]))


def clean_stale_temps(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Delete the temporaries that killed mrtl writes left in ``folder``; return what was removed.

    Nothing else is touched: only names matching mrtl's temporary pattern whose writing
    process (on this machine) no longer exists.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        if p.is_file() and not p.is_symlink() and is_stale_temp(p):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then rename.

    An interrupted write leaves the previous file intact. The file is created with the
    permissions of any new file (``0o666`` minus the umask), like ``open(path, "wb")``. The
    temporary is named after this process (see :func:`is_stale_temp`); temporaries of the same
    target left by killed processes are removed after a successful write.

    Args:
        path: the target file.
        data: its new content.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    prefix = f".{path.name}.mrtl-{_host_tag()}-{os.getpid()}-"
    for _ in range(100):
        tmp = path.parent / f"{prefix}{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)  # the umask applies, as for any new file
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - 100 collisions of a 32-bit token
        raise FileExistsError(f"{str(path)!r}: could not create a temporary file beside it")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    for p in path.parent.glob(f".{glob.escape(path.name)}.mrtl-*.tmp"):
        if is_stale_temp(p):
            try:
                p.unlink()
            except OSError:
                pass
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomic text write (UTF-8); see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())
