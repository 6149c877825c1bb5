"""Today's GRPO baseline knobs (docs/algorithm.md §7) on the tiny model of tests/test_rl.py: the dapo
loss aggregation, truncated importance sampling (tis_cap), overlong masking (mask_truncated), the
per-step entropy metric, the KL term's normaliser under filtering (kl_norm) and DAPO's extra rounds
under data parallelism. Each test fails without the knob it tests."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import test_rl
import torch
from test_rl import (
    G,
    all_close,
    build_run,
    make_cfg,
    max_abs,
    perturbed_reference,
    sample_step,
    step_gradient,
)

from dashrl.algo.losses import (
    LOG_RATIO_MAX,
    batch_logprobs,
    token_logprobs,
    truncated_is_weights,
)
from dashrl.algo.sampling import sampling_logprobs
from dashrl.config.params import ParamsError, check_rl_run, load_params
from dashrl.data.arith import generate_arith
from dashrl.engines.base import Completion
from dashrl.grading.math_grader import Grade
from dashrl.infra.distributed import SINGLE
from dashrl.rl.loop import backward, kl_scale, micro_batches, optimizer_step, pack, rl_step, step_counts
from dashrl.rl.run import TIS_AUTO_CAP, PromptSchedule, resolve_tis_cap
from dashrl.rl.samples import Group
from dashrl.rl.selectors import get_selector

# tests/test_rl.py's fixtures, by name (one_thread is autouse)
one_thread = test_rl.one_thread
problems = test_rl.problems
tokenizer = test_rl.tokenizer
scripted_rewards = test_rl.scripted_rewards


def shifted(samples, shift):
    """The samples with the engine's behaviour log-probs moved by ``shift(i, t)`` (a mismatched engine)."""
    out = []
    for i, s in enumerate(samples):
        logprobs = [x + shift(i, t) for t, x in enumerate(s.completion.logprobs)]
        out.append(dataclasses.replace(s, completion=dataclasses.replace(s.completion, logprobs=logprobs)))
    return out


# ------------------------------------------------------------------------------------------------
# loss_agg: dapo


def test_dapo_loss_is_the_token_mean_over_the_whole_step(tiny_model_dir, tokenizer, problems, scripted_rewards):
    cfg = make_cfg(loss_agg="dapo", grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    samples = sample_step(run)
    assert len({s.completion.n_tokens for s in samples}) > 1  # sequences of several lengths

    # By hand: every token of the step weighs 1 / (the step's completion tokens), whatever its sequence.
    batch = pack(samples, tokenizer.pad_token_id, run.policy.device, cfg.packing)
    logp = batch_logprobs(run.policy, batch, cfg.temperature)  # (B, Tc)
    mask = batch.completion_mask > 0  # (B, Tc)
    total_tokens = sum(s.completion.n_tokens for s in samples)
    (torch.where(mask, -batch.advantages[:, None] * logp, 0.0).sum() / total_tokens).backward()
    by_hand = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)
    assert max_abs(by_hand) > 0

    for micro in (1, 4, 16):  # any split of the step into micro-batches
        _, grads = step_gradient(run, samples, micro_batch_size=micro)
        assert all_close(grads, by_hand, rtol=1e-4, atol=1e-7), f"micro-batches of {micro}"
    # ... and not the per-sequence mean (grpo) nor the constant-length one (dr_grpo)
    for other in ("grpo", "dr_grpo"):
        run.cfg = dataclasses.replace(cfg, loss_agg=other)
        _, grads = step_gradient(run, samples, micro_batch_size=16)
        assert not all_close(grads, by_hand, rtol=1e-3, atol=1e-6), other


def test_dapo_with_the_filter_is_lossless_at_tau_0_and_dapos_own_objective_with_kept(
        tiny_model_dir, tokenizer, problems, scripted_rewards):
    """filter_norm original: dropping the zero-advantage samples leaves dapo's gradient as it is
    (their tokens stay in the denominator); kept: the token mean over the informative samples only,
    which is DAPO's objective (its dynamic sampling never trains a zero-variance group)."""
    cfg = make_cfg(loss_agg="dapo", grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    everything = sample_step(run)
    filtered = [dataclasses.replace(s, kept=s.advantage != 0) for s in everything]
    assert 0 < sum(s.kept for s in filtered) < len(filtered)
    _, grads_all = step_gradient(run, everything, micro_batch_size=1)
    _, grads_filtered = step_gradient(run, filtered, micro_batch_size=1)
    assert all_close(grads_filtered, grads_all, rtol=1e-6, atol=0)

    run.cfg = dataclasses.replace(cfg, filter_norm="kept")
    _, grads_kept = step_gradient(run, filtered, micro_batch_size=1)
    all_tokens = sum(s.completion.n_tokens for s in everything)
    kept_tokens = sum(s.completion.n_tokens for s in filtered if s.kept)
    assert all_close(grads_kept, [g * all_tokens / kept_tokens for g in grads_all], rtol=1e-5, atol=0)


# ------------------------------------------------------------------------------------------------
# Truncated importance sampling: tis_cap


def test_tis_weights_are_the_truncated_ratio_of_trainer_to_engine():
    trainer = torch.tensor([[-1.0, -2.0, -0.5, -30.0]])  # (1, 4)
    engine = torch.tensor([[-1.0, -1.0, -2.0, -1.0]])  # (1, 4)
    rho = torch.exp(trainer - engine)  # (1, 4): 1, e^-1, e^1.5, e^-29
    assert torch.allclose(truncated_is_weights(trainer, engine, None), rho)
    assert torch.allclose(truncated_is_weights(trainer, engine, 2.0), rho.clamp(max=2.0))
    assert truncated_is_weights(trainer, engine, 2.0)[0, 2] == 2.0
    huge = truncated_is_weights(torch.tensor([0.0]), torch.tensor([-1e4]), None)  # an engine log-prob at the floor
    assert torch.isfinite(huge).all() and float(huge) == pytest.approx(float(torch.exp(torch.tensor(LOG_RATIO_MAX))))
    x = torch.zeros(3, requires_grad=True)
    assert not truncated_is_weights(x, torch.zeros(3), 2.0).requires_grad  # a weight, not a path for the gradient


def test_tis_reweights_each_token_and_reports_the_corrected_and_uncorrected_gap(
        tiny_model_dir, tokenizer, problems, scripted_rewards):
    cfg = make_cfg(grad_clip=0.0, loss_agg="bnpo", tis_cap=2.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    # The engine's log-probs off by +-1 in turn: rho = e^-1 or e^1 (> the cap 2: truncated)
    samples = shifted(sample_step(run), lambda i, t: 1.0 if (i + t) % 2 else -1.0)
    stats: dict[str, float] = defaultdict(float)
    backward(run, samples, stats)
    corrected = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)

    batch = pack(samples, tokenizer.pad_token_id, run.policy.device, cfg.packing)
    logp = batch_logprobs(run.policy, batch, cfg.temperature)  # (B, Tc)
    mask = batch.completion_mask > 0  # (B, Tc)
    rho = torch.exp(logp.detach() - batch.behaviour_logprobs)  # (B, Tc)
    weight = rho.clamp(max=2.0)  # (B, Tc)
    torch.where(mask, weight * -batch.advantages[:, None] * logp, 0.0).sum().backward()
    by_hand = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)
    assert max_abs(by_hand) > 0
    assert all_close(corrected, by_hand, rtol=1e-4, atol=1e-7)

    # Without TIS: the plain policy gradient (weight 1), a different update.
    run.cfg = dataclasses.replace(cfg, tis_cap=None)
    plain_stats: dict[str, float] = defaultdict(float)
    backward(run, samples, plain_stats)
    plain = [p.grad.clone() for p in run.policy.parameters()]
    run.policy.zero_grad(set_to_none=True)
    assert not all_close(plain, corrected, rtol=1e-3, atol=1e-6)

    tokens = float(mask.sum())
    assert stats["logprob_gap_tokens"] == tokens
    uncorrected_gap = float(torch.where(mask, (rho - 1).abs(), 0.0).sum()) / tokens
    corrected_gap = float(torch.where(mask, (rho - weight).abs(), 0.0).sum()) / tokens
    assert stats["tis_gap_uncorrected_sum"] / tokens == pytest.approx(uncorrected_gap, rel=1e-5)
    assert stats["tis_gap_corrected_sum"] / tokens == pytest.approx(corrected_gap, rel=1e-5)
    assert 0 < corrected_gap < uncorrected_gap  # truncation leaves part of the mismatch
    assert stats["tis_truncated_tokens"] == float((mask & (rho > 2.0)).sum()) > 0
    # TIS off: the corrected gap is the uncorrected one, the weights 1
    assert plain_stats["tis_gap_corrected_sum"] == pytest.approx(plain_stats["tis_gap_uncorrected_sum"])
    assert plain_stats["tis_weight_sum"] == tokens


def test_tis_step_metrics(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """The metrics line of a step carries the gaps; an engine that samples with the trainer's own
    numerics (the fp32 HF engine on the policy) has weight 1 and no gap to correct."""
    run = build_run(make_cfg(tis_cap=2.0), tiny_model_dir, tokenizer, problems)
    m = rl_step(run, 0).metrics
    assert {"tis_gap_uncorrected", "tis_gap_corrected", "tis_weight_mean", "tis_truncated_fraction"} <= set(m)
    assert m["tis_gap_uncorrected"] < 1e-3 and m["tis_truncated_fraction"] == 0.0
    assert m["tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(("overrides", "cap"), [
    ({"engine": "hf", "train_dtype": "float32", "rollout_dtype": "float32"}, None),  # bit-equal numerics: off
    ({"engine": "hf", "train_dtype": "float32", "rollout_dtype": "bfloat16"}, TIS_AUTO_CAP),  # a bf16 copy samples
    ({"engine": "hf", "train_dtype": "bfloat16", "rollout_dtype": "bfloat16"}, TIS_AUTO_CAP),  # autocast vs bf16 weights
    ({"engine": "vllm", "train_dtype": "float32", "rollout_dtype": "float32"}, TIS_AUTO_CAP),  # another engine
])
def test_tis_cap_auto_is_on_where_the_engine_differs_from_the_trainer(overrides, cap):
    cfg = make_cfg(tis_cap="auto", **overrides)
    assert resolve_tis_cap(cfg, SINGLE).tis_cap == cap
    assert resolve_tis_cap(make_cfg(tis_cap=3.0, **overrides), SINGLE).tis_cap == 3.0  # explicit: kept
    assert resolve_tis_cap(make_cfg(tis_cap=0, **overrides), SINGLE).tis_cap is None  # 0: off


@pytest.mark.parametrize("bad", [0.5, -1.0])
def test_tis_cap_below_one_is_refused(bad):
    with pytest.raises(ParamsError, match=rf"rl.runs.test.tis_cap: {bad}: must be >= 1"):
        check_rl_run(make_cfg(tis_cap=bad), "rl.runs.test")


# ------------------------------------------------------------------------------------------------
# mask_truncated


def test_mask_truncated_trains_no_truncated_completion(tiny_model_dir, tokenizer, problems, scripted_rewards):
    cfg = make_cfg(mask_truncated=True, loss_agg="dapo", grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    samples = sample_step(run)
    truncated = [s.completion.finish_reason == "length" for s in samples]
    assert 0 < sum(truncated) < len(samples)  # the tiny model stops some completions, not all, in 8 tokens
    assert [s.masked for s in samples] == truncated
    assert not any(s.kept for s in samples if s.masked)
    # Advantages still use every reward of the group: the same as without masking
    unmasked = sample_step(build_run(dataclasses.replace(cfg, mask_truncated=False), tiny_model_dir, tokenizer, problems))
    assert [s.advantage for s in samples] == [s.advantage for s in unmasked]
    assert all(s.kept for s in unmasked)
    # The normaliser counts only the unmasked samples' tokens
    counts = step_counts(samples, cfg.max_new_tokens, "original")
    assert counts.tokens == sum(s.completion.n_tokens for s in samples if not s.masked)
    # The update is dapo's over the unmasked samples alone
    _, grads = step_gradient(run, samples, micro_batch_size=4)
    survivors = [s for s in unmasked if s.completion.finish_reason != "length"]
    _, grads_survivors = step_gradient(run, survivors, micro_batch_size=4)
    assert all_close(grads, grads_survivors, rtol=1e-4, atol=1e-7)
    _, grads_unmasked = step_gradient(run, unmasked, micro_batch_size=4)
    assert not all_close(grads, grads_unmasked, rtol=1e-3, atol=1e-6)


def test_mask_truncated_metric_counts_the_masked_samples(tiny_model_dir, tokenizer, problems, scripted_rewards):
    run = build_run(make_cfg(mask_truncated=True), tiny_model_dir, tokenizer, problems)
    out = rl_step(run, 0)
    frame, m = out.rollouts, out.metrics
    assert m["samples_masked_truncated"] == int(frame["truncated"].sum()) > 0
    assert not frame.loc[frame["truncated"], "kept"].any()
    assert m["samples_kept"] == int((~frame["truncated"]).sum())


# ------------------------------------------------------------------------------------------------
# Entropy


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.8)])
def test_entropy_is_the_entropy_of_the_sampling_distribution(top_k, top_p):
    logits = torch.randn(3, 7, 50, generator=torch.Generator().manual_seed(0)) * 3  # (B, T, V)
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))  # (B, T)
    logp, entropy = token_logprobs(logits, ids, 0.7, top_k, top_p, with_entropy=True)  # (B, T) x 2
    assert torch.equal(logp, token_logprobs(logits, ids, 0.7, top_k, top_p))  # the log-probs as without
    dist = torch.distributions.Categorical(logits=sampling_logprobs(logits, 0.7, top_k, top_p))
    assert torch.allclose(entropy, dist.entropy(), atol=1e-5)
    assert not entropy.requires_grad


def test_entropy_step_metric_is_the_mean_over_trained_tokens(tiny_model_dir, tokenizer, problems, scripted_rewards):
    cfg = make_cfg(filter_threshold=0.1, micro_batch_size=8)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    before = {k: v.clone() for k, v in run.policy.state_dict().items()}
    out = rl_step(run, 0)
    kept = [s for s in sample_step_with(run, before) if s.kept]
    assert len(kept) == out.metrics["samples_kept"] > 0
    batch = pack(kept, tokenizer.pad_token_id, run.policy.device, cfg.packing)
    with torch.no_grad():
        _, entropy = batch_logprobs(run.policy, batch, cfg.temperature, with_entropy=True)  # (B, Tc)
    mask = batch.completion_mask > 0
    expected = float(entropy[mask].mean())
    assert 0 < expected < torch.log(torch.tensor(float(run.policy.config.vocab_size)))
    assert out.metrics["entropy"] == pytest.approx(expected, rel=1e-4)


def sample_step_with(run, weights):
    """The step's samples again, from the weights the step sampled with (the same seeds)."""
    run.policy.load_state_dict(weights)
    run.engine.sync_weights(run.policy)
    return sample_step(run)


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_entropy_is_the_same_in_both_layouts(tiny_model_dir, tokenizer, problems, scripted_rewards, packing):
    run = build_run(make_cfg(), tiny_model_dir, tokenizer, problems)
    samples = sample_step(run)
    with torch.no_grad():
        tree = batch_logprobs(run.policy, pack(samples, tokenizer.pad_token_id, run.policy.device, "tree"), 0.7,
                              with_entropy=True)[1]
        other = batch_logprobs(run.policy, pack(samples, tokenizer.pad_token_id, run.policy.device, packing), 0.7,
                               with_entropy=True)[1]
    assert torch.allclose(tree, other, atol=1e-4)
    assert (tree[pack(samples, tokenizer.pad_token_id, run.policy.device, packing).completion_mask == 0] == 0).all()


# ------------------------------------------------------------------------------------------------
# kl_norm: the KL weight under filtering


def test_kl_norm_kept_restores_beta_per_kept_token(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """With the filter dropping half of the samples, the KL term of a kept token weighs beta x 1/2
    under kl_norm original (the paper's code) and beta under kept."""
    cfg = make_cfg(kl_coef=0.1, kl_reference="init", filter_threshold=0.1, grad_clip=0.0)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)
    samples = sample_step(run)
    assert sum(s.kept for s in samples) == len(samples) // 2
    assert kl_scale(run, samples) == 1.0  # original
    run.cfg = dataclasses.replace(cfg, kl_norm="kept")
    assert kl_scale(run, samples) == 2.0  # dr_grpo: all sequences / kept sequences

    # kl_norm kept is kl_coef x 2 for the KL term, the policy term unchanged: check against beta' = 2 beta, no scaling
    _, grads_kept_norm = step_gradient_with_scale(run, samples, kl_scale(run, samples))
    run.cfg = dataclasses.replace(cfg, kl_coef=0.2)
    _, grads_double_beta = step_gradient_with_scale(run, samples, 1.0)
    assert all_close(grads_kept_norm, grads_double_beta, rtol=1e-5, atol=1e-8)
    run.cfg = cfg
    _, grads_original = step_gradient_with_scale(run, samples, kl_scale(run, samples))
    assert not all_close(grads_original, grads_kept_norm, rtol=1e-3, atol=1e-6)


def step_gradient_with_scale(run, samples, scale):
    stats: dict[str, float] = defaultdict(float)
    for batch in micro_batches([s for s in samples if s.kept], 4, run.cfg.packing):
        backward(run, batch, stats, scale)
    optimizer_step(run, step_counts(samples, run.cfg.max_new_tokens, run.cfg.filter_norm), stats)
    return stats["loss"], run.optimizer.grads.pop()


def test_kl_norm_kept_needs_preemptive_sampling():
    with pytest.raises(ParamsError, match="rl.runs.test.kl_norm: 'kept': kept needs sampling: preemptive"):
        check_rl_run(make_cfg(kl_norm="kept", sampling="per_micro_batch", micro_batch_size=4), "rl.runs.test")


# ------------------------------------------------------------------------------------------------
# DAPO's extra rounds under data parallelism


def test_dapo_rounds_under_data_parallelism_never_sample_a_problem_twice_in_a_step():
    """Two processes, each with its share of the step's prompts, all zero-variance: each samples extra
    rounds. No extra prompt is one of the step's (either process's), and the two never draw the same."""
    pool = generate_arith(12, 0, [1], seed=0)[0]  # few problems: a collision would be likely
    cfg = make_cfg(selector="dapo", dapo_max_rounds=4, prompts_per_step=4)
    schedule = PromptSchedule(pool, cfg.prompts_per_step, cfg.seed)
    completion = Completion(text="x", token_ids=[1], finish_reason="stop", logprobs=[0.0])

    def zero_group(pid):
        return Group(problem_id=pid, level=1, prompt_ids=[1], completions=[completion] * G,
                     grades=[Grade(reward=0.0, extracted=None, boxed=False, status="wrong")] * G,
                     rewards=torch.zeros(G))

    for step in range(3):
        step_ids = list(schedule.batch(step)["id"])
        drawn: dict[int, list[str]] = {}
        for rank in (0, 1):
            world = SimpleNamespace(rank=rank, size=2)
            run = SimpleNamespace(cfg=cfg, schedule=schedule, world=world, selector_state={})
            mine = step_ids[rank * 2 : rank * 2 + 2]
            calls: list[str] = []

            def rollout(rows: pd.DataFrame, round_: int, calls=calls) -> list[Group]:
                calls.extend(rows["id"])
                return [zero_group(pid) for pid in rows["id"]]

            get_selector("dapo").select(run, step, [zero_group(pid) for pid in mine], rollout, defaultdict(float))
            drawn[rank] = calls
        assert drawn[0] and drawn[1]  # both sampled extra rounds (up to 2 missing groups x 3 rounds, as the pool allows)
        for rank in (0, 1):
            assert len(set(drawn[rank])) == len(drawn[rank])
            assert not set(drawn[rank]) & set(step_ids)  # not the other process's step prompts either
        assert not set(drawn[0]) & set(drawn[1])


def test_new_keys_are_in_params_yaml_with_the_documented_defaults():
    cfg = load_params(Path(__file__).resolve().parents[1] / "params.yaml").rl.run("dash")
    assert (cfg.tis_cap, cfg.mask_truncated, cfg.kl_norm, cfg.loss_agg) == ("auto", False, "original", "dr_grpo")
