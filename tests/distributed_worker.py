"""Worker of tests/test_distributed.py: under ``torchrun`` each rank trains the tiny model on a fixed
batch and saves what it ends with; the test also calls ``run_updates`` in one process to compare.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT_DIR MODEL_DIR

The batch must be the same whatever the split over processes, so completions come from
``FixedEngine`` (a function of the prompt and the index in the group, not of the weights or the
seed) and rewards from ``parity_grade_batch`` (a function of the text).
"""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from test_rl import GRADER, PROMPT, make_cfg, parity_grade_batch

import dashrl.rl.loop
import dashrl.rl.run
from dashrl.config.params import check_rl_run
from dashrl.data.arith import generate_arith
from dashrl.data.schema import write_problems
from dashrl.engines.base import Completion, GenerationStats, SamplingConfig
from dashrl.engines.factory import make_engine
from dashrl.infra.distributed import World, init_from_env, teardown
from dashrl.models import load_tokenizer
from dashrl.rl.checkpoints import gather_policy_state
from dashrl.rl.loop import rl_step, train
from dashrl.rl.run import RLRun, build_run
from dashrl.rl.samples import StepOutput

# 8 prompts x G = 4 per step: 4 prompts (16 sequences, 4 micro-batches of 4) per rank with 2 ranks.
# SGD's lr is large, so that updates stand far above float32 rounding of the weights (~1e-9).
GEOMETRY = {"prompts_per_step": 8, "micro_batch_size": 4, "filter_threshold": 0.1}
SCENARIOS: dict[str, dict] = {
    # DASH: preemptive sampling, gradient filtering, dr_grpo; 2 steps; a clip that binds (global norm).
    "dash": {**GEOMETRY, "steps": 2, "loss_agg": "dr_grpo", "grad_clip": 0.05, "lr": 1.0},
    # Standard GRPO: sampling inside each micro-step; grpo aggregation; normalised by the kept counts.
    "grpo_per_micro_batch": {**GEOMETRY, "sampling": "per_micro_batch", "loss_agg": "grpo", "filter_norm": "kept",
                             "grad_clip": 0.0, "lr": 0.1},
    # PPO-Multi x PPO-Mini: 2 passes of 4 optimizer steps; each update's 2 prompts lie on ONE rank,
    # so the other rank has no gradient of its own in it (and an update whose groups are all
    # filtered is skipped by both).
    "ppo": {**GEOMETRY, "ppo_epochs": 2, "optimizer_steps_per_rollout": 4, "loss_agg": "bnpo", "grad_clip": 0.0,
            "lr": 0.1},
    # Standard GRPO sampled by the real HF engine: per-micro-step seeds are numbered over the whole
    # step, so 2 processes sample exactly what one samples (same weights, prompts and seeds).
    "grpo_sampled": {**GEOMETRY, "sampling": "per_micro_batch", "loss_agg": "dr_grpo", "grad_clip": 0.0, "lr": 1.0},
}
SAMPLED = {"grpo_sampled"}  # scenarios that keep the HF engine (the others use FixedEngine)
# train() end to end (AdamW, checkpoints, metrics.jsonl, rollouts).
TRAIN = {**GEOMETRY, "steps": 2, "checkpoint_every": 1, "lr": 1e-3}


def problems() -> pd.DataFrame:
    return generate_arith(16, 0, [1], seed=0)[0]


class FixedEngine:
    """Completion j of a prompt: characters drawn from a generator seeded by (crc32(prompt), j).
    Under the parity grader a prompt's group is all right (even lengths), all wrong (odd lengths) or
    mixed (any length) by crc32(prompt) % 3: gradient filtering drops about 2/3 of the groups.
    Behaviour log-probs are a constant near the tiny random model's (about -log 259)."""

    name = "fixed"

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.last_stats = GenerationStats()

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        alphabet = list("abcdefgh0123456789")
        out = []
        for prompt in prompts:
            row, kind = [], zlib.crc32(prompt.encode()) % 3
            for j in range(n):
                rng = np.random.default_rng([zlib.crc32(prompt.encode()), j])
                length = int(rng.integers(1, sampling.max_new_tokens + 1))
                if kind < 2:  # the same parity for the whole group
                    length = max(2 - kind, length - (length - kind) % 2)
                text = "".join(rng.choice(alphabet, size=length))
                ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                finish = "length" if len(ids) == sampling.max_new_tokens else "stop"
                row.append(Completion(text=text, token_ids=ids, finish_reason=finish, logprobs=[-5.5] * len(ids)))
            out.append(row)
        self.last_stats = GenerationStats(generated_tokens=sum(c.n_tokens for row in out for c in row))
        return out

    def sync_weights(self, policy) -> None:
        pass


def run_updates(name: str, model_dir: Path, world: World, parallel: str = "ddp") -> tuple[RLRun, list[StepOutput]]:
    """The library's build_run and rl_step, with plain SGD: the update is lr x the gradient the loop
    hands to the optimizer (AdamW's first steps, ~lr x sign(g), would hide the gradient's value).
    Sharded DASH also checkpoints activations (FSDP's gathers run again in the recomputation)."""
    checkpointing = parallel == "fsdp" and name == "dash"
    cfg = make_cfg(**SCENARIOS[name], parallel=parallel, gradient_checkpointing=checkpointing)
    check_rl_run(cfg, f"rl.runs.{name}")
    tokenizer = load_tokenizer(model_dir)
    run = build_run(cfg=cfg, prompt=PROMPT, grader=GRADER, weights_dir=model_dir, init_dir=model_dir,
                    tokenizer=tokenizer, problems=problems(), world=world)
    # make_engine as imported here: the library's, even where dashrl.rl.run.make_engine is patched.
    run.engine = make_engine(cfg, run.policy, tokenizer) if name in SAMPLED else FixedEngine(tokenizer)
    run.optimizer = torch.optim.SGD(run.policy.parameters(), lr=cfg.lr)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
    return run, [rl_step(run, step) for step in range(cfg.steps)]


def run_train(model_dir: Path, train_file: Path, work_dir: Path, world: World, parallel: str = "ddp") -> RLRun:
    cfg = make_cfg(**TRAIN, parallel=parallel)
    check_rl_run(cfg, "rl.runs.train")
    return train(cfg=cfg, prompt=PROMPT, grader=GRADER, init_dir=model_dir, tokenizer=load_tokenizer(model_dir),
                 problems=problems(), train_file=train_file, work_dir=work_dir, world=world)


def policy_weights(run: RLRun) -> dict[str, torch.Tensor]:
    """The policy's whole weights (gathered onto rank 0 when sharded: a collective; {} on the others)."""
    state = gather_policy_state(run)
    if state is None:
        state = run.policy.state_dict()
    return {k: v.detach().clone() for k, v in state.items()}


def save_result(out_dir: Path, rank: int, run: RLRun, outs: list[StepOutput]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = policy_weights(run)
    if run.sharded and rank:
        return  # a sharded run's whole weights are on rank 0 only
    torch.save(weights, out_dir / f"rank{rank}.pt")
    (out_dir / f"rank{rank}.json").write_text(json.dumps([o.metrics for o in outs]))
    pd.concat([o.rollouts for o in outs]).to_parquet(out_dir / f"rank{rank}.parquet", index=False)


def use_fixed_batch() -> None:
    """Parity rewards everywhere; FixedEngine completions for train()."""
    dashrl.rl.loop.grade_completions = parity_grade_batch
    dashrl.rl.run.make_engine = lambda cfg, policy, tokenizer, world=None, share_policy=True: FixedEngine(tokenizer)


def main(out: Path, model_dir: Path, parallel: str = "ddp") -> None:
    torch.set_num_threads(1)
    use_fixed_batch()
    world = init_from_env()
    try:
        for name in SCENARIOS:
            if parallel == "fsdp" and name in SAMPLED:
                continue  # the HF engine copies a replicated policy (the factory's own test covers it)
            run, outs = run_updates(name, model_dir, world, parallel)
            save_result(out / name, world.rank, run, outs)
        if parallel == "fsdp":
            fsdp_train_and_resume(out, model_dir, world)
            return
        # train(): every rank gets its own work_dir, so that the test sees which ranks wrote.
        train_file = out / "train.parquet"
        if world.is_main:
            write_problems(problems(), train_file)
        world.barrier()
        run = run_train(model_dir, train_file, out / "train" / f"rank{world.rank}" / "work", world)
        torch.save({k: v.detach().clone() for k, v in run.policy.state_dict().items()}, out / f"train_rank{world.rank}.pt")
    finally:
        teardown(world)


def fsdp_train_and_resume(out: Path, model_dir: Path, world: World) -> None:
    """train() sharded (AdamW, checkpoints every step), then again after its last checkpoint is
    removed: the second run resumes from the sharded state of step 1 and must end where the first did."""
    train_file = out / "train.parquet"
    work = out / "train" / "work"
    if world.is_main:
        write_problems(problems(), train_file)
    world.barrier()
    run = run_train(model_dir, train_file, work, world, "fsdp")
    first = policy_weights(run)
    world.barrier()
    if world.is_main:
        torch.save(first, out / "train_full.pt")
        shutil.rmtree(work / "checkpoints" / "step-000002")
    world.barrier()
    run = run_train(model_dir, train_file, work, world, "fsdp")
    resumed = policy_weights(run)
    if world.is_main:
        torch.save(resumed, out / "train_resumed.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:])
