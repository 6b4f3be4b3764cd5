"""The paper's studies as functions (Dar, Özbey & Çukur, MRM 2020).

- :func:`single_coil_transfer` (Table 1, Supp. Tables 1-2): natural / T1 / T2 pretrained
  cascades, raw and fine-tuned, with CS and a from-scratch baseline, on T1 (and T2) test images;
- :func:`ntune_sweep` (Figs. 4-5): PSNR against Ntune for several Ntrain, the in-domain
  reference, the from-scratch baseline and Ntune at convergence (0.05% rule);
- :func:`multicoil_transfer` (Table 2, Figs. 6-7): synthetic multi-coil natural images ->
  multi-coil T1, against a T1-trained network and L1-SPIRiT;
- :func:`data_efficiency` (beyond the paper): test PSNR against Ntune for supervised
  fine-tuning, SSDU, PEFT, from scratch, ZS-SSL and CS (:mod:`mrtl.experiments.efficiency`).

Each takes a config (:mod:`mrtl.experiments.config`, presets ``tiny``/``small``/``full``),
returns a :class:`StudyResult` and, when ``config.output_dir`` is set, writes the long-format
CSV/JSON, per-image metrics, paired differences and a figure there. :func:`compare` puts a
result beside the paper's table; :func:`run_study` runs a notebook through papermill.
"""

from __future__ import annotations

from pathlib import Path

from .compare import (PAPER_HEADLINES, Comparison, compare, convergence_ntune, format_comparison, headline_numbers,
                      load_paper_table, side_by_side, sweep_convergence)
from .config import EfficiencyConfig, MulticoilConfig, StudyConfig, SweepConfig, TransferConfig, make_config
from .plots import plot_curves, plot_multicoil, plot_sweep, plot_transfer
from .results import (COLUMNS, StudyResult, bootstrap_ci, claim_table, paired_differences, read_results, seed_table,
                      stop_epochs, summarize_records, verdict, write_results)
from .runner import collect_manifest, repo_root, run_study

__all__ = [
    "single_coil_transfer", "ntune_sweep", "multicoil_transfer", "data_efficiency", "run", "load_or_run", "checked_in_dir",
    "StudyConfig", "TransferConfig", "SweepConfig", "MulticoilConfig", "EfficiencyConfig", "make_config",
    "StudyResult", "COLUMNS", "summarize_records", "paired_differences", "write_results", "read_results",
    "compare", "Comparison", "format_comparison", "headline_numbers", "side_by_side", "sweep_convergence",
    "convergence_ntune", "load_paper_table", "PAPER_HEADLINES",
    "plot_transfer", "plot_sweep", "plot_multicoil", "plot_curves", "run_study", "collect_manifest", "repo_root",
    "bootstrap_ci", "claim_table", "verdict", "seed_table", "stop_epochs",
]


def __getattr__(name):  # the studies import torch-heavy modules lazily
    if name == "single_coil_transfer":
        from .transfer import single_coil_transfer

        return single_coil_transfer
    if name == "ntune_sweep":
        from .sweep import ntune_sweep

        return ntune_sweep
    if name == "multicoil_transfer":
        from .multicoil import multicoil_transfer

        return multicoil_transfer
    if name == "data_efficiency":
        from .efficiency import data_efficiency

        return data_efficiency
    raise AttributeError(f"module 'mrtl.experiments' has no attribute {name!r}")


def run(cfg: StudyConfig) -> StudyResult:
    """Run the study that ``cfg`` configures (TransferConfig -> single_coil_transfer, ...)."""
    if isinstance(cfg, TransferConfig):
        from .transfer import single_coil_transfer as f
    elif isinstance(cfg, SweepConfig):
        from .sweep import ntune_sweep as f
    elif isinstance(cfg, MulticoilConfig):
        from .multicoil import multicoil_transfer as f
    elif isinstance(cfg, EfficiencyConfig):
        from .efficiency import data_efficiency as f
    else:
        raise TypeError(f"cfg: expected a TransferConfig, SweepConfig, MulticoilConfig or EfficiencyConfig, got {type(cfg).__name__}")
    return f(cfg)


def checked_in_dir(study: str) -> Path:
    """``results/small/<study>`` of the repository (the checked-in small-scale results)."""
    return repo_root() / "results" / "small" / study


def load_or_run(cfg: StudyConfig, recompute: bool = False) -> StudyResult:
    """The checked-in small-scale results when they exist and ``recompute`` is False; else run.

    The book executes the study notebooks with ``recompute=False`` (seconds: it reads
    ``results/small/<study>/``); ``mrtl reproduce`` passes ``recompute=True``. Only the ``small``
    scale has checked-in results; other scales always run.
    """
    d = checked_in_dir(cfg.study)
    if not recompute and cfg.scale == "small" and (d / f"{cfg.study}.csv").exists():
        res = read_results(d, cfg.study)
        res.extra.setdefault("loaded_from", d.relative_to(repo_root()).as_posix())
        return res
    return run(cfg)
