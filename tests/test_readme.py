"""The README's library example must keep running (and its CS must beat zero-filling)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)  # noqa: S102 - our own README
    from mrtl.linops import zero_filled
    from mrtl.metrics import psnr

    zf = psnr(zero_filled(ns["kspace"], ns["mask"]), ref=ns["image"])
    assert (ns["cs"].image.shape == ns["image"].shape) and bool((psnr(ns["cs"].image, ref=ns["image"]) > zf + 3).all())


def test_readme_quick_start_names_the_make_targets():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo:", "test:", "book:", "reproduce:"):
        assert re.search(rf"^{target}", makefile, flags=re.M), target
