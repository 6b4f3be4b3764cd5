"""``make demo`` / ``mrtl demo``: the single-coil transfer study at small scale on the bundled data.

The preset is :meth:`TransferConfig.small` with one seed instead of three (64x64 images;
cascades of 3 subnetworks x 16 channels pretrained on 128 natural, 78 T1 and 128 (synthetic)
T2 images, fine-tuned on 20 T1 slices, at R = 4 and 8, every epoch, learning rate and CS
parameter chosen on the 12 T1 validation slices; CS and a from-scratch baseline on the same 24
T1 test slices and test masks). It prints our table beside the paper's with the headline
numbers (:func:`mrtl.experiments.compare`), the headline claims with their intervals (over
slices only: one seed cannot show the seed-to-seed variation, which the checked-in three-seed
results do), how long it took and where the files went.
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
    cfg = (TransferConfig.tiny if quick else TransferConfig.small)(device=device, output_dir=str(out), n_seeds=1)
    print(f"mrtl demo: single-coil transfer, {cfg.size}x{cfg.size}, sources {list(cfg.sources)} -> {list(cfg.targets)}, "
          f"R {list(cfg.R_list)}, Ntrain {cfg.n_train}, Ntune {cfg.n_tune}, {cfg.n_subnets}x{cfg.width} ch, "
          f"at most {cfg.epochs} epochs/subnet and {cfg.ft_epochs} fine-tuning epochs (early stopping on validation), "
          f"seed {cfg.seed}", flush=True)
    t0 = time.perf_counter()
    result = single_coil_transfer(cfg)
    comp = compare(result.table)
    print()
    print(comp)
    if len(result.claims):
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_colwidth", 70):
            print("\nHeadline claims (paired differences, 95% bootstrap interval over the test slices of this one seed)")
            print(result.claims[["claim", "estimate", "ci_low", "ci_high", "verdict"]].round(2).to_string(index=False))
    print(f"\nmrtl demo: {time.perf_counter() - t0:.0f} s; results and figure in {out}")
    for k, v in result.paths.items():
        print(f"  {k}: {v}")
    return result, comp
