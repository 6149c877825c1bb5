"""Supervised fine-tuning with the loss on the completion only (the paper's SFT baselines).

Examples are (prompt, completion) pairs in the same prompt format as RL (``render_prompt``):

- ``reference_examples``: the training split's worked solutions (the paper's SFT-H, "human");
- ``rejection_sampled_examples``: a model's own samples that the grader marks correct (the
  paper's SFT-M analogue: correct traces of a stronger model; here any model, the base by default).

The loss is the mean negative log-likelihood of the completion tokens (eos included) under the
full softmax (temperature 1), averaged over all completion tokens of a batch; prompt tokens are
context only. Batches are shuffled each epoch with a seed.

The pipeline stage is ``stages/sft.py`` (``sft@<run>``, params ``sft.common`` + ``sft.runs``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.algo.batching import get_packing
from dashrl.algo.losses import batch_logprobs, check_tree_packing
from dashrl.config.params import GraderParams, PromptParams
from dashrl.data.loaders import task_of
from dashrl.engines.base import RolloutEngine, SamplingConfig
from dashrl.evaluation import evaluate
from dashrl.infra.progress import progress
from dashrl.infra.seeds import derive_seed
from dashrl.models import enable_activation_checkpointing, render_prompt

if TYPE_CHECKING:
    from dashrl.infra.tracking import Tracker


@dataclass(frozen=True)
class Example:
    problem_id: str
    prompt: str  # the rendered model input
    completion: str  # the target text, without the eos token (added at tokenisation)


def reference_examples(problems: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, prompt: PromptParams) -> list[Example]:
    """One example per problem: its worked solution as the completion (SFT-H)."""
    return [Example(row.id, render_prompt(row.prompt, tokenizer, prompt, task_of(row.source)), row.solution)
            for row in problems.itertuples()]


def rejection_sampled_examples(
    problems: pd.DataFrame,
    *,
    engine: RolloutEngine,
    tokenizer: PreTrainedTokenizerBase,
    prompt: PromptParams,
    grader: GraderParams,
    sampling: SamplingConfig,
    samples_per_problem: int,
) -> list[Example]:
    """The engine's samples that the grader marks correct, at most one per distinct text (SFT-M).

    Sampling and grading are exactly evaluation's (``dashrl.evaluation.evaluate``); truncated
    samples are dropped even when their answer happens to be right.
    """
    rows, _ = evaluate(problems, engine=engine, tokenizer=tokenizer, prompt=prompt, grader=grader,
                       sampling=sampling, samples_per_problem=samples_per_problem)
    correct = rows[(rows["reward"] == 1.0) & ~rows["truncated"]].drop_duplicates(["id", "completion"])
    return [Example(r.id, r.prompt, r.completion) for r in correct.itertuples()]

@dataclass(frozen=True)
class Tokenized:
    prompt_ids: list[int]
    completion_ids: list[int]  # completion + eos, truncated to fit max_length


def tokenize(examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Tokenized]:
    """Token ids per example; the completion is cut so prompt + completion <= max_length."""
    out = []
    for ex in examples:
        prompt_ids = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        room = max_length - len(prompt_ids)
        if room < 1:
            raise ValueError(f"problem {ex.problem_id}: prompt is {len(prompt_ids)} tokens, max_length is {max_length}")
        out.append(Tokenized(prompt_ids, completion_ids[:room]))
    return out


def sft_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    max_length: int,
    seed: int,
    train_dtype: str = "float32",
    grad_clip: float = 1.0,
    packing: str = "tree",
    gradient_checkpointing: bool = False,
    progress_label: str = "sft",
    tracker: Tracker | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place; returns one record per optimizer step (epoch, step, loss, tokens),
    each also sent to ``tracker`` as the step ends (``dashrl.infra.tracking``: DVCLive, TensorBoard, ...).

    ``train_dtype`` is ``float32`` or ``bfloat16`` (autocast over fp32 weights); resolve ``auto``
    first (``dashrl.infra.hardware.resolve_dtype``)."""
    if train_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"train_dtype must be float32 or bfloat16 (resolve auto first), got {train_dtype!r}")
    if not examples:
        raise ValueError("no SFT examples (rejection sampling found no correct sample?)")
    if packing == "tree":
        check_tree_packing(model)
    if gradient_checkpointing:
        enable_activation_checkpointing(model)
    items = tokenize(examples, tokenizer, max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, fused=True)  # one kernel (as in rl)
    autocast = (torch.autocast(model.device.type, dtype=torch.bfloat16) if train_dtype == "bfloat16"
                else contextlib.nullcontext())
    history = []
    model.train()
    steps_per_epoch = math.ceil(len(items) / batch_size)
    bar = progress(desc=progress_label, total=epochs * steps_per_epoch, unit="step")
    for epoch in range(epochs):
        order = np.random.default_rng(derive_seed(seed, epoch)).permutation(len(items))
        for b in range(steps_per_epoch):
            batch = [items[i] for i in order[b * batch_size : (b + 1) * batch_size]]
            packed = get_packing(packing).pack([x.prompt_ids for x in batch], [x.completion_ids for x in batch],
                                               tokenizer.pad_token_id, model.device)
            with autocast:
                logp = batch_logprobs(model, packed, temperature=1.0).float()  # (B, Tc)
            n_tokens = packed.completion_mask.sum()
            loss = -(logp * packed.completion_mask).sum() / n_tokens
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append({"epoch": epoch, "step": len(history), "loss": float(loss.detach()), "tokens": float(n_tokens)})
            if tracker is not None:
                tracker.log(history[-1], history[-1]["step"])
            bar.set_postfix({"epoch": epoch, "loss": f"{history[-1]['loss']:.3f}"}, refresh=False)
            bar.update(1)
    bar.close()
    return history
