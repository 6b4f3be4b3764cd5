"""Tests of mrtl.utils: atomic writes (permissions from the umask, no temporaries left behind,
stale temporaries of killed writes cleaned), device resolution."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from mrtl.utils import atomic_save_torch, atomic_write_bytes, atomic_write_text, clean_stale_temps, get_device, \
    is_stale_temp


@pytest.mark.skipif(os.name != "posix", reason="file permissions and umask are POSIX")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_respects_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.csv", "x\n")
        atomic_save_torch({"w": torch.ones(2)}, tmp_path / "b.pt")
        with open(tmp_path / "ref.txt", "w") as f:  # how any other new file is created
            f.write("x")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    assert (tmp_path / "ref.txt").stat().st_mode & 0o777 == want
    for name in ("a.csv", "b.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_text(p, "one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["r.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "r.bin"
    atomic_write_bytes(p, b"old")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"old" and sorted(x.name for x in tmp_path.iterdir()) == ["r.bin"]


_KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    import mrtl.utils as u
    real = os.replace
    def replace(src, dst):  # killed after the data is written, before the rename
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace = replace
    u.atomic_write_text(sys.argv[1], "new")
""")


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")
def test_killed_write_leaves_a_recognisable_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old")
    proc = subprocess.run([sys.executable, "-c", _KILL_MID_WRITE, str(target)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    temps = [p for p in tmp_path.iterdir() if p.name != "results.csv"]
    assert len(temps) == 1 and is_stale_temp(temps[0])  # the writer is dead: stale
    assert target.read_text() == "old"  # the kill lost nothing saved
    # a temporary of a live process (this one) is not stale, and a user's file never is
    from mrtl import utils

    live = tmp_path / f".results.csv.mrtl-{utils._host_tag()}-{os.getpid()}-deadbeef.tmp"
    live.write_text("in flight")
    user = tmp_path / ".notes.tmp"
    user.write_text("mine")
    assert not is_stale_temp(live) and not is_stale_temp(user)
    atomic_write_text(target, "newer")
    assert target.read_text() == "newer"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".notes.tmp", live.name, "results.csv"])


def test_clean_stale_temps_recursive(tmp_path):
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    # a pid that cannot exist (above Linux's largest pid_max, 2**22)
    atomic_write_text(sub / "x.csv", "x")
    from mrtl import utils

    dead = f".x.csv.mrtl-{utils._host_tag()}-{2**22 + 12345}-0123abcd.tmp"
    (sub / dead).write_text("partial")
    (sub / "keep.tmp").write_text("user")
    assert clean_stale_temps(tmp_path) == []  # not recursive: nothing at the top
    removed = clean_stale_temps(tmp_path, recursive=True)
    assert [p.name for p in removed] == [dead] and (sub / "keep.tmp").exists()


@pytest.mark.parametrize("bad, exc", [("tpu", ValueError), ("cuda:x", ValueError), (3, TypeError)])
def test_get_device_names_the_argument(bad, exc):
    with pytest.raises(exc, match=r"^device: "):
        get_device(bad)
    assert get_device("cpu") == torch.device("cpu") and get_device(None).type in ("cpu", "cuda")
