"""Engine selection in ``dashrl.engines.factory.make_engine`` (default suite: no vllm needed)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

import dashrl.engines.factory
import dashrl.engines.vllm
from dashrl.config.params import load_params
from dashrl.engines.base import SamplingConfig, ShardedEngine
from dashrl.engines.factory import make_engine, rollout_gpus
from dashrl.engines.hf import HFEngine
from dashrl.engines.vllm import VLLMEngine, physical_gpu
from dashrl.infra.distributed import World
from dashrl.models import load_model, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_vllm(monkeypatch):
    monkeypatch.setattr(dashrl.engines.vllm, "vllm_available", lambda: False)


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
    with caplog.at_level(logging.INFO, logger="dashrl.engines.factory"):
        engine = make_engine(run_cfg(engine="auto", rollout_dtype="float32"), policy, tokenizer)
    assert isinstance(engine, HFEngine) and engine.model is policy
    assert "engine: auto -> hf" in caplog.text
    out = engine.generate(["1 + 1 ="], 2, SamplingConfig(temperature=1.0, max_new_tokens=4))
    assert len(out) == 1 and len(out[0]) == 2


def test_auto_with_vllm_but_no_gpu_picks_hf(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(dashrl.engines.vllm, "vllm_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="dashrl.engines.factory"):
        engine = make_engine(run_cfg(engine="auto"), policy, tokenizer)
    assert isinstance(engine, HFEngine)
    assert "engine: auto -> hf" in caplog.text


def test_several_hf_engines_share_the_batch(tiny_model_dir, no_vllm, caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU engines (GPU placement: below)
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    with caplog.at_level(logging.INFO, logger="dashrl.engines.factory"):
        engine = make_engine(run_cfg(engine="hf", rollout_dtype="float32", rollout_engines=2), policy, tokenizer)
    assert isinstance(engine, ShardedEngine) and len(engine.engines) == 2
    first, second = engine.engines
    assert first.model is policy and first.tokenizer is tokenizer  # engine 0 shares the trainer's weights
    assert second.model is not policy and second.tokenizer is not tokenizer  # its own copy and tokenizer
    assert not any(p.requires_grad for p in second.model.parameters())
    assert "rollout_engines 2" in caplog.text and "no speed-up" in caplog.text
    out = engine.generate(["1 + 1 =", "2 + 2 =", "3 + 3 ="], 2, SamplingConfig(temperature=1.0, max_new_tokens=4))
    assert len(out) == 3 and all(len(row) == 2 for row in out)


def test_rollout_gpus_layout_and_too_few_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # first the indices alone, no GPU count check
    cfg = run_cfg(rollout_engines=3)
    assert rollout_gpus(run_cfg(rollout_engines=1), World()) == []
    assert rollout_gpus(cfg, World()) == [1, 2]  # one trainer on GPU 0 with engine 0, engines 1-2 on GPUs 1-2
    # Two trainers on GPUs 0-1; rank 0's extra engines on GPUs 2-3, rank 1's on GPUs 4-5.
    assert rollout_gpus(cfg, World(rank=0, size=2, local_rank=0, local_size=2)) == [2, 3]
    assert rollout_gpus(cfg, World(rank=1, size=2, local_rank=1, local_size=2)) == [4, 5]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    with pytest.raises(RuntimeError, match=r"rollout_engines: 3 .*need 6 GPUs on this machine, 4 visible"):
        rollout_gpus(cfg, World(rank=1, size=2, local_rank=1, local_size=2))
    assert rollout_gpus(cfg, World(rank=0, size=2, local_rank=0, local_size=2)) == [2, 3]


def test_several_vllm_engines_pinned_ones_first(tiny_model_dir, monkeypatch):
    """The pinned engines (own process, own GPU) start before the in-process one, which would freeze
    vLLM's environment; engine 0 is the in-process one."""
    built = []

    def fake_vllm_engine(cfg, policy, tokenizer, device_ids=None):
        built.append(device_ids)
        return RecordingVLLM(device_ids)

    monkeypatch.setattr(dashrl.engines.factory, "_make_vllm_engine", fake_vllm_engine)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    policy, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    engine = make_engine(run_cfg(engine="vllm", rollout_engines=3), policy, tokenizer)
    assert built == [[1], [2], None]
    assert [e.device_ids for e in engine.engines] == [None, [1], [2]]


class RecordingVLLM:
    name = "vllm"

    def __init__(self, device_ids):
        self.device_ids = device_ids


def test_physical_gpu_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert physical_gpu(3) == "3"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6, 7")
    assert [physical_gpu(i) for i in range(3)] == ["4", "6", "7"]
    with pytest.raises(ValueError, match="GPU 3 requested"):
        physical_gpu(3)
