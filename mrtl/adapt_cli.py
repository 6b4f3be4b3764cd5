"""``mrtl adapt``: fine-tune a pretrained cascade on a folder of the user's slices.

The data decide the loss (``--mode auto``):

* fully sampled images (``.npy`` images ``(H, W)`` / ``(N, H, W)``, NIfTI volumes, JPEG/PNG
  photos, or fastMRI ``.h5`` multi-coil k-space for a multi-coil checkpoint) -> the paper's
  supervised fine-tuning (Dar et al. 2020, Eq. 5, :func:`mrtl.train.finetune`) on simulated
  Poisson-disc undersampling at ``--R``, model selection and early stopping on the validation
  PSNR of a held-out part;
* undersampled k-space only (pairs ``NAME_kspace.npy`` + ``NAME_mask.npy``, optionally
  ``NAME_maps.npy`` for multi-coil) -> SSDU (:func:`mrtl.selfsup.ssdu_finetune`, Yaman et al.
  MRM 2020), model selection on the self-supervised k-space loss of a held-out part; no fully
  sampled image exists or is needed. ``--mode ssdu`` on fully sampled images undersamples them
  and then uses only the k-space (a check of the self-supervised path against known images).

Writes ``OUT/model.pt`` (:func:`mrtl.train.save_model`, atomic), ``OUT/recon/<name>.npy`` (the
complex reconstruction of every slice, atomic), ``OUT/summary.json``; training checkpoints in
``OUT/train/`` make a rerun resume. ``--checkpoint shipped`` (the default) starts from the
natural-image checkpoint shipped for ``--R`` (:func:`mrtl.checkpoints.path`).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import torch

__all__ = ["add_commands", "read_user_folder", "adapt"]

_IMG_EXT = (".png", ".jpg", ".jpeg")


def _npy(path: Path) -> np.ndarray:
    from .data import read_array

    return read_array(path, what=str(path), default_key=None)


def read_user_folder(root, size=None) -> dict:
    """Read a folder of slices for ``mrtl adapt``.

    Returns:
        ``{"kind": "undersampled", "names", "kspace", "mask", "maps"}`` (lists of tensors per
        slice), or ``{"kind": "images", "names", "source"}`` (an image source of fully sampled
        images), or ``{"kind": "fastmri", "names", "source"}``.

    Raises:
        FileNotFoundError: the folder does not exist or holds no usable file.
        ValueError: a k-space file without its mask, or shapes that do not agree.
    """
    from .data import FastMRIFolder, ImageRecord, NiftiFolder, PhotoFolder, normalize

    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data: {str(root)!r} is not a folder; give a folder of .npy images, NIfTI volumes, "
                                "photos, fastMRI .h5 files, or NAME_kspace.npy + NAME_mask.npy pairs")
    files = sorted(p for p in root.iterdir() if p.is_file())
    kfiles = [p for p in files if p.name.endswith("_kspace.npy")]
    if kfiles:
        names, ks, ms, mps = [], [], [], []
        for kf in kfiles:
            stem = kf.name[: -len("_kspace.npy")]
            mf, pf = root / f"{stem}_mask.npy", root / f"{stem}_maps.npy"
            if not mf.is_file():
                raise FileNotFoundError(f"{mf}: missing; every NAME_kspace.npy needs its sampling mask NAME_mask.npy "
                                        "(bool (H, W), True where k-space was acquired)")
            k = torch.as_tensor(_npy(kf)).to(torch.complex64)
            m = torch.as_tensor(_npy(mf)).to(torch.bool)
            maps = torch.as_tensor(_npy(pf)).to(torch.complex64) if pf.is_file() else None
            if maps is None and k.ndim == 2:
                k = k[None]
            if maps is not None and k.ndim == 3:
                k, maps = k[None], maps[None] if maps.ndim == 3 else maps
            if m.ndim == 2:
                m = m[None].expand(k.shape[0], -1, -1)
            if tuple(m.shape[-2:]) != tuple(k.shape[-2:]) or m.shape[0] != k.shape[0]:
                raise ValueError(f"{mf}: mask of shape {tuple(m.shape)} does not match k-space {tuple(k.shape)} in {kf.name}")
            if maps is not None and tuple(maps.shape) != tuple(k.shape):
                raise ValueError(f"{pf}: maps of shape {tuple(maps.shape)}, expected the k-space shape {tuple(k.shape)}")
            for b in range(k.shape[0]):
                names.append(stem if k.shape[0] == 1 else f"{stem}_{b:03d}")
                ks.append(k[b] * (m[b][None] if k.ndim == 4 else m[b]))
                ms.append(m[b].clone())
                mps.append(None if maps is None else maps[b])
        if len({tuple(t.shape) for t in ks}) != 1:
            raise ValueError(f"--data: all k-space slices must have one shape, got {sorted({tuple(t.shape) for t in ks})}")
        return {"kind": "undersampled", "names": names, "kspace": ks, "mask": ms, "maps": mps}
    npys = [p for p in files if p.suffix == ".npy"]
    if npys:
        recs, names = [], []
        for f in npys:
            a = torch.as_tensor(_npy(f))
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3:
                raise ValueError(f"{f}: expected an image (H, W) or a stack (N, H, W), got shape {tuple(a.shape)}")
            for b in range(a.shape[0]):
                names.append(f.stem if a.shape[0] == 1 else f"{f.stem}_{b:03d}")
                recs.append(ImageRecord(normalize(a[b]), f.stem, str(f), len(recs), False))
        if len({tuple(r.image.shape) for r in recs}) != 1:
            raise ValueError(f"--data: all images must have one size, got {sorted({tuple(r.image.shape) for r in recs})}")
        return {"kind": "images", "names": names, "source": recs}
    if any(p.name.endswith((".nii", ".nii.gz")) for p in root.rglob("*")):
        src = NiftiFolder(root, size=size or 256)
        return {"kind": "images", "names": [f"slice_{i:04d}" for i in range(len(src))], "source": src}
    if any(p.suffix.lower() in _IMG_EXT for p in root.rglob("*")):
        src = PhotoFolder(root, size=size or 256)
        return {"kind": "images", "names": [re.sub(r"[^\w.-]", "_", s) for s in src.subjects], "source": src}
    if any(p.suffix == ".h5" for p in files):
        src = FastMRIFolder(root)
        return {"kind": "fastmri", "names": [f"slice_{i:04d}" for i in range(len(src))], "source": src}
    raise FileNotFoundError(f"--data: {str(root)!r} holds no usable files; expected .npy images, NAME_kspace.npy + "
                            "NAME_mask.npy pairs, NIfTI (.nii/.nii.gz), photos (.png/.jpg) or fastMRI .h5 files")


def _split(n: int, val_frac: float, seed: int) -> tuple[list[int], list[int]]:
    if n < 2:
        raise ValueError(f"--data: {n} slice(s); adapt needs at least 2 (one to tune on, one to validate)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g).tolist()
    nv = min(n - 1, max(1, int(round(val_frac * n))))
    return sorted(perm[nv:]), sorted(perm[:nv])


def _save_npy(path: Path, a: np.ndarray) -> None:
    from .utils import atomic_write_bytes

    buf = io.BytesIO()
    np.save(buf, a)
    atomic_write_bytes(path, buf.getvalue())


def adapt(checkpoint, data, output, R: float = 4, mode: str = "auto", epochs: int = 20, lr: float = 1e-3,
          seed: int = 0, val_frac: float = 0.2, patience: int = 5, batch_size: int = 4, progress_bar: bool = True,
          log=print) -> dict:
    """The work of ``mrtl adapt`` (see the module docstring); returns the summary dict."""
    from ._validate import check_acceleration, check_choice, check_float, check_int
    from .checkpoints import path as shipped_path
    from .data import UndersampledDataset
    from .data.train_data import percentile99
    from .linops import zero_filled
    from .masks import MaskBank
    from .selfsup import ssdu_finetune
    from .train import TrainData, as_train_data, evaluate, finetune, load_model, reconstruct, save_model
    from .utils import atomic_write_text

    R = check_acceleration(R, "--R")
    check_choice(mode, "--mode", ("auto", "supervised", "ssdu"))
    epochs = check_int(epochs, "--epochs", low=1)
    seed = check_int(seed, "--seed", low=0)
    check_float(val_frac, "--val-frac", low=0.0, high=0.9, low_open=True)
    ck = shipped_path(int(round(R)) if R in (4, 8) else 4) if checkpoint in (None, "shipped") else Path(checkpoint)
    model = load_model(ck)
    size = tuple(model.image_shape) if model.image_shape else None
    found = read_user_folder(data, size=size)
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = found["names"]
    summary = {"checkpoint": str(ck), "data": str(data), "R": R, "n_slices": len(names), "seed": seed}
    if found["kind"] == "undersampled" and mode == "supervised":
        raise ValueError("--mode: 'supervised' needs fully sampled images, but --data holds undersampled k-space "
                         "(NAME_kspace.npy + NAME_mask.npy); use --mode ssdu or auto")
    use_ssdu = mode == "ssdu" or found["kind"] == "undersampled"
    if found["kind"] == "fastmri" and model.coils != "multi":
        raise ValueError(f"--checkpoint: {ck} is a single-coil cascade but --data holds multi-coil fastMRI k-space; "
                         "give a multi-coil checkpoint")
    if found["kind"] != "undersampled":
        src = found["source"]
        shape = tuple(torch.as_tensor(src[0].image).shape[-2:]) if found["kind"] == "images" else None
        if shape is None:
            shape = tuple(src[0].kspace.shape[-2:])
        bank = MaskBank(R, shape, n=max(len(names), 8), seed=seed, split="train")
        full = as_train_data(UndersampledDataset(src, bank, seed=seed), name="--data")
    tune_idx, val_idx = _split(len(names), val_frac, seed)
    summary.update(n_tune=len(tune_idx), n_val=len(val_idx), val_slices=[names[i] for i in val_idx])
    train_dir = out / "train"
    if use_ssdu:
        if found["kind"] == "undersampled":
            k = torch.stack(found["kspace"])
            m = torch.stack(found["mask"])
            maps = None if any(x is None for x in found["maps"]) else torch.stack(found["maps"])
            if (maps is not None) != (model.coils == "multi"):
                raise ValueError(f"--data: {'multi' if maps is not None else 'single'}-coil slices given to the "
                                 f"{model.coils}-coil cascade of {ck}")
        else:  # simulated undersampling of the images; only the k-space is used from here on
            k, m, maps = full.kspace, full.mask, full.maps
        x_u = zero_filled(k, m[:, None] if k.ndim == 4 else m, maps=maps)
        scale = (percentile99(x_u) / (model.input_p99 or 1.0)).clamp_min(1e-12)  # input scale of the checkpoint
        sc = scale.view(-1, *([1] * (k.ndim - 1)))
        k, x_u = k / sc, x_u / scale.view(-1, 1, 1)
        R_all = None if found["kind"] == "undersampled" else full.R  # measured R for acquired data, else the bank's
        pick = lambda idx: TrainData(x_u[idx], k[idx], m[idx], None, None if maps is None else maps[idx],  # noqa: E731
                                     R=None if R_all is None else R_all[torch.as_tensor(idx, dtype=torch.long)])
        log(f"mrtl adapt: SSDU fine-tuning on {len(tune_idx)} undersampled slices, {len(val_idx)} held out "
            f"(self-validation loss on their held-out k-space)")
        model, hist = ssdu_finetune(model, pick(tune_idx), val=pick(val_idx), epochs=epochs, lr=lr, batch_size=batch_size,
                                    patience=patience, seed=seed, out_dir=train_dir, progress_bar=progress_bar)
        v0 = hist["history"][0]["val_loss"] if hist["history"] and hist["history"][0]["epoch"] == 0 else float("nan")
        summary.update(mode="ssdu", val_loss_before=v0, val_loss_best=hist["best_score"], best_epoch=hist["best_epoch"],
                       stopped_epoch=hist["stopped_epoch"], seconds=hist["seconds"])
        line = (f"self-validation k-space loss {v0:.4f} -> {hist['best_score']:.4f} (best epoch {hist['best_epoch']} of "
                f"{hist['stopped_epoch']})")
        recon_k, recon_m, recon_maps = k * sc, m, maps
    else:
        tune, val = full, full
        tune, val = full.subset(tune_idx), full.subset(val_idx)
        p0 = float(np.mean([r["psnr"] for r in evaluate(model, val)]))
        log(f"mrtl adapt: supervised fine-tuning (Eq. 5) on {len(tune_idx)} slices at R = {R:g}, {len(val_idx)} held out")
        res = finetune(model, tune, val, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, out_dir=train_dir,
                       patience=patience, select_on="psnr", progress_bar=progress_bar)
        p1 = float(np.mean([r["psnr"] for r in evaluate(model, val)]))
        summary.update(mode="supervised", val_psnr_before=p0, val_psnr_after=p1,
                       best_epoch=None if res["best"] is None else int(res["best"][0]))
        line = f"validation PSNR {p0:.2f} dB -> {p1:.2f} dB"
        recon_k, recon_m, recon_maps = full.kspace, full.mask, full.maps
    save_model(model, out / "model.pt")
    rec = reconstruct(model, recon_k, recon_m, maps=recon_maps)
    for i, name in enumerate(names):
        _save_npy(out / "recon" / f"{name}.npy", rec[i].numpy())
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, default=float))
    log(f"mrtl adapt: {line}; wrote {out / 'model.pt'} and {len(names)} reconstructions in {out / 'recon'}")
    return summary


def _cmd_adapt(args) -> int:
    adapt(args.checkpoint, args.data, args.output, R=args.R, mode=args.mode, epochs=args.epochs, lr=args.lr,
          seed=args.seed, val_frac=args.val_frac, patience=args.patience, batch_size=args.batch_size)
    return 0


def add_commands(sub) -> None:
    """Register ``adapt``."""
    p = sub.add_parser("adapt", help="fine-tune a pretrained cascade on your slices (supervised or SSDU)",
                       description="Fine-tune a pretrained cascade on a folder of slices: fully sampled images "
                                   "(.npy, NIfTI, photos, fastMRI) -> supervised fine-tuning on simulated "
                                   "undersampling; undersampled k-space (NAME_kspace.npy + NAME_mask.npy "
                                   "[+ NAME_maps.npy]) -> self-supervised SSDU. Writes OUT/model.pt, "
                                   "OUT/recon/*.npy and OUT/summary.json; a rerun resumes.")
    p.add_argument("--checkpoint", default="shipped",
                   help="checkpoint to start from (default 'shipped': the natural-image checkpoint for --R)")
    p.add_argument("--data", required=True, help="folder of slices")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--R", type=float, default=4.0, help="acceleration of the simulated undersampling (default 4)")
    p.add_argument("--mode", default="auto", choices=("auto", "supervised", "ssdu"),
                   help="loss: auto (from the data), supervised, ssdu")
    p.add_argument("--epochs", type=int, default=20, help="maximum fine-tuning epochs (default 20)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, default=5, help="early stopping patience in epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=4, help="batch size (default 4)")
    p.add_argument("--val-frac", type=float, default=0.2, help="fraction of slices held out for validation (default 0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, masks and batch order (default 0)")
    p.set_defaults(func=_cmd_adapt)
