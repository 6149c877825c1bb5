"""TRL's GRPOTrainer against dashrl's DASH, step by step on one machine (a script, not a test).

    pip install -e '.[bench]'            # TRL (make bench-trl does both)
    python -m benchmarks.vs_trl [--steps 4] [--warmup-steps 1] [--dtype auto] [--run dash]
    git worktree add /tmp/before <commit> && python -m benchmarks.vs_trl --compare-src /tmp/before
                                         # + that version of dashrl as a third, interleaved framework

Both sides train the same initial model (``data/models/<init_from>``, e.g. the embedded
SmolLM2-135M-Instruct) on the same prompts (dashrl's seeded schedule: step s gets the same 8
problems in both), with the same reward (``dashrl.grading.tasks.grade_completions``: math-verify), the same
geometry (8 prompts x G = 8 completions per optimizer step, micro-batches of 8, 128 new tokens,
temperature / top_p from the run) and the same objective (dr_grpo aggregation, beta from the run,
group-scaled advantages, lr, grad clip, AdamW), in the same dtype: ``auto`` resolves as the
pipeline does (``dashrl.infra.hardware``); ``bfloat16`` is TRL's ``bf16=True`` (autocast over fp32
weights, as dashrl's ``train_dtype``).

What differs is each framework's own machinery. TRL (``GRPOTrainer`` with its defaults for what is
not set above): generation with ``model.generate`` once per optimizer step
(``steps_per_generation`` = gradient accumulation), no filtering. dashrl: ``rl_step`` with the run's
settings (preemptive sampling, gradient filtering, its own decode loop and packing).

The two run in separate processes, one step at a time in turn (the order alternating every step),
so machine noise falls on both alike and each process's peak RSS is its own. The first
``--warmup-steps`` steps are run and left out of the averages. Printed per framework: seconds per
optimizer step (total, generation, training = total - generation), generated tokens per step,
generation and training tokens/s, peak RSS; then achieved FLOP/s of sampling and of training
against this machine's measured matmul rate in the same dtype, and last the line
``dash/trl step time ratio: X``.

FLOP model (stated, approximate): a forward pass costs 2 N FLOP per token (N = parameters, the tied
head counted once), a backward 4 N; attention's own FLOPs are left out. Sampling: 2 N x (prompt +
generated tokens). Training: 6 N per back-propagated token (prompt + completion, real tokens only:
padding counts as waste) + 2 N per token for the reference model when beta > 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing as mp
import os
import resource
import tempfile
import time
from typing import Any

import numpy as np

STEP_FIELDS = ("total_s", "generation_s", "generated_tokens", "sequences", "prompt_tokens", "trained_tokens")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _setup(params_path: str, run_name: str, dtype: str) -> tuple[Any, Any, Any, Any]:
    """(params, run cfg with the benchmark's geometry and ``dtype`` (resolved), problems, init_dir)."""
    from dashrl.config.params import check_rl_run, load_params
    from dashrl.data.schema import read_problems
    from stages import paths

    params = load_params(params_path)
    cfg = params.rl.run(run_name)
    cfg = dataclasses.replace(cfg, prompts_per_step=8, group_size=8, micro_batch_size=8, max_new_tokens=128,
                              train_dtype=dtype, rollout_dtype=dtype, sampling="preemptive",
                              ppo_epochs=1, optimizer_steps_per_rollout=1, checkpoint_every=0)
    check_rl_run(cfg, f"benchmark (rl.runs.{run_name})")
    problems = read_problems(paths.prepared(cfg.dataset, "train"))
    if cfg.train_levels is not None:
        problems = problems[problems["level"].isin(cfg.train_levels)]
    return params, cfg, problems, paths.model_dir(cfg.init_from)


# ------------------------------------------------------------------------------------------------
# dashrl worker


def dashrl_worker(conn, params_path: str, run_name: str, dtype: str, steps: int, source: str | None = None) -> None:
    """``source``: another checkout of dashrl (e.g. an earlier commit) to import instead of this one,
    with its own params.yaml; the data/ paths stay this repository's."""
    if source:
        import sys

        sys.path.insert(0, os.path.abspath(source))
        params_path = os.path.join(source, "params.yaml")
    import torch

    from dashrl.models import load_tokenizer
    from dashrl.rl.loop import rl_step
    from dashrl.rl.run import build_run

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    params, cfg, problems, init_dir = _setup(params_path, run_name, dtype)
    cfg = dataclasses.replace(cfg, steps=steps, epochs=None)
    tokenizer = load_tokenizer(init_dir)
    run = build_run(cfg=cfg, prompt=params.prompt, grader=params.grader, weights_dir=init_dir, init_dir=init_dir,
                    tokenizer=tokenizer, problems=problems)
    conn.send({"ready": True, "dtype": cfg.train_dtype})
    for step in range(steps):
        conn.recv()  # the baton
        out = rl_step(run, step)
        m = out.metrics
        prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in _rendered(run, step))
        conn.send({
            "total_s": m["time_step_s"], "generation_s": m["time_sampling_s"],
            "generated_tokens": int(out.rollouts["tokens"].sum()), "sequences": m["samples"],
            "prompt_tokens": prompt_tokens * cfg.group_size,
            # older dashrl: real tokens = tokens per second x seconds
            "trained_tokens": m.get("trained_tokens", m["training_tokens_per_s"] * m["time_forward_backward_s"]),
            "kept_fraction": m["kept_fraction"],
            "reward": m["reward_mean"], "peak_rss_mb": _peak_rss_mb(),
        })


def _rendered(run, step: int) -> list[str]:
    from dashrl.models import render_prompt

    return [render_prompt(p, run.tokenizer, run.prompt) for p in run.schedule.batch(step)["prompt"]]


# ------------------------------------------------------------------------------------------------
# TRL worker


def trl_worker(conn, params_path: str, run_name: str, dtype: str, steps: int) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dashrl.grading.tasks import grade_completions
    from dashrl.models import load_tokenizer, render_prompt
    from dashrl.rl.run import PromptSchedule

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    params, cfg, problems, init_dir = _setup(params_path, run_name, dtype)
    tokenizer = load_tokenizer(init_dir)
    schedule = PromptSchedule(problems, cfg.prompts_per_step, cfg.seed)
    rows = [r for step in range(steps) for r in schedule.batch(step).itertuples()]  # dashrl's order, step by step
    instruction = params.prompt.instruction
    messages = [([{"role": "system", "content": params.prompt.system_prompt}] if params.prompt.system_prompt else [])
                + [{"role": "user", "content": f"{r.prompt}\n{instruction}" if instruction else r.prompt}] for r in rows]
    # The prompt TRL renders is the string dashrl trains on.
    trl_text = tokenizer.apply_chat_template(messages[0], tokenize=False, add_generation_prompt=True)
    if trl_text != render_prompt(rows[0].prompt, tokenizer, params.prompt):
        raise RuntimeError("TRL's chat rendering differs from dashrl.models.render_prompt")
    dataset = Dataset.from_dict({"prompt": messages, "answer": [r.answer for r in rows]})

    def math_verify_reward(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [g.reward for g in grade_completions(texts, list(answer), [cfg.dataset] * len(texts), params.grader)]

    out_dir = tempfile.mkdtemp(prefix="dashrl-bench-trl-")
    config = GRPOConfig(
        output_dir=out_dir, use_cpu=True, bf16=cfg.train_dtype == "bfloat16", seed=cfg.seed, max_steps=steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.prompts_per_step * cfg.group_size // cfg.micro_batch_size,
        num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
        learning_rate=cfg.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, beta=cfg.kl_coef, epsilon=cfg.clip_low, epsilon_high=cfg.clip_high,
        loss_type="dr_grpo", scale_rewards="group" if cfg.scale_rewards else "none", shuffle_dataset=False,
        report_to=[], logging_steps=1, save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    trainer = GRPOTrainer(model=model, reward_funcs=math_verify_reward, args=config, train_dataset=dataset,
                          processing_class=tokenizer)

    record: dict[str, float] = {}
    generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *args, **kwargs):
        start = time.perf_counter()
        completion_ids, logprobs = generate(prompt_ids, *args, **kwargs)
        record["generation_s"] = record.get("generation_s", 0.0) + time.perf_counter() - start
        record["generated_tokens"] = record.get("generated_tokens", 0) + sum(len(c) for c in completion_ids)
        record["sequences"] = record.get("sequences", 0) + len(completion_ids)
        record["prompt_tokens"] = record.get("prompt_tokens", 0) + sum(len(p) for p in prompt_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    class Baton(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            conn.recv()
            record.clear()
            record["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            total = time.perf_counter() - record.pop("start")
            # every generated sequence is back-propagated once (no filtering)
            conn.send({**record, "total_s": total, "trained_tokens": record["prompt_tokens"] + record["generated_tokens"],
                       "kept_fraction": 1.0, "reward": float("nan"), "peak_rss_mb": _peak_rss_mb()})

    trainer.remove_callback(PrinterCallback)  # one dict per step on stdout
    trainer.add_callback(Baton())
    conn.send({"ready": True, "dtype": cfg.train_dtype})
    trainer.train()


# ------------------------------------------------------------------------------------------------
# Coordinator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per framework (warm-up included)")
    parser.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the averages")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--run", default="dash", help="rl.runs entry whose objective and sampling settings are used")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--compare-src", metavar="DIR",
                        help="a checkout of another dashrl version (git worktree add DIR COMMIT): run it as a third "
                             "framework, 'dash@DIR', interleaved with the other two (before/after in one run)")
    args = parser.parse_args()
    if not 0 <= args.warmup_steps < args.steps:
        parser.error("need 0 <= --warmup-steps < --steps")

    import torch

    from dashrl.infra.hardware import compute_record, matmul_flops_per_s, resolve_dtype

    dtype = resolve_dtype(args.dtype, "cpu")
    ctx = mp.get_context("spawn")
    workers = {}
    frameworks = [("trl", trl_worker, ()), ("dash", dashrl_worker, ())]
    if args.compare_src:
        frameworks.append((f"dash@{os.path.basename(os.path.normpath(args.compare_src))}", dashrl_worker, (args.compare_src,)))
    for name, target, extra in frameworks:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child, args.params, args.run, dtype, args.steps, *extra), daemon=True)
        proc.start()
        workers[name] = (proc, parent)
    for name, (proc, conn) in workers.items():  # both loaded before the first timed step
        _receive(name, proc, conn, "start-up")

    record = compute_record("cpu", dtype=dtype)
    print(f"CPU: {record['cpu_model']} ({torch.get_num_threads()} threads, flags {' '.join(record['cpu_flags'])}); "
          f"dtype {dtype} ({record['bf16_reason']})")
    print(f"{args.steps} steps each ({args.warmup_steps} warm-up), 8 prompts x G 8, 128 new tokens, run {args.run!r}",
          flush=True)
    history: dict[str, list[dict]] = {name: [] for name in workers}
    for step in range(args.steps):
        names = list(workers)
        order = names[step % len(names):] + names[: step % len(names)]  # who goes first rotates
        for name in order:
            proc, conn = workers[name]
            conn.send("go")
            m = _receive(name, proc, conn, f"step {step + 1}")
            history[name].append(m)
            print(f"  step {step + 1} {name:10s} {m['total_s']:6.1f} s (generation {m['generation_s']:5.1f} s, "
                  f"{m['generated_tokens']} tokens, kept {m['kept_fraction']:.2f})", flush=True)
    for proc, _ in workers.values():
        proc.join(timeout=60)

    peak = {"sampling": matmul_flops_per_s(torch.float32 if dtype == "float32" else torch.bfloat16, m=64),
            "training": matmul_flops_per_s(torch.float32 if dtype == "float32" else torch.bfloat16, m=1024)}
    n_params = _n_params(args.params, args.run)
    kl = _kl_coef(args.params, args.run) > 0
    print()
    header = ["framework", "s/step", "generation s/step", "training s/step", "generated tokens/step",
              "generation tok/s", "training tok/s", "peak RSS MB", "sampling GFLOP/s (% peak)", "training GFLOP/s (% peak)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    totals = {}
    for name in workers:
        ms = history[name][args.warmup_steps :]
        mean = {k: float(np.mean([m[k] for m in ms])) for k in STEP_FIELDS}
        train_s = mean["total_s"] - mean["generation_s"]
        totals[name] = mean["total_s"]
        sampling_flops = 2 * n_params * (mean["prompt_tokens"] + mean["generated_tokens"]) / mean["generation_s"]
        training_flops = (6 + 2 * kl) * n_params * mean["trained_tokens"] / train_s
        row = [name, f"{mean['total_s']:.1f}", f"{mean['generation_s']:.1f}", f"{train_s:.1f}",
               f"{mean['generated_tokens']:.0f}", f"{mean['generated_tokens'] / mean['generation_s']:.0f}",
               f"{mean['trained_tokens'] / train_s:.0f}", f"{max(m['peak_rss_mb'] for m in ms):.0f}",
               f"{sampling_flops / 1e9:.0f} ({100 * sampling_flops / peak['sampling']:.1f}%)",
               f"{training_flops / 1e9:.0f} ({100 * training_flops / peak['training']:.1f}%)"]
        print("| " + " | ".join(row) + " |")
    print()
    print(f"matmul peak measured here ({dtype}): {peak['sampling'] / 1e9:.0f} GFLOP/s at (64 x 576) x (576 x 1536) "
          f"(decoding's shape), {peak['training'] / 1e9:.0f} GFLOP/s at (1024 x 576) x (576 x 1536) (training's)")
    print(f"training tokens: real prompt + completion tokens back-propagated (dash: kept samples only, "
          f"kept fraction {np.mean([m['kept_fraction'] for m in history['dash'][args.warmup_steps:]]):.2f})")
    for name in list(workers)[2:]:
        print(f"{name}/trl step time ratio: {totals[name] / totals['trl']:.2f}")
        print(f"dash/{name} step time ratio: {totals['dash'] / totals[name]:.2f}")
    print(f"dash/trl step time ratio: {totals['dash'] / totals['trl']:.2f}")


def _receive(name: str, proc: mp.Process, conn, what: str) -> dict:
    """The worker's next message; an error naming the worker if it dies first."""
    while not conn.poll(5):
        if not proc.is_alive():
            raise RuntimeError(f"{name} worker died during {what} (exit code {proc.exitcode}); its error is above")
    return conn.recv()


def _n_params(params_path: str, run_name: str) -> int:
    import json

    from dashrl.config.params import load_params
    from stages import paths

    cfg = load_params(params_path).rl.run(run_name)
    config = json.loads((paths.model_dir(cfg.init_from) / "config.json").read_text())
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    inter, heads, kv = config["intermediate_size"], config["num_attention_heads"], config.get("num_key_value_heads")
    head_dim = config.get("head_dim") or h // heads
    kv = kv or heads
    per_layer = h * head_dim * (heads + 2 * kv) + heads * head_dim * h + 3 * h * inter + 2 * h
    head = 0 if config.get("tie_word_embeddings") else vocab * h
    return layers * per_layer + vocab * h + head + h


def _kl_coef(params_path: str, run_name: str) -> float:
    from dashrl.config.params import load_params

    return load_params(params_path).rl.run(run_name).kl_coef


if __name__ == "__main__":
    main()
