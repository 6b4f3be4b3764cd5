"""torchrun support: process group, per-rank device, barrier (``WORLD_SIZE > 1``).

Under ``torchrun`` the trainable stage is wrapped in DistributedDataParallel (NCCL on CUDA, gloo
on CPU, ``MRTL_DDP_BACKEND=gloo`` forces gloo). ``batch_size`` is the *global* batch: each batch
is split across ranks and the loss scaled so that the averaged gradient equals the
single-process full-batch gradient. Checkpoints and logs are written by rank 0.
"""

from __future__ import annotations

import os

import torch

__all__ = ["dist_info", "ddp_device", "barrier"]


def dist_info() -> tuple[int, int]:
    """(rank, world_size), initialising the process group from torchrun's env vars if needed."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("MRTL_DDP_BACKEND", "") != "gloo" else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def ddp_device(device: torch.device) -> torch.device:
    """The CUDA device of this rank (``LOCAL_RANK``) under torchrun; ``device`` otherwise."""
    if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1 and device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return device


def barrier(world: int) -> None:
    """Wait for every rank (no-op in a single process)."""
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
