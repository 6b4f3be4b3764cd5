"""Small natural-image-pretrained cascades shipped with mrtl (``natural_R4.pt``, ``natural_R8.pt``).

Trained by ``python tools/train_shipped_checkpoints.py`` (seeded, CPU) from the bundled natural
photos at 64 x 64, single-coil, Poisson-disc masks at R = 4 and 8, the small cascade of
:data:`mrtl.presets.SMALL`; sources, command and SHA-256 in ``README.md`` next to the files.
Load with :func:`mrtl.train.load_model` (``weights_only=True``). Nothing downloads.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["path", "available", "FOLDER"]

#: the folder holding the shipped checkpoints
FOLDER = Path(__file__).resolve().parent


def available() -> list[int]:
    """The accelerations R with a shipped checkpoint."""
    return sorted(int(p.stem.split("_R")[1]) for p in FOLDER.glob("natural_R*.pt"))


def path(R: int) -> Path:
    """The shipped natural-image-pretrained checkpoint for acceleration ``R`` (4 or 8).

    Raises:
        ValueError: no checkpoint for this R.
        FileNotFoundError: the file is missing from the installation.
    """
    if isinstance(R, bool) or not isinstance(R, (int, float)) or float(R) != int(R):
        raise ValueError(f"R: expected 4 or 8 (an acceleration with a shipped checkpoint), got {R!r}")
    R = int(R)
    if R not in (4, 8):
        raise ValueError(f"R: mrtl ships natural-image checkpoints for R = 4 and 8, got {R}; train one with "
                         f"tools/train_shipped_checkpoints.py --R {R}")
    p = FOLDER / f"natural_R{R}.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: the shipped checkpoint is missing; reinstall mrtl or recreate it with "
                                f"python tools/train_shipped_checkpoints.py --R {R}")
    return p
