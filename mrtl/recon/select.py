"""Parameter selection by maximum validation PSNR, as the paper did for CS and L1-SPIRiT."""

from __future__ import annotations

import itertools
from typing import Callable

import torch

from .._validate import check_tensor
from ..metrics import psnr

__all__ = ["DEFAULT_GRIDS", "select_parameters"]

#: Documented default grids. ``"cs"``: lambda around the paper's 1e-3 and the paper's 80/120
#: iterations; ``"spirit"``: lambda and the paper's per-R iteration counts.
DEFAULT_GRIDS = {
    "cs": {"lam": [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], "n_iter": [40, 80, 120]},
    "spirit": {"lam": [1e-4, 3e-4, 1e-3, 3e-3], "n_iter": [20, 30, 45, 65, 80]},
}


def _psnr(recon: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return psnr(recon, ref=ref)


def select_parameters(fn: Callable, kspace, mask, ref, grid: dict | None = None,
                      reject: tuple = (FloatingPointError,), **kwargs):
    """Grid search for the parameters of a reconstruction that maximise the mean PSNR.

    Args:
        fn: a reconstruction called as ``fn(kspace, mask, **params, **kwargs)`` that returns a
            tensor or an object with an ``image`` attribute (``CSResult``, ``SpiritResult``).
        kspace, mask: validation data (batched as ``fn`` expects).
        ref: ``(B, H, W)`` reference images (after mrtl's normalisation).
        grid: ``{name: [values, ...]}``; every combination is tried. None uses
            ``DEFAULT_GRIDS["spirit"]`` for :func:`l1_spirit_pocs` and ``DEFAULT_GRIDS["cs"]``
            otherwise.
        reject: exception types that reject a combination instead of stopping the search: a
            setting whose iteration diverges (:class:`mrtl.recon.spirit.SpiritDivergenceError` is a
            ``FloatingPointError``, e.g. L1-SPIRiT without clipping and a kernel too large for
            the calibration square) is recorded with ``psnr_mean`` NaN and its reason, and is
            never chosen. ``()`` lets every exception through.
        **kwargs: fixed arguments passed to ``fn``.

    Returns:
        ``(best, table)``: the best parameter dict and a ``pandas.DataFrame`` with one row per
        combination (the parameters, ``psnr_mean``, ``psnr_std``, ``rejected``: the reason, or
        ``""``), sorted by decreasing PSNR, rejected combinations last.

    Raises:
        RuntimeError: every combination was rejected (the message gives the last reason).
    """
    import pandas as pd

    if not callable(fn):
        raise TypeError(f"fn: expected a callable reconstruction, got {type(fn).__name__}")
    ref = check_tensor(ref, "ref", min_ndim=2)
    if grid is None:
        grid = DEFAULT_GRIDS["spirit" if getattr(fn, "__name__", "") == "l1_spirit_pocs" else "cs"]
    if not isinstance(grid, dict) or not grid:
        raise ValueError(f"grid: expected a non-empty dict of parameter lists, got {grid!r}")
    for k, v in grid.items():
        if not isinstance(v, (list, tuple)) or len(v) == 0:
            raise ValueError(f"grid: the values for {k!r} must be a non-empty list, got {v!r}")
    if not (isinstance(reject, tuple) and all(isinstance(e, type) and issubclass(e, BaseException) for e in reject)):
        raise TypeError(f"reject: expected a tuple of exception types, got {reject!r}")
    names = list(grid)
    rows = []
    for values in itertools.product(*(grid[n] for n in names)):
        params = dict(zip(names, values))
        try:
            out = fn(kspace, mask, **params, **kwargs)
        except reject as e:  # e.g. a diverging iteration: this setting is rejected, the search goes on
            rows.append({**params, "psnr_mean": float("nan"), "psnr_std": float("nan"),
                         "rejected": f"{type(e).__name__}: {e}"})
            continue
        img = getattr(out, "image", out)
        p = _psnr(img.reshape(ref.shape).to(ref.device), ref).double().reshape(-1)
        rows.append({**params, "psnr_mean": float(p.mean()), "psnr_std": float(p.std()) if p.numel() > 1 else 0.0,
                     "rejected": ""})
    if all(r["rejected"] for r in rows):
        raise RuntimeError(f"select_parameters: every one of the {len(rows)} combinations of {grid} was rejected; "
                           f"the last: {rows[-1]['rejected']}")
    table = pd.DataFrame(rows).sort_values("psnr_mean", ascending=False, kind="stable", na_position="last")
    table = table.reset_index(drop=True)
    best = {n: table.loc[0, n] for n in names}
    best = {n: (type(grid[n][0])(v) if isinstance(grid[n][0], (int, float)) else v) for n, v in best.items()}
    return best, table
