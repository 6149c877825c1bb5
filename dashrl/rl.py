"""The RL loop: DASH (preemptive sampling + gradient filtering), standard GRPO, and PPO variants.

One rollout step, in the paper's order (DASH.md §2-3):

  1) sample      G completions for each of P prompts from the current policy.
                 preemptive: the whole step in ONE engine call (DASH);
                 per_micro_batch: one engine call per micro-batch of whole groups, interleaved
                 with the backward passes (the paper's "standard GRPO").
  2) reward      binary, with the evaluation grader (dashrl.rewards).
  3) advantages  group-normalised (dashrl.advantages).
  4) filter      drop samples with |A| <= tau BEFORE any forward pass, repack the survivors into
                 micro-batches (sorted by length, so little padding is back-propagated).
  5) backward    per micro-batch: sum(weights * token loss).backward(), accumulating gradients.
  6) optimizer   gradients / the step's normaliser, clip, AdamW, lr schedule: ONE step per batch
                 (PPO-Multi repeats 5-6 ppo_epochs times; PPO-Mini splits the batch into
                 optimizer_steps_per_rollout steps).
  7) sync        the engine's copy of the weights.

Data parallel (``torchrun``, ``dashrl.distributed``): W processes each hold the whole model. Each
samples and scores its own contiguous share of the step's P prompts (whole groups), back-propagates
its own kept samples, and before every optimizer step the processes sum their gradients and step
counts: every process divides the same summed gradient by the normaliser of the WHOLE step and
takes the same step, so W processes make the update one process makes on the same samples (up to
float summation order). Rank 0 writes checkpoints, rollouts and metrics of the whole step.

How it departs from the authors' code (a patched TRL GRPOTrainer, DASH.md §5):
  - filtering happens before the forward pass (theirs after it, saving almost nothing);
  - the normaliser is explicit (filter_norm: original keeps tau = 0 lossless; kept = a larger lr);
  - PPO's old log-probs are the behaviour log-probs saved at sampling time; with a single
    optimizer step per batch the ratio is exactly 1 (l_old = stopgrad(l));
  - the loss and the sampler use one distribution (dashrl.sampling), one prompt string,
    and every random choice derives from (seed, step, ...): the data order is a seeded shuffle.

All state is explicit in ``RLRun``; ``train`` adds checkpoints, resume and outputs around
``rl_step``, which is the whole algorithm.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.advantages import group_advantages, keep_mask, zero_variance_fraction
from dashrl.batching import PackedBatch, TreeBatch, get_packing
from dashrl.data import task_of
from dashrl.distributed import SINGLE, World
from dashrl.grading import count_statuses, grade_completions
from dashrl.hardware import resolve_dtype
from dashrl.io import atomic_dir, atomic_file
from dashrl.losses import (
    LossAggregation,
    StepCounts,
    batch_logprobs,
    get_loss_agg,
    kl_k3,
    policy_token_loss,
)
from dashrl.models import file_sha256, load_model, render_prompt
from dashrl.params import GraderParams, PromptParams, RLRunParams
from dashrl.progress import progress
from dashrl.rollout import Completion, HFEngine, RolloutEngine, SamplingConfig, ShardedEngine, derive_seed

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
        return np.random.default_rng(derive_seed(self.seed, 1_000_003, epoch)).permutation(len(self.problems))

    def batch(self, step: int) -> pd.DataFrame:
        n = len(self.problems)
        rows = []
        for i in range(step * self.prompts_per_step, (step + 1) * self.prompts_per_step):
            rows.append(int(self.epoch_order(i // n)[i % n]))
        return self.problems.iloc[rows].reset_index(drop=True)

    def steps_for(self, epochs: float) -> int:
        return max(1, math.ceil(epochs * len(self.problems) / self.prompts_per_step))


# ------------------------------------------------------------------------------------------------
# Samples and micro-batches


@dataclass
class Sample:
    """One completion with everything the update and the rollout log need."""

    problem_id: str
    level: int
    prompt_index: int  # within the step
    sample_index: int  # within the group
    prompt_ids: list[int]
    completion: Completion
    reward: float
    grade_status: str
    advantage: float = 0.0
    kept: bool = True


@dataclass
class MicroBatch(PackedBatch):
    advantages: torch.Tensor  # (B,)


@dataclass
class TreeMicroBatch(TreeBatch):
    advantages: torch.Tensor  # (B,)


def pack(samples: list[Sample], pad_id: int, device: torch.device, packing: str = "padded") -> MicroBatch | TreeMicroBatch:
    """One micro-batch in the ``packing`` layout (``dashrl.batching``), with its advantages."""
    packed = get_packing(packing).pack([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                                       pad_id, device, behaviour_logprobs=[s.completion.logprobs for s in samples])
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=device)  # (B,)
    cls = TreeMicroBatch if isinstance(packed, TreeBatch) else MicroBatch
    return cls(**vars(packed), advantages=advantages)


def micro_batches(samples: list[Sample], size: int, packing: str = "padded") -> list[list[Sample]]:
    """Repack samples into micro-batches of up to ``size``. ``padded``: sorted by length, so rows pad
    little; ``tree``: in prompt order, so a micro-batch holds whole groups that share their prompt."""
    if packing == "tree":
        ordered = sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))
    else:
        ordered = sorted(samples, key=lambda s: (len(s.prompt_ids) + s.completion.n_tokens))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def step_counts(samples: list[Sample], max_new_tokens: int, filter_norm: str) -> StepCounts:
    counted = samples if filter_norm == "original" else [s for s in samples if s.kept]
    return StepCounts(
        sequences=len(counted), tokens=sum(s.completion.n_tokens for s in counted), max_new_tokens=max_new_tokens
    )


# ------------------------------------------------------------------------------------------------
# Run state


@dataclass
class PhaseTimer:
    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start


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

    @property
    def aggregation(self) -> LossAggregation:
        return get_loss_agg(self.cfg.loss_agg)

    @property
    def on_policy(self) -> bool:
        return self.cfg.ppo_epochs == 1 and self.cfg.optimizer_steps_per_rollout == 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.train_dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(self.policy.device.type, dtype=torch.bfloat16)


def sampling_config(cfg: RLRunParams, step: int, unit: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
        seed=derive_seed(cfg.seed, step, unit),
    )


# ------------------------------------------------------------------------------------------------
# The step


@dataclass
class StepOutput:
    metrics: dict[str, Any]
    rollouts: pd.DataFrame


def rl_step(run: RLRun, step: int) -> StepOutput:
    """One rollout step of DASH / GRPO / PPO, top to bottom."""
    cfg, timer = run.cfg, PhaseTimer()
    stats: dict[str, float] = defaultdict(float)
    step_start = time.perf_counter()
    problems = run.schedule.batch(step)  # P rows
    mine = run.world.shard(cfg.prompts_per_step)  # this process's prompts (all P in a single process)

    if cfg.sampling == "preemptive":
        # 1-4) sample the whole step (this process's share) at once, score, filter; the survivors
        # wait in memory. Process r draws from seed (seed, step, r).
        samples = sample_and_score(run, problems.iloc[mine.start : mine.stop], step, unit=run.world.rank, timer=timer,
                                   stats=stats, offset=mine.start)
        # 5-6) backprop in small micro-batches; PPO variants reuse the same samples.
        prompts_per_update = cfg.prompts_per_step // cfg.optimizer_steps_per_rollout
        for _epoch in range(cfg.ppo_epochs):
            for lo in range(0, cfg.prompts_per_step, prompts_per_update):
                update = [s for s in samples if lo <= s.prompt_index < lo + prompts_per_update]
                for batch in micro_batches([s for s in update if s.kept], cfg.micro_batch_size, cfg.packing):
                    with timer("forward_backward"):
                        backward(run, batch, stats)
                with timer("optimizer"):
                    optimizer_step(run, step_counts(update, cfg.max_new_tokens, cfg.filter_norm), stats)
    else:
        # Standard GRPO: generate inside each accumulation micro-step, at the backprop batch size.
        # Units are numbered over the whole step: W processes sample what one process samples.
        samples = []
        prompts_per_micro = cfg.micro_batch_size // cfg.group_size
        for lo in range(mine.start, mine.stop, prompts_per_micro):
            unit = lo // prompts_per_micro
            chunk = sample_and_score(run, problems.iloc[lo : lo + prompts_per_micro], step, unit, timer, stats, offset=lo)
            kept = [s for s in chunk if s.kept]
            if kept:
                with timer("forward_backward"):
                    backward(run, kept, stats)
            samples += chunk
        with timer("optimizer"):
            optimizer_step(run, step_counts(samples, cfg.max_new_tokens, cfg.filter_norm), stats)

    # 7) the engine samples the next step from the updated weights.
    with timer("weight_sync"):
        run.engine.sync_weights(run.policy)

    samples = gather_step(run, samples, stats, timer)  # the whole step, on every process
    metrics = step_metrics(run, step, samples, stats, timer, time.perf_counter() - step_start)
    return StepOutput(metrics=metrics, rollouts=rollout_frame(step, samples))


def sample_and_score(
    run: RLRun, problems: pd.DataFrame, step: int, unit: int, timer: PhaseTimer, stats: dict[str, float], offset: int = 0
) -> list[Sample]:
    """Steps 1-4 for a set of prompts: sample G each, grade, group advantages, keep-mask."""
    cfg, group = run.cfg, run.cfg.group_size
    prompts = [render_prompt(p, run.tokenizer, run.prompt, task_of(source))
               for p, source in zip(problems["prompt"], problems["source"], strict=True)]
    with timer("sampling"):
        completions = run.engine.generate(prompts, group, sampling_config(cfg, step, unit))  # (P, G)
    stats["sampled_tokens"] += run.engine.last_stats.generated_tokens
    with timer("reward"):
        flat = [c for row in completions for c in row]
        references = [a for a in problems["answer"] for _ in range(group)]
        sources = [source for source in problems["source"] for _ in range(group)]
        grades = grade_completions([c.text for c in flat], references, sources, run.grader)
    rewards = torch.tensor([g.reward for g in grades]).view(len(prompts), group)  # (P, G)
    advantages = group_advantages(rewards, cfg.scale_rewards)  # (P, G)
    keep = keep_mask(advantages, cfg.filter_threshold)  # (P, G)
    stats["zero_variance_groups"] += zero_variance_fraction(rewards) * len(prompts)
    samples = []
    for i, (problem, prompt) in enumerate(zip(problems.itertuples(), prompts, strict=True)):
        prompt_ids = run.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for j in range(group):
            g = grades[i * group + j]
            samples.append(Sample(
                problem_id=problem.id, level=int(problem.level), prompt_index=offset + i, sample_index=j,
                prompt_ids=prompt_ids, completion=completions[i][j], reward=g.reward, grade_status=g.status,
                advantage=float(advantages[i, j]), kept=bool(keep[i, j]),
            ))
    return samples


def backward(run: RLRun, samples: list[Sample], stats: dict[str, float]) -> None:
    """Step 5 for one micro-batch: accumulate grad of sum(weights * token loss)."""
    cfg = run.cfg
    run.policy.train()  # the engine may share this module and switch it to eval for sampling
    batch = pack(samples, run.tokenizer.pad_token_id, run.policy.device, cfg.packing)
    with run.autocast():
        logp = batch_logprobs(run.policy, batch, cfg.temperature, cfg.top_k, cfg.top_p).float()  # (B, Tc)
    mask = batch.completion_mask  # (B, Tc)
    old_logp = logp.detach() if run.on_policy else batch.behaviour_logprobs  # (B, Tc)
    token_loss, clipped = policy_token_loss(logp, old_logp, batch.advantages, cfg.clip_low, cfg.clip_high)  # (B, Tc)
    if cfg.kl_coef > 0:
        with torch.no_grad(), run.autocast():
            ref_logp = batch_logprobs(run.reference, batch, cfg.temperature, cfg.top_k, cfg.top_p).float()  # (B, Tc)
        kl = kl_k3(logp, ref_logp)  # (B, Tc)
        token_loss = token_loss + cfg.kl_coef * kl
        stats["kl_sum"] += float((kl.detach() * mask).sum())
    weights = run.aggregation.token_weights(mask)  # (B, Tc)
    loss = (weights * token_loss).sum()
    loss.backward()
    stats["loss_sum"] += float(loss.detach())
    stats["trained_tokens"] += batch.model_tokens  # real tokens through the model (a shared prompt once)
    stats["trained_completion_tokens"] += float(mask.sum())
    stats["clipped_tokens"] += float((clipped & (mask > 0)).sum())
    stats["logprob_gap_sum"] += float(((logp.detach() - batch.behaviour_logprobs).abs() * mask).sum())
    stats["backward_passes"] += 1


def optimizer_step(run: RLRun, counts: StepCounts, stats: dict[str, float]) -> None:
    """Step 6: normalise the accumulated gradient by the whole update's counts, clip, step.

    Data parallel: gradients and counts are first summed over the processes, so every process
    normalises by the counts of the whole update (all processes' sequences and tokens) and takes the
    same step. ``counts`` and the loss in ``stats`` are this process's own.
    """
    params = [p for p in run.policy.parameters() if p.requires_grad]
    run.world.sum_gradients(params)  # None stays None only where no process has a gradient
    counts = run.world.sum_counts(counts)
    normaliser = run.aggregation.normaliser(counts)
    stats["loss"] += stats.pop("loss_sum", 0.0) / max(normaliser, 1)
    stats["updates"] += 1
    if all(p.grad is None for p in params):
        stats["skipped_optimizer_steps"] += 1  # every sample was filtered out: nothing to learn from
        run.optimizer.step()  # a no-op without gradients (AdamW skips them); keeps the schedule in step
        run.scheduler.step()
        return
    for p in params:
        if p.grad is not None:
            p.grad.div_(normaliser)
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    stats["optimizer_steps"] += 1


# Statistics each process sums over its own samples; the others (optimizer_steps, grad_norm, ...) are
# the same on every process. The loss is a per-process sum too: local loss sum / global normaliser.
PER_PROCESS_SUMS = ("sampled_tokens", "zero_variance_groups", "loss", "kl_sum", "trained_tokens",
                    "trained_completion_tokens", "clipped_tokens", "logprob_gap_sum", "backward_passes")
PHASES = ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")


def gather_step(run: RLRun, samples: list[Sample], stats: dict[str, float], timer: PhaseTimer) -> list[Sample]:
    """The whole step's samples (in prompt order) and summed statistics on every process; phase
    times become the slowest process's. A single process keeps its own."""
    stats.update(run.world.sum_floats({key: stats[key] for key in PER_PROCESS_SUMS}))
    timer.seconds.update(run.world.max_floats({phase: timer.seconds[phase] for phase in PHASES}))
    return run.world.gather_objects(samples)


def step_metrics(
    run: RLRun, step: int, samples: list[Sample], stats: dict[str, float], timer: PhaseTimer, wall_s: float
) -> dict[str, Any]:
    cfg = run.cfg
    rewards = np.array([s.reward for s in samples])
    lengths = np.array([s.completion.n_tokens for s in samples])
    kept = [s for s in samples if s.kept]
    kept_tokens = sum(s.completion.n_tokens for s in kept)
    completion_tokens = max(stats["trained_completion_tokens"], 1.0)
    seconds = {f"time_{phase}_s": timer.seconds.get(phase, 0.0)
               for phase in ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")}
    metrics: dict[str, Any] = {
        "step": step,
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "zero_variance_group_fraction": stats["zero_variance_groups"] / cfg.prompts_per_step,
        "samples": len(samples),
        "samples_kept": len(kept),
        "samples_dropped": len(samples) - len(kept),
        "kept_fraction": len(kept) / len(samples),
        "tokens_kept": kept_tokens,
        "tokens_dropped": int(lengths.sum()) - kept_tokens,
        "mean_abs_advantage_kept": float(np.mean([abs(s.advantage) for s in kept])) if kept else 0.0,
        "mean_abs_advantage_all": float(np.mean([abs(s.advantage) for s in samples])),
        "completion_tokens_mean": float(lengths.mean()),
        "completion_tokens_max": int(lengths.max()),
        "truncation_rate": float(np.mean([s.completion.finish_reason == "length" for s in samples])),
        "loss": stats["loss"] / max(stats["updates"], 1),  # mean over the step's optimizer updates
        "grad_norm": stats.get("grad_norm", 0.0),
        "lr": run.scheduler.get_last_lr()[0],
        "optimizer_steps": int(stats["optimizer_steps"]),
        "skipped_optimizer_steps": int(stats["skipped_optimizer_steps"]),
        "backward_passes": int(stats["backward_passes"]),
        "trained_tokens": int(stats["trained_tokens"]),  # real (unpadded) prompt + completion tokens back-propagated
        "logprob_gap_mean": stats["logprob_gap_sum"] / completion_tokens,
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


def rollout_frame(step: int, samples: list[Sample]) -> pd.DataFrame:
    return pd.DataFrame({
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


# ------------------------------------------------------------------------------------------------
# Setup, checkpoints, resume


def make_engine(
    cfg: RLRunParams, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World = SINGLE
) -> RolloutEngine:
    """The rollout engine(s) of one training process.

    ``engine: auto`` picks vLLM when a GPU and vllm are present, HF otherwise (logged). With
    ``rollout_engines`` N > 1, a ``ShardedEngine`` over N engines: engine 0 on the trainer's device,
    engines 1..N-1 on GPUs of their own (``rollout_gpus``; on a CPU machine all share the cores).
    """
    name = cfg.engine
    if name == "auto":
        name = "vllm" if torch.cuda.is_available() and _vllm_available() else "hf"
        log.info("engine: auto -> %s (cuda available: %s, vllm importable: %s)",
                 name, torch.cuda.is_available(), _vllm_available())
    extra_gpus = rollout_gpus(cfg, world)
    if cfg.rollout_engines > 1:
        log.info("rollout_engines %d: engine 0 on %s, the others on %s", cfg.rollout_engines, policy.device,
                 f"GPUs {extra_gpus}" if torch.cuda.is_available() else "the same CPU (no speed-up: they share its cores)")
    if name == "vllm":
        # Pinned engines first: the in-process engine freezes vLLM's environment (dashrl.vllm_engine).
        extra = [_make_vllm_engine(cfg, policy, copy.deepcopy(tokenizer), device_ids=[gpu]) for gpu in extra_gpus]
        engines = [_make_vllm_engine(cfg, policy, tokenizer), *extra]
    else:
        dtype = torch.bfloat16 if cfg.rollout_dtype == "bfloat16" else torch.float32
        devices = [policy.device] + [torch.device("cuda", gpu) if torch.cuda.is_available() else policy.device
                                     for gpu in extra_gpus]
        engines = []
        for k, device in enumerate(devices):
            if k == 0 and dtype == torch.float32 and policy.dtype == torch.float32:
                engine_model = policy  # share weights: syncing is free
            else:
                engine_model = copy.deepcopy(policy).to(device=device, dtype=dtype).requires_grad_(False)
            engines.append(HFEngine(engine_model, tokenizer if k == 0 else copy.deepcopy(tokenizer),
                                    max_batch_rows=cfg.rollout_batch_rows))
    return engines[0] if len(engines) == 1 else ShardedEngine(engines)


def rollout_gpus(cfg: RLRunParams, world: World) -> list[int]:
    """The CUDA device indices of this process's engines 1..N-1 (engine 0 shares the trainer's device).

    The machine's first ``world.local_size`` GPUs train (one per process, engine 0 beside each);
    the next ones hold the other engines, ``rollout_engines - 1`` per process in local-rank order.
    Raises, naming the param, when the machine has too few GPUs. Without CUDA: no GPUs to place
    (the engines share the CPU) and the indices only number the engines.
    """
    n_extra = cfg.rollout_engines - 1
    first = world.local_size + world.local_rank * n_extra
    gpus = list(range(first, first + n_extra))
    if gpus and torch.cuda.is_available() and gpus[-1] >= torch.cuda.device_count():
        raise RuntimeError(
            f"rollout_engines: {cfg.rollout_engines} (params.yaml rl): {world.local_size} training process(es) x "
            f"{cfg.rollout_engines} engines need {world.local_size * cfg.rollout_engines} GPUs on this machine, "
            f"{torch.cuda.device_count()} visible")
    return gpus


def _make_vllm_engine(
    cfg: RLRunParams, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device_ids: list[int] | None = None
) -> RolloutEngine:
    """A vLLM engine holding its own ``rollout_dtype`` copy of the policy, synced in place: colocated
    in this process (``device_ids`` None) or in its own process on ``device_ids``."""
    from dashrl.vllm_engine import VLLMEngine, vllm_device_error

    problem = vllm_device_error()
    if problem:
        raise RuntimeError(f"engine: vllm (params.yaml rl engine) cannot run here: {problem}; use engine: hf or auto")
    log.info("engine: vllm (rollout_dtype %s, vllm_gpu_memory_utilization %s, vllm_tensor_parallel_size %d, "
             "max_num_seqs = rollout_batch_rows %d%s)", cfg.rollout_dtype, cfg.vllm_gpu_memory_utilization,
             cfg.vllm_tensor_parallel_size, cfg.rollout_batch_rows, "" if device_ids is None else f", GPUs {device_ids}")
    return VLLMEngine.from_policy(
        policy, tokenizer, dtype=cfg.rollout_dtype, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size, max_num_seqs=cfg.rollout_batch_rows, seed=cfg.seed,
        device_ids=device_ids,
    )


def _vllm_available() -> bool:
    from dashrl.vllm_engine import vllm_available

    return vllm_available()


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


def run_fingerprint(cfg: RLRunParams, prompt: PromptParams, grader: GraderParams, init_dir: Path, train_file: Path) -> str:
    """What a checkpoint must match to be resumed: params, initial weights and training data."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"rl": asdict(cfg), "prompt": asdict(prompt), "grader": asdict(grader)}, sort_keys=True).encode())
    for weights in sorted(init_dir.glob("*.safetensors")):
        digest.update(file_sha256(weights).encode())
    digest.update(file_sha256(train_file).encode())
    return digest.hexdigest()


def save_checkpoint(run: RLRun, work_dir: Path, step: int, fingerprint: str) -> Path:
    """Weights, optimizer, scheduler and RNG after ``step`` steps, safetensors + JSON, atomically."""
    target = work_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        run.policy.save_pretrained(tmp, safe_serialization=True)
        optimizer_state = run.optimizer.state_dict()
        tensors = {"rng.torch": torch.get_rng_state()}
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"state.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({
            "step": step,
            "fingerprint": fingerprint,
            "param_groups": optimizer_state["param_groups"],
            "scheduler": run.scheduler.state_dict(),
        }, indent=2, default=_json_default))
    checkpoints = sorted((work_dir / "checkpoints").glob("step-*"))
    for old in checkpoints[: -run.cfg.keep_checkpoints]:
        shutil.rmtree(old)
    return target


def _json_default(value: Any) -> Any:
    if callable(value) or value is None:
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def latest_checkpoint(work_dir: Path, fingerprint: str) -> Path | None:
    for path in sorted((work_dir / "checkpoints").glob("step-*"), reverse=True):
        state_file = path / "trainer_state.json"
        if state_file.is_file() and json.loads(state_file.read_text())["fingerprint"] == fingerprint:
            return path
    return None


def restore_checkpoint(run: RLRun, checkpoint: Path) -> int:
    """Load optimizer, scheduler and RNG state (weights were loaded with the policy). Returns the step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    optimizer_state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            optimizer_state[int(index)][name] = value
    run.optimizer.load_state_dict({"state": dict(optimizer_state), "param_groups": state["param_groups"]})
    scheduler_state = state["scheduler"]
    scheduler_state.pop("lr_lambdas", None)
    run.scheduler.load_state_dict({**run.scheduler.state_dict(), **scheduler_state})
    torch.set_rng_state(tensors["rng.torch"])
    return int(state["step"])


# ------------------------------------------------------------------------------------------------
# The run


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
    cfg = resolve_dtypes(cfg, world.device)
    torch.manual_seed(cfg.seed)
    policy = load_model(weights_dir, dtype="float32", device=str(world.device))
    world.broadcast_parameters(policy)
    reference = None
    if cfg.kl_coef > 0:
        reference = load_model(init_dir, dtype="float32", device=str(world.device)).eval().requires_grad_(False)
    schedule = PromptSchedule(problems, cfg.prompts_per_step, cfg.seed)
    total_steps = cfg.steps if cfg.steps is not None else schedule.steps_for(cfg.epochs)
    total_optimizer_steps = total_steps * cfg.ppo_epochs * cfg.optimizer_steps_per_rollout
    # fused: one kernel over all parameters (0.8 -> 0.14 s a step for 135M parameters on 2 CPU cores)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_optimizer_steps))
    return RLRun(cfg=cfg, prompt=prompt, grader=grader, policy=policy, tokenizer=tokenizer,
                 engine=make_engine(cfg, policy, tokenizer, world), optimizer=optimizer, scheduler=scheduler,
                 schedule=schedule, total_steps=total_steps, reference=reference, world=world)


def resolve_dtypes(cfg: RLRunParams, device: torch.device | str) -> RLRunParams:
    """``train_dtype`` / ``rollout_dtype`` ``auto`` resolved for ``device`` (``dashrl.hardware``)."""
    return dataclasses.replace(cfg, train_dtype=resolve_dtype(cfg.train_dtype, device),
                               rollout_dtype=resolve_dtype(cfg.rollout_dtype, device))


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


def train(
    *,
    cfg: RLRunParams,
    prompt: PromptParams,
    grader: GraderParams,
    init_dir: Path,
    tokenizer: PreTrainedTokenizerBase,
    problems: pd.DataFrame,
    train_file: Path,
    work_dir: Path,
    world: World = SINGLE,
    progress_label: str | None = None,
) -> RLRun:
    """Run (or resume) an RL run. ``work_dir`` holds checkpoints, per-step rollouts and metrics.jsonl.

    A run killed at any point and restarted with the same params, initial model and data resumes
    from its newest checkpoint; anything logged after that checkpoint is discarded and redone.
    With several processes (``world``) all of them train; rank 0 alone writes to ``work_dir``.
    """
    cfg = resolve_dtypes(cfg, world.device)  # a checkpoint resumes only in the dtypes it was trained in
    fingerprint = run_fingerprint(cfg, prompt, grader, init_dir, train_file)
    checkpoint = latest_checkpoint(work_dir, fingerprint)
    world.barrier()  # every process has found its checkpoint before rank 0 may clear the directory

    run = build_run(cfg=cfg, prompt=prompt, grader=grader, weights_dir=checkpoint or init_dir, init_dir=init_dir,
                    tokenizer=tokenizer, problems=problems, world=world)
    start_step = restore_checkpoint(run, checkpoint) if checkpoint else 0
    world.check_same(start_step, "the step to resume from (all nodes must see the same work_dir)")
    if world.is_main:
        start_work_dir(work_dir, checkpoint, start_step, run.total_steps)

    bar = progress(desc=progress_label or "rl", total=run.total_steps, initial=start_step, unit="step",
                   disable=not world.is_main)
    with bar:
        for step in range(start_step, run.total_steps):
            out = rl_step(run, step)
            if world.is_main:  # the others hold the same weights and metrics
                record_step(run, work_dir, out, fingerprint)
            m = out.metrics
            bar.set_postfix({"reward": f"{m['reward_mean']:.3f}", "kept": f"{m['kept_fraction']:.2f}",
                             "s/step": f"{m['time_step_s']:.1f}"}, refresh=False)
            bar.update(1)
    return run


def start_work_dir(work_dir: Path, checkpoint: Path | None, start_step: int, total_steps: int) -> None:
    """A fresh ``work_dir`` for a new run; for a resumed one, drop what was logged after its checkpoint."""
    if checkpoint is None and work_dir.exists():
        shutil.rmtree(work_dir)  # another run's state: start clean
    (work_dir / "rollouts").mkdir(parents=True, exist_ok=True)
    truncate_logs(work_dir, start_step)
    if start_step:
        log.info("resuming from %s at step %d of %d", checkpoint, start_step, total_steps)


def record_step(run: RLRun, work_dir: Path, out: StepOutput, fingerprint: str) -> None:
    """Rollouts, a metrics.jsonl line, a log line, and a checkpoint when one is due."""
    step = out.metrics["step"]
    out.rollouts.to_parquet(work_dir / "rollouts" / f"step-{step:06d}.parquet", index=False)
    with (work_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(out.metrics) + "\n")
    m = out.metrics
    log.info("step %d/%d: reward %.3f, kept %d/%d, loss %.4f, %.1f s (sampling %.1f, fwd+bwd %.1f)",
             step + 1, run.total_steps, m["reward_mean"], m["samples_kept"], m["samples"], m["loss"],
             m["time_step_s"], m["time_sampling_s"], m["time_forward_backward_s"])
    done = step + 1
    if done == run.total_steps or (run.cfg.checkpoint_every and done % run.cfg.checkpoint_every == 0):
        save_checkpoint(run, work_dir, done, fingerprint)


def truncate_logs(work_dir: Path, start_step: int) -> None:
    """Drop rollouts and metrics of steps at or after ``start_step`` (redone after a resume)."""
    for path in (work_dir / "rollouts").glob("step-*.parquet"):
        if int(path.stem.split("-")[1]) >= start_step:
            path.unlink()
    metrics_file = work_dir / "metrics.jsonl"
    if metrics_file.exists():
        lines = [line for line in metrics_file.read_text().splitlines() if line and json.loads(line)["step"] < start_step]
        with atomic_file(metrics_file) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))


def read_metrics(work_dir: Path) -> list[dict[str, Any]]:
    path = work_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
