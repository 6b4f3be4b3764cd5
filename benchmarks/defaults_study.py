"""Validation study behind the library defaults of the classic reconstructions (issue 12, item 6).

Which default ``lam`` / ``n_iter`` should :func:`mrtl.recon.cs_l1_wavelet` use, and which
kernel size / iteration count :func:`mrtl.recon.spirit_calibrate` /
:func:`mrtl.recon.l1_spirit_pocs`? The answer must hold across image sizes, accelerations and
image content, and it must be chosen without the test split.

Data (never the test split):
- domains of :func:`mrtl.data.bundled`: ``t1`` (real Colin27), ``t2`` (SYNTHETIC, stored at
  128x128, so not used at 256 where it would be an upsampled image), ``natural`` (real photos).
  ``pd`` is not used: it is bundled as a test-only domain (it has no train/val images).
- two non-test splits: ``train`` slices (the rules are chosen on them) and ``val`` slices
  (held out from that choice; the gap tables report them).
- single-coil data exactly as the studies make them: :class:`mrtl.data.UndersampledDataset`
  (zero phase, no noise, 99th percentile = 1) with Poisson-disc masks of a
  :class:`mrtl.masks.MaskBank` (train bank, default calibration square);
- multi-coil data: the same with ``coils="simulate"`` (8 virtual coils from 16 simulated
  birdcage coils, :func:`mrtl.data.coil_map_bank`), zero phase for MR domains and random
  sinusoidal phase for natural images (as the multi-coil study does); the true maps combine.

CS (a shared 2-core machine sets the budget): lam on a log grid 1e-4..1e-2 (four points a
decade) x 80 and 200 iterations; 64x64 (4 slices per split) at R = 2, 4, 8, 10 for all
domains; 128x128 (3 slices) at all R for t1 and R = 4, 8 for t2 and natural; 256x256 (t1, 2
slices) at R = 2 (train and val) and R = 4, 8 (val only: a held-out size). The rule
``c (R/4)^a (200/n)^b (size/128)^d`` is scored on the train slices (:func:`fit_cs_rule`, PSNR
interpolated in log lam); the library's :func:`mrtl.recon.cs.default_cs_lambda` uses the
rounded best (c = 2.5e-4, a = 0.75, b = 1.5, d = 0: a size term gained 0.02 dB). The library
default itself is then run on every case and compared with each case's best lam of the grid.

SPIRiT: 64x64 (2 slices per split) at R = 2, 4, 8 for all domains and t1 at 128x128, R = 4
(val only), kernel 3/5/7 x Tikhonov 1e-2 x ``stabilize`` True/False x 10/20/40/80 iterations,
lam 1e-3. A setting that diverges on a slice (``SpiritDivergenceError``) scores NaN for its case.

Writes (atomically; a rerun resumes: grid cases already in the CSVs are not recomputed, and
default rows are reused only if the library's defaults are unchanged) under ``results/defaults/``:
``cs_grid.csv`` (one row per slice, lam, n_iter), ``cs_default.csv`` (the library default per
slice), ``cs_rules.csv`` (rules scored on train), ``cs_gap_iter{80,200}.csv`` (per case: best
lam, its PSNR, the default's PSNR, the gap), ``spirit_grid.csv``, ``spirit_default.csv``,
``spirit_train_ranking.csv``, ``spirit_gap.csv``, ``spirit_gap_stabilized.csv``; and prints the tables.

Run: ``python benchmarks/defaults_study.py [--quick] [--part cs|spirit|all] [--out DIR]``
(``--quick``: 64 and 128 only, R = 4, 8, fewer slices and grid points, 80 iterations, under
``DIR/quick``; about 11 minutes on a 2-core machine shared with other jobs). The full study took
about 40 minutes there. Seeded: the
same command gives the same CSVs on CPU (one torch thread by default).
"""

from __future__ import annotations

import argparse
import inspect
import io
import itertools
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mrtl.data import UndersampledDataset, bundled
from mrtl.masks import MaskBank
from mrtl.metrics import psnr
from mrtl.recon import SpiritKernel, cs_l1_wavelet, l1_spirit_pocs, spirit_calibrate
from mrtl.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
NATIVE = {"t1": 256, "t2": 128, "natural": 256}  # stored sizes (t2 is not upsampled)
LAM_GRID = [float(f"{v:.3g}") for v in 10.0 ** np.arange(-4.0, -1.99, 0.25)]


# ------------------------------------------------------------------ data


def spread(n_avail: int, n: int) -> list[int]:
    if n >= n_avail:
        return list(range(n_avail))
    return sorted(set(np.linspace(0, n_avail - 1, n).round().astype(int).tolist()))


def make_data(domain: str, split: str, size: int, R: float, n: int, coils: bool = False):
    """``n`` slices of ``domain``/``split`` at ``size``, undersampled at ``R`` as the studies do.

    Returns:
        ``(kspace, mask, reference, maps)``: ``(B, [C,] H, W)``, ``(B, H, W)``, ``(B, H, W)``,
        maps ``(B, C, H, W)`` or None.
    """
    src = bundled(domain, split, size=size)
    bank = MaskBank(R, (size, size), n=16, seed=SEED, split="train")
    kw = dict(coils="simulate", n_virtual=8, n_coils=16, phase="sinusoidal" if domain == "natural" else "zero") if coils else {}
    ds = UndersampledDataset(src, bank, seed=SEED + int(10 * R) + (0 if split == "train" else 500), **kw)
    samples = [ds[i] for i in spread(len(ds), n)]
    k = torch.stack([s.kspace for s in samples])
    m = torch.stack([s.mask for s in samples])
    ref = torch.stack([s.reference for s in samples])
    maps = torch.stack([s.maps for s in samples]) if coils else None
    return k, m, ref, maps


# ------------------------------------------------------------------ CS


def _load_done(path: Path | None, key_cols) -> tuple[list[dict], set]:
    """Rows already computed (a previous, maybe interrupted run with the same grid) and their cases."""
    if path is None or not path.exists():
        return [], set()
    df = pd.read_csv(path)
    return df.to_dict("records"), set(map(tuple, df[key_cols].itertuples(index=False)))


def cs_grid(cases, lams, iters, log, path: Path | None = None) -> pd.DataFrame:
    """PSNR of every slice for every ``lam`` x ``n_iter``; resumes from ``path`` (written after each case)."""
    keys = ["domain", "size", "R", "split", "n_iter"]
    rows, done = _load_done(path, keys)
    for domain, size, R, split, n in cases:
        todo = [it for it in iters if (domain, size, R, split, it) not in done]
        if not todo:
            continue
        k, m, ref, _ = make_data(domain, split, size, R, n)
        t0 = time.perf_counter()
        for n_iter, lam in itertools.product(todo, lams):
            p = psnr(cs_l1_wavelet(k, m, lam=lam, n_iter=n_iter).image, ref=ref)
            for i, v in enumerate(p.tolist()):
                rows.append(dict(domain=domain, size=size, R=R, split=split, slice=i, n_iter=n_iter, lam=lam, psnr=v))
        if path is not None:
            write_csv(pd.DataFrame(rows), path)
        log(f"CS grid {domain:8s} {size:3d} R={R:<4g} {split:5s} {len(ref)} slices: {time.perf_counter() - t0:6.1f} s")
    return pd.DataFrame(rows)


def _fingerprint(*objs) -> str:
    """What the library's defaults are now: function signatures and module constants."""
    parts = []
    for o in objs:
        parts.append(f"{o.__name__}{inspect.signature(o)}" if callable(o) else repr(o))
    return " | ".join(parts)


def cs_fingerprint() -> str:
    from mrtl.recon import cs

    return _fingerprint(cs.cs_l1_wavelet, (cs._LAM_C, cs._LAM_R_EXP, cs._LAM_ITER_EXP))


def spirit_fingerprint() -> str:
    from mrtl.recon import spirit

    consts = [getattr(spirit, n, None) for n in ("DEFAULT_KERNEL_SIZE", "DEFAULT_TIKHONOV", "PAPER_ITERS", "PAPER_R")]
    return _fingerprint(spirit.spirit_calibrate, spirit.l1_spirit_pocs, consts)


def _run_defaults(cases, fn, fingerprint: str, path: Path | None) -> pd.DataFrame:
    """Per-slice PSNR of the library default on every case; rows of ``path`` computed with the
    same library defaults (same fingerprint) are reused, any others recomputed."""
    old, done = [], set()
    if path is not None and path.exists():
        prev = pd.read_csv(path)
        prev = prev[prev.defaults == fingerprint]
        old = prev.to_dict("records")
        done = set(map(tuple, prev[["domain", "size", "R", "split"]].itertuples(index=False)))
    rows = []
    for domain, size, R, split, n in cases:
        if (domain, size, R, split) in done:
            rows += [r for r in old if (r["domain"], r["size"], r["R"], r["split"]) == (domain, size, R, split)]
            continue
        for i, v in enumerate(fn(domain, size, R, split, n)):
            rows.append(dict(domain=domain, size=size, R=R, split=split, slice=i, psnr=v, defaults=fingerprint))
        if path is not None:
            write_csv(pd.DataFrame(rows), path)
    df = pd.DataFrame(rows)
    if path is not None:
        write_csv(df, path)
    return df


def cs_default(cases, log, path: Path | None = None) -> pd.DataFrame:
    """The library default (no ``lam``/``n_iter`` given) on the same slices."""

    def one(domain, size, R, split, n):
        k, m, ref, _ = make_data(domain, split, size, R, n)
        return psnr(cs_l1_wavelet(k, m).image, ref=ref).tolist()

    return _run_defaults(cases, one, cs_fingerprint(), path)


def case_curves(grid: pd.DataFrame, n_iter: int) -> pd.DataFrame:
    """Mean PSNR over the slices of each case, per lam (one n_iter)."""
    g = grid[grid.n_iter == n_iter]
    return g.groupby(["domain", "size", "R", "split", "lam"], as_index=False).psnr.mean()


def interp_psnr(curve: pd.DataFrame, lam: float) -> float:
    """PSNR of one case's mean curve at ``lam``, linear in log10(lam) (clamped to the grid)."""
    x = np.log10(curve.lam.to_numpy())
    return float(np.interp(np.log10(lam), x, curve.psnr.to_numpy()))


def gap_table(grid: pd.DataFrame, default: pd.DataFrame, n_iter_best: int, split: str) -> pd.DataFrame:
    """Per case: best lam of the grid (at ``n_iter_best``), its PSNR, the default's PSNR, the gap;
    and the old default (the paper's lam = 1e-3 with 80 iterations, from the grid) with its gap."""
    cur = case_curves(grid, n_iter_best)
    cur = cur[cur.split == split]
    old = case_curves(grid, 80)
    old = old[(old.split == split) & np.isclose(old.lam, 1e-3)]
    d = default[default.split == split].groupby(["domain", "size", "R"], as_index=False).psnr.mean()
    rows = []
    for (domain, size, R), c in cur.groupby(["domain", "size", "R"]):
        b = c.loc[c.psnr.idxmax()]
        sel = d[(d.domain == domain) & (d["size"] == size) & (d.R == R)]
        if sel.empty:
            continue
        pd_ = float(sel.psnr.iloc[0])
        o = old[(old.domain == domain) & (old["size"] == size) & (old.R == R)].psnr
        po = float(o.iloc[0]) if len(o) else float("nan")
        rows.append(dict(domain=domain, size=size, R=R, best_lam=b.lam, psnr_best=round(b.psnr, 2),
                         psnr_default=round(pd_, 2), gap=round(b.psnr - pd_, 2),
                         psnr_old_default=round(po, 2), gap_old_default=round(b.psnr - po, 2)))
    return pd.DataFrame(rows)


def score_constant_rules(grid: pd.DataFrame, n_iter: int, split: str = "train") -> pd.DataFrame:
    """Loss (dB below each case's best) of a constant relative lam, per candidate constant."""
    cur = case_curves(grid, n_iter)
    cur = cur[cur.split == split]
    fine = 10.0 ** np.arange(-4.0, -1.99, 0.05)
    out = []
    for lam in fine:
        losses = []
        for _, c in cur.groupby(["domain", "size", "R"]):
            losses.append(c.psnr.max() - interp_psnr(c, lam))
        out.append(dict(lam=float(f"{lam:.3g}"), mean_loss=float(np.mean(losses)), max_loss=float(np.max(losses))))
    return pd.DataFrame(out)


def rule_lam(R, n_iter, c: float, a: float, b: float, d: float = 0.0, size=128) -> np.ndarray:
    """The family of rules searched: ``c (R/4)^a (200/n)^b (size/128)^d`` with ``n`` clipped to the
    iteration counts of the study (80..200) and the result to the lam grid (1e-4..1e-2)."""
    n = np.clip(np.asarray(n_iter, float), 80.0, 200.0)
    lam = c * (np.asarray(R, float) / 4.0) ** a * (200.0 / n) ** b * (np.asarray(size, float) / 128.0) ** d
    return np.clip(lam, 1e-4, 1e-2)


def fit_cs_rule(grid: pd.DataFrame, split: str = "train") -> pd.DataFrame:
    """Score every rule of the family on ``split``: loss = dB below each case's best lam (per
    n_iter), PSNR interpolated linearly in log10(lam) between grid points. Sorted by mean loss."""
    g = grid[grid.split == split].groupby(["domain", "size", "R", "n_iter", "lam"], as_index=False).psnr.mean()
    curves = [(key, np.log10(c.lam.to_numpy()), c.psnr.to_numpy()) for key, c in g.groupby(["domain", "size", "R", "n_iter"])]
    rows = []
    for c, a, b, d in itertools.product(10.0 ** np.arange(-4.0, -2.49, 0.05), (0.0, 0.25, 0.5, 0.75, 1.0),
                                        (0.0, 0.5, 1.0, 1.5, 2.0), (-0.5, -0.25, 0.0, 0.25, 0.5)):
        loss = np.array([y.max() - np.interp(np.log10(rule_lam(R, n, c, a, b, d, size)), x, y)
                         for (_, size, R, n), x, y in curves])
        rows.append(dict(c=float(f"{c:.3g}"), a=a, b=b, d=d, mean_loss=loss.mean(), q90_loss=np.quantile(loss, 0.9),
                         max_loss=loss.max()))
    return pd.DataFrame(rows).sort_values("mean_loss", kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------ SPIRiT


def spirit_grid(cases, kernels, tikhonovs, stabilizes, iters, lams, log, path: Path | None = None) -> pd.DataFrame:
    """PSNR of every slice for every kernel x Tikhonov weight x ``stabilize`` x ``n_iter`` x ``lam``
    (resumes from ``path``)."""
    rows, done = _load_done(path, ["domain", "size", "R", "split"])
    for domain, size, R, split, n in cases:
        if (domain, size, R, split) in done:
            continue
        k, m, ref, maps = make_data(domain, split, size, R, n, coils=True)
        t0 = time.perf_counter()
        for ks, tik in itertools.product(kernels, tikhonovs):
            try:
                ker = spirit_calibrate(k, kernel_size=ks, tikhonov=tik, warn=False)
            except ValueError as e:  # calibration square too small for this kernel
                log(f"  kernel {ks} at {size}: {e}")
                continue
            for st, n_iter, lam in itertools.product(stabilizes, iters, lams):
                p = _spirit_psnr(k, m, ref, maps, n_iter=n_iter, kernel=ker, lam=lam, stabilize=st)
                for i, v in enumerate(p):
                    rows.append(dict(domain=domain, size=size, R=R, split=split, slice=i, kernel=ks, tikhonov=tik,
                                     stabilize=st, n_iter=n_iter, lam=lam, psnr=v))
        if path is not None:
            write_csv(pd.DataFrame(rows), path)
        log(f"SPIRiT grid {domain:8s} {size:3d} R={R:<4g} {split:5s} {len(ref)} slices: {time.perf_counter() - t0:6.1f} s")
    return pd.DataFrame(rows)


def _spirit_psnr(k, m, ref, maps, **kw) -> list[float]:
    with warnings.catch_warnings():  # SpiritCalibrationWarning: the grid measures what it warns about
        warnings.simplefilter("ignore")
        return _spirit_psnr_quiet(k, m, ref, maps, **kw)


def _spirit_psnr_quiet(k, m, ref, maps, **kw) -> list[float]:
    """Per-slice PSNR of ``l1_spirit_pocs``; NaN for a slice whose iteration diverged.

    Slices are reconstructed one at a time so that one diverging slice does not hide the others.
    """
    out = []
    for b in range(len(ref)):
        kb = dict(kw)
        if "kernel" in kb and kb["kernel"].kernel.ndim == 5:
            kb["kernel"] = SpiritKernel(kb["kernel"].kernel[b], kb["kernel"].calib, kb["kernel"].tikhonov)
        try:
            img = l1_spirit_pocs(k[b], m[b], maps=maps[b], **kb).image
            out.append(float(psnr(img[None], ref=ref[b : b + 1])[0]))
        except FloatingPointError:  # the POCS iteration diverged
            out.append(float("nan"))
    return out


def spirit_default(cases, log, path: Path | None = None) -> pd.DataFrame:
    """The library default (no kernel, ``lam`` or ``n_iter`` given) on the same slices."""

    def one(domain, size, R, split, n):
        k, m, ref, maps = make_data(domain, split, size, R, n, coils=True)
        return _spirit_psnr(k, m, ref, maps)

    return _run_defaults(cases, one, spirit_fingerprint(), path)


def _mean_nan(x: pd.Series) -> float:
    """Mean that is NaN when any slice diverged (a setting that diverges on one slice loses)."""
    return float(x.mean(skipna=False))


def spirit_gap_table(grid: pd.DataFrame, default: pd.DataFrame, split: str) -> pd.DataFrame:
    """Per case: the best kernel x n_iter x lam of the grid, its PSNR, the default's PSNR, the gap,
    and how many grid settings diverged on at least one slice."""
    g = grid[grid.split == split].groupby(["domain", "size", "R", "kernel", "tikhonov", "stabilize", "n_iter", "lam"]).psnr.apply(_mean_nan)
    g = g.reset_index()
    d = default[default.split == split].groupby(["domain", "size", "R"]).psnr.apply(_mean_nan).reset_index()
    rows = []
    for (domain, size, R), c in g.groupby(["domain", "size", "R"]):
        b = c.loc[c.psnr.idxmax()]
        sel = d[(d.domain == domain) & (d["size"] == size) & (d.R == R)]
        if sel.empty:
            continue
        pd_ = float(sel.psnr.iloc[0])
        rows.append(dict(domain=domain, size=size, R=R, best_kernel=int(b.kernel), best_stabilize=bool(b.stabilize),
                         best_n_iter=int(b.n_iter),
                         best_lam=b.lam, psnr_best=round(b.psnr, 2), psnr_default=round(pd_, 2),
                         gap=round(b.psnr - pd_, 2), diverged=f"{int(c.psnr.isna().sum())}/{len(c)}"))
    return pd.DataFrame(rows)


# ------------------------------------------------------------------ main


def write_csv(df: pd.DataFrame, path: Path) -> None:
    buf = io.StringIO()
    df.to_csv(buf, index=False, float_format="%.6g")
    atomic_write_text(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 and 128 only, fewer slices and grid points")
    ap.add_argument("--part", choices=("cs", "spirit", "all"), default="all")
    ap.add_argument("--out", default=str(ROOT / "results" / "defaults"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: results do not depend on it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    out = Path(args.out) / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {msg}", flush=True)

    pd.set_option("display.width", 200)
    sizes = (64, 128) if args.quick else (64, 128, 256)
    Rs = (4, 8) if args.quick else (2, 4, 8, 10)
    domains = ("t1", "t2", "natural")

    if args.part in ("cs", "all"):
        n_slices = {64: 3, 128: 3, 256: 2} if args.quick else {64: 4, 128: 3, 256: 2}
        iters = (80,) if args.quick else (80, 200)
        lams = LAM_GRID[::2] if args.quick else LAM_GRID
        # the CPU budget of a shared 2-core machine: all R at 64 (and for t1 at 128); R = 4, 8 for
        # the other 128 cases; 256 mostly as a held-out size
        def plan(d, s):
            if s == 256:  # t1 only: R = 2 on train and val slices, R = 4, 8 on val slices
                return [(2, "train"), (2, "val"), (4, "val"), (8, "val")] if d == "t1" else []
            Rs_ds = Rs if (s == 64 or d == "t1" or args.quick) else (4, 8)
            return [(R, sp) for R in Rs_ds for sp in ("train", "val")]

        cases = [(d, s, R, sp, n_slices[s]) for s in sizes for d in domains if s <= NATIVE[d] for R, sp in plan(d, s)]
        grid = cs_grid(cases, lams, iters, log, out / "cs_grid.csv")
        default = cs_default(cases, log, out / "cs_default.csv")
        rules = fit_cs_rule(grid)
        write_csv(rules, out / "cs_rules.csv")
        print("\nCS: rules c (R/4)^a (200/n)^b (size/128)^d scored on the train slices (dB below each case's best lam):")
        print(rules.head(8).to_string(index=False, float_format="%.3g"))
        print("without a size term (d = 0):")
        print(rules[rules.d == 0].head(4).to_string(index=False, float_format="%.3g"))
        for n_iter in sorted(grid.n_iter.unique()):
            print(f"\nCS: a constant relative lam on the fit (train) slices at n_iter={n_iter}: dB below each case's best")
            sc = score_constant_rules(grid, n_iter)
            print(sc.iloc[::5].to_string(index=False, float_format="%.3g"))
        print("\nCS: mean PSNR (fit and val slices) by size and R, at the best lam of each n_iter")
        best = grid.groupby(["domain", "size", "R", "n_iter", "lam"]).psnr.mean().groupby(["domain", "size", "R", "n_iter"]).max()
        print(best.unstack("n_iter").round(2).to_string())
        for n_iter in iters:
            print(f"\nCS per case on the held-out val slices: best lam of the grid at n_iter={n_iter} vs the library default")
            tab = gap_table(grid, default, n_iter, "val")
            print(tab.to_string(index=False, float_format="%.3g"))
            print(f"gap: mean {tab.gap.mean():.2f} dB, median {tab.gap.median():.2f}, max {tab.gap.max():.2f} "
                  f"({(tab.gap <= 0.5).mean() * 100:.0f}% of cases within 0.5 dB); old default (1e-3, 80 "
                  f"iterations): mean {tab.gap_old_default.mean():.2f}, max {tab.gap_old_default.max():.2f}")
            write_csv(tab, out / f"cs_gap_iter{n_iter}.csv")

    if args.part in ("spirit", "all"):
        s_sizes = (64,) if args.quick else (64, 128)
        s_Rs = (4, 8) if args.quick else (2, 4, 8)
        n_slices = {64: 2, 128: 2}
        kernels = (3, 5, 7)
        iters = (10, 20, 40) if args.quick else (10, 20, 40, 80)
        lams = (1e-3,)
        # 128x128 (8 coils: 4x the time of 64x64) only as a held-out size: t1, R = 4, val slices
        cases = [(d, s, R, sp, n_slices[s]) for s in s_sizes for d in domains for R in s_Rs for sp in ("train", "val")
                 if s == 64 or args.quick or (d == "t1" and R == 4 and sp == "val")]
        tikhonovs = (1e-2,)
        stabilizes = (True, False)
        grid = spirit_grid(cases, kernels, tikhonovs, stabilizes, iters, lams, log, out / "spirit_grid.csv")
        default = spirit_default(cases, log, out / "spirit_default.csv")
        for split in ("train", "val"):
            g = grid[grid.split == split].groupby(["stabilize", "size", "R", "kernel", "n_iter"]).psnr.apply(_mean_nan)
            print(f"\nSPIRiT ({split} slices): mean PSNR over domains and slices (NaN: diverged on a slice)")
            print(g.unstack("n_iter").round(2).to_string())
        # selection on the train slices: among the settings that diverged on no train slice, the
        # best mean PSNR over the train cases
        tr = grid[grid.split == "train"]
        keys = ["kernel", "tikhonov", "stabilize", "n_iter", "lam"]
        per_case = tr.groupby(keys + ["domain", "size", "R"]).psnr.apply(_mean_nan)
        rank = per_case.groupby(keys).apply(_mean_nan).dropna().sort_values(ascending=False).round(2)
        print("\nSPIRiT settings that never diverged on the train slices, by mean PSNR over the train cases:")
        print(rank.head(12).to_string())
        write_csv(rank.reset_index(), out / "spirit_train_ranking.csv")
        for name, g in (("", grid), ("_stabilized", grid[grid.stabilize.astype(str) == "True"])):
            tab = spirit_gap_table(g, default, "val")
            what = "every setting" if not name else "stabilize=True settings only"
            print(f"\nSPIRiT per case on the held-out val slices: best of the grid ({what}) vs the library default")
            print(tab.to_string(index=False, float_format="%.3g"))
            print(f"gap: mean {tab.gap.mean():.2f} dB, max {tab.gap.max():.2f}; default diverged in "
                  f"{int(tab.psnr_default.isna().sum())} of {len(tab)} cases")
            write_csv(tab, out / f"spirit_gap{name}.csv")
    log(f"done; CSVs in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
