"""Shared fixtures: a tiny byte-level tokenizer with a chat template and a tiny Llama model, built
from a config in the test session (no downloads), plus a tiny pipeline workspace."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]

# The SmolLM2 template, so that chat rendering is exercised exactly as with the embedded model.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with no merges: every byte is a token, plus the chat special tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab_size,
        max_position_embeddings=1024,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="session")
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved tiny HF model directory (safetensors + tokenizer), like data/models/<name>/."""
    return save_model_dir(build_tiny_model(len(tiny_tokenizer)), tiny_tokenizer, tmp_path_factory.mktemp("tiny_model"))


def save_model_dir(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, path: Path) -> Path:
    """``model`` + ``tokenizer`` saved as an HF directory (safetensors), eos/pad set for generation."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def tiny_params_dict() -> dict:
    """params.yaml with every section shrunk to seconds of work on a tiny model."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prepare"]["arith"].update(n_train=40, n_test=12, levels=[1, 4])
    raw["evaluate"]["models"] = ["base"]
    raw["evaluate"]["pass_k"].update(models=["base"], samples_per_problem=4, max_problems=6)
    raw["sft"]["common"].update(
        max_problems=8, samples_per_problem=2, max_new_tokens=8, sampling_batch_rows=8, batch_size=4, max_length=256,
        train_levels=None, train_dtype="float32", lr=1e-3,
    )
    raw["evaluate"]["generation"].update(max_new_tokens=12, batch_size=8, samples_per_problem=2, dtype="float32")
    raw["rl"]["common"].update(
        prompts_per_step=2, group_size=4, micro_batch_size=4, steps=2, max_new_tokens=8, rollout_batch_rows=8,
        train_levels=None, checkpoint_every=1, train_dtype="float32", rollout_dtype="float32",
    )
    raw["report"]["plot_dpi"] = 40
    return raw


@pytest.fixture
def workspace(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    """A temp repository root with a tiny params.yaml and the tiny model as data/models/base."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params_dict(), sort_keys=False))
    shutil.copytree(tiny_model_dir, tmp_path / "data" / "models" / "base")
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ------------------------------------------------------------------------------------------------
# A tiny git + DVC repository of the real pipeline (tests/test_dvc_pipeline.py, test_dvc_experiments.py)


def run_cmd(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> str:
    """Run a command in ``cwd``; its stdout + stderr, or an AssertionError with both when it fails."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result.stdout + result.stderr


def stages_run(output: str) -> set[str]:
    """The stages a ``dvc repro`` / ``dvc exp run`` output says it ran."""
    return set(re.findall(r"Running stage '([^']+)'", output))


DVC = [sys.executable, "-m", "dvc"]


def make_dvc_repo(root: Path, raw_params: dict, model_dir: Path) -> tuple[Path, dict[str, str]]:
    """The project's dvc.yaml and code with ``raw_params`` (the model from ``model_dir``), committed in a
    fresh git + DVC repository at ``root``; returns (root, the environment to run git and dvc in)."""
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    for package in ("dashrl", "stages"):
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    raw = {**raw_params, "model": {**raw_params["model"], "source": str(model_dir)}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(root), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    run_cmd(["git", "init", "-q"], root, env)
    run_cmd([*DVC, "init", "-q"], root, env)
    run_cmd(["git", "add", "-A"], root, env)
    run_cmd(["git", "commit", "-qm", "tiny pipeline"], root, env)
    return root, env
