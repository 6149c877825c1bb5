"""The records of an RL step: a prompt's group, a graded sample, a micro-batch, what a step returns.

The loop (``dashrl.rl.loop``) makes them; the selectors (``dashrl.rl.selectors``), the step's
metrics (``dashrl.rl.step_metrics``) and the run log (``dashrl.rl.run_log``) read them. Kept apart
from the loop so that those modules depend on the records only, never on the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from dashrl.algo.batching import PackedBatch, TreeBatch
from dashrl.engines.base import Completion
from dashrl.grading.math_grader import Grade


@dataclass
class Group:
    """One prompt's sampled completions and their grades, as the selector sees them."""

    problem_id: str
    level: int
    prompt_ids: list[int]
    completions: list[Completion]  # n
    grades: list[Grade]  # theirs (.reward, .status)
    rewards: torch.Tensor  # (n,)
    chosen: list[int] = field(default_factory=list)  # completions trained (sample indices; all n unless pods)
    trained: bool = True  # False: generated, not trained (dapo: zero-variance or surplus groups)

    def __post_init__(self) -> None:
        if not self.chosen:
            self.chosen = list(range(len(self.completions)))

    @property
    def zero_variance(self) -> bool:
        """All n rewards equal: every advantage is 0, no policy gradient."""
        return bool(self.rewards.max() == self.rewards.min())


@dataclass
class Sample:
    """One completion with everything the update and the rollout log need."""

    problem_id: str
    level: int
    prompt_index: int  # within the step (from P on: a group the selector generated and did not train)
    sample_index: int  # within the group
    prompt_ids: list[int]
    completion: Completion
    reward: float
    grade_status: str
    advantage: float = 0.0
    kept: bool = True  # goes into the backward pass (selected, and |A| > tau)
    selected: bool = True  # False: generated, not trained (the selector's choice, before the advantages)
    masked: bool = False  # mask_truncated: cut at max_new_tokens, never trained nor counted by the normaliser
    # (n_tokens,) off-policy runs, during the step's updates: the trainer's log-probs before the first one
    old_logprobs: torch.Tensor | None = field(default=None, repr=False, compare=False)


@dataclass
class StepOutput:
    metrics: dict[str, Any]
    rollouts: pd.DataFrame


@dataclass
class MicroBatch(PackedBatch):
    advantages: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor | None = None  # (B, Tc) off-policy runs (0 at padding)


@dataclass
class TreeMicroBatch(TreeBatch):
    advantages: torch.Tensor  # (B,)
    old_logprobs: torch.Tensor | None = None  # (B, Tc) off-policy runs (0 at padding)
