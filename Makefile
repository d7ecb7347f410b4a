# Set-up and the two everyday commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0

.PHONY: install demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the pinned build where a local wheel provides it, else pip's normal torch
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/unlearnscope demo --out runs/demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests bench

bench: install  # quick versions; results in runs/bench/, the full figures stay in bench/results/
	$(PY) bench/circuits.py --quick --out runs/bench/circuits.json
	$(PY) bench/mrd.py --quick --out runs/bench/mrd.json
	$(PY) bench/gradients.py --quick --out runs/bench/gradients.json

clean:
	rm -rf runs $(VENV)
