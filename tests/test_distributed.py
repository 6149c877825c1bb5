"""Data-parallel RL over 2 gloo processes on CPU, launched with torchrun (dashrl.infra.distributed).

One torchrun launch of ``distributed_worker.py`` runs every scenario on both ranks (DASH, standard
GRPO, PPO-Multi x PPO-Mini, and ``train`` with AdamW); the tests compare what each rank saved with
the same code run in this one process on the same fixed batch. A second launch runs the RL stage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import distributed_worker as worker
import pandas as pd
import pytest
import torch
from conftest import REPO
from test_rl import make_cfg, one_thread, parity_grade_batch  # noqa: F401 (one_thread: autouse fixture)

import dashrl.rl.loop
import dashrl.rl.run
from dashrl.config.params import load_params
from dashrl.infra.distributed import SINGLE, World, init_from_env
from dashrl.infra.files import read_jsonl
from dashrl.models import load_model
from dashrl.rl.run import check_world
from stages import prepare as prepare_stage

TIMEOUT_S = 150  # a hung collective must not hang the suite


def torchrun(args: list[str], cwd: Path, nproc: int = 2) -> str:
    """``torchrun --standalone`` (rendezvous on a free local port) with a hard timeout; returns the log."""
    # CPU processes (gloo) also on a machine with GPUs: these tests check the CPU data-parallel path.
    python_path = [str(REPO), str(REPO / "tests"), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers: their own process group
        log, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s:\n{log[-4000:]}")
    assert proc.returncode == 0, f"torchrun exited with {proc.returncode}:\n{log[-6000:]}"
    return log


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    torchrun([str(REPO / "tests" / "distributed_worker.py"), str(out), str(tiny_model_dir)], cwd=out)
    return out


@pytest.fixture
def fixed_batch(monkeypatch):
    """In this process, what the worker sets up on each rank: fixed completions, parity rewards."""
    monkeypatch.setattr(dashrl.rl.loop, "grade_completions", parity_grade_batch)
    monkeypatch.setattr(dashrl.rl.run, "make_engine", lambda cfg, policy, tokenizer, world=None, share_policy=True: worker.FixedEngine(tokenizer))


def saved(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def without_wall_time(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "time_step_s"} for m in metrics]


# ------------------------------------------------------------------------------------------------
# 2 processes make the update of 1


@pytest.mark.parametrize("name", list(worker.SCENARIOS))
def test_two_processes_make_the_update_of_one(two_ranks, tiny_model_dir, fixed_batch, name):
    run, outs = worker.run_updates(name, tiny_model_dir, SINGLE)
    initial = load_model(tiny_model_dir).state_dict()
    one, two = run.policy.state_dict(), saved(two_ranks / name / "rank0.pt")
    assert one.keys() == two.keys()
    for key in one:
        update = one[key] - initial[key]
        assert float(update.abs().max()) > 1e-5, f"{key} did not move: the comparison would prove nothing"
        assert torch.allclose(two[key], one[key], rtol=1e-6, atol=1e-8), key
    # The whole update, relative to its size (summation order differs: rank sums, then their sum).
    diff = torch.cat([(two[k] - one[k]).flatten() for k in one]).norm()
    size = torch.cat([(one[k] - initial[k]).flatten() for k in one]).norm()
    assert float(diff / size) < 1e-5

    # Each rank sampled its share; gathered, they are the step of one process, in the same order.
    pd.testing.assert_frame_equal(pd.read_parquet(two_ranks / name / "rank0.parquet"),
                                  pd.concat([o.rollouts for o in outs]).reset_index(drop=True))
    metrics_two = json.loads((two_ranks / name / "rank0.json").read_text())
    for m1, m2 in zip([o.metrics for o in outs], metrics_two, strict=True):
        for key in ("reward_mean", "samples", "samples_kept", "tokens_kept", "tokens_dropped",
                    "zero_variance_group_fraction", "optimizer_steps", "skipped_optimizer_steps"):
            assert m2[key] == m1[key], key
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-8)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    # The batch exercises what makes the split hard: filtered groups, and for PPO skipped updates.
    assert 0 < sum(m["samples_kept"] for m in metrics_two) < sum(m["samples"] for m in metrics_two)
    if name == "ppo":
        assert metrics_two[0]["optimizer_steps"] + metrics_two[0]["skipped_optimizer_steps"] == 8
        assert metrics_two[0]["skipped_optimizer_steps"] > 0


def test_every_rank_ends_with_the_same_weights_and_metrics(two_ranks):
    for name in worker.SCENARIOS:
        rank0, rank1 = saved(two_ranks / name / "rank0.pt"), saved(two_ranks / name / "rank1.pt")
        assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), name
        metrics = [json.loads((two_ranks / name / f"rank{r}.json").read_text()) for r in (0, 1)]
        assert without_wall_time(metrics[0]) == without_wall_time(metrics[1]), name
    rank0, rank1 = saved(two_ranks / "train_rank0.pt"), saved(two_ranks / "train_rank1.pt")  # AdamW, 2 steps
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)


def test_train_over_two_processes_writes_from_rank_0_only(two_ranks, tiny_model_dir, fixed_batch, tmp_path):
    work = two_ranks / "train" / "rank0" / "work"
    assert not (two_ranks / "train" / "rank1").exists()  # rank 1 trained (same weights above), wrote nothing
    assert sorted(p.name for p in (work / "rollouts").iterdir()) == ["step-000000.parquet", "step-000001.parquet"]
    assert len(pd.read_parquet(work / "rollouts" / "step-000001.parquet")) == 8 * 4  # both ranks' samples
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["step-000002"]

    # The same run in one process: the same samples and rewards; AdamW amplifies float rounding
    # where a gradient is ~0 (its first steps are ~lr x sign(g)), so weights agree to ~lr only.
    one = worker.run_train(tiny_model_dir, two_ranks / "train.parquet", tmp_path / "work", SINGLE)
    metrics_one, metrics_two = read_jsonl(tmp_path / "work" / "metrics.jsonl"), read_jsonl(work / "metrics.jsonl")
    for m1, m2 in zip(metrics_one, metrics_two, strict=True):
        assert (m2["reward_mean"], m2["samples_kept"], m2["optimizer_steps"]) == (m1["reward_mean"], m1["samples_kept"], m1["optimizer_steps"])
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-7)
    two = saved(two_ranks / "train_rank0.pt")
    lr = worker.TRAIN["lr"]
    assert all(torch.allclose(two[k], v, rtol=0, atol=0.1 * lr) for k, v in one.policy.state_dict().items())


# ------------------------------------------------------------------------------------------------
# The RL stage under torchrun


def test_rl_stage_runs_under_torchrun(workspace):
    prepare_stage.main(load_params("params.yaml"), "arith")
    log = torchrun(["-m", "stages.rl", "dash"], cwd=workspace)
    out = workspace / "data/rl/dash"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    assert all(m["samples"] == 2 * 4 for m in metrics)  # the whole step: 1 prompt per rank, gathered
    assert len(pd.read_parquet(out / "rollouts/step-000001.parquet")) == 2 * 4
    assert json.loads((out / "summary.json").read_text())["samples_total"] == 16
    assert (workspace / "data/models/dash/model.safetensors").is_file()
    assert log.count("rl@dash done") == 1  # rank 0 reports; rank 1 exits after training
    live = pd.read_csv(out / "live/plots/metrics/samples.tsv", sep="\t")  # DVCLive from rank 0 only: each step once
    assert live.values.tolist() == [[0, 8], [1, 8]]


def test_rl_stage_runs_sharded_under_torchrun(workspace):
    """parallel: fsdp through the stage: the final model is gathered onto rank 0 as one HF directory."""
    import yaml

    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["rl"]["common"]["parallel"] = "fsdp"
    # The tiny random model earns no reward: with the filter off and weight decay every step still
    # moves every weight by the same factor (AdamW's decoupled decay; zero gradients add nothing).
    params["rl"]["common"].update(filter_threshold=0.0, weight_decay=0.5, kl_coef=0.0)
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    prepare_stage.main(load_params("params.yaml"), "arith")
    log = torchrun(["-m", "stages.rl", "dash"], cwd=workspace)
    assert log.count("rl@dash done") == 1
    saved_model = load_model(workspace / "data/models/dash")
    initial = load_model(workspace / "data/models/base").state_dict()
    state = saved_model.state_dict()
    assert state.keys() == initial.keys()
    assert all(state[k].shape == initial[k].shape for k in state)  # whole tensors, not a rank's shard
    metrics = [json.loads(line) for line in (workspace / "data/rl/dash/metrics.jsonl").read_text().splitlines()]
    moved = any(not torch.equal(state[k], initial[k]) for k in state)
    assert sum(m["optimizer_steps"] for m in metrics) == 2 and moved
    factors = torch.cat([(state[k] / initial[k])[initial[k].abs() > 1e-3].flatten() for k in state])
    assert float(factors.max() - factors.min()) < 1e-5 and float(factors.mean()) < 1  # one factor: every shard gathered


# ------------------------------------------------------------------------------------------------
# Start-up checks and the single-process world


def test_batch_geometry_that_cannot_be_split_is_refused_with_param_and_value():
    with pytest.raises(ValueError, match=r"prompts_per_step: 8: not a multiple of the 3 processes"):
        check_world(make_cfg(prompts_per_step=8), World(rank=0, size=3))
    # per_micro_batch: each process's 3 prompts are not whole micro-batches of 2 prompts.
    cfg = make_cfg(prompts_per_step=6, micro_batch_size=8, sampling="per_micro_batch")
    with pytest.raises(ValueError, match=r"micro_batch_size: 8: sampling: per_micro_batch over 2 processes .* = 2"):
        check_world(cfg, World(rank=1, size=2))
    check_world(cfg, SINGLE)
    check_world(make_cfg(prompts_per_step=8, ppo_epochs=2, optimizer_steps_per_rollout=4), World(rank=0, size=2))


def test_without_torchrun_there_is_one_process_and_no_communication(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the CPU case (tests/test_gpu.py: the GPU one)
    assert init_from_env() is SINGLE
    assert (SINGLE.rank, SINGLE.size, SINGLE.is_main, SINGLE.shard(8)) == (0, 1, True, range(0, 8))
    items, counts, values = [1, 2], {"sequences": 3, "tokens": 10}, {"a": 1.5}
    assert SINGLE.gather_objects(items) is items
    assert SINGLE.sum_counts(counts) is counts
    assert SINGLE.sum_floats(values) is values and SINGLE.max_floats(values) is values
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"):
        init_from_env()


# ------------------------------------------------------------------------------------------------
# parallel: fsdp (FSDP2 over 2 gloo processes): the update of one process, and resume from shards


@pytest.fixture(scope="module")
def two_fsdp_ranks(tmp_path_factory, tiny_model_dir) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    torchrun([str(REPO / "tests" / "distributed_worker.py"), str(out), str(tiny_model_dir), "fsdp"], cwd=out)
    return out


@pytest.mark.parametrize("name", [n for n in worker.SCENARIOS if n not in worker.SAMPLED])
def test_fsdp_over_two_processes_makes_the_update_of_one(two_fsdp_ranks, tiny_model_dir, fixed_batch, name):
    """Sharded params, grads and optimizer state; filtering leaves the ranks different numbers of
    micro-batches (padded with empty passes); the global normaliser and clip: one process's update."""
    run, outs = worker.run_updates(name, tiny_model_dir, SINGLE)
    initial = load_model(tiny_model_dir).state_dict()
    one, two = run.policy.state_dict(), saved(two_fsdp_ranks / name / "rank0.pt")
    assert one.keys() == two.keys()
    assert not (two_fsdp_ranks / name / "rank1.pt").exists()  # gathered onto rank 0 only
    for key in one:
        assert float((one[key] - initial[key]).abs().max()) > 1e-5, f"{key} did not move"
        assert torch.allclose(two[key], one[key], rtol=1e-6, atol=1e-8), key
    metrics_two = json.loads((two_fsdp_ranks / name / "rank0.json").read_text())
    for m1, m2 in zip([o.metrics for o in outs], metrics_two, strict=True):
        for key in ("samples_kept", "optimizer_steps", "skipped_optimizer_steps"):
            assert m2[key] == m1[key], key
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-5, abs=1e-8)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-5)
    pd.testing.assert_frame_equal(pd.read_parquet(two_fsdp_ranks / name / "rank0.parquet"),
                                  pd.concat([o.rollouts for o in outs]).reset_index(drop=True))


def test_fsdp_resumes_from_its_checkpoint_and_saves_one_hf_directory(two_fsdp_ranks, tiny_model_dir, fixed_batch,
                                                                     tmp_path):
    full, resumed = saved(two_fsdp_ranks / "train_full.pt"), saved(two_fsdp_ranks / "train_resumed.pt")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)  # step 2 redone from step 1's shards: the same
    checkpoint = two_fsdp_ranks / "train" / "work" / "checkpoints" / "step-000002"
    # The checkpoint is the replicated format: one HF directory, optimizer state keyed by index.
    reloaded = load_model(checkpoint).state_dict()
    assert all(torch.equal(reloaded[k], full[k]) for k in full)
    one = worker.run_train(tiny_model_dir, two_fsdp_ranks / "train.parquet", tmp_path / "work", SINGLE)
    from safetensors.torch import load_file
    mine = load_file(str(tmp_path / "work" / "checkpoints" / "step-000002" / "optimizer.safetensors"))
    theirs = load_file(str(checkpoint / "optimizer.safetensors"))
    assert mine.keys() == theirs.keys()
    lr = worker.TRAIN["lr"]
    assert all(torch.allclose(full[k], v, rtol=0, atol=0.1 * lr) for k, v in one.policy.state_dict().items())
