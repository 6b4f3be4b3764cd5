# mrtl: quick start is `make demo` then `make test`.
# Every target creates .venv when it is missing and installs torch==2.13.0 first (the CPU
# wheel on these machines; a bare `torch` requirement would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0
export MPLBACKEND := Agg

.PHONY: all install demo test test-fast book book-check notebooks lab reproduce bench clean help

help:
	@echo "make demo       run the single-coil transfer-learning study on the bundled data (small scale)"
	@echo "make test       run the test suite"
	@echo "make book       build the course (jupyter-book, every notebook executed) into _build/html"
	@echo "make notebooks  regenerate the Colab notebooks book/**/*.ipynb from the MyST chapters"
	@echo "make lab        install JupyterLab into .venv and open the chapters' notebooks"
	@echo "make reproduce  run every study notebook through papermill (STUDY=..., SCALE=small|full)"
	@echo "make bench      print the benchmark tables"

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mrtl demo

test: $(STAMP)
	$(PY) -m pytest -q

# The book build: MathJax is served from the site (tools/fetch_mathjax.py, pinned and checked),
# the Colab notebooks must match their chapters, every notebook is executed. In the built pages
# widgets become static figures (MRTL_STATIC_FIGURES) and progress bars are off (MRTL_QUIET);
# the kernel's startup warning about its local TCP sockets is dropped from the log.
book: $(STAMP)
	$(PY) tools/fetch_mathjax.py
	$(PY) tools/make_notebooks.py --check
	$(VENV)/bin/jupyter-book clean .
	MRTL_QUIET=1 MRTL_STATIC_FIGURES=1 bash -o pipefail -c '$(VENV)/bin/jupyter-book build . -n -W --keep-going 2>&1 \
	  | grep -v --line-buffered "Kernel is running over TCP without encryption"'

notebooks: $(STAMP)
	$(PY) tools/make_notebooks.py

lab: $(STAMP)
	$(PY) -m pip install -q "jupyterlab>=4"
	$(VENV)/bin/jupyter lab book

book-check: $(STAMP)
	$(PY) -m pytest -q tests/test_book_browser.py

STUDY ?= all
SCALE ?= small
reproduce: $(STAMP)
	$(VENV)/bin/mrtl reproduce --study $(STUDY) --scale $(SCALE)

bench: $(STAMP)
	$(PY) benchmarks/bench_ops.py
	$(PY) benchmarks/bench_recon.py
	$(PY) benchmarks/bench_train.py

clean:
	rm -rf _build .pytest_cache
