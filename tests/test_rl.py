"""The RL loop on a tiny Llama built from a config (CPU, fp32): DASH, GRPO and PPO variants.

The tiny random model never answers an arithmetic problem, so rewards are scripted: the grader in
``dashrl.rl.loop`` is replaced by one that gives each group a fixed reward pattern (mixed groups with
non-zero advantages and all-equal groups that gradient filtering drops), or, where rewards must
be a pure function of the text (resume), reward 1 for a completion of even length.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import defaultdict

import pandas as pd
import pytest
import torch

import dashrl.algo.losses
import dashrl.rl.loop
from dashrl.algo.losses import batch_logprobs, completion_logprobs, get_loss_agg
from dashrl.config.params import (
    GraderParams,
    ParamsError,
    PromptParams,
    RLRunParams,
    check_rl_run,
    from_mapping,
    min_nonzero_abs_advantage,
)
from dashrl.data.arith import generate_arith
from dashrl.data.schema import write_problems
from dashrl.engines.base import Completion
from dashrl.engines.factory import make_engine
from dashrl.grading.math_grader import Grade
from dashrl.infra.files import read_jsonl
from dashrl.models import load_model, load_tokenizer
from dashrl.rl.loop import (
    backward,
    micro_batches,
    optimizer_step,
    pack,
    recompute_old_logprobs,
    rl_step,
    sample_and_score,
    step_counts,
    train,
)
from dashrl.rl.run import PromptSchedule, RLRun, lr_lambda
from dashrl.rl.samples import Sample
from dashrl.rl.step_metrics import PhaseTimer

PROMPT = PromptParams(format="raw", instruction="", system_prompt=None)
GRADER = GraderParams(require_box=False, timeout_s=5.0)
G = 4

DEFAULTS = {
    "init_from": "base",
    "dataset": "arith",
    "train_levels": None,
    "prompts_per_step": 4,
    "group_size": G,
    "micro_batch_size": 4,
    "packing": "tree",
    "steps": 1,
    "epochs": None,
    "sampling": "preemptive",
    "filter_threshold": 0.0,
    "filter_norm": "original",
    "selector": "none",
    "dapo_max_rounds": 3,
    "pods_factor": 2,
    "greso_history": 2,
    "greso_explore": 0.2,
    "scale_rewards": True,
    "loss_agg": "dr_grpo",
    "kl_coef": 0.0,
    "kl_reference": None,
    "tis_cap": None,  # fp32 training and the HF engine: what tis_cap auto resolves to (resolve_tis_cap)
    "ppo_epochs": 1,
    "optimizer_steps_per_rollout": 1,
    "clip_low": 0.2,
    "clip_high": 0.2,
    "dual_clip": 3.0,
    "lr": 1e-2,
    "lr_schedule": "constant",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "grad_clip": 1.0,
    "max_new_tokens": 8,
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 0,
    "engine": "hf",
    "rollout_dtype": "float32",
    "rollout_batch_rows": 64,
    "vllm_gpu_memory_utilization": 0.3,
    "vllm_tensor_parallel_size": 1,
    "rollout_engines": 1,
    "train_dtype": "float32",
    "seed": 0,
    "checkpoint_every": 0,
    "keep_checkpoints": 1,
}


def make_cfg(**overrides) -> RLRunParams:
    """An RL run config with every field filled (typed like params.yaml); not value-checked."""
    return from_mapping(RLRunParams, {**DEFAULTS, **overrides}, where="test")


# Rewards of each group, by the group's position within one grading call (cycled): with G = 4 and
# scale_rewards, |A| is 0.4999 or 1.4997 in the mixed groups and exactly 0 in the all-equal ones.
REWARD_PATTERN = ([1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [1, 1, 1, 1])


def scripted_grade_batch(completions, references, sources=(), grader=None) -> list[Grade]:
    assert len(completions) == len(references) and len(completions) % G == 0
    rewards = [REWARD_PATTERN[(i // G) % len(REWARD_PATTERN)][i % G] for i in range(len(completions))]
    return [Grade(reward=float(r), extracted=None, boxed=False, status="correct" if r else "wrong") for r in rewards]


def parity_grade_batch(completions, references, sources=(), grader=None) -> list[Grade]:
    """Pseudo-random but a pure function of the text: reward 1 for an even number of characters."""
    rewards = [float(len(text) % 2 == 0) for text in completions]
    return [Grade(reward=r, extracted=None, boxed=False, status="correct" if r else "wrong") for r in rewards]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: thread start-up dominates, and contends with anything else on the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def scripted_rewards(monkeypatch):
    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", scripted_grade_batch)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def problems() -> pd.DataFrame:
    return generate_arith(16, 0, [1], seed=0)[0]


class GradRecorder(torch.optim.SGD):
    """Stands in for AdamW: records the gradient the loop hands to ``step`` and leaves the weights."""

    def __init__(self, params):
        super().__init__(params, lr=1.0)
        self.grads: list[list[torch.Tensor]] = []

    def step(self, closure=None):
        self.grads.append([p.grad.clone() for group in self.param_groups for p in group["params"]])


def build_run(cfg: RLRunParams, model_dir, tokenizer, problems, record_grads: bool = False) -> RLRun:
    """What ``train`` sets up, in memory (no checkpoints, no outputs)."""
    check_rl_run(cfg, "rl.runs.test")
    torch.manual_seed(cfg.seed)
    policy = load_model(model_dir)
    if record_grads:
        optimizer = GradRecorder(policy.parameters())
    else:
        optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_optimizer_steps = cfg.steps * cfg.ppo_epochs * cfg.optimizer_steps_per_rollout
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_optimizer_steps))
    return RLRun(cfg=cfg, prompt=PROMPT, grader=GRADER, policy=policy, tokenizer=tokenizer,
                 engine=make_engine(cfg, policy, tokenizer), optimizer=optimizer, scheduler=scheduler,
                 schedule=PromptSchedule(problems, cfg.prompts_per_step, cfg.seed), total_steps=cfg.steps)


def sample_step(run: RLRun, step: int = 0) -> list[Sample]:
    """Steps 1-4 of the loop for the whole step (preemptive): sample, grade, advantages, keep-mask."""
    return sample_and_score(run, run.schedule.batch(step), step, unit=0, timer=PhaseTimer(), stats=defaultdict(float))


def step_gradient(run: RLRun, samples: list[Sample], micro_batch_size: int) -> tuple[float, list[torch.Tensor]]:
    """Steps 5-6 as in rl_step: backward over micro-batches of the kept samples, then optimizer_step
    (the GradRecorder keeps the normalised gradient). Returns (step loss, gradient per parameter)."""
    assert isinstance(run.optimizer, GradRecorder)
    stats: dict[str, float] = defaultdict(float)
    for batch in micro_batches([s for s in samples if s.kept], micro_batch_size, run.cfg.packing):
        backward(run, batch, stats)
    optimizer_step(run, step_counts(samples, run.cfg.max_new_tokens, run.cfg.filter_norm), stats)
    return stats["loss"], run.optimizer.grads.pop()


def all_equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def all_close(a: list[torch.Tensor], b: list[torch.Tensor], rtol: float, atol: float) -> bool:
    return all(torch.allclose(x, y, rtol=rtol, atol=atol) for x, y in zip(a, b, strict=True))


def max_abs(grads: list[torch.Tensor]) -> float:
    return max(float(g.abs().max()) for g in grads)


# ------------------------------------------------------------------------------------------------
# Pieces of the update


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (20, 0.9)])
def test_completion_logprobs_do_not_depend_on_padding(tiny_model_dir, tokenizer, problems, scripted_rewards, top_k, top_p):
    """A sequence's log-probs are the same alone and packed with longer prompts / completions, and
    equal to the behaviour log-probs of the engine (one sampling distribution for both)."""
    run = build_run(make_cfg(top_k=top_k, top_p=top_p), tiny_model_dir, tokenizer, problems)
    samples = sample_step(run)
    cfg = run.cfg
    with torch.no_grad():
        together = pack(samples, tokenizer.pad_token_id, run.policy.device)
        logp = completion_logprobs(run.policy, together.input_ids, together.attention_mask, together.completion_ids,
                                   cfg.temperature, cfg.top_k, cfg.top_p)  # (B, Tc)
        for i, s in enumerate(samples):
            alone = pack([s], tokenizer.pad_token_id, run.policy.device)
            single = completion_logprobs(run.policy, alone.input_ids, alone.attention_mask, alone.completion_ids,
                                         cfg.temperature, cfg.top_k, cfg.top_p)  # (1, n)
            assert torch.allclose(logp[i, : s.completion.n_tokens], single[0], atol=1e-5)
            # ... and they are the behaviour log-probs the engine recorded while sampling.
            assert torch.allclose(single[0], torch.tensor(s.completion.logprobs), atol=1e-4)


def test_pack_layout(tiny_model_dir, tokenizer, problems, scripted_rewards):
    run = build_run(make_cfg(), tiny_model_dir, tokenizer, problems)
    samples = sample_step(run)[:3]
    batch = pack(samples, tokenizer.pad_token_id, torch.device("cpu"))
    width_prompt = max(len(s.prompt_ids) for s in samples)
    width_completion = max(s.completion.n_tokens for s in samples)
    assert batch.input_ids.shape == (3, width_prompt + width_completion)
    for i, s in enumerate(samples):
        n_prompt, n = len(s.prompt_ids), s.completion.n_tokens
        row = batch.input_ids[i].tolist()
        assert row[width_prompt - n_prompt : width_prompt + n] == s.prompt_ids + s.completion.token_ids  # left / right pad
        assert batch.attention_mask[i].sum() == n_prompt + n
        assert batch.completion_mask[i].tolist() == [1.0] * n + [0.0] * (width_completion - n)
        assert batch.advantages[i] == pytest.approx(s.advantage)
    assert batch.n_tokens == sum(s.completion.n_tokens for s in samples)


# ------------------------------------------------------------------------------------------------
# 1. Micro-batch invariance


@pytest.mark.parametrize("loss_agg", ["grpo", "bnpo", "dr_grpo"])
def test_step_loss_and_gradient_do_not_depend_on_micro_batching(tiny_model_dir, tokenizer, problems, scripted_rewards, loss_agg):
    run = build_run(make_cfg(loss_agg=loss_agg, grad_clip=0.0), tiny_model_dir, tokenizer, problems, record_grads=True)
    samples = sample_step(run)  # 16 sequences of several lengths
    assert len({s.completion.n_tokens for s in samples}) > 1
    results = {n: step_gradient(run, samples, micro_batch_size=16 // n) for n in (1, 2, 4)}
    loss_1, grads_1 = results[1]
    assert max_abs(grads_1) > 0
    for n in (2, 4):
        loss_n, grads_n = results[n]
        assert loss_n == pytest.approx(loss_1, rel=1e-5, abs=1e-7)
        assert all_close(grads_n, grads_1, rtol=1e-4, atol=1e-7), f"{n} micro-batches"


# ------------------------------------------------------------------------------------------------
# 2. Gradient filtering is lossless with the original normaliser (beta = 0)


@pytest.mark.parametrize("loss_agg", ["grpo", "bnpo", "dr_grpo"])
def test_filtering_zero_advantages_keeps_the_gradient(tiny_model_dir, tokenizer, problems, scripted_rewards, loss_agg):
    cfg = make_cfg(loss_agg=loss_agg, grad_clip=0.0, filter_threshold=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    everything = sample_step(run)
    assert all(s.kept for s in everything)  # tau = 0: filtering off, A = 0 samples are kept
    assert any(s.advantage == 0 for s in everything) and any(s.advantage != 0 for s in everything)

    # tau just below the smallest non-zero |A|: drops exactly the all-equal groups.
    tau = 0.999 * min_nonzero_abs_advantage(G, scale_rewards=True)
    run.cfg = dataclasses.replace(cfg, filter_threshold=tau)
    check_rl_run(run.cfg, "rl.runs.test")
    filtered = sample_step(run)
    assert [s.completion.token_ids for s in filtered] == [s.completion.token_ids for s in everything]
    assert [s.kept for s in filtered] == [s.advantage != 0 for s in everything]
    n_kept = sum(s.kept for s in filtered)
    assert n_kept == 8  # 2 mixed groups of 4 out of 16 samples

    # One sequence per micro-batch: no padding differs, so zero-advantage samples add exact zeros.
    loss_all, grads_all = step_gradient(run, everything, micro_batch_size=1)
    loss_kept, grads_kept = step_gradient(run, filtered, micro_batch_size=1)
    assert max_abs(grads_all) > 0
    assert all_equal(grads_kept, grads_all)
    assert loss_kept == loss_all
    # The loop's micro-batch size: the survivors are repacked, equal up to float rounding.
    _, grads_repacked = step_gradient(run, filtered, micro_batch_size=4)
    assert all_close(grads_repacked, grads_all, rtol=1e-4, atol=1e-7)

    # filter_norm: kept divides by the kept counts: the gradient scales by all / kept counts.
    run.cfg = dataclasses.replace(run.cfg, filter_norm="kept")
    _, grads_kept_norm = step_gradient(run, filtered, micro_batch_size=1)
    agg = get_loss_agg(loss_agg)
    ratio = agg.normaliser(step_counts(filtered, cfg.max_new_tokens, "original")) / agg.normaliser(
        step_counts(filtered, cfg.max_new_tokens, "kept"))
    if loss_agg == "dr_grpo":
        assert ratio == 16 / 8  # sequences x max_new_tokens: all sampled / kept sequences
        assert all_equal(grads_kept_norm, [2 * g for g in grads_all])  # a power of two: exact
    else:
        assert all_close(grads_kept_norm, [ratio * g for g in grads_all], rtol=1e-5, atol=0)


def test_filtering_changes_the_gradient_when_there_is_a_kl_term(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """With beta > 0 a zero-advantage sample still pulls towards the reference: dropping it is lossy."""
    cfg = make_cfg(grad_clip=0.0, kl_coef=0.1, kl_reference="init")
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)
    everything = sample_step(run)
    filtered = [dataclasses.replace(s, kept=s.advantage != 0) for s in everything]
    _, grads_all = step_gradient(run, everything, micro_batch_size=1)
    _, grads_kept = step_gradient(run, filtered, micro_batch_size=1)
    assert not all_close(grads_kept, grads_all, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("sampling", ["preemptive", "per_micro_batch"])
@pytest.mark.parametrize("filter_norm", ["original", "kept"])
def test_rl_step_applies_the_step_objective_in_both_sampling_modes(
    tiny_model_dir, tokenizer, problems, scripted_rewards, sampling, filter_norm
):
    """Whether the step samples at once or per micro-step, the gradient handed to the optimizer is
    the step objective over all its samples (same filtering, same normaliser)."""
    cfg = make_cfg(sampling=sampling, filter_norm=filter_norm, micro_batch_size=8, filter_threshold=0.1, grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    out = rl_step(run, 0)
    (grads_step,) = run.optimizer.grads
    run.optimizer.grads.clear()
    # The same samples again (seeded by (seed, step, unit); the recorder left the weights alone).
    problems_0, per_unit = run.schedule.batch(0), 8 // G if sampling == "per_micro_batch" else len(problems)
    samples = []
    for unit, lo in enumerate(range(0, cfg.prompts_per_step, per_unit)):
        samples += sample_and_score(run, problems_0.iloc[lo : lo + per_unit], 0, unit, PhaseTimer(), defaultdict(float), offset=lo)
    assert [s.completion.text for s in samples] == out.rollouts["completion"].tolist()
    loss, grads = step_gradient(run, samples, cfg.micro_batch_size)
    assert out.metrics["loss"] == pytest.approx(loss, rel=1e-5)
    assert all_close(grads_step, grads, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# 3. Every parameter learns


@pytest.mark.parametrize("sampling", ["preemptive", "per_micro_batch"])
@pytest.mark.parametrize("loss_agg", ["grpo", "bnpo", "dr_grpo"])
def test_every_parameter_changes_after_one_step(tiny_model_dir, tokenizer, problems, scripted_rewards, sampling, loss_agg):
    run = build_run(make_cfg(sampling=sampling, loss_agg=loss_agg), tiny_model_dir, tokenizer, problems)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}  # tied embeddings once
    out = rl_step(run, 0)
    assert out.metrics["optimizer_steps"] == 1
    assert out.metrics["mean_abs_advantage_kept"] > 0
    unchanged = [name for name, p in run.policy.named_parameters() if torch.equal(p, before[name])]
    assert unchanged == []


@pytest.mark.parametrize("sampling", ["preemptive", "per_micro_batch"])
def test_a_step_over_two_engines_samples_every_group_and_syncs_both(tiny_model_dir, tokenizer, problems, scripted_rewards,
                                                                   sampling, monkeypatch):
    """rollout_engines 2: each engine call is split over two HF engines (engine 0 shares the policy,
    engine 1 holds a copy); after the step both hold the updated weights."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # both engines on the CPU, also on a GPU machine
    cfg = make_cfg(sampling=sampling, rollout_engines=2, micro_batch_size=8)  # per_micro_batch: 2 prompts a call
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    first, second = run.engine.engines
    assert first.model is run.policy and second.model is not run.policy
    out = rl_step(run, 0)
    assert out.metrics["samples"] == cfg.prompts_per_step * G and out.metrics["optimizer_steps"] == 1
    assert out.rollouts["prompt_index"].tolist() == [i for i in range(cfg.prompts_per_step) for _ in range(G)]
    sampled_tokens = out.metrics["sampling_tokens_per_s"] * out.metrics["time_sampling_s"]
    assert sampled_tokens == pytest.approx(out.rollouts["tokens"].sum())  # both engines' tokens counted
    assert out.metrics["logprob_gap_mean"] < 1e-4  # float32 engines: behaviour log-probs are the trainer's
    assert all(torch.equal(a, b) for a, b in zip(second.model.parameters(), run.policy.parameters(), strict=True))
    # Seeded: the same step again gives the same samples; one engine draws other ones.
    again = rl_step(build_run(cfg, tiny_model_dir, tokenizer, problems), 0)
    assert again.rollouts["completion"].tolist() == out.rollouts["completion"].tolist()
    single = rl_step(build_run(dataclasses.replace(cfg, rollout_engines=1), tiny_model_dir, tokenizer, problems), 0)
    assert single.rollouts["completion"].tolist() != out.rollouts["completion"].tolist()


# ------------------------------------------------------------------------------------------------
# 4-5. PPO


def test_ppo_with_one_pass_is_the_policy_gradient(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """mu = 1: the clipped surrogate with old = stopgrad(current) has the gradient of -A * logp."""
    cfg = make_cfg(grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    assert run.on_policy
    samples = sample_step(run)
    backward(run, samples, defaultdict(float))
    surrogate = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)

    batch = pack(samples, tokenizer.pad_token_id, run.policy.device, cfg.packing)
    logp = batch_logprobs(run.policy, batch, cfg.temperature)  # (B, Tc)
    weights = get_loss_agg(cfg.loss_agg).token_weights(batch.completion_mask)  # (B, Tc)
    (weights * (-batch.advantages[:, None] * logp)).sum().backward()
    reinforce = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)
    assert max_abs(reinforce) > 0
    assert all_equal(surrogate, reinforce)

    # With reuse (ppo_epochs = 2) old = the trainer's own log-probs before the first update: even
    # where the engine's behaviour log-probs differ (a bf16 engine), the first pass is the same gradient.
    run.cfg = dataclasses.replace(cfg, ppo_epochs=2)
    assert not run.on_policy
    off = [dataclasses.replace(s, completion=dataclasses.replace(s.completion, logprobs=[x + 0.05 for x in s.completion.logprobs]))
           for s in samples]
    with pytest.raises(RuntimeError, match="recompute_old_logprobs"):
        backward(run, off, defaultdict(float))
    stats: dict[str, float] = defaultdict(float)
    recompute_old_logprobs(run, off, stats)
    assert stats["logprob_gap_sum"] / stats["logprob_gap_tokens"] == pytest.approx(0.05, abs=1e-4)
    run.policy.zero_grad(set_to_none=True)
    backward(run, off, defaultdict(float))
    first_pass = [p.grad.clone() for p in run.policy.parameters()]
    assert all_equal(first_pass, reinforce)  # the ratio is exactly 1


@pytest.mark.parametrize(("ppo_epochs", "optimizer_steps_per_rollout"), [(2, 1), (1, 2)])
def test_ppo_multi_and_mini_take_two_optimizer_steps(
    tiny_model_dir, tokenizer, problems, scripted_rewards, ppo_epochs, optimizer_steps_per_rollout
):
    cfg = make_cfg(ppo_epochs=ppo_epochs, optimizer_steps_per_rollout=optimizer_steps_per_rollout)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    m = rl_step(run, 0).metrics
    assert m["optimizer_steps"] == 2 and m["skipped_optimizer_steps"] == 0
    # Every pass over the 16 samples is 4 micro-batches of 4: Multi passes twice, Mini once.
    assert m["backward_passes"] == 4 * ppo_epochs
    assert 0.0 <= m["clip_fraction"] <= 1.0
    assert run.scheduler.last_epoch == 2  # the lr schedule counts optimizer steps
    if ppo_epochs == 2:
        # The second pass sees the policy after one large step: some ratios leave [0.8, 1.2].
        assert m["clip_fraction"] > 0


def test_on_policy_step_reports_no_clip_fraction(tiny_model_dir, tokenizer, problems, scripted_rewards):
    run = build_run(make_cfg(), tiny_model_dir, tokenizer, problems)
    assert "clip_fraction" not in rl_step(run, 0).metrics


def shortened(completion: Completion, i: int) -> Completion:
    """The completion cut by i % 4 tokens: the tiny model rarely samples eos (never in a top-3), so
    without this every completion has max_new_tokens tokens and no micro-batch has padding."""
    n = max(1, completion.n_tokens - i % 4)
    return dataclasses.replace(completion, token_ids=completion.token_ids[:n], logprobs=completion.logprobs[:n],
                               finish_reason="length")


def with_engine_gap(run: RLRun, gap: float, missing: int | None = None, ragged: bool = False) -> None:
    """The engine's behaviour log-probs off the trainer's by ``gap`` (as a bf16 engine's are); the
    completion number ``missing`` of each call without any (None); ``ragged``: completions of
    several lengths (``shortened``)."""
    real = run.engine.generate

    def generate(prompts, n, sampling):
        rows = real(prompts, n, sampling)
        flat = [dataclasses.replace(c, logprobs=[x + gap for x in c.logprobs]) for row in rows for c in row]
        if ragged:
            flat = [shortened(c, i) for i, c in enumerate(flat)]
        if missing is not None:
            flat[missing] = dataclasses.replace(flat[missing], logprobs=None)
        return [flat[i * n : (i + 1) * n] for i in range(len(rows))]

    run.engine.generate = generate


@pytest.mark.parametrize(("ppo_epochs", "optimizer_steps_per_rollout"), [(2, 1), (1, 2)])
def test_ppo_old_logprobs_are_the_trainers_so_the_first_ratio_is_exactly_one(
    tiny_model_dir, tokenizer, problems, scripted_rewards, ppo_epochs, optimizer_steps_per_rollout
):
    """The engine's log-probs differ from the trainer's by 0.05 (a bf16 engine): the PPO run's first
    update is the on-policy gradient bit for bit, and logprob_gap_mean reports the engine's gap."""
    cfg = make_cfg(grad_clip=0.0, micro_batch_size=8)
    on = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    with_engine_gap(on, 0.05)
    out_on = rl_step(on, 0)
    (grads_on,) = on.optimizer.grads

    off_cfg = dataclasses.replace(cfg, ppo_epochs=ppo_epochs, optimizer_steps_per_rollout=optimizer_steps_per_rollout)
    off = build_run(off_cfg, tiny_model_dir, tokenizer, problems, record_grads=True)  # the recorder leaves the weights
    with_engine_gap(off, 0.05)
    out_off = rl_step(off, 0)
    assert out_off.rollouts["completion"].tolist() == out_on.rollouts["completion"].tolist()
    assert len(off.optimizer.grads) == 2 and out_off.metrics["clip_fraction"] == 0.0  # ratio 1 in every pass
    if ppo_epochs == 2:
        assert all_equal(off.optimizer.grads[0], grads_on) and all_equal(off.optimizer.grads[1], grads_on)
    else:  # PPO-Mini: two updates on halves of the batch, with normalisers of a half each
        summed = [a + b for a, b in zip(*off.optimizer.grads, strict=True)]
        assert all_close(summed, [2 * g for g in grads_on], rtol=1e-4, atol=1e-7)
    for m in (out_on.metrics, out_off.metrics):
        assert m["logprob_gap_mean"] == pytest.approx(0.05, abs=1e-4)


def test_a_missing_behaviour_logprob_is_an_error_in_an_off_policy_run(tiny_model_dir, tokenizer, problems, scripted_rewards):
    run = build_run(make_cfg(ppo_epochs=2), tiny_model_dir, tokenizer, problems)
    with_engine_gap(run, 0.0, missing=5)  # prompt 1, sample 1
    problem = run.schedule.batch(0)["id"][1]
    with pytest.raises(ValueError, match=re.escape(f"problem {problem!r} (prompt 1, sample 1): the rollout engine "
                                                   "returned no behaviour log-probs")):
        rl_step(run, 0)
    # On-policy the behaviour log-probs are a metric only: the gap leaves the sample out (not a 0).
    on = build_run(make_cfg(), tiny_model_dir, tokenizer, problems)
    with_engine_gap(on, 0.05, missing=5)
    assert rl_step(on, 0).metrics["logprob_gap_mean"] == pytest.approx(0.05, abs=1e-4)


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_the_loss_forward_runs_without_dropout_and_without_a_cache(tiny_model_dir, tokenizer, problems, scripted_rewards,
                                                                   packing):
    """The policy in train mode would drop attention weights (attention_dropout 0.5 here): the loss
    forward runs in eval mode, and twice the same micro-batch gives the same gradient."""
    cfg = make_cfg(packing=packing, ppo_epochs=2)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    for layer in run.policy.model.layers:
        layer.self_attn.attention_dropout = 0.5
    samples = [s for s in sample_step(run) if s.advantage != 0][:4]
    seen: list[tuple[bool, object]] = []  # (training, use_cache) of each loss forward
    run.policy.get_decoder().register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((module.training, kwargs.get("use_cache"))), with_kwargs=True)
    run.policy.train()  # as the optimizer or anyone may leave it
    recompute_old_logprobs(run, samples, defaultdict(float))
    grads = []
    for _ in range(2):
        run.policy.train()
        backward(run, samples, defaultdict(float))
        grads.append([p.grad.clone() for p in run.policy.parameters()])
        run.policy.zero_grad(set_to_none=True)
    assert max_abs(grads[0]) > 0 and all_equal(grads[0], grads[1])
    assert seen == [(False, False)] * 3


def test_the_logged_lr_is_the_lr_the_update_used(tiny_model_dir, tokenizer, problems, scripted_rewards):
    cfg = make_cfg(steps=2, lr_schedule="linear", lr=1e-3)  # factors 1, 1/2 over 2 optimizer steps
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    used = []
    run.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: used.append(optimizer.param_groups[0]["lr"]))
    logged = [rl_step(run, s).metrics["lr"] for s in range(2)]
    assert used == pytest.approx([1e-3, 5e-4])
    assert logged == used


# ------------------------------------------------------------------------------------------------
# The KL term


def perturbed_reference(model_dir, scale: float):
    reference = load_model(model_dir).requires_grad_(False)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(scale * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    return reference


def k3_by_hand(policy, reference, samples: list[Sample], temperature: float, top_k: int) -> torch.Tensor:
    """Mean over all completion tokens of exp(l_ref - l) - (l_ref - l) - 1, each sequence alone:
    l under the sampling distribution (temperature, top-k), l_ref under the temperature only."""
    total, tokens = 0.0, 0
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion.token_ids])  # (1, L)
        targets = torch.tensor(s.completion.token_ids)  # (n,)
        start, end = len(s.prompt_ids) - 1, ids.shape[1] - 1
        scaled = policy(input_ids=ids).logits[0, start:end].float() / temperature  # (n, V)
        if top_k:
            kth = scaled.topk(top_k, dim=-1).values[:, -1:]  # (n, 1)
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        logp = scaled.log_softmax(-1).gather(-1, targets[:, None])[:, 0]  # (n,)
        with torch.no_grad():
            ref_scaled = reference(input_ids=ids).logits[0, start:end].float() / temperature  # (n, V)
        ref_logp = ref_scaled.log_softmax(-1).gather(-1, targets[:, None])[:, 0]  # (n,)
        delta = ref_logp - logp
        total = total + (torch.exp(delta) - delta - 1).sum()
        tokens += len(targets)
    return total / tokens


@pytest.mark.parametrize(("packing", "top_k"), [("tree", 0), ("tree", 3), ("padded", 3)])
def test_the_kl_term_is_beta_times_k3_to_the_temperature_only_reference(
    tiny_model_dir, tokenizer, problems, scripted_rewards, packing, top_k
):
    """bnpo (a token mean): loss(beta) - loss(0) = beta x mean k3 with the arguments in the right
    order (k3 is not symmetric) and the policy, not the reference, getting the gradient. With top-k
    the reference is NOT truncated: a sampled token outside the reference's top-k still has its
    finite log-prob (truncated, it would get the -1e4 floor: k3 ~ 1e4, or NaN at padded positions)."""
    cfg = make_cfg(grad_clip=0.0, loss_agg="bnpo", packing=packing, top_k=top_k, kl_coef=0.1, kl_reference="init")
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)
    samples = [dataclasses.replace(s, completion=shortened(s.completion, i)) for i, s in enumerate(sample_step(run))]
    results = {}
    for beta in (0.0, 0.1, 0.3):
        run.cfg = dataclasses.replace(cfg, kl_coef=beta, kl_reference="init" if beta else None)
        results[beta] = step_gradient(run, samples, micro_batch_size=8)
    loss_0, grads_0 = results[0.0]
    mean_k3 = k3_by_hand(run.policy, run.reference, samples, cfg.temperature, top_k)
    # The reference differs; with top-k the policy is truncated and the reference not (k3 ~ 3 here,
    # where 3 of 259 near-uniform tokens are kept), but nowhere near the 1e4 of a floored reference.
    assert 1e-3 < float(mean_k3.detach()) < 10.0
    run.policy.zero_grad(set_to_none=True)
    mean_k3.backward()
    kl_grads = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)
    for beta in (0.1, 0.3):
        loss, grads = results[beta]
        assert loss - loss_0 == pytest.approx(beta * float(mean_k3.detach()), rel=1e-3)
        assert all_close([g - g0 for g, g0 in zip(grads, grads_0, strict=True)], [beta * g for g in kl_grads],
                         rtol=1e-3, atol=1e-6)
    assert max_abs(kl_grads) > 0


def test_kl_metric_and_finite_loss_with_top_k_and_padding(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """A whole step with top-k, padded micro-batches and the KL on: finite loss and metrics (the
    policy's log-prob of a padding token is at the floor, the reference's is not: exp overflows
    there, and 0 x inf in a masked sum would be NaN)."""
    cfg = make_cfg(packing="padded", top_k=3, kl_coef=0.5, kl_reference="init", loss_agg="bnpo", grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    with_engine_gap(run, 0.0, ragged=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    out = rl_step(run, 0)
    m = out.metrics
    assert torch.isfinite(torch.tensor([m["loss"], m["kl"], m["grad_norm"]])).all()
    assert 0 < m["kl"] < 10.0  # k3 ~ 3 (see above), not the ~1e4 of a floored reference
    assert all(torch.isfinite(p).all() and not torch.equal(p, before[name]) for name, p in run.policy.named_parameters())


def fp32_and_bf16_step(run: RLRun) -> tuple[float, torch.Tensor, float, torch.Tensor]:
    """One sampled step's loss and flattened gradient with train_dtype float32, then bfloat16
    (autocast over the fp32 master weights), on the same samples and the run's device:
    (loss fp32, gradient fp32, loss bf16, gradient bf16)."""
    cfg, samples = run.cfg, sample_step(run)
    results = []
    for dtype in ("float32", "bfloat16"):
        run.cfg = dataclasses.replace(cfg, train_dtype=dtype)
        loss, grads = step_gradient(run, samples, micro_batch_size=4)
        results += [loss, torch.cat([g.flatten() for g in grads])]
    return tuple(results)


def test_float32_and_bfloat16_train_paths_give_close_gradients(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """train_dtype float32 and bfloat16 (autocast, fp32 master weights) on the same batch, KL on."""
    cfg = make_cfg(grad_clip=0.0, kl_coef=0.1, kl_reference="init", top_k=5)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)
    loss_32, flat_32, loss_16, flat_16 = fp32_and_bf16_step(run)
    assert torch.isfinite(flat_16).all() and torch.isfinite(torch.tensor(loss_16))
    assert loss_16 == pytest.approx(loss_32, rel=0.01)
    assert float(torch.nn.functional.cosine_similarity(flat_32, flat_16, dim=0)) > 0.995
    assert float((flat_16 - flat_32).norm() / flat_32.norm()) < 0.05


# ------------------------------------------------------------------------------------------------
# 6. Filtering happens before the forward pass


@pytest.mark.parametrize("sampling", ["preemptive", "per_micro_batch"])
def test_filtered_samples_are_never_forwarded(tiny_model_dir, tokenizer, problems, scripted_rewards, monkeypatch, sampling):
    forwarded: list[int] = []
    real = dashrl.algo.losses.batch_logprobs

    def counting(model, batch, *args, **kwargs):
        forwarded.append(batch.completion_ids.shape[0])  # sequences in the forward pass
        return real(model, batch, *args, **kwargs)

    # the policy's forward: LogprobModel (the trainer module) calls dashrl.algo.losses.batch_logprobs
    monkeypatch.setattr(dashrl.algo.losses, "batch_logprobs", counting)
    cfg = make_cfg(sampling=sampling, micro_batch_size=8, filter_threshold=0.1)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    out = rl_step(run, 0)
    frame, m = out.rollouts, out.metrics

    kept = frame["kept"]
    assert kept.tolist() == (frame["advantage"].abs() > 0.1).tolist()
    assert int(kept.sum()) == 8 and len(frame) == 16  # the pattern's all-equal groups are dropped
    assert sum(forwarded) == int(kept.sum())  # only the survivors reach the policy
    assert m["samples"] == len(frame)
    assert m["samples_kept"] == int(kept.sum())
    assert m["samples_dropped"] == int((~kept).sum())
    assert m["kept_fraction"] == pytest.approx(0.5)
    assert m["tokens_kept"] == int(frame.loc[kept, "tokens"].sum())
    assert m["tokens_dropped"] == int(frame.loc[~kept, "tokens"].sum())
    assert m["zero_variance_group_fraction"] == pytest.approx(0.5)
    assert m["backward_passes"] == len(forwarded)
    if sampling == "preemptive":
        assert forwarded == [8]  # the 8 survivors repacked into one micro-batch of 8
    else:
        assert forwarded == [4, 4]  # each micro-step forwards its own 4 survivors
    assert m["optimizer_steps"] == 1


# ------------------------------------------------------------------------------------------------
# 7. Resume


def run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, work_dir) -> RLRun:
    return train(cfg=cfg, prompt=PROMPT, grader=GRADER, init_dir=tiny_model_dir, tokenizer=tokenizer,
                 problems=problems, train_file=train_file, work_dir=work_dir)


def test_resume_after_a_crash_gives_the_same_weights(tmp_path, tiny_model_dir, tokenizer, problems, monkeypatch):
    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", parity_grade_batch)
    train_file = tmp_path / "train.parquet"
    write_problems(problems, train_file)
    # A linear lr decay: the restored scheduler state matters too.
    cfg = make_cfg(prompts_per_step=2, steps=4, checkpoint_every=2, filter_threshold=0.1, lr=1e-3, lr_schedule="linear")
    check_rl_run(cfg, "rl.runs.test")

    uninterrupted = run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, tmp_path / "a")

    real_step, calls, crashed = dashrl.rl.loop.rl_step, [], []

    def crash_once_in_step_2(run, step):
        calls.append(step)
        out = real_step(run, step)  # the update happens, its outputs are never written
        if step == 2 and not crashed:
            crashed.append(step)
            raise RuntimeError("killed during step 2")
        return out

    monkeypatch.setattr(dashrl.rl.loop, "rl_step", crash_once_in_step_2)
    work_b = tmp_path / "b"
    with pytest.raises(RuntimeError, match="killed"):
        run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, work_b)
    assert [m["step"] for m in read_jsonl(work_b / "metrics.jsonl")] == [0, 1]
    resumed = run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, work_b)
    assert calls == [0, 1, 2, 2, 3]  # restarted at the step-2 checkpoint

    state_a, state_b = uninterrupted.policy.state_dict(), resumed.policy.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    initial = load_model(tiny_model_dir).state_dict()
    assert not all(torch.equal(initial[k], state_a[k]) for k in initial)  # the run did learn
    metrics_a, metrics_b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(work_b / "metrics.jsonl")
    assert [m["step"] for m in metrics_b] == [0, 1, 2, 3]
    assert len((work_b / "metrics.jsonl").read_text().splitlines()) == 4
    assert sum(m["optimizer_steps"] for m in metrics_a) > 0
    for a, b in zip(metrics_a, metrics_b, strict=True):
        assert {k: v for k, v in a.items() if "time" not in k and "per_s" not in k} == \
               {k: v for k, v in b.items() if "time" not in k and "per_s" not in k}
    rollouts = sorted(p.name for p in (work_b / "rollouts").glob("*.parquet"))
    assert rollouts == [f"step-{s:06d}.parquet" for s in range(4)]
    for name in rollouts:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "rollouts" / name),
                                      pd.read_parquet(work_b / "rollouts" / name))
    assert [p.name for p in (work_b / "checkpoints").iterdir()] == ["step-000004"]  # keep_checkpoints 1

    # A changed param (lr) makes the old checkpoint someone else's: the run starts from step 0.
    calls.clear()
    changed = dataclasses.replace(cfg, lr=2e-3)
    run_train(changed, tiny_model_dir, tokenizer, problems, train_file, work_b)
    assert calls == [0, 1, 2, 3]
    assert [m["step"] for m in read_jsonl(work_b / "metrics.jsonl")] == [0, 1, 2, 3]
    state = json.loads((work_b / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert state["param_groups"][0]["initial_lr"] == 2e-3


# ------------------------------------------------------------------------------------------------
# 8. Config validation


@pytest.mark.parametrize(
    ("overrides", "key", "value", "why"),
    [
        ({"prompts_per_step": 3, "group_size": 4, "micro_batch_size": 8}, "micro_batch_size", "8",
         "prompts_per_step x group_size = 12 is not a multiple of micro_batch_size"),
        ({"group_size": 1}, "group_size", "1", "must be >= 2"),
        ({"group_size": 16, "scale_rewards": False, "filter_threshold": 0.1}, "filter_threshold", "0.1",
         "would drop samples with non-zero advantage: with group_size 16 and scale_rewards False the smallest non-zero |A| is 0.0625"),
        ({"loss_agg": "nope"}, "loss_agg", "'nope'", "unknown (valid: bnpo, dapo, dr_grpo, grpo)"),
        ({"kl_coef": 0.04, "kl_reference": None}, "kl_reference", "None", "needs a reference model"),
        ({"sampling": "per_micro_batch", "micro_batch_size": 2}, "micro_batch_size", "2",
         "needs a multiple of group_size 4"),
        ({"sampling": "per_micro_batch", "ppo_epochs": 2}, "sampling", "'per_micro_batch'", "needs preemptive sampling"),
        ({"sampling": "per_micro_batch", "optimizer_steps_per_rollout": 2}, "sampling", "'per_micro_batch'",
         "needs preemptive sampling"),
        ({"steps": 4, "epochs": 1.0}, "steps", "(4, 1.0)", "set exactly one of steps and epochs"),
        ({"steps": None, "epochs": None}, "steps", "(None, None)", "set exactly one of steps and epochs"),
        ({"rollout_engines": 0}, "rollout_engines", "0", "must be >= 1"),
        ({"engine": "vllm", "rollout_engines": 2, "vllm_tensor_parallel_size": 2}, "rollout_engines", "(2, 2)",
         "several vLLM engines need vllm_tensor_parallel_size 1"),
        ({"dual_clip": 0.5}, "dual_clip", "0.5", "must be > 1"),
        ({"dual_clip": 1.0}, "dual_clip", "1.0", "must be > 1"),
    ],
)
def test_bad_rl_configs_are_refused_with_key_and_value(overrides, key, value, why):
    with pytest.raises(ParamsError, match=re.escape(f"rl.runs.x.{key}: {value}: ") + ".*" + re.escape(why)):
        check_rl_run(make_cfg(**overrides), "rl.runs.x")


def test_default_test_config_and_thresholds_just_below_the_bound_are_accepted():
    check_rl_run(make_cfg(), "rl.runs.x")
    for group_size, scale in [(4, True), (16, False), (8, True)]:
        tau = 0.999 * min_nonzero_abs_advantage(group_size, scale)
        check_rl_run(make_cfg(group_size=group_size, scale_rewards=scale, filter_threshold=tau), "rl.runs.x")
    check_rl_run(make_cfg(sampling="per_micro_batch", micro_batch_size=8), "rl.runs.x")
    for dual_clip in (None, 0.0, 3.0):  # null / 0: off
        check_rl_run(make_cfg(dual_clip=dual_clip), "rl.runs.x")


# ------------------------------------------------------------------------------------------------
# 9. Data order


def test_prompt_schedule_is_a_seeded_shuffle_and_a_function_of_the_step(problems):
    n = len(problems)  # 16
    schedule = PromptSchedule(problems, prompts_per_step=3, seed=5)

    def ids(s: PromptSchedule, step: int) -> list[str]:
        return s.batch(step)["id"].tolist()

    # 16 steps of 3 prompts = exactly 3 epochs; each epoch is a permutation of the problems.
    stream = [i for step in range(16) for i in ids(schedule, step)]
    epochs = [stream[e * n : (e + 1) * n] for e in range(3)]
    for e, epoch in enumerate(epochs):
        assert sorted(epoch) == sorted(problems["id"])
        assert epoch == problems["id"].iloc[schedule.epoch_order(e)].tolist()
    assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert epochs[0] != problems["id"].tolist()  # and shuffled at all

    # Deterministic given the seed; a pure function of the step (resume restores the data position).
    fresh = PromptSchedule(problems, prompts_per_step=3, seed=5)
    assert ids(fresh, 11) == ids(schedule, 11)
    assert [ids(fresh, s) for s in (7, 2, 7)] == [ids(schedule, 7), ids(schedule, 2), ids(schedule, 7)]
    other_seed = PromptSchedule(problems, prompts_per_step=3, seed=6)
    assert [ids(other_seed, s) for s in range(5)] != [ids(schedule, s) for s in range(5)]
    assert list(schedule.batch(0).columns) == list(problems.columns)
    assert schedule.steps_for(1.0) == 6 and schedule.steps_for(0.5) == 3  # ceil(epochs x 16 / 3)


def test_prompt_schedule_refuses_an_empty_problem_set(problems):
    with pytest.raises(ValueError, match="no training problems"):
        PromptSchedule(problems.iloc[:0], 4, 0)
