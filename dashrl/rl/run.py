"""The state of an RL run and how it is built: which prompts each step sees, the policy, the
frozen reference, the optimizer and its schedule, the rollout engine, the sample selector's state.

``dashrl.rl.loop`` is the algorithm (one step, and the loop over steps); everything it touches is the
``RLRun`` built here, passed explicitly. ``build_run`` is where a run's configuration turns into
objects: dtypes resolved for the device (``dashrl.infra.hardware``), the processes checked
(``dashrl.infra.distributed``), the engine chosen (``dashrl.engines.factory``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.algo.losses import LogprobModel, LossAggregation, check_tree_packing, get_loss_agg
from dashrl.config.params import GraderParams, PromptParams, RLRunParams
from dashrl.engines.base import RolloutEngine
from dashrl.engines.factory import auto_engine, make_engine
from dashrl.infra.distributed import SINGLE, World, is_sharded, shard_model
from dashrl.infra.hardware import resolve_dtype
from dashrl.infra.seeds import PROMPT_ORDER_SALT, derive_seed
from dashrl.models import enable_activation_checkpointing, load_model
from dashrl.rl.selectors import Selector, get_selector

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# Data: which prompts each step sees


class PromptSchedule:
    """Step s takes prompts s*P .. s*P + P - 1 of an endless sequence of seeded epoch shuffles.

    The position is a function of the step, so resuming at step s restores it exactly.
    """

    def __init__(self, problems: pd.DataFrame, prompts_per_step: int, seed: int):
        if problems.empty:
            raise ValueError("no training problems (check rl dataset and train_levels)")
        self.problems = problems.reset_index(drop=True)
        self.prompts_per_step = prompts_per_step
        self.seed = seed

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(derive_seed(self.seed, PROMPT_ORDER_SALT, epoch)).permutation(len(self.problems))

    def batch(self, step: int) -> pd.DataFrame:
        n = len(self.problems)
        rows = []
        for i in range(step * self.prompts_per_step, (step + 1) * self.prompts_per_step):
            rows.append(int(self.epoch_order(i // n)[i % n]))
        return self.problems.iloc[rows].reset_index(drop=True)

    def steps_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * len(self.problems) / self.prompts_per_step))


# ------------------------------------------------------------------------------------------------
# Run state


@dataclass
class RLRun:
    """Everything the loop touches, passed explicitly."""

    cfg: RLRunParams
    prompt: PromptParams
    grader: GraderParams
    policy: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    engine: RolloutEngine
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    schedule: PromptSchedule
    total_steps: int
    reference: PreTrainedModel | None = None
    world: World = SINGLE  # the processes training this model together (one by default)
    # What the selector has learnt so far (greso: each prompt's zero-variance history); plain JSON
    # values, kept by checkpoints (dashrl.rl.checkpoints), the same on every process.
    selector_state: dict[str, Any] = field(default_factory=dict)
    # The module the loss calls for the policy's log-probs: the policy wrapped by LogprobModel (under
    # FSDP the sharded root). Built from ``policy`` when not given.
    trainer: LogprobModel | None = None

    def __post_init__(self) -> None:
        if self.trainer is None:
            self.trainer = LogprobModel(self.policy)

    @property
    def sharded(self) -> bool:
        """The policy is sharded over the processes (parallel: fsdp), not replicated."""
        return is_sharded(self.trainer)

    @property
    def aggregation(self) -> LossAggregation:
        return get_loss_agg(self.cfg.loss_agg)

    @property
    def selector(self) -> Selector:
        return get_selector(self.cfg.selector)

    @property
    def tis_cap(self) -> float | None:
        """The truncated-IS cap this run applies (None: off): ``tis_cap: auto`` resolved here too, so
        a run built by hand (a benchmark, a test) with an unresolved config gets what ``train`` gives."""
        return resolve_tis_cap(resolve_dtypes(self.cfg, self.policy.device), self.world).tis_cap

    @property
    def on_policy(self) -> bool:
        return self.cfg.ppo_epochs == 1 and self.cfg.optimizer_steps_per_rollout == 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.policy.device.type, dtype=torch.bfloat16)


# ------------------------------------------------------------------------------------------------
# Setup


def build_run(
    *,
    cfg: RLRunParams,
    prompt: PromptParams,
    grader: GraderParams,
    weights_dir: Path,
    init_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    problems: pd.DataFrame,
    world: World = SINGLE,
) -> RLRun:
    """Policy (from ``weights_dir``), optional frozen reference (``init_dir``), optimizer, schedule, engine.

    With several processes every one builds the same run on its own device; rank 0's weights are
    broadcast so that all start from the same parameters.
    """
    check_world(cfg, world)
    cfg = resolve_tis_cap(resolve_dtypes(cfg, world.device), world)
    torch.manual_seed(cfg.seed)
    policy = load_model(weights_dir, dtype="float32", device=str(world.device))
    world.broadcast_parameters(policy)
    if cfg.packing == "tree":
        check_tree_packing(policy)
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(policy)
    sharded = cfg.parallel == "fsdp" and world.is_distributed
    # The engine's copy is made before sharding (a sharded policy cannot decode alone on one rank).
    engine = make_engine(cfg, policy, tokenizer, world, share_policy=not sharded)
    trainer = LogprobModel(policy)
    if sharded:
        # bf16 compute on GPU (fp32 shards, fp32 reduction); on CPU the dtype train_dtype's autocast gives.
        compute = torch.bfloat16 if cfg.train_dtype == "bfloat16" and world.device.type == "cuda" else None
        shard_model(trainer, policy.get_decoder().layers, compute)
    reference = None
    if cfg.kl_coef > 0:
        reference = load_model(init_dir, dtype="float32", device=str(world.device)).eval().requires_grad_(False)
    schedule = PromptSchedule(problems, cfg.prompts_per_step, cfg.seed)
    total_steps = cfg.steps if cfg.steps is not None else schedule.steps_for(cfg.epochs)
    total_optimizer_steps = total_steps * cfg.ppo_epochs * cfg.optimizer_steps_per_rollout
    # fused: one kernel over all parameters (0.8 -> 0.14 s a step for 135M parameters on 2 CPU cores)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=not sharded)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_optimizer_steps))
    return RLRun(cfg=cfg, prompt=prompt, grader=grader, policy=policy, tokenizer=tokenizer,
                 engine=engine, optimizer=optimizer, scheduler=scheduler,
                 schedule=schedule, total_steps=total_steps, reference=reference, world=world, trainer=trainer)


def lr_lambda(cfg: RLRunParams, total_optimizer_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_optimizer_steps - cfg.warmup_steps))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def resolve_dtypes(cfg: RLRunParams, device: torch.device | str) -> RLRunParams:
    """``train_dtype`` / ``rollout_dtype`` ``auto`` resolved for ``device`` (``dashrl.infra.hardware``)."""
    return dataclasses.replace(cfg, train_dtype=resolve_dtype(cfg.train_dtype, device),
                               rollout_dtype=resolve_dtype(cfg.rollout_dtype, device))


# tis_cap: auto's cap where the engine's log-probs can differ from the trainer's (Yao et al. 2025's C = 2).
TIS_AUTO_CAP = 2.0


def resolve_tis_cap(cfg: RLRunParams, world: World) -> RLRunParams:
    """``tis_cap: auto`` resolved (``cfg``'s dtypes resolved first): ``TIS_AUTO_CAP`` unless the engine
    samples with the trainer's own numerics (the HF engine, fp32 training and rollout: the same module
    or an fp32 copy of it), where the weights are 1 up to summation order and correct nothing.
    0 becomes None (off). Idempotent."""
    cap = cfg.tis_cap
    if cap == "auto":
        sharded = cfg.parallel == "fsdp" and world.is_distributed
        engine = auto_engine(torch.cuda.is_available(), not sharded) if cfg.engine == "auto" else cfg.engine
        same_numerics = engine == "hf" and cfg.train_dtype == cfg.rollout_dtype == "float32"
        cap = None if same_numerics else TIS_AUTO_CAP
    return dataclasses.replace(cfg, tis_cap=cap or None)


def check_world(cfg: RLRunParams, world: World) -> None:
    """What splitting a step over ``world.size`` processes needs; errors name the param and the value."""
    p, w = cfg.prompts_per_step, world.size
    if p % w:
        raise ValueError(f"prompts_per_step: {p}: not a multiple of the {w} processes (WORLD_SIZE): "
                         f"each process samples whole groups of an equal share of the step's prompts")
    prompts_per_micro = cfg.micro_batch_size // cfg.group_size
    if cfg.sampling == "per_micro_batch" and (p // w) % prompts_per_micro:
        raise ValueError(f"micro_batch_size: {cfg.micro_batch_size}: sampling: per_micro_batch over {w} processes needs "
                         f"each process's {p // w} prompts (prompts_per_step / WORLD_SIZE) to be a multiple of "
                         f"micro_batch_size / group_size = {prompts_per_micro}")
    if w > 1 and cfg.optimizer_steps_per_rollout > 1:
        log.warning("optimizer_steps_per_rollout %d over %d processes: each update's prompts lie on a few processes "
                    "(contiguous shares), the others wait for it", cfg.optimizer_steps_per_rollout, w)
