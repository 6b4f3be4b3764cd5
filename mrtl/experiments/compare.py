"""Our results beside the paper's, and the paper's headline numbers computed on both.

Headline numbers (the paper's Results; README of the reference table):

- mean raw and tuned PSNR gaps across R between the in-domain network and the
  natural-image (ImageNet) network: T1 test 1.97 -> 0.18 dB, T2 test 1.23 -> 0.19 dB;
- gap to CS: domain-transferred (all out-of-domain sources), tuned, minus CS, averaged over
  R and sources: 4.00 dB (T1), 5.21 dB (T2);
- multi-coil: fine-tuned natural network minus L1-SPIRiT, mean over R: 0.67 dB;
- Ntune at convergence (0.05% rule), averaged over R: 72 / 57 / 58 / 44 for Ntrain
  500 / 1000 / 2000 / 4000 (T1 test).

The gaps are computed by the same code on the paper's table and on ours, so the paper column
is a check of the code (it must give back the quoted numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = [
    "PAPER_HEADLINES",
    "paper_claim_value",
    "load_paper_table_or_none",
    "METHOD_ALIASES",
    "paper_table_path",
    "load_paper_table",
    "side_by_side",
    "headline_numbers",
    "convergence_ntune",
    "sweep_convergence",
    "Comparison",
    "compare",
    "format_comparison",
]

# Numbers the paper quotes in its Results (not all are in the table: Ntune comes from Fig. 5).
PAPER_HEADLINES = {
    ("T1", "raw gap (in-domain - natural), dB"): 1.97,
    ("T1", "tuned gap (in-domain - natural), dB"): 0.18,
    ("T1", "transferred tuned - CS, dB"): 4.00,
    ("S2", "raw gap (in-domain - natural), dB"): 1.23,
    ("S2", "tuned gap (in-domain - natural), dB"): 0.19,
    ("S2", "transferred tuned - CS, dB"): 5.21,
    ("T2", "natural tuned - SPIRiT, dB"): 0.67,
    ("F4", "Ntune at convergence, Ntrain=500"): 72,
    ("F4", "Ntune at convergence, Ntrain=1000"): 57,
    ("F4", "Ntune at convergence, Ntrain=2000"): 58,
    ("F4", "Ntune at convergence, Ntrain=4000"): 44,
    ("SF4", "Ntune at convergence, Ntrain=500"): 66,
    ("SF4", "Ntune at convergence, Ntrain=1000"): 46,
    ("SF4", "Ntune at convergence, Ntrain=2000"): 51,
    ("SF4", "Ntune at convergence, Ntrain=4000"): 43,
    ("F6", "Ntune at convergence, Ntrain=2000"): 31,
}

# Our label -> the paper's label.
METHOD_ALIASES = {"Natural-trained": "ImageNet-trained"}
_JOIN = ["table", "test_domain", "coils", "R", "method", "stage"]


def paper_table_path() -> Path:
    """Path of ``reference/paper_tables.csv`` in the repository (beside the ``mrtl`` package)."""
    return Path(__file__).resolve().parents[2] / "reference" / "paper_tables.csv"


def load_paper_table(path: str | Path | None = None) -> pd.DataFrame:
    """Read the paper's long-format table (default: the repository's ``reference/paper_tables.csv``).

    Raises:
        FileNotFoundError: if the file is missing (it ships with the repository, not the wheel).
    """
    p = Path(path) if path is not None else paper_table_path()
    if not p.exists():
        raise FileNotFoundError(f"paper table {p} not found: it ships with the mrtl repository "
                                "(reference/paper_tables.csv); pass its path explicitly")
    df = pd.read_csv(p)
    missing = [c for c in _JOIN + ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std"] if c not in df.columns]
    if missing:
        raise ValueError(f"paper table {p}: missing column(s) {missing}")
    return df


def load_paper_table_or_none() -> pd.DataFrame | None:
    """The paper's table, or None when ``reference/paper_tables.csv`` is not there (a wheel install)."""
    try:
        return load_paper_table()
    except FileNotFoundError:
        return None


def paper_claim_value(paper: pd.DataFrame | None, terms: Sequence, Rs: Sequence[int]) -> float | None:
    """A claim's quantity (a signed sum of PSNRs, see :func:`mrtl.experiments.results.claim_table`)
    on the paper's table, averaged over the R in ``Rs`` only (the R our study ran).

    A term whose ``method`` is a list is averaged over those methods. Returns None when a term
    has no counterpart in the paper (the from-scratch baseline) or ``paper`` is None.
    """
    if paper is None:
        return None
    p = _as_paper_names(paper)
    vals = []
    for R in Rs:
        total = 0.0
        for sign, sel in terms:
            rows = p[p["R"] == R]
            for k, v in sel.items():
                if k == "method":
                    v = [METHOD_ALIASES.get(x, x) for x in (v if isinstance(v, (list, tuple)) else [v])]
                    rows = rows[rows[k].isin(v)]
                elif k in rows.columns:
                    rows = rows[rows[k].isin(v) if isinstance(v, (list, tuple)) else rows[k] == v]
            if rows.empty:
                return None
            total += sign * float(rows["psnr_mean"].mean())
        vals.append(total)
    return float(np.mean(vals)) if vals else None


def _as_paper_names(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df["method"] = df["method"].replace(METHOD_ALIASES)
    return df


def _final_rows(ours: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, ..., stage): for tables with several Ntrain/Ntune keep the largest."""
    df = ours.copy()
    for c in ("n_train", "n_tune"):
        if c not in df.columns:
            df[c] = 0
    df = df.sort_values(["n_train", "n_tune"], na_position="first")
    return df.groupby(_JOIN, sort=False, dropna=False).tail(1)


def side_by_side(ours: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Join our long table with the paper's on (table, test_domain, coils, R, method, stage).

    Our method names are mapped to the paper's (Natural-trained -> ImageNet-trained); our rows
    with no paper counterpart (Scratch, other R) are kept with NaN paper columns.

    Returns:
        DataFrame with ``psnr_ours, psnr_paper, dpsnr (ours - paper), ssim_ours, ssim_paper``.
    """
    o = _as_paper_names(_final_rows(ours))
    p = paper[_JOIN + ["psnr_mean", "ssim_mean"]]
    m = o.merge(p, on=_JOIN, how="left", suffixes=("_ours", "_paper"))
    m = m.rename(columns={"psnr_mean_ours": "psnr_ours", "psnr_mean_paper": "psnr_paper",
                          "ssim_mean_ours": "ssim_ours", "ssim_mean_paper": "ssim_paper"})
    m["dpsnr"] = m["psnr_ours"] - m["psnr_paper"]
    cols = _JOIN + ["psnr_ours", "psnr_std", "psnr_paper", "dpsnr", "ssim_ours", "ssim_paper"]
    return m[cols].sort_values(["table", "R", "method", "stage"]).reset_index(drop=True)


def _pivot(df: pd.DataFrame, table: str) -> pd.DataFrame:
    sub = _as_paper_names(_final_rows(df[df["table"] == table]))
    sub = sub.assign(key=sub["method"] + "|" + sub["stage"].astype(str))
    return sub.pivot_table(index="R", columns="key", values="psnr_mean", aggfunc="mean")


def _mean_over_R(a: pd.Series | None, b: pd.Series | None) -> float:
    if a is None or b is None:
        return float("nan")
    d = (a - b).dropna()
    return float(d.mean()) if len(d) else float("nan")


def headline_numbers(df: pd.DataFrame) -> dict[tuple[str, str], float]:
    """The paper's headline numbers computed on a long table (ours or the paper's).

    For each single-coil table (test domain X): ``raw gap`` = mean over R of
    PSNR(X-trained, raw) - PSNR(ImageNet/Natural-trained, raw); ``tuned gap`` the same after
    fine-tuning; ``transferred tuned - CS`` = mean over R and over the out-of-domain sources of
    PSNR(tuned) - PSNR(CS); ours also get ``Scratch - natural tuned``. For the multi-coil
    table: mean over R of PSNR(natural, tuned) - PSNR(SPIRiT). Only R present in both terms
    count.

    Returns:
        {(table, quantity): value in dB}; NaN where a term is missing.
    """
    out: dict[tuple[str, str], float] = {}
    for table in sorted(set(df["table"])):
        sub = df[df["table"] == table]
        coils = sub["coils"].iloc[0]
        piv = _pivot(df, table)
        col = lambda k: piv[k] if k in piv.columns else None  # noqa: E731
        if coils == "single" and not table.startswith(("F", "SF")):
            dom = sub["test_domain"].iloc[0]
            inn = f"{dom}-trained"
            nat = "ImageNet-trained"
            out[(table, "raw gap (in-domain - natural), dB")] = _mean_over_R(col(f"{inn}|raw"), col(f"{nat}|raw"))
            out[(table, "tuned gap (in-domain - natural), dB")] = _mean_over_R(col(f"{inn}|tuned"), col(f"{nat}|tuned"))
            cs = col("CS|-")
            transferred = [c for c in piv.columns if c.endswith("|tuned") and c.split("|")[0] not in (inn, "Scratch")]
            if cs is not None and transferred:
                per = (piv[transferred].sub(cs, axis=0)).dropna(how="all")
                out[(table, "transferred tuned - CS, dB")] = float(np.nanmean(per.to_numpy())) if per.size else float("nan")
            else:
                out[(table, "transferred tuned - CS, dB")] = float("nan")
            scr = col("Scratch|-")
            if scr is not None:
                out[(table, "natural tuned - Scratch, dB")] = _mean_over_R(col(f"{nat}|tuned"), scr)
        elif coils == "multi" and not table.startswith("F"):
            out[(table, "natural tuned - SPIRiT, dB")] = _mean_over_R(col("ImageNet-trained|tuned"), col("SPIRiT|-"))
            t1 = col("T1-trained|-")
            if t1 is None:
                t1 = col("T1-trained|tuned")
            out[(table, "in-domain - natural tuned, dB")] = _mean_over_R(t1, col("ImageNet-trained|tuned"))
    return out


def convergence_ntune(n_tune: Sequence[int], psnr: Sequence[float], psnr_ref: float, tol: float = 5e-4,
                      sustained: bool = True) -> float:
    """Ntune at convergence, the paper's rule (Fig. 5).

    Convergence is the number of fine-tuning samples where the change in PSNR per added sample
    falls below ``tol`` (0.05%) of the in-domain reference PSNR. On a grid ``n_0 < n_1 < ...``
    the change per sample between neighbours is ``(psnr_{i+1} - psnr_i) / (n_{i+1} - n_i)``;
    the result is the smallest ``n_i`` from which that change stays below the threshold
    (``sustained=True``) or first falls below it (``sustained=False``, the literal rule).

    Args:
        n_tune: fine-tuning set sizes (any order, distinct).
        psnr: mean PSNR at each size.
        psnr_ref: PSNR of the in-domain reference network (dB, > 0).
        tol: threshold as a fraction of ``psnr_ref`` (paper: 5e-4).
        sustained: see above.

    Returns:
        Ntune at convergence, or NaN if the grid never converges (the last step still exceeds it).
    """
    n = np.asarray(n_tune, dtype=float)
    p = np.asarray(psnr, dtype=float)
    if n.ndim != 1 or p.shape != n.shape or len(n) < 2:
        raise ValueError(f"n_tune, psnr: expected two 1-D sequences of equal length >= 2, got {n.shape} and {p.shape}")
    if not np.all(np.isfinite(p)) or not np.all(np.isfinite(n)):
        raise ValueError("psnr: NaN/Inf in the sweep")
    if len(set(n.tolist())) != len(n):
        raise ValueError(f"n_tune: expected distinct values, got {list(n_tune)}")
    if not (isinstance(psnr_ref, (int, float, np.floating)) and math.isfinite(psnr_ref) and psnr_ref > 0):
        raise ValueError(f"psnr_ref: expected a finite PSNR > 0, got {psnr_ref!r}")
    if not (tol > 0):
        raise ValueError(f"tol: expected > 0, got {tol!r}")
    order = np.argsort(n)
    n, p = n[order], p[order]
    slope = np.diff(p) / np.diff(n)
    below = slope < tol * psnr_ref
    if sustained:
        for i in range(len(below)):
            if below[i:].all():
                return float(n[i])
        return float("nan")
    idx = np.flatnonzero(below)
    return float(n[idx[0]]) if len(idx) else float("nan")


def sweep_convergence(table: pd.DataFrame, tol: float = 5e-4, transferred: str = "Natural-trained") -> pd.DataFrame:
    """Ntune at convergence per (table, R, Ntrain) from a sweep's long table.

    Uses rows of method ``transferred`` (``n_tune = 0`` is the raw network) and the in-domain
    reference row (method ``<test_domain>-trained``, largest Ntrain/Ntune).

    Returns:
        DataFrame: table, R, n_train, ntune_converged, psnr_ref, psnr_max.
    """
    rows = []
    for (tab, R), g in table.groupby(["table", "R"], sort=False):
        dom = g["test_domain"].iloc[0]
        ref = g[g["method"] == f"{dom}-trained"].sort_values(["n_train", "n_tune"])
        if ref.empty:
            continue
        psnr_ref = float(ref["psnr_mean"].iloc[-1])
        tr = g[g["method"].isin([transferred, METHOD_ALIASES.get(transferred, transferred)])]
        for n_train, s in tr.groupby("n_train"):
            s = s.sort_values("n_tune")
            if len(s) < 2:
                continue
            conv = convergence_ntune(s["n_tune"].tolist(), s["psnr_mean"].tolist(), psnr_ref, tol=tol)
            rows.append(dict(table=tab, R=R, n_train=int(n_train), ntune_converged=conv, psnr_ref=psnr_ref,
                             psnr_max=float(s["psnr_mean"].max())))
    return pd.DataFrame(rows, columns=["table", "R", "n_train", "ntune_converged", "psnr_ref", "psnr_max"])


@dataclass
class Comparison:
    """Result of :func:`compare`.

    Attributes:
        table: :func:`side_by_side` of our results and the paper's.
        headlines: DataFrame (table, quantity, R, ours, paper, paper_quoted): ``paper`` is recomputed
            from the paper's table over the same R as ours; ``paper_quoted`` is the number in the
            paper's text (averaged over all its R, so not comparable when our R differ).
        convergence: :func:`sweep_convergence` of our sweep rows (empty if none).
    """

    table: pd.DataFrame
    headlines: pd.DataFrame
    convergence: pd.DataFrame

    def __str__(self) -> str:
        return format_comparison(self)


def compare(ours: pd.DataFrame | str | Path, paper: pd.DataFrame | str | Path | None = None,
            tol: float = 5e-4) -> Comparison:
    """Put our long table beside the paper's and compute the headline numbers on both.

    Args:
        ours: our long-format table (DataFrame or CSV path).
        paper: the paper's table (DataFrame, CSV path or None = ``reference/paper_tables.csv``).
        tol: convergence threshold for sweeps (fraction of the reference PSNR).

    Returns:
        :class:`Comparison`.
    """
    if isinstance(ours, (str, Path)):
        if not Path(ours).exists():
            raise FileNotFoundError(f"results CSV {ours} not found")
        ours = pd.read_csv(ours)
    if not isinstance(ours, pd.DataFrame):
        raise TypeError(f"ours: expected a DataFrame or a CSV path, got {type(ours).__name__}")
    missing = [c for c in _JOIN + ["psnr_mean"] if c not in ours.columns]
    if missing:
        raise ValueError(f"ours: missing column(s) {missing} (expected the long format {_JOIN + ['psnr_mean', '...']})")
    paper_df = paper if isinstance(paper, pd.DataFrame) else load_paper_table(paper)
    sweep_tables = [t for t in set(ours["table"]) if str(t).startswith(("F", "SF"))]
    plain = ours[~ours["table"].isin(sweep_tables)]
    table = side_by_side(plain, paper_df) if len(plain) else pd.DataFrame()
    ours_h = headline_numbers(plain) if len(plain) else {}
    # the paper's side over the same tables and the same R as ours (its text averages R = 2..10)
    same = pd.Series(False, index=paper_df.index)
    for tab, g in plain.groupby("table"):
        same |= (paper_df["table"] == tab) & paper_df["R"].isin(set(g["R"]))
    paper_h = headline_numbers(paper_df[same]) if len(plain) else {}
    conv = sweep_convergence(ours[ours["table"].isin(sweep_tables)], tol=tol) if sweep_tables else pd.DataFrame()
    rows = []
    Rs_of = {tab: " ".join(str(int(r)) for r in sorted(set(g["R"]))) for tab, g in plain.groupby("table")} if len(plain) else {}
    for key, v in ours_h.items():
        rows.append(dict(table=key[0], quantity=key[1], R=Rs_of.get(key[0], ""), ours=v, paper=paper_h.get(key, float("nan")),
                         paper_quoted=PAPER_HEADLINES.get(key, float("nan"))))
    if len(conv):
        for (tab, n_train), g in conv.groupby(["table", "n_train"]):
            q = f"Ntune at convergence, Ntrain={n_train}"
            rows.append(dict(table=tab, quantity=q + " (mean over R)", R=" ".join(str(int(r)) for r in sorted(set(g["R"]))),
                             ours=float(g["ntune_converged"].mean()),
                             paper=float("nan"), paper_quoted=float("nan")))
        for key, v in PAPER_HEADLINES.items():
            if key[0] in sweep_tables:
                rows.append(dict(table=key[0], quantity=key[1] + " (paper, Ntrain in 500-4000)", R="", ours=float("nan"),
                                 paper=float("nan"), paper_quoted=v))
    heads = pd.DataFrame(rows, columns=["table", "quantity", "R", "ours", "paper", "paper_quoted"])
    return Comparison(table=table, headlines=heads, convergence=conv)


def format_comparison(comp: Comparison) -> str:
    """Plain-text rendering of a :class:`Comparison` (our table beside the paper's + headlines)."""
    parts = []
    with pd.option_context("display.width", 160, "display.max_rows", 500, "display.max_columns", 20):
        if len(comp.table):
            t = comp.table.drop(columns=["test_domain", "coils"]).copy()
            parts.append("PSNR (dB) / SSIM: ours beside the paper's (paper: 256x256, Ntrain 2000; ours: see config)")
            parts.append(t.to_string(index=False, float_format=lambda x: f"{x:.2f}" if abs(x) >= 1.5 else f"{x:.3f}", na_rep="-"))
        if len(comp.convergence):
            parts.append("\nNtune at convergence (0.05% rule) per R and Ntrain")
            parts.append(comp.convergence.to_string(index=False, float_format=lambda x: f"{x:.2f}", na_rep="not converged"))
        if len(comp.headlines):
            parts.append("\nHeadline numbers (paper = recomputed from the paper's table at the same R as ours; "
                         "quoted = the paper's text, all its R)")
            parts.append(comp.headlines.to_string(index=False, float_format=lambda x: f"{x:.2f}", na_rep="-"))
    return "\n".join(parts)
