"""The built course: its HTML, and every page of ``_build/html`` opened in headless Chromium.

Run after ``make book``. Without a browser, the HTML of each chapter and study page must show at
least the number of figures of ``MIN_FIGURES`` (one row per page) and its cell outputs must hold no
warning, traceback, stderr stream or absolute path of the machine that built it.

In the browser (python playwright driving Debian's Chromium, ``apt-get install chromium``;
``playwright install`` is never used, it downloads browsers), every HTML page must load (HTTP 200
from a local server), every ``<img>`` must decode to a non-zero natural size, no cell output may
hold a traceback or an error, and the console may log no error (the known noise of sphinx-thebe,
"THEBE_JS_URL has already been declared", is allowed). The browser is offline: requests that
leave the local server are answered with an empty response, so MathJax must come from the site
itself and every displayed and inline equation must be typeset by it (no raw TeX left, no
MathJax error). A full-page screenshot of every chapter and study page at 1280 px is saved to
``_build/screenshots/<page>.png``.

Skips (with the reason) when the book is not built or Chromium / playwright is missing; in CI
(``CI=true``) a missing piece is an error instead.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("MRTL_BOOK_HTML", ROOT / "_build" / "html"))  # the built book
SCREENSHOTS = HTML.parent / "screenshots"  # _build/screenshots/ch05.png by default
CHROMIUM = Path(os.environ.get("MRTL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# sphinx-thebe's script is included twice by jupyter-book; Chromium words it as
# "Identifier 'THEBE_JS_URL' has already been declared".
ALLOWED_CONSOLE_ERRORS = (("THEBE_JS_URL", "already been declared"),)
CH05 = "book/05_transfer_learning.html"
# Figures (images in cell outputs) each page must show in the built book; the numbers are what the
# code of each page draws, so a page whose figures disappear (e.g. plotting without an inline
# backend) fails.
MIN_FIGURES = {
    "book/01_kspace.html": 8,
    "book/02_compressed_sensing.html": 7,
    "book/03_parallel_imaging.html": 5,
    "book/04_data_consistency.html": 4,
    "book/05_transfer_learning.html": 5,
    "book/06_multicoil.html": 3,
    "book/07_self_supervised.html": 4,
    "book/08_reproducing.html": 2,
    "book/experiments/transfer.html": 2,
    "book/experiments/sweep.html": 2,
    "book/experiments/multicoil.html": 2,
    "book/experiments/efficiency.html": 3,
}
SKIP_DIRS = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}


def _pages() -> list[str]:
    if not (HTML / "index.html").exists():
        return []
    pages = []
    for p in sorted(HTML.rglob("*.html")):
        rel = p.relative_to(HTML)
        if rel.parts[0] in SKIP_DIRS:
            continue
        pages.append(rel.as_posix())
    return pages


PAGES = _pages()


def _skip_reason() -> str | None:
    if not PAGES:
        return f"the book is not built ({HTML / 'index.html'} missing): run `make book` first"
    if not CHROMIUM.exists():
        return f"Chromium not found at {CHROMIUM}: `apt-get install chromium` (or set MRTL_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "python playwright is not installed (`pip install playwright`; never `playwright install`)"
    return None


# Outside CI the test may skip (no book built, no Chromium). In CI (CI=true), `.ci/run` builds
# the book and installs Chromium first, so a missing piece is a failure, not a skip.
_IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if _IN_CI and _skip_reason() is not None:
    raise RuntimeError(f"browser test cannot run in CI: {_skip_reason()}")
needs_browser = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")
needs_book = pytest.mark.skipif(not PAGES, reason=f"the book is not built ({HTML / 'index.html'} missing): run `make book` first")

# --- the built HTML, without a browser ----------------------------------------------------------

# What must never reach a reader: warnings and tracebacks, stderr streams, the builder's paths.
_NOISE = [
    (re.compile(r"\b\w*Warning\b"), "a warning"),
    (re.compile(r"Traceback \(most recent call last\)|\bError:"), "a traceback or error"),
    (re.compile(r'class="output stderr"'), "a stderr stream"),
    (re.compile(r"(?:/work/|/home/|/root/|/tmp/|/Users/|site-packages|\.venv/)"), "an absolute path"),
    (re.compile(r"\x1b\[|\[\d+(?:;\d+)*m"), "terminal escape codes"),
]


def _html(page: str) -> str:
    return (HTML / page).read_text(errors="replace")


def _cell_outputs(page: str) -> list[str]:
    text = _html(page)
    starts = [m.start() for m in re.finditer(r'<div class="cell_output docutils container">', text)]
    ends = starts[1:] + [len(text)]
    out = []
    for a, b in zip(starts, ends):
        chunk = text[a:b]
        cut = chunk.find('<div class="cell docutils container')
        out.append(chunk[:cut] if cut > 0 else chunk)
    return out


@needs_book
@pytest.mark.parametrize("page", sorted(MIN_FIGURES))
def test_page_shows_its_figures(page):
    assert page in PAGES, f"{page} is not in the built book"
    figures = sum(len(re.findall(r"<img\b", o)) for o in _cell_outputs(page))
    assert figures >= MIN_FIGURES[page], f"{page}: {figures} figures in the cell outputs, expected at least {MIN_FIGURES[page]}"


@needs_book
@pytest.mark.parametrize("page", sorted(MIN_FIGURES))
def test_outputs_hold_no_warnings_tracebacks_or_paths(page):
    problems = []
    for out in _cell_outputs(page):
        text = html.unescape(re.sub(r"<img[^>]*>", "", out))
        for pattern, what in _NOISE:
            m = pattern.search(text)
            if m:
                start = max(0, m.start() - 80)
                problems.append(f"{what}: ...{re.sub(r'<[^>]+>', '', text[start:m.end() + 80]).strip()}...")
    assert not problems, f"{page}: rendered output shows {problems[:3]}"


@needs_book
def test_mathjax_is_served_by_the_site():
    page = _html("book/01_kspace.html")
    scripts = re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', page, re.I)
    assert scripts, "book/01_kspace.html loads no MathJax"
    for src in scripts:
        assert not src.startswith(("http:", "https:", "//")), f"MathJax comes from the network: {src}"
        assert (HTML / "book" / src.split("?")[0]).resolve().exists(), f"{src} is not in the built site"


# --- in the browser -----------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: a free port
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    external: list[str] = []

    def offline(route):
        url = route.request.url
        if url.startswith(server) or url.startswith("data:"):
            route.continue_()
        else:
            external.append(url)
            ctype = "application/javascript" if url.endswith(".js") else "text/plain"
            route.fulfill(status=200, body="", content_type=ctype)

    ctx.route("**/*", offline)
    ctx.external_requests = external
    yield ctx
    ctx.close()


_WAIT_FOR_IMAGES = """
async () => {
  const imgs = Array.from(document.images);
  await Promise.all(imgs.map(async (img) => {
    img.loading = "eager";
    if (!img.complete) {
      await new Promise((resolve) => {
        img.addEventListener("load", resolve, {once: true});
        img.addEventListener("error", resolve, {once: true});
        setTimeout(resolve, 5000);
      });
    }
    try { await img.decode(); } catch (e) {}
  }));
  return imgs.map((img) => ({src: img.currentSrc || img.src, w: img.naturalWidth, h: img.naturalHeight}));
}
"""

_CELL_ERRORS = """
() => {
  const outs = Array.from(document.querySelectorAll(".cell_output, .output, .cell-output"));
  const bad = [];
  for (const o of outs) {
    const text = o.innerText || "";
    const cls = o.querySelectorAll(".traceback, .error, .output.traceback, .output.error").length;
    if (text.includes("Traceback") || cls > 0 || o.matches(".traceback, .error")) {
      bad.push(text.slice(0, 400));
    }
  }
  return bad;
}
"""


def _open(context, server, page_path):
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    response = page.goto(server + page_path, wait_until="load", timeout=60_000)
    if 'http-equiv="Refresh"' in (HTML / page_path).read_text(errors="replace")[:2000]:
        # index.html is a redirect (jupyter-book writes it): follow it to the root page
        page.wait_for_url(lambda url: url != server + page_path, timeout=30_000)
        page.wait_for_load_state("load")
    return page, response, errors


@needs_browser
@pytest.mark.parametrize("page_path", PAGES or ["<book not built>"])
def test_page_loads_cleanly(context, server, page_path):
    page, response, errors = _open(context, server, page_path)
    try:
        assert response is not None and response.ok, f"{page_path}: HTTP {response and response.status}"
        title = page.title()
        assert title, f"{page_path}: empty <title>"
        images = page.evaluate(_WAIT_FOR_IMAGES)
        broken = [img["src"] for img in images if img["w"] == 0 or img["h"] == 0]
        assert not broken, f"{page_path}: images with zero natural size: {broken}"
        bad = page.evaluate(_CELL_ERRORS)
        assert not bad, f"{page_path}: cell output with a traceback/error: {bad[:2]}"
        page.wait_for_timeout(200)  # let late scripts log
        real = [e for e in errors if not any(all(part in e for part in a) for a in ALLOWED_CONSOLE_ERRORS)]
        assert not real, f"{page_path}: console errors: {real[:5]}"
    finally:
        page.close()


_MATH = """
async () => {
  const article = document.querySelector("article") || document.body;
  const hasMath = article.querySelectorAll(".math").length > 0;
  if (!window.MathJax || !MathJax.startup) {
    // Sphinx adds MathJax only to pages with maths; a page without any needs none
    if (hasMath) return {error: "MathJax did not load"};
  } else {
    await MathJax.startup.promise;
  }
  const maths = Array.from(article.querySelectorAll(".math"));
  const untypeset = maths.filter((m) => !m.querySelector("mjx-container")).map((m) => m.textContent.slice(0, 80));
  const errors = Array.from(article.querySelectorAll("mjx-merror")).map((e) => e.textContent.slice(0, 80));
  const clone = article.cloneNode(true);
  clone.querySelectorAll("pre, code, script, style, mjx-container, .cell_input").forEach((n) => n.remove());
  const text = clone.textContent;
  const raw = ["\\\\(", "\\\\[", "$$", "\\\\frac", "\\\\begin{"].filter((s) => text.includes(s));
  return {n: maths.length, typeset: article.querySelectorAll("mjx-container").length, untypeset, errors, raw};
}
"""


@needs_browser
@pytest.mark.parametrize("page_path", sorted(MIN_FIGURES))
def test_equations_render_offline(context, server, page_path):
    """Every equation is typeset by the site's own MathJax with the network cut: no raw TeX."""
    page, _, _ = _open(context, server, page_path)
    try:
        res = page.evaluate(_MATH)
    finally:
        page.close()
    assert "error" not in res, f"{page_path}: {res.get('error')} (is MathJax served from _static/mathjax?)"
    assert not res["untypeset"], f"{page_path}: equations left as TeX: {res['untypeset'][:3]}"
    assert not res["errors"], f"{page_path}: MathJax errors: {res['errors'][:3]}"
    assert not res["raw"], f"{page_path}: raw TeX in the text: {res['raw']}"
    if page_path.startswith("book/0"):
        assert res["n"] > 0 and res["typeset"] >= res["n"], f"{page_path}: {res}"


@needs_browser
@pytest.mark.parametrize("page_path", sorted(MIN_FIGURES))
def test_screenshot(context, server, page_path):
    """A full-page screenshot at 1280 px per chapter and study page, with figures and maths in."""
    assert page_path in PAGES, f"{page_path} is not in the built book"
    page, response, _ = _open(context, server, page_path)
    try:
        assert response.ok
        page.evaluate(_WAIT_FOR_IMAGES)
        page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        out = SCREENSHOTS / (page_path.removeprefix("book/").replace("/", "_").removesuffix(".html") + ".png")
        page.screenshot(path=str(out), full_page=True)
    finally:
        page.close()
    assert out.stat().st_size > 10_000, f"{out}: suspiciously small screenshot"
    from PIL import Image

    with Image.open(out) as im:
        assert im.width >= 1000 and im.height >= 900, im.size
