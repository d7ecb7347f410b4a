# Set-up and the two everyday commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# exact versions the tests passed with; `make install CONSTRAINTS=` resolves without them
CONSTRAINTS ?= constraints.txt
TORCH_VERSION ?= $(shell sed -n 's/^torch==//p' constraints.txt)

.PHONY: install demo test lint bench clean lock

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first: the pinned build where a local wheel provides it, else pip's normal torch
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION) || $(PY) -m pip install --quiet torch
	$(PY) -m pip install --quiet $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[dev]"
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

# Re-resolve: the newest versions pyproject.toml allows (torch stays at TORCH_VERSION) go into
# constraints.txt; run `make test` before committing it.
lock:
	rm -rf .venv-lock
	$(MAKE) install VENV=.venv-lock CONSTRAINTS=
	{ sed -n '/^#/p' constraints.txt; .venv-lock/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^#' | sed -E 's/^(torch==[^+]*)\+.*/\1/' | LC_ALL=C sort -f; } > constraints.txt.new
	mv constraints.txt.new constraints.txt
	rm -rf .venv-lock

clean:
	rm -rf runs $(VENV)
