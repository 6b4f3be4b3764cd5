"""Are the small studies' validation grids wide enough?

The small-scale studies choose every learning rate and the CS parameters on validation slices
from a grid (``mrtl.presets.SMALL_LR_GRID_PRETRAIN``, ``SMALL_LR_GRID``, ``TransferConfig``'s
``cs_lam_grid`` x ``cs_iter_grid``). Most choices landed on the edge of their grid (the highest
learning rate, 3e-3; CS's most iterations, 300), so the best value may lie beyond it. This
script repeats the transfer study's seed-0, R = 4 choices on its own validation slices (never
the test slices) at the chosen value and at the next value beyond the edge:

* L1-wavelet CS on the 12 T1 validation slices: the best lambda of the grid at 300 iterations
  (the chosen setting) and at 1000;
* the natural-image pretraining (its natural validation images), its fine-tuning on the 20 T1
  tuning slices, and the from-scratch baseline: learning rate 3e-3 (chosen) and 1e-2.

The runs at the chosen values are the study's own (same seeds, data, masks), so their
validation PSNR must equal the one recorded in ``results/small/transfer/transfer_selections.csv``
(printed alongside as a check). A beyond-edge value that scores higher on validation means the
grid was too narrow for that choice.

Usage: ``python benchmarks/grid_edges.py [--out results/defaults/grid_edges.csv]`` (about
10 minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def _recorded(network: str) -> dict:
    """The validation PSNR per learning rate the checked-in transfer study recorded (seed 0, R 4)."""
    f = ROOT / "results/small/transfer/transfer_selections.csv"
    if not f.is_file():
        return {}
    d = pd.read_csv(f)
    d = d[(d.seed == 0) & (d.R == 4) & (d.network == network)]
    if d.empty:
        return {}
    r = d.iloc[0]
    return dict(zip(json.loads(r.grid), json.loads(r.val_psnr)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "results/defaults/grid_edges.csv"))
    ap.add_argument("--beyond-lr", type=float, default=1e-2, help="the learning rate beyond the grid's edge")
    ap.add_argument("--beyond-iter", type=int, default=1000, help="CS iterations beyond the grid's edge")
    args = ap.parse_args(argv)

    import mrtl.experiments._common as C
    from mrtl.experiments.config import TransferConfig
    from mrtl.experiments.results import method_name
    from mrtl.metrics import psnr
    from mrtl.recon import cs_l1_wavelet

    cfg = TransferConfig.small().replace(seed=0)
    s, R, target, source = 0, 4, "t1", "natural"
    si = list(cfg.sources).index(source)
    C.setup(cfg)
    rows = []

    def add(what, grid, chosen, beyond, p_chosen, p_beyond, recorded=None, secs=0.0):
        rows.append(dict(setting=what, grid=grid, chosen=chosen, beyond_edge=beyond, val_psnr_chosen=round(p_chosen, 3),
                         val_psnr_beyond=round(p_beyond, 3), recorded_val_psnr_chosen=recorded,
                         beyond_minus_chosen_dB=round(p_beyond - p_chosen, 3), seconds=round(secs, 1)))
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)

    with C.threads(cfg):
        val = C.undersampled(C.get_source(target, "val", cfg, cfg.n_val), R, cfg, "val", seed_offset=4000)
        tune = C.undersampled(C.get_source(target, "tune", cfg, cfg.n_tune), R, cfg, "tune", seed_offset=2000)
        t0 = time.perf_counter()
        best = {}
        for n_iter in (max(cfg.cs_iter_grid), args.beyond_iter):
            best[n_iter] = max(float(psnr(cs_l1_wavelet(val.kspace, val.mask, lam=lam, n_iter=n_iter).image,
                                          ref=val.reference).mean()) for lam in cfg.cs_lam_grid)
        add("CS iterations (best lambda of the grid)", list(cfg.cs_iter_grid), max(cfg.cs_iter_grid), args.beyond_iter,
            best[max(cfg.cs_iter_grid)], best[args.beyond_iter], secs=time.perf_counter() - t0)

        train = C.undersampled(C.get_source(source, "train", cfg, cfg.n_train), R, cfg, "train", seed_offset=3000 + si)
        sval = C.undersampled(C.get_source(source, "val", cfg, cfg.n_val), R, cfg, "val", seed_offset=4100 + si)
        m = method_name(source)
        lr_pre = max(cfg.lr_candidates("pretrain"))
        scores, models = {}, {}
        t0 = time.perf_counter()
        for lr in (lr_pre, args.beyond_lr):
            net = C.new_cascade(cfg, "single", seed=s + 10 * si + 1)
            models[lr], _, scores[lr] = C.pretrain(net, train, sval, cfg, None, seed=s + si, lr=lr)
        rec = _recorded(f"{m} pretraining").get(lr_pre)
        add("pretraining learning rate", list(cfg.lr_candidates("pretrain")), lr_pre, args.beyond_lr, scores[lr_pre],
            scores[args.beyond_lr], rec, time.perf_counter() - t0)

        lr_ft = max(cfg.lr_candidates("finetune"))
        for kind, label, start in (("finetune", f"{m} fine-tuning", lambda: C.trained_copy(models[lr_pre])),
                                   ("scratch", "Scratch", lambda: C.new_cascade(cfg, "single", seed=s + 999))):
            t0 = time.perf_counter()
            sc = {}
            for lr in (lr_ft, args.beyond_lr):
                seed = s + 100 + si if kind == "finetune" else s + 500
                _, _, sc[lr] = C.finetune(start(), tune, val, cfg, None, seed=seed, lr=lr)
            add(f"{kind} learning rate", list(cfg.lr_candidates(kind)), lr_ft, args.beyond_lr, sc[lr_ft],
                sc[args.beyond_lr], _recorded(label).get(lr_ft), time.perf_counter() - t0)

    table = pd.DataFrame(rows)
    print("\nValidation PSNR (dB) at the chosen edge value and beyond it (seed 0, R = 4, transfer study, small scale):")
    print(table.to_string(index=False))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    table.to_csv(tmp, index=False)
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
