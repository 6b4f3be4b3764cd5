"""``mrtl train | finetune | evaluate | reconstruct``: the training functions on the command line.

A config file (YAML or JSON) has up to four sections whose keys equal function arguments:

* ``model``: :class:`mrtl.models.Cascade` arguments (plus ``seed`` for the initial weights);
* ``data``: :func:`build_dataset` arguments (where the images come from, size, the acceleration ``R``);
* ``train``: :func:`mrtl.train.train_sequential` arguments;
* ``finetune``: :func:`mrtl.train.finetune` arguments.

An unknown section or key is an error that lists the valid ones. Example: ``configs/small_t1.yaml``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ._validate import check_acceleration, check_bool, check_choice, check_int
from .presets import DEFAULT_R

__all__ = ["add_commands", "load_config", "build_dataset", "DATA_KEYS", "MODEL_KEYS"]

MODEL_KEYS = ("n_subnets", "coils", "width", "depth", "subnet", "dc_lam", "learn_lam", "residual", "seed")
DATA_KEYS = (
    "domain", "path", "format", "split", "val_split", "size", "R", "mask_seed", "n_masks", "mask_kind",
    "mask_split", "coils", "noise_std", "augment", "seed", "n", "n_val",
)


def build_dataset(domain: str | None = "t1", path=None, format: str = "photos", split: str = "train", size=64,
                  R: float = DEFAULT_R, mask_seed: int = 0, n_masks: int = 100, mask_kind: str = "poisson",
                  mask_split: str = "train", coils=None, noise_std: float = 0.0, augment: bool = False, seed: int = 0,
                  n: int | None = None):
    """An ``mrtl.data.UndersampledDataset`` from the bundled data (``domain``) or a folder (``path``).

    Args:
        domain: bundled domain (``mrtl.data.DOMAINS``); ignored when ``path`` is given.
        path: a folder of photos (``format="photos"``) or NIfTI volumes (``format="nifti"``).
        split: bundled split ("train", "tune", "val", "test", "all").
        size: image side (or (H, W)).
        R: the acceleration of the Poisson-disc mask bank (it travels with every sample, ``Sample.R``).
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
    bank = MaskBank(check_acceleration(R, "data.R"), size, n=n_masks, seed=mask_seed,
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
        if sec == "data" and "acceleration" in bad:
            raise ValueError(f"config: data.acceleration in {str(p)!r} is now data.R (one name for the acceleration "
                             "throughout mrtl); rename the key")
        if bad:
            raise ValueError(f"config: unknown key(s) {bad} in section {sec!r}; valid keys: {sorted(valid[sec])}")
    for sec in ("train", "finetune"):
        if "betas" in cfg.get(sec, {}):
            cfg[sec]["betas"] = tuple(cfg[sec]["betas"])
        for flag in ("resume", "select_best"):  # YAML reads "resume: maybe" as a (truthy) string
            if flag in cfg.get(sec, {}):
                check_bool(cfg[sec][flag], f"{sec}.{flag}")
    if cfg.get("train", {}).get("stages") is not None:  # named as in the file, not as the model's argument p
        import inspect

        from .models import Cascade

        n = cfg.get("model", {}).get("n_subnets", inspect.signature(Cascade).parameters["n_subnets"].default)
        stages = cfg["train"]["stages"]
        if not isinstance(stages, (list, tuple)) or not stages:
            raise ValueError(f"train.stages: expected a non-empty list of stage numbers (1..{n}), got {stages!r}")
        for s in stages:
            check_int(s, "train.stages", low=1, high=n if isinstance(n, int) else None)
    return cfg


def _datasets(data_cfg: dict, default_split: str, n_key_default=None):
    d = dict(data_cfg)
    val_split = d.pop("val_split", "val")
    n_val = d.pop("n_val", None)
    if n_val is not None:
        check_int(n_val, "data.n_val", low=1)
    d.setdefault("split", default_split)
    main = build_dataset(**d)
    val = None
    if val_split and d.get("path") is None:
        dv = dict(d, split=val_split, n=n_val, mask_split="val")  # its own masks: the test bank stays unseen
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
    # the weights are seeded like everything else: model.seed, else the training seed
    model_cfg = dict(cfg.get("model", {}))
    model_cfg.setdefault("seed", cfg.get("train", {}).get("seed", 0))
    model = Cascade(**model_cfg)
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
    kw = dict(split=args.split, size=args.size, R=args.R, mask_seed=args.mask_seed,
              mask_split="test", n=args.n, coils="simulate" if model.coils == "multi" else None)
    if Path(data).exists() or "/" in data:
        ds = build_dataset(domain=None, path=data, format=args.format, **kw)
    else:
        ds = build_dataset(domain=data, **kw)
    _check_size(ck.get("image_shape"), ds[0].zero_filled.shape, "--size")
    recs = evaluate(model, ds, batch_size=args.batch_size)
    import pandas as pd

    from .metrics import summarize

    df = pd.DataFrame(recs)
    long = [dict(method=name, psnr=r["psnr" + col], ssim=r["ssim" + col])
            for name, col in (("network", ""), ("zero-filled", "_zf")) for r in recs]
    # the spread over the evaluated images themselves (population std, ddof 0), as before
    table = summarize(long, by="method", ddof=0).set_index("method")
    print(table.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.output:
        df.to_csv(args.output, index=False)
    return 0


def _read_array(path, what, key=None):
    from .data.loaders import read_array  # clear errors: no 'kspace', group, corrupt/empty file, broken link

    return read_array(path, what, key=key, default_key="kspace" if what == "--input" else None)


class _LazyArray:
    """A ``.npy`` or HDF5 array read slice by slice along its first axis (``shape``, ``dtype``,
    ``read(start, stop)``), so that reconstructing a large file holds one batch in memory. A file
    that cannot be opened this way is read by :func:`mrtl.data.loaders.read_array`, whose error
    names the file and the problem (missing, empty, truncated, pickled, no such dataset, ...)."""

    def __init__(self, path, what, key=None):
        self.path, self.what = Path(path).expanduser(), what
        self._h5 = self._ds = self._mem = None
        try:
            self._open(key)
        except Exception as exc:  # noqa: BLE001 - re-raised below with read_array's clear message
            self.close()
            _read_array(path, what, key)  # raises the clear error for a malformed file
            raise ValueError(f"{what}: cannot read {str(self.path)!r} slice by slice ({exc})") from exc

    def _open(self, key):
        suffix = self.path.suffix.lower()
        if suffix in (".h5", ".hdf5"):
            import h5py

            self._h5 = h5py.File(self.path, "r")
            name = key if key is not None else ("kspace" if self.what == "--input" else None)
            if name is None:
                names = []
                self._h5.visit(lambda n: names.append(n) if isinstance(self._h5[n], h5py.Dataset) else None)
                if len(names) != 1:
                    raise ValueError("not exactly one dataset")
                name = names[0]
            ds = self._h5[name]
            if not isinstance(ds, h5py.Dataset):
                raise ValueError("not a dataset")
            self._ds, self.shape, self.dtype = ds, tuple(ds.shape), np.dtype(ds.dtype)
            return
        if suffix != ".npy":
            raise ValueError("not .npy/.h5")
        with open(self.path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                shape, fortran, dtype = None, True, None  # other versions: memory-mapped below
            self._offset = f.tell()
        if fortran:
            self._mem = np.load(self.path, mmap_mode="r", allow_pickle=False)
            shape, dtype = self._mem.shape, self._mem.dtype
        if dtype.hasobject:
            raise ValueError("object array")
        need = self._offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._mem is None and self.path.stat().st_size < need:
            raise ValueError(f"{self.what}: {str(self.path)!r} is truncated: its header describes {shape} {dtype} "
                             f"({need} bytes) but the file has {self.path.stat().st_size} bytes")
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)

    def read(self, start=None, stop=None) -> np.ndarray:
        """Rows ``start:stop`` of the first axis (everything when both are None), as a new array."""
        if self._ds is not None:
            return np.asarray(self._ds[()] if start is None else self._ds[start:stop])
        if self._mem is not None:
            return np.array(self._mem if start is None else self._mem[start:stop])
        if start is None:
            start, stop = 0, (self.shape[0] if self.shape else 1)
        row = int(np.prod(self.shape[1:], dtype=np.int64)) if self.shape else 1
        n = (stop - start) if self.shape else 1
        with open(self.path, "rb") as f:
            f.seek(self._offset + start * row * self.dtype.itemsize)
            a = np.fromfile(f, dtype=self.dtype, count=n * row)
        return a.reshape((n, *self.shape[1:]) if self.shape else ())

    def close(self):
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


class _AtomicNpyWriter:
    """Write a ``.npy`` file batch by batch into a temporary beside ``path`` (named like
    :func:`mrtl.utils.atomic_write_bytes`'s, so a killed run's leftover is recognised as stale),
    then rename it over ``path``: the target is either absent/old or complete. The bytes equal
    those of ``numpy.save`` of the whole array."""

    def __init__(self, path, shape, dtype):
        import secrets

        from .utils import _host_tag

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.parent / f".{self.path.name}.mrtl-{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
        self.f = os.fdopen(fd, "wb")
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
        np.lib.format.write_array_header_1_0(self.f, header)

    def write(self, block: np.ndarray):
        self.f.write(np.ascontiguousarray(block).tobytes())

    def commit(self):
        from .utils import _fsync_dir

        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)

    def abort(self):
        if not self.f.closed:
            self.f.close()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


def _cmd_reconstruct(args) -> int:
    """Stream ``--input`` through the cascade ``--batch-size`` slices at a time: the input, mask
    and maps are read per batch and the output written per batch, so memory is bounded by the
    batch, not the file (``benchmarks/bench_train.py --recon-memory``)."""
    from ._validate import check_int
    from .train import load_checkpoint, model_from_checkpoint, reconstruct

    bs = check_int(args.batch_size, "--batch-size", low=1)
    ck = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(ck)
    multi = model.coils == "multi"
    k = _LazyArray(args.input, "--input", args.key)
    mask = _LazyArray(args.mask, "--mask")
    maps = None if args.maps is None else _LazyArray(args.maps, "--maps")
    try:
        if not np.issubdtype(k.dtype, np.complexfloating):
            raise TypeError(f"--input: expected complex k-space, got dtype {k.dtype}")
        single_nd = 3 if multi else 2
        if len(k.shape) not in (single_nd, single_nd + 1):
            want = "(C, H, W) or (B, C, H, W)" if multi else "(H, W) or (B, H, W)"
            raise ValueError(f"--input: a {model.coils}-coil model expects k-space {want}, got shape {k.shape}")
        _check_size(ck.get("image_shape"), tuple(k.shape[-2:]), "--input")
        batched = len(k.shape) == single_nd + 1
        B = k.shape[0] if batched else 1
        if B == 0:
            raise ValueError(f"--input: {str(args.input)!r} holds no slices (shape {k.shape}); expected at least "
                             "one k-space slice")
        per_slice = lambda a, nd: a is not None and batched and len(a.shape) == nd  # noqa: E731
        for a, nd, nm in ((mask, 3, "--mask"), (maps, 4, "--maps")):
            if per_slice(a, nd) and a.shape[0] != B:
                raise ValueError(f"{nm}: {a.shape[0]} slices but --input has {B}; give one per slice or one for all")
        mask_all = None if per_slice(mask, 3) else torch.from_numpy(mask.read())
        maps_all = None if maps is None or per_slice(maps, 4) else torch.from_numpy(maps.read())
        out_shape = (B, *k.shape[-2:]) if batched else tuple(k.shape[-2:])
        writer = _AtomicNpyWriter(args.output, out_shape, np.complex64)
        try:
            for s in range(0, B, bs) if batched else [None]:
                e = None if s is None else min(s + bs, B)
                kb = torch.from_numpy(k.read(s, e)).to(torch.complex64)
                mb = mask_all if mask_all is not None else torch.from_numpy(mask.read(s, e))
                pb = maps_all if maps is None or maps_all is not None else torch.from_numpy(maps.read(s, e))
                try:
                    out = reconstruct(model, kb, mb, maps=pb, batch_size=bs)
                except ValueError as exc:
                    where = "" if s is None else f" (slices {s}..{e - 1})"
                    raise ValueError(f"--input {args.input}{where}: {exc}") from exc
                writer.write(out.numpy())
            writer.commit()
        except BaseException:
            writer.abort()
            raise
    finally:
        for a in (k, mask, maps):
            if a is not None:
                a.close()
    print(f"wrote {args.output}: {out_shape} complex64")
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
    p.add_argument("--R", type=float, default=float(DEFAULT_R), help=f"acceleration R of the test mask bank (default {DEFAULT_R})")
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
