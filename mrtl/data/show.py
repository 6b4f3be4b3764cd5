"""Summaries of the bundled data: a text table (:func:`info`) and an example grid (:func:`show_examples`)."""

from __future__ import annotations

from .sources import DOMAINS, bundled, manifest

__all__ = ["info", "show_examples"]

_SPLITS = ("train", "tune", "val", "test")


def info(print_table: bool = True) -> list[dict]:
    """Per bundled domain: subjects and images per split, image size, real/synthetic, license.

    Args:
        print_table: also print a table to stdout.

    Returns:
        one dict per domain with keys ``domain, file, synthetic, shape, dtype, bytes, license,
        source, images`` (per split) and ``subjects`` (per split).
    """
    m = manifest()
    rows = []
    for d in DOMAINS:
        if d not in m:
            continue
        r = m[d]
        images, subjects = {}, {}
        for s in _SPLITS:
            try:
                src = bundled(d, s)
            except ValueError:  # a domain without this split (pd: test only)
                images[s], subjects[s] = 0, 0
                continue
            images[s] = len(src) if d != "natural" else len(src.subjects)
            subjects[s] = len(src.subjects)
        rows.append(
            {
                "domain": d,
                "file": r["file"],
                "synthetic": bool(r["synthetic"]),
                "shape": r["shape"],
                "dtype": r["dtype"],
                "bytes": r.get("bytes"),
                "license": r["license"],
                "source": r["source"],
                "images": images,
                "subjects": subjects,
            }
        )
    if print_table:
        print(f"bundled data: {sum(r['bytes'] or 0 for r in rows) / 1e6:.1f} MB in {len(rows)} files")
        head = f"{'domain':9s} {'kind':9s} {'size':>9s} " + " ".join(f"{s + ' img/subj':>16s}" for s in _SPLITS)
        print(head)
        for r in rows:
            size = "variable" if r["shape"] == "variable" else "x".join(str(v) for v in r["shape"])
            cells = " ".join(f"{r['images'][s]:>9d}/{r['subjects'][s]:<6d}" for s in _SPLITS)
            print(f"{r['domain']:9s} {'SYNTHETIC' if r['synthetic'] else 'real':9s} {size:>9s} {cells}")
        print("(natural: images = photos; each photo gives many random crops)")
        for r in rows:
            print(f"  {r['domain']}: {r['file']} - {r['license']}")
    return rows


def show_examples(domains=None, size=None, split: str = "test"):
    """One example image per bundled domain in a grid (for notebooks).

    Args:
        domains: domain names (default: all bundled domains).
        size: optional ``(H, W)`` to resize to (see :func:`mrtl.data.bundled`).
        split: the split to take the example from (falls back to ``"all"`` when a domain lacks it).

    Returns:
        a ``matplotlib.figure.Figure``.
    """
    import matplotlib.pyplot as plt

    domains = list(DOMAINS) if domains is None else list(domains)
    if not domains:
        raise ValueError("domains: expected at least one domain, got an empty list")
    fig, axes = plt.subplots(1, len(domains), figsize=(3 * len(domains), 3.8), squeeze=False)
    for ax, d in zip(axes[0], domains):
        try:
            src = bundled(d, split, size=size)
        except ValueError:
            src = bundled(d, "all", size=size)
        n_per = max(1, len(src) // max(1, len(src.subjects)))
        i = (len(src.subjects) // 2) * n_per + (0 if d == "natural" else n_per // 2)  # mid-volume slice / centre crop
        rec = src[min(i, len(src) - 1)]
        ax.imshow(rec.image.abs().numpy(), cmap="gray", vmin=0, vmax=float(rec.image.abs().quantile(0.995)) or 1)
        kind = "SYNTHETIC" if rec.synthetic else "real"
        ax.set_title(f"{d} ({kind})\n{tuple(rec.image.shape)} {rec.subject}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig
