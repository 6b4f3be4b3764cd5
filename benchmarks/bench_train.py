"""Training and inference speed of the cascade at the paper's size (5 subnetworks x 64 channels,
256x256), on CPU and, when available, CUDA (bf16 autocast, channels_last, data on the GPU,
cached prefixes). Prints a table and the projected time of the paper's full protocol.

Usage: python benchmarks/bench_train.py [--size 256] [--cpu-steps 2] [--cpu-batch 2] [--gpu-batch 50]

``--normalization`` instead measures what ``mrtl.train.reconstruct``'s input scaling costs on
held-out slices: a small cascade is trained on the bundled T1 training slices (mrtl.data
normalises each *reference* to a 99th percentile of 1), then the T1 test slices, at an arbitrary
k-space scale, are reconstructed with (a) the old rule (zero-filled 99th percentile -> 1),
(b) the default rule (zero-filled 99th percentile -> the training set's median, saved in the
checkpoint) and (c) the training scale itself (the oracle: reference 99th percentile = 1).

``--recon-memory`` measures the peak resident memory (RSS) of ``mrtl reconstruct`` on 2000
single-coil 64x64 slices (65.5 MB of complex64 k-space; a 3 x 16-channel cascade), each run in
a fresh process: the streaming command (batches of ``--recon-batch`` slices), and the
whole-array path it replaced (load everything, one ``reconstruct`` call, ``numpy.save``),
against a process that only imports mrtl and loads the model.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from mrtl.fft import fft2c, ifft2c
from mrtl.models import Cascade, conv_flops
from mrtl.train import hybrid_loss

PROTOCOL = dict(n_subnets=5, epochs=20, n_train=4000, ft_epochs=100, n_tune=100)


def _data(B, H, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, H, H, generator=g).to(torch.complex64)
    mask = torch.rand(B, H, H, generator=g) < 0.25
    k = fft2c(x) * mask
    return ifft2c(k).to(device), k.to(device), mask.to(device), x.to(device)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(device, H, batch, steps, infer_batches, amp):
    model = Cascade(5, width=64, depth=4, seed=0).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        model.use_amp(amp)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.cuda.reset_peak_memory_stats()
    x_u, k, m, ref = _data(batch, H, device)
    rows = []
    fl_sub = conv_flops(model, H, H) / model.n_subnets  # forward FLOPs of one subnetwork per image
    # training, one stage at a time (prefix cached: the input is the cached state)
    for p in (1, model.n_subnets):
        params = model.stage_parameters(p)
        opt = torch.optim.Adam(params, lr=1e-4, weight_decay=2e-6)
        state = x_u
        for q in model.parameters():
            q.requires_grad_(False)
        for q in params:
            q.requires_grad_(True)
        def step():
            out = model.output(model.forward_stage(p, state, k, m, validate=False))
            loss = hybrid_loss(out, ref)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step(); _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        dt = (time.perf_counter() - t) / steps
        ips = batch / dt
        rows.append((f"train stage {p}", f"batch {batch}", f"{ips:.1f} img/s", f"{3 * fl_sub * ips / 1e12:.2f} TFLOP/s"))
    stage_ips = ips
    # fine-tuning: end to end through all 5 subnetworks
    for q in model.parameters():
        q.requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    def ft_step():
        loss = hybrid_loss(model(x_u, k, m), ref)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    ft_step(); _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        ft_step()
    _sync(device)
    ft_ips = batch / ((time.perf_counter() - t) / steps)
    rows.append(("fine-tune (all 5)", f"batch {batch}", f"{ft_ips:.1f} img/s", f"{3 * 5 * fl_sub * ft_ips / 1e12:.2f} TFLOP/s"))
    # inference
    model.eval()
    for B in infer_batches:
        xi, ki, mi, _ = _data(B, H, device)
        with torch.no_grad():
            model(xi, ki, mi); _sync(device)
            n = 3 if device.type == "cuda" else 1
            t = time.perf_counter()
            for _ in range(n):
                model(xi, ki, mi)
            _sync(device)
        dt = (time.perf_counter() - t) / n
        rows.append(("inference", f"batch {B}", f"{1e3 * dt / B:.2f} ms/slice ({B / dt:.0f} slices/s)",
                     f"{5 * fl_sub * B / dt / 1e12:.2f} TFLOP/s"))
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows.append(("peak memory", "", f"{peak:.2f} GiB", ""))
    P = PROTOCOL
    t_pre = P["n_subnets"] * P["epochs"] * P["n_train"] / stage_ips
    t_ft = P["ft_epochs"] * P["n_tune"] / ft_ips
    flops = P["n_subnets"] * P["epochs"] * P["n_train"] * 3 * fl_sub + P["ft_epochs"] * P["n_tune"] * 3 * 5 * fl_sub
    rows.append(("paper protocol", f"{flops / 1e15:.1f} PFLOP", f"projected {(t_pre + t_ft) / 60:.1f} min",
                 f"(pretrain {t_pre / 60:.1f} + fine-tune {t_ft / 60:.1f} min)"))
    return rows, fl_sub


def normalization_study(size=64, accelerations=(4, 8), epochs=3, n_subnets=3, width=16, depth=3):
    """PSNR on the bundled T1 test slices of three input scalings (see the module docstring)."""
    from mrtl.data import UndersampledDataset, bundled
    from mrtl.masks import MaskBank
    from mrtl.metrics import psnr
    from mrtl.train import as_train_data, reconstruct, train_sequential

    rows = []
    for R in accelerations:
        def ds(split, bank_split):
            return UndersampledDataset(bundled("t1", split, size=size), MaskBank(R, (size, size), n=100, seed=0, split=bank_split), seed=0)

        t0 = time.perf_counter()
        model = Cascade(n_subnets, width=width, depth=depth, seed=0)
        train_sequential(model, ds("train", "train"), ds("val", "test"), epochs_per_subnet=epochs, lr=1e-3, batch_size=8,
                         device="cpu", progress_bar=False)
        test = as_train_data(ds("test", "test"))
        ref = test.reference
        k_user = test.kspace * 1234.5  # a scanner's arbitrary scale
        res = {}
        res["training scale (oracle)"] = reconstruct(model, test.kspace, test.mask, normalize=False)
        trained_p99 = model.input_p99
        model.input_p99 = None  # the old rule: zero-filled 99th percentile -> 1
        res["old: zero-filled p99 -> 1"] = reconstruct(model, k_user, test.mask) / 1234.5
        model.input_p99 = trained_p99
        res[f"default: zero-filled p99 -> {trained_p99:.3f}"] = reconstruct(model, k_user, test.mask) / 1234.5
        base = psnr(res["training scale (oracle)"], ref=ref)
        for name, out in res.items():
            p = psnr(out, ref=ref)
            rows.append((f"R={R}", name, f"{float(p.mean()):.2f} dB", f"{float((p - base).mean()):+.2f} dB"))
        rows.append((f"R={R}", f"({len(test)} test slices, trained in {time.perf_counter() - t0:.0f} s)", "", ""))
    print(f"\n## reconstruct() input scaling, bundled T1 {size}x{size}, cascade {n_subnets} x {width} ch x {depth}, "
          f"{epochs} epochs/stage")
    print(f"| {'R':<5} | {'scaling':<40} | {'mean PSNR':<10} | {'vs oracle':<10} |")
    print(f"|{'-' * 7}|{'-' * 42}|{'-' * 12}|{'-' * 12}|")
    for r in rows:
        print(f"| {r[0]:<5} | {r[1]:<40} | {r[2]:<10} | {r[3]:<10} |")


_RSS = "import resource; print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"

_WHOLE = """
import io, sys, numpy as np, torch
from mrtl.train import load_model, reconstruct
d = sys.argv[1]
model = load_model(d + '/model.pt')
k = torch.from_numpy(np.ascontiguousarray(np.load(d + '/k.npy')))
mask = torch.from_numpy(np.ascontiguousarray(np.load(d + '/m.npy')))
out = reconstruct(model, k.to(torch.complex64), mask, batch_size=int(sys.argv[2]))
buf = io.BytesIO(); np.save(buf, out.numpy()); open(d + '/whole.npy', 'wb').write(buf.getvalue())
"""

_STREAM = """
import sys
from mrtl.cli import main
d = sys.argv[1]
assert main(['reconstruct', '--ckpt', d + '/model.pt', '--input', d + '/k.npy', '--mask', d + '/m.npy',
             '--output', d + '/streamed.npy', '--batch-size', sys.argv[2]]) == 0
"""

_BASE = """
import sys
import mrtl.cli, mrtl.train, mrtl.data
mrtl.train.load_model(sys.argv[1] + '/model.pt')
"""


def recon_memory(n=2000, size=64, batch=32):
    """Peak RSS of reconstructing ``n`` slices, streamed vs whole-array (fresh processes)."""
    import os
    import subprocess
    import sys
    import tempfile

    import numpy as np

    from mrtl.train import save_model

    rows = []
    with tempfile.TemporaryDirectory() as d:
        g = torch.Generator().manual_seed(0)
        mask = torch.rand(size, size, generator=g) < 0.3
        k = np.empty((n, size, size), np.complex64)
        for s in range(0, n, 250):  # smooth random images, undersampled
            x = torch.nn.functional.avg_pool2d(torch.rand(min(250, n - s), 1, size + 3, size + 3, generator=g), 4, 1)[:, 0]
            k[s : s + 250] = (fft2c(x.to(torch.complex64)) * mask).numpy()
        np.save(f"{d}/k.npy", k)
        np.save(f"{d}/m.npy", np.broadcast_to(mask.numpy(), (n, size, size)))  # one mask per slice, as a scanner writes
        del k
        model = Cascade(3, width=16, depth=3, seed=0)
        model.image_shape = (size, size)
        save_model(model, f"{d}/model.pt")
        env = dict(os.environ, MRTL_QUIET="1")
        peaks = {}
        for name, code in (("import mrtl + load model (baseline)", _BASE), ("whole array (before)", _WHOLE),
                           (f"streamed, batch {batch} (mrtl reconstruct)", _STREAM)):
            t = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", code + "\n" + _RSS, d, str(batch)], capture_output=True, text=True, env=env)
            if r.returncode != 0:
                raise RuntimeError(f"{name} failed: {r.stderr[-2000:]}")
            kb = int(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("PEAK_RSS_KB")))
            peaks[name] = kb / 1024
            rows.append((name, f"{kb / 1024:.0f} MB", f"{time.perf_counter() - t:.1f} s"))
        same = np.allclose(np.load(f"{d}/whole.npy"), np.load(f"{d}/streamed.npy"), atol=1e-5)
        mb_in = n * size * size * 8 / 2**20
    base = next(iter(peaks.values()))
    print(f"\n## mrtl reconstruct peak memory: {n} slices of {size}x{size} ({mb_in:.1f} MB complex64 input), "
          f"cascade 3 x 16 ch x 3, CPU; outputs equal: {same}")
    print(f"| {'run (fresh process)':<40} | {'peak RSS':<9} | {'above baseline':<26} | {'wall':<7} |")
    print(f"|{'-' * 42}|{'-' * 11}|{'-' * 28}|{'-' * 9}|")
    for (name, rss, wall), peak in zip(rows, peaks.values()):
        extra = f"{peak - base:.0f} MB ({(peak - base) / mb_in:.1f} x input)" if peak is not base else ""
        print(f"| {name:<40} | {rss:<9} | {extra:<26} | {wall:<7} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cpu-steps", type=int, default=2)
    ap.add_argument("--cpu-batch", type=int, default=2)
    ap.add_argument("--gpu-steps", type=int, default=10)
    ap.add_argument("--gpu-batch", type=int, default=50)
    ap.add_argument("--no-cpu", action="store_true")
    ap.add_argument("--normalization", action="store_true", help="measure reconstruct()'s input scaling (see above)")
    ap.add_argument("--recon-memory", action="store_true", help="peak RSS of mrtl reconstruct on 2000 slices (see above)")
    ap.add_argument("--recon-batch", type=int, default=32, help="batch size for --recon-memory")
    args = ap.parse_args()
    if args.recon_memory:
        recon_memory(batch=args.recon_batch)
        return
    if args.normalization:
        normalization_study(size=64 if args.size == 256 else args.size)
        return
    devs = [] if args.no_cpu else [(torch.device("cpu"), args.cpu_batch, args.cpu_steps, (1, 4), False)]
    if torch.cuda.is_available():
        devs.append((torch.device("cuda"), args.gpu_batch, args.gpu_steps, (1, 32, 256), True))
    for dev, b, s, ib, amp in devs:
        name = torch.cuda.get_device_name() if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
        rows, fl = bench(dev, args.size, b, s, ib, amp)
        print(f"\n## {name}, {args.size}x{args.size}, cascade 5 x 64 ch, {fl / 1e9:.1f} GFLOP/subnet/image forward"
              f"{', bf16 autocast, channels_last' if amp else ''}")
        print(f"| {'what':<18} | {'setting':<14} | {'result':<34} | {'achieved':<36} |")
        print(f"|{'-' * 20}|{'-' * 16}|{'-' * 36}|{'-' * 38}|")
        for r in rows:
            print(f"| {r[0]:<18} | {r[1]:<14} | {r[2]:<34} | {r[3]:<36} |")


if __name__ == "__main__":
    main()
