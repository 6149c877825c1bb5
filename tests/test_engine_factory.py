"""Engine selection in ``dashrl.rl.make_engine`` (default suite: no vllm needed)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

import dashrl.vllm_engine
from dashrl.models import load_model, load_tokenizer
from dashrl.params import load_params
from dashrl.rl import make_engine
from dashrl.rollout import HFEngine, SamplingConfig
from dashrl.vllm_engine import VLLMEngine

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setattr(dashrl.vllm_engine, "vllm_available", lambda: False)


def run_cfg(**overrides):
    return dataclasses.replace(load_params(REPO / "params.yaml").rl.run("dash"), **overrides)


def test_engine_vllm_without_vllm_is_an_error_naming_the_param(tiny_model_dir, no_vllm):
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with pytest.raises(RuntimeError, match=r"engine: vllm .*vllm package is not installed"):
        make_engine(run_cfg(engine="vllm"), policy, tokenizer)
    with pytest.raises(RuntimeError, match="vllm package is not installed"):
        VLLMEngine(tiny_model_dir, tokenizer, eos_ids=[tokenizer.eos_token_id])


def test_auto_without_vllm_picks_hf_and_logs_it(tiny_model_dir, no_vllm, caplog):
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="dashrl.rl"):
        engine = make_engine(run_cfg(engine="auto", rollout_dtype="float32"), policy, tokenizer)
    assert isinstance(engine, HFEngine) and engine.model is policy
    assert "engine: auto -> hf" in caplog.text
    out = engine.generate(["1 + 1 ="], 2, SamplingConfig(temperature=1.0, max_new_tokens=4))
    assert len(out) == 1 and len(out[0]) == 2


def test_auto_with_vllm_but_no_gpu_picks_hf(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(dashrl.vllm_engine, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="dashrl.rl"):
        engine = make_engine(run_cfg(engine="auto"), policy, tokenizer)
    assert isinstance(engine, HFEngine)
    assert "engine: auto -> hf" in caplog.text
