"""Put MathJax 3 into ``book/_static/mathjax`` so that the built book renders equations offline.

The course is read on trains and in hospitals with locked-down networks, so the HTML must not
depend on a CDN for its maths. ``make book`` runs this script before building; Sphinx then serves
``_static/mathjax/tex-mml-chtml.js`` (``mathjax_path`` in ``_config.yml``).

MathJax comes from the npm registry as the pinned tarball ``mathjax@3.2.2`` (fetched with
``npm pack`` when npm is installed, else downloaded from the same registry URL) and is checked
against its published sha512 integrity before anything is extracted. Only what the CommonHTML
renderer needs is kept (the combined ``tex-mml-chtml.js``, its fonts, the TeX extensions that
``\\require``/autoload pull in, the menu and the assistive-MathML module): about 3 MB, not the
24 MB package. The folder is ignored by git and rebuilt when the pinned version changes.

Usage: ``python tools/fetch_mathjax.py [--dest book/_static/mathjax]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
TARBALL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
# Paths inside the package (under package/es5/) that the site serves.
KEEP = ("tex-mml-chtml.js", "output/chtml/", "input/tex/extensions/", "input/mml/", "a11y/", "ui/", "adaptors/")
ROOT = Path(__file__).resolve().parents[1]


def _tarball() -> bytes:
    if shutil.which("npm"):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["npm", "pack", f"mathjax@{VERSION}", "--silent"], cwd=tmp, check=True,
                           stdout=subprocess.DEVNULL)
            return (Path(tmp) / f"mathjax-{VERSION}.tgz").read_bytes()
    with urllib.request.urlopen(TARBALL, timeout=120) as r:  # the URL npm itself fetches
        return r.read()


def fetch(dest: Path) -> Path:
    """Extract the pinned MathJax into ``dest`` (idempotent). Returns the path of the entry script."""
    stamp = dest / "VERSION"
    entry = dest / "tex-mml-chtml.js"
    if stamp.exists() and stamp.read_text().strip() == VERSION and entry.exists():
        return entry
    data = _tarball()
    algo, want = INTEGRITY.split("-", 1)
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise SystemExit(f"mathjax-{VERSION}.tgz: integrity mismatch ({algo} {got} != {want}); not extracted")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            if m.name == "package/LICENSE":
                rel = "LICENSE"
            elif m.name.startswith("package/es5/"):
                rel = m.name[len("package/es5/"):]
                if not any(rel == k or (k.endswith("/") and rel.startswith(k)) for k in KEEP):
                    continue
            else:
                continue
            if not m.isfile():
                continue
            out = tmp / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
    (tmp / "VERSION").write_text(VERSION + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=ROOT / "book" / "_static" / "mathjax")
    args = ap.parse_args(argv)
    entry = fetch(args.dest)
    size = sum(p.stat().st_size for p in args.dest.rglob("*") if p.is_file())
    print(f"MathJax {VERSION}: {entry.relative_to(ROOT) if entry.is_relative_to(ROOT) else entry} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
