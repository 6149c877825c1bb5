"""Benchmark evaluation: sample completions, grade them with the RL reward's grader, summarise.

The paper's metric is the accuracy of ONE sample per problem (temperature 0.6-0.7, top_p 0.95).
With k > 1 samples per problem we also report mean@k (mean reward over all samples) and the
unbiased pass@k estimator of Chen et al. (2021): pass@k = E[1 - C(n - c, k) / C(n, k)] over
problems, with n samples of which c are correct.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from dashrl.config.params import GraderParams, PromptParams
from dashrl.data.loaders import task_of
from dashrl.engines.base import RolloutEngine, SamplingConfig
from dashrl.grading.tasks import count_statuses, grade_completions
from dashrl.models import render_prompt

RESULT_COLUMNS = (
    "id", "sample", "level", "prompt", "completion", "answer", "extracted", "reward",
    "grade_status", "boxed", "tokens", "truncated",
)


def evaluate(
    problems: pd.DataFrame,
    *,
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptParams,
    grader: GraderParams,
    sampling: SamplingConfig,
    samples_per_problem: int,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Sample ``samples_per_problem`` completions per problem, grade them, return (rows, metrics).

    ``rows`` has one row per (problem, sample) with the columns ``RESULT_COLUMNS``.
    """
    if problems.empty:
        raise ValueError("no problems to evaluate")
    prompts = [render_prompt(p, tokenizer, prompt, task_of(source)) for p, source in zip(problems["prompt"], problems["source"], strict=True)]
    completions = engine.generate(prompts, samples_per_problem, sampling)  # (P, k)
    stats = engine.last_stats

    flat = [(i, s, c) for i, group in enumerate(completions) for s, c in enumerate(group)]
    references = [problems["answer"].iloc[i] for i, _, _ in flat]
    sources = [problems["source"].iloc[i] for i, _, _ in flat]
    grades = grade_completions([c.text for _, _, c in flat], references, sources, grader)
    rows = pd.DataFrame(
        {
            "id": [problems["id"].iloc[i] for i, _, _ in flat],
            "sample": [s for _, s, _ in flat],
            "level": [int(problems["level"].iloc[i]) for i, _, _ in flat],
            "prompt": [prompts[i] for i, _, _ in flat],
            "completion": [c.text for _, _, c in flat],
            "answer": references,
            "extracted": [g.extracted for g in grades],
            "reward": [g.reward for g in grades],
            "grade_status": [g.status for g in grades],
            "boxed": [g.boxed for g in grades],
            "tokens": [c.n_tokens for _, _, c in flat],
            "truncated": [c.finish_reason == "length" for _, _, c in flat],
        },
        columns=list(RESULT_COLUMNS),
    )
    metrics = summarise(rows, samples_per_problem)
    metrics["grader_status_counts"] = count_statuses([g.status for g in grades], sources)
    metrics["generation_wall_s"] = stats.wall_s
    metrics["generation_tokens_per_s"] = stats.tokens_per_s
    metrics["generation_padding_fraction"] = 1 - stats.generated_tokens / max(stats.padded_token_slots, 1)
    return rows, metrics


def summarise(rows: pd.DataFrame, samples_per_problem: int) -> dict[str, Any]:
    """Accuracy, mean@k, pass@k, format and length statistics of graded rows."""
    first = rows[rows["sample"] == 0]
    # pass@k counts correct samples: reward 1 (a custom reward function may give partial credit in between).
    correct_per_problem = (rows["reward"] == 1.0).groupby(rows["id"], sort=False).sum().to_numpy()  # (P,)
    metrics: dict[str, Any] = {
        "n_problems": int(first.shape[0]),
        "samples_per_problem": samples_per_problem,
        "accuracy": float(first["reward"].mean()),
        "boxed_rate": float(rows["boxed"].mean()),
        "truncation_rate": float(rows["truncated"].mean()),
        "completion_tokens_mean": float(rows["tokens"].mean()),
        "completion_tokens_median": float(rows["tokens"].median()),
        "accuracy_by_level": {
            str(level): float(group["reward"].mean()) for level, group in first.groupby("level")
        },
    }
    if samples_per_problem > 1:
        metrics[f"mean@{samples_per_problem}"] = float(rows["reward"].mean())
        for k in pass_k_values(samples_per_problem):
            metrics[f"pass@{k}"] = float(np.mean([pass_at_k(samples_per_problem, int(c), k) for c in correct_per_problem]))
    return metrics


def pass_k_values(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [2**i for i in range(int(math.log2(n)) + 1)]
    return ks if ks[-1] == n else [*ks, n]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``c`` correct of ``n`` samples."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def select_problems(problems: pd.DataFrame, max_problems: int | None) -> pd.DataFrame:
    """The first ``max_problems`` problems (file order is already a seeded shuffle or the release's)."""
    return problems if max_problems is None else problems.head(max_problems)


def sampling_from(params: Any) -> SamplingConfig:
    """SamplingConfig from any params object with the usual sampling fields."""
    return SamplingConfig(
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k,
        max_new_tokens=params.max_new_tokens,
        seed=params.seed,
    )
