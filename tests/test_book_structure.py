"""Fast structural checks of the course (no build): every page in `_toc.yml` exists and every
chapter follows the course template.

A chapter (``book/0N_*.md``) must:
- be a jupytext MyST notebook with the ``python3`` kernel;
- carry the "Open in Colab" badge (the ``colab_badge`` substitution of ``_config.yml``);
- open with a hidden first code cell (tag ``remove-cell`` or ``hide-cell``) that installs
  ``mrtl[book]`` from the repository of ``_config.yml`` when it runs on Colab, draws figures
  inline and sets ``device``;
- start with its learning goals (the first section after the title);
- end with 2-4 exercises, each with a solution hidden in a dropdown admonition or toggle, whose
  code is a hidden code cell (executed by the book build, so a broken solution fails it), never
  a code fence that nothing runs;
- do its computations with ``mrtl`` (and name the modules and equations it teaches).

The experiment notebooks (``book/experiments/*.md``) must exist, be jupytext notebooks and call
``mrtl``; they are studies, so the exercise/learning-goal template does not apply to them.

Every page with code has a Colab notebook generated next to it (``tools/make_notebooks.py``):
it must be up to date (a test regenerates it and compares), free of MyST that Colab cannot
show, keep solutions hidden, ask for a GPU, and run top to bottom with papermill on CPU
(``test_generated_notebook_runs``, marked slow, run by CI).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

jupytext = pytest.importorskip("jupytext")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def _toc_files(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        if "root" in node:
            out.append(node["root"])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                out.extend(_toc_files(child))
    return out


TOC_FILES = _toc_files(TOC)
CHAPTERS = [f for f in TOC_FILES if re.fullmatch(r"book/0\d_[a-z_]+", f)]
EXPERIMENTS = [f for f in TOC_FILES if f.startswith("book/experiments/")]

# What each chapter must teach: (mrtl modules it calls, paper equations it cites).
REQUIRED = {
    "book/01_kspace": (["mrtl.fft", "mrtl.masks"], ["1"]),
    "book/02_compressed_sensing": (["mrtl.wavelets", "mrtl.recon"], ["2"]),
    "book/03_parallel_imaging": (["mrtl.coils", "mrtl.recon"], ["3", "13"]),
    "book/04_data_consistency": (["mrtl.models", "mrtl.train"], ["6", "7", "8", "9", "10", "11", "16"]),
}

INSTALL_MARKERS = ['"google.colab" in sys.modules', "pip", "install", "mrtl[book]", "%matplotlib inline"]
DEVICE_LINE = 'device = "cuda" if torch.cuda.is_available() else "cpu"'


def _path(name: str) -> Path:
    for ext in (".md", ".ipynb"):
        p = ROOT / f"{name}{ext}"
        if p.exists():
            return p
    return ROOT / f"{name}.md"


def _read(name: str):
    return jupytext.read(_path(name))


def _markdown(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def _code(nb) -> str:
    return "\n".join(c.source for c in nb.cells if c.cell_type == "code")


def test_toc_lists_chapters_and_experiments():
    assert TOC["root"] == "book/intro"
    assert len(CHAPTERS) == 8, CHAPTERS
    assert [c.split("/")[1][:2] for c in CHAPTERS] == ["01", "02", "03", "04", "05", "06", "07", "08"]
    assert sorted(EXPERIMENTS) == ["book/experiments/efficiency", "book/experiments/multicoil", "book/experiments/sweep",
                                   "book/experiments/transfer"]
    captions = [p.get("caption") for p in TOC["parts"]]
    assert "Experiments" in captions


@pytest.mark.parametrize("name", TOC_FILES)
def test_toc_file_exists(name):
    assert _path(name).exists(), f"{name}: listed in _toc.yml but neither {name}.md nor {name}.ipynb exists"


def test_config_execution_and_links():
    ex = CONFIG["execute"]
    assert ex["execute_notebooks"] == "cache"
    assert isinstance(ex["timeout"], int) and 60 <= ex["timeout"] <= 1200
    repo = CONFIG["repository"]
    assert repo["url"].startswith("https://github.com/")
    assert CONFIG["launch_buttons"]["colab_url"] == "https://colab.research.google.com"
    for pattern in (".venv", "_build", "results", "README.md", "CONTRIBUTING.md"):
        assert pattern in CONFIG["exclude_patterns"], pattern
    # The badge links to this repository and branch on Colab.
    badge = CONFIG["parse"]["myst_substitutions"]["colab_badge"]
    owner_repo = repo["url"].removeprefix("https://github.com/").rstrip("/")
    expected = f"{CONFIG['launch_buttons']['colab_url']}/github/{owner_repo}/blob/{repo['branch']}/NOTEBOOK.ipynb"
    assert f"({expected})" in badge, badge
    assert (ROOT / badge.split("](")[1].split(")")[0].lstrip("/")).exists(), "badge image missing"
    for ext in ("dollarmath", "amsmath", "colon_fence", "substitution"):
        assert ext in CONFIG["parse"]["myst_enable_extensions"], ext
    # Run live: Colab and Binder launch buttons (they open the generated notebooks).
    assert CONFIG["launch_buttons"]["binderhub_url"] == "https://mybinder.org"
    assert (ROOT / ".binder" / "requirements.txt").exists(), "Binder needs .binder/requirements.txt"
    # The generated notebooks are never built as pages (they sit next to their .md sources).
    for pattern in ("book/*.ipynb", "book/experiments/*.ipynb"):
        assert pattern in CONFIG["exclude_patterns"], pattern


def test_mathjax_is_local():
    """The site serves MathJax itself (fetched by tools/fetch_mathjax.py in `make book`)."""
    sphinx = CONFIG["sphinx"]["config"]
    path = sphinx["mathjax_path"]
    assert not path.startswith(("http:", "https:", "//")), f"mathjax_path points at a CDN: {path}"
    assert "book/_static" in sphinx["html_static_path"]
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import fetch_mathjax
    finally:
        sys.path.pop(0)
    assert path == "mathjax/" + fetch_mathjax.KEEP[0], (path, fetch_mathjax.KEEP[0])
    makefile = (ROOT / "Makefile").read_text()
    book_recipe = makefile.split("\nbook:", 1)[1].split("\n\n", 1)[0]
    assert "tools/fetch_mathjax.py" in book_recipe, "`make book` must fetch MathJax before building"
    assert "book/_static/mathjax" in (ROOT / ".gitignore").read_text(), "the MathJax copy must not be committed"


def _chapter_exists(name):
    if not _path(name).exists():
        pytest.fail(f"{name} does not exist")


@pytest.mark.parametrize("name", CHAPTERS + EXPERIMENTS)
def test_is_jupytext_notebook_calling_mrtl(name):
    _chapter_exists(name)
    nb = _read(name)
    if _path(name).suffix == ".md":
        head = _path(name).read_text().split("---")[1]
        assert "jupytext:" in head and "kernelspec:" in head, f"{name}: missing jupytext front matter"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3", f"{name}: kernel must be python3"
    code = _code(nb)
    assert re.search(r"^\s*(import mrtl|from mrtl[.\w]* import)", code, re.M), f"{name}: never imports mrtl"


@pytest.mark.parametrize("name", CHAPTERS)
def test_hidden_install_cell_first(name):
    _chapter_exists(name)
    nb = _read(name)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells, f"{name}: no code cells"
    first = code_cells[0]
    tags = first.metadata.get("tags", [])
    assert {"remove-cell", "hide-cell"} & set(tags), f"{name}: first code cell must be hidden, tags={tags}"
    for marker in INSTALL_MARKERS:
        assert marker in first.source, f"{name}: install cell lacks {marker!r}"
    assert CONFIG["repository"]["url"] in first.source, f"{name}: install cell must use {CONFIG['repository']['url']}"
    assert DEVICE_LINE in first.source, f"{name}: install cell must set {DEVICE_LINE!r}"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_study_setup_cell(name):
    """A study's hidden first cell installs mrtl[book] on Colab and draws figures inline."""
    first = [c for c in _read(name).cells if c.cell_type == "code"][0]
    assert {"remove-cell", "hide-cell"} & set(first.metadata.get("tags", [])), f"{name}: first cell must be hidden"
    for marker in INSTALL_MARKERS:
        assert marker in first.source, f"{name}: setup cell lacks {marker!r}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_colab_badge_and_learning_goals_first(name):
    _chapter_exists(name)
    md = _markdown(_read(name))
    lines = [line.strip() for line in md.splitlines() if line.strip()]
    titles = [i for i, line in enumerate(lines) if re.match(r"^# \S", line)]
    assert titles, f"{name}: no '# Title'"
    after = lines[titles[0] + 1:]
    assert '{{ colab_badge | replace("NOTEBOOK", env.docname) }}' in md, f"{name}: no Colab badge"
    sections = [line for line in after if re.match(r"^#{2,3} ", line)]
    assert sections and re.match(r"^## Learning goals\s*$", sections[0]), (
        f"{name}: the first section must be '## Learning goals', got {sections[:1]}"
    )
    start = after.index(sections[0])
    goals = []
    for line in after[start + 1:]:
        if line.startswith("#"):
            break
        if re.match(r"^[-*] |^\d+\. ", line):
            goals.append(line)
    assert len(goals) >= 3, f"{name}: expected at least 3 learning goals, got {goals}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_exercises_with_hidden_solutions(name):
    _chapter_exists(name)
    md = _markdown(_read(name))
    assert re.search(r"^## Exercises\s*$", md, re.M), f"{name}: no '## Exercises' section"
    tail = md[re.search(r"^## Exercises\s*$", md, re.M).end():]
    exercises = re.findall(r"^### Exercise \d+", tail, re.M)
    assert 2 <= len(exercises) <= 4, f"{name}: expected 2-4 exercises, got {len(exercises)}"
    hidden = re.findall(r"^:{3,}\{admonition\} Solution[^\n]*\n:class: [^\n]*dropdown", tail, re.M)
    hidden += re.findall(r"^[:`]{3,}\{toggle\}", tail, re.M)
    assert len(hidden) >= len(exercises), f"{name}: {len(exercises)} exercises but {len(hidden)} hidden solutions"
    # Solution code must run when the book is built: a hidden code cell, not a fence in prose.
    fences = re.findall(r"^```(?:python|py|ipython3?)\s*$", tail, re.M)
    assert not fences, f"{name}: {len(fences)} solution code fence(s) that nothing executes; use a hide-cell code cell"
    nb = _read(name)
    cells = nb.cells
    start = next(i for i, c in enumerate(cells) if c.cell_type == "markdown" and re.search(r"^## Exercises\s*$", c.source, re.M))
    for c in cells[start:]:
        if c.cell_type == "code":
            assert "hide-cell" in c.metadata.get("tags", []), f"{name}: solution cell not hidden: {c.source[:60]!r}"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_chapter_uses_modules_and_cites_equations(name):
    _chapter_exists(name)
    nb = _read(name)
    text = _markdown(nb) + "\n" + _code(nb)
    modules, equations = REQUIRED[name]
    for module in modules:
        short = module.split(".")[1]
        used = re.search(rf"\bmrtl\.{short}\b|from mrtl import [^\n]*\b{short}\b|from mrtl\.{short} import", text)
        assert used, f"{name}: should call {module}"
        assert module in _markdown(nb), f"{name}: should point the reader to `{module}`"
    md = _markdown(nb)
    cited = set()
    for m in re.finditer(r"Eqs?\.\s*([\d\s,\-–and]+)", md):
        for a, b in re.findall(r"(\d+)\s*[-–]\s*(\d+)", m.group(1)):
            cited.update(str(i) for i in range(int(a), int(b) + 1))
        cited.update(re.findall(r"\d+", m.group(1)))
    missing = [e for e in equations if e not in cited]
    assert not missing, f"{name}: should cite the paper's Eq. {missing}"


def test_citations_exist_in_bibliography():
    bib = (ROOT / "book" / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    for name in TOC_FILES:
        p = _path(name)
        if not p.exists() or p.suffix != ".md":
            continue
        for group in re.findall(r"\{cite[:\w]*\}`([^`]+)`", p.read_text()):
            for key in group.split(","):
                assert key.strip() in keys, f"{name}: cites unknown key {key.strip()!r}"


# --- the generated Colab notebooks -------------------------------------------------------------

sys.path.insert(0, str(ROOT / "tools"))
import make_notebooks  # noqa: E402

sys.path.pop(0)
NOTEBOOK_PAGES = make_notebooks.pages()


def test_every_code_page_has_a_notebook():
    assert sorted(NOTEBOOK_PAGES) == sorted(CHAPTERS + EXPERIMENTS)


def test_generated_notebooks_are_up_to_date():
    """The notebooks at the badge paths are what tools/make_notebooks.py makes of the .md now."""
    stale = make_notebooks.stale()
    assert not stale, f"out of date, run `make notebooks`: {stale}"


@pytest.mark.parametrize("docname", NOTEBOOK_PAGES)
def test_generated_notebook_is_colab_ready(docname):
    path = ROOT / f"{docname}.ipynb"
    nb = json.loads(path.read_text())
    assert nb["metadata"]["accelerator"] == "GPU"
    text = "\n".join("".join(c["source"]) for c in nb["cells"])
    for raw in ("{{", ":::{", "{cite}", "```{code-cell"):
        assert raw not in text, f"{docname}.ipynb: MyST markup {raw!r} would show as raw text on Colab"
    badge = make_notebooks.colab_url(docname)
    assert badge in text, f"{docname}.ipynb: no badge pointing at itself ({badge})"
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code")
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    n_ex = len(re.findall(r"^### Exercise \d+", md, re.M))
    assert md.count("<details>") >= n_ex, f"{docname}.ipynb: solutions must be in closed <details> blocks"
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    setup = "".join(code_cells[0]["source"])
    assert code_cells[0]["metadata"].get("cellView") == "form" and "mrtl[book]" in setup
    for c in code_cells:
        if "hide-cell" in c["metadata"].get("tags", []):
            assert c["metadata"].get("cellView") == "form" and "".join(c["source"]).startswith("# @title")
    params = [c for c in code_cells if "parameters" in c["metadata"].get("tags", [])]
    for c in params:
        assert 'device = "cpu"' not in "".join(c["source"]), f"{docname}.ipynb: the parameters pin the CPU on Colab"


@pytest.mark.parametrize("docname", NOTEBOOK_PAGES)
def test_generated_notebook_runs_the_book_code(docname):
    """The notebook's code is the page's code, cell for cell (what the book build executes), except
    for the Colab form titles and a study's device parameter."""
    page = [c.source for c in _read(docname).cells if c.cell_type == "code"]
    nb = json.loads((ROOT / f"{docname}.ipynb").read_text())
    gen = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(gen) == len(page), f"{docname}: {len(gen)} code cells in the notebook, {len(page)} on the page"
    for g, p in zip(gen, page):
        g = re.sub(r"^# @title [^\n]*\n", "", g)
        g = g.replace(make_notebooks.GPU_DEVICE, 'device = "cpu"').removeprefix("import torch\n\n") if g != p else g
        assert g == p, f"{docname}: a generated cell differs from the page:\n{g[:300]}\n---\n{p[:300]}"


def test_book_extra_covers_the_chapter_imports():
    """Everything the chapters import comes with `pip install mrtl[book]` (what Colab installs)."""
    import importlib.metadata as md

    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    reqs = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["book"]
    direct = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}
    allowed = set(direct)
    for dist in direct:  # and what those pull in (IPython comes with ipykernel)
        try:
            for r in md.requires(dist) or []:
                if "extra ==" not in r:
                    allowed.add(re.split(r"[<>=!~\[ ;(]", r, maxsplit=1)[0].lower().replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    owners = md.packages_distributions()
    missing = set()
    for name in NOTEBOOK_PAGES:
        for m in re.finditer(r"^\s*(?:import|from)\s+([A-Za-z_]\w*)", _code(_read(name)), re.M):
            mod = m.group(1)
            if mod in sys.stdlib_module_names or mod == "mrtl":
                continue
            dists = {d.lower().replace("_", "-") for d in owners.get(mod, [mod])}
            if not dists & allowed:
                missing.add(f"{name}: {mod} ({', '.join(sorted(dists))})")
    assert not missing, f"imported by the book but not in mrtl's dependencies or the `book` extra: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("docname", NOTEBOOK_PAGES)
def test_generated_notebook_runs(docname, tmp_path):
    """The Colab notebook runs top to bottom with papermill, on CPU, at the small default scale."""
    papermill = pytest.importorskip("papermill", reason="papermill is not installed (`pip install mrtl[book]`)")
    path = ROOT / f"{docname}.ipynb"
    # Static figures: headless, ipywidgets.interact sometimes leaves nbclient waiting forever
    # (measured here: 1 run in 6 of a one-slider notebook hung; jupyter/nbclient#312). The
    # timeout turns any other hang into a failure instead of a stuck CI job.
    env = {"MRTL_QUIET": "1", "MRTL_STATIC_FIGURES": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        papermill.execute_notebook(
            str(path), str(tmp_path / path.name), cwd=str(path.parent), kernel_name="python3",
            progress_bar=False, log_output=False, request_save_on_cell_execute=False,
            execution_timeout=1200,
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = json.loads((tmp_path / path.name).read_text())
    ran = [c for c in out["cells"] if c["cell_type"] == "code"]
    assert ran and all(c.get("execution_count") for c in ran), f"{docname}: not every cell ran"
