"""Train the small natural-image-pretrained checkpoints shipped in ``mrtl/checkpoints/``.

Reproducible command (seeded, CPU, a few minutes per acceleration on two cores)::

    MRTL_QUIET=1 python tools/train_shipped_checkpoints.py            # R = 4 and 8
    MRTL_QUIET=1 python tools/train_shipped_checkpoints.py --R 4      # one of them

Data: the bundled natural photos (``mrtl.data.bundled("natural", ...)``: 256 training crops of
the 16 training photos, 8 validation crops of the 2 validation photos), resized to 64 x 64,
single-coil, Poisson-disc masks of a seeded training bank (``mrtl.masks.MaskBank``). Model: the
small CPU cascade of :data:`mrtl.presets.SMALL` (3 subnetworks of 16 channels, 4 hidden layers,
hard DC), trained sequentially (Eq. 11 of Dar et al. 2020) with the SMALL settings and early
stopping on validation PSNR. The files are written atomically with :func:`mrtl.train.save_model`
and read with ``weights_only=True`` (:func:`mrtl.train.load_model`);
``mrtl/checkpoints/README.md`` lists their SHA-256. Nothing downloads.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mrtl.data import UndersampledDataset, bundled  # noqa: E402
from mrtl.masks import MaskBank  # noqa: E402
from mrtl.models import Cascade  # noqa: E402
from mrtl.presets import SMALL, STOPPING  # noqa: E402
from mrtl.train import save_model, train_sequential  # noqa: E402

SIZE = 64
SEED = 0


def train_one(R: int, out: Path, work: Path) -> dict:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train_src, val_src = bundled("natural", "train", size=SIZE), bundled("natural", "val", size=SIZE)
    bank = MaskBank(R, (SIZE, SIZE), n=100, seed=SEED, split="train")
    train = UndersampledDataset(train_src, bank, seed=SEED)
    val = UndersampledDataset(val_src, bank, seed=SEED + 1)
    model = Cascade(**SMALL["model"], seed=SEED)
    t0 = time.perf_counter()
    res = train_sequential(model, train, val, **SMALL["train"], **STOPPING["small"]["train"], seed=SEED,
                           out_dir=work / f"R{R}", resume=True, progress_bar=False, device="cpu")
    secs = time.perf_counter() - t0
    save_model(model, out, image_shape=(SIZE, SIZE),
               extra={"shipped": {"domain": "natural", "R": R, "size": SIZE, "seed": SEED,
                                  "command": "python tools/train_shipped_checkpoints.py"}})
    best = {int(k): [int(v[0]), float(v[1])] for k, v in res["best"].items()}
    return {"R": R, "file": out.name, "bytes": out.stat().st_size,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "seconds": round(secs, 1),
            "best_val_psnr_per_stage": best}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--R", type=int, nargs="*", default=[4, 8], help="accelerations (default 4 8)")
    ap.add_argument("--out", default=str(ROOT / "mrtl" / "checkpoints"), help="output folder")
    ap.add_argument("--work", default=str(ROOT / "_build" / "shipped_checkpoints"), help="training logs/resume folder")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for R in a.R:
        info = train_one(R, out / f"natural_R{R}.pt", Path(a.work))
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
