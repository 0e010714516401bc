# Set-up commands for a fresh clone: make test, make run, make install. Each creates .venv itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: install test format run bench gpu gpu-wheels clean

# PYTHONWARNINGS=ignore: configs/ sits outside src/, so setuptools installs through a meta path finder and prints an
# information-only notice about it, nothing to act on; the first screen stays clean
$(VENV)/.runtime: pyproject.toml   # the package and what it needs to train and report
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed: $(VENV)/.runtime   # and the test tools: pytest, ruff, Hydra's launcher plugins
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.runtime ## install the package into .venv, without the test tools

test: $(VENV)/.installed  ## install the package with its test extras, lint, check the format, run the suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n auto --dist loadfile $(ARGS)  # one worker per core, each test file on one worker

format: $(VENV)/.installed ## format the code and fix what the linter can (what make test checks)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

run: $(VENV)/.runtime     ## train the default configuration (ResNet56v2, AdamW, CIFAR-10); ARGS="lr=3e-3 ..." adds overrides
	$(PY) -m runner $(ARGS)

bench: $(VENV)/.installed ## time the runner's loop against a plain PyTorch DataLoader loop
	$(PY) scripts/bench.py $(ARGS)

# The GPU command. On a GPU machine whose Python has torch and torchvision but no Hydra: installs this package
# (editable, no downloads) with the Hydra wheels carried in .gpu/wheels (make gpu-wheels builds them on a machine
# with a package index), then runs scripts/gpu.py: a preflight, then the measurements, under DEADLINE seconds.
WHEELS   := .gpu/wheels
DEADLINE ?= 480
HYDRA    := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 PyYAML packaging
GPU_PYTHON ?= 3.12        # the GPU machine's Python (PyYAML's wheel is built for one version)

gpu:                      ## on a GPU machine: preflight, then the speed figures into docs/results/; DATA=cifar10-jpg.tar.gz
	$(PYTHON) -m pip install --quiet --no-index --find-links $(WHEELS) $(HYDRA)
	$(PYTHON) -m pip install --quiet --no-index --find-links $(WHEELS) --no-deps -e .  # builds with the carried setuptools
	$(PYTHON) scripts/gpu.py --deadline $(DEADLINE) $(if $(DATA),--data $(DATA))

gpu-wheels:               ## here, with a package index: the wheels `make gpu` installs, into .gpu/wheels
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELS) hydra-core==1.3.8 omegaconf==2.3.1 \
	  antlr4-python3-runtime==4.9.3 packaging
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(WHEELS) "setuptools>=68"
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --platform manylinux2014_x86_64 -d $(WHEELS) PyYAML

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
