"""What each RL step reports: phase timings, the step's metrics (a ``metrics.jsonl`` line) and its
rollout table (a parquet file).

Bookkeeping only: nothing here feeds back into an update. With several processes ``gather_step``
brings every process's samples and statistics together first, so rank 0 reports the whole step.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from dashrl.grading.tasks import count_statuses

if TYPE_CHECKING:
    from dashrl.rl.run import RLRun
    from dashrl.rl.samples import Sample


@dataclass
class PhaseTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()  # the phase's kernels count in its own time, not the next one's
            self.seconds[phase] += time.perf_counter() - start


# Statistics each process sums over its own samples; the others (optimizer_steps, grad_norm, ...) are
# the same on every process. The loss is a per-process sum too: local loss sum / global normaliser.
PER_PROCESS_SUMS = ("sampled_tokens", "zero_variance_groups", "loss", "kl_sum", "trained_tokens",
                    "trained_completion_tokens", "clipped_tokens", "logprob_gap_sum", "logprob_gap_tokens",
                    "backward_passes", "groups_generated", "backpropagated_samples", "entropy_sum",
                    "tis_gap_uncorrected_sum", "tis_gap_corrected_sum", "tis_weight_sum", "tis_truncated_tokens")
# Per-process counts of which the step reports the largest (a selector's extra rollout rounds: the
# processes wait for the one that sampled most). prompts_skipped / prompts_explored are decided for the
# whole step, the same on every process.
PER_PROCESS_MAXES = ("extra_rounds",)
PHASES = ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")


def gather_step(run: RLRun, samples: list[Sample], stats: dict[str, float], timer: PhaseTimer) -> list[Sample]:
    """The whole step's samples (in prompt order) and summed statistics on every process; phase
    times become the slowest process's. A single process keeps its own."""
    stats.update(run.world.sum_floats({key: stats[key] for key in PER_PROCESS_SUMS}))
    stats.update(run.world.max_floats({key: stats[key] for key in PER_PROCESS_MAXES}))
    timer.seconds.update(run.world.max_floats({phase: timer.seconds[phase] for phase in PHASES}))
    return run.world.gather_objects(samples)


def step_metrics(
    run: RLRun, step: int, samples: list[Sample], stats: dict[str, float], timer: PhaseTimer, wall_s: float
) -> dict[str, Any]:
    """The step's metrics. The policy's own (reward, length, grades) are over every generated sample;
    the filter's (samples, kept, dropped, advantages) over the samples the selector chose to train
    (with selector none: the same ones)."""
    cfg = run.cfg
    rewards = np.array([s.reward for s in samples])
    lengths = np.array([s.completion.n_tokens for s in samples])
    selected = [s for s in samples if s.selected]
    kept = [s for s in selected if s.kept]
    kept_tokens = sum(s.completion.n_tokens for s in kept)
    completion_tokens = max(stats["trained_completion_tokens"], 1.0)
    gap_tokens = max(stats["logprob_gap_tokens"], 1.0)
    seconds = {f"time_{phase}_s": timer.seconds.get(phase, 0.0) for phase in PHASES}
    metrics: dict[str, Any] = {
        "step": step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "zero_variance_group_fraction": stats["zero_variance_groups"] / max(stats["groups_generated"], 1.0),
        "samples": len(selected),
        "samples_kept": len(kept),
        "samples_dropped": len(selected) - len(kept),
        "kept_fraction": len(kept) / max(len(selected), 1),
        # The selector's accounting (dashrl.rl.selectors): generated vs back-propagated (each backward pass
        # counts its sequences: ppo_epochs passes count a sample that often), prompts sampled (extra rounds
        # included), skipped before rollout, kept by exploration, extra rollout rounds.
        "samples_generated": len(samples),
        "samples_backpropagated": int(stats["backpropagated_samples"]),
        "prompts_sampled": int(stats["groups_generated"]),
        "prompts_skipped": int(stats["prompts_skipped"]),
        "prompts_explored": int(stats["prompts_explored"]),
        "extra_rounds": int(stats["extra_rounds"]),
        "tokens_kept": kept_tokens,
        "tokens_dropped": sum(s.completion.n_tokens for s in selected) - kept_tokens,
        "mean_abs_advantage_kept": float(np.mean([abs(s.advantage) for s in kept])) if kept else 0.0,
        "mean_abs_advantage_all": float(np.mean([abs(s.advantage) for s in selected])) if selected else 0.0,
        "completion_tokens_mean": float(lengths.mean()),
        "completion_tokens_max": int(lengths.max()),
        "truncation_rate": float(np.mean([s.completion.finish_reason == "length" for s in samples])),
        "loss": stats["loss"] / max(stats["updates"], 1),  # mean over the step's optimizer updates
        "grad_norm": stats.get("grad_norm", 0.0),
        "lr": stats.get("lr", run.optimizer.param_groups[0]["lr"]),  # the lr the step's (first) update used
        "optimizer_steps": int(stats["optimizer_steps"]),
        "skipped_optimizer_steps": int(stats["skipped_optimizer_steps"]),
        "backward_passes": int(stats["backward_passes"]),
        "trained_tokens": int(stats["trained_tokens"]),  # real (unpadded) prompt + completion tokens back-propagated
        # |engine - trainer| log-prob at the weights that sampled (PPO: before the first update)
        "logprob_gap_mean": stats["logprob_gap_sum"] / max(stats["logprob_gap_tokens"], 1.0),
        # the importance weight's error per token, rho = pi_trainer / pi_engine: the uncorrected update
        # uses 1 (|rho - 1|), truncated IS min(rho, tis_cap) (|rho - w|; the same without TIS)
        "tis_gap_uncorrected": stats["tis_gap_uncorrected_sum"] / gap_tokens,
        "tis_gap_corrected": stats["tis_gap_corrected_sum"] / gap_tokens,
        "tis_weight_mean": stats["tis_weight_sum"] / gap_tokens if stats["logprob_gap_tokens"] else 1.0,
        "tis_truncated_fraction": stats["tis_truncated_tokens"] / gap_tokens,
        # mean entropy (nats) of the sampling distribution over the back-propagated completion tokens
        "entropy": stats["entropy_sum"] / completion_tokens,
        "samples_masked_truncated": sum(s.masked for s in samples),
        **seconds,
        "time_step_s": wall_s,
        "sampling_tokens_per_s": stats["sampled_tokens"] / max(timer.seconds.get("sampling", 0.0), 1e-9),
        "training_tokens_per_s": stats["trained_tokens"] / max(timer.seconds.get("forward_backward", 0.0), 1e-9),
        # graded samples per status of the task's grader (math: correct, ..., timeout; code: passed, ...)
        **{f"grade_{status}": n for status, n in count_statuses([s.grade_status for s in samples], [cfg.dataset]).items()},
    }
    if cfg.kl_coef > 0:
        metrics["kl"] = stats["kl_sum"] / completion_tokens
    if not run.on_policy:
        metrics["clip_fraction"] = stats["clipped_tokens"] / completion_tokens
    return metrics


def rollout_frame(step: int, samples: list[Sample], selected_column: bool = False) -> pd.DataFrame:
    """One row per generated sample. ``selected_column`` (selectors that generate samples they never
    train: dapo, pods): a ``selected`` column says which ones the selector chose."""
    frame = pd.DataFrame({
        "step": [step] * len(samples),
        "problem_id": [s.problem_id for s in samples],
        "level": [s.level for s in samples],
        "prompt_index": [s.prompt_index for s in samples],
        "sample": [s.sample_index for s in samples],
        "completion": [s.completion.text for s in samples],
        "reward": [s.reward for s in samples],
        "grade_status": [s.grade_status for s in samples],
        "advantage": [s.advantage for s in samples],
        "kept": [s.kept for s in samples],
        "logprob_sum": [float(sum(s.completion.logprobs or [])) for s in samples],
        "tokens": [s.completion.n_tokens for s in samples],
        "truncated": [s.completion.finish_reason == "length" for s in samples],
    })
    if selected_column:
        frame["selected"] = [s.selected for s in samples]
    return frame
