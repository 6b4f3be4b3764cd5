"""GPU smoke test of the CUDA path: train one stage, fine-tune, reconstruct, and report slices/s.

Runs the library's own code path on CUDA as training would (data on the device, bf16 autocast
of the subnetworks with ``amp``, TF32, cached prefixes), on random smooth images at 256x256 with
the paper's cascade (5 subnetworks x 64 channels x 4 layers). It checks that every step finishes
with finite weights and images, that the reconstruction is data-consistent, and prints a table.

Usage:
    python benchmarks/gpu_smoke.py                 # CUDA, 256x256, paper cascade (refuses without CUDA)
    python benchmarks/gpu_smoke.py --device cpu --tiny   # the same steps on CPU at 32x32 (known to work)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch

from mrtl.fft import fft2c, ifft2c
from mrtl.models import Cascade
from mrtl.train import TrainData, finetune, load_model, reconstruct, train_sequential


def _data(n, size, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, size + 7, size + 7, generator=g), 8, 1)[:, 0]
    x = (x / x.flatten(1).quantile(0.99, dim=1)[:, None, None]).to(torch.complex64)
    mask = torch.rand(n, size, size, generator=g) < 0.25
    c = size // 2
    mask[:, c - size // 16 : c + size // 16, c - size // 16 : c + size // 16] = True
    k = fft2c(x) * mask
    return TrainData(ifft2c(k), k, mask, x).to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    ap.add_argument("--tiny", action="store_true", help="32x32 images, a 2 x 8-channel cascade, few samples (for CPU)")
    ap.add_argument("--no-amp", action="store_true", help="float32 subnetworks instead of bf16 autocast")
    ap.add_argument("--n-train", type=int, default=None, help="training images (default 200; tiny: 16)")
    ap.add_argument("--n-recon", type=int, default=None, help="slices to reconstruct for slices/s (default 500; tiny: 32)")
    args = ap.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        print(f"gpu_smoke: --device must be 'cuda' or 'cpu', got {args.device!r}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: no CUDA GPU is available on this machine, so the CUDA path cannot be tested here. "
              "Run it on a machine with a GPU, or try the same steps on CPU: "
              "python benchmarks/gpu_smoke.py --device cpu --tiny", file=sys.stderr)
        return 1
    device = torch.device(args.device)
    size = 32 if args.tiny else 256
    arch = dict(n_subnets=2, width=8, depth=1) if args.tiny else dict(n_subnets=5, width=64, depth=4)
    n_train = args.n_train or (16 if args.tiny else 200)
    n_recon = args.n_recon or (32 if args.tiny else 500)
    bs = 8 if args.tiny else 50
    amp = not args.no_amp
    rows = []
    train, val = _data(n_train, size, 0, device), _data(max(4, n_train // 4), size, 1, device)
    model = Cascade(**arch, seed=0)
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        res = train_sequential(model, train, val, epochs_per_subnet=1, stages=[1], lr=1e-4, batch_size=bs,
                               device=device, amp=amp, out_dir=f"{out}/pre", progress_bar=False)
        _sync(device)
        dt = time.perf_counter() - t
        rows.append(("train stage 1 (1 epoch)", f"{n_train / dt:.1f} img/s", f"val PSNR {res['history'][-1]['val_psnr']:.2f} dB"))
        t = time.perf_counter()
        res = finetune(model, train, val, epochs=1, lr=1e-5, batch_size=bs, device=device, amp=amp,
                       out_dir=f"{out}/ft", progress_bar=False)
        _sync(device)
        dt = time.perf_counter() - t
        rows.append(("fine-tune (1 epoch)", f"{n_train / dt:.1f} img/s", f"val PSNR {res['history'][-1]['val_psnr']:.2f} dB"))
        model = load_model(f"{out}/ft/best_finetune.pt")  # the checkpoint round trip too
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        print(f"gpu_smoke: FAILED: non-finite weights after training: {bad[:3]}", file=sys.stderr)
        return 1
    test = _data(n_recon, size, 2, "cpu")
    reconstruct(model, test.kspace[:bs], test.mask[:bs], batch_size=bs, device=device, amp=amp)  # warm-up
    _sync(device)
    t = time.perf_counter()
    out = reconstruct(model, test.kspace, test.mask, batch_size=bs, device=device, amp=amp)
    _sync(device)
    dt = time.perf_counter() - t
    if not bool(torch.isfinite(out).all()):
        print("gpu_smoke: FAILED: the reconstruction holds NaN/Inf values", file=sys.stderr)
        return 1
    dc_err = float((fft2c(out)[test.mask] - test.kspace[test.mask]).abs().max() / test.kspace.abs().max())
    if dc_err > 1e-3:
        print(f"gpu_smoke: FAILED: reconstruction not data-consistent (relative error {dc_err:.2e})", file=sys.stderr)
        return 1
    rows.append(("reconstruct", f"{n_recon / dt:.1f} slices/s", f"batch {bs}, DC error {dc_err:.1e}"))
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"\n## gpu_smoke on {name}: {size}x{size}, cascade {arch['n_subnets']} x {arch['width']} ch x {arch['depth']}, "
          f"{'bf16 autocast' if amp else 'float32'}")
    print(f"| {'step':<24} | {'speed':<18} | {'check':<32} |")
    print(f"|{'-' * 26}|{'-' * 20}|{'-' * 34}|")
    for r in rows:
        print(f"| {r[0]:<24} | {r[1]:<18} | {r[2]:<32} |")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print("gpu_smoke: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
