"""Sample selectors (dashrl.rl.selectors, docs/algorithm.md §6): each one's selection logic on scripted
rewards, one step of each through ``rl_step`` on the tiny model (tests/test_rl.py's fixtures), selector
none identical to DASH as it was, greso's history through a checkpoint, the params checks, and the
comparison's table and figure (dashrl.report.selector_comparison)."""

from __future__ import annotations

import dataclasses
import itertools
import re
import shutil
import zlib
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import test_rl
import torch
from test_rl import build_run, make_cfg, run_train

import dashrl.rl.loop
from dashrl.algo.advantages import group_advantages
from dashrl.config.params import ParamsError, check_rl_run, load_params
from dashrl.config.profiles import apply_profile
from dashrl.data.schema import write_problems
from dashrl.engines.base import Completion
from dashrl.grading.math_grader import Grade
from dashrl.infra.distributed import SINGLE
from dashrl.infra.files import read_jsonl
from dashrl.report.selector_comparison import plot_selectors, reward_at, selector_notes, selector_table
from dashrl.rl.checkpoints import restore_checkpoint, save_checkpoint
from dashrl.rl.loop import rl_step
from dashrl.rl.run import PromptSchedule
from dashrl.rl.samples import Group, Sample
from dashrl.rl.selectors import (
    GRESO_HISTORY,
    SELECTORS,
    get_selector,
    max_variance_subset,
    predicted_zero_variance,
    register_selector,
)

# tests/test_rl.py's fixtures, by name (one_thread is autouse)
one_thread = test_rl.one_thread
problems = test_rl.problems
tokenizer = test_rl.tokenizer
scripted_rewards = test_rl.scripted_rewards

REPO = Path(__file__).resolve().parents[1]
SELECTOR_COUNTS = ("samples_generated", "samples_backpropagated", "prompts_sampled", "prompts_skipped",
                   "prompts_explored", "extra_rounds")


def graded(rewards: list[float]) -> list[Grade]:
    return [Grade(reward=float(r), extracted=None, boxed=False, status="correct" if r else "wrong") for r in rewards]


def group(problem_id: str, rewards: list[float]) -> Group:
    completion = Completion(text="x", token_ids=[1], finish_reason="stop", logprobs=[0.0])
    return Group(problem_id=problem_id, level=1, prompt_ids=[1], completions=[completion] * len(rewards),
                 grades=graded(rewards), rewards=torch.tensor(rewards, dtype=torch.float32))


def fake_run(problems: pd.DataFrame, **overrides) -> SimpleNamespace:
    """What the selectors read of a run: its config, the training prompts, the world, the state."""
    cfg = make_cfg(**overrides)
    return SimpleNamespace(cfg=cfg, schedule=PromptSchedule(problems, cfg.prompts_per_step, cfg.seed), world=SINGLE,
                           selector_state={})


MIXED, ZERO = [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------------------------
# The registry


def test_unknown_selector_lists_the_valid_ones_and_a_name_registers_once():
    assert set(SELECTORS) >= {"none", "dapo", "pods", "greso"}
    with pytest.raises(ValueError, match=re.escape("unknown selector 'nope' (valid: dapo, greso, none, pods)")):
        get_selector("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_selector("pods")(lambda run, step, groups, rollout, stats: groups)
    cfg = make_cfg(group_size=4, pods_factor=3)
    assert get_selector("pods").draws(cfg) == 12 and get_selector("none").draws(cfg) == 4
    assert get_selector("dapo").drops_samples and get_selector("pods").drops_samples
    assert not get_selector("none").drops_samples and not get_selector("greso").drops_samples


# ------------------------------------------------------------------------------------------------
# dapo: dynamic sampling on scripted rewards


def scripted_rollout(script: dict[int, list[list[float]]], calls: list[tuple[int, list[str]]]):
    """A rollout whose round r gives its prompts the rewards script[r] (in order); records the calls."""
    def rollout(rows: pd.DataFrame, round_: int) -> list[Group]:
        calls.append((round_, rows["id"].tolist()))
        return [group(pid, rewards) for pid, rewards in zip(rows["id"], script[round_], strict=False)]

    return rollout


@pytest.mark.parametrize(("max_rounds", "rounds_run", "trained"), [(3, 2, 4), (2, 1, 3), (1, 0, 2), (5, 2, 4)])
def test_dapo_samples_more_groups_until_the_share_is_informative_or_the_bound(problems, max_rounds, rounds_run, trained):
    run = fake_run(problems, selector="dapo", dapo_max_rounds=max_rounds)
    scheduled = run.schedule.batch(0)
    first = [group(pid, r) for pid, r in zip(scheduled["id"], [MIXED, ZERO, MIXED, ZERO], strict=True)]
    # Round 1 samples the 2 missing groups (one informative), round 2 the 1 still missing.
    script = {1: [MIXED, ZERO], 2: [[0.0, 1.0, 1.0, 1.0]]}
    calls: list[tuple[int, list[str]]] = []
    stats: dict[str, float] = defaultdict(float)
    out = get_selector("dapo").select(run, 0, first, scripted_rollout(script, calls), stats)

    assert [(r, len(ids)) for r, ids in calls] == [(1, 2), (2, 1)][:rounds_run]
    assert stats["extra_rounds"] == rounds_run
    assert sum(g.trained for g in out) == trained
    assert all(not g.zero_variance for g in out if g.trained)
    assert all(g.trained for g in out[:trained]) and not any(g.trained for g in out[trained:])  # trained first
    assert len(out) == 4 + sum(len(ids) for _, ids in calls)  # every generated group comes back
    # The extra prompts: new to the step, distinct, and a function of (seed, step, round).
    extra = [pid for _, ids in calls for pid in ids]
    assert not set(extra) & set(scheduled["id"]) and len(set(extra)) == len(extra)
    again: list[tuple[int, list[str]]] = []
    get_selector("dapo").select(run, 0, [dataclasses.replace(g) for g in first], scripted_rollout(script, again),
                                defaultdict(float))
    assert again == calls
    if calls:
        other_step: list[tuple[int, list[str]]] = []
        get_selector("dapo").select(run, 1, [dataclasses.replace(g) for g in first], scripted_rollout(script, other_step),
                                    defaultdict(float))
        assert other_step != calls


def test_dapo_samples_nothing_more_when_every_group_is_informative(problems):
    run = fake_run(problems, selector="dapo")
    first = [group(f"p{i}", MIXED) for i in range(4)]
    calls: list = []
    out = get_selector("dapo").select(run, 0, first, scripted_rollout({}, calls), defaultdict(float))
    assert calls == [] and out == first and all(g.trained for g in out)


# ------------------------------------------------------------------------------------------------
# pods: max-variance down-sampling


def test_max_variance_subset_binary_rewards_is_as_balanced_as_the_group_allows():
    rewards = [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]  # 5 right of 16
    assert max_variance_subset(rewards, 8) == [0, 1, 2, 3, 4, 8, 9, 10]  # 4 + 4, lowest indices first
    assert max_variance_subset(rewards, 4) == [0, 1, 2, 8]
    one_right = [0] * 15 + [1]
    assert max_variance_subset(one_right, 8) == [0, 1, 2, 3, 4, 5, 6, 15]  # the one right answer is kept
    assert max_variance_subset([1] * 16, 8) == list(range(8))  # all equal: the first m
    assert max_variance_subset([0.1, 0.9, 0.5, 0.3, 0.7], 2) == [0, 1]  # the extremes
    assert max_variance_subset([0.1, 0.9, 0.5, 0.3, 0.7], 3) == [0, 1, 4]  # a tie: fewer low ones
    with pytest.raises(ValueError, match="cannot keep 5 of 4"):
        max_variance_subset([0, 1, 0, 1], 5)


@pytest.mark.parametrize("seed", range(6))
def test_max_variance_subset_has_the_brute_force_maximum(seed):
    rng = np.random.default_rng(seed)
    rewards = (rng.random(8) < 0.3).astype(float).tolist() if seed % 2 else rng.random(8).round(2).tolist()
    for m in (2, 3, 4, 6):
        best = max(np.var([rewards[j] for j in subset]) for subset in itertools.combinations(range(8), m))
        chosen = max_variance_subset(rewards, m)
        assert len(chosen) == m and chosen == sorted(set(chosen))
        assert np.var([rewards[j] for j in chosen]) == pytest.approx(best, abs=1e-12)


def test_pods_keeps_the_max_variance_subset_of_each_group(problems):
    run = fake_run(problems, selector="pods", pods_factor=2)
    groups = [group("a", [0, 0, 0, 0, 1, 1, 0, 0]), group("b", [1, 1, 1, 1, 1, 1, 1, 0]), group("c", [1] * 8)]
    out = get_selector("pods").select(run, 0, groups, scripted_rollout({}, []), defaultdict(float))
    assert [g.chosen for g in out] == [[0, 1, 4, 5], [0, 1, 2, 7], [0, 1, 2, 3]]
    assert all(g.trained for g in out)


# ------------------------------------------------------------------------------------------------
# greso: skipping before rollout


def test_greso_skips_a_prompt_predicted_zero_variance_unless_explored(problems):
    run = fake_run(problems, selector="greso", greso_history=2, greso_explore=0.0)
    scheduled = run.schedule.batch(3)
    target, other, short = scheduled["id"].iloc[1], scheduled["id"].iloc[2], scheduled["id"].iloc[3]
    run.selector_state[GRESO_HISTORY] = {target: [0, 1, 1], other: [1, 0], short: [1]}  # only target predicted
    stats: dict[str, float] = defaultdict(float)
    picked = get_selector("greso").prompts(run, 3, scheduled, stats)
    assert len(picked) == run.cfg.prompts_per_step  # refilled: still P prompts
    assert target not in set(picked["id"])
    assert picked["id"].tolist()[:3] == [i for i in scheduled["id"] if i != target]  # schedule order kept
    assert picked["id"].iloc[3] not in set(scheduled["id"])  # the refill comes from the stream
    assert (stats["prompts_skipped"], stats["prompts_explored"]) == (1, 0)
    again = get_selector("greso").prompts(run, 3, scheduled, defaultdict(float))
    assert again["id"].tolist() == picked["id"].tolist()  # seeded by (seed, step)

    run.cfg = dataclasses.replace(run.cfg, greso_explore=1.0)  # always explored
    stats = defaultdict(float)
    explored = get_selector("greso").prompts(run, 3, scheduled, stats)
    assert explored["id"].tolist() == scheduled["id"].tolist()
    assert (stats["prompts_skipped"], stats["prompts_explored"]) == (0, 1)


def test_greso_exploration_is_seeded_by_the_step(problems):
    run = fake_run(problems, selector="greso", greso_history=1, greso_explore=0.5, prompts_per_step=4)
    run.selector_state[GRESO_HISTORY] = {pid: [1] for pid in problems["id"]}  # every prompt predicted
    picks = [get_selector("greso").prompts(run, step, run.schedule.batch(step), defaultdict(float))["id"].tolist()
             for step in (0, 0, 1)]
    assert picks[0] == picks[1] and len(picks[0]) == 4
    # Every prompt is predicted: each is kept by a coin, the stream refills, and once it is exhausted
    # skipped ones fill the step (P prompts whatever the history).
    run.cfg = dataclasses.replace(run.cfg, greso_explore=0.0)
    stats: dict[str, float] = defaultdict(float)
    forced = get_selector("greso").prompts(run, 0, run.schedule.batch(0), stats)
    assert forced["id"].tolist() == run.schedule.batch(0)["id"].tolist() and stats["prompts_skipped"] == len(problems) - 4


def test_greso_observe_keeps_each_prompts_last_outcomes(problems):
    run = fake_run(problems, selector="greso", greso_history=2)
    completion = Completion(text="x", token_ids=[1], finish_reason="stop", logprobs=[0.0])

    def samples(rewards: dict[str, list[float]]) -> list[Sample]:
        return [Sample(problem_id=pid, level=1, prompt_index=i, sample_index=j, prompt_ids=[1], completion=completion,
                       reward=r, grade_status="correct") for i, (pid, rs) in enumerate(rewards.items()) for j, r in enumerate(rs)]

    observe = get_selector("greso").observe
    observe(run, 0, samples({"a": MIXED, "b": ZERO}))
    observe(run, 1, samples({"a": [1.0] * 4, "b": ZERO}))
    observe(run, 2, samples({"b": ZERO}))
    assert run.selector_state[GRESO_HISTORY] == {"a": [0, 1], "b": [1, 1]}
    assert predicted_zero_variance([1, 1], 2) and not predicted_zero_variance([0, 1], 2) and not predicted_zero_variance([1], 2)


# ------------------------------------------------------------------------------------------------
# Through rl_step on the tiny model


def untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if "time" not in k and "per_s" not in k}


@pytest.mark.parametrize("overrides", [{"selector": "greso"}, {"selector": "pods", "pods_factor": 1}])
def test_selector_none_is_dash_and_a_neutral_selector_changes_nothing(tiny_model_dir, tokenizer, problems, scripted_rewards,
                                                                      overrides):
    """greso with an empty history and pods keeping all of G draws run the new code path and must give
    exactly what selector none gives: the same weights, rollouts and metrics. (That none is the step
    as it was before the selectors was checked against the previous commit's code: identical weights,
    rollouts and metrics over 2-3 steps of DASH, GRPO, PPO with KL, padded packing.)"""
    cfg = make_cfg(filter_threshold=0.1, micro_batch_size=8)
    outs, weights = [], []
    for c in (cfg, dataclasses.replace(cfg, **overrides)):
        run = build_run(c, tiny_model_dir, tokenizer, problems)
        outs.append([rl_step(run, step) for step in range(2)])
        weights.append(run.policy.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for a, b in zip(*outs, strict=True):
        assert untimed(a.metrics) == untimed(b.metrics)
        pd.testing.assert_frame_equal(a.rollouts, b.rollouts.drop(columns=["selected"], errors="ignore"))
    m = outs[0][0].metrics
    assert (m["samples_generated"], m["samples"], m["samples_backpropagated"], m["prompts_sampled"]) == (16, 16, 8, 4)
    assert (m["prompts_skipped"], m["prompts_explored"], m["extra_rounds"]) == (0, 0, 0)


@pytest.mark.parametrize("selector", sorted(SELECTORS))
def test_one_step_of_each_selector(tiny_model_dir, tokenizer, problems, scripted_rewards, selector):
    cfg = make_cfg(selector=selector, filter_threshold=0.1)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    out = rl_step(run, 0)
    m, frame = out.metrics, out.rollouts
    assert all(isinstance(m[key], int) for key in SELECTOR_COUNTS)
    assert m["optimizer_steps"] == 1 and any(not torch.equal(p, before[n]) for n, p in run.policy.named_parameters())
    assert len(frame) == m["samples_generated"] >= m["samples"] >= m["samples_kept"] == m["samples_backpropagated"] > 0
    assert ("selected" in frame) == get_selector(selector).drops_samples
    assert m["prompts_sampled"] >= cfg.prompts_per_step


def test_dapo_step_trains_p_informative_groups(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """The scripted rewards cycle [mixed, zero, mixed, zero] within each grading call: round 0 gives 2
    informative groups of 4, round 1 (2 prompts) one more, round 2 (1 prompt) the last."""
    cfg = make_cfg(selector="dapo", dapo_max_rounds=3, filter_threshold=0.1)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    out = rl_step(run, 0)
    m, frame = out.metrics, out.rollouts
    assert (m["extra_rounds"], m["prompts_sampled"], m["samples_generated"]) == (2, 7, 28)
    assert (m["samples"], m["samples_kept"], m["samples_backpropagated"]) == (16, 16, 16)  # 4 informative groups
    assert m["zero_variance_group_fraction"] == pytest.approx(3 / 7)
    trained = frame[frame["selected"]]
    assert sorted(set(trained["prompt_index"])) == [0, 1, 2, 3] and trained["kept"].all()
    assert (frame.loc[~frame["selected"], "prompt_index"] >= cfg.prompts_per_step).all()
    assert not frame.loc[~frame["selected"], "kept"].any()
    assert frame["problem_id"].nunique() == 7  # no prompt sampled twice in a step
    again = rl_step(build_run(cfg, tiny_model_dir, tokenizer, problems), 0)
    pd.testing.assert_frame_equal(again.rollouts, frame)  # seeded: the same extra prompts and samples


def test_pods_step_trains_the_max_variance_g_of_each_prompt(tiny_model_dir, tokenizer, problems, monkeypatch):
    script = [[0, 0, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]]

    def grade(completions, references, sources=(), grader=None):
        return graded([script[(i // 8) % 2][i % 8] for i in range(len(completions))])

    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", grade)
    cfg = make_cfg(selector="pods", pods_factor=2, prompts_per_step=2, group_size=4, micro_batch_size=4)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    out = rl_step(run, 0)
    m, frame = out.metrics, out.rollouts
    assert (m["samples_generated"], m["samples"], m["samples_backpropagated"]) == (16, 8, 8)
    selected = frame[frame["selected"]]
    assert selected.groupby("prompt_index")["sample"].apply(list).tolist() == [[0, 1, 4, 5], [0, 1, 2, 7]]
    expected = group_advantages(torch.tensor([[0.0, 0, 1, 1], [1.0, 1, 1, 0]]), scale_rewards=True).flatten()
    assert selected["advantage"].tolist() == pytest.approx(expected.tolist())
    assert (frame.loc[~frame["selected"], "advantage"] == 0).all() and not frame.loc[~frame["selected"], "kept"].any()
    assert m["reward_mean"] == pytest.approx(frame["reward"].mean())  # the policy's reward: every draw


# ------------------------------------------------------------------------------------------------
# greso's history through checkpoints


def test_greso_history_survives_save_and_restore(tmp_path, tiny_model_dir, tokenizer, problems):
    cfg = make_cfg(selector="greso")
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    run.selector_state = {GRESO_HISTORY: {"arith-1": [1, 1], "arith-2": [0]}}
    save_checkpoint(run, tmp_path, 3, "fingerprint")
    fresh = build_run(cfg, tiny_model_dir, tokenizer, problems)
    assert fresh.selector_state == {}
    assert restore_checkpoint(fresh, tmp_path / "checkpoints" / "step-000003") == 3
    assert fresh.selector_state == run.selector_state


def answer_grade_batch(completions, references, sources=(), grader=None) -> list[Grade]:
    """A pure function of the text and the reference: a third of the problems always right (zero-
    variance groups, which greso learns to skip), the others right for completions of even length."""
    return graded([1.0 if zlib.crc32(str(ref).encode()) % 3 == 0 else float(len(text) % 2 == 0)
                   for text, ref in zip(completions, references, strict=True)])


def test_greso_run_resumes_with_its_history(tmp_path, tiny_model_dir, tokenizer, problems, monkeypatch):
    """16 prompts, 4 a step: the second epoch (steps 4-5) revisits them and skips the always-right ones;
    killed in step 5 and resumed from the step-4 checkpoint, the run ends as an uninterrupted one."""
    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", answer_grade_batch)
    train_file = tmp_path / "train.parquet"
    write_problems(problems, train_file)
    cfg = make_cfg(selector="greso", greso_history=1, greso_explore=0.0, steps=6, checkpoint_every=2,
                   filter_threshold=0.1, lr=1e-3)
    check_rl_run(cfg, "rl.runs.test")
    uninterrupted = run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, tmp_path / "a")
    metrics_a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    assert sum(m["prompts_skipped"] for m in metrics_a[:4]) == 0 and sum(m["prompts_skipped"] for m in metrics_a[4:]) > 0

    real_step, crashed = dashrl.rl.loop.rl_step, []

    def crash_in_step_5(run, step):
        out = real_step(run, step)
        if step == 5 and not crashed:
            crashed.append(step)
            raise RuntimeError("killed during step 5")
        return out

    monkeypatch.setattr(dashrl.rl.loop, "rl_step", crash_in_step_5)
    with pytest.raises(RuntimeError, match="killed"):
        run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, tmp_path / "b")
    resumed = run_train(cfg, tiny_model_dir, tokenizer, problems, train_file, tmp_path / "b")
    assert resumed.selector_state == uninterrupted.selector_state
    state_a, state_b = uninterrupted.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert [untimed(m) for m in metrics_a] == [untimed(m) for m in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    for name in sorted(p.name for p in (tmp_path / "a" / "rollouts").glob("*.parquet")):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "rollouts" / name),
                                      pd.read_parquet(tmp_path / "b" / "rollouts" / name))


# ------------------------------------------------------------------------------------------------
# Params


@pytest.mark.parametrize(
    ("overrides", "key", "value", "why"),
    [
        ({"selector": "nope"}, "selector", "'nope'", "unknown (valid: dapo, greso, none, pods)"),
        ({"selector": "dapo", "sampling": "per_micro_batch", "micro_batch_size": 4}, "selector", "'dapo'",
         "needs sampling: preemptive"),
        ({"dapo_max_rounds": 0}, "dapo_max_rounds", "0", "must be >= 1"),
        ({"pods_factor": 0}, "pods_factor", "0", "must be >= 1"),
        ({"greso_history": 0}, "greso_history", "0", "must be >= 1"),
        ({"greso_explore": 1.5}, "greso_explore", "1.5", "must be in [0, 1]"),
        ({"greso_explore": -0.1}, "greso_explore", "-0.1", "must be in [0, 1]"),
    ],
)
def test_bad_selector_params_are_refused_with_key_and_value(overrides, key, value, why):
    with pytest.raises(ParamsError, match=re.escape(f"rl.runs.x.{key}: {value}: ") + ".*" + re.escape(why)):
        check_rl_run(make_cfg(**overrides), "rl.runs.x")


def test_selector_params_in_params_yaml_and_the_profile(tmp_path):
    params = load_params(REPO / "params.yaml")
    assert {params.rl.run(name).selector for name in params.rl.runs} == {"none"}
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_profile(tmp_path / "params.yaml", [REPO / "profiles/selectors.yaml"])
    params = load_params(tmp_path / "params.yaml")
    runs = {name: params.rl.run(name) for name in params.rl.runs}
    assert {name: r.selector for name, r in runs.items()} == {"dash": "none", "grpo": "none", "dapo": "dapo", "pods": "pods",
                                                              "greso": "greso"}
    assert all(r.sampling == "preemptive" and r.filter_threshold == runs["dash"].filter_threshold
               for name, r in runs.items() if name != "grpo")
    pods = runs["pods"]  # samples as many completions a step as dash
    assert pods.prompts_per_step * pods.pods_factor * pods.group_size == runs["dash"].prompts_per_step * runs["dash"].group_size
    assert set(params.evaluate.models) >= set(runs)


# ------------------------------------------------------------------------------------------------
# The comparison: table and figure


def fake_steps(rewards: list[float], seconds: float, generated: int, backpropagated: int, **extra) -> list[dict]:
    return [{"step": i, "reward_mean": r, "time_step_s": seconds, "samples_generated": generated,
             "samples_backpropagated": backpropagated, "prompts_sampled": 8, "prompts_skipped": 0, "extra_rounds": 0,
             "samples": backpropagated, "samples_kept": backpropagated, **extra} for i, r in enumerate(rewards)]


def test_selector_table_compares_samples_and_reward_at_equal_wall_clock():
    steps = {
        "dash": fake_steps([0.1, 0.2, 0.3, 0.4], 10.0, 64, 48),  # 40 s
        "dapo": fake_steps([0.1, 0.3, 0.5, 0.7], 20.0, 80, 64, extra_rounds=1),  # 80 s
        "pods": fake_steps([0.2, 0.2, 0.2], 10.0, 64, 32),  # 30 s: the shortest
        "grpo": [{"step": i, "reward_mean": 0.1, "time_step_s": 30.0, "samples": 64, "samples_kept": 64}
                 for i in range(2)],  # from before the selectors' counters
    }
    summary = {run: {"train_wall_s": sum(m["time_step_s"] for m in s), "reward_last_steps": s[-1]["reward_mean"]}
               for run, s in steps.items()}
    evals = {("dash", "arith"): {"accuracy": 0.25}, ("pods", "arith"): {"accuracy": 0.2}}
    table = selector_table(summary, steps, evals).set_index("run")
    assert table.loc["greso", "status"] == "not run" and pd.isna(table.loc["greso", "samples_generated"])
    assert table.loc["dapo", "status"] == "not evaluated" and table.loc["dash", "status"] == "ok"
    assert table.loc["dash", "samples_generated"] == 256 and table.loc["dash", "samples_backpropagated"] == 192
    assert table.loc["dapo", "extra_rounds"] == 4 and table.loc["pods", "backprop_fraction"] == pytest.approx(0.5)
    assert table.loc["grpo", "samples_generated"] == 128 and table.loc["grpo", "samples_backpropagated"] == 128
    assert table.loc["dash", "equal_time_s"] == 30.0
    # At 30 s: dash's 3-step mean at its step 3 (0.2); dapo halfway between 10 s (0.1) and 20 s (0.2).
    assert table.loc["dash", "reward_at_equal_time"] == pytest.approx(0.2)
    assert table.loc["dapo", "reward_at_equal_time"] == pytest.approx(0.15)
    assert table.loc["pods", "reward_at_equal_time"] == pytest.approx(0.2)
    assert table.loc["grpo", "reward_at_equal_time"] == pytest.approx(0.1)  # its first step ends at 30 s
    assert table.loc["dapo", "reward_end"] == 0.7 and table.loc["dash", "accuracy_arith"] == 0.25
    assert pd.isna(table.loc["dapo", "accuracy_arith"])
    assert reward_at(steps["dapo"], 1e9) == pytest.approx(0.5)  # past the end: the last 3-step mean
    notes = selector_notes(table.reset_index())
    assert any("30 s" in n for n in notes) and any("not run in this profile: greso" in n for n in notes)


def test_plot_selectors_writes_a_png(tmp_path):
    steps = {"dash": fake_steps([0.1, 0.2], 10.0, 64, 48), "pods": fake_steps([0.2, 0.3], 8.0, 64, 32)}
    plot_selectors({}, steps, {}, tmp_path / "selectors.png", dpi=40)
    assert (tmp_path / "selectors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_selectors({}, {}, {}, tmp_path / "empty.png", dpi=40)  # nothing run: still a figure
    assert (tmp_path / "empty.png").stat().st_size > 0
