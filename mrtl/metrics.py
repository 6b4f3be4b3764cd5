"""Image-quality metrics (PSNR, SSIM, NRMSE) and mean ± std tables, batched in torch.

The paper (end of Methods; Tables 1-2) reports SSIM and PSNR between each
reconstruction and the fully sampled reference (for multi-coil data, the coil-combined image
using ESPIRiT maps), as mean ± standard deviation across test images. One convention is used
everywhere:

- metrics are computed on **magnitude** images: complex inputs are replaced by ``|x|``;
- the **data range** of image ``i`` is ``max(|ref_i|) - min(|ref_i|)``, taken from the
  reference only (never from the reconstruction), unless ``data_range`` is given;
- **SSIM** follows Wang et al. (2004): Gaussian window with sigma 1.5 (radius
  ``int(3.5 * 1.5 + 0.5) = 5``, an 11 x 11 window normalized like ``scipy.ndimage``), K1 = 0.01,
  K2 = 0.03, population (not sample) covariances, and the mean of the SSIM map over the
  pixels whose window lies inside the image (a border of 5 pixels is excluded). This equals
  ``skimage.metrics.structural_similarity(ref, recon, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=...)``;
- **PSNR** is ``10 log10(data_range**2 / MSE)`` = ``skimage.metrics.peak_signal_noise_ratio``
  (infinite when the images are equal);
- **NRMSE** is ``||recon - ref|| / ||ref||`` =
  ``skimage.metrics.normalized_root_mse(ref, recon)`` ("euclidean" normalization).

The reference is keyword-only everywhere: ``psnr(recon, ref=reference)`` (scikit-image's
positional order, ``(image_true, image_test)``, is the reverse of mrtl's former one, so a swap
cannot pass silently). Inputs are ``(B, H, W)``, ``(B, 1, H, W)`` or a single ``(H, W)`` image (torch tensors or numpy
arrays); results are float64 tensors of shape ``(B,)`` (0-dimensional for a single image) on
the input's device. Computation is in float64.

Tables: :func:`summarize` groups per-image records and reports ``<metric>_mean``,
``<metric>_std`` (sample standard deviation, ``ddof=1``: the spread across test images) and
``n``; :func:`format_table` renders them as a markdown table with "mean ± std" cells;
:func:`paired_difference` gives the mean and std of per-image differences between two methods
evaluated on the same images (more informative than comparing two means: the image-to-image
spread cancels in the difference).
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Iterable, NamedTuple, Sequence

import numpy as np
import torch

from ._validate import _describe, as_tensor, check_finite

__all__ = [
    "SSIM_SIGMA",
    "SSIM_K1",
    "SSIM_K2",
    "data_range_of",
    "psnr",
    "ssim",
    "nrmse",
    "summarize",
    "format_table",
    "paired_difference",
    "PairedDifference",
]

SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
_TRUNCATE = 3.5  # skimage's value with gaussian_weights=True
_RADIUS = int(_TRUNCATE * SSIM_SIGMA + 0.5)  # = 5, as scipy.ndimage computes it
WIN_SIZE = 2 * _RADIUS + 1  # = 11


# --------------------------------------------------------------------------------------------
# input handling


def _as_images(x, name: str) -> torch.Tensor:
    """Validate one input and return it as ``(B, H, W)`` float64 magnitudes."""
    x = as_tensor(x, name)
    if x.dtype == torch.bool or not (x.is_floating_point() or x.is_complex() or _is_int(x)):
        raise TypeError(f"{name}: expected a real or complex numeric tensor, got {_describe(x)}")
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(
                f"{name}: a 4-D input must be (B, 1, H, W) (one channel; combine coils first), "
                f"got {_describe(x)}"
            )
        x = x[:, 0]
    elif x.ndim == 2:
        x = x[None]
    elif x.ndim != 3:
        raise ValueError(f"{name}: expected (H, W), (B, H, W) or (B, 1, H, W), got {_describe(x)}")
    check_finite(x, name)
    x = x.abs() if x.is_complex() else x
    return x.to(torch.float64)


def _is_int(x: torch.Tensor) -> bool:
    return x.dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _prepare(recon, ref) -> tuple[torch.Tensor, torch.Tensor, bool]:
    single = getattr(ref, "ndim", None) == 2
    recon_t = as_tensor(recon, "recon")
    ref_t = as_tensor(ref, "ref")
    if tuple(recon_t.shape) != tuple(ref_t.shape):
        raise ValueError(
            f"recon: shape {tuple(recon_t.shape)} differs from ref's {tuple(ref_t.shape)}; "
            "expected two arrays of the same shape"
        )
    x = _as_images(recon_t, "recon")
    y = _as_images(ref_t, "ref")
    if x.device != y.device:
        raise ValueError(f"recon: on device {x.device} but ref is on {y.device}; expected the same device")
    return x, y, single


def _keyword_ref(fn: str, args: tuple, ref):
    """The reference must be passed by keyword: ``fn(recon, ref=reference)``.

    scikit-image takes ``(image_true, image_test)``, the reverse of mrtl's former ``(recon, ref)``;
    with both positional a swap gave a silently different PSNR/SSIM (the data range comes from
    the reference), so a second positional argument is an error.
    """
    if args:
        raise TypeError(
            f"{fn}: pass the reference by keyword, {fn}(recon, ref=reference); got {1 + len(args)} positional "
            "arguments (positional order is ambiguous: scikit-image's is (image_true, image_test))"
        )
    if ref is None:
        raise TypeError(f"{fn}: missing the reference: call {fn}(recon, ref=reference)")
    return ref


def _finish(values: torch.Tensor, single: bool) -> torch.Tensor:
    return values[0] if single else values


def data_range_of(ref) -> torch.Tensor:
    """Per-image data range ``max(|ref|) - min(|ref|)``: the convention used by every metric.

    Args:
        ref: reference image(s), ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``, real or complex.

    Returns:
        float64 tensor ``(B,)`` (0-dim for one image).
    """
    single = getattr(ref, "ndim", None) == 2
    y = _as_images(ref, "ref")
    return _finish(_range(y), single)


def _range(y: torch.Tensor) -> torch.Tensor:
    flat = y.reshape(y.shape[0], -1)
    return flat.amax(dim=1) - flat.amin(dim=1)


def _data_range(data_range, y: torch.Tensor) -> torch.Tensor:
    """``(B,)`` float64 data range: from the reference, or validated from the argument."""
    b = y.shape[0]
    if data_range is None:
        dr = _range(y)
        bad = torch.nonzero(dr <= 0).flatten()
        if len(bad):
            raise ValueError(
                f"ref: image {int(bad[0])} is constant, so its data range max - min is 0; "
                "expected a non-constant reference, or pass data_range explicitly"
            )
        return dr
    if isinstance(data_range, numbers.Real) and not isinstance(data_range, bool):
        value = float(data_range)
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"data_range: expected a finite number > 0, got {value}")
        return torch.full((b,), value, dtype=torch.float64, device=y.device)
    if isinstance(data_range, (torch.Tensor, np.ndarray, list, tuple)):
        dr = as_tensor(torch.as_tensor(data_range) if isinstance(data_range, (list, tuple)) else data_range,
                       "data_range")
        if dr.is_complex() or dr.dtype == torch.bool:
            raise TypeError(f"data_range: expected real numbers, got {_describe(dr)}")
        dr = dr.to(device=y.device, dtype=torch.float64).reshape(-1)
        if dr.numel() == 1:
            dr = dr.expand(b)
        if dr.numel() != b:
            raise ValueError(f"data_range: expected a number or {b} values (one per image), got {dr.numel()}")
        if not bool(torch.isfinite(dr).all()) or bool((dr <= 0).any()):
            raise ValueError(f"data_range: expected finite numbers > 0, got {dr.tolist()}")
        return dr
    raise TypeError(f"data_range: expected None, a number > 0 or one number per image, got {_describe(data_range)}")


# --------------------------------------------------------------------------------------------
# metrics


def psnr(recon, *args, ref=None, data_range=None) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per image.

    ``PSNR = 10 log10(data_range**2 / mean((|recon| - |ref|)**2))``, equal to
    ``skimage.metrics.peak_signal_noise_ratio(ref, recon, data_range=...)``; ``inf`` when the
    images are identical.

    Args:
        recon: reconstruction(s) ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; complex -> magnitude.
        ref: fully sampled reference(s), same shape; keyword only (``psnr(recon, ref=reference)``:
            scikit-image's positional order is the reverse, so a second positional argument is a
            ``TypeError``).
        data_range: None (default: ``max - min`` of each reference magnitude), a number, or one
            number per image.

    Returns:
        float64 tensor ``(B,)`` (0-dim for a single image).
    """
    ref = _keyword_ref("psnr", args, ref)
    x, y, single = _prepare(recon, ref)
    return _finish(psnr_magnitudes(x, y, _data_range(data_range, y)), single)


def psnr_magnitudes(x: torch.Tensor, y: torch.Tensor, data_range=None, min_mse: float = 0.0) -> torch.Tensor:
    """The formula of :func:`psnr` on magnitudes already prepared, without input checks.

    For training loops (``mrtl.train`` scores every validation batch with it): a NaN output must
    give a NaN score, which the divergence guard reads, not an error.

    Args:
        x, y: float64 magnitudes ``(B, H, W)`` of the reconstruction and the reference.
        data_range: ``(B,)`` float64, or None for ``max - min`` of each reference.
        min_mse: floor of the mean squared error (0: none, identical images give ``inf``).

    Returns:
        float64 tensor ``(B,)``.
    """
    dr = _range(y) if data_range is None else data_range
    mse = ((x - y) ** 2).mean(dim=(-2, -1))
    if min_mse > 0:
        mse = mse.clamp_min(min_mse)
    return 10 * torch.log10(dr**2 / mse)


def nrmse(recon, *args, ref=None) -> torch.Tensor:
    """Normalized root-mean-square error ``||recon - ref|| / ||ref||`` per image (magnitudes).

    Equal to ``skimage.metrics.normalized_root_mse(ref, recon)`` (euclidean normalization).

    Args:
        recon: reconstruction(s) ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``.
        ref: reference(s), same shape; no image may be all zero; keyword only
            (``nrmse(recon, ref=reference)``).

    Returns:
        float64 tensor ``(B,)`` (0-dim for a single image).
    """
    ref = _keyword_ref("nrmse", args, ref)
    x, y, single = _prepare(recon, ref)
    num = torch.linalg.vector_norm((x - y).reshape(x.shape[0], -1), dim=1)
    den = torch.linalg.vector_norm(y.reshape(y.shape[0], -1), dim=1)
    bad = torch.nonzero(den == 0).flatten()
    if len(bad):
        raise ValueError(f"ref: image {int(bad[0])} is all zero; expected a nonzero reference for NRMSE")
    return _finish(num / den, single)


@functools.lru_cache(maxsize=32)
def _window_matrix(n: int, device: torch.device) -> torch.Tensor:
    """``(n, n - 10)`` matrix G with ``(x @ G)[j] = sum_k g[k] x[j + k]`` (valid filtering)."""
    r = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    g = np.exp(-0.5 * r**2 / SSIM_SIGMA**2)
    g /= g.sum()  # exactly scipy.ndimage's _gaussian_kernel1d (symmetric, so no flip needed)
    m = n - 2 * _RADIUS
    mat = np.zeros((n, m), dtype=np.float64)
    cols = np.arange(m)
    for k in range(WIN_SIZE):
        mat[cols + k, cols] = g[k]
    return torch.from_numpy(mat).to(device)


_BLOCK = 32  # output rows per block of the banded filtering GEMM


@functools.lru_cache(maxsize=32)
def _band(b: int, device: torch.device) -> torch.Tensor:
    """``(b, b + 10)`` block of the valid filtering matrix: ``band[i, i + k] = g[k]``."""
    return _window_matrix(b + 2 * _RADIUS, device).mT.contiguous()


def _filter_valid(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Valid Gaussian filtering of ``(N, h, w)`` along ``dim`` (-2 or -1): length ``n -> n - 10``.

    The banded filtering matrix is applied block by block: ``_BLOCK`` outputs from
    ``_BLOCK + 10`` inputs per matrix product (strided views, no copies of the input), so each
    output costs about 42 multiply-adds instead of ``n`` with the dense matrix; the same sums.
    """
    n = x.shape[dim]
    m = n - 2 * _RADIUS
    outs = []
    for start in range(0, m, _BLOCK):
        b = min(_BLOCK, m - start)
        band = _band(b, x.device)
        seg = x.narrow(dim, start, b + 2 * _RADIUS)
        outs.append(band @ seg if dim == -2 else seg @ band.mT)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=dim)


def ssim(recon, *args, ref=None, data_range=None) -> torch.Tensor:
    """Structural similarity index (Wang et al. 2004) per image, on magnitudes.

    Gaussian window sigma 1.5 (11 x 11), K1 = 0.01, K2 = 0.03, population covariances, mean of
    the SSIM map over the pixels at least 5 from the border. Equal to
    ``skimage.metrics.structural_similarity(ref, recon, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=...)``. The separable Gaussian filtering (valid region
    only) is a blocked banded matrix product along W, then along H; fast on CPU and GPU.

    Args:
        recon: reconstruction(s) ``(H, W)``, ``(B, H, W)`` or ``(B, 1, H, W)``; complex -> magnitude.
        ref: fully sampled reference(s), same shape; at least 11 x 11; keyword only
            (``ssim(recon, ref=reference)``).
        data_range: None (default: ``max - min`` of each reference magnitude), a number, or one
            number per image.

    Returns:
        float64 tensor ``(B,)`` (0-dim for a single image), at most 1.
    """
    ref = _keyword_ref("ssim", args, ref)
    x, y, single = _prepare(recon, ref)
    h, w = x.shape[-2:]
    if h < WIN_SIZE or w < WIN_SIZE:
        raise ValueError(
            f"ref: SSIM needs images of at least {WIN_SIZE} x {WIN_SIZE} (its Gaussian window), got {(h, w)}"
        )
    dr = _data_range(data_range, y)
    b = x.shape[0]
    maps = torch.empty((b, 5, h, w), dtype=x.dtype, device=x.device)
    maps[:, 0] = x
    maps[:, 1] = y
    torch.mul(x, x, out=maps[:, 2])
    torch.mul(y, y, out=maps[:, 3])
    torch.mul(x, y, out=maps[:, 4])
    filt = _filter_valid(maps.view(b * 5, h, w), -1)  # along W: (5B, H, W - 10)
    del maps
    # along H: (B, 5, H - 10, W - 10), the valid (cropped) region
    filt = _filter_valid(filt, -2).view(b, 5, h - 2 * _RADIUS, w - 2 * _RADIUS)
    ux, uy, uxx, uyy, uxy = filt.unbind(dim=1)
    c1 = ((SSIM_K1 * dr) ** 2)[:, None, None]
    c2 = ((SSIM_K2 * dr) ** 2)[:, None, None]
    uxuy = ux * uy
    ux2 = ux.square()
    uy2 = uy.square()
    a1 = (2 * uxuy).add_(c1)  # 2 ux uy + C1
    a2 = uxy.sub(uxuy).mul_(2).add_(c2)  # 2 cov(x, y) + C2 (population covariance)
    b1 = ux2.add(uy2).add_(c1)  # ux^2 + uy^2 + C1
    b2 = uxx.sub(ux2).add_(uyy.sub(uy2)).add_(c2)  # var x + var y + C2
    s = a1.mul_(a2).div_(b1.mul_(b2))
    return _finish(s.mean(dim=(-2, -1)), single)


# --------------------------------------------------------------------------------------------
# tables


def _to_frame(records, name: str = "records"):
    import pandas as pd

    if isinstance(records, pd.DataFrame):
        df = records.copy()
    elif isinstance(records, dict):
        df = pd.DataFrame({k: _column(v) for k, v in records.items()})
    elif isinstance(records, Iterable) and not isinstance(records, (str, bytes)):
        rows = list(records)
        if not all(isinstance(r, dict) for r in rows):
            raise TypeError(f"{name}: expected a DataFrame, a dict of columns or a list of dicts, got a list with "
                            f"{type(next(r for r in rows if not isinstance(r, dict))).__name__} items")
        df = pd.DataFrame([{k: _scalar(v) for k, v in r.items()} for r in rows])
    else:
        raise TypeError(f"{name}: expected a DataFrame, a dict of columns or a list of dicts, got {_describe(records)}")
    if len(df) == 0:
        raise ValueError(f"{name}: expected at least one record, got none")
    return df


def _scalar(v):
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.ndarray) and v.size == 1:
        return v.item()
    return v


def _column(v):
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return v


def summarize(records, by: Sequence[str] | str = ("method",), metrics: Sequence[str] | str = ("psnr", "ssim"),
              ddof: int = 1):
    """Mean ± std of per-image metrics, grouped (e.g. by method, dataset, R).

    Args:
        records: per-image results: a ``pandas.DataFrame``, a list of dicts (one per image, e.g.
            ``{"method": "CS", "R": 4, "psnr": 31.2, "ssim": 0.91}``) or a dict of columns;
            0-dim tensors are converted to numbers.
        by: column name(s) to group by, in order.
        metrics: metric column(s) to summarize.
        ddof: delta degrees of freedom of the std (default 1: the sample standard deviation
            across test images; a group of one image has std NaN).

    Returns:
        ``pandas.DataFrame`` with the ``by`` columns, then ``<m>_mean`` and ``<m>_std`` for each
        metric, then ``n`` (the number of images), one row per group in sorted group order.
    """
    df = _to_frame(records)
    by = [by] if isinstance(by, str) else list(by)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("metrics: expected at least one metric column, got none")
    for col, arg in [(c, "by") for c in by] + [(c, "metrics") for c in metrics]:
        if col not in df.columns:
            raise ValueError(f"{arg}: column {col!r} is not in records (columns: {list(df.columns)})")
    for m in metrics:
        values = df[m].to_numpy(dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError(f"records: column {m!r} contains NaN; expected a value for every image")
    agg = {}
    for m in metrics:
        agg[f"{m}_mean"] = (m, "mean")
        agg[f"{m}_std"] = (m, lambda s, d=ddof: float(np.std(s.to_numpy(dtype=np.float64), ddof=d))
                           if len(s) > d else float("nan"))
    first = metrics[0]
    agg["n"] = (first, "size")
    if by:
        out = df.groupby(by, sort=True, dropna=False).agg(**agg).reset_index()
    else:
        out = df.assign(_all=0).groupby("_all").agg(**agg).reset_index(drop=True)
    out["n"] = out["n"].astype(int)
    return out


_DIGITS = {"psnr": 2, "ssim": 4, "nrmse": 4}


def format_table(df, digits: dict | None = None) -> str:
    """Markdown table of a :func:`summarize` result, with "mean ± std" cells.

    Args:
        df: the DataFrame returned by :func:`summarize`.
        digits: decimals per metric (default PSNR 2, SSIM 4, NRMSE 4, others 3).

    Returns:
        The table as a markdown string (header, separator, one line per group).
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df: expected the pandas.DataFrame returned by summarize(), got {_describe(df)}")
    digits = {**_DIGITS, **(digits or {})}
    metrics = [c[: -len("_mean")] for c in df.columns if c.endswith("_mean") and f"{c[:-5]}_std" in df.columns]
    if not metrics:
        raise ValueError(f"df: expected <metric>_mean and <metric>_std columns, got columns {list(df.columns)}")
    used = {f"{m}_{s}" for m in metrics for s in ("mean", "std")} | {"n"}
    keys = [c for c in df.columns if c not in used]
    header = [str(k) for k in keys] + [m.upper() if m in _DIGITS else m for m in metrics]
    if "n" in df.columns:
        header.append("n")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for _, row in df.iterrows():
        cells = [str(row[k]) for k in keys]
        for m in metrics:
            d = digits.get(m, 3)
            mean, std = row[f"{m}_mean"], row[f"{m}_std"]
            std_s = "–" if pd.isna(std) else f"{std:.{d}f}"
            cells.append(f"{mean:.{d}f} ± {std_s}")
        if "n" in df.columns:
            cells.append(str(int(row["n"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class PairedDifference(NamedTuple):
    """Mean and std of per-image differences ``a - b`` (std with ``ddof``), and their number."""

    mean: float
    std: float
    n: int


def paired_difference(a, b, ddof: int = 1) -> PairedDifference:
    """Mean ± std of the per-image differences ``a_i - b_i`` between two methods.

    Both methods must be evaluated on the same images in the same order (e.g. the PSNR of a
    fine-tuned network and of CS on each test slice). The spread of paired differences is
    much smaller than the spread of either method across images (both methods find the same
slices hard), so this is the
    number to report when comparing methods.

    Args:
        a: per-image values of method A (tensor, array or list), shape ``(n,)``.
        b: per-image values of method B, same shape.
        ddof: delta degrees of freedom of the std (default 1, NaN when ``n == 1``).

    Returns:
        ``PairedDifference(mean, std, n)``.
    """
    ta = _values(a, "a")
    tb = _values(b, "b")
    if ta.shape != tb.shape:
        raise ValueError(f"b: expected {ta.shape[0]} values like a (paired images), got {tb.shape[0]}")
    d = ta - tb
    n = int(d.size)
    std = float(np.std(d, ddof=ddof)) if n > ddof else float("nan")
    return PairedDifference(float(d.mean()), std, n)


def _values(v, name: str) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu().numpy()
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of numbers, got {_describe(v)}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D sequence of per-image values, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN/Inf; expected finite per-image values")
    return arr
