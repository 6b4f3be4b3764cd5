"""Helpers shared by the reconstructions: argument checks, wavelets with cycle spinning."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from .._validate import check_complex, check_mask

__all__ = ["prepare_kspace_mask", "check_centred", "soft_threshold", "recon_threads", "resolve_threads",
           "DEFAULT_RECON_THREADS", "RECON_THREADS_ENV"]


def prepare_kspace_mask(kspace, mask, coil_dim: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Validate k-space and mask and bring them to batched form.

    Args:
        kspace: ``(B, H, W)`` or ``(H, W)`` (single-coil) or ``(B, C, H, W)`` / ``(C, H, W)``
            (multi-coil, ``coil_dim=True``) complex k-space, centred like ``fft2c``.
        mask: ``(H, W)`` or ``(B, H, W)`` sampling mask.
        coil_dim: whether the data carry a coil axis.

    Returns:
        ``(kspace, mask, batched)``: k-space with a batch axis, a boolean mask broadcastable
        against it (``(B or 1, [1,] H, W)``), and whether the input had a batch axis.
    """
    nd = (3, 4) if coil_dim else (2, 3)
    if not coil_dim and getattr(kspace, "ndim", None) == 4:
        raise ValueError(
            f"kspace: got {tuple(kspace.shape)}, multi-coil (B, C, H, W) k-space, but this reconstruction is "
            "single-coil ((H, W) or (B, H, W)): combine the coils first or use mrtl.recon.l1_spirit_pocs; note that "
            "a (C, H, W) multi-coil array would be read as C separate single-coil images"
        )
    kspace = check_complex(kspace, "kspace", ndim=nd)
    batched = kspace.ndim == nd[1]
    if not batched:
        kspace = kspace[None]
    if kspace.dtype not in (torch.complex64, torch.complex128):
        kspace = kspace.to(torch.complex64)
    mask = check_mask(mask, "mask")
    if mask.ndim not in (2, 3):
        raise ValueError(f"mask: expected (H, W) or (B, H, W), got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != tuple(kspace.shape[-2:]):
        raise ValueError(
            f"mask: k-space size {tuple(mask.shape[-2:])} differs from the data's {tuple(kspace.shape[-2:])}"
        )
    if mask.ndim == 3 and mask.shape[0] not in (1, kspace.shape[0]):
        raise ValueError(
            f"mask: batch size {mask.shape[0]} does not match the k-space batch size {kspace.shape[0]}"
        )
    if mask.ndim == 3:
        flat = mask.reshape(mask.shape[0], -1)
        if not bool(flat.any(dim=1).all()):
            raise ValueError("mask: at least one mask in the batch samples nothing (all zero)")
    mask = mask.to(kspace.device)
    mask = mask if mask.ndim == 3 else mask[None]
    check_centred(kspace, mask, coil_dim)
    if coil_dim:
        mask = mask[:, None]
    return kspace, mask, batched


#: :func:`check_centred` calls k-space uncentred when its most energetic measured sample lies more
#: than an eighth of the size from the centre and exceeds this multiple of the median measured
#: sample's energy (a DC-like peak; white noise stays below about 15 at these sizes).
CENTRING_PEAK_RATIO = 100.0


def _blocks(H: int, W: int):
    b = max(2, min(H, W) // 8)
    cy, cx = H // 2, W // 2
    centre = (slice(cy - b // 2, cy - b // 2 + b), slice(cx - b // 2, cx - b // 2 + b))
    ys = torch.cat((torch.arange(0, (b + 1) // 2), torch.arange(H - b // 2, H)))
    xs = torch.cat((torch.arange(0, (b + 1) // 2), torch.arange(W - b // 2, W)))
    return centre, ys, xs


def check_centred(kspace: torch.Tensor, mask: torch.Tensor, coil_dim: bool) -> None:
    """Raise ``ValueError`` for an uncentred mask or uncentred k-space (mrtl centres both like ``fft2c``).

    - mask: the fully sampled calibration block of a variable-density mask sits at the centre;
      a mask fully sampled in the four corners (the ``ifftshift`` of the centre) but not at the
      centre is uncentred.
    - k-space: an image's k-space energy peaks at the centre (DC); a sharp peak (above
      ``CENTRING_PEAK_RATIO`` times the median measured energy) more than an eighth of the size
      away from the centre means uncentred k-space (e.g. ``torch.fft.fft2`` without ``fftshift``).

    Both checks need an image of at least 16 x 16 pixels (skipped below).

    Args:
        kspace: ``(B, H, W)`` or ``(B, C, H, W)`` complex.
        mask: ``(B or 1, H, W)`` boolean.
        coil_dim: whether ``kspace`` has a coil axis.
    """
    H, W = kspace.shape[-2:]
    if min(H, W) < 16:
        return
    centre, ys, xs = _blocks(H, W)
    mc = mask[(slice(None),) + centre]
    mcorner = mask[:, ys][:, :, xs]
    full_c = mc.flatten(1).all(dim=1)
    full_k = mcorner.flatten(1).all(dim=1)
    if bool((full_k & ~full_c).any()):
        raise ValueError(
            "mask: the fully sampled block is in the corners, not at the centre: the mask looks uncentred "
            "(mrtl masks and k-space are centred like mrtl.fft.fft2c); use torch.fft.fftshift(mask, dim=(-2, -1))"
        )
    e = kspace.abs().square()
    if coil_dim:
        e = e.sum(dim=1)
    e = (e * mask).flatten(1)  # measured samples only
    n = mask.flatten(1).sum(dim=1).expand(e.shape[0])
    peak, idx = e.max(dim=1)
    med = torch.stack([row[row > 0].median() if bool((row > 0).any()) else row.new_zeros(()) for row in e])
    py, px = idx // W, idx % W
    far = ((py - H // 2).abs() > H // 8) | ((px - W // 2).abs() > W // 8)
    bad = (n >= 16) & far & (peak > CENTRING_PEAK_RATIO * med)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"kspace: image {i}'s k-space energy peaks at ({int(py[i])}, {int(px[i])}), far from the centre "
            f"({H // 2}, {W // 2}): it looks uncentred (mrtl expects the DC at the centre, as mrtl.fft.fft2c gives); "
            "use torch.fft.fftshift(kspace, dim=(-2, -1)) or mrtl.fft.fft2c"
        )


def soft_threshold(c: torch.Tensor, thresh: torch.Tensor | float, joint_dim: int | None = None) -> torch.Tensor:
    """Complex soft-thresholding ``c * max(|c| - t, 0) / |c|`` (the prox of ``t * ||c||_1``).

    With ``joint_dim``, the magnitude is the L2 norm over that axis (joint sparsity, as in
    Lustig's POCS SPIRiT across coils).
    """
    mag = c.abs()
    if joint_dim is not None:
        mag = torch.sqrt((mag * mag).sum(dim=joint_dim, keepdim=True))
    scale = torch.clamp(mag - thresh, min=0) / torch.clamp(mag, min=torch.finfo(mag.dtype).tiny)
    return c * scale


def check_level(shape, wavelet: str, level: int | None) -> None:
    """Raise ``ValueError`` unless ``shape`` is divisible by ``2**level``."""
    if level is None:
        return
    p = 2 ** int(level)
    if shape[-1] % p or shape[-2] % p:
        raise ValueError(f"level: the image size {tuple(shape[-2:])} must be divisible by 2**level = {p}")


def finite_or_raise(x: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
        raise FloatingPointError(f"{what}: the iteration diverged (NaN/Inf); please report this with the inputs")



#: CPU threads of :func:`mrtl.recon.cs_l1_wavelet` and :func:`mrtl.recon.l1_spirit_pocs` when
#: their ``threads`` argument is None and ``MRTL_RECON_THREADS`` is unset. One thread: the
#: iterations are chains of small FFTs, wavelet filters and element-wise steps that gain little from
#: intra-op threads and lose badly when the cores are shared: on a 2-core machine under load,
#: torch's default (2 threads) was 4-30x slower than one thread (``benchmarks/bench_recon.py
#: --threads``). Batch more images per call, or run one process per core, to use more cores.
DEFAULT_RECON_THREADS = 1
#: Environment variable overriding :data:`DEFAULT_RECON_THREADS`: an integer, or ``"torch"`` to
#: keep torch's current setting (``torch.get_num_threads()``).
RECON_THREADS_ENV = "MRTL_RECON_THREADS"


def resolve_threads(threads) -> int | None:
    """The CPU thread count a reconstruction uses: ``threads`` if given, else ``MRTL_RECON_THREADS``,
    else :data:`DEFAULT_RECON_THREADS`; None means torch's current setting (unchanged).

    Args:
        threads: None, a positive integer, or ``"torch"``.
    """
    from .._validate import check_int

    name = "threads"
    if threads is None:
        env = os.environ.get(RECON_THREADS_ENV, "").strip()
        if not env:
            return DEFAULT_RECON_THREADS
        threads, name = env, RECON_THREADS_ENV
        if env.lower() != "torch":
            try:
                threads = int(env)
            except ValueError:
                raise ValueError(f"{RECON_THREADS_ENV}: expected a positive integer or 'torch', got {env!r}") from None
    if isinstance(threads, str):
        if threads.lower() == "torch":
            return None
        raise ValueError(f"{name}: expected a positive integer, None or 'torch', got {threads!r}")
    return check_int(threads, name, low=1)


@contextmanager
def recon_threads(threads):
    """Run the body with torch's intra-op CPU threads set by :func:`resolve_threads`, then restore them.

    Args:
        threads: None (the default policy), a positive integer, or ``"torch"`` (leave unchanged).
    """
    n = resolve_threads(threads)
    old = torch.get_num_threads()
    if n is None or n == old:
        yield old if n is None else n
        return
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(old)
