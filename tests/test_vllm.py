"""The vLLM rollout engine on a tiny Llama (opt-in: ``make test-vllm`` or ``pytest -m vllm``).

Runs on vLLM's CPU build (``vllm-cpu``) or on a GPU. The model has head_dim 64 (vLLM's CPU
attention needs >= 64), tied embeddings, the byte-level test tokenizer, and computes in float32 on
both sides, so the engine's log-probs and greedy tokens can be compared with the trainer's.
One engine serves the whole module (start-up ~20-40 s); tests that change its weights re-sync the
weights they need first.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

from conftest import save_model_dir  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

import dashrl.rl.loop  # noqa: E402
from dashrl.algo.losses import completion_logprobs  # noqa: E402
from dashrl.config.params import GraderParams, PromptParams, check_rl_run, load_params  # noqa: E402
from dashrl.data.arith import generate_arith  # noqa: E402
from dashrl.engines.base import SamplingConfig, ShardedEngine  # noqa: E402
from dashrl.engines.factory import make_engine  # noqa: E402
from dashrl.engines.vllm import VLLMEngine  # noqa: E402
from dashrl.grading.math_grader import Grade  # noqa: E402
from dashrl.infra.seeds import derive_seed  # noqa: E402
from dashrl.models import load_model, load_tokenizer  # noqa: E402
from dashrl.rl.loop import rl_step  # noqa: E402
from dashrl.rl.run import PromptSchedule, RLRun, lr_lambda  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["12 + 7 =", "Tom has 3 apples.", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "x"]


def build_model(vocab_size: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 64, grouped-query attention
        vocab_size=vocab_size, max_position_embeddings=512, bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    return save_model_dir(build_model(len(tiny_tokenizer)), tiny_tokenizer, tmp_path_factory.mktemp("vllm_model"))


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    return load_tokenizer(model_dir)


@pytest.fixture(scope="module")
def cfg():
    """The repository's ``dash`` run, shrunk, on the vLLM engine in float32."""
    run = dataclasses.replace(
        load_params(REPO / "params.yaml").rl.run("dash"),
        engine="vllm", rollout_dtype="float32", train_dtype="float32", prompts_per_step=4, group_size=4,
        micro_batch_size=4, steps=1, epochs=None, max_new_tokens=8, temperature=0.7, top_k=0, top_p=1.0,
        filter_threshold=0.0, kl_coef=0.0, kl_reference=None, ppo_epochs=1, optimizer_steps_per_rollout=1,
        lr=1e-2, lr_schedule="constant", warmup_steps=0, rollout_batch_rows=64, sampling="preemptive",
    )
    check_rl_run(run, "rl.runs.test")
    return run


@pytest.fixture(scope="module")
def policy(model_dir):
    return load_model(model_dir, dtype="float32")


@pytest.fixture(scope="module")
def engine(cfg, policy, tokenizer) -> VLLMEngine:
    """Built through the RL loop's factory: ``engine: vllm`` -> VLLMEngine."""
    engine = make_engine(cfg, policy, tokenizer)
    assert isinstance(engine, VLLMEngine) and engine.name == "vllm"
    return engine


def hf_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> list[int]:
    """transformers' own greedy decoding, one prompt (no padding), stopping at eos."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])  # (1, Tp)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # (1, Tp + Tg)
    return out[0, ids.shape[1]:].tolist()


def engine_greedy(engine, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    out = engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens))
    return [row[0].token_ids for row in out]


def trainer_logprobs(model, tokenizer, prompt: str, completion_ids: list[int], sampling: SamplingConfig) -> torch.Tensor:
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    input_ids = torch.tensor([prompt_ids + completion_ids])  # (1, Tp + Tc)
    with torch.no_grad():
        return completion_logprobs(model, input_ids, torch.ones_like(input_ids), torch.tensor([completion_ids]),
                                   sampling.temperature, sampling.top_k, sampling.top_p)[0]  # (Tc,)


def test_shapes_and_completion_conventions(engine, policy, tokenizer):
    engine.sync_weights(policy)
    prompts = PROMPTS * 2
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=48, seed=3)
    out = engine.generate(prompts, 8, sampling)
    assert len(out) == len(prompts) and all(len(row) == 8 for row in out)
    eos = tokenizer.eos_token_id
    finish = set()
    for row in out:
        assert len({tuple(c.token_ids) for c in row}) > 1  # n independent samples, not one repeated
        for c in row:
            finish.add(c.finish_reason)
            assert len(c.logprobs) == len(c.token_ids) >= 1
            assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == eos and eos not in c.token_ids[:-1]
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == 48 and eos not in c.token_ids
    assert finish == {"stop", "length"}  # seeded: 3072 near-uniform tokens over 259 ids hit eos
    stats = engine.last_stats
    assert stats.generated_tokens == sum(c.n_tokens for row in out for c in row) and stats.engine_calls == 1
    assert stats.wall_s > 0 and stats.tokens_per_s > 0

    # Same seed, same completions; another seed, other completions.
    again = engine.generate(prompts, 8, sampling)
    assert [[c.token_ids for c in row] for row in again] == [[c.token_ids for c in row] for row in out]
    other = engine.generate(prompts, 8, dataclasses.replace(sampling, seed=4))
    assert [[c.token_ids for c in row] for row in other] != [[c.token_ids for c in row] for row in out]
    with pytest.raises(ValueError, match="greedy"):
        engine.generate(prompts, 2, SamplingConfig(temperature=0.0))


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.3, 20, 0.9)])
def test_logprobs_are_the_sampling_distributions(engine, policy, tokenizer, temperature, top_k, top_p):
    """vLLM's processed log-probs equal ``completion_logprobs`` (what the loss uses) for the same tokens."""
    engine.sync_weights(policy)
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=12, seed=7)
    out = engine.generate(PROMPTS, 3, sampling)
    worst, raw_gap = 0.0, 0.0
    for prompt, row in zip(PROMPTS, out, strict=True):
        for c in row:
            engine_logp = torch.tensor(c.logprobs)  # (Tc,)
            loss_logp = trainer_logprobs(policy, tokenizer, prompt, c.token_ids, sampling)  # (Tc,)
            worst = max(worst, float((engine_logp - loss_logp).abs().max()))
            untempered = trainer_logprobs(policy, tokenizer, prompt, c.token_ids, SamplingConfig(temperature=1.0))  # (Tc,)
            raw_gap = max(raw_gap, float((engine_logp - untempered).abs().max()))
    assert worst < 2e-3, f"engine vs loss log-prob gap {worst}"
    assert raw_gap > 1e-2  # they are not vLLM's default raw (untempered, unfiltered) log-probs


def test_sync_weights_updates_greedy_output(engine, policy, tokenizer):
    engine.sync_weights(policy)
    before = engine_greedy(engine, PROMPTS, 16)
    assert before == [hf_greedy(policy, tokenizer, p, 16) for p in PROMPTS]

    updated = copy.deepcopy(policy)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = [hf_greedy(updated, tokenizer, p, 16) for p in PROMPTS]
    assert expected != before  # the update changes what greedy decoding produces
    assert engine_greedy(engine, PROMPTS, 16) == before  # nothing changes until the sync
    engine.sync_weights(updated)
    assert engine_greedy(engine, PROMPTS, 16) == expected
    engine.sync_weights(policy)
    assert engine_greedy(engine, PROMPTS, 16) == before


def mixed_rewards(completions, references, sources=(), grader=None) -> list[Grade]:
    """Groups of 4 with rewards 1, 0, 0, 1: every sample has a non-zero advantage."""
    rewards = [float(i % 4 in (0, 3)) for i in range(len(completions))]
    return [Grade(reward=r, extracted=None, boxed=False, status="correct" if r else "wrong") for r in rewards]


def test_rl_step_moves_the_engine_weights(engine, cfg, model_dir, tokenizer, monkeypatch):
    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", mixed_rewards)
    torch.manual_seed(cfg.seed)
    policy = load_model(model_dir, dtype="float32")
    engine.sync_weights(policy)
    before = engine_greedy(engine, PROMPTS, 16)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, cfg.steps))
    problems = generate_arith(16, 0, [1], seed=0)[0]
    run = RLRun(cfg=cfg, prompt=PromptParams(format="raw", instruction="", system_prompt=None),
                grader=GraderParams(require_box=False, timeout_s=5.0), policy=policy, tokenizer=tokenizer,
                engine=engine, optimizer=optimizer, scheduler=scheduler,
                schedule=PromptSchedule(problems, cfg.prompts_per_step, cfg.seed), total_steps=cfg.steps)
    metrics = rl_step(run, 0).metrics

    assert metrics["samples"] == 16 and metrics["optimizer_steps"] == 1 and metrics["samples_kept"] == 16
    # On-policy, float32 on both sides: the behaviour log-probs vLLM returned are the trainer's.
    assert metrics["logprob_gap_mean"] < 1e-3, metrics["logprob_gap_mean"]
    after = engine_greedy(engine, PROMPTS, 16)
    assert after == [hf_greedy(policy, tokenizer, p, 16) for p in PROMPTS]  # rl_step synced the new weights
    assert after != before


def test_engine_from_a_model_dir_matches_hf_greedy(model_dir, tokenizer, policy, engine):
    """Evaluation's path (``evaluate.generation.engine: vllm``): a second engine built from the saved
    directory, next to the first one in this process."""
    second = VLLMEngine.from_model_dir(model_dir, tokenizer, dtype="float32", max_num_seqs=8, seed=0)
    assert second.eos_ids == [tokenizer.eos_token_id]
    assert engine_greedy(second, PROMPTS, 16) == [hf_greedy(policy, tokenizer, p, 16) for p in PROMPTS]


def test_bfloat16_engine_syncs_float32_weights(model_dir, tokenizer, policy, engine):
    """``rollout_dtype: bfloat16`` (the default): float32 policy weights are cast on the way in.
    The engine's log-probs track the synced policy to bf16 precision, not the weights it started with."""
    bf16 = VLLMEngine.from_model_dir(model_dir, tokenizer, dtype="bfloat16", max_num_seqs=16, seed=0)
    updated = copy.deepcopy(policy)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bf16.sync_weights(updated)
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=12, seed=11)
    out = bf16.generate(PROMPTS, 2, sampling)
    gap_new, gap_old = [], []
    for prompt, row in zip(PROMPTS, out, strict=True):
        for c in row:
            engine_logp = torch.tensor(c.logprobs)  # (Tc,)
            gap_new.append((engine_logp - trainer_logprobs(updated, tokenizer, prompt, c.token_ids, sampling)).abs().mean())
            gap_old.append((engine_logp - trainer_logprobs(policy, tokenizer, prompt, c.token_ids, sampling)).abs().mean())
    gap_new, gap_old = float(torch.stack(gap_new).mean()), float(torch.stack(gap_old).mean())
    assert gap_new < 0.05, gap_new
    assert gap_old > 4 * gap_new, (gap_old, gap_new)


def test_two_engines_share_a_batch_and_both_follow_syncs(cfg, policy, tokenizer):
    """``rollout_engines: 2``: engine 0 in this process, engine 1 in its own process (on a GPU box, its
    own GPU); each samples whole prompts; a sync reaches both (engine 1's weights travel pickled)."""
    sharded = make_engine(dataclasses.replace(cfg, rollout_engines=2), policy, tokenizer)
    assert isinstance(sharded, ShardedEngine) and [e.in_process for e in sharded.engines] == [True, False]
    prompts = PROMPTS * 2
    assert engine_greedy(sharded, prompts, 16) == [hf_greedy(policy, tokenizer, p, 16) for p in prompts]

    updated = copy.deepcopy(policy)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p))
    expected = [hf_greedy(updated, tokenizer, p, 16) for p in prompts]
    sharded.sync_weights(updated)
    assert engine_greedy(sharded, prompts, 16) == expected
    # Sampled: shard 1 is what engine 1 alone draws with derive_seed(seed, 1); log-probs are the loss's.
    sampling = SamplingConfig(temperature=0.7, max_new_tokens=12, seed=5)
    out = sharded.generate(prompts, 3, sampling)
    alone = sharded.engines[1].generate(prompts[4:], 3, dataclasses.replace(sampling, seed=derive_seed(5, 1)))
    assert [[c.token_ids for c in row] for row in out[4:]] == [[c.token_ids for c in row] for row in alone]
    assert sharded.last_stats.generated_tokens == sum(c.n_tokens for row in out for c in row)
    for prompt, row in zip(prompts, out, strict=True):
        for c in row:
            gap = (torch.tensor(c.logprobs) - trainer_logprobs(updated, tokenizer, prompt, c.token_ids, sampling)).abs()
            assert float(gap.max()) < 2e-3
