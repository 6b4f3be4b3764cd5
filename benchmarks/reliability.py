"""Reliability probe: hostile-user cases against the library and the ``mrtl`` command line.

Each case does what a careless or unlucky user would do (a corrupt checkpoint, a folder of
notes as ``--output``, a NaN in the data, an uncentred mask, a kill at the wrong moment...) in a
fresh temporary folder, and is classified as

- ``clean``: the right result, or an error/warning that names the argument or file and says
  what is wrong (on the CLI: a short message, exit status != 0, no traceback);
- ``traceback``: a Python traceback on the CLI, or, in the library, an exception that is not a
  deliberate one (e.g. an ``IndexError``/``RuntimeError`` from deep inside torch);
- ``unclear``: a deliberate error whose message does not say what is wrong with what;
- ``silently wrong``: no error, but a wrong result (NaN output, a wrong dataset read, a
  diverged image, a hang, files left with the wrong permissions...);
- ``data lost``: files that mrtl did not write (or earlier results) deleted or moved.

The table at the end counts them (issue 10's acceptance table). Library cases run in a
subprocess each (isolation, timeouts); CLI cases run ``mrtl`` in a subprocess.

Usage::

    python benchmarks/reliability.py                        # the code on the Python path
    PYTHONPATH=/path/to/other/checkout python benchmarks/reliability.py   # another version
    python benchmarks/reliability.py --only cli --json out.json

The ``--slow`` cases (three of them run a study notebook, about a minute each on 2 cores)
are included by default; ``--fast`` skips them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CLASSES = ("clean", "traceback", "unclear", "silently wrong", "data lost")
PY = sys.executable
CLI = "import sys; from mrtl.cli import main; sys.exit(main(sys.argv[1:]))"
MARK = "@@RESULT@@"


@dataclass
class Case:
    id: str
    area: str
    owner: str  # who fixes it (issue 10 split: B = CLI/reproduce/utils, C = training, D = data/recon/metrics)
    fn: Callable
    slow: bool = False


CASES: list[Case] = []


def case(id, area, owner, slow=False):
    def deco(fn):
        CASES.append(Case(id, area, owner, fn, slow))
        return fn
    return deco


# ----------------------------------------------------------------------------------- running
class Ctx:
    def __init__(self, tmp: Path, fx: Path, env: dict):
        self.tmp, self.fx, self.env = tmp, fx, env

    def cli(self, *args, timeout=300, env=None, cwd=None):
        t0 = time.perf_counter()
        try:
            p = subprocess.run([PY, "-c", CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                               env=env or self.env, cwd=cwd or self.tmp)
            return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
        except subprocess.TimeoutExpired as e:
            return None, e.stdout or "", e.stderr or "", time.perf_counter() - t0

    def py(self, code: str, timeout=240, env=None, preexec=None) -> dict:
        """Run ``code`` (which may set ``value``) in a subprocess; return the exception raised
        (name, message), the warnings and ``value``."""
        wrapper = textwrap.dedent(f"""
            import json, sys, traceback, warnings
            warnings.simplefilter("always")
            out = {{"exc": None, "msg": "", "warnings": [], "value": None}}
            with warnings.catch_warnings(record=True) as W:
                warnings.simplefilter("always")
                ns = {{}}
                try:
                    exec(compile({code!r}, "<case>", "exec"), ns)
                except BaseException as e:
                    out["exc"], out["msg"] = type(e).__name__, str(e)[:1500]
                    out["tb"] = traceback.format_exc()[-1500:]
                out["value"] = ns.get("value")
                out["warnings"] = [f"{{w.category.__name__}}: {{w.message}}"[:500] for w in W]
            print({MARK!r} + json.dumps(out, default=str))
        """)
        try:
            p = subprocess.run([PY, "-c", wrapper], capture_output=True, text=True, timeout=timeout,
                               env=env or self.env, cwd=self.tmp, preexec_fn=preexec)
        except subprocess.TimeoutExpired:
            return {"exc": "Timeout", "msg": f"no answer after {timeout} s", "warnings": [], "value": None}
        for line in p.stdout.splitlines()[::-1]:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        return {"exc": "Crash", "msg": f"exit {p.returncode}: {p.stderr[-500:]}", "warnings": [], "value": None}


def _mentions(text: str, words) -> bool:
    text = text.lower()
    return any(w.lower() in text for w in words)


def expect_cli_error(res, words, rc_ok=False):
    """A CLI case that must fail cleanly: non-zero exit, a short message naming ``words``."""
    rc, out, err, _ = res
    if rc is None:
        return "silently wrong", "hang (timeout)"
    if "Traceback (most recent call last)" in err:
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:]
        return "traceback", (last[0] if last else "")[:160]
    if rc == 0 and not rc_ok:
        return "silently wrong", "exit 0: " + (out.strip().splitlines() or [""])[-1][:120]
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and "Warning" not in ln]
    msg = " ".join(lines)[:200]
    if len(lines) <= 2 and _mentions(err, words):
        return "clean", msg
    return "unclear", msg or f"exit {rc}, no message"


def expect_lib_error(r, words, types=("ValueError", "TypeError", "FileNotFoundError"), warn_ok=False, check=None):
    """A library case that must raise a deliberate error naming ``words`` (or warn, if allowed)."""
    if r["exc"] is None:
        if warn_ok and any(_mentions(w, words) for w in r["warnings"]):
            return "clean", "warned: " + next(w for w in r["warnings"] if _mentions(w, words))[:160]
        if check is not None:
            return check(r)
        return "silently wrong", f"no error; value {str(r['value'])[:120]}"
    if r["exc"] == "Timeout":
        return "silently wrong", "hang (timeout)"
    if r["exc"] in types:
        if _mentions(r["msg"], words):
            return "clean", f"{r['exc']}: {r['msg'][:160]}"
        return "unclear", f"{r['exc']}: {r['msg'][:160]}"
    return "traceback", f"{r['exc']}: {r['msg'][:160]}"


# ---------------------------------------------------------------------------------- fixtures
TINY_TRAIN = {"model": {"n_subnets": 1, "width": 4, "depth": 1, "seed": 0},
              "data": {"domain": "t1", "size": 32, "n": 4, "n_val": 2},
              "train": {"epochs_per_subnet": 1, "batch_size": 2}}


def _yaml(d: dict) -> str:
    return json.dumps(d)  # JSON is YAML


def make_fixtures(fx: Path) -> None:
    import h5py
    import numpy as np
    import torch

    from mrtl.masks import poisson_disc
    from mrtl.models import Cascade
    from mrtl.train import save_model

    fx.mkdir(parents=True, exist_ok=True)
    model = Cascade(n_subnets=1, width=4, depth=1, seed=0)
    save_model(model, fx / "ckpt.pt", image_shape=(32, 32))
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    save_model(model, fx / "nan_ckpt.pt", image_shape=(32, 32))
    ck = torch.load(fx / "ckpt.pt", weights_only=True)
    ck["arch"] = dict(ck["arch"], n_subnets=10**7)
    torch.save(ck, fx / "huge_arch.pt")
    rng = np.random.default_rng(0)
    img = np.zeros((2, 32, 32), np.complex64)
    img[:, 8:24, 8:24] = 1.0
    mask = np.asarray(poisson_disc((32, 32), 3.0, seed=0))
    k = (np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(img, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)) * mask)
    k = k.astype(np.complex64)
    np.save(fx / "k.npy", k)
    np.save(fx / "mask.npy", mask)
    np.save(fx / "empty_batch.npy", np.zeros((0, 32, 32), np.complex64))
    (fx / "trunc.npy").write_bytes((fx / "k.npy").read_bytes()[:300])
    (fx / "empty.npy").write_bytes(b"")
    (fx / "corrupt.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + rng.bytes(500))
    with h5py.File(fx / "no_kspace.h5", "w") as f:
        f["reconstruction_rss"] = np.abs(img).astype(np.float32)
        f["image"] = k
    with h5py.File(fx / "group.h5", "w") as f:
        f.create_group("kspace")["data"] = k
    (fx / "dangling.npy").symlink_to(fx / "does_not_exist.npy")
    (fx / "garbage.pt").write_bytes(b"\x80\x02" + rng.bytes(300))
    (fx / "empty.pt").write_bytes(b"")
    (fx / "tiny.yaml").write_text(_yaml(TINY_TRAIN))


def train_cfg(ctx, **sections) -> Path:
    d = json.loads(json.dumps(TINY_TRAIN))
    for sec, kv in sections.items():
        d.setdefault(sec, {}).update(kv)
    p = ctx.tmp / "cfg.yaml"
    p.write_text(_yaml(d))
    return p


def tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))} if folder.exists() else {}


# --------------------------------------------------------------------------- data loss (B)
def _fake_run(folder: Path, content="earlier results"):
    folder.mkdir(parents=True)
    (folder / "transfer.csv").write_text(content)
    (folder / "manifest.json").write_text(json.dumps({"study": "transfer", "scale": "tiny", "run_id": folder.name,
                                                      "status": "finished", "files": ["transfer.csv"]}))


def _loss_verdict(res, before, after, what):
    if before != after:
        lost = sorted(set(before) - set(after)) or [k for k in before if before[k] != after.get(k)]
        return "data lost", f"{what}: {lost[:3]} gone or changed (exit {res[0]})"
    return expect_cli_error(res, ["--output", "--run-id", "overwrite", "not a run folder", "not empty"])


@case("reproduce --output <folder with a user's notes>", "data loss", "B", slow=True)
def _(ctx):
    notes = ctx.tmp / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("months of work")
    before = tree(notes)
    res = ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", ctx.tmp / "r",
                  "--output", notes, timeout=900)
    return _loss_verdict(res, before, tree(notes), "notes")


@case("reproduce --output <study root with earlier runs>", "data loss", "B", slow=True)
def _(ctx):
    root = ctx.tmp / "results"
    _fake_run(root / "transfer" / "run-a")
    _fake_run(root / "transfer" / "run-b")
    before = tree(root / "transfer")
    res = ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", root,
                  "--output", root / "transfer", timeout=900)
    after = {k: v for k, v in tree(root / "transfer").items() if k.startswith(("run-a", "run-b"))}
    return _loss_verdict(res, before, after, "earlier runs")


@case("reproduce: rerun a finished --run-id holding a user's file", "data loss", "B", slow=True)
def _(ctx):
    root = ctx.tmp / "results"
    _fake_run(root / "transfer" / "mine")
    (root / "transfer" / "mine" / "notes.txt").write_text("my analysis")
    before = tree(root / "transfer" / "mine")
    res = ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", root, "--run-id", "mine",
                  timeout=900)
    return _loss_verdict(res, before, tree(root / "transfer" / "mine"), "finished run")


@case("killed atomic write: temporary cleaned by the next write", "data loss", "B")
def _(ctx):
    code = textwrap.dedent(f"""
        import os, signal, subprocess, sys
        target = {str(ctx.tmp / 'res.csv')!r}
        kill = "import os, signal, mrtl.utils as u\\nos.replace = lambda a, b: os.kill(os.getpid(), signal.SIGKILL)\\nu.atomic_write_text({str(ctx.tmp / 'res.csv')!r}, 'new')"
        subprocess.run([sys.executable, "-c", kill])
        import mrtl.utils as u
        u.atomic_write_text(target, "next")
        value = sorted(p for p in os.listdir({str(ctx.tmp)!r}) if p != "res.csv")
    """)
    r = ctx.py(code)
    if r["exc"]:
        return "traceback", f"{r['exc']}: {r['msg'][:120]}"
    return ("clean", "no temporary left") if not r["value"] else ("silently wrong", f"left behind: {r['value']}")


@case("result file permissions follow the umask (022 -> 0644)", "data loss", "B")
def _(ctx):
    r = ctx.py(textwrap.dedent(f"""
        import os, mrtl.utils as u
        os.umask(0o022)
        u.atomic_write_text({str(ctx.tmp / 'a.csv')!r}, "x")
        value = oct(os.stat({str(ctx.tmp / 'a.csv')!r}).st_mode & 0o777)
    """))
    return ("clean", r["value"]) if r["value"] == "0o644" else ("silently wrong", f"mode {r['value']}")


# ---------------------------------------------------------------------- silently wrong (C, D)
_KILL_BEFORE = """
import os, signal, sys
name = sys.argv[1]
real = os.replace
def replace(a, b, *x, **k):
    if os.path.basename(str(b)) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(a, b, *x, **k)
os.replace = replace
from mrtl.cli import main
sys.exit(main(sys.argv[2:]))
"""


@case("train killed before best_pretrain.pt, rerun: same weights as uninterrupted", "silently wrong", "C")
def _(ctx):
    import torch

    cfg = train_cfg(ctx, model={"n_subnets": 2})
    ref = ctx.cli("train", "--config", cfg, "--out", ctx.tmp / "ref")
    if ref[0] != 0:
        return expect_cli_error(ref, ["?"])
    subprocess.run([PY, "-c", _KILL_BEFORE, "best_pretrain.pt", "train", "--config", cfg, "--out", ctx.tmp / "run"],
                   env=ctx.env, cwd=ctx.tmp, capture_output=True)
    res = ctx.cli("train", "--config", cfg, "--out", ctx.tmp / "run")
    if res[0] != 0:
        return expect_cli_error(res, ["checkpoint"])
    p = ctx.tmp / "run" / "best_pretrain.pt"
    if not p.exists():
        return "silently wrong", "rerun succeeded without best_pretrain.pt"
    a = torch.load(p, weights_only=False)["model"]
    b = torch.load(ctx.tmp / "ref" / "best_pretrain.pt", weights_only=False)["model"]
    same = all(torch.equal(a[k], b[k]) for k in b) and set(a) == set(b)
    return ("clean", "identical weights") if same else ("silently wrong", "weights differ from the uninterrupted run")


_TINY_DATA = """
import torch
from mrtl.data import bundled, UndersampledDataset
from mrtl.masks import MaskBank
from mrtl.models import Cascade
from mrtl import train as T
src = torch.utils.data.Subset(bundled("t1", "train", size=32), range(6))
ds = UndersampledDataset(src, MaskBank(4, (32, 32), n=4, seed=0), seed=0)
vsrc = torch.utils.data.Subset(bundled("t1", "val", size=32), range(3))
vs = UndersampledDataset(vsrc, MaskBank(4, (32, 32), n=4, seed=0, split="test"), seed=1)
model = Cascade(n_subnets=1, width=4, depth=1, seed=0)
"""


# deliberate exception classes for a diverged training (a message naming stage, epoch and lr)
_DIVERGED = ("ValueError", "FloatingPointError", "RuntimeError", "TrainingDiverged", "TrainingDivergedError")


@case("train with lr 1e6 (divergence)", "silently wrong", "C")
def _(ctx):
    r = ctx.py(_TINY_DATA + textwrap.dedent("""
        res = T.train_sequential(model, ds, vs, epochs_per_subnet=2, lr=1e6, batch_size=3, device="cpu", out_dir=None)
        value = [h.get("val_psnr") for h in res["history"]]
    """))

    def check(r):
        v = [x for x in (r["value"] or []) if x is not None]
        return "silently wrong", f"finished; val PSNR {v[-1:]}"
    return expect_lib_error(r, ["non-finite", "nan", "diverg", "inf"], types=_DIVERGED, check=check)


@case("finetune without validation at lr 1e6 (NaN weights)", "silently wrong", "C")
def _(ctx):
    r = ctx.py(_TINY_DATA + textwrap.dedent("""
        T.finetune(model, ds, None, epochs=3, lr=1e6, batch_size=3, device="cpu", out_dir=None)
        value = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    """))
    return expect_lib_error(r, ["non-finite", "nan", "diverg", "inf"], types=_DIVERGED,
                            check=lambda r: ("clean", "finite weights") if r["value"] else
                            ("silently wrong", "NaN weights, no error"))


@case("reconstruct with a NaN-weight checkpoint", "silently wrong", "C")
def _(ctx):
    out = ctx.tmp / "out.npy"
    res = ctx.cli("reconstruct", "--ckpt", ctx.fx / "nan_ckpt.pt", "--input", ctx.fx / "k.npy", "--mask",
                  ctx.fx / "mask.npy", "--output", out)
    if res[0] == 0:
        import numpy as np

        x = np.load(out)
        return ("silently wrong", "exit 0, all-NaN output") if not np.isfinite(x).all() else ("clean", "finite")
    return expect_cli_error(res, ["nan", "non-finite", "finite"])


@case("as_train_data with a NaN image", "silently wrong", "C")
def _(ctx):
    r = ctx.py(_TINY_DATA + textwrap.dedent("""
        s = ds[0]
        bad = s._replace(zero_filled=s.zero_filled * float("nan"))
        T.as_train_data([bad, ds[1]])
    """))
    return expect_lib_error(r, ["nan", "finite"])


@case("reconstruct an .h5 without 'kspace'", "silently wrong", "D")
def _(ctx):
    res = ctx.cli("reconstruct", "--ckpt", ctx.fx / "ckpt.pt", "--input", ctx.fx / "no_kspace.h5", "--mask",
                  ctx.fx / "mask.npy", "--output", ctx.tmp / "o.npy")
    return expect_cli_error(res, ["kspace"])


@case("spirit_calibrate under-determined (9x9 kernel, 8x8 calibration)", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.recon import spirit_calibrate
        g = torch.Generator().manual_seed(0)
        k = torch.randn(4, 32, 32, dtype=torch.complex64, generator=g)
        spirit_calibrate(k, kernel_size=9, calib=8)
    """))
    return expect_lib_error(r, ["determined", "equations", "unknowns", "calib"], warn_ok=True)


@case("L1-SPIRiT 7x7 kernel, 16x16 calibration: not worse than zero-filling", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.data import bundled
        from mrtl.coils import birdcage_maps
        from mrtl.fft import fft2c
        from mrtl.masks import poisson_disc
        from mrtl.recon import l1_spirit_pocs
        from mrtl.linops import coil_combine
        from mrtl.metrics import psnr
        img = torch.stack([bundled("t1", "test", size=64)[i].image for i in range(0, 24, 6)]).to(torch.complex64)
        img = img / img.abs().amax(dim=(-2, -1), keepdim=True)
        maps = birdcage_maps(4, (64, 64)).to(torch.complex64)
        mask = poisson_disc((64, 64), 4, calib=16, seed=0)
        worst = []
        for i in range(len(img)):
            k = mask * fft2c(maps * img[i])
            zf = coil_combine(torch.fft.ifftshift(torch.fft.ifft2(torch.fft.fftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1)), maps)
            res = l1_spirit_pocs(k, mask, n_iter=30, maps=maps)
            worst.append(float(psnr(res.image.abs(), ref=img[i].abs())) - float(psnr(zf.abs(), ref=img[i].abs())))
        value = min(worst)
    """))
    if r["exc"] is None:
        if r["value"] is not None and r["value"] < -1.0 and not r["warnings"]:
            return "silently wrong", f"worst slice {r['value']:.1f} dB below zero-filling, no warning"
        return "clean", f"worst slice {r['value']:+.1f} dB vs zero-filled"
    return expect_lib_error(r, ["diverg", "kernel", "calib"], types=("SpiritDivergenceError", "ValueError",
                                                                     "FloatingPointError"))


@case("DataLoader persistent workers + set_epoch: masks change", "silently wrong", "D")
def _(ctx):
    r = ctx.py(_TINY_DATA + textwrap.dedent("""
        from mrtl.data import collate
        dl = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=1, persistent_workers=True, collate_fn=collate)
        ds.set_epoch(0); m0 = next(iter(dl)).mask.clone()
        ds.set_epoch(1); m1 = next(iter(dl)).mask.clone()
        ds2 = UndersampledDataset(src, MaskBank(4, (32, 32), n=4, seed=0), seed=0); ds2.set_epoch(1)
        ref1 = torch.stack([ds2[i].mask for i in range(6)])
        value = [bool(torch.equal(m0, m1)), bool(torch.equal(m1, ref1))]
    """), timeout=300)
    if r["exc"] is None:
        same, right = r["value"]
        return ("clean", "epoch 1 masks differ from epoch 0") if right and not same else \
            ("silently wrong", "epoch 1 repeats epoch 0's masks")
    return expect_lib_error(r, ["persistent", "set_epoch", "worker"], warn_ok=True)


def _cs_case(ctx, body, words):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.fft import fft2c
        from mrtl.masks import poisson_disc
        from mrtl.recon import cs_l1_wavelet
        from mrtl.data import bundled
        img = torch.stack([bundled("t1", "test", size=64)[i].image for i in (0, 8)]).to(torch.complex64)
        mask = poisson_disc((64, 64), 4, seed=0)
    """) + textwrap.dedent(body))
    return expect_lib_error(r, words, warn_ok=True)


@case("CS with an uncentred mask and centred k-space", "silently wrong", "D")
def _(ctx):
    return _cs_case(ctx, """
        m = torch.fft.ifftshift(mask, dim=(-2, -1))
        cs_l1_wavelet(m * fft2c(img), m, n_iter=20)
    """, ["centre", "center", "centred", "centered", "shift"])


@case("CS with uncentred k-space and a centred mask", "silently wrong", "D")
def _(ctx):
    return _cs_case(ctx, """
        k = torch.fft.ifftshift(fft2c(img), dim=(-2, -1))
        cs_l1_wavelet(mask * k, mask, n_iter=20)
    """, ["centre", "center", "centred", "centered", "shift"])


@case("CS given (C,H,W) multi-coil k-space", "silently wrong", "D")
def _(ctx):
    return _cs_case(ctx, """
        from mrtl.coils import birdcage_maps
        maps = birdcage_maps(4, (64, 64)).to(torch.complex64)
        cs_l1_wavelet(mask * fft2c(maps * img[0]), mask, n_iter=20)
    """, ["coil", "multi", "single-coil", "batch"])


@case("l1_spirit_pocs given a (B,H,W) single-coil batch", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.fft import fft2c
        from mrtl.masks import poisson_disc
        from mrtl.recon import l1_spirit_pocs
        from mrtl.data import bundled
        img = torch.stack([bundled("t1", "test", size=64)[i].image for i in (0, 4, 8)]).to(torch.complex64)
        mask = poisson_disc((64, 64), 4, calib=16, seed=0)
        l1_spirit_pocs(mask * fft2c(img), mask, n_iter=5)
    """))
    return expect_lib_error(r, ["coil", "batch", "single"], warn_ok=True)


@case("compress given coil-last (H,W,C) k-space", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.coils import compress
        g = torch.Generator().manual_seed(0)
        k = torch.randn(64, 64, 8, dtype=torch.complex64, generator=g)
        compress(k, 4)
    """))
    return expect_lib_error(r, ["coil", "(C, H, W)", "last"], warn_ok=True)


@case("espirit_maps given coil-last (H,W,C) k-space", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.coils import espirit_maps, birdcage_maps
        from mrtl.fft import fft2c
        x = birdcage_maps(4, (64, 64)).to(torch.complex64)
        k = fft2c(x).permute(1, 2, 0).contiguous()
        espirit_maps(k, calib=16)
    """))
    return expect_lib_error(r, ["coil", "(C, H, W)", "last"], warn_ok=True)


@case("metrics.psnr(ref, recon) with the arguments swapped", "silently wrong", "D")
def _(ctx):
    r = ctx.py(textwrap.dedent("""
        import torch
        from mrtl.metrics import psnr
        g = torch.Generator().manual_seed(0)
        ref = torch.rand(32, 32, generator=g)
        recon = 3.0 * ref + 0.1 * torch.rand(32, 32, generator=g)
        value = [float(psnr(ref, recon)), float(psnr(recon, ref))]
    """))
    if r["exc"] is None:
        a, b = r["value"]
        return ("silently wrong", f"swapped order accepted: {a:.2f} vs {b:.2f} dB") if abs(a - b) > 1e-6 else \
            ("clean", "symmetric")
    return expect_lib_error(r, ["ref", "keyword"])


# ------------------------------------------------------------------------- clean errors (CLI)
@case("evaluate --ckpt <random bytes> (UnpicklingError)", "clean errors", "B")
def _(ctx):
    return expect_cli_error(ctx.cli("evaluate", "--ckpt", ctx.fx / "garbage.pt", "--data", "t1", "--size", "32",
                                    "--n", "2"), ["garbage.pt"])


@case("evaluate --ckpt <empty file> (EOFError)", "clean errors", "B")
def _(ctx):
    return expect_cli_error(ctx.cli("evaluate", "--ckpt", ctx.fx / "empty.pt", "--data", "t1", "--size", "32"),
                            ["empty.pt"])


@case("finetune --from <random bytes>", "clean errors", "B")
def _(ctx):
    cfg = ctx.tmp / "ft.yaml"
    cfg.write_text(_yaml({"data": {"domain": "t1", "size": 32, "n": 2}, "finetune": {"epochs": 1}}))
    return expect_cli_error(ctx.cli("finetune", "--from", ctx.fx / "garbage.pt", "--config", cfg, "--out",
                                    ctx.tmp / "o"), ["garbage.pt"])


@case("train with a corrupt checkpoint in --out (blocks resume)", "clean errors", "B")
def _(ctx):
    out = ctx.tmp / "run"
    out.mkdir()
    (out / "checkpoint_pretrain.pt").write_bytes((ctx.fx / "garbage.pt").read_bytes())
    res = ctx.cli("train", "--config", ctx.fx / "tiny.yaml", "--out", out)
    v = expect_cli_error(res, ["checkpoint_pretrain.pt"])
    if v[0] == "clean" and not _mentions(res[2], ["resum"]):
        return "unclear", "does not say it blocks resuming: " + v[1]
    return v


@case("train --config <malformed YAML>", "clean errors", "B")
def _(ctx):
    cfg = ctx.tmp / "bad.yaml"
    cfg.write_text("model: {n_subnets: 1}\ntrain: {epochs_per_subnet: [1\n")
    return expect_cli_error(ctx.cli("train", "--config", cfg, "--out", ctx.tmp / "o"), ["bad.yaml"])


@case("train --config <malformed JSON>", "clean errors", "B")
def _(ctx):
    cfg = ctx.tmp / "bad.json"
    cfg.write_text('{"model": {"n_subnets": 1,}}')
    return expect_cli_error(ctx.cli("train", "--config", cfg, "--out", ctx.tmp / "o"), ["bad.json"])


@case("train on a photo folder holding a decompression bomb", "clean errors", "B")
def _(ctx):
    import struct
    import zlib

    photos = ctx.tmp / "photos"
    photos.mkdir()

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    for i in range(3):
        (photos / f"bomb{i}.png").write_bytes(png)
    cfg = train_cfg(ctx, data={"path": str(photos), "format": "photos", "domain": None, "n_val": None})
    return expect_cli_error(ctx.cli("train", "--config", cfg, "--out", ctx.tmp / "o"), ["bomb", "photos"])


@case("reproduce: the notebook fails (empty t1_dir)", "clean errors", "B", slow=True)
def _(ctx):
    (ctx.tmp / "t1").mkdir()
    return expect_cli_error(ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root",
                                    ctx.tmp / "r", "-p", "t1_dir", ctx.tmp / "t1", timeout=900), ["t1"])


@case("reproduce -p <unknown key>", "clean errors", "B", slow=True)
def _(ctx):
    res = ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", ctx.tmp / "r",
                  "-p", "epochz", "3", timeout=900)
    return expect_cli_error(res, ["epochz"])


@case("reproduce --resume of a custom --run-id", "clean errors", "B")
def _(ctx):
    work = ctx.tmp / "r" / "transfer" / "tmp" / "my-study"
    work.mkdir(parents=True)
    (work / "transfer.csv").write_text("x")
    (work / "manifest.json").write_text(json.dumps({"study": "transfer", "scale": "tiny", "run_id": "my-study",
                                                    "status": "finished", "files": ["transfer.csv"]}))
    (work / ".mrtl-run.json").write_text(json.dumps({"study": "transfer", "scale": "tiny", "run_id": "my-study"}))
    res = ctx.cli("reproduce", "--study", "transfer", "--scale", "tiny", "--results-root", ctx.tmp / "r", "--resume",
                  timeout=900)
    if res[0] == 0:
        return ("clean", "resumed my-study") if (ctx.tmp / "r" / "transfer" / "my-study").exists() else \
            ("silently wrong", "exit 0 but my-study not finished")
    v = expect_cli_error(res, ["my-study"])
    return ("silently wrong", "says there is no unfinished run: " + v[1]) if v[0] in ("clean", "unclear") else v


@case("reconstruct an empty batch (0,H,W)", "clean errors", "C")
def _(ctx):
    return expect_cli_error(ctx.cli("reconstruct", "--ckpt", ctx.fx / "ckpt.pt", "--input", ctx.fx / "empty_batch.npy",
                                    "--mask", ctx.fx / "mask.npy", "--output", ctx.tmp / "o.npy"),
                            ["empty", "0 ", "no image", "(0,"])


for _bs in (0, -1, 2.5):
    @case(f"train batch_size {_bs}", "clean errors", "C")
    def _(ctx, bs=_bs):
        return expect_cli_error(ctx.cli("train", "--config", train_cfg(ctx, train={"batch_size": bs}), "--out",
                                        ctx.tmp / "o"), ["batch_size"])


@case("train device 'tpu'", "clean errors", "C")
def _(ctx):
    return expect_cli_error(ctx.cli("train", "--config", train_cfg(ctx, train={"device": "tpu"}), "--out",
                                    ctx.tmp / "o"), ["device"])


@case("train resume: 'maybe'", "clean errors", "C")
def _(ctx):
    return expect_cli_error(ctx.cli("train", "--config", train_cfg(ctx, train={"resume": "maybe"}), "--out",
                                    ctx.tmp / "o"), ["resume"])


@case("train data.n_val: 0 (message names n_val)", "clean errors", "C")
def _(ctx):
    return expect_cli_error(ctx.cli("train", "--config", train_cfg(ctx, data={"n_val": 0}), "--out", ctx.tmp / "o"),
                            ["n_val"])


@case("train train.stages: [5] of 1 subnet (message names stages)", "clean errors", "C")
def _(ctx):
    return expect_cli_error(ctx.cli("train", "--config", train_cfg(ctx, train={"stages": [5]}), "--out",
                                    ctx.tmp / "o"), ["stages"])


for _name, _words in (("trunc.npy", ["trunc.npy"]), ("empty.npy", ["empty.npy"]), ("corrupt.h5", ["corrupt.h5"]),
                      ("group.h5", ["kspace"]), ("dangling.npy", ["dangling.npy"])):
    @case(f"reconstruct --input {_name}", "clean errors", "D")
    def _(ctx, name=_name, words=_words):
        return expect_cli_error(ctx.cli("reconstruct", "--ckpt", ctx.fx / "ckpt.pt", "--input", ctx.fx / name,
                                        "--mask", ctx.fx / "mask.npy", "--output", ctx.tmp / "o.npy"), words)


@case("evaluate --data <missing folder>", "clean errors", "D")
def _(ctx):
    return expect_cli_error(ctx.cli("evaluate", "--ckpt", ctx.fx / "ckpt.pt", "--data", ctx.tmp / "nope",
                                    "--size", "32"), ["nope"])


# ----------------------------------------------------------------------------------- resources
@case("checkpoint whose metadata claims 10^7 subnetworks", "resources", "C")
def _(ctx):
    res = ctx.cli("reconstruct", "--ckpt", ctx.fx / "huge_arch.pt", "--input", ctx.fx / "k.npy", "--mask",
                  ctx.fx / "mask.npy", "--output", ctx.tmp / "o.npy", timeout=60)
    return expect_cli_error(res, ["n_subnets", "subnetwork"])


@case("FastMRIFolder over 60 files with 40 open files allowed", "resources", "D")
def _(ctx):
    import h5py
    import numpy as np

    root = ctx.tmp / "fastmri"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(60):
        with h5py.File(root / f"f{i:03d}.h5", "w") as f:
            f["kspace"] = (rng.standard_normal((1, 2, 16, 16)) + 0j).astype(np.complex64)

    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
    r = ctx.py(textwrap.dedent(f"""
        from mrtl.data import FastMRIFolder
        ds = FastMRIFolder({str(root)!r}, maps=None)
        for i in range(len(ds)):
            ds[i]
        value = len(ds)
    """), preexec=limit)
    if r["exc"] is None:
        return "clean", f"read {r['value']} slices"
    return ("silently wrong" if "Too many open files" in r["msg"] or "Errno 24" in r["msg"] else "traceback",
            f"{r['exc']}: {r['msg'][:140]}")


# ------------------------------------------------------------------------------ untested paths
@case("training with amp=True on CPU (the bf16 path)", "paths never run", "C")
def _(ctx):
    r = ctx.py(_TINY_DATA + textwrap.dedent("""
        res = T.train_sequential(model, ds, vs, epochs_per_subnet=1, lr=1e-3, batch_size=3, device="cpu", amp=True,
                                 out_dir=None)
        value = [h.get("val_psnr") for h in res["history"]][-1]
    """))
    if r["exc"] is None:
        ok = r["value"] is not None and r["value"] == r["value"]
        return ("clean", f"ran, val PSNR {r['value']:.1f} dB") if ok else ("silently wrong", f"val PSNR {r['value']}")
    return expect_lib_error(r, ["amp", "cuda", "bf16", "bfloat16"])


# ---------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=None, help="run the cases whose id or area contains this text")
    ap.add_argument("--fast", action="store_true", help="skip the cases that run a study notebook")
    ap.add_argument("--json", default=None, help="also write the per-case results as JSON")
    ap.add_argument("--label", default=None, help="column label (default: the mrtl version and git commit)")
    args = ap.parse_args(argv)

    import mrtl

    code_root = Path(mrtl.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code_root, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    label = args.label or f"{code_root} @ {commit}"
    env = dict(os.environ, PYTHONPATH=str(code_root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MRTL_QUIET="1", MPLBACKEND="Agg")
    env.pop("MRTL_DEBUG", None)
    cases = [c for c in CASES if (args.only is None or args.only in c.id or args.only in c.area)
             and not (args.fast and c.slow)]
    base = Path(tempfile.mkdtemp(prefix="mrtl_reliability_"))
    rows = []
    try:
        fx = base / "fixtures"
        make_fixtures(fx)
        for i, c in enumerate(cases):
            tmp = base / f"case{i:02d}"
            tmp.mkdir()
            t0 = time.perf_counter()
            try:
                cls, detail = c.fn(Ctx(tmp, fx, env))
            except Exception as e:  # a bug in the probe itself: report, do not hide
                cls, detail = "traceback", f"(probe error) {type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            rows.append(dict(id=c.id, area=c.area, owner=c.owner, cls=cls, detail=" ".join(str(detail).split()),
                             seconds=round(dt, 1)))
            print(f"[{i + 1:2d}/{len(cases)}] {cls:15s} {c.owner} {c.id}  ({dt:.0f} s)\n      {rows[-1]['detail'][:220]}",
                  flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"\nReliability probe: {label}\n")
    areas = list(dict.fromkeys(r["area"] for r in rows)) + ["all"]
    head = f"{'area':18s} {'cases tried':>11s} " + " ".join(f"{c:>14s}" for c in CLASSES)
    print(head)
    print("-" * len(head))
    for a in areas:
        sel = [r for r in rows if a == "all" or r["area"] == a]
        print(f"{a:18s} {len(sel):11d} " + " ".join(f"{sum(r['cls'] == c for r in sel):14d}" for c in CLASSES))
    bad = [r for r in rows if r["cls"] != "clean"]
    if bad:
        print("\nNot clean (owner: B = CLI/reproduce/utils, C = training, D = data/recon/metrics):")
        for r in bad:
            print(f"  [{r['owner']}] {r['cls']:14s} {r['id']}: {r['detail'][:160]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"label": label, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
