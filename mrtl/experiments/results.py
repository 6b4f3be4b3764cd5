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

Standard deviations are across test images (numpy's population std, ddof=0).
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
]

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
        extra: study-specific results (convergence table, timings, ...), JSON-serializable.
        paths: files written (name -> path); empty when ``output_dir`` was None.
        config: the config as a dict.
    """

    table: pd.DataFrame
    per_image: pd.DataFrame
    paired: pd.DataFrame = field(default_factory=pd.DataFrame)
    extra: dict = field(default_factory=dict)
    paths: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def summarize_records(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of PSNR/SSIM per (table, test_domain, coils, R, method, stage, n_train, n_tune).

    Args:
        per_image: DataFrame with the :data:`KEYS` columns and ``psnr``, ``ssim``.

    Returns:
        Long-format DataFrame: :data:`COLUMNS` + ``n``, ``n_train``, ``n_tune``.
    """
    missing = [c for c in KEYS + ["psnr", "ssim"] if c not in per_image.columns]
    if missing:
        raise ValueError(f"per_image: missing column(s) {missing}; has {list(per_image.columns)}")
    if per_image[["psnr", "ssim"]].isna().any().any():
        raise ValueError("per_image: NaN in psnr/ssim")
    g = per_image.groupby(KEYS, sort=False, dropna=False)
    out = g.agg(
        psnr_mean=("psnr", "mean"),
        psnr_std=("psnr", lambda x: float(np.std(x))),
        ssim_mean=("ssim", "mean"),
        ssim_std=("ssim", lambda x: float(np.std(x))),
        n=("psnr", "size"),
    ).reset_index()
    return out[COLUMNS + ["n", "n_train", "n_tune"]]


def paired_differences(per_image: pd.DataFrame, reference: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per-image paired differences of every method against a reference method.

    For each (table, R) group, every (method, stage, n_train, n_tune) row is paired with the
    reference on the same test images (same ``image`` index, same mask), and the mean and std
    of ``psnr - psnr_ref`` and ``ssim - ssim_ref`` are reported. Paired differences are far
    more stable than the across-image std (DESIGN.md: 0.1-0.35 dB per slice).

    Args:
        per_image: per-image metrics (see :func:`summarize_records`), with an ``image`` column.
        reference: (method, stage) of the reference; None = the in-domain network tuned if present,
            else raw (e.g. ("T1-trained", "tuned") for test domain T1).

    Returns:
        DataFrame: table, R, method, stage, n_train, n_tune, reference, dpsnr_mean, dpsnr_std,
        dssim_mean, dssim_std, n.
    """
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
            # one reference run per image: the largest n_tune / n_train
            ref = ref.sort_values(["n_train", "n_tune"]).groupby("image").tail(1)
        else:
            ref_method, ref_stage = reference
            ref = grp[(grp["method"] == ref_method) & (grp["stage"] == ref_stage)]
            if ref.empty:
                continue
            ref = ref.sort_values(["n_train", "n_tune"]).groupby("image").tail(1)
        ref = ref.set_index("image")[["psnr", "ssim"]]
        for key, sub in grp.groupby(["method", "stage", "n_train", "n_tune"], sort=False):
            m = sub.set_index("image")[["psnr", "ssim"]].merge(ref, left_index=True, right_index=True,
                                                                suffixes=("", "_ref"), how="inner")
            if m.empty:
                continue
            dp = (m["psnr"] - m["psnr_ref"]).to_numpy()
            ds = (m["ssim"] - m["ssim_ref"]).to_numpy()
            rows.append(dict(table=table, R=R, method=key[0], stage=key[1], n_train=key[2], n_tune=key[3],
                             reference=f"{ref_method} {ref_stage}", dpsnr_mean=float(dp.mean()),
                             dpsnr_std=float(dp.std()), dssim_mean=float(ds.mean()), dssim_std=float(ds.std()),
                             n=int(len(dp))))
    return pd.DataFrame(rows, columns=["table", "R", "method", "stage", "n_train", "n_tune", "reference",
                                       "dpsnr_mean", "dpsnr_std", "dssim_mean", "dssim_std", "n"])


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
    payload = {"table": result.table, "paired": result.paired, "extra": result.extra, "config": result.config}
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
    return StudyResult(
        table=table,
        per_image=pd.read_csv(per) if per.exists() else pd.DataFrame(),
        paired=pd.read_csv(paired) if paired.exists() and paired.stat().st_size > 1 else pd.DataFrame(),
        extra=payload.get("extra", {}),
        config=payload.get("config", {}),
        paths={"csv": str(csv)},
    )
