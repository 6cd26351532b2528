# Every target installs what it needs first; each is idempotent and quick when already done.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test lint frontend site test-frontend chromium bundled-model wheel plain-venv
FRONTEND_SOURCES := $(filter-out %.test.ts %.test.tsx,$(shell find frontend/src -type f)) \
	frontend/index.html frontend/vite.config.ts frontend/tsconfig.json

install: $(STAMP)

# PyTorch's CPU build goes in first, so that the project's `torch>=2.4` is already satisfied and
# pip never pulls a multi-GB CUDA build: PyTorch's CPU index offers `2.13.0+cpu`, which pip ranks
# above PyPI's CUDA `2.13.0` (TORCH_INDEX= leaves the index out, for a GPU machine or no network).
# `make wheel` and tests/test_wheel.py build offline with this venv's setuptools, hence the
# build-system floor of pyproject.toml here.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77.0.1"
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# The page: `npm ci` again only when the lockfile changes, a build only when a source is newer.
frontend/node_modules/.installed: frontend/package-lock.json
	cd frontend && npm ci --no-audit --no-fund
	touch $@

frontend/dist/index.html: frontend/node_modules/.installed $(FRONTEND_SOURCES)
	cd frontend && npm run build

frontend: frontend/dist/index.html

# The wheel, with the built page inside (setup.py copies frontend/dist into it): dist/*.whl.
# build/ goes first, so that no module deleted since the last build stays in the wheel.
wheel: install frontend
	rm -rf build dist/captioner-*.whl
	$(PY) -m pip wheel --no-deps --no-build-isolation -w dist .

# The wheel `pip install`ed (no extras) into a fresh venv, as a user gets it; for
# `bench/startup.py --venv $(PLAIN)`. An existing PLAIN is left alone.
PLAIN ?= /tmp/captioner-plain
plain-venv: wheel
	@test ! -e $(PLAIN) || { echo "$(PLAIN) exists: remove it or give PLAIN=DIR"; exit 2; }
	python3 -m venv $(PLAIN)
	$(PLAIN)/bin/pip install -q dist/captioner-*.whl

# The static site (page + the bundled model's int8 ONNX export) that captions in the browser:
# `python -m http.server --directory frontend/site`, or `captioner serve --page-dir` it.
BUNDLED := src/captioner/pretrained/flickr8k-effnet
frontend/site/index.html: frontend/dist/index.html $(wildcard $(BUNDLED)/*)
	$(VENV)/bin/captioner export $(BUNDLED) --web frontend/site
	touch $@

site: install frontend/site/index.html

# The web app with the bundled model at http://127.0.0.1:8000, captioning on the server or,
# switched, in the browser
PORT ?= 8000
demo: install site
	$(VENV)/bin/captioner serve --page-dir frontend/site --port $(PORT)

# Component tests (Vitest), then end to end in headless Chromium: the page under `captioner
# serve`, and the exported static site under `python -m http.server`. Without Chromium the target
# stops first, in one line: the browser tests are never skipped here.
test-frontend: chromium install frontend
	cd frontend && npm test
	cd frontend && CHROME_PATH=$(CHROME_PATH) npm run e2e

# The browser the end-to-end tests drive (frontend/e2e/helpers.mjs reads CHROME_PATH too).
CHROME_PATH ?= /usr/bin/chromium
chromium:
	$(if $(wildcard $(CHROME_PATH)),@true,$(error Chromium is missing at $(CHROME_PATH): install it \
	(sudo apt-get install chromium on Debian/Ubuntu) or give CHROME_PATH=/path/to/chromium))

# Reproduces the bundled default model (about 1.5 hours on 2 CPU cores, features included): its
# PyTorch weights in float16 and the int8 graphs the base install runs. The self-critical stage
# uses the seed that shipped, the best of seeds 0 to 2 (docs/experiments.md).
FLICKR8K ?= ../shared/datasets/flickr8k
bundled-model: install
	$(VENV)/bin/captioner train --preset flickr8k-effnet --data $(FLICKR8K) --output-dir runs/flickr8k-effnet
	$(VENV)/bin/captioner train --preset flickr8k-effnet-scst --data $(FLICKR8K) --output-dir runs/flickr8k-effnet-scst --set seed=0
	$(VENV)/bin/captioner export runs/flickr8k-effnet-scst/best $(BUNDLED) --half --onnx $(BUNDLED) --variants int8

# Python (ruff, then mypy as pyproject.toml's [tool.mypy] sets it), then the page (ESLint with
# the React hooks rules: frontend/eslint.config.js).
lint: install frontend/node_modules/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	cd frontend && npm run lint

test: chromium install lint test-frontend
	$(VENV)/bin/pytest -q
