"""Inference with a trained cascade: :func:`reconstruct` (k-space in, images out) and
:func:`evaluate` (PSNR/SSIM of every sample of a dataset, ``mrtl.metrics``)."""

from __future__ import annotations

from typing import Optional

import torch

from .._validate import check_complex, check_int, check_mask
from ..data.train_data import as_train_data, calibrate_G, check_compatible, percentile99
from ..linops import zero_filled
from ..metrics import psnr, ssim
from ..models import Cascade
from ..utils import get_device, progress

__all__ = ["evaluate", "reconstruct", "MAX_RECON_PIXELS", "batch_indices"]

#: Largest image (pixels per slice) :func:`reconstruct` accepts by default: 2048 x 2048. A pass
#: of the paper's 64-channel cascade holds a few float32 activations of ``H x W x 64`` per image
#: (about 3 GB at 4096 x 4096); pass ``max_pixels=None`` to go beyond.
MAX_RECON_PIXELS = 2048 * 2048


def batch_indices(n: int, batch_size: int, device):
    """Index tensors of consecutive batches ``[0, b), [b, 2b), ...`` over ``n`` samples."""
    for s in range(0, n, batch_size):
        yield torch.arange(s, min(s + batch_size, n), device=device)


def evaluate(model: Cascade, dataset, batch_size: int = 32, device=None, progress_bar: bool = False,
             amp: Optional[bool] = None) -> list[dict]:
    """Reconstruct every sample and score it (PSNR, SSIM on magnitudes; ``mrtl.metrics``).

    Args:
        model: a trained cascade.
        dataset: samples (as :func:`train_sequential`).
        batch_size: images per forward pass.
        device: None (auto), "cpu" or "cuda".
        amp: bf16 autocast of the subnetworks (True/False); None keeps the model's setting.

    Returns:
        One dict per image: ``index, subject, source, psnr, ssim, psnr_zf, ssim_zf`` (the last
        two for the zero-filled input).
    """
    batch_size = check_int(batch_size, "batch_size", low=1)
    device = get_device(device)
    data = as_train_data(dataset, name="dataset")
    check_compatible(model, data, "dataset")
    model.use_amp(amp)
    model.to(device).eval()
    records = []
    with torch.no_grad():
        for idx in progress(list(batch_indices(len(data), batch_size, "cpu")), desc="evaluate", enable=progress_bar):
            b = data.batch(idx.to(data.x_u.device))
            bd = {k: (None if v is None else v.to(device)) for k, v in b.items()}
            out = model.output(model.prefix(bd["x_u"], bd["kspace"], bd["mask"], bd["maps"], bd["G_img"], validate=False), bd["maps"]).cpu()
            ref, x_u = b["reference"].cpu(), b["x_u"].cpu()  # TrainData may live on a GPU
            p, s = psnr(out, ref=ref), ssim(out, ref=ref)
            pz, sz = psnr(x_u, ref=ref), ssim(x_u, ref=ref)
            for j, i in enumerate(idx.tolist()):
                m = data.meta[i] if data.meta else {"index": i}
                records.append(dict(index=i, subject=m.get("subject"), source=m.get("source"), psnr=float(p[j]),
                                    ssim=float(s[j]), psnr_zf=float(pz[j]), ssim_zf=float(sz[j])))
    return records


def reconstruct(model: Cascade, kspace, mask, maps=None, G_img=None, batch_size: int = 32, device=None,
                normalize: bool = True, max_pixels: Optional[int] = MAX_RECON_PIXELS,
                amp: Optional[bool] = None) -> torch.Tensor:
    """Reconstruct undersampled k-space with a trained cascade.

    Args:
        model: a trained :class:`~mrtl.models.Cascade`.
        kspace: ``(H, W)``/``(B, H, W)`` single-coil or ``(C, H, W)``/``(B, C, H, W)`` multi-coil,
            centred (``mrtl.fft.fft2c`` convention), complex; values off the mask are ignored.
        mask: ``(H, W)`` or ``(B, H, W)`` boolean.
        maps: coil maps (multi-coil).
        G_img: SPIRiT image-space operator (multi-coil; None: calibrated from ``kspace`` when
            ``mrtl.recon`` is available).
        batch_size: images per forward pass.
        device: None (auto), "cpu" or "cuda".
        normalize: scale each image to the input scale the network was trained at and undo it
            after: the 99th percentile of the zero-filled magnitude is set to ``model.input_p99``
            (the median over the training/tuning set, saved in the checkpoint; 1 for a model
            without it). Training data are normalised so that the *reference's* 99th percentile
            is 1, so the zero-filled input's is below 1 (about 0.91 for T1 at R = 4, 0.83 at
            R = 8); scaling it to 1 instead feeds the network inputs hotter than in training.
            On the bundled T1 test slices (64x64, a small cascade) the measured difference is
            small: this rule is +0.03 dB (R = 4) and +0.06 dB (R = 8) above the training scale,
            the old rule +0.00 dB (``python benchmarks/bench_train.py --normalization``); it is
            the default because it matches what the network saw, not for a large gain.
            False: use the k-space as given (already at the training scale).
        max_pixels: refuse slices with more pixels than this (default :data:`MAX_RECON_PIXELS`,
            2048 x 2048) with an error that estimates the memory needed; None: no limit.
        amp: bf16 autocast of the subnetworks (True/False); None keeps the model's setting.

    Returns:
        Complex image(s) ``(B, H, W)`` (``(H, W)`` for unbatched input), on the CPU.
    """
    multi = model.coils == "multi"
    kspace = check_complex(kspace, "kspace", ndim=(3, 4) if multi else (2, 3))
    # everything is prepared on the CPU and moved to ``device`` batch by batch (inputs may live
    # on a GPU: mixing them with the CPU scale/output tensors below would fail)
    kspace = kspace.detach().cpu()
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().cpu()
    if isinstance(G_img, torch.Tensor):
        G_img = G_img.detach().cpu()
    unbatched = kspace.ndim == (3 if multi else 2)
    batch_size = check_int(batch_size, "batch_size", low=1)
    H, W = kspace.shape[-2:]
    if max_pixels is not None and H * W > max_pixels:
        gb = 3 * H * W * model.arch["width"] * 4 / 2**30  # a few float32 activations of width channels
        raise ValueError(f"kspace: slices of {H}x{W} exceed the limit of {max_pixels} pixels (mrtl.train.MAX_RECON_PIXELS); "
                         f"one pass of this cascade needs about {gb:.1f} GB per slice. Crop or resample the data, or pass "
                         f"max_pixels=None to reconstruct anyway")
    if unbatched:
        kspace = kspace[None]
    mask = check_mask(mask, "mask", shape=(kspace.shape[0], *kspace.shape[-2:]))  # (B, H, W), also multi-coil
    if mask.ndim == 2:
        mask = mask[None].expand(kspace.shape[0], -1, -1)
    if multi:
        if maps is None:
            raise ValueError("maps: a multi-coil cascade needs coil maps (C, H, W) or (B, C, H, W)")
        maps = check_complex(maps, "maps", ndim=(3, 4))
        if maps.ndim == 3:
            maps = maps[None].expand(kspace.shape[0], -1, -1, -1)
        if tuple(maps.shape) != tuple(kspace.shape):
            raise ValueError(f"maps: expected shape {tuple(kspace.shape)}, got {tuple(maps.shape)}")
    elif maps is not None:
        raise ValueError("maps: a single-coil cascade takes no coil maps")
    device = get_device(device)
    kspace = kspace.to(torch.complex64) * (mask[:, None] if multi else mask)
    x_u = zero_filled(kspace, maps=maps if multi else None)  # A^H y (Eq. 3): S^H F^H M y multi-coil
    scale = torch.ones(kspace.shape[0])
    if normalize:
        target = getattr(model, "input_p99", None) or 1.0
        scale = (percentile99(x_u) / target).clamp_min(1e-12)
    sc = scale.view(-1, *([1] * (kspace.ndim - 1)))
    kspace, x_u = kspace / sc, x_u / scale.view(-1, 1, 1)
    if multi and G_img is None:
        G_img = calibrate_G(kspace, mask)
    elif G_img is not None:
        G_img = check_complex(G_img, "G_img", ndim=(4, 5))
        if G_img.ndim == 4:
            G_img = G_img[None].expand(kspace.shape[0], -1, -1, -1, -1)
    model.use_amp(amp)
    model.to(device).eval()
    outs = []
    with torch.no_grad():
        for s in range(0, kspace.shape[0], batch_size):
            sl = slice(s, s + batch_size)
            mv = lambda t: None if t is None else t[sl].to(device)  # noqa: E731
            outs.append(model(mv(x_u), mv(kspace), mv(mask), mv(maps), mv(G_img)).cpu())
    out = torch.cat(outs) * scale.view(-1, 1, 1)
    if not bool(torch.isfinite(out).all()):
        raise ValueError("reconstruct: the network produced NaN/Inf values for these inputs (finite weights and "
                         "k-space); check that the k-space scale and mask match the training data")
    return out[0] if unbatched else out
