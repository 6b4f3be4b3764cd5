"""Benchmark of the classic reconstructions (issue 4).

Single-coil CS: a batch of 16 real T1 slices (bundled Colin27, 256 x 256, 99th percentile = 1),
Poisson-disc R = 4 (sigpy sampler, 20 x 20 calibration), lam = 1e-3 (mrtl's relative
scaling; sigpy and BART get the same objective: lamda = lam * max|A^H y| / 2), 80
iterations: mrtl FISTA (+ cycle spinning, the default), mrtl FISTA without shifts, mrtl
NLCG, sigpy ``L1WaveletRecon`` (looped per slice), ``bart pics -l1`` when installed.
Then L1-SPIRiT on 8 coils at 256 x 256: time per iteration next to its FFTs alone.

Run: ``python benchmarks/bench_recon.py [--n 16] [--size 256] [--device cpu]``.

Thread scaling (``--threads``): CS (FISTA) and L1-SPIRiT at 1 and 2 torch CPU threads and at
torch's default, best of 3 runs each. This chose ``mrtl.recon``'s default of one thread
(``DEFAULT_RECON_THREADS``; override with ``threads=`` or ``MRTL_RECON_THREADS``). The load
average is printed with the table: on a shared machine more threads can be much slower.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrtl.coils import birdcage_maps
from mrtl.fft import fft2c, ifft2c
from mrtl.recon import cs_l1_wavelet, l1_spirit_pocs, spirit_calibrate

ROOT = Path(__file__).resolve().parents[1]


def psnr(recon, ref):
    from skimage.metrics import peak_signal_noise_ratio

    r, t = np.abs(np.asarray(recon)), np.abs(np.asarray(ref))
    return float(np.mean([peak_signal_noise_ratio(b, a, data_range=float(b.max() - b.min())) for a, b in zip(r, t)]))


def load(n, size):
    d = np.load(ROOT / "data" / "t1_colin27.npz")
    idx = np.linspace(10, len(d["images"]) - 10, n).astype(int)
    imgs = d["images"][idx].astype(np.float32)
    if size != imgs.shape[-1]:
        from skimage.transform import resize

        imgs = np.stack([resize(i, (size, size), anti_aliasing=True) for i in imgs]).astype(np.float32)
    imgs /= np.percentile(imgs.reshape(n, -1), 99, axis=1)[:, None, None]
    return torch.from_numpy(imgs).to(torch.complex64)


def bart_pics(y, mask, lamdas, n_iter):
    def write(name, a):
        a = np.asarray(a, np.complex64)
        Path(f"{name}.hdr").write_text("# Dimensions\n" + " ".join(map(str, a.shape)) + "\n")
        a.T.tofile(f"{name}.cfl")

    def read(name):
        dims = [int(s) for s in Path(f"{name}.hdr").read_text().split("\n")[1].split()]
        return np.fromfile(f"{name}.cfl", np.complex64).reshape(dims, order="F")

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        ones = np.ones(y.shape[-2:] + (1, 1), np.complex64)
        write(f"{tmp}/s", ones.reshape(y.shape[-2], y.shape[-1], 1, 1))
        for b in range(y.shape[0]):
            write(f"{tmp}/k", (y[b].numpy())[:, :, None, None])
            # bart's data term is 1/2||Ax-y||^2 as sigpy's
            subprocess.run(["bart", "pics", "-w", "1", "-R", f"W:3:0:{lamdas[b]}", "-i", str(n_iter), "-e",
                            f"{tmp}/k", f"{tmp}/s", f"{tmp}/x"], check=True, capture_output=True)
            out.append(read(f"{tmp}/x").reshape(y.shape[-2:]))
    return np.stack(out)


def thread_scaling(repeats: int = 3) -> None:
    """Print seconds per call of CS and L1-SPIRiT at 1, 2 and torch's default thread count."""
    import os
    import warnings

    from mrtl.masks import poisson_disc

    default = torch.get_num_threads()
    counts = list(dict.fromkeys([1, 2, default]))

    def cs_case(n, N, it):
        ref = load(n, N)
        m = poisson_disc((N, N), 4, calib=max(8, N // 8), seed=0)
        y = fft2c(ref) * m
        return lambda t: cs_l1_wavelet(y, m, lam=1e-3, n_iter=it, threads=t)

    def spirit_case(N, it):
        ref = load(1, N)[0]
        maps = birdcage_maps(8, (N, N))
        m = poisson_disc((N, N), 4, calib=24, seed=0)
        y = fft2c(maps * ref) * m
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            K = spirit_calibrate(y, kernel_size=5)
        return lambda t: l1_spirit_pocs(y, m, K, n_iter=it, maps=maps, threads=t)

    cases = [("CS FISTA, 16 x 64x64, 40 it", cs_case(16, 64, 40)),
             ("CS FISTA, 4 x 256x256, 20 it", cs_case(4, 256, 20)),
             ("L1-SPIRiT, 8 coils 128x128, 10 it", spirit_case(128, 10))]
    print(f"# thread scaling: os.cpu_count() {os.cpu_count()}, torch default threads {default}, "
          f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; seconds per call, best of {repeats}")
    print(f"{'case':36s} " + " ".join(f"{f'{t} thr' + (' (default)' if t == default else ''):>18s}" for t in counts))
    for name, fn in cases:
        row = []
        for t in counts:
            fn(t)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn(t)
                best = min(best, time.perf_counter() - t0)
            row.append(best)
        print(f"{name:36s} " + " ".join(f"{v:18.2f}" for v in row))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--iters", type=int, default=80)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", action="store_true", help="only the thread-scaling table")
    args = ap.parse_args(argv)
    if args.threads:
        thread_scaling()
        return
    import sigpy.mri as mr
    import sigpy.mri.app as app

    dev = torch.device(args.device)
    ref = load(args.n, args.size)
    N = args.size
    mask = torch.from_numpy(np.abs(mr.poisson((N, N), 4, calib=(20, 20), seed=0, dtype=np.complex64)) > 0)
    y = fft2c(ref) * mask
    s = ifft2c(y).abs().amax(dim=(-2, -1))
    print(f"# {args.n} slices {N}x{N}, R = {mask.numel() / mask.sum():.2f}, {args.iters} iterations, "
          f"torch threads {torch.get_num_threads()}, device {dev}")
    rows = [("zero-filled", 0.0, psnr(ifft2c(y), ref))]

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for name, kw in [("mrtl FISTA + shifts (default)", dict(method="fista")),
                     ("mrtl FISTA, no shifts", dict(method="fista", random_shift=False)),
                     ("mrtl NLCG (SparseMRI)", dict(method="nlcg"))]:
        yd, md = y.to(dev), mask.to(dev)
        cs_l1_wavelet(yd[:1], md, n_iter=2, **kw)  # warm-up
        sync()
        t = time.perf_counter()
        img = cs_l1_wavelet(yd, md, lam=1e-3, n_iter=args.iters, **kw).image
        sync()
        rows.append((name, (time.perf_counter() - t) / args.n, psnr(img.cpu(), ref)))
    t = time.perf_counter()
    out = []
    for b in range(args.n):
        out.append(app.L1WaveletRecon(y[b][None].numpy(), np.ones((1, N, N), np.complex64), float(s[b]) * 1e-3 / 2,
                                      weights=mask.numpy().astype(np.float32), max_iter=args.iters, show_pbar=False).run())
    rows.append(("sigpy L1WaveletRecon", (time.perf_counter() - t) / args.n, psnr(np.stack(out), ref)))
    if shutil.which("bart"):
        t = time.perf_counter()
        try:
            img = bart_pics(y, mask, (s * 1e-3 / 2).tolist(), args.iters)
            rows.append(("bart pics -l1 (W, random shifts)", (time.perf_counter() - t) / args.n, psnr(img, ref)))
        except subprocess.CalledProcessError as e:  # pragma: no cover
            print("bart pics failed:", e.stderr.decode()[:200])
    t_sigpy = [r[1] for r in rows if r[0].startswith("sigpy")][0]
    print(f"{'method':36s} {'s/slice':>8s} {'PSNR':>7s} {'time vs sigpy':>14s}")
    for name, sec, p in rows:
        ratio = f"{sec / t_sigpy:.2f}" if sec else "-"
        print(f"{name:36s} {sec:8.3f} {p:7.2f} {ratio:>14s}")

    # L1-SPIRiT, 8 coils
    maps = birdcage_maps(8, (N, N)).to(dev)
    k = fft2c(maps * ref[:1].to(dev)[:, None])
    mk = torch.from_numpy(np.abs(mr.poisson((N, N), 4, calib=(24, 24), seed=1, dtype=np.complex64)) > 0).to(dev)
    K = spirit_calibrate(k[0] * mk)
    n_it = 10
    l1_spirit_pocs(k * mk, mk, kernel=K, maps=maps, n_iter=1)
    sync()
    t = time.perf_counter()
    l1_spirit_pocs(k * mk, mk, kernel=K, maps=maps, n_iter=n_it)
    sync()
    t_it = (time.perf_counter() - t) / n_it
    x = ifft2c(k)
    sync()
    t = time.perf_counter()
    for _ in range(n_it):
        x = ifft2c(fft2c(x))
    sync()
    t_fft = (time.perf_counter() - t) / n_it
    print(f"\nL1-SPIRiT 8 coils {N}x{N}: {t_it * 1e3:.1f} ms/iteration; its FFT pair alone {t_fft * 1e3:.1f} ms "
          f"({t_fft / t_it:.0%} of the iteration)")


if __name__ == "__main__":
    main()
