"""``mrtl train | finetune | evaluate | reconstruct``: the training functions on the command line.

A config file (YAML or JSON) has up to four sections whose keys equal function arguments:

* ``model``: :class:`mrtl.models.Cascade` arguments (plus ``seed`` for the initial weights);
* ``data``: :func:`build_dataset` arguments (where the images come from, size, acceleration);
* ``train``: :func:`mrtl.train.train_sequential` arguments;
* ``finetune``: :func:`mrtl.train.finetune` arguments.

An unknown section or key is an error that lists the valid ones. Example: ``configs/small_t1.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ._validate import check_choice, check_float, check_int

__all__ = ["add_commands", "load_config", "build_dataset", "DATA_KEYS", "MODEL_KEYS"]

MODEL_KEYS = ("n_subnets", "coils", "width", "depth", "subnet", "dc_lam", "learn_lam", "residual", "seed")
DATA_KEYS = (
    "domain", "path", "format", "split", "val_split", "size", "acceleration", "mask_seed", "n_masks", "mask_kind",
    "mask_split", "coils", "noise_std", "augment", "seed", "n", "n_val",
)


def build_dataset(domain: str | None = "t1", path=None, format: str = "photos", split: str = "train", size=64,
                  acceleration: float = 4.0, mask_seed: int = 0, n_masks: int = 100, mask_kind: str = "poisson",
                  mask_split: str = "train", coils=None, noise_std: float = 0.0, augment: bool = False, seed: int = 0,
                  n: int | None = None):
    """An ``mrtl.data.UndersampledDataset`` from the bundled data (``domain``) or a folder (``path``).

    Args:
        domain: bundled domain (``mrtl.data.DOMAINS``); ignored when ``path`` is given.
        path: a folder of photos (``format="photos"``) or NIfTI volumes (``format="nifti"``).
        split: bundled split ("train", "tune", "val", "test", "all").
        size: image side (or (H, W)).
        acceleration: R of the Poisson-disc mask bank.
        mask_seed, n_masks, mask_kind, mask_split: the ``MaskBank`` (train and test banks differ).
        coils: None (single-coil) or "simulate" (multi-coil, simulated coil maps).
        noise_std, augment, seed: as ``UndersampledDataset``.
        n: use only the first ``n`` images.
    """
    from .data import NiftiFolder, PhotoFolder, UndersampledDataset, bundled
    from .masks import MaskBank

    from ._validate import check_shape2d

    size = check_shape2d(size, "size")
    if path is not None:
        p = Path(path).expanduser()
        if not p.exists():
            raise FileNotFoundError(f"data.path: {str(p)!r} does not exist; give a folder of "
                                    f"{'JPEG/PNG photos' if format == 'photos' else 'NIfTI volumes'} or use a bundled domain (data.domain)")
        check_choice(format, "data.format", ("photos", "nifti"))
        src = PhotoFolder(p, size=size) if format == "photos" else NiftiFolder(p, size=size)
    else:
        if domain is None:
            raise ValueError("data: give either domain (a bundled data set) or path (a folder)")
        src = bundled(domain, split, size=size)
    if n is not None:
        check_int(n, "data.n", low=1)
        src = torch.utils.data.Subset(src, range(min(n, len(src))))
        src.subjects = None
    bank = MaskBank(check_float(acceleration, "data.acceleration", low=1.0), size, n=n_masks, seed=mask_seed,
                    split=mask_split, kind=mask_kind)
    return UndersampledDataset(src, bank, coils=coils, noise_std=noise_std, augment=augment, seed=seed)


def load_config(path) -> dict:
    """Read a YAML/JSON config and check every section and key (errors list the valid ones)."""
    from .train import FINETUNE_KEYS, TRAIN_KEYS

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--config: {str(p)!r} does not exist (see configs/ for examples)")
    text = p.read_text()
    if p.suffix.lower() == ".json":
        cfg = json.loads(text)
    else:
        import yaml

        cfg = yaml.safe_load(text) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"config: {str(p)!r} must hold a mapping of sections, got {type(cfg).__name__}")
    valid = {"model": MODEL_KEYS, "data": DATA_KEYS, "train": TRAIN_KEYS, "finetune": FINETUNE_KEYS}
    for sec, body in cfg.items():
        if sec not in valid:
            raise ValueError(f"config: unknown section {sec!r} in {str(p)!r}; valid sections: {sorted(valid)}")
        if body is None:
            cfg[sec] = body = {}
        if not isinstance(body, dict):
            raise ValueError(f"config: section {sec!r} must be a mapping, got {type(body).__name__}")
        bad = sorted(set(body) - set(valid[sec]))
        if bad:
            raise ValueError(f"config: unknown key(s) {bad} in section {sec!r}; valid keys: {sorted(valid[sec])}")
    for sec in ("train", "finetune"):
        if "betas" in cfg.get(sec, {}):
            cfg[sec]["betas"] = tuple(cfg[sec]["betas"])
    return cfg


def _datasets(data_cfg: dict, default_split: str, n_key_default=None):
    d = dict(data_cfg)
    val_split = d.pop("val_split", "val")
    n_val = d.pop("n_val", None)
    d.setdefault("split", default_split)
    main = build_dataset(**d)
    val = None
    if val_split and d.get("path") is None:
        dv = dict(d, split=val_split, n=n_val, mask_split="test")
        val = build_dataset(**dv)
    return main, val


def _check_size(ckpt_shape, data_shape, what):
    if ckpt_shape is not None and tuple(ckpt_shape) != tuple(data_shape):
        raise ValueError(f"{what}: image size {tuple(data_shape)} differs from the checkpoint's training size "
                         f"{tuple(ckpt_shape)}; use data.size: {list(ckpt_shape)} (or retrain at this size)")


def _cmd_train(args) -> int:
    from .models import Cascade
    from .train import train_sequential

    cfg = load_config(args.config)
    model = Cascade(**cfg.get("model", {}))
    train_set, val_set = _datasets(cfg.get("data", {}), "train")
    kw = dict(cfg.get("train", {}))
    if args.out:
        kw["out_dir"] = args.out
    kw.setdefault("out_dir", "runs/train")
    res = train_sequential(model, train_set, val_set, **kw)
    last = res["history"][-1] if res["history"] else {}
    stops = ", ".join(f"{p}: best {s['best_epoch']}/stopped {s['stopped_epoch']}" for p, s in res.get("stages", {}).items())
    print(f"trained {model.n_subnets} subnetworks; last val PSNR {last.get('val_psnr', float('nan')):.2f} dB; "
          f"epochs per stage ({stops}); model: {Path(kw['out_dir']) / 'best_pretrain.pt'}")
    return 0


def _cmd_finetune(args) -> int:
    from .train import finetune, load_checkpoint, model_from_checkpoint

    cfg = load_config(args.config)
    if "model" in cfg:
        raise ValueError("config: a fine-tuning run takes the architecture from --from; remove the 'model' section")
    ck = load_checkpoint(getattr(args, "from"))
    model = model_from_checkpoint(ck)
    from ._validate import check_shape2d

    _check_size(ck.get("image_shape"), check_shape2d(cfg.get("data", {}).get("size", 64), "data.size"), "data.size")
    tune_set, val_set = _datasets(cfg.get("data", {}), "tune")
    kw = dict(cfg.get("finetune", {}))
    if args.out:
        kw["out_dir"] = args.out
    kw.setdefault("out_dir", "runs/finetune")
    res = finetune(model, tune_set, val_set, **kw)
    h = res["history"]
    if h:
        print(f"fine-tuned: val loss {h[0]['val_loss']:.5f} -> {h[-1]['val_loss']:.5f}; model: {Path(kw['out_dir']) / 'best_finetune.pt'}")
    return 0


def _cmd_evaluate(args) -> int:
    from .train import evaluate, load_checkpoint, model_from_checkpoint

    ck = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(ck)
    data = args.data
    _check_size(ck.get("image_shape"), (args.size, args.size), "--size")
    kw = dict(split=args.split, size=args.size, acceleration=args.acceleration, mask_seed=args.mask_seed,
              mask_split="test", n=args.n, coils="simulate" if model.coils == "multi" else None)
    if Path(data).exists() or "/" in data:
        ds = build_dataset(domain=None, path=data, format=args.format, **kw)
    else:
        ds = build_dataset(domain=data, **kw)
    _check_size(ck.get("image_shape"), ds[0].zero_filled.shape, "--size")
    recs = evaluate(model, ds, batch_size=args.batch_size)
    import pandas as pd

    df = pd.DataFrame(recs)
    rows = []
    for name, col in (("network", ""), ("zero-filled", "_zf")):
        rows.append(dict(method=name, psnr_mean=df["psnr" + col].mean(), psnr_std=df["psnr" + col].std(ddof=0),
                         ssim_mean=df["ssim" + col].mean(), ssim_std=df["ssim" + col].std(ddof=0), n=len(df)))
    table = pd.DataFrame(rows).set_index("method")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.output:
        df.to_csv(args.output, index=False)
    return 0


def _read_array(path, what, key=None):
    from .data.loaders import read_array  # clear errors: no 'kspace', group, corrupt/empty file, broken link

    return read_array(path, what, key=key, default_key="kspace" if what == "--input" else None)


def _cmd_reconstruct(args) -> int:
    from .train import load_checkpoint, model_from_checkpoint, reconstruct
    from .utils import atomic_write_bytes

    ck = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(ck)
    k = torch.from_numpy(np.ascontiguousarray(_read_array(args.input, "--input", args.key)))
    mask = torch.from_numpy(np.ascontiguousarray(_read_array(args.mask, "--mask")))
    maps = None if args.maps is None else torch.from_numpy(np.ascontiguousarray(_read_array(args.maps, "--maps")))
    _check_size(ck.get("image_shape"), tuple(k.shape[-2:]), "--input")
    if not k.is_complex():
        raise TypeError(f"--input: expected complex k-space, got dtype {k.dtype}")
    out = reconstruct(model, k.to(torch.complex64), mask, maps=maps, batch_size=args.batch_size)
    import io

    buf = io.BytesIO()
    np.save(buf, out.numpy())
    atomic_write_bytes(args.output, buf.getvalue())
    print(f"wrote {args.output}: {tuple(out.shape)} complex64")
    return 0


def add_commands(sub) -> None:
    """Register ``train``, ``finetune``, ``evaluate`` and ``reconstruct``."""
    p = sub.add_parser("train", help="sequential training of the cascade (Eq. 11)",
                       description="Train the cascade subnetwork by subnetwork (Eq. 11). The config's sections "
                                   "'model', 'data' and 'train' hold Cascade, build_dataset and train_sequential "
                                   "arguments. Resumes from OUT/checkpoint_pretrain.pt when present.")
    p.add_argument("--config", required=True, help="YAML/JSON config with sections model, data, train (see configs/)")
    p.add_argument("--out", default=None, help="output folder for checkpoints and logs (overrides train.out_dir)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="end-to-end fine-tuning of a trained cascade",
                       description="Fine-tune every subnetwork and DC/CC layer end to end on target-domain images. "
                                   "The config's 'data' section selects the tuning images (default split 'tune') and "
                                   "'finetune' holds finetune() arguments.")
    p.add_argument("--from", required=True, metavar="CKPT", help="checkpoint to start from (e.g. runs/train/best_pretrain.pt)")
    p.add_argument("--config", required=True, help="YAML/JSON config with sections data, finetune")
    p.add_argument("--out", default=None, help="output folder (overrides finetune.out_dir)")
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser("evaluate", help="PSNR/SSIM of a trained cascade (table)",
                       description="Reconstruct a test set and print mean +/- std PSNR and SSIM for the network and zero-filling.")
    p.add_argument("--ckpt", required=True, help="model checkpoint (best_pretrain.pt / best_finetune.pt)")
    p.add_argument("--data", required=True, help="a bundled domain (natural, t1, t2, t1_synth, pd) or a folder path")
    p.add_argument("--format", default="photos", choices=("photos", "nifti"), help="folder format when --data is a path")
    p.add_argument("--split", default="test", help="bundled split (default test)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (must match the checkpoint)")
    p.add_argument("--acceleration", type=float, default=4.0, help="acceleration R of the test mask bank")
    p.add_argument("--mask-seed", type=int, default=0, help="seed of the test mask bank")
    p.add_argument("--n", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--output", default=None, help="optional CSV with one row per image")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("reconstruct", help="reconstruct undersampled k-space with a trained cascade",
                       description="Read k-space (.npy or .h5, centred, complex; (H, W), (B, H, W) or multi-coil "
                                   "(B, C, H, W)) and a mask (.npy, bool (H, W) or (B, H, W)); write the complex image as .npy.")
    p.add_argument("--ckpt", required=True, help="model checkpoint")
    p.add_argument("--input", required=True, help="k-space file (.npy or .h5)")
    p.add_argument("--key", default=None, help="dataset name inside an .h5 input (default 'kspace')")
    p.add_argument("--mask", required=True, help="sampling mask (.npy)")
    p.add_argument("--maps", default=None, help="coil maps (.npy, (C, H, W) or (B, C, H, W)) for multi-coil models")
    p.add_argument("--output", required=True, help="output .npy (complex64)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.set_defaults(func=_cmd_reconstruct)
