"""The CUDA path: what only a machine with an NVIDIA GPU can check (opt-in: ``pytest -m gpu``).

The rest of the suite runs on the CPU; on a GPU machine the stages pick the first GPU by themselves
(``dashrl.models.default_device``, ``dashrl.infra.distributed.init_from_env``), so these tests check that
the GPU gives the CPU's numbers where it should (fp32 log-probs and gradients, tree-packed and
padded), that ``auto`` turns into bf16 autocast there, and that a run trained on the GPU leaves an
ordinary model directory and a run record naming the GPU. Without CUDA every test here is skipped.
"""

from __future__ import annotations

import json

import pytest
import test_rl
import torch
import yaml
from test_rl import (
    GradRecorder,
    build_run,
    fp32_and_bf16_step,
    make_cfg,
    perturbed_reference,
    sample_step,
    step_gradient,
)

from dashrl.algo.losses import batch_logprobs
from dashrl.config.params import load_params
from dashrl.engines.factory import make_engine
from dashrl.infra.distributed import init_from_env
from dashrl.infra.hardware import compute_record, resolve_dtype
from dashrl.models import default_device, load_model
from dashrl.rl.loop import pack, rl_step
from dashrl.rl.run import resolve_dtypes

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda", 0)

# tests/test_rl.py's fixtures, by name (its one_thread is left out: the GPU tests use the machine's threads)
problems = test_rl.problems
tokenizer = test_rl.tokenizer
scripted_rewards = test_rl.scripted_rewards


@pytest.fixture(autouse=True)
def exact_fp32_matmuls():
    """TF32 would round fp32 matmuls to 10 mantissa bits on the GPU; the CPU comparisons need fp32."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def on_gpu(run):
    """The same run with its policy (and reference) moved to the GPU; a fresh gradient recorder and engine."""
    run.policy = run.policy.to(CUDA)
    if run.reference is not None:
        run.reference = run.reference.to(CUDA)
    run.optimizer = GradRecorder(run.policy.parameters())
    run.engine = make_engine(run.cfg, run.policy, run.tokenizer)
    return run


def test_auto_is_bf16_on_a_bf16_gpu_and_the_record_names_the_gpu():
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    assert resolve_dtype("auto", CUDA) == expected
    assert resolve_dtype("float32", CUDA) == "float32"  # an explicit dtype stays as it is
    cfg = resolve_dtypes(make_cfg(train_dtype="auto", rollout_dtype="auto"), CUDA)
    assert (cfg.train_dtype, cfg.rollout_dtype) == (expected, expected)
    record = compute_record(CUDA, train_dtype=expected)
    assert record["gpu"] == torch.cuda.get_device_name(0)
    assert record["device"] == "cuda:0" and record["dtypes"] == {"train_dtype": expected}
    assert record["bf16_native"] is torch.cuda.is_bf16_supported()


def test_a_single_process_trains_and_evaluates_on_the_first_gpu(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_from_env().device == CUDA
    assert default_device() == "cuda"


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_fp32_logprobs_on_the_gpu_equal_the_cpus(tiny_model_dir, tokenizer, problems, scripted_rewards, packing):
    """The tree layout's 4-D attention mask and restarted positions go through CUDA's attention kernels."""
    cfg = make_cfg(packing=packing)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    samples = sample_step(run)
    with torch.no_grad():
        logp_cpu = batch_logprobs(run.policy, pack(samples, tokenizer.pad_token_id, torch.device("cpu"), packing),
                                  cfg.temperature)  # (B, Tc)
        run = on_gpu(run)
        logp_gpu = batch_logprobs(run.policy, pack(samples, tokenizer.pad_token_id, CUDA, packing),
                                  cfg.temperature)  # (B, Tc)
    mask = pack(samples, tokenizer.pad_token_id, torch.device("cpu"), packing).completion_mask.bool()  # (B, Tc)
    assert logp_gpu.device.type == "cuda"
    torch.testing.assert_close(logp_gpu.cpu()[mask], logp_cpu[mask], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("packing", ["tree", "padded"])
def test_fp32_step_gradient_on_the_gpu_equals_the_cpus(tiny_model_dir, tokenizer, problems, scripted_rewards, packing):
    """Steps 5-6 (loss, KL to the reference, backward over micro-batches, normalisation) on both devices."""
    cfg = make_cfg(packing=packing, grad_clip=0.0, kl_coef=0.1, kl_reference="init")
    run = build_run(cfg, tiny_model_dir, tokenizer, problems, record_grads=True)
    run.reference = perturbed_reference(tiny_model_dir, 0.05)  # differs from the policy: a non-zero KL gradient
    samples = sample_step(run)
    loss_cpu, grads_cpu = step_gradient(run, samples, micro_batch_size=4)
    loss_gpu, grads_gpu = step_gradient(on_gpu(run), samples, micro_batch_size=4)
    assert all(g.device.type == "cuda" for g in grads_gpu)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4, abs=1e-6)
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu, strict=True):
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=1e-3, atol=1e-5)


def test_an_rl_step_in_auto_dtype_on_the_gpu(tiny_model_dir, tokenizer, problems, scripted_rewards):
    """rl_step end to end on the GPU: bf16 rollout copy and bf16 autocast over fp32 master weights."""
    cfg = resolve_dtypes(make_cfg(train_dtype="auto", rollout_dtype="auto", lr=1e-3, kl_coef=0.04, filter_threshold=0.1,
                                  kl_reference="init"), CUDA)
    run = build_run(cfg, tiny_model_dir, tokenizer, problems)
    run.reference = load_model(tiny_model_dir, device="cuda").eval().requires_grad_(False)
    run.policy = run.policy.to(CUDA)
    run.optimizer = torch.optim.AdamW(run.policy.parameters(), lr=cfg.lr, fused=True)
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, lambda _: 1.0)
    run.engine = make_engine(cfg, run.policy, tokenizer)
    before = {name: p.detach().clone() for name, p in run.policy.named_parameters()}
    for step in range(2):
        out = rl_step(run, step)
        m = out.metrics
        assert len(out.rollouts) == cfg.prompts_per_step * cfg.group_size
        assert 0 < m["samples_kept"] < m["samples"]  # the scripted pattern's all-equal groups are dropped
        assert all(torch.isfinite(torch.tensor(float(m[k]))) for k in ("loss", "kl", "grad_norm"))
        # The engine's (bf16 copy) and the trainer's (bf16 autocast) log-probs of the sampled tokens:
        # both read the same weights, so they differ by bf16 rounding, not by nats.
        assert 0 <= m["logprob_gap_mean"] < 0.05, m["logprob_gap_mean"]
    for name, p in run.policy.named_parameters():
        assert p.device.type == "cuda" and p.dtype == torch.float32, name  # fp32 masters stay fp32
        assert torch.isfinite(p).all() and not torch.equal(p, before[name]), name


def test_the_rl_and_evaluate_stages_on_the_gpu_record_it_and_save_a_cpu_loadable_model(workspace, monkeypatch):
    """As DVC runs them (``python -m stages.rl``: the world from ``init_from_env``, the first GPU)."""
    from stages import evaluate as evaluate_stage
    from stages import prepare as prepare_stage
    from stages import rl as rl_stage

    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["rl"]["common"].update(train_dtype="auto", rollout_dtype="auto")
    raw["evaluate"]["generation"]["dtype"] = "auto"
    raw["evaluate"]["models"] = ["base", "dash"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(workspace / "params.yaml")
    expected = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"

    prepare_stage.main(params, "arith")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rl_stage.main(params, "dash", init_from_env())
    compute = json.loads((workspace / "data/rl/dash/run.json").read_text())["compute"]
    assert compute["gpu"] == torch.cuda.get_device_name(0)
    assert compute["dtypes"] == {"train_dtype": expected, "rollout_dtype": expected}
    model = load_model(workspace / "data/models/dash", device="cpu")  # saved from the GPU, loads anywhere
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())

    evaluate_stage.main(params, "dash", "arith")
    compute = json.loads((workspace / "data/eval/dash/arith/run.json").read_text())["compute"]
    assert compute["gpu"] == torch.cuda.get_device_name(0) and compute["dtypes"] == {"dtype": expected}
    metrics = json.loads((workspace / "data/eval/dash/arith/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_bf16_autocast_gradient_on_the_gpu_is_close_to_fp32(tiny_model_dir, tokenizer, problems, scripted_rewards):
    run = on_gpu(build_run(make_cfg(grad_clip=0.0), tiny_model_dir, tokenizer, problems, record_grads=True))
    loss_32, flat_32, loss_16, flat_16 = fp32_and_bf16_step(run)
    assert loss_16 == pytest.approx(loss_32, rel=0.01)
    assert float(torch.nn.functional.cosine_similarity(flat_32, flat_16, dim=0)) > 0.995
