"""DVC experiments on the real pipeline, as DVC users run them, in a tiny git + DVC repository.

`dvc exp run -S` reruns only the stages the changed param reaches and records the experiment;
`dvc exp show` lists it with its params and metrics; `dvc exp run --queue` + `dvc queue start` run
queued experiments in temporary copies (where an unchanged RL run must not rerun), and shows a
running one's latest step (its DVCLive metrics.json); `dvc params diff`, `dvc metrics diff` and
`dvc plots diff` (DVCLive's curves) compare the baseline with an experiment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import DVC, make_dvc_repo, run_cmd, stages_run, tiny_params_dict

pytestmark = [pytest.mark.skipif(shutil.which("git") is None, reason="needs git"), pytest.mark.slow]

DASH_STAGES = {"rl@dash", "evaluate@dash-arith", "report"}


def experiments(repo, env) -> dict[str, dict]:
    """`dvc exp show --json`: experiment name -> its data (params, metrics)."""
    shown = json.loads(run_cmd([*DVC, "exp", "show", "--json"], repo, env))
    return {rev["name"]: rev["data"] for baseline in shown for exp in baseline.get("experiments") or []
            for rev in exp["revs"]}


def start_queue(repo, env) -> None:
    """`dvc queue start`. Its worker keeps the command's stdout and stderr open until the queue is
    done, so they go to a file: the command returns at once, and `wait_for_queue` waits."""
    with (repo / ".dvc" / "tmp" / "queue-start.log").open("w") as log:
        result = subprocess.run([*DVC, "queue", "start"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    assert result.returncode == 0, (repo / ".dvc" / "tmp" / "queue-start.log").read_text()


def wait_for_queue(repo, env, timeout_s: float = 1800) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = run_cmd([*DVC, "queue", "status"], repo, env)
        if not any(word in status for word in ("Queued", "Running")):
            return status
        time.sleep(3)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{status}")


def stage_process(workspace: Path, module: str) -> int | None:
    """The pid of ``python -m <module>`` running in ``workspace`` (a queued experiment's copy), or None."""
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if module.encode() in cmdline and Path(os.readlink(proc / "cwd")) == workspace:
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


LIVE_STEPS = 40  # the `live` experiment's RL steps


def catch_running_step(repo: Path, env, marker: str, min_step: int, timeout_s: float = 900) -> tuple[dict, int]:
    """While the queue runs: the queued copy whose params.yaml contains ``marker``, paused (SIGSTOP) in
    its rl stage once DVCLive has written step ``min_step``; returns `dvc exp show --json` taken then,
    and the step DVCLive's metrics.json held. The stage continues (SIGCONT) afterwards."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for workspace in (repo / ".dvc" / "tmp" / "exps").glob("tmp*"):
            live = workspace / "data/rl/dash/live/metrics.json"
            params_file = workspace / "params.yaml"
            if not params_file.exists() or marker not in params_file.read_text(errors="replace"):
                continue
            pid = stage_process(workspace.resolve(), "stages.rl")
            if pid is None:
                continue
            os.kill(pid, signal.SIGSTOP)  # the step is read while the stage is stopped: it cannot move on
            try:
                try:
                    step = json.loads(live.read_text())["step"] if live.exists() else -1
                except (ValueError, KeyError):
                    continue  # stopped while writing it
                if step >= min_step:
                    return json.loads(run_cmd([*DVC, "exp", "show", "--json"], repo, env)), step
            finally:
                os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError(f"no running experiment with {marker!r} reached step {min_step} in {timeout_s} s")


@pytest.fixture
def baseline(tmp_path, tiny_model_dir):
    """SFT-H, DASH and GRPO on tiny params, reproduced and committed (dvc.lock included)."""
    raw = tiny_params_dict()
    raw["sft"]["runs"] = {"sft_h": {"source": "reference"}}
    raw["rl"]["runs"] = {"dash": {"init_from": "base", "filter_threshold": 0.1},  # spelled out: `-S` changes it
                         "grpo": {"init_from": "base", "sampling": "per_micro_batch", "filter_threshold": 0.0}}
    raw["evaluate"]["models"] = ["base", "dash"]
    raw["evaluate"]["generation"]["samples_per_problem"] = 1
    raw["report"]["bootstrap_samples"] = 1000
    repo, env = make_dvc_repo(tmp_path, raw, tiny_model_dir)
    run_cmd([*DVC, "repro"], repo, env)
    run_cmd(["git", "add", "-A"], repo, env)
    run_cmd(["git", "commit", "-qm", "baseline"], repo, env)
    yield repo, env
    if (repo / ".dvc" / "tmp" / "queue-start.log").exists():  # a test that failed mid-queue leaves no worker behind
        subprocess.run([*DVC, "queue", "stop", "--kill"], cwd=repo, env=env, capture_output=True, timeout=300, check=False)


def test_experiments_run_queue_show_live_dvclive_steps_and_diff(baseline):
    repo, env = baseline

    # One experiment in the workspace: only what the param reaches reruns.
    out = run_cmd([*DVC, "exp", "run", "-n", "thr02", "-S", "rl.runs.dash.filter_threshold=0.2"], repo, env)
    assert stages_run(out) == DASH_STAGES
    run_cmd(["git", "checkout", "--", "params.yaml", "dvc.lock"], repo, env)  # back to the baseline to queue from

    # Two queued experiments, run in temporary copies; `++` sets a key the run inherits from rl.common.
    run_cmd([*DVC, "exp", "run", "--queue", "-n", "one-step", "-S", "++rl.runs.dash.steps=1"], repo, env)
    run_cmd([*DVC, "exp", "run", "--queue", "-n", "thr03", "-S", "rl.runs.dash.filter_threshold=0.3"], repo, env)
    # `live` runs many tiny steps (tens of ms each here), so the poll below catches one mid-run.
    run_cmd([*DVC, "exp", "run", "--queue", "-n", "live", "-S", f"++rl.runs.dash.steps={LIVE_STEPS}"], repo, env)
    start_queue(repo, env)
    # `dvc exp show` while `live` trains: the running experiment (its queued copy) with its latest step,
    # read from the DVCLive metrics.json the rl stage rewrites as each step ends.
    # min_step 2: past the baseline's last step (1), whose DVCLive file the queued copy starts with.
    shown, live_step = catch_running_step(repo, env, marker=f"steps: {LIVE_STEPS}", min_step=2)
    (running,) = [exp for baseline in shown for exp in baseline.get("experiments") or []
                  if (exp.get("executor") or {}).get("state") == "running"]
    assert running["name"] == "live"
    latest = running["revs"][0]["data"]["metrics"]["data/rl/dash/live/metrics.json"]["data"]
    assert latest["step"] == live_step and 2 <= live_step < LIVE_STEPS - 1 and 0.0 <= latest["reward_mean"] <= 1.0
    status = wait_for_queue(repo, env)
    assert "Failed" not in status, status
    for name in ("one-step", "thr03", "live"):
        assert stages_run(run_cmd([*DVC, "queue", "logs", name], repo, env)) == DASH_STAGES, name  # rl@grpo is not rerun

    shown = experiments(repo, env)
    assert {"thr02", "one-step", "thr03"} <= set(shown)
    dash = {name: shown[name]["params"]["params.yaml"]["data"]["rl"]["runs"]["dash"] for name in ("thr02", "one-step", "thr03")}
    assert (dash["thr02"]["filter_threshold"], dash["thr03"]["filter_threshold"], dash["one-step"]["steps"]) == (0.2, 0.3, 1)
    for name in ("thr02", "one-step", "thr03"):
        metrics = shown[name]["metrics"]
        assert {"data/rl/dash/summary.json", "data/eval/dash/arith/metrics.json", "data/report/metrics.json"} <= set(metrics)
    assert shown["one-step"]["metrics"]["data/rl/dash/summary.json"]["data"]["steps"] == 1
    assert "dash_faster_than_grpo" in shown["one-step"]["metrics"]["data/report/metrics.json"]["data"]["findings"]

    # Baseline against an experiment: the param, the metric and the plot that changed.
    params = json.loads(run_cmd([*DVC, "params", "diff", "HEAD", "one-step", "--json"], repo, env))
    assert params == {"params.yaml": {"rl.runs.dash.steps": {"old": None, "new": 1}}}
    metrics = json.loads(run_cmd([*DVC, "metrics", "diff", "HEAD", "one-step", "--json"], repo, env))
    assert metrics["data/rl/dash/summary.json"]["steps"] == {"old": 2, "new": 1, "diff": -1}
    plots = json.loads(run_cmd([*DVC, "plots", "diff", "HEAD", "one-step", "--json"], repo, env))
    assert not plots.get("errors")
    points = plots["data"]["data/rl/dash/live/plots/metrics/reward_mean.tsv"][0]["content"]["data"]["values"]
    assert sorted(p["rev"] for p in points) == ["HEAD", "HEAD", "one-step"]  # DVCLive's curve: 2 steps, then 1
    assert experiments(repo, env)["live"]["metrics"]["data/rl/dash/live/metrics.json"]["data"]["step"] == LIVE_STEPS - 1
