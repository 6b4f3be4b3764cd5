"""Single-coil L1-wavelet compressed sensing (Eq. 2), as in Lustig's SparseMRI.

The objective, per image ``b`` of the batch, is

    f(x) = ||M F x - y||_2^2 + lam_b * sum_i sqrt(|(Psi x)_i|^2 + mu) + tv_b * TV_mu(x)

(Eq. 2 with R(x) = lam ||Psi x||_1 + tv TV(x)), where ``Psi`` is an orthonormal periodised
Daubechies wavelet transform, ``mu`` the smoothing parameter of SparseMRI (``l1Smooth``,
default 1e-15, which makes the smoothed norm differ from the L1 norm by at most
``sqrt(mu)`` per coefficient), and ``TV_mu(x) = sum sqrt(|D_h x|^2 + mu) + sqrt(|D_v x|^2 + mu)``
SparseMRI's (anisotropic) total variation with circular finite differences.

**Lambda scaling.** ``lam`` and ``tv`` are *relative*: the weights used are
``lam_b = lam * s_b`` and ``tv_b = tv * s_b`` with ``s_b = max |A^H y_b|``, the peak of the
zero-filled image. The result is therefore invariant to a global scaling of the data, and
for mrtl's normalisation (99th percentile of the reference magnitude = 1, so
``s_b`` is about 1) ``lam = 1e-3`` is the paper's value. Without ``lam`` the weight follows
:func:`default_cs_lambda` (acceleration and iteration count; chosen on validation slices).
SigPy's ``L1WaveletRecon`` minimises
``1/2 ||Ax - y||^2 + lamda ||Psi x||_1``: the same problem has ``lamda = lam_b / 2``.

Solvers:
- ``method="nlcg"``: SparseMRI's ``fnlCg`` (nonlinear conjugate gradient, Fletcher-Reeves
  update, backtracking line search with alpha = 0.01, beta = 0.6, initial step t0 = 1 that
  adapts). Line-search trial points are cheap: ``A x``, ``A dx``, ``Psi x``, ``Psi dx``
  are kept, so each iteration costs one FFT pair and one wavelet pair. A step that fails the
  Armijo test after 150 halvings is not taken (the direction restarts as ``-grad``), so the
  objective never increases.
- ``method="fista"``: FISTA (Beck & Teboulle 2009) on the non-smoothed objective: the
  gradient step with step 1/2 is exactly the data-consistency projection, followed by
  wavelet soft-thresholding at ``lam_b / 2``. TV is not available with FISTA (its prox has no
  closed form).

Cycle spinning (``random_shift=True``, as BART's ``pics`` does): each iteration draws a
cyclic shift ``s`` of the image before the wavelet transform, so the sparsity penalty
averages over the shift-variance of the decimated wavelet. With NLCG the line search then
works on the current shift's objective, so the history is no longer guaranteed monotone.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._validate import check_acceleration, check_choice, check_float, check_int
from ..linops import SingleCoilFourier
from ..utils import progress as _progress
from ..wavelets import WaveletTransform
from ._common import check_level, finite_or_raise, prepare_kspace_mask, recon_threads, soft_threshold

__all__ = ["CSResult", "cs_l1_wavelet", "objective_l1_wavelet", "default_cs_lambda", "DEFAULT_CS_ITERATIONS"]

_ALPHA = 0.01
_BETA = 0.6
_MAX_LS = 150

#: Default iteration count of :func:`cs_l1_wavelet` (FISTA): in the validation study of
#: :func:`default_cs_lambda`, 200 iterations at their best lam gained 0-0.6 dB over 80 at theirs
#: (the most on MR slices at high R), for 2.5 times the time.
DEFAULT_CS_ITERATIONS = 200

# default_cs_lambda: lam = _LAM_C * (R / 4) ** _LAM_R_EXP * (200 / n) ** _LAM_ITER_EXP
_LAM_C, _LAM_R_EXP, _LAM_ITER_EXP = 2.5e-4, 0.75, 1.5


def default_cs_lambda(R, n_iter: int = DEFAULT_CS_ITERATIONS) -> float:
    """The default relative L1-wavelet weight of :func:`cs_l1_wavelet` (FISTA).

    ``lam = 2.5e-4 * (R / 4) ** 0.75 * (200 / n) ** 1.5`` with ``n = n_iter`` clipped to
    [80, 200] and ``lam`` to [1e-4, 1e-2]. At 80 iterations and R = 4 it is the paper's 1e-3;
    at the default 200 iterations 2.5e-4 (R = 4), 4.2e-4 (R = 8).

    Why it depends on R and on the iteration count: the data are fitted exactly on the sampled
    positions, and the unsampled ones are filled in by the soft-thresholding steps, by at most
    about the threshold per iteration. A small weight gives the least biased image but needs
    many iterations to remove the aliasing, which grows with R; after a fixed number of
    iterations the best weight is therefore larger for higher R and smaller for more
    iterations. It does not need to depend on the image size: the best lam was the same at
    64, 128 and 256 pixels (a size exponent changed the mean loss by about 0.02 dB).

    How it was chosen (``benchmarks/defaults_study.py``, results in ``results/defaults/``):
    noiseless single-coil data as mrtl's studies make them (Poisson-disc masks, zero phase),
    bundled ``t1`` (real), ``t2`` (synthetic) and ``natural`` images at 64, 128 and 256 pixels,
    R = 2, 4, 8, 10 (256: t1 at R = 2, 4, 8), 80 and 200 iterations, lam on a log grid 1e-4..1e-2. The
    constants minimise the mean PSNR loss against each case's best lam on ``train`` slices; on
    the held-out ``val`` slices the default is within 0.42 dB of the best lam of the grid in
    all 23 cases (mean 0.08 dB), where the paper's lam = 1e-3 with 80 iterations was 0.74 dB
    below on average and up to 2.45 dB (``results/defaults/cs_gap_iter200.csv``). With noisy k-space or
    another image class, choose lam on your own validation data
    (:func:`mrtl.recon.select_parameters`); the clip at 200 iterations keeps the weight from
    shrinking towards zero, which only noiseless data would reward.

    Args:
        R: the acceleration (float >= 1, or a tensor of per-image values).
        n_iter: FISTA iterations.

    Returns:
        ``lam`` (float, or a float64 tensor like ``R``).
    """
    n_iter = check_int(n_iter, "n_iter", low=1)
    if isinstance(R, torch.Tensor):
        if not bool(torch.isfinite(R).all()) or bool((R < 1).any()):
            raise ValueError(f"R: expected finite values >= 1, got {R}")
        R = R.to(torch.float64)
    else:
        R = check_acceleration(R, high=None)  # mrtl's one R check; no cap: any mask's achieved R
    n = min(max(float(n_iter), 80.0), 200.0)
    lam = _LAM_C * (R / 4.0) ** _LAM_R_EXP * (200.0 / n) ** _LAM_ITER_EXP
    if isinstance(lam, torch.Tensor):
        return lam.clamp(1e-4, 1e-2)
    return float(min(max(lam, 1e-4), 1e-2))


def _per_image_R(R, m: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B,)`` float64 R of each image: the given ``R`` (a float or ``(B,)``), else measured from its mask."""
    if R is None:
        return m.shape[-2] * m.shape[-1] / m.sum(dim=(-2, -1)).to(torch.float64)
    if isinstance(R, (int, float)) and not isinstance(R, bool):
        return torch.full((batch,), check_acceleration(R, high=None), dtype=torch.float64, device=m.device)
    R = torch.as_tensor(R, dtype=torch.float64).flatten()
    if R.numel() == 1:
        R = R.expand(batch)
    if R.numel() != batch:
        raise ValueError(f"R: expected a float or one value per image ({batch}), got {R.numel()} values")
    if not bool(torch.isfinite(R).all()) or bool((R < 1).any()):
        raise ValueError(f"R: expected finite values >= 1, got {R.tolist()}")
    return R.to(m.device)


class CSResult(NamedTuple):
    """Result of :func:`cs_l1_wavelet`.

    Attributes:
        image: ``(B, H, W)`` (or ``(H, W)`` for unbatched input) complex reconstruction.
        history: ``(B, n_iter)`` float64 objective after each iteration (Eq. 2).
    """

    image: torch.Tensor
    history: torch.Tensor


def _sum_hw(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=(-2, -1), dtype=torch.float64)


def _abs2(x: torch.Tensor) -> torch.Tensor:
    return x.real * x.real + x.imag * x.imag


def _tv_diff(x: torch.Tensor) -> torch.Tensor:
    """Circular forward differences stacked on a new axis -3: ``(..., 2, H, W)``."""
    return torch.stack((torch.roll(x, -1, dims=-2) - x, torch.roll(x, -1, dims=-1) - x), dim=-3)


def _tv_diff_adjoint(d: torch.Tensor) -> torch.Tensor:
    dv, dh = d.unbind(dim=-3)
    return (torch.roll(dv, 1, dims=-2) - dv) + (torch.roll(dh, 1, dims=-1) - dh)


def objective_l1_wavelet(x, kspace, mask, lam_b, wav: WaveletTransform, tv_b=None, mu: float = 0.0):
    """Objective of Eq. 2 for images ``x`` (B, H, W) with absolute weights ``lam_b`` (B,).

    ``wav`` is the (possibly shifted) wavelet operator Psi.

    Returns:
        ``(B,)`` float64.
    """
    r = SingleCoilFourier(mask).forward(x) - kspace * mask
    f = _sum_hw(_abs2(r))
    w = wav.forward(x)
    f = f + lam_b * _sum_hw(torch.sqrt(_abs2(w) + mu))
    if tv_b is not None:
        f = f + tv_b * _sum_hw(torch.sqrt(_abs2(_tv_diff(x)) + mu).sum(dim=-3))
    return f


@torch.no_grad()
def cs_l1_wavelet(
    kspace,
    mask,
    lam: float | None = None,
    n_iter: int = DEFAULT_CS_ITERATIONS,
    wavelet: str = "db4",
    level: int | None = None,
    method: str = "fista",
    tv: float = 0.0,
    random_shift: bool | None = None,
    smoothing: float = 1e-15,
    seed: int = 0,
    progress: bool = False,
    threads=None,
    R=None,
) -> CSResult:
    """L1-wavelet compressed-sensing reconstruction of single-coil data (Eq. 2).

    Args:
        kspace: ``(B, H, W)`` or ``(H, W)`` complex undersampled k-space (zeros where not
            sampled), centred like :func:`mrtl.fft.fft2c`. Single-coil only: a ``(C, H, W)``
            multi-coil array would be read as ``C`` separate images (combine the coils first, or
            use :func:`mrtl.recon.l1_spirit_pocs`); ``(B, C, H, W)`` is refused.
        mask: ``(H, W)`` or ``(B, H, W)`` boolean sampling mask.
        lam: L1-wavelet weight relative to ``max |A^H y|`` per image (see the module
            docstring); the paper's value is 1e-3. ``lam >= 0``. None (default): with FISTA
            :func:`default_cs_lambda` of each image's acceleration (``R``) and ``n_iter``,
            chosen on validation slices; with NLCG the paper's 1e-3.
        n_iter: number of iterations (default 200, chosen with the default lam; the paper:
            80 for T1, 120 for T2). ``n_iter >= 1``.
        wavelet: a Daubechies/orthogonal wavelet name understood by pywt (paper: ``"db4"``).
        level: decomposition levels; None gives the maximum for the image size.
        method: ``"fista"`` (default: the most accurate in 80 iterations with cycle spinning) or
            ``"nlcg"`` (SparseMRI's nonlinear CG, the paper's solver).
        tv: relative weight of the total-variation term (NLCG only); 0 disables it.
        random_shift: cycle spinning, a random cyclic shift of the wavelet grid at every
            iteration (BART ``pics``). None (default) turns it on for FISTA, where it gained
            3-8 dB PSNR on real brain slices at R = 4, and off for NLCG, where it lost
            about 0.5 dB (it breaks the conjugacy of the directions); see
            ``benchmarks/bench_recon.py``.
        smoothing: ``mu`` of the smoothed L1 norm ``sqrt(|c|^2 + mu)`` (SparseMRI's
            ``l1Smooth``); used by NLCG only.
        seed: seed of the random shifts.
        progress: show a progress bar (hidden when ``MRTL_QUIET=1``).
        threads: CPU threads for the iterations (restored afterwards): None follows
            ``MRTL_RECON_THREADS`` or :data:`mrtl.recon._common.DEFAULT_RECON_THREADS` (1; see
            ``benchmarks/bench_recon.py --threads``), an integer sets it, ``"torch"`` keeps torch's.
        R: the acceleration of each image, for the default ``lam`` only: a float or a ``(B,)``
            tensor, as a dataset carries it (``Sample.R``, ``TrainData.R``: the R its mask bank
            was drawn for). None measures it from each mask (``H * W / sampled``).

    Returns:
        :class:`CSResult` ``(image, history)``; ``image`` has the input's batch layout and
        dtype, ``history`` is ``(B, n_iter)`` float64.

    Raises:
        ValueError: bad shapes, an all-zero mask, ``lam < 0``, ``n_iter < 1``, NaN data,
            ``tv > 0`` with FISTA.
    """
    lam = None if lam is None else check_float(lam, "lam", low=0.0)
    tv = check_float(tv, "tv", low=0.0)
    n_iter = check_int(n_iter, "n_iter", low=1)
    method = check_choice(method, "method", ("nlcg", "fista"))
    smoothing = check_float(smoothing, "smoothing", low=0.0)
    check_int(seed, "seed")
    if random_shift is None:
        random_shift = method == "fista"
    if not isinstance(random_shift, bool):
        raise TypeError(f"random_shift: expected True, False or None, got {random_shift!r}")
    if tv > 0 and method == "fista":
        raise ValueError("tv: the TV term is only available with method='nlcg' (got method='fista')")
    y, m, batched = prepare_kspace_mask(kspace, mask, coil_dim=False)
    check_level(y.shape, wavelet, level)
    y = y * m  # unsampled positions carry no data
    A = SingleCoilFourier(m, validate=False)  # A = M F (Eq. 2); m is checked above
    x0 = A.adjoint(y, validate=False)  # the zero-filled A^H y
    scale = x0.abs().amax(dim=(-2, -1)).to(torch.float64)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    R = _per_image_R(R, m, y.shape[0])  # the R the data carry (checked), else measured from the masks
    if lam is None:  # the validated default, per image
        lam = default_cs_lambda(R, n_iter) if method == "fista" else 1e-3
    lam_b = lam * scale
    tv_b = tv * scale if tv > 0 else None
    wav = WaveletTransform(y.shape[-2:], wavelet, level)  # Psi; cycle spinning sets its shift
    gen = torch.Generator().manual_seed(seed)  # the shifts' random stream
    with recon_threads(threads):
        if method == "nlcg":
            x, hist = _nlcg(x0, y, A, lam_b, tv_b, wav, gen, n_iter, smoothing, random_shift, progress)
        else:
            x, hist = _fista(x0, y, A, lam_b, wav, gen, n_iter, random_shift, progress)
    finite_or_raise(x, "cs_l1_wavelet")
    if not batched:
        x = x[0]
    return CSResult(x, hist)


def _nlcg(x, y, A, lam_b, tv_b, wav, gen, n_iter, mu, random_shift, show):
    """SparseMRI fnlCg, batched: one step length per image. ``A`` = M F, ``wav`` = Psi."""
    m = A.mask
    B = x.shape[0]
    real_dt = x.real.dtype
    lam_r = lam_b.to(real_dt)[:, None, None]
    tv_r = tv_b.to(real_dt)[:, None, None, None] if tv_b is not None else None

    def smooth_l1(w):  # sum sqrt(|w|^2 + mu), float64 (B,)
        return _sum_hw(torch.sqrt(_abs2(w) + mu))

    def tv_val(d):
        return _sum_hw(torch.sqrt(_abs2(d) + mu).sum(dim=-3))

    def gradient(Ax, Wx, Dx):
        g = 2.0 * A.adjoint(Ax - y, validate=False)
        g = g + wav.adjoint(lam_r * Wx / torch.sqrt(_abs2(Wx) + mu), validate=False)
        if Dx is not None:
            g = g + _tv_diff_adjoint(tv_r * Dx / torch.sqrt(_abs2(Dx) + mu))
        return g

    def fval(Ax, Adx, Wx, Wdx, Dx, Ddx, t):
        tt = t.to(real_dt)[:, None, None]
        f = _sum_hw(_abs2((Ax + tt * Adx - y) * m))
        f = f + lam_b * smooth_l1(Wx + tt * Wdx)
        if Dx is not None:
            f = f + tv_b * tv_val(Dx + tt[..., None] * Ddx)
        return f

    use_tv = tv_b is not None
    if random_shift:
        wav.draw_shift(gen)
    Ax = A.forward(x, validate=False)
    Wx = wav.forward(x, validate=False)
    Dx = _tv_diff(x) if use_tv else None
    g0 = gradient(Ax, Wx, Dx)
    dx = -g0
    t0 = torch.ones(B, dtype=torch.float64, device=x.device)
    zero = torch.zeros_like(t0)
    hist = torch.empty(B, n_iter, dtype=torch.float64, device=x.device)
    for k in _progress(range(n_iter), desc="CS (NLCG)", total=n_iter, enable=show):
        gdx = _sum_hw((g0.conj() * dx).real)
        bad = gdx >= 0  # not a descent direction: restart with steepest descent
        if bool(bad.any()):
            dx = torch.where(bad[:, None, None], -g0, dx)
            gdx = _sum_hw((g0.conj() * dx).real)
        Adx = A.forward(dx, validate=False)
        Wdx = wav.forward(dx, validate=False)
        Ddx = _tv_diff(dx) if use_tv else None
        f0 = fval(Ax, Adx, Wx, Wdx, Dx, Ddx, zero)
        t = t0.clone()
        f1 = fval(Ax, Adx, Wx, Wdx, Dx, Ddx, t)
        need = f1 > f0 - _ALPHA * t * gdx.abs()
        lsiter = torch.zeros(B, dtype=torch.int64, device=x.device)
        while bool(need.any()) and int(lsiter.max()) < _MAX_LS:
            t = torch.where(need, t * _BETA, t)
            lsiter = lsiter + need.long()
            f1 = torch.where(need, fval(Ax, Adx, Wx, Wdx, Dx, Ddx, t), f1)
            need = need & (f1 > f0 - _ALPHA * t * gdx.abs()) & (lsiter < _MAX_LS)
        failed = f1 > f0  # no decrease found: do not move, restart the direction
        t = torch.where(failed, zero, t)
        f1 = torch.where(failed, f0, f1)
        # SparseMRI's step-size control
        t0 = torch.where(lsiter > 2, t0 * _BETA, t0)
        t0 = torch.where(lsiter < 1, t0 / _BETA, t0)
        tt = t.to(x.real.dtype)[:, None, None]
        x = x + tt * dx
        Ax = Ax + tt * Adx
        Wx = Wx + tt * Wdx
        if use_tv:
            Dx = Dx + tt[..., None] * Ddx
        hist[:, k] = f1
        if random_shift and k + 1 < n_iter:
            # cycle spinning: the next iteration works with a new wavelet grid
            wav.draw_shift(gen)
            Wx = wav.forward(x, validate=False)
        g1 = gradient(Ax, Wx, Dx)
        bk = _sum_hw(_abs2(g1)) / (_sum_hw(_abs2(g0)) + torch.finfo(torch.float64).eps)
        bk = torch.where(failed, zero, bk).to(x.real.dtype)[:, None, None]
        dx = -g1 + bk * dx
        g0 = g1
    return x, hist


def soft_threshold_(c: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """In-place complex soft-thresholding of ``c`` at ``thr``; returns ``sum |result|`` (B,).

    The same values as :func:`mrtl.recon._common.soft_threshold`
    (``c * max(|c| - t, 0) / max(|c|, tiny)``) with fewer passes over memory; the L1 norm of
    the result (needed for the objective) comes for free.
    """
    mag = c.abs()
    shrunk = (mag - thr).clamp_(min=0)  # |result|
    l1 = shrunk.sum(dim=-1).sum(dim=-1, dtype=torch.float64)  # row sums in float32: 6x faster
    c.mul_(shrunk.div_(mag.clamp_(min=torch.finfo(mag.dtype).tiny)))
    return l1


def _masked_energy(d: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``sum |d|^2`` over the sampled positions, per image, float64 (B,)."""
    # vector_norm is a fast vectorised (cascade-summed) reduction; float32 accuracy is plenty
    # for the objective history
    return torch.linalg.vector_norm(torch.view_as_real(d.mul_(m)), dim=(-3, -2, -1)).to(torch.float64).square()


def _fista(x, y, A, lam_b, wav, gen, n_iter, random_shift, show):
    """FISTA on ||Ax - y||^2 + lam ||Psi x||_1 with step 1/L, L = 2 (||A|| <= 1)."""
    real_dt = x.real.dtype
    m = A.mask
    thr = (lam_b / 2.0).to(real_dt)[:, None, None]
    kx = A.forward(x, validate=False)  # A x of the current iterate
    kx_prev = kx
    x_prev = x
    t = 1.0
    hist = torch.empty(x.shape[0], n_iter, dtype=torch.float64, device=x.device)
    for k in _progress(range(n_iter), desc="CS (FISTA)", total=n_iter, enable=show):
        if random_shift:
            wav.draw_shift(gen)
        t_next = (1.0 + (1.0 + 4.0 * t * t) ** 0.5) / 2.0
        if k > 0:
            mom = (t - 1.0) / t_next
            kz = torch.lerp(kx_prev, kx, 1.0 + mom)  # kx + mom (kx - kx_prev) = A z by linearity
            z = torch.lerp(x_prev, x, 1.0 + mom)
        else:
            kz, z = kx, x
        # gradient step with step 1/2 == the data-consistency projection A.prox_l2(z, y), with
        # A z taken from the two previous iterates (no FFT)
        v = A.adjoint(torch.sub(y, kz), validate=False).add_(z)
        c = wav.forward(v, validate=False)
        l1 = soft_threshold_(c, thr)
        x_prev, kx_prev = x, kx
        x = wav.adjoint(c, validate=False)
        kx = A.forward(x, validate=False)
        hist[:, k] = _masked_energy(kx - y, m) + lam_b * l1
        t = t_next
    return x, hist
