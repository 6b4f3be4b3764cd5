"""DistributedDataParallel: two gloo processes on CPU train the same cascade; their weights must
agree with each other and with a single-process run on the full (global) batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mrtl.fft import fft2c, ifft2c
from mrtl.models import Cascade
from mrtl.train import TrainData, finetune, train_sequential

KW = dict(lr=1e-3, batch_size=4, progress_bar=False, device="cpu", seed=0)


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 19, 19, generator=g), 4, 1)[:, 0].to(torch.complex64)
    mask = torch.rand(n, 16, 16, generator=g) < 0.3
    mask[:, 6:10, 6:10] = True
    k = fft2c(x) * mask
    return TrainData(ifft2c(k), k, mask, x)


def _train(out_dir=None):
    torch.set_num_threads(1)
    m = Cascade(2, width=4, depth=1, seed=0)
    tr, va = _data(10, 0), _data(4, 1)  # 10 samples: the last batch of 2 splits 1 + 1
    train_sequential(m, tr, va, epochs_per_subnet=2, out_dir=out_dir, **KW)
    finetune(m, tr, va, epochs=1, out_dir=out_dir, **KW)
    return m


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), MRTL_QUIET="1")
    try:
        m = _train(out_dir=os.path.join(out, "run"))
        torch.save(m.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo not available")
def test_ddp_two_gloo_ranks_agree_with_single_process(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    # rank 0 alone wrote the checkpoints and logs
    assert (tmp_path / "run" / "best_finetune.pt").is_file() and (tmp_path / "run" / "log_pretrain.csv").is_file()
    # equal to one process on the full batch up to float32 summation order, which Adam's
    # normalisation amplifies for near-zero gradients (bounded by a few steps of size lr = 1e-3)
    single = _train().state_dict()
    diff = max(float((s0[k] - single[k]).abs().max()) for k in s0)
    assert diff < 2e-3, diff

