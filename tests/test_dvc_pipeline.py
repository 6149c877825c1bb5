"""The real DVC pipeline on tiny params in a temporary git + DVC repository.

Checks what DVC is for: a first `dvc repro` runs every stage; a second runs none; changing one
RL run's key (rl.runs.dash.filter_threshold) reruns exactly that run, the evaluations of its
model and the report; `dvc plots show` draws the runs' DVCLive curves. A seeds profile gives one
stage per run and seed. A forced rerun that reproduces a model leaves the stages that read it up to
date (run records live outside model dirs).
"""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from dashrl.config.profiles import apply_profile
from dashrl.infra.files import dir_sha256
from tests.conftest import DVC, REPO, make_dvc_repo, run_cmd, stages_run, tiny_params_dict

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture
def dvc_repo(tmp_path, tiny_model_dir):
    raw = tiny_params_dict()
    raw["evaluate"]["models"] = ["base", "sft_h", "dash", "grpo"]
    raw["evaluate"]["pass_k"]["models"] = ["base", "dash"]
    return make_dvc_repo(tmp_path, raw, tiny_model_dir)


def test_one_rl_run_reruns_alone_and_dvc_plots_show_every_runs_dvclive_curves(dvc_repo):
    repo, env = dvc_repo
    first = stages_run(run_cmd([*DVC, "repro"], repo, env))
    assert first == {
        "prepare@arith", "model", "sft@sft_h", "rl@dash", "rl@grpo", "evaluate@base-arith", "evaluate@sft_h-arith",
        "evaluate@dash-arith", "evaluate@grpo-arith", "passk@base-arith", "passk@dash-arith", "report",
    }
    for table in ("table1", "table3", "table5", "table6", "findings", "seeds"):
        assert (repo / f"data/report/{table}.md").is_file() and (repo / f"data/report/{table}.csv").is_file()
    assert stages_run(run_cmd([*DVC, "repro"], repo, env)) == set()
    # The report's metrics and the training stages' DVCLive metrics and plots are DVC's: every run's
    # per-step curves, read without errors and with no report stage in between.
    metrics = run_cmd([*DVC, "metrics", "show"], repo, env)
    assert {"data/report/metrics.json", "data/rl/dash/live/metrics.json", "data/sft/sft_h/live/metrics.json"} <= set(metrics.split())
    plots = json.loads(run_cmd([*DVC, "plots", "show", "--json"], repo, env))
    assert not plots.get("errors")
    series = {f"data/rl/{run}/live/plots/metrics/{name}.tsv" for run in ("dash", "grpo")
              for name in ("reward_mean", "kept_fraction", "loss", "kl")} | {"data/sft/sft_h/live/plots/metrics/loss.tsv"}
    assert series <= set(plots["data"])
    points = plots["data"]["data/rl/grpo/live/plots/metrics/reward_mean.tsv"][0]["content"]["data"]["values"]
    grpo_log = [json.loads(line) for line in (repo / "data/rl/grpo/metrics.jsonl").read_text().splitlines()]
    assert [(int(p["step"]), float(p["reward_mean"])) for p in points] == [(m["step"], m["reward_mean"]) for m in grpo_log]
    assert not (repo / "data/report/curves").exists()

    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["rl"]["runs"]["dash"]["filter_threshold"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert stages_run(run_cmd([*DVC, "repro"], repo, env)) == {"rl@dash", "evaluate@dash-arith", "passk@dash-arith", "report"}
    assert "filter_threshold: 0.3" in (repo / "dvc.lock").read_text()


def test_the_seeds_profile_gives_one_stage_per_run_and_seed(dvc_repo):
    repo, env = dvc_repo
    apply_profile(repo / "params.yaml", [REPO / "profiles/seeds.yaml"])
    stages = set(run_cmd([*DVC, "stage", "list", "--name-only"], repo, env).split())
    seeded = {f"{kind}@{run}-s{seed}{suffix}" for run in ("dash", "grpo") for seed in (1, 2)
              for kind, suffix in (("rl", ""), ("evaluate", "-arith"))}
    assert seeded | {"passk@dash-s1-arith", "passk@dash-s2-arith"} <= stages
    assert "passk@grpo-s1-arith" not in stages  # grpo is not in evaluate.pass_k.models
    assert "rl@dash-s1" in run_cmd([*DVC, "status", "rl@dash-s1"], repo, env)  # DVC reads its params: a new stage, never run


def test_a_forced_rerun_that_reproduces_a_model_leaves_the_stages_that_read_it_up_to_date(tmp_path, tiny_model_dir):
    """`dvc repro -f -s model` and `-f -s rl@dash` (trained again from scratch) write new run records
    (times, machine) but the same model directories, so the RL run, the evaluations and pass@k of
    those models stay up to date: nothing reruns for nothing."""
    raw = tiny_params_dict()
    raw["evaluate"]["models"] = ["base", "dash"]
    raw["evaluate"]["pass_k"]["models"] = ["dash"]
    repo, env = make_dvc_repo(tmp_path, raw, tiny_model_dir)
    env = {**env, "OMP_NUM_THREADS": "1"}  # one thread: the same float sums in the same order on every run
    readers = ["rl@dash", "evaluate@base-arith", "evaluate@dash-arith", "passk@dash-arith"]
    run_cmd([*DVC, "repro", *readers], repo, env)

    def stale(stages: list[str]) -> dict:
        return json.loads(run_cmd([*DVC, "status", "--json", *stages], repo, env))

    assert stale(readers) == {}
    model_record = (repo / "data/runs/model.json").read_text()
    base = dir_sha256(repo / "data/models/base")
    assert stages_run(run_cmd([*DVC, "repro", "-f", "-s", "model"], repo, env)) == {"model"}
    assert (repo / "data/runs/model.json").read_text() != model_record  # a new run record (its time) ...
    assert dir_sha256(repo / "data/models/base") == base  # ... beside the same model directory
    assert stale(readers) == {}

    dash, dash_record = dir_sha256(repo / "data/models/dash"), (repo / "data/rl/dash/run.json").read_text()
    shutil.rmtree(repo / "data/work/rl/dash")  # no checkpoint to resume from: the run trains again
    assert stages_run(run_cmd([*DVC, "repro", "-f", "-s", "rl@dash"], repo, env)) == {"rl@dash"}
    assert (repo / "data/rl/dash/run.json").read_text() != dash_record
    assert dir_sha256(repo / "data/models/dash") == dash and (repo / "data/models/dash/README.md").is_file()
    assert stale(["evaluate@dash-arith", "passk@dash-arith"]) == {}
