"""Generate the Colab notebooks of the course from its MyST sources, or check that they are current.

Every chapter and study page of ``_toc.yml`` (``book/<page>.md``) gets a notebook at
``book/<page>.ipynb``: the path of its "Open in Colab" badge and of the theme's launch buttons.
The book itself is built from the ``.md`` files (``_config.yml`` excludes the notebooks); the
notebooks are outputs of this script, never edited by hand. What changes on the way:

- MyST that Colab would show as raw text is resolved: the ``{{ colab_badge ... }}`` substitution
  becomes the badge of that notebook, ``{cite}`key``` becomes "(Author et al., year)" from
  ``book/references.bib``, and a ``:::{admonition} Solution`` dropdown becomes a closed
  ``<details>`` block;
- hidden cells stay hidden: the setup cell and the solution cells (``hide-cell``) are Colab
  "forms" (a title, the code collapsed) and have their source collapsed in Jupyter;
- the notebook asks Colab for a GPU runtime, and a study's ``device = "cpu"`` parameter becomes
  ``"cuda"`` when the runtime has a GPU (papermill can still pass ``device``);
- outputs are empty: Colab runs the notebook.

Usage::

    python tools/make_notebooks.py           # write the notebooks
    python tools/make_notebooks.py --check   # exit 1 and list the stale ones (CI)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import jupytext
import nbformat
import yaml

ROOT = Path(__file__).resolve().parents[1]
BADGE_SUBSTITUTION = '{{ colab_badge | replace("NOTEBOOK", env.docname) }}'
COLAB_BADGE_IMAGE = "https://colab.research.google.com/assets/colab-badge.svg"
SOLUTION = re.compile(r"^:{3,}\{admonition\} Solution[^\n]*\n:class: [^\n]*dropdown[^\n]*\n(.*?)^:{3,}[ \t]*$", re.S | re.M)
CITE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
DEVICE_PARAMETER = re.compile(r'^device = "cpu"(.*)$', re.M)
GPU_DEVICE = 'device = "cuda" if torch.cuda.is_available() else "cpu"'


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def pages() -> list[str]:
    """Docnames of the pages with code (every toc entry but the introduction)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    out = []
    for part in toc.get("parts", []):
        for ch in part.get("chapters", []):
            out.append(ch["file"])
            out.extend(s["file"] for s in ch.get("sections", []) or [])
    return [p for p in out if (ROOT / f"{p}.md").exists() and "{code-cell}" in (ROOT / f"{p}.md").read_text()]


def colab_url(docname: str, config: dict | None = None) -> str:
    """The Colab address of the generated notebook of ``docname`` (e.g. ``book/01_kspace``)."""
    config = config or _config()
    repo = config["repository"]
    owner_repo = repo["url"].removeprefix("https://github.com/").rstrip("/")
    return f"{config['launch_buttons']['colab_url']}/github/{owner_repo}/blob/{repo['branch']}/{docname}.ipynb"


def _bib_labels() -> dict[str, str]:
    """``key -> "Surname et al., year"`` from book/references.bib."""
    text = (ROOT / "book" / "references.bib").read_text()
    labels = {}
    for m in re.finditer(r"@\w+\{([^,\s]+),(.*?)\n\}", text, re.S):
        key, body = m.group(1), m.group(2)
        author = re.search(r"author\s*=\s*[{\"](.+?)[}\"],?\s*\n", body, re.S)
        year = re.search(r"year\s*=\s*[{\"]?(\d{4})", body)
        names = [a.strip() for a in author.group(1).split(" and ")] if author else [key]
        first = names[0].split(",")[0] if "," in names[0] else names[0].split()[-1]
        first = first.strip("{}")
        who = first if len(names) == 1 else (f"{first} and {names[1].split(',')[0].strip('{}')}" if len(names) == 2 and "," in names[1] else f"{first} et al.")
        labels[key] = f"{who}, {year.group(1)}" if year else who
    return labels


def _markdown(source: str, docname: str, config: dict, bib: dict[str, str]) -> str:
    badge = f"[![Open In Colab]({COLAB_BADGE_IMAGE})]({colab_url(docname, config)})"
    source = source.replace(BADGE_SUBSTITUTION, badge)

    def cite(m):
        keys = [k.strip() for k in m.group(1).split(",")]
        missing = [k for k in keys if k not in bib]
        if missing:
            raise ValueError(f"{docname}: citation keys not in book/references.bib: {missing}")
        return "(" + "; ".join(bib[k] for k in keys) + ")"

    source = CITE.sub(cite, source)
    source = SOLUTION.sub(lambda m: "<details>\n<summary><b>Solution</b> (click to open)</summary>\n\n"
                          + m.group(1).strip("\n") + "\n\n</details>", source)
    leftover = re.findall(r"\{\{[^}]*\}\}|^:{3,}\{[^}]*\}|\{[a-z-]+\}`", source, re.M)
    if leftover:
        raise ValueError(f"{docname}: MyST markup that Colab cannot show: {leftover[:3]}")
    return source


def _form(source: str, title: str) -> str:
    return f"# @title {title}\n{source}"


def convert(docname: str, config: dict | None = None) -> nbformat.NotebookNode:
    """The Colab notebook of ``docname`` (without outputs)."""
    config = config or _config()
    bib = _bib_labels()
    src = jupytext.read(ROOT / f"{docname}.md")
    cells = []
    exercise = 0
    first_code = True
    for cell in src.cells:
        if cell.cell_type == "markdown":
            text = _markdown(cell.source, docname, config, bib)
            exercise = max([exercise] + [int(n) for n in re.findall(r"^### Exercise (\d+)", text, re.M)])
            cells.append(nbformat.v4.new_markdown_cell(text))
            continue
        if cell.cell_type != "code":
            continue
        tags = list(cell.metadata.get("tags", []))
        meta = {"tags": tags} if tags else {}
        code = cell.source
        if first_code and {"remove-cell", "hide-cell"} & set(tags):
            code = _form(code, "Setup: on Colab, install mrtl and its book extras; figures inline; GPU if any")
            meta.update(cellView="form", jupyter={"source_hidden": True})
        elif "hide-cell" in tags:
            code = _form(code, f"Solution to exercise {exercise} (double-click to show the code)")
            meta.update(cellView="form", jupyter={"source_hidden": True})
        if "parameters" in tags and DEVICE_PARAMETER.search(code):
            code = DEVICE_PARAMETER.sub(GPU_DEVICE + r"\1", code, count=1)
            if "import torch" not in code:
                code = "import torch\n\n" + code
        first_code = False
        cells.append(nbformat.v4.new_code_cell(code, metadata=meta))
    for i, c in enumerate(cells):
        c["id"] = f"c{i:03d}"
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
        "mrtl": {"generated_from": f"{docname}.md", "by": "tools/make_notebooks.py; do not edit"},
    }
    return nb


def render(docname: str, config: dict | None = None) -> str:
    """The text of the generated notebook file (deterministic)."""
    return nbformat.writes(convert(docname, config)) + "\n"


def stale(config: dict | None = None) -> list[str]:
    """Paths of generated notebooks that are missing or differ from their MyST source."""
    config = config or _config()
    out = []
    for docname in pages():
        path = ROOT / f"{docname}.ipynb"
        if not path.exists() or path.read_text() != render(docname, config):
            out.append(path.relative_to(ROOT).as_posix())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Generate (or --check) the Colab notebooks of the course.")
    ap.add_argument("--check", action="store_true", help="exit 1 when a notebook is missing or out of date")
    args = ap.parse_args(argv)
    config = _config()
    if args.check:
        bad = stale(config)
        if bad:
            print("out of date (run `python tools/make_notebooks.py`):", *bad, sep="\n  ")
            return 1
        print(f"{len(pages())} generated notebooks are up to date")
        return 0
    for docname in pages():
        path = ROOT / f"{docname}.ipynb"
        text = render(docname, config)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print("wrote", path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
