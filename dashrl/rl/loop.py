"""The RL loop: DASH (preemptive sampling + gradient filtering), standard GRPO, and PPO variants.

One rollout step, in the paper's order (docs/algorithm.md §2-3), and in this file's:

  0) prompts     the step's P prompts from the seeded schedule (a selector may skip some before
                 rollout and refill them: greso; docs/algorithm.md §6).
  1) sample      G completions for each of P prompts from the current policy (pods: more).
                 preemptive: the whole step in ONE engine call (DASH);
                 per_micro_batch: one engine call per micro-batch of whole groups, interleaved
                 with the backward passes (the paper's "standard GRPO").
  2) reward      binary, with the evaluation grader (dashrl.grading.tasks); then the selector chooses
                 what is trained (none: everything; dapo: informative groups, sampling more
                 prompts for the missing ones; pods: the max-variance G of each group).
  3) advantages  group-normalised over what is trained (dashrl.algo.advantages).
  4) filter      drop samples with |A| <= tau BEFORE any forward pass, repack the survivors into
                 micro-batches (packing padded: sorted by length, so little padding is
                 back-propagated; tree: a group stays together, its prompt through the model once).
  5) backward    per micro-batch: sum(weights * token loss).backward(), accumulating gradients.
  6) optimizer   gradients / the step's normaliser, clip, AdamW, lr schedule: ONE step per batch
                 (PPO-Multi repeats 5-6 ppo_epochs times; PPO-Mini splits the batch into
                 optimizer_steps_per_rollout steps).
  7) sync        the engine's copy of the weights.
  8) observe     the selector learns from the step (greso: each prompt's zero-variance history).

Data parallel (``torchrun``, ``dashrl.infra.distributed``): W processes each hold the whole model. Each
samples and scores its own contiguous share of the step's P prompts (whole groups), back-propagates
its own kept samples, and before every optimizer step the processes sum their gradients and step
counts: every process divides the same summed gradient by the normaliser of the WHOLE step and
takes the same step, so W processes make the update one process makes on the same samples (up to
float summation order). Rank 0 writes checkpoints, rollouts and metrics of the whole step.

How it departs from the authors' code (a patched TRL GRPOTrainer, docs/algorithm.md §5):
  - filtering happens before the forward pass (theirs after it, saving almost nothing);
  - the normaliser is explicit (filter_norm: original keeps tau = 0 lossless; kept = a larger lr);
  - with a single optimizer step per batch the ratio is exactly 1 (l_old = stopgrad(l)); with
    reuse (PPO) the old log-probs are recomputed by the trainer's own forward before the first
    update, so the ratio starts at exactly 1 for the trainer's numerics (the engine's may differ:
    a bf16 copy, another kernel); the engine-vs-trainer gap is logged (logprob_gap_mean), and the
    surrogate has a dual clip for negative advantages (dual_clip);
  - the KL reference's log-probs use the temperature alone (no top-k / top-p): a sampled token is
    never outside its support;
  - the loss and the sampler use one distribution (dashrl.algo.sampling), one prompt string,
    and every random choice derives from (seed, step, ...): the data order is a seeded shuffle.

All state is explicit in ``RLRun``; ``rl_step`` is the whole algorithm, and ``train`` runs it step
after step. What is not the algorithm lives beside it: ``dashrl.rl.run`` (the run's state and how it
is built: prompt schedule, models, optimizer), ``dashrl.rl.samples`` (the records a step makes:
groups, samples, micro-batches, its output), ``dashrl.engines.factory`` (which rollout engine samples,
on which device), ``dashrl.rl.checkpoints`` (save and resume), ``dashrl.rl.run_log`` (metrics.jsonl and
the rollout files), ``dashrl.rl.step_metrics`` (what each step reports) and ``dashrl.rl.selectors`` (the
registered sample selectors, called at 0, 1, 2 and 8).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from dashrl.algo.advantages import group_advantages, keep_mask, zero_variance_fraction
from dashrl.algo.batching import TreeBatch, get_packing
from dashrl.algo.losses import (
    StepCounts,
    batch_logprobs,
    kl_k3,
    policy_token_loss,
    truncated_is_weights,
)
from dashrl.config.params import GraderParams, PromptParams, RLRunParams
from dashrl.data.loaders import task_of
from dashrl.engines.base import SamplingConfig
from dashrl.grading.tasks import grade_completions
from dashrl.infra.distributed import SINGLE, World, full_tensor
from dashrl.infra.progress import progress
from dashrl.infra.seeds import derive_seed
from dashrl.models import eval_mode, render_prompt
from dashrl.rl.checkpoints import latest_checkpoint, restore_checkpoint, run_fingerprint, save_checkpoint
from dashrl.rl.run import RLRun, build_run, resolve_dtypes, resolve_tis_cap
from dashrl.rl.run_log import record_step, start_work_dir
from dashrl.rl.samples import Group, MicroBatch, Sample, StepOutput, TreeMicroBatch
from dashrl.rl.step_metrics import PhaseTimer, gather_step, rollout_frame, step_metrics

if TYPE_CHECKING:
    from dashrl.infra.tracking import Tracker

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------
# The step


def rl_step(run: RLRun, step: int) -> StepOutput:
    """One rollout step of DASH / GRPO / PPO, top to bottom."""
    cfg, timer, selector = run.cfg, PhaseTimer(), run.selector
    stats: dict[str, float] = defaultdict(float)
    step_start = time.perf_counter()
    # 0) the step's P prompts: the schedule's, less those the selector skips before rollout (refilled).
    problems = selector.prompts(run, step, run.schedule.batch(step), stats)  # P rows
    mine = run.world.shard(cfg.prompts_per_step)  # this process's prompts (all P in a single process)

    if cfg.sampling == "preemptive":
        # 1-2) sample the whole step (this process's share) at once and grade it: G completions per
        # prompt, or the selector's number. Process r draws from seed (seed, step, r); a selector's
        # extra round k from (seed, step, k * W + r).
        def rollout(rows: pd.DataFrame, round_: int) -> list[Group]:
            unit = round_ * run.world.size + run.world.rank
            return sample_groups(run, rows, step, unit, timer, stats, draws=selector.draws(cfg))

        groups = rollout(problems.iloc[mine.start : mine.stop], 0)
        # 2b) the selector chooses what is trained: whole groups, or completions within each.
        groups = selector.select(run, step, groups, rollout, stats)
        # 3-4) advantages over what is trained, keep mask; the survivors wait in memory.
        samples = score_groups(run, groups, offset=mine.start)
        # 5-6) backprop in small micro-batches; PPO variants reuse the same samples.
        prompts_per_update = cfg.prompts_per_step // cfg.optimizer_steps_per_rollout
        updates = [[s for s in samples if lo <= s.prompt_index < lo + prompts_per_update]
                   for lo in range(0, cfg.prompts_per_step, prompts_per_update)]
        if not run.on_policy:
            # PPO: the old log-probs, from the trainer's own forward before the first update, in
            # the micro-batches the first pass uses (its ratio is then exactly 1).
            check_behaviour_logprobs([s for s in samples if s.kept])
            for update in updates:
                for batch in aligned(run, micro_batches([s for s in update if s.kept], cfg.micro_batch_size, cfg.packing)):
                    with timer("forward_backward"):
                        recompute_old_logprobs(run, batch, stats)
        kl_scales = [kl_scale(run, update) for update in updates]  # 1 unless kl_norm: kept
        for _epoch in range(cfg.ppo_epochs):
            for update, scale in zip(updates, kl_scales, strict=True):
                for batch in aligned(run, micro_batches([s for s in update if s.kept], cfg.micro_batch_size, cfg.packing)):
                    with timer("forward_backward"):
                        backward(run, batch, stats, scale)
                with timer("optimizer"):
                    optimizer_step(run, step_counts(update, cfg.max_new_tokens, cfg.filter_norm), stats,
                                   trained=any(s.kept for s in update))
        for s in samples:
            s.old_logprobs = None  # used up (and not gathered with the samples)
    else:
        # Standard GRPO: generate inside each accumulation micro-step, at the backprop batch size.
        # Units are numbered over the whole step: W processes sample what one process samples.
        samples = []
        prompts_per_micro = cfg.micro_batch_size // cfg.group_size
        for lo in range(mine.start, mine.stop, prompts_per_micro):
            unit = lo // prompts_per_micro
            chunk = sample_and_score(run, problems.iloc[lo : lo + prompts_per_micro], step, unit, timer, stats, offset=lo)
            kept = [s for s in chunk if s.kept]
            if kept or run.sharded:  # sharded: every rank runs every pass (an empty one where nothing is kept)
                with timer("forward_backward"):
                    backward(run, kept or None, stats)
            samples += chunk
        with timer("optimizer"):
            optimizer_step(run, step_counts(samples, cfg.max_new_tokens, cfg.filter_norm), stats,
                           trained=any(s.kept for s in samples))

    # 7) the engine samples the next step from the updated weights.
    with timer("weight_sync"):
        run.engine.sync_weights(run.policy)

    samples = gather_step(run, samples, stats, timer)  # the whole step, on every process
    # 8) what the selector learns from the step (the same on every process).
    selector.observe(run, step, samples)
    metrics = step_metrics(run, step, samples, stats, timer, time.perf_counter() - step_start)
    return StepOutput(metrics=metrics, rollouts=rollout_frame(step, samples, selected_column=selector.drops_samples))


# ------------------------------------------------------------------------------------------------
# 1-4) sample, reward, advantages, keep mask


def sampling_config(cfg: RLRunParams, step: int, unit: int) -> SamplingConfig:
    return SamplingConfig(
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_new_tokens,
        seed=derive_seed(cfg.seed, step, unit),
    )


def sample_and_score(
    run: RLRun, problems: pd.DataFrame, step: int, unit: int, timer: PhaseTimer, stats: dict[str, float], offset: int = 0
) -> list[Sample]:
    """Steps 1-4 for a set of prompts: sample G each, grade, group advantages, keep-mask."""
    return score_groups(run, sample_groups(run, problems, step, unit, timer, stats), offset)


def sample_groups(
    run: RLRun, problems: pd.DataFrame, step: int, unit: int, timer: PhaseTimer, stats: dict[str, float],
    draws: int | None = None,
) -> list[Group]:
    """Steps 1-2 for a set of prompts: sample ``draws`` completions each (G by default) in one engine
    call, seeded by (seed, step, unit), and grade them."""
    cfg, n = run.cfg, draws or run.cfg.group_size
    prompts = [render_prompt(p, run.tokenizer, run.prompt, task_of(source))
               for p, source in zip(problems["prompt"], problems["source"], strict=True)]
    with timer("sampling"):
        completions = run.engine.generate(prompts, n, sampling_config(cfg, step, unit))  # (P, n)
    stats["sampled_tokens"] += run.engine.last_stats.generated_tokens
    with timer("reward"):
        flat = [c for row in completions for c in row]
        references = [a for a in problems["answer"] for _ in range(n)]
        sources = [source for source in problems["source"] for _ in range(n)]
        grades = grade_completions([c.text for c in flat], references, sources, run.grader)
    rewards = torch.tensor([g.reward for g in grades]).view(len(prompts), n)  # (P, n)
    stats["zero_variance_groups"] += zero_variance_fraction(rewards) * len(prompts)
    stats["groups_generated"] += len(prompts)
    return [Group(problem_id=problem.id, level=int(problem.level),
                  prompt_ids=run.tokenizer(prompt, add_special_tokens=False)["input_ids"], completions=completions[i],
                  grades=grades[i * n : (i + 1) * n], rewards=rewards[i])
            for i, (problem, prompt) in enumerate(zip(problems.itertuples(), prompts, strict=True))]


def score_groups(run: RLRun, groups: list[Group], offset: int = 0) -> list[Sample]:
    """Steps 3-4: group advantages over the completions each trained group keeps (``chosen``), the
    keep-mask; one Sample per generated completion, the others marked not selected.

    ``mask_truncated``: a completion cut at max_new_tokens keeps its reward in its group's advantage
    statistics but is never trained and not counted by the normaliser (``masked``), as if the loss
    had not seen it (DAPO's overlong filtering).

    Trained groups are numbered ``offset``, ``offset + 1``, ... in order; groups generated and not
    trained get prompt indices from P on (outside every update's range)."""
    cfg = run.cfg
    trained = [g for g in groups if g.trained]
    chosen = (torch.stack([g.rewards[g.chosen] for g in trained]) if trained
              else torch.zeros(0, cfg.group_size))  # (T, m)
    advantages = group_advantages(chosen, cfg.scale_rewards)  # (T, m)
    keep = keep_mask(advantages, cfg.filter_threshold)  # (T, m)
    samples: list[Sample] = []
    n_trained = n_untrained = 0
    for g in groups:
        if g.trained:
            row, index = n_trained, offset + n_trained
            column = {j: k for k, j in enumerate(g.chosen)}  # sample index -> its column in advantages
            n_trained += 1
        else:
            row, index, column = -1, cfg.prompts_per_step + run.world.rank + n_untrained * run.world.size, {}
            n_untrained += 1
        for j, (completion, grade) in enumerate(zip(g.completions, g.grades, strict=True)):
            k = column.get(j)
            masked = k is not None and cfg.mask_truncated and completion.finish_reason == "length"
            samples.append(Sample(
                problem_id=g.problem_id, level=g.level, prompt_index=index, sample_index=j, prompt_ids=g.prompt_ids,
                completion=completion, reward=grade.reward, grade_status=grade.status,
                advantage=0.0 if k is None else float(advantages[row, k]),
                kept=False if k is None else bool(keep[row, k]) and not masked, selected=k is not None, masked=masked,
            ))
    return samples


# ------------------------------------------------------------------------------------------------
# 4-5) the kept samples, repacked into micro-batches


def micro_batches(samples: list[Sample], size: int, packing: str = "padded") -> list[list[Sample]]:
    """Repack samples into micro-batches of up to ``size``. ``padded``: sorted by length, so rows pad
    little; ``tree``: in prompt order, so a micro-batch holds whole groups that share their prompt."""
    if packing == "tree":
        ordered = sorted(samples, key=lambda s: (s.prompt_index, s.sample_index))
    else:
        ordered = sorted(samples, key=lambda s: (len(s.prompt_ids) + s.completion.n_tokens))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def aligned(run: RLRun, batches: list[list[Sample]]) -> list[list[Sample] | None]:
    """The micro-batches of this process, padded with empty passes (None) to the largest count over
    the processes when the policy is sharded: each forward and backward of a sharded model is a
    collective, while gradient filtering leaves the ranks different numbers of kept samples."""
    if not run.sharded:
        return batches  # type: ignore[return-value]
    return batches + [None] * (run.world.max_int(len(batches)) - len(batches))


def empty_pass(run: RLRun, grad: bool) -> None:
    """A forward (and backward) of one token with a zero loss: the sharded model's collectives run,
    every gradient it adds is 0. Padding for a rank with fewer micro-batches than the others."""
    pad = run.tokenizer.pad_token_id
    batch = get_packing("padded").pack([[pad]], [[pad]], pad, run.policy.device)
    with torch.set_grad_enabled(grad), run.autocast():
        eval_mode(run.policy)
        logp = run.trainer(batch, run.cfg.temperature).float()  # (1, 1)
    if grad:
        (logp.sum() * 0.0).backward()


def pack(samples: list[Sample], pad_id: int, device: torch.device, packing: str = "padded") -> MicroBatch | TreeMicroBatch:
    """One micro-batch in the ``packing`` layout (``dashrl.algo.batching``), with its advantages (and the
    old log-probs, where every sample has them)."""
    packed = get_packing(packing).pack([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                                       pad_id, device, behaviour_logprobs=[s.completion.logprobs for s in samples])
    advantages = torch.tensor([s.advantage for s in samples], dtype=torch.float32, device=device)  # (B,)
    old_logprobs = None
    if all(s.old_logprobs is not None for s in samples):
        old_logprobs = torch.zeros(packed.completion_ids.shape, dtype=torch.float32, device=device)  # (B, Tc)
        for i, s in enumerate(samples):
            old_logprobs[i, : s.completion.n_tokens] = s.old_logprobs
    cls = TreeMicroBatch if isinstance(packed, TreeBatch) else MicroBatch
    return cls(**vars(packed), advantages=advantages, old_logprobs=old_logprobs)


# ------------------------------------------------------------------------------------------------
# 5) backward


def check_behaviour_logprobs(samples: list[Sample], why: str = "an off-policy update (ppo_epochs or "
                             "optimizer_steps_per_rollout > 1)") -> None:
    """An off-policy update (or truncated IS) needs every sample's behaviour log-probs: a missing
    one is the engine's bug, never a silent 0."""
    for s in samples:
        given = s.completion.logprobs
        if given is None or len(given) != s.completion.n_tokens:
            have = "no" if given is None else f"{len(given)} (for {s.completion.n_tokens} tokens)"
            raise ValueError(f"problem {s.problem_id!r} (prompt {s.prompt_index}, sample {s.sample_index}): the rollout "
                             f"engine returned {have} behaviour log-probs; {why} needs one per token")


def policy_logprobs(run: RLRun, batch: MicroBatch | TreeMicroBatch,
                    with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The policy's completion log-probs (B, Tc) under the sampling distribution, float32, 0 at padding
    (``with_entropy``: and the distribution's entropy per token (B, Tc), no gradient).

    Eval mode: no dropout (train mode enables nothing else in these models, except activation
    checkpointing, which ``eval_mode`` keeps), gradients still flow; the engine may share this module. No KV cache (``dashrl.algo.losses``)."""
    cfg = run.cfg
    eval_mode(run.policy)  # checkpointing (where enabled) stays on
    with run.autocast():
        if not with_entropy:
            return run.trainer(batch, cfg.temperature, cfg.top_k, cfg.top_p).float()  # (B, Tc)
        logp, entropy = run.trainer(batch, cfg.temperature, cfg.top_k, cfg.top_p, with_entropy=True)  # (B, Tc) x 2
        return logp.float(), entropy.float()


def record_logprob_gap(samples: list[Sample], batch: MicroBatch | TreeMicroBatch, trainer_logp: torch.Tensor,
                       stats: dict[str, float], tis_cap: float | None) -> None:
    """The engine-vs-trainer mismatch at the weights that sampled (metrics): the log-prob gap
    |l_behaviour - l_trainer|, and the error of the update's importance weight per token,
    uncorrected |rho - 1| (the weight 1 an uncorrected update uses) and corrected |rho - w| with
    w = min(rho, tis_cap) (what truncation leaves; = uncorrected when TIS is off)."""
    has = torch.tensor([s.completion.logprobs is not None for s in samples], device=trainer_logp.device)  # (B,)
    counted = has[:, None] & (batch.completion_mask > 0)  # (B, Tc)
    gap = torch.where(counted, (trainer_logp.detach() - batch.behaviour_logprobs).abs(), 0.0)  # (B, Tc)
    stats["logprob_gap_sum"] += float(gap.sum())
    stats["logprob_gap_tokens"] += float(counted.sum())
    rho = truncated_is_weights(trainer_logp.detach(), batch.behaviour_logprobs, None)  # (B, Tc) untruncated
    weight = rho.clamp(max=tis_cap) if tis_cap else torch.ones_like(rho)  # (B, Tc): the weights the update uses
    stats["tis_gap_uncorrected_sum"] += float(torch.where(counted, (rho - 1).abs(), 0.0).sum())
    stats["tis_gap_corrected_sum"] += float(torch.where(counted, (rho - weight).abs(), 0.0).sum())
    stats["tis_weight_sum"] += float(torch.where(counted, weight, 0.0).sum())
    stats["tis_truncated_tokens"] += float((counted & (rho > weight)).sum())


def recompute_old_logprobs(run: RLRun, samples: list[Sample] | None, stats: dict[str, float]) -> None:
    """Off-policy runs, before the first update: each sample's old log-probs from the trainer's own
    forward (no grad), the same forward the loss then runs, so the first pass's ratio is exactly 1.
    ``None``: an empty pass (a sharded policy, ``aligned``)."""
    if samples is None:
        empty_pass(run, grad=False)
        return
    batch = pack(samples, run.tokenizer.pad_token_id, run.policy.device, run.cfg.packing)
    with torch.no_grad():
        logp = policy_logprobs(run, batch)  # (B, Tc)
    for i, s in enumerate(samples):
        s.old_logprobs = logp[i, : s.completion.n_tokens].clone()
    record_logprob_gap(samples, batch, logp, stats, run.tis_cap)


def backward(run: RLRun, samples: list[Sample] | None, stats: dict[str, float], kl_scale: float = 1.0) -> None:
    """Step 5 for one micro-batch: accumulate grad of sum(weights * token loss). ``None``: an empty
    pass (a sharded policy, ``aligned``). ``kl_scale``: the KL term's factor (``kl_norm``)."""
    if samples is None:
        empty_pass(run, grad=True)
        return
    cfg = run.cfg
    batch = pack(samples, run.tokenizer.pad_token_id, run.policy.device, cfg.packing)
    logp, entropy = policy_logprobs(run, batch, with_entropy=True)  # (B, Tc), (B, Tc)
    mask = batch.completion_mask > 0  # (B, Tc)
    if run.on_policy:
        old_logp = logp.detach()  # (B, Tc)
        record_logprob_gap(samples, batch, logp, stats, run.tis_cap)
    elif batch.old_logprobs is None:
        raise RuntimeError("an off-policy update needs the old log-probs: recompute_old_logprobs before the first update")
    else:
        old_logp = batch.old_logprobs  # (B, Tc)
    token_loss, clipped = policy_token_loss(logp, old_logp, batch.advantages, cfg.clip_low, cfg.clip_high,
                                            cfg.dual_clip)  # (B, Tc)
    if (tis_cap := run.tis_cap) is not None:
        # Truncated IS: the engine sampled, the trainer's policy at those weights (old_logp) is the one
        # the surrogate assumes; each token's policy term is reweighted by min(pi_old / pi_engine, cap).
        check_behaviour_logprobs(samples, why="tis_cap (truncated importance sampling)")
        token_loss = truncated_is_weights(old_logp, batch.behaviour_logprobs, tis_cap) * token_loss  # (B, Tc)
    stats["entropy_sum"] += float(torch.where(mask, entropy, 0.0).sum())
    if cfg.kl_coef > 0:
        with torch.no_grad(), run.autocast():
            # The reference under the temperature alone: every sampled token has a finite log-prob.
            ref_logp = batch_logprobs(run.reference, batch, cfg.temperature).float()  # (B, Tc)
        kl = kl_k3(logp, ref_logp, mask)  # (B, Tc), 0 off the mask
        token_loss = token_loss + (cfg.kl_coef * kl_scale) * kl
        stats["kl_sum"] += float(kl.detach().sum())
    weights = run.aggregation.token_weights(batch.completion_mask)  # (B, Tc)
    loss = torch.where(mask, weights * token_loss, 0.0).sum()
    loss.backward()
    stats["loss_sum"] += float(loss.detach())
    stats["trained_tokens"] += batch.model_tokens  # real tokens through the model (a shared prompt once)
    stats["trained_completion_tokens"] += float(mask.sum())
    stats["clipped_tokens"] += float((clipped & mask).sum())
    stats["backward_passes"] += 1
    stats["backpropagated_samples"] += len(samples)


# ------------------------------------------------------------------------------------------------
# 6) optimizer step (7, the weight sync, is one call in rl_step)


def step_counts(samples: list[Sample], max_new_tokens: int, filter_norm: str) -> StepCounts:
    """What the normaliser counts: every selected sample (original), or the kept ones (kept). A
    masked (truncated, ``mask_truncated``) sample is never counted."""
    counted = ([s for s in samples if s.selected and not s.masked] if filter_norm == "original"
               else [s for s in samples if s.kept])
    return StepCounts(
        sequences=len(counted), tokens=sum(s.completion.n_tokens for s in counted), max_new_tokens=max_new_tokens
    )


def kl_scale(run: RLRun, update: list[Sample]) -> float:
    """The KL term's factor in one update. Gradient filtering drops a filtered sample's KL term with its
    policy term while ``filter_norm: original`` still counts it in the normaliser, so the KL weight a
    kept token gets is beta x (kept share of the normaliser). ``kl_norm: kept`` restores beta per kept
    token: the factor normaliser(counted) / normaliser(kept), over the whole update (every process).
    1 with ``kl_norm: original`` (the paper's code), without a KL term, or when nothing is kept."""
    cfg = run.cfg
    if cfg.kl_norm == "original" or cfg.kl_coef == 0:
        return 1.0
    counted = run.world.sum_counts(vars_of(step_counts(update, cfg.max_new_tokens, cfg.filter_norm)))
    kept = run.world.sum_counts(vars_of(step_counts(update, cfg.max_new_tokens, "kept")))
    norm_kept = run.aggregation.normaliser(StepCounts(**kept, max_new_tokens=cfg.max_new_tokens))
    norm_counted = run.aggregation.normaliser(StepCounts(**counted, max_new_tokens=cfg.max_new_tokens))
    return norm_counted / norm_kept if norm_kept > 0 else 1.0


def vars_of(counts: StepCounts) -> dict[str, int]:
    return {"sequences": counts.sequences, "tokens": counts.tokens}


def optimizer_step(run: RLRun, counts: StepCounts, stats: dict[str, float], trained: bool = True) -> None:
    """Step 6: normalise the accumulated gradient by the whole update's counts, clip, step.

    Data parallel: gradients and counts are first summed over the processes, so every process
    normalises by the counts of the whole update (all processes' sequences and tokens) and takes the
    same step. ``counts`` and the loss in ``stats`` are this process's own; ``trained``: whether this
    process back-propagated any sample in the update (a sharded policy's empty passes leave zero
    gradients, not None).
    """
    params = [p for p in run.policy.parameters() if p.requires_grad]
    if run.sharded:  # FSDP summed the gradients during the backward passes
        if not run.world.any(trained):
            run.optimizer.zero_grad(set_to_none=True)  # only empty passes: AdamW must skip, as in one process
    else:
        run.world.sum_gradients(params)  # None stays None only where no process has a gradient
    counts = replace(counts, **run.world.sum_counts({"sequences": counts.sequences, "tokens": counts.tokens}))
    normaliser = run.aggregation.normaliser(counts)
    stats["loss"] += stats.pop("loss_sum", 0.0) / max(normaliser, 1)
    stats["updates"] += 1
    stats.setdefault("lr", run.optimizer.param_groups[0]["lr"])  # the lr the step's first update uses
    if all(p.grad is None for p in params):
        stats["skipped_optimizer_steps"] += 1  # every sample was filtered out: nothing to learn from
        run.optimizer.step()  # a no-op without gradients (AdamW skips them); keeps the schedule in step
        run.scheduler.step()
        return
    for p in params:
        if p.grad is not None:
            p.grad.div_(normaliser)
    max_norm = run.cfg.grad_clip if run.cfg.grad_clip > 0 else float("inf")
    stats["grad_norm"] = float(full_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm)))  # global over shards
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    stats["optimizer_steps"] += 1


# ------------------------------------------------------------------------------------------------
# The run: steps, with checkpoints, resume and the run log around them


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
    tracker: Tracker | None = None,
) -> RLRun:
    """Run (or resume) an RL run. ``work_dir`` holds checkpoints, per-step rollouts and metrics.jsonl.

    A run killed at any point and restarted with the same params, initial model and data resumes
    from its newest checkpoint; anything logged after that checkpoint is discarded and redone.
    With several processes (``world``) all of them train; rank 0 alone writes to ``work_dir`` and
    sends each step's metrics to ``tracker`` (``dashrl.infra.tracking``: DVCLive, TensorBoard, ...).
    """
    # a checkpoint resumes only in the dtypes (and the TIS cap) it was trained in
    cfg = resolve_tis_cap(resolve_dtypes(cfg, world.device), world)
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
            done = step + 1
            due = done == run.total_steps or (run.cfg.checkpoint_every and done % run.cfg.checkpoint_every == 0)
            if world.is_main:  # the others hold the same weights and metrics
                record_step(run, work_dir, out)
                if tracker is not None:
                    tracker.log(out.metrics, step)
            if due and (world.is_main or run.sharded):  # sharded: every rank gathers, rank 0 writes
                save_checkpoint(run, work_dir, done, fingerprint)
            m = out.metrics
            bar.set_postfix({"reward": f"{m['reward_mean']:.3f}", "kept": f"{m['kept_fraction']:.2f}",
                             "s/step": f"{m['time_step_s']:.1f}"}, refresh=False)
            bar.update(1)
    return run
