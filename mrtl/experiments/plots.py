"""Figures of the studies (matplotlib; each function returns the Figure)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["plot_transfer", "plot_sweep", "plot_multicoil", "plot_curves", "save_figure"]

_COLORS = {"Natural-trained": "tab:orange", "T1-trained": "tab:blue", "T2-trained": "tab:green",
           "PD-trained": "tab:olive", "T1synth-trained": "tab:cyan", "Scratch": "tab:gray", "CS": "tab:red",
           "SPIRiT": "tab:purple", "Zero-filled": "k"}


def save_figure(fig, path: str | Path) -> str:
    """Save ``fig`` as PNG (dpi 110) atomically; returns the path."""
    import io

    from ..utils import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return str(path)


def plot_transfer(table: pd.DataFrame, paper: pd.DataFrame | None = None):
    """Bar chart of PSNR per method, raw and tuned, one panel per (table, R); paper values as markers.

    Args:
        table: long-format results of :func:`single_coil_transfer`.
        paper: the paper's table (optional): its PSNR for the same rows is drawn as black ticks.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    groups = list(table.groupby(["table", "R"], sort=True))
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.6), squeeze=False)
    for ax, ((tab, R), g) in zip(axes[0], groups):
        g = g.assign(label=g["method"].str.replace("-trained", "") + np.where(g["stage"] == "-", "", "\n" + g["stage"]))
        order = g.sort_values(["stage", "method"], key=lambda s: s.map({"raw": 0, "tuned": 1, "-": 2}).fillna(s) if s.name == "stage" else s)
        x = np.arange(len(order))
        colors = [_COLORS.get(m, "tab:brown") for m in order["method"]]
        hatch = ["//" if s == "raw" else "" for s in order["stage"]]
        # error bars: sd over seeds when there are several, else the std across test images
        err = order["psnr_sd_seeds"].fillna(0) if "psnr_sd_seeds" in order.columns and order["n_seeds"].max() > 1 \
            else order["psnr_std"]
        bars = ax.bar(x, order["psnr_mean"], yerr=err, color=colors, capsize=2, alpha=0.85)
        for b, h in zip(bars, hatch):
            b.set_hatch(h)
        if paper is not None:
            from .compare import METHOD_ALIASES

            pm = paper.set_index(["table", "R", "method", "stage"])["psnr_mean"]
            paper_vals = []
            for xi, (_, row) in zip(x, order.iterrows()):
                key = (tab, R, METHOD_ALIASES.get(row["method"], row["method"]), row["stage"])
                if key in pm.index:
                    ax.plot([xi - 0.35, xi + 0.35], [pm[key]] * 2, "k-", lw=2)
                    paper_vals.append(float(pm[key]))
        else:
            paper_vals = []
        lo = float((order["psnr_mean"] - err).min())
        hi = max([float((order["psnr_mean"] + err).max())] + paper_vals)  # keep the paper's ticks in view
        ax.set_ylim(max(0.0, lo - 2), hi + 1.5)
        ax.set_xticks(x, order["label"], fontsize=7, rotation=0)
        ax.set_title(f"table {tab}, test {g['test_domain'].iloc[0]}, R = {R}", fontsize=9)
        ax.set_ylabel("PSNR (dB)")
    if paper is not None:
        axes[0][0].plot([], [], "k-", lw=2, label="paper (256x256)")
        axes[0][0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Single-coil domain transfer (hatched: raw, plain: fine-tuned; bars: sd over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_sweep(table: pd.DataFrame, convergence: pd.DataFrame | None = None):
    """PSNR against Ntune for each Ntrain (Fig. 4), with the in-domain reference and the
    from-scratch baseline; one panel per R. Converged Ntune marked with a dot."""
    import matplotlib.pyplot as plt

    Rs = sorted(set(table["R"]))
    fig, axes = plt.subplots(1, len(Rs), figsize=(5 * len(Rs), 3.8), squeeze=False)
    for ax, R in zip(axes[0], Rs):
        g = table[table["R"] == R]
        dom = g["test_domain"].iloc[0]
        ref = g[g["method"] == f"{dom}-trained"].sort_values(["n_train", "n_tune"])
        if len(ref):
            ax.axhline(ref["psnr_mean"].iloc[-1], color="tab:blue", ls="--",
                       label=f"{dom}-trained (Ntrain {int(ref['n_train'].iloc[-1])}, Ntune {int(ref['n_tune'].iloc[-1])})")
        tr = g[~g["method"].isin([f"{dom}-trained", "Scratch"])]
        for (method, n_train), s in tr.groupby(["method", "n_train"]):
            s = s.sort_values("n_tune")
            line, = ax.plot(s["n_tune"], s["psnr_mean"], "o-", ms=4, label=f"{method}, Ntrain {n_train}")
            if convergence is not None and len(convergence):
                c = convergence[(convergence["R"] == R) & (convergence["n_train"] == n_train)]
                if len(c) and c["ntune_converged"].notna().all():
                    n_c = float(c["ntune_converged"].iloc[0])
                    y = s.set_index("n_tune")["psnr_mean"].get(n_c)
                    if y is not None:
                        ax.plot([n_c], [y], "o", ms=10, mfc="none", mec=line.get_color())
        scr = g[g["method"] == "Scratch"].sort_values("n_tune")
        if len(scr):
            ax.plot(scr["n_tune"], scr["psnr_mean"], "s:", color="tab:gray", ms=4, label="from scratch (Ntune only)")
        ax.set_xlabel("Ntune (fine-tuning images)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"test {dom}, R = {R}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("PSNR against Ntune (paper Fig. 4; circles: convergence by the 0.05% rule)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_multicoil(table: pd.DataFrame):
    """Multi-coil: PSNR against Ntune of the natural-image network with the T1-trained network
    and L1-SPIRiT as horizontal lines (Fig. 6), one panel per R."""
    import matplotlib.pyplot as plt

    Rs = sorted(set(table["R"]))
    fig, axes = plt.subplots(1, len(Rs), figsize=(5 * len(Rs), 3.8), squeeze=False)
    for ax, R in zip(axes[0], Rs):
        g = table[table["R"] == R]
        nat = g[g["method"] == "Natural-trained"].sort_values("n_tune")
        ax.plot(nat["n_tune"], nat["psnr_mean"], "o-", color=_COLORS["Natural-trained"], label="natural-trained, fine-tuned")
        scr = g[g["method"] == "Scratch"].sort_values("n_tune")
        if len(scr):
            ax.plot(scr["n_tune"], scr["psnr_mean"], "s:", color="tab:gray", label="from scratch (Ntune only)")
        for method, ls in (("T1-trained", "--"), ("SPIRiT", "-."), ("Zero-filled", ":")):
            r = g[g["method"] == method]
            if len(r):
                ax.axhline(r["psnr_mean"].iloc[-1], color=_COLORS[method], ls=ls, label=method)
        ax.set_xlabel("Ntune (fine-tuning images)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"multi-coil T1, R = {R}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Multi-coil transfer (paper Fig. 6)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_curves(curves: pd.DataFrame, kinds=("finetune", "scratch")):
    """Learning curves: validation PSNR against epoch of every end-to-end trained network
    (fine-tuned and from scratch, at the learning rate chosen on validation), one line per
    network and seed, one panel per R; a dot marks the epoch kept (the best) and a cross where
    early stopping ended the run.

    Args:
        curves: the ``curves`` table of a study (columns seed, R, network, kind, stage, lr,
            chosen, epoch, val_psnr).
        kinds: which kinds of training to draw ("pretrain", "finetune", "scratch").
    """
    import matplotlib.pyplot as plt

    if curves is None or len(curves) == 0:
        fig, ax = plt.subplots(figsize=(4, 2))
        ax.text(0.5, 0.5, "no learning curves", ha="center", va="center")
        ax.set_axis_off()
        return fig
    c = curves[curves["kind"].isin(kinds) & curves["chosen"].astype(bool)]
    Rs = sorted(set(c["R"]))
    fig, axes = plt.subplots(1, max(len(Rs), 1), figsize=(5.2 * max(len(Rs), 1), 3.8), squeeze=False)
    cmap = plt.get_cmap("tab10")
    names = list(dict.fromkeys(c["network"]))
    firsts = [n.split(" ")[0] for n in names]
    # the method's colour when one network per method, else one colour per network
    unique = len(set(firsts)) == len(firsts)
    color = {n: (_COLORS.get(f, cmap(i % 10)) if unique else cmap(i % 10)) for i, (n, f) in enumerate(zip(names, firsts))}
    for ax, R in zip(axes[0], Rs):
        g = c[c["R"] == R]
        for (net, seed), s in g.groupby(["network", "seed"], sort=False):
            s = s.sort_values("epoch")
            ax.plot(s["epoch"], s["val_psnr"], "-", color=color[net], lw=1, alpha=0.8,
                    label=net if seed == g["seed"].min() else None)
            best = s.loc[s["val_psnr"].idxmax()]
            ax.plot([best["epoch"]], [best["val_psnr"]], "o", color=color[net], ms=4)
            ax.plot([s["epoch"].iloc[-1]], [s["val_psnr"].iloc[-1]], "x", color=color[net], ms=5)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation PSNR (dB)")
        ax.set_title(f"R = {R} (one line per seed; o: kept, x: stopped)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Learning curves on the validation slices", fontsize=10)
    fig.tight_layout()
    return fig
