# Every target installs what it needs first; each is idempotent and quick when already done.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
IMG ?=

.PHONY: install demo test lint

install: $(STAMP)

# torch is pinned to the CPU wheel first, so that the project's `torch>=2.4` is already satisfied
# and pip never pulls a multi-GB CUDA build on a CPU machine.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	@test -n "$(IMG)" || (echo "usage: make demo IMG=path/to/photo.jpg" && exit 2)
	$(VENV)/bin/captioner caption $(IMG)

lint: install
	$(VENV)/bin/ruff check .

test: install lint
	$(VENV)/bin/pytest -q
