"""Benchmark the foundation operators against numpy / sigpy / pywt / skimage in the same run.

Prints a markdown table (median of a few repeats, wall-clock seconds). Usage:

    python benchmarks/bench_ops.py [--batch 32] [--size 256] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

os.environ.setdefault("MRTL_QUIET", "1")

import numpy as np
import torch


def timeit(fn, repeats: int) -> float:
    fn()  # warm-up (numba compile, caches, allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import pywt
    import sigpy
    import sigpy.mri
    from skimage.metrics import structural_similarity

    from mrtl import masks, metrics, wavelets
    from mrtl.fft import fft2c

    B, N, reps = args.batch, args.size, args.repeats
    g = torch.Generator().manual_seed(0)
    x = torch.complex(torch.randn(B, N, N, generator=g), torch.randn(B, N, N, generator=g))
    xn = x.numpy()
    real = x.real.contiguous()
    realn = real.numpy().astype(np.float64)
    ref = real.abs()
    rec = (ref + 0.1 * torch.randn(B, N, N, generator=g)).abs()
    refn, recn = ref.numpy().astype(np.float64), rec.numpy().astype(np.float64)
    level = pywt.dwtn_max_level((N, N), "db4")

    rows = []

    def add(op, impl, fn):
        rows.append((op, impl, timeit(fn, reps)))

    add(f"FFT {B}x{N}x{N} complex64", "mrtl.fft2c (torch)", lambda: fft2c(x))
    add(f"FFT {B}x{N}x{N} complex64", "numpy.fft.fft2 + shifts", lambda: np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(xn, axes=(-2, -1)), norm="ortho"), axes=(-2, -1)))
    add(f"FFT {B}x{N}x{N} complex64", "sigpy.fft", lambda: sigpy.fft(xn, axes=(-2, -1), center=True))

    def dwt_idwt_torch():
        c = wavelets.wavedec2(real, "db4", level=level)
        return wavelets.waverec2(c, "db4")

    def dwt_idwt_pywt():
        for i in range(B):
            c = pywt.wavedec2(realn[i], "db4", mode="periodization", level=level)
            pywt.waverec2(c, "db4", mode="periodization")

    add(f"DWT+IDWT db4 level {level}, {B}x{N}x{N} real", "mrtl.wavelets (torch)", dwt_idwt_torch)
    add(f"DWT+IDWT db4 level {level}, {B}x{N}x{N} real", "pywt wavedec2/waverec2 (loop)", dwt_idwt_pywt)

    def ssim_sk():
        for i in range(B):
            structural_similarity(recn[i], refn[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=float(refn[i].max() - refn[i].min()))

    add(f"SSIM {B}x{N}x{N}", "mrtl.metrics.ssim (torch)", lambda: metrics.ssim(rec, ref=ref))
    add(f"SSIM {B}x{N}x{N}", "skimage structural_similarity (loop)", ssim_sk)

    counter = iter(range(10**6))
    for R in (4, 8):
        add(f"poisson_disc {N}x{N} R={R} (new seed each call)", "mrtl.masks", lambda R=R: masks.poisson_disc((N, N), R, seed=next(counter)))
        add(f"poisson {N}x{N} R={R}", "sigpy.mri.poisson", lambda R=R: sigpy.mri.poisson((N, N), R, calib=(20, 20), seed=next(counter)))

    def bank():
        masks.clear_cache()  # time the generation, not the per-process cache
        masks.MaskBank(4, (N, N), n=100, seed=next(counter))

    add(f"MaskBank n=100 {N}x{N} R=4 (cold, incl. slope calibration)", "mrtl.masks", bank)

    # the operator layer on the networks' hot paths (public API only, so that the same rows can
    # be timed against an older mrtl: PYTHONPATH=<old checkout> python benchmarks/bench_ops.py)
    from mrtl.models import Cascade, CalibrationConsistency, DataConsistency, coil_combine, sense_expand

    C = 8
    m = masks.poisson_disc((N, N), 4, seed=0)
    y = fft2c(x) * m
    maps = torch.complex(torch.randn(C, N, N, generator=g), torch.randn(C, N, N, generator=g)) / C**0.5
    coil_x = sense_expand(x, maps)
    coil_y = fft2c(coil_x) * m
    G = torch.complex(torch.randn(C, C, N, N, generator=g), torch.randn(C, C, N, N, generator=g)) / C
    hard, soft = DataConsistency(), DataConsistency(0.5)
    add(f"DC hard {B}x{N}x{N}", "mrtl.models.DataConsistency", lambda: hard(x, y, m))
    add(f"DC lam=0.5 {B}x{N}x{N}", "mrtl.models.DataConsistency", lambda: soft(x, y, m))
    add(f"DC hard through {C} coil maps {B}x{N}x{N}", "mrtl.models.DataConsistency", lambda: hard(x, coil_y, m, maps))
    add(f"S^H S x, {C} coils {B}x{N}x{N}", "mrtl.models coil_combine/sense_expand", lambda: coil_combine(sense_expand(x, maps), maps))
    cc = CalibrationConsistency(G)
    add(f"CC (SPIRiT G, image space) {C} coils {B}x{N}x{N}", "mrtl.models.CalibrationConsistency", lambda: cc(coil_x))
    torch.manual_seed(0)
    net = Cascade(n_subnets=2, coils="multi", width=16, depth=2)
    xb, yb, cb = x[:2], coil_y[:2], coil_x[:2]

    def cascade_step():
        net.zero_grad()
        net(coil_combine(cb, maps), yb, m, maps, G_img=G).abs().mean().backward()

    add(f"Cascade multi-coil (2 subnets, CC) fwd+bwd 2x{C}x{N}x{N}", "mrtl.models.Cascade", cascade_step)

    print(f"\n### bench_ops: torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), median of {reps} repeats\n")
    print("| operation | implementation | seconds |")
    print("|---|---|---:|")
    for op, impl, t in rows:
        print(f"| {op} | {impl} | {t:.4f} |")


if __name__ == "__main__":
    main()
