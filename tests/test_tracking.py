"""Live training metrics (dashrl.infra.tracking): DVCLive files the sft and rl stages write step by
step, a resumed run's files, report_to validation, and each optional backend read back offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pandas as pd
import pytest

import dashrl.infra.tracking as tracking
import dashrl.rl.loop
import stages.rl as rl_stage
import stages.sft as sft_stage
from dashrl.config.params import ParamsError, ReportTo, load_params
from dashrl.infra.tracking import TRACKERS, TrackerContext, numeric_metrics, open_trackers
from stages import prepare as prepare_stage
from tests.test_stages import edit_params

REPO = Path(__file__).resolve().parents[1]


def read_live(live_dir: Path) -> dict[str, pd.DataFrame]:
    """DVCLive's per-metric .tsv files: metric name -> its (step, value) rows."""
    return {p.stem: pd.read_csv(p, sep="\t") for p in sorted((live_dir / "plots" / "metrics").glob("*.tsv"))}


def assert_live_equals_log(live_dir: Path, log: list[dict]) -> None:
    """Every numeric metric of every step of ``log`` (a metrics.jsonl) is one .tsv row, in step order,
    and metrics.json holds the last step."""
    series = read_live(live_dir)
    expected_names = set().union(*(numeric_metrics(m) for m in log))
    assert set(series) == expected_names
    for name, frame in series.items():
        logged = [(m["step"], numeric_metrics(m)[name]) for m in log if name in numeric_metrics(m)]
        assert list(frame.columns) == ["step", name]
        assert frame["step"].tolist() == [step for step, _ in logged], name
        assert frame[name].tolist() == pytest.approx([value for _, value in logged]), name
    latest = json.loads((live_dir / "metrics.json").read_text())
    assert latest == pytest.approx({**numeric_metrics(log[-1]), "step": log[-1]["step"]})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


# ------------------------------------------------------------------------------------------------
# The stages' DVCLive files


def test_dvclive_files_of_the_rl_and_sft_stages_equal_their_metrics_jsonl(workspace):
    params = load_params(workspace / "params.yaml")
    assert params.rl.run("dash").report_to == ["dvclive"] and params.sft.run("sft_h").report_to == ["dvclive"]
    prepare_stage.main(params, "arith")
    sft_stage.main(params, "sft_h")
    rl_stage.main(params, "dash")

    rl_log = read_jsonl(workspace / "data/rl/dash/metrics.jsonl")
    assert [m["step"] for m in rl_log] == [0, 1]
    assert_live_equals_log(workspace / "data/rl/dash/live", rl_log)
    assert {"reward_mean", "kept_fraction", "loss", "kl", "time_step_s"} <= set(read_live(workspace / "data/rl/dash/live"))
    sft_log = read_jsonl(workspace / "data/sft/sft_h/metrics.jsonl")
    assert_live_equals_log(workspace / "data/sft/sft_h/live", sft_log)
    assert set(read_live(workspace / "data/sft/sft_h/live")) == {"epoch", "loss", "tokens"}
    # DVCLive writes no dvc.yaml of its own and makes no experiment: the project's dvc.yaml declares its files.
    assert not list(workspace.rglob("dvc.yaml")) and not (workspace / "dvclive").exists()


def test_dvclive_files_hold_each_rl_step_as_it_ends(workspace, monkeypatch):
    """Live: when step k starts, the files already hold step k - 1 (dvc exp show / plots read them mid-run)."""
    params = edit_params(workspace / "params.yaml", lambda r: r["rl"]["common"].update(steps=3))
    prepare_stage.main(params, "arith")
    live = workspace / "data/rl/dash/live"
    seen: list[tuple[int, int | None, list[int]]] = []
    real_step = dashrl.rl.loop.rl_step

    def observed_step(run, step):
        latest = json.loads((live / "metrics.json").read_text())["step"] if (live / "metrics.json").exists() else None
        rewards = read_live(live)["reward_mean"]["step"].tolist() if (live / "plots").exists() else []
        seen.append((step, latest, rewards))
        return real_step(run, step)

    monkeypatch.setattr(dashrl.rl.loop, "rl_step", observed_step)
    rl_stage.main(params, "dash")
    assert seen == [(0, None, []), (1, 0, [0]), (2, 1, [0, 1])]


@pytest.mark.parametrize("live_dir_kept", [True, False], ids=["files-kept", "files-removed-by-dvc"])
def test_dvclive_files_of_a_resumed_rl_run_equal_an_uninterrupted_runs(workspace, monkeypatch, live_dir_kept):
    """Killed in step 3 after the step-2 checkpoint: step 2 was already in the live files. The resumed
    run redoes steps 2 and 3 and its files hold steps 0-3 once each, like an uninterrupted run's,
    whether the files survived (a rerun by hand) or DVC removed the stage's outputs first."""
    params = edit_params(workspace / "params.yaml", lambda r: r["rl"]["common"].update(steps=4, checkpoint_every=2))
    prepare_stage.main(params, "arith")
    real_step, calls = dashrl.rl.loop.rl_step, []

    def killed_in_step_3(run, step):
        calls.append(step)
        if step == 3 and calls.count(3) == 1:
            raise RuntimeError("killed during step 3")
        return real_step(run, step)

    monkeypatch.setattr(dashrl.rl.loop, "rl_step", killed_in_step_3)
    with pytest.raises(RuntimeError, match="killed"):
        rl_stage.main(params, "dash")
    live = workspace / "data/rl/dash/live"
    assert read_live(live)["reward_mean"]["step"].tolist() == [0, 1, 2]  # step 2: after the checkpoint
    if not live_dir_kept:
        shutil.rmtree(live)
    rl_stage.main(params, "dash")
    assert calls == [0, 1, 2, 3, 2, 3]  # resumed from the step-2 checkpoint

    log = read_jsonl(workspace / "data/rl/dash/metrics.jsonl")
    assert [m["step"] for m in log] == [0, 1, 2, 3]
    assert_live_equals_log(live, log)

    # An uninterrupted run of the same params writes the same series (timings aside).
    monkeypatch.setattr(dashrl.rl.loop, "rl_step", real_step)
    resumed = read_live(live)
    shutil.rmtree(workspace / "data/work")
    rl_stage.main(params, "dash")
    uninterrupted = read_live(live)
    assert set(resumed) == set(uninterrupted)
    for name in ("reward_mean", "kept_fraction", "loss", "kl", "samples_kept", "completion_tokens_mean"):
        pd.testing.assert_frame_equal(resumed[name], uninterrupted[name])


def test_dvclive_files_are_written_at_the_end_when_report_to_is_none(workspace):
    """report_to: [none] sends nothing live, but the DVC outputs dvc.yaml declares still exist."""
    params = edit_params(workspace / "params.yaml", lambda r: r["sft"]["common"].update(report_to=["none"]))
    prepare_stage.main(params, "arith")
    sft_stage.main(params, "sft_h")
    assert_live_equals_log(workspace / "data/sft/sft_h/live", read_jsonl(workspace / "data/sft/sft_h/metrics.jsonl"))


# ------------------------------------------------------------------------------------------------
# report_to


def test_dvclive_and_the_other_trackers_are_the_params_names():
    assert set(TRACKERS) | {"none"} == set(typing.get_args(ReportTo))
    assert TRACKERS["dvclive"].module == "dvclive"


@pytest.mark.parametrize(("section", "value", "why"), [
    ("rl", ["dvclive", "neptune"], r"report_to\[1\]: 'neptune' is not one of"),
    ("rl", ["none", "dvclive"], r"rl.runs.dash.report_to: \['none', 'dvclive'\]: 'none' turns every tracker off"),
    ("sft", ["tensorboard", "tensorboard"], r"sft.runs.sft_h.report_to: \['tensorboard', 'tensorboard'\]: a tracker is listed twice"),
    ("rl", "dvclive", r"report_to: expected a list, got 'dvclive'"),
])
def test_bad_report_to_is_a_params_error_naming_key_and_value(workspace, section, value, why):
    with pytest.raises(ParamsError, match=why):  # at load time, before any stage starts
        edit_params(workspace / "params.yaml", lambda r: r[section]["common"].update(report_to=value))


def test_report_to_with_a_missing_package_fails_before_any_model_loads(workspace, monkeypatch):
    params = edit_params(workspace / "params.yaml", lambda r: r["rl"]["common"].update(report_to=["dvclive", "wandb"]))
    real_find_spec = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real_find_spec(name))

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the tracker check")

    monkeypatch.setattr(rl_stage, "load_tokenizer", no_model)
    monkeypatch.setattr(rl_stage, "training_inputs", no_model)
    with pytest.raises(ModuleNotFoundError,
                       match=r"rl.runs.dash.report_to: 'wandb': package 'wandb' is not installed; pip install 'dashrl\[wandb\]'"):
        rl_stage.main(params, "dash")


def test_report_to_none_opens_no_tracker(tmp_path):
    trackers = open_trackers(["none"], TrackerContext("rl@x", tmp_path / "live", tmp_path / "tracking"))
    trackers.log({"loss": 1.0}, 0)
    trackers.close()
    assert trackers.backends == {} and not (tmp_path / "live").exists()


def test_numeric_metrics_keeps_finite_numbers_only():
    record = {"step": 3, "loss": 0.5, "samples": 8, "ok": True, "note": "x", "gap": float("nan"), "kl": None}
    assert numeric_metrics(record) == {"loss": 0.5, "samples": 8, "ok": 1}


# ------------------------------------------------------------------------------------------------
# The optional backends, offline

STEPS = [{"step": s, "loss": 1.0 / (s + 1), "reward_mean": 0.25 * s, "note": "not a number"} for s in range(3)]


def log_steps(report_to: list[str], tmp_path: Path) -> tracking.Trackers:
    context = TrackerContext("rl@test", tmp_path / "live", tmp_path / "tracking", config={"rl": {"lr": 0.001, "group_size": 4}})
    trackers = open_trackers(report_to, context)
    for record in STEPS:
        trackers.log(record, record["step"])
    return trackers


def test_tensorboard_event_file_reads_back(tmp_path):
    pytest.importorskip("tensorboard", reason="the tensorboard extra: pip install 'dashrl[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_steps(["dvclive", "tensorboard"], tmp_path).close()
    events = EventAccumulator(str(tmp_path / "tracking" / "tensorboard"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "reward_mean"}
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(0, 0.0), (1, 0.25), (2, 0.5)]
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    assert read_live(tmp_path / "live")["loss"]["step"].tolist() == [0, 1, 2]  # and DVCLive beside it


def test_mlflow_run_reads_back_from_its_sqlite_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the mlflow extra: pip install 'dashrl[mlflow]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    log_steps(["mlflow"], tmp_path).close()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("dashrl").experiment_id])
    assert run.info.run_name == "rl@test" and run.info.status == "FINISHED"
    assert run.data.params == {"rl.lr": "0.001", "rl.group_size": "4"}
    history = client.get_metric_history(run.info.run_id, "reward_mean")
    assert [(m.step, m.value) for m in history] == [(0, 0.0), (1, 0.25), (2, 0.5)]


def test_wandb_offline_run_holds_the_steps(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'dashrl[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    trackers = log_steps(["wandb"], tmp_path)
    run = trackers.backends["wandb"].run
    assert (run.name, run.project, run.config["rl"]["lr"]) == ("rl@test", "dashrl", 0.001)
    assert (run.summary["reward_mean"], run.summary["loss"], run.summary["_step"]) == (0.5, pytest.approx(1 / 3), 2)
    trackers.close()
    (record_file,) = (tmp_path / "tracking" / "wandb").glob("offline-run-*/run-*.wandb")
    content = record_file.read_bytes()
    assert b"reward_mean" in content and b"rl@test" in content  # the run's history records, on disk offline


def test_trackio_local_run_reads_back(tmp_path):
    """Trackio needs pillow<13 (constraints.txt pins 13): installed by hand, it runs here in a
    subprocess with TRACKIO_DIR in a temp directory (trackio reads it at import)."""
    try:
        import importlib.util

        if importlib.util.find_spec("trackio") is None:
            pytest.skip("trackio is not installed (pip install 'dashrl[trackio]', without constraints.txt's pillow pin)")
    except ValueError:
        pytest.skip("trackio is not importable")
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from tests.test_tracking import log_steps\n"
        "log_steps(['trackio'], Path(sys.argv[1])).close()\n"
        "from trackio.sqlite_storage import SQLiteStorage\n"
        "print('LOGS=' + json.dumps([{k: r[k] for k in ('step', 'loss', 'reward_mean')} for r in SQLiteStorage.get_logs('dashrl', 'rl@test')]))\n"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=300, check=True).stdout
    (line,) = [line for line in out.splitlines() if line.startswith("LOGS=")]
    logs = json.loads(line.removeprefix("LOGS="))
    assert [(r["step"], r["reward_mean"]) for r in logs] == [(0, 0.0), (1, 0.25), (2, 0.5)]
