"""``make demo`` / ``mrtl demo``: the single-coil transfer study at small scale on the bundled data.

The preset is :meth:`TransferConfig.small` (64x64 images; cascades of 3 subnetworks x 32
channels pretrained on 128 natural, 78 T1 and 128 (synthetic) T2 images, 3 epochs per
subnetwork, fine-tuned for 30 epochs at lr 1e-3 on 20 T1 slices, at R = 4 and 8; CS and a from-scratch baseline on
the same 24 T1 test slices and test masks). It prints our table beside the paper's with
the headline numbers (:func:`mrtl.experiments.compare`) and writes a figure.
"""

from __future__ import annotations

import time
from pathlib import Path

from .compare import compare
from .config import TransferConfig

__all__ = ["demo"]


def demo(output_dir: str | Path | None = None, device: str = "cpu", quick: bool = False):
    """Run the demo and print the comparison.

    Args:
        output_dir: where results and the figure go (default ``runs/demo`` in the repository).
        device: "cpu" or "cuda".
        quick: use the ``tiny`` preset (an install check; the numbers mean nothing).

    Returns:
        (StudyResult, Comparison).
    """
    from .runner import repo_root
    from .transfer import single_coil_transfer

    out = Path(output_dir) if output_dir is not None else repo_root() / "runs" / "demo"
    cfg = (TransferConfig.tiny if quick else TransferConfig.small)(device=device, output_dir=str(out))
    print(f"mrtl demo: single-coil transfer, {cfg.size}x{cfg.size}, sources {list(cfg.sources)} -> {list(cfg.targets)}, "
          f"R {list(cfg.R_list)}, Ntrain {cfg.n_train}, Ntune {cfg.n_tune}, {cfg.n_subnets}x{cfg.width} ch, "
          f"{cfg.epochs} epochs/subnet, {cfg.ft_epochs} fine-tuning epochs", flush=True)
    t0 = time.perf_counter()
    result = single_coil_transfer(cfg)
    comp = compare(result.table)
    print()
    print(comp)
    print(f"\nmrtl demo: {time.perf_counter() - t0:.0f} s; results and figure in {out}")
    for k, v in result.paths.items():
        print(f"  {k}: {v}")
    return result, comp
