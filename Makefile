# Two commands from a fresh clone:
#   make demo   a virtual environment, the right torch, the project, then the web UI + HTTP API
#   make test   the same set-up with the dev extras, the lint checks, then the whole test suite
# `make lint` runs the checks alone. Variables: PYTHON (the interpreter that makes the venv),
# VENV, HOST, PORT, TORCH_VERSION, TORCH_CPU_INDEX, e.g. `make demo PORT=7861`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
HOST ?= 127.0.0.1
PORT ?= 7860
# The CPU build for machines without an NVIDIA GPU. A wheel of it that pip already finds without
# an index (its find-links, as on machines that keep one on disk) is taken first, offline;
# elsewhere it comes from PyTorch's CPU wheel index (PyPI's own Linux wheels are CUDA builds of
# several GB).
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
DEMO_EXTRAS := serve,control
DEV_EXTRAS := dev,control,train,serve,eval,batch

BIN := $(abspath $(VENV))/bin
PY := $(BIN)/python
PIP := $(PY) -m pip
export PATH := $(BIN):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))

.PHONY: help demo test lint setup-demo setup-test

help:
	@echo "make demo   set up (.venv, torch, the project) and start the web UI on http://$(HOST):$(PORT)"
	@echo "make test   set up with the dev extras, run the lint checks, then the whole test suite"
	@echo "make lint   ruff format --check, ruff check, the import layers, the type check"

# ---------------------------------------------------------------- set-up (each step once)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch before the project, so that the project's `torch>=2.3,<3` is already met and pip never
# picks a build by itself.
$(VENV)/.torch: | $(PY)
	@if $(PY) -c "import torch" 2>/dev/null; then \
	  echo "torch $$($(PY) -c 'import torch; print(torch.__version__)') is installed already"; \
	elif nvidia-smi >/dev/null 2>&1; then \
	  echo "an NVIDIA GPU answers (nvidia-smi): installing PyPI's torch, a CUDA build"; \
	  $(PIP) install -q "torch>=2.3,<3"; \
	elif $(PIP) install -q --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
	  echo "no NVIDIA GPU: installed the CPU build torch==$(TORCH_VERSION) from a wheel on this machine"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	else \
	  echo "no NVIDIA GPU: installing the CPU build torch==$(TORCH_VERSION) from $(TORCH_CPU_INDEX)"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)" --index-url $(TORCH_CPU_INDEX) \
	    --extra-index-url https://pypi.org/simple; \
	fi
	@touch $@

$(VENV)/.installed-demo: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[$(DEMO_EXTRAS)]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[$(DEV_EXTRAS)]"
	@touch $@

setup-demo: $(VENV)/.installed-demo
setup-test: $(VENV)/.installed-test

# ---------------------------------------------------------------- the two commands

# SDXL when an NVIDIA GPU answers and SDXL + the IP-Adapter are in the Hugging Face cache
# (`instantstyle download`); else the tiny random-weight model, which runs anywhere in seconds
# (its images are noise). The server binds to this machine only.
demo: setup-demo
	@if ! nvidia-smi >/dev/null 2>&1; then \
	  base=tiny; why="no NVIDIA GPU answers (nvidia-smi), and SDXL on a CPU takes minutes per image"; \
	elif ! plan=$$(HF_HUB_OFFLINE=1 instantstyle download --dry-run 2>&1) || grep -q "to fetch" <<<"$$plan"; then \
	  base=tiny; why="the SDXL weights are not all in the Hugging Face cache (fetch them: instantstyle download)"; \
	else \
	  base=sdxl; why="an NVIDIA GPU answers and the SDXL weights are in the Hugging Face cache"; \
	fi; \
	if [ "$$base" = sdxl ]; then \
	  echo "demo on SDXL: $$why"; echo; \
	  HF_HUB_OFFLINE=1 exec instantstyle serve --host $(HOST) --port $(PORT); \
	else \
	  echo "demo on --base tiny (random weights, its images are noise): $$why"; echo; \
	  exec instantstyle serve --base tiny --host $(HOST) --port $(PORT); \
	fi

# The lint checks, then the README's test command.
test: lint
	OMP_NUM_THREADS=1 python -m pytest -q -n 2 --dist worksteal

lint: setup-test
	ruff format --check --output-format concise .
	ruff check .
	lint-imports --no-cache
	basedpyright
