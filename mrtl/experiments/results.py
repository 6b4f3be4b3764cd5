"""Results in the long format of the paper's tables, per-image metrics, paired differences.

Every study returns and writes a table with the columns of ``reference/paper_tables.csv``::

    table, test_domain, coils, R, method, stage, psnr_mean, psnr_std, ssim_mean, ssim_std

plus ``n`` (test images), ``n_train`` and ``n_tune`` (so a sweep fits the same format). Tables
use the paper's ids: ``T1`` (single-coil, T1 test), ``S2`` (single-coil, T2 test), ``T2``
(multi-coil T1); sweeps use ``F4`` (Fig. 4, T1 test) / ``SF4`` (Supp. Fig. 4, T2 test) and
``F6`` (Fig. 6, multi-coil). Methods: ``Natural-trained`` (the paper's ImageNet-trained; our
natural images are not ImageNet, :mod:`mrtl.experiments.compare` maps the name),
``T1-trained``, ``T2-trained``, ``Scratch`` (random init trained on the Ntune target images
only), ``CS``, ``SPIRiT``, ``Zero-filled``. ``stage`` is ``raw``, ``tuned`` or ``-``.

With several seeds (a ``seed`` column in the per-image metrics), ``psnr_mean`` is the mean over
seeds and test images, ``psnr_std`` the std across test images (numpy's population std,
ddof=0, averaged over seeds), and ``psnr_sd_seeds`` the standard deviation over seeds
(ddof=1) of the per-seed means; ``n`` is the number of test images, ``n_seeds`` the seeds.

Uncertainty of a paired difference (:func:`bootstrap_ci`) is a hierarchical bootstrap: resample
the seeds with replacement, then the test slices with replacement within each drawn seed,
and take the mean; the 95% interval is the 2.5th-97.5th percentile of 4000 such means. It
accounts for both sources of variation (training randomness across seeds, image-to-image
variation across slices). A claim "holds" only if its interval excludes zero in the claimed
direction, "does not hold" if it excludes zero in the other direction, and is "within noise"
otherwise (:func:`claim_table`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..utils import atomic_write_text

__all__ = [
    "COLUMNS",
    "KEYS",
    "StudyResult",
    "summarize_records",
    "paired_differences",
    "write_results",
    "read_results",
    "method_name",
    "table_id",
    "bootstrap_ci",
    "claim_table",
    "verdict",
    "BOOTSTRAP_RESAMPLES",
]

#: resamples of the hierarchical bootstrap (seeded: the intervals are reproducible)
BOOTSTRAP_RESAMPLES = 4000

COLUMNS = ["table", "test_domain", "coils", "R", "method", "stage", "psnr_mean", "psnr_std", "ssim_mean", "ssim_std"]
KEYS = ["table", "test_domain", "coils", "R", "method", "stage", "n_train", "n_tune"]
_DOMAIN_LABEL = {"natural": "Natural", "t1": "T1", "t2": "T2", "t1_synth": "T1synth", "pd": "PD"}


def method_name(domain: str) -> str:
    """Method label of a network pretrained on ``domain`` ("t1" -> "T1-trained")."""
    if domain not in _DOMAIN_LABEL:
        raise ValueError(f"domain: expected one of {sorted(_DOMAIN_LABEL)}, got {domain!r}")
    return f"{_DOMAIN_LABEL[domain]}-trained"


def domain_label(domain: str) -> str:
    """Test-domain label as in the paper's tables ("t1" -> "T1")."""
    return _DOMAIN_LABEL[domain]


def table_id(target: str, coils: str = "single", sweep: bool = False) -> str:
    """The paper's table id for a test domain: T1 / S2 (single-coil), T2 (multi-coil), F4/SF4/F6 (sweeps)."""
    if coils == "multi":
        return "F6" if sweep else "T2"
    if target in ("t1", "t1_synth"):
        return "F4" if sweep else "T1"
    if target == "t2":
        return "SF4" if sweep else "S2"
    return f"{'F' if sweep else 'T'}-{_DOMAIN_LABEL.get(target, target)}"


@dataclass
class StudyResult:
    """What a study returns.

    Attributes:
        table: long-format summary (:data:`COLUMNS` + ``n``, ``n_train``, ``n_tune``).
        per_image: one row per test image and method (``image`` index, ``subject``, ``psnr``, ``ssim``).
        paired: paired per-image PSNR/SSIM differences between methods (mean and std).
        extra: study-specific results (convergence table, timings, seeds, ...), JSON-serializable.
        paths: files written (name -> path); empty when ``output_dir`` was None.
        config: the config as a dict.
        frames: further tables written as ``<study>_<name>.csv``: ``claims`` (headline claims with
            intervals and verdicts), ``training`` (learning rate, best and stop epoch of every
            network), ``curves`` (validation PSNR per epoch), ``selections`` (the validation
            grids of learning rates and CS / L1-SPIRiT parameters).
    """

    table: pd.DataFrame
    per_image: pd.DataFrame
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    extra: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    frames: dict = field(default_factory=dict)

    @property
    def claims(self) -> pd.DataFrame:
        return self.frames.get("claims", pd.DataFrame())

    @property
    def training(self) -> pd.DataFrame:
        return self.frames.get("training", pd.DataFrame())

    @property
    def curves(self) -> pd.DataFrame:
        return self.frames.get("curves", pd.DataFrame())


def summarize_records(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of PSNR/SSIM per (table, test_domain, coils, R, method, stage, n_train, n_tune).

    Args:
        per_image: DataFrame with the :data:`KEYS` columns and ``psnr``, ``ssim`` (and
            optionally ``seed``).

    Returns:
        Long-format DataFrame: :data:`COLUMNS` + ``n``, ``n_train``, ``n_tune``, and with a
        ``seed`` column also ``psnr_sd_seeds``, ``ssim_sd_seeds`` (sd over seeds of the
        per-seed means, ddof=1; NaN with one seed) and ``n_seeds``.
    """
    missing = [c for c in KEYS + ["psnr", "ssim"] if c not in per_image.columns]
    if missing:
        raise ValueError(f"per_image: missing column(s) {missing}; has {list(per_image.columns)}")
    if per_image[["psnr", "ssim"]].isna().any().any():
        raise ValueError("per_image: NaN in psnr/ssim")
    if "seed" not in per_image.columns:
        g = per_image.groupby(KEYS, sort=False, dropna=False)
        out = g.agg(
            psnr_mean=("psnr", "mean"),
            psnr_std=("psnr", lambda x: float(np.std(x))),
            ssim_mean=("ssim", "mean"),
            ssim_std=("ssim", lambda x: float(np.std(x))),
            n=("psnr", "size"),
        ).reset_index()
        return out[COLUMNS + ["n", "n_train", "n_tune"]]
    # per seed first, then across seeds
    per_seed = per_image.groupby(KEYS + ["seed"], sort=False, dropna=False).agg(
        psnr_mean=("psnr", "mean"), psnr_std=("psnr", lambda x: float(np.std(x))),
        ssim_mean=("ssim", "mean"), ssim_std=("ssim", lambda x: float(np.std(x))), n=("psnr", "size")).reset_index()
    g = per_seed.groupby(KEYS, sort=False, dropna=False)
    out = g.agg(
        psnr_mean=("psnr_mean", "mean"),
        psnr_std=("psnr_std", "mean"),
        ssim_mean=("ssim_mean", "mean"),
        ssim_std=("ssim_std", "mean"),
        n=("n", "max"),
        psnr_sd_seeds=("psnr_mean", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")),
        ssim_sd_seeds=("ssim_mean", lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else float("nan")),
        n_seeds=("seed", "nunique"),
    ).reset_index()
    return out[COLUMNS + ["n", "n_train", "n_tune", "psnr_sd_seeds", "ssim_sd_seeds", "n_seeds"]]


def bootstrap_ci(diff: pd.DataFrame, value: str = "d", n_boot: int = BOOTSTRAP_RESAMPLES, level: float = 0.95,
                 rng_seed: int = 0) -> tuple[float, float, float]:
    """Mean and hierarchical-bootstrap interval of a paired difference over seeds and slices.

    Each resample draws the seeds with replacement, then, within each drawn seed, its test
    slices with replacement, and averages everything drawn (seeds weighted equally). With one
    seed this is the ordinary bootstrap over slices (it then ignores training randomness).

    Args:
        diff: one row per (seed, image) with columns ``seed`` (optional) and ``value``.
        value: the column holding the paired difference.
        n_boot: number of resamples.
        level: coverage of the percentile interval.
        rng_seed: seed of the resampling (the interval is reproducible).

    Returns:
        ``(mean, low, high)``: the mean over seeds of the per-seed mean, and the interval.
    """
    if value not in diff.columns:
        raise ValueError(f"diff: expected a column {value!r}, has {list(diff.columns)}")
    if not (0 < level < 1):
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    d = diff.dropna(subset=[value])
    if d.empty:
        return float("nan"), float("nan"), float("nan")
    groups = [g[value].to_numpy(float) for _, g in d.groupby("seed", sort=True)] if "seed" in d.columns \
        else [d[value].to_numpy(float)]
    mean = float(np.mean([g.mean() for g in groups]))
    rng = np.random.default_rng(rng_seed)
    S = len(groups)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        pick = rng.integers(0, S, S)
        boots[b] = np.mean([groups[k][rng.integers(0, len(groups[k]), len(groups[k]))].mean() for k in pick])
    a = (1 - level) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return mean, float(lo), float(hi)


def verdict(low: float, high: float, direction: int = 1) -> str:
    """"holds" if the interval ``[low, high]`` excludes zero on the side of ``direction``
    (+1: the difference is claimed positive, -1: negative), "does not hold" if it excludes zero
    on the other side, "within noise" if it contains zero."""
    if not (low == low and high == high):
        return "not computed"
    if direction not in (1, -1):
        raise ValueError(f"direction: expected +1 or -1, got {direction!r}")
    lo, hi = (low, high) if direction == 1 else (-high, -low)
    if lo > 0:
        return "holds"
    if hi < 0:
        return "does not hold"
    return "within noise"


def _select(per_image: pd.DataFrame, sel: dict) -> pd.DataFrame:
    m = pd.Series(True, index=per_image.index)
    for k, v in sel.items():
        m &= per_image[k].isin(v) if isinstance(v, (list, tuple, set)) else (per_image[k] == v)
    return per_image[m]


def _term(per_image: pd.DataFrame, sel: dict) -> pd.Series:
    """PSNR of the rows ``sel`` per (seed, R, image); several matching rows (e.g. two sources)
    are averaged per image."""
    rows = _select(per_image, sel)
    if rows.empty:
        raise ValueError(f"claim: no per-image rows match {sel}")
    keys = (["seed"] if "seed" in rows.columns else []) + ["R", "image"]
    return rows.groupby(keys)["psnr"].mean()


def claim_table(per_image: pd.DataFrame, claims: list[dict], n_boot: int = BOOTSTRAP_RESAMPLES) -> pd.DataFrame:
    """Evaluate claims of the form "PSNR(A) - PSNR(B) > 0" (or a difference of such differences)
    on paired per-image results, with a hierarchical bootstrap interval and a verdict.

    Args:
        per_image: per-image metrics (with ``seed`` for several seeds).
        claims: dicts with ``id``, ``claim`` (the sentence), ``a`` and ``b`` (row selections such
            as ``{"method": "CS", "stage": "-"}``; a list of dicts is summed with ``signs``),
            optional ``R`` (the R values to average over; default all), ``direction`` (+1/-1),
            and ``paper`` (the same quantity on the paper's table, for the same R, or None).

    Returns:
        DataFrame: id, claim, R, estimate, ci_low, ci_high, per-seed estimates, n_seeds, n_images,
        direction, verdict, paper.
    """
    rows = []
    for c in claims:
        per = per_image if c.get("R") is None else per_image[per_image["R"].isin(c["R"])]
        terms = c.get("terms") or [(1, c["a"]), (-1, c["b"])]
        d = None
        for sign, sel in terms:
            t = _term(per, sel) * sign
            d = t if d is None else d.add(t, fill_value=None)
        d = d.dropna()
        keys = ["seed", "image"] if "seed" in d.index.names else ["image"]
        # average over R per (seed, image): one paired difference per slice and seed
        per_slice = d.groupby(level=keys).mean().rename("d").reset_index()
        mean, lo, hi = bootstrap_ci(per_slice, "d", n_boot=n_boot)
        seeds = per_slice.groupby("seed")["d"].mean().round(3).tolist() if "seed" in per_slice.columns else [round(mean, 3)]
        direction = int(c.get("direction", 1))
        Rs = sorted(set(int(r) for r in d.index.get_level_values("R")))
        rows.append(dict(id=c["id"], claim=c["claim"], R=" ".join(map(str, Rs)), estimate=mean, ci_low=lo, ci_high=hi,
                         per_seed=json.dumps(seeds), n_seeds=len(seeds), n_images=int(per_slice["image"].nunique()),
                         direction=direction, verdict=verdict(lo, hi, direction), paper=c.get("paper")))
    return pd.DataFrame(rows, columns=["id", "claim", "R", "estimate", "ci_low", "ci_high", "per_seed", "n_seeds",
                                       "n_images", "direction", "verdict", "paper"])


def paired_differences(per_image: pd.DataFrame, reference: tuple[str, str] | None = None,
                       n_boot: int = 1000) -> pd.DataFrame:
    """Per-image paired differences of every method against a reference method.

    For each (table, R) group, every (method, stage, n_train, n_tune) row is paired with the
    reference on the same test images (same ``image`` index, same mask, same seed), and the mean
    and std of ``psnr - psnr_ref`` and ``ssim - ssim_ref`` are reported, with the hierarchical
    bootstrap interval of the PSNR difference over seeds and slices (:func:`bootstrap_ci`).

    Args:
        per_image: per-image metrics (see :func:`summarize_records`), with an ``image`` column
            (and ``seed`` for several seeds).
        reference: (method, stage) of the reference; None = the in-domain network tuned if present,
            else raw (e.g. ("T1-trained", "tuned") for test domain T1).
        n_boot: bootstrap resamples for the interval.

    Returns:
        DataFrame: table, R, method, stage, n_train, n_tune, reference, dpsnr_mean, dpsnr_std,
        dpsnr_ci_low, dpsnr_ci_high, dssim_mean, dssim_std, n, n_seeds.
    """
    has_seed = "seed" in per_image.columns
    idx = ["seed", "image"] if has_seed else ["image"]
    rows = []
    for (table, R), grp in per_image.groupby(["table", "R"], sort=False):
        test_domain = grp["test_domain"].iloc[0]
        if reference is None:
            ref_method = f"{test_domain}-trained"
            cand = grp[grp["method"] == ref_method]
            if cand.empty:
                continue
            stages = set(cand["stage"])
            ref_stage = "tuned" if "tuned" in stages else ("raw" if "raw" in stages else sorted(stages)[0])
            ref = cand[cand["stage"] == ref_stage]
        else:
            ref_method, ref_stage = reference
            ref = grp[(grp["method"] == ref_method) & (grp["stage"] == ref_stage)]
            if ref.empty:
                continue
        # one reference run per image: the largest n_tune / n_train
        ref = ref.sort_values(["n_train", "n_tune"]).groupby(idx).tail(1)
        ref = ref.set_index(idx)[["psnr", "ssim"]]
        for key, sub in grp.groupby(["method", "stage", "n_train", "n_tune"], sort=False):
            m = sub.set_index(idx)[["psnr", "ssim"]].merge(ref, left_index=True, right_index=True,
                                                           suffixes=("", "_ref"), how="inner")
            if m.empty:
                continue
            dp = (m["psnr"] - m["psnr_ref"])
            ds = (m["ssim"] - m["ssim_ref"]).to_numpy()
            mean, lo, hi = bootstrap_ci(dp.rename("d").reset_index(), "d", n_boot=n_boot)
            rows.append(dict(table=table, R=R, method=key[0], stage=key[1], n_train=key[2], n_tune=key[3],
                             reference=f"{ref_method} {ref_stage}", dpsnr_mean=float(dp.mean()),
                             dpsnr_std=float(dp.to_numpy().std()), dpsnr_ci_low=lo, dpsnr_ci_high=hi,
                             dssim_mean=float(ds.mean()), dssim_std=float(ds.std()),
                             n=int(m.reset_index()["image"].nunique()),
                             n_seeds=int(m.reset_index()["seed"].nunique()) if has_seed else 1))
    return pd.DataFrame(rows, columns=["table", "R", "method", "stage", "n_train", "n_tune", "reference",
                                       "dpsnr_mean", "dpsnr_std", "dpsnr_ci_low", "dpsnr_ci_high", "dssim_mean",
                                       "dssim_std", "n", "n_seeds"])


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        v = float(x)
        return None if v != v else v
    if isinstance(x, float) and x != x:
        return None
    if isinstance(x, pd.DataFrame):
        return _jsonable(x.to_dict(orient="records"))
    if isinstance(x, Path):
        return str(x)
    return x


def write_results(result: StudyResult, output_dir: str | Path, name: str) -> dict[str, str]:
    """Write a study's results atomically under ``output_dir``.

    Files: ``<name>.csv`` (long format), ``<name>_per_image.csv``, ``<name>_paired.csv`` and
    ``<name>.json`` (table, paired differences, extra results and the config).

    Returns:
        Dict of written paths (also stored in ``result.paths``).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / f"{name}.csv",
        "per_image": out / f"{name}_per_image.csv",
        "paired": out / f"{name}_paired.csv",
        "json": out / f"{name}.json",
    }
    atomic_write_text(paths["csv"], result.table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["per_image"], result.per_image.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(paths["paired"], result.paired.to_csv(index=False, float_format="%.4f"))
    for name_, df in result.frames.items():  # claims, training (stop epochs, lr), curves, selections
        paths[name_] = out / f"{name}_{name_}.csv"
        atomic_write_text(paths[name_], df.to_csv(index=False, float_format="%.4f"))
    payload = {"table": result.table, "paired": result.paired, "extra": result.extra, "config": result.config}
    if "claims" in result.frames:
        payload["claims"] = result.frames["claims"]
    atomic_write_text(paths["json"], json.dumps(_jsonable(payload), indent=1))
    result.paths.update({k: str(v) for k, v in paths.items()})
    return {k: str(v) for k, v in paths.items()}


def read_results(output_dir: str | Path, name: str) -> StudyResult:
    """Read what :func:`write_results` wrote (raises ``FileNotFoundError`` naming the file)."""
    out = Path(output_dir)
    csv = out / f"{name}.csv"
    if not csv.exists():
        raise FileNotFoundError(f"{csv} not found: run the study first (mrtl reproduce --study ...)")
    table = pd.read_csv(csv)
    per = out / f"{name}_per_image.csv"
    paired = out / f"{name}_paired.csv"
    js = out / f"{name}.json"
    payload = json.loads(js.read_text()) if js.exists() else {}
    frames = {}
    for fname in ("claims", "training", "curves", "selections"):
        f = out / f"{name}_{fname}.csv"
        if f.exists() and f.stat().st_size > 1:
            frames[fname] = pd.read_csv(f)
    return StudyResult(
        table=table,
        per_image=pd.read_csv(per) if per.exists() else pd.DataFrame(),
        paired=pd.read_csv(paired) if paired.exists() and paired.stat().st_size > 1 else pd.DataFrame(),
        extra=payload.get("extra", {}),
        config=payload.get("config", {}),
        paths={"csv": str(csv)},
        frames=frames,
    )


def seed_table(table: pd.DataFrame, digits: int = 2) -> pd.DataFrame:
    """The long table with PSNR/SSIM as "mean ± sd over seeds" strings (one seed: the mean only).

    Args:
        table: a study's long table (:func:`summarize_records`).
        digits: decimals of the PSNR (SSIM gets one more).
    """
    def fmt(m, s, d):
        return f"{m:.{d}f}" if not (s == s) else f"{m:.{d}f} ± {s:.{d}f}"

    out = table[["table", "R", "method", "stage", "n_train", "n_tune", "n"]].copy()
    sd_p = table["psnr_sd_seeds"] if "psnr_sd_seeds" in table.columns else pd.Series(float("nan"), index=table.index)
    sd_s = table["ssim_sd_seeds"] if "ssim_sd_seeds" in table.columns else pd.Series(float("nan"), index=table.index)
    out["PSNR (dB)"] = [fmt(m, s, digits) for m, s in zip(table["psnr_mean"], sd_p)]
    out["SSIM"] = [fmt(m, s, digits + 1) for m, s in zip(table["ssim_mean"], sd_s)]
    out["seeds"] = table["n_seeds"] if "n_seeds" in table.columns else 1
    return out


def stop_epochs(training: pd.DataFrame) -> pd.DataFrame:
    """Per network and R (at the learning rate chosen on validation): the learning rate, the
    maximum budget, and the best (kept) and stop epochs of each seed ("best/stop", seeds in order).

    For sequential pretraining the epochs are per subnetwork, listed stage by stage.
    """
    if training is None or len(training) == 0:
        return pd.DataFrame()
    t = training[training["chosen"].astype(bool)].copy()
    rows = []
    for (net, R), g in t.groupby(["network", "R"], sort=False):
        g = g.sort_values(["seed", "stage"])
        per_seed = []
        for seed, gs in g.groupby("seed", sort=True):
            per_seed.append(" ".join(f"{int(b)}/{int(s)}" for b, s in zip(gs["best_epoch"], gs["stop_epoch"])))
        rows.append({"network": net, "R": int(R), "kind": g["kind"].iloc[0],
                     "lr": " ".join(f"{x:g}" for x in g.groupby("seed")["lr"].first()),
                     "max epochs": int(g["max_epochs"].iloc[0]), "patience": g["patience"].iloc[0],
                     "best/stop epoch per seed": "; ".join(per_seed)})
    return pd.DataFrame(rows)
