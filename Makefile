# `make test` and `make demo` work on a fresh clone: they create .venv (CPU torch first, so that no CUDA build is
# pulled in) and install the package with its extras: dev (tests, notebooks), onnx (export, int8, ONNX Runtime),
# openvino (OpenVINO inference), app (the web app), opencv (the training data pipeline's fast path, predict's PNG
# encoder), bench (the benchmarks' peers), at the versions of constraints.txt (the set the suite was last green
# with). `make test-latest` runs the suite in .venv-latest against the newest releases setup.cfg allows;
# `make constraints` does that, then rewrites constraints.txt from it (refresh on purpose, after a green run).
VENV ?= .venv
# pip's -c file; empty: the newest releases (upgraded on every install).
CONSTRAINTS ?= constraints.txt
PIP_VERSIONS = $(if $(CONSTRAINTS),-c $(CONSTRAINTS),--upgrade --upgrade-strategy eager)
# Where the CPU build of torch comes from: this project's machines serve it from their package index; where the index
# serves CUDA builds (PyPI on Linux), use `make test TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`.
TORCH_INDEX_URL ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-latest constraints demo bench clean browser

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PY) -m pip install -q $(PIP_VERSIONS) -e ".[dev,onnx,openvino,app,opencv,bench]"
	touch $(STAMP)

# transformers' own common tests come from the sdist of the installed version (downloaded once into .cache/); the
# two CPUs run the suite in two workers, each test module on one of them (module fixtures are built once); a worker
# that dies ends the run at once (a replaced worker can wait forever under --dist loadscope).
test: $(STAMP) browser
	$(PY) tests/transformers_suite.py
	$(PY) -m pytest -q -n 2 --dist loadscope --max-worker-restart=0

# The same suite against the newest releases (its own venv, upgraded on every run; torch stays 2.13.0).
test-latest:
	rm -f .venv-latest/.installed
	$(MAKE) test VENV=.venv-latest CONSTRAINTS=

# Refresh constraints.txt on purpose: the newest releases, written only once the suite passed with them.
constraints: test-latest
	{ sed -n '/^#/p' constraints.txt; .venv-latest/bin/python -m pip freeze --exclude-editable \
	  | grep -v -i '^torch==' | sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

# The app's browser test drives Debian's chromium: installed with apt-get when missing and running as root (as CI).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make test: installing Debian's chromium for the browser test (apt-get)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "make test: could not install chromium: the browser test will be skipped"; \
	  else echo "make test: chromium is missing and apt-get needs root: the browser test will be skipped"; fi; }

# Synthetic street scenes -> Trainer fine-tuning -> AutoModel + pipeline -> overlays; reuses what exists.
demo: $(STAMP)
	$(PY) -m fpn_seg.demo --output-dir demo_output

clean:
	rm -rf $(VENV) .venv-latest build src/*.egg-info .pytest_cache
