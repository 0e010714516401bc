# Two set-up commands for a fresh clone: `make test` and `make run`. Each creates .venv on its own.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: test format run bench gpu-all clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

test: $(VENV)/.installed  ## install the package with its test extras, lint, check the format, run the suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(ARGS)

format: $(VENV)/.installed ## format the code and fix what the linter can (what make test checks)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run: $(VENV)/.installed   ## train the default configuration (ResNet56v2, AdamW, CIFAR-10); ARGS="lr=3e-3 ..." adds overrides
	$(PY) -m runner $(ARGS)

bench: $(VENV)/.installed ## time the runner's loop against a plain PyTorch DataLoader loop
	$(PY) scripts/bench.py $(ARGS)

gpu-all:                  ## on a GPU machine (no venv, no hydra): all GPU checks and benchmarks; DATA=cifar10-jpg.tar.gz
	PYTHON=$(PYTHON) bash scripts/gpu_all.sh $(DATA)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
