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

# The GPU command. A GPU machine's Python may have torch and torchvision and nothing else this
# needs: `make gpu` installs what .gpu/wheels carries (no downloads; `make gpu-wheels` fills it on a
# machine with a package index) and this package (editable), then runs scripts/gpu.py, which names
# in one line whatever is still missing before it starts anything. Its stages run under DEADLINE
# seconds; the installs come on top (about half a minute). DATA: the image-folder CIFAR-10 as a
# tarball (DATA= runs on synthetic images).
WHEELS     := .gpu/wheels
DATA       ?= .gpu/cifar10-jpg.tar.gz
DEADLINE   ?= 420
# the GPU machine's Python version: PyYAML's and protobuf's wheels are built for one
GPU_PYTHON ?= 3.12
# what a bare torch + torchvision image lacks: Hydra (the CLI), tensorboard's event writer with the
# two packages it imports (absl-py, protobuf; not those of its server), tqdm, pytest for the
# preflight and checks, setuptools to install this package
CARRY := hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 PyYAML packaging \
         tensorboard absl-py protobuf tqdm pytest iniconfig pluggy pygments "setuptools>=68"

# a failed install is not the end: scripts/gpu.py then names what is missing, in one line
gpu:                      ## on a GPU machine: speed figures into docs/results/ (DATA, DEADLINE)
	$(PYTHON) -m pip install -qqq --no-index --find-links $(WHEELS) --no-deps $(CARRY) || true
	$(PYTHON) -m pip install -qqq --no-index --find-links $(WHEELS) --no-deps -e . || true
	$(PYTHON) scripts/gpu.py --deadline $(DEADLINE) $(if $(DATA),--data $(DATA))

# antlr4-python3-runtime 4.9.3 is a source archive only, built into a wheel here; the rest is
# downloaded as wheels for GPU_PYTHON
gpu-wheels:               ## here, with a package index: what `make gpu` installs, into .gpu/wheels
	$(PYTHON) -m pip wheel --quiet --no-deps -w $(WHEELS) antlr4-python3-runtime==4.9.3
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version $(GPU_PYTHON) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d $(WHEELS) \
	  $(filter-out antlr4-python3-runtime%,$(CARRY))

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
