"""``mrtl reproduce``, ``mrtl compare`` and ``mrtl demo``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_commands"]


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _reproduce(args: argparse.Namespace) -> int:
    from .runner import NOTEBOOKS, check_parameters, parse_parameters, repo_root, require_book_extra, run_study

    require_book_extra()  # papermill/jupytext: the mrtl[book] extra
    repo_root(required=True)  # the study notebooks live in the repository
    params = parse_parameters(args.parameters)
    studies = list(NOTEBOOKS) if args.study == "all" else [args.study]
    if args.output is not None and len(studies) > 1:
        raise ValueError("--output: give one --study (or use --results-root for all)")
    for study in studies:  # every study's parameters are checked before any of them runs
        check_parameters(study, args.scale, params)
    for study in studies:
        print(f"mrtl reproduce: {study} at scale {args.scale} ...", flush=True)
        final = run_study(study, args.scale, params, results_root=args.results_root, run_id=args.run_id,
                          resume=args.resume, output=args.output, log_output=args.log_output, timeout=args.timeout,
                          overwrite=args.overwrite, keep_checkpoints=args.keep_checkpoints)
        print(f"mrtl reproduce: {study} done -> {final}")
        csv = final / f"{study}.csv"
        if study == "efficiency":  # beyond the paper: no table of the paper to compare with
            print(f"claims with intervals and verdicts: {final / 'efficiency_claims.csv'}")
        elif csv.exists():
            from .compare import compare

            try:
                print(compare(csv))
            except Exception as exc:  # the run is done and saved; a failed comparison must not hide that
                print(f"(no comparison with the paper: {' '.join(str(exc).split())[:300]})")
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .compare import compare

    comp = compare(args.results, args.paper)
    print(comp)
    if args.output:
        comp.table.to_csv(args.output, index=False, float_format="%.4f")
        print(f"side-by-side table written to {args.output}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import demo

    demo(output_dir=args.output, device=args.device, quick=args.quick)
    return 0


def add_commands(sub) -> None:
    """Register ``reproduce``, ``compare`` and ``demo`` on the ``mrtl`` parser."""
    p = sub.add_parser("reproduce", help="run study notebooks through papermill (results/<study>/<run-id>/)",
                       description="Run the paper's studies (book/experiments/*.md) through papermill and store "
                                   "the executed notebook, results, figures and a manifest under "
                                   "results/<study>/<run-id>/.")
    p.add_argument("--study", default="all", choices=["transfer", "sweep", "multicoil", "efficiency", "all"])
    p.add_argument("--scale", default="small", choices=["tiny", "small", "full"])
    p.add_argument("-p", "--parameter", dest="parameters", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="notebook parameter (YAML value), e.g. -p R_list '[4, 8]' -p device cuda")
    p.add_argument("--run-id", default=None, help="name of the run folder (default <scale>-<timestamp>)")
    p.add_argument("--resume", action="store_true",
                   help="continue an unfinished run: --run-id, or else the latest of this study and scale "
                        "(finished checkpoints and sweep cells are reused)")
    p.add_argument("--output", default=None, help="final folder instead of results/<study>/<run-id> "
                                                  "(e.g. results/small/transfer); must be new, empty or a run folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished run at the destination (only files that run wrote; anything else "
                        "there makes it refuse)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the model checkpoints in the run folder (deleted after success by default)")
    p.add_argument("--results-root", default=None, help="root of the results tree (default: the repository's results/)")
    p.add_argument("--log-output", action="store_true", help="stream the notebook's output")
    p.add_argument("--timeout", type=_positive_int, default=None, help="per-cell timeout in seconds")
    p.set_defaults(func=_reproduce)

    c = sub.add_parser("compare", help="our results beside the paper's, with the headline numbers",
                       description="Print a long-format results CSV beside the paper's table "
                                   "(reference/paper_tables.csv by default) and the paper's headline numbers "
                                   "computed on both.")
    c.add_argument("results", help="results CSV (long format, e.g. results/small/transfer/transfer.csv)")
    c.add_argument("paper", nargs="?", default=None, help="paper table CSV (default reference/paper_tables.csv)")
    c.add_argument("--output", default=None, help="also write the side-by-side table as CSV")
    c.set_defaults(func=_compare)

    d = sub.add_parser("demo", help="single-coil transfer study at small scale on the bundled data (a few minutes)",
                       description="Pretrain cascades on natural, T1 and T2 images, fine-tune on 20 T1 slices, "
                                   "compare with CS and a from-scratch baseline at R = 4 and 8; print the table "
                                   "beside the paper's and write a figure.")
    d.add_argument("--output", default=None, help="output folder (default runs/demo)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--quick", action="store_true", help="tiny preset (seconds; numbers meaningless), to check the install")
    d.set_defaults(func=_demo)
