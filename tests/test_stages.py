"""Stages end to end on tiny params in a temporary repository root (no DVC: the stage functions)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from dashrl.config.params import load_params
from dashrl.data.schema import ProblemDataError, read_problems
from stages import evaluate as evaluate_stage
from stages import model as model_stage
from stages import prepare as prepare_stage
from stages import report as report_stage
from stages import rl as rl_stage
from stages import sft as sft_stage


def edit_params(path, edit):
    raw = yaml.safe_load(path.read_text())
    edit(raw)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return load_params(path)


def test_prepare_evaluate_report_end_to_end(workspace):
    def only_base(raw):
        raw["sft"]["runs"], raw["rl"]["runs"] = {}, {}

    params = edit_params(workspace / "params.yaml", only_base)
    prepare_stage.main(params, "arith")
    train, test = read_problems("data/prepared/arith/train.parquet"), read_problems("data/prepared/arith/test.parquet")
    assert (len(train), len(test)) == (40, 12)
    assert set(test["level"]) == {1, 4}
    run = json.loads((workspace / "data/prepared/arith/run.json").read_text())
    assert run["params"]["prepare.arith"]["seed"] == 0 and run["counts"] == {"train": 40, "test": 12}

    evaluate_stage.main(params, "base", "arith")
    out = workspace / "data/eval/base/arith"
    rows = pd.read_parquet(out / "problems.parquet")
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(rows) == 12 * 2 and set(rows["sample"]) == {0, 1}
    assert rows["tokens"].between(1, 12).all()
    assert metrics["n_problems"] == 12 and metrics["samples_per_problem"] == 2
    assert metrics["accuracy"] == pytest.approx(rows.loc[rows["sample"] == 0, "reward"].mean())
    assert {"pass@1", "pass@2", "mean@2", "boxed_rate", "truncation_rate", "generation_tokens_per_s"} <= set(metrics)
    assert sum(metrics["grader_status_counts"].values()) == 24
    assert json.loads((out / "run.json").read_text())["params"]["generation"]["max_new_tokens"] == 12

    evaluate_stage.main(params, "base", "arith", pass_k=True)
    passk = json.loads((workspace / "data/passk/base/arith/metrics.json").read_text())
    assert passk["n_problems"] == 6 and passk["samples_per_problem"] == 4
    assert {"pass@1", "pass@2", "pass@4"} <= set(passk) and passk["pass@1"] <= passk["pass@2"] <= passk["pass@4"]

    report_stage.main(params)
    report = workspace / "data/report"
    table1 = pd.read_csv(report / "table1.csv")
    assert table1["config"].tolist() == ["base", "sft_h", "sft_m", "dash"]
    assert table1["status"].tolist() == ["ok", "not run", "not run", "not run"]
    assert table1["accuracy_arith"].iloc[0] == pytest.approx(metrics["accuracy"]) and table1["accuracy_arith"].iloc[1:].isna().all()
    table = pd.read_csv(report / "results.csv")
    assert table[["model", "benchmark"]].values.tolist() == [["base", "arith"]]
    assert table["accuracy"].iloc[0] == pytest.approx(metrics["accuracy"])
    assert table["accuracy_lo"].iloc[0] <= table["accuracy"].iloc[0] <= table["accuracy_hi"].iloc[0]  # Wilson, 12 problems
    assert table1["accuracy_arith_lo"].iloc[0] == pytest.approx(table["accuracy_lo"].iloc[0])
    findings = pd.read_csv(report / "findings.csv")
    assert set(findings["verdict"]) == {"not run"} and "not run: dash, grpo" in findings["method"].tolist()
    assert json.loads((report / "metrics.json").read_text())["accuracy"]["base"]["arith"]["seeds"] == 1
    md = (report / "results.md").read_text()
    assert "| base | arith | 12 |" in md and "require_box=False" in md
    for png in ("accuracy.png", "accuracy_by_level.png", "fig1_time_split.png", "fig3_filtering.png",
                "fig4_reward_vs_time.png", "fig5_pass_at_k.png", "fig6_kl.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sft_rl_evaluate_report_matrix_end_to_end(workspace):
    """SFT-H and SFT-M, DASH and GRPO (one from the SFT model), every evaluation, the paper's tables."""

    def matrix(raw):
        raw["sft"]["runs"] = {"sft_h": {"source": "reference"}, "sft_m": {"source": "self"}}
        raw["sft"]["common"].update(samples_per_problem=4, temperature=1.0)
        raw["rl"]["runs"] = {"dash": {"init_from": "base"}, "grpo": {"init_from": "sft_h", "sampling": "per_micro_batch",
                                                                     "filter_threshold": 0.0}}
        raw["evaluate"]["models"] = ["base", "sft_h", "dash", "grpo"]
        raw["evaluate"]["generation"]["samples_per_problem"] = 1

    params = edit_params(workspace / "params.yaml", matrix)
    prepare_stage.main(params, "arith")
    sft_stage.main(params, "sft_h")
    out = workspace / "data/sft/sft_h"
    examples = pd.read_parquet(out / "examples.parquet")
    train = read_problems("data/prepared/arith/train.parquet").head(8)
    assert examples["completion"].tolist() == train["solution"].tolist()  # the reference solutions, in order
    summary = json.loads((out / "summary.json").read_text())
    assert summary["examples"] == 8 and summary["optimizer_steps"] == 2  # 8 examples / batch 4, 1 epoch
    assert summary["loss_last"] < summary["loss_first"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG" and (workspace / "data/models/sft_h/model.safetensors").is_file()
    record = json.loads((workspace / "data/models/sft_h/dashrl_model.json").read_text())
    assert record["model"]["source"] == "sft@sft_h" and record["params"]["sft"]["source"] == "reference"
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["model"]["content_sha256"] == record["model"]["content_sha256"] and "git_commit" in run_json

    # A random tiny model rarely gets anything right: SFT-M fails before training, and says why.
    with pytest.raises(RuntimeError, match="sft@sft_m: the teacher got no problem right"):
        sft_stage.main(params, "sft_m")
    assert not (workspace / "data/models/sft_m").exists()

    for run in ("dash", "grpo"):
        rl_stage.main(params, run)
    for model in params.evaluate.models:
        evaluate_stage.main(params, model, "arith")
    evaluate_stage.main(params, "base", "arith", pass_k=True)
    params = edit_params(workspace / "params.yaml", lambda r: r["sft"]["runs"].pop("sft_m"))
    report_stage.main(params)

    report = workspace / "data/report"
    dash = json.loads((workspace / "data/rl/dash/summary.json").read_text())
    grpo = json.loads((workspace / "data/rl/grpo/summary.json").read_text())
    table3 = pd.read_csv(report / "table3.csv").set_index("config")
    assert table3.loc["no_gf", "status"] == "not run" and pd.isna(table3.loc["no_gf", "train_wall_s"])
    assert table3.loc["dash", "train_wall_s"] == pytest.approx(dash["train_wall_s"])
    assert table3.loc["dash", "time_vs_grpo"] == pytest.approx(dash["train_wall_s"] / grpo["train_wall_s"])
    assert table3.loc["grpo", "time_vs_grpo"] == pytest.approx(1.0)
    assert table3.loc["grpo", "sampling_s"] == pytest.approx(grpo["total_sampling_s"])
    table1 = pd.read_csv(report / "table1.csv").set_index("config")
    assert table1["status"].to_dict() == {"base": "ok", "sft_h": "ok", "sft_m": "not run", "dash": "ok"}
    sft_accuracy = json.loads((workspace / "data/eval/sft_h/arith/metrics.json").read_text())["accuracy"]
    assert table1.loc["sft_h", "accuracy_arith"] == pytest.approx(sft_accuracy)
    assert table3.loc["dash", "seeds"] == 1 and table3.loc["dash", "time_vs_grpo_min"] == pytest.approx(table3.loc["dash", "time_vs_grpo"])
    assert pd.isna(table3.loc["dash", "time_vs_grpo_lo"])  # one seed: no interval
    findings = pd.read_csv(report / "findings.csv").set_index("id")
    assert findings.loc["dash_matches_grpo", "benchmark"] == "arith" and findings.loc["dash_matches_grpo", "seeds"] == "1 vs 1"
    assert findings.loc["dash_matches_grpo", "lo"] <= findings.loc["dash_matches_grpo", "estimate"] <= findings.loc["dash_matches_grpo", "hi"]
    assert findings.loc["dash_faster_than_grpo", "verdict"] == "inconclusive"  # a time interval needs 3 seeds
    # Beside the wall-time ratio: the CPU-time ratio and the runs that saw outside load, from the summaries.
    assert findings.loc["dash_faster_than_grpo", "cpu_estimate"] == pytest.approx(dash["stage_cpu_s"] / grpo["stage_cpu_s"], rel=1e-5)
    loaded = [r for r, s in (("dash", dash), ("grpo", grpo)) if s["usage"]["outside_load"]]
    assert findings.loc["dash_faster_than_grpo", "outside_load"] == (", ".join(loaded) or "none")
    assert table3.loc["dash", "cpu_time_vs_grpo"] == pytest.approx(dash["stage_cpu_s"] / grpo["stage_cpu_s"])
    assert findings.loc["no_kl_faster", "verdict"] == "not run"
    # The curves DVC plots are the training stages' DVCLive files, not copies in the report.
    curve = pd.read_csv(workspace / "data/rl/dash/live/plots/metrics/reward_mean.tsv", sep="\t")
    assert curve["step"].tolist() == [0, 1] and not (report / "curves").exists()
    assert (workspace / "data/sft/sft_h/live/plots/metrics/loss.tsv").is_file()
    table6 = pd.read_csv(report / "table6.csv").set_index("config")
    assert table6.loc["dash", "train_completion_tokens_last_steps"] == pytest.approx(dash["completion_tokens_last_steps"])
    assert "Table 5" in (report / "table5.md").read_text()
    selectors = pd.read_csv(report / "selectors.csv").set_index("run")
    assert selectors.loc["dapo", "status"] == "not run" and selectors.loc["dash", "status"] == "ok"
    dash_steps = [json.loads(line) for line in (workspace / "data/rl/dash/metrics.jsonl").read_text().splitlines()]
    assert selectors.loc["dash", "samples_generated"] == sum(m["samples_generated"] for m in dash_steps)
    assert selectors.loc["dash", "accuracy_arith"] == pytest.approx(
        json.loads((workspace / "data/eval/dash/arith/metrics.json").read_text())["accuracy"])
    assert selectors.loc["dash", "accuracy_arith_lo"] <= selectors.loc["dash", "accuracy_arith"] <= selectors.loc["dash", "accuracy_arith_hi"]
    assert (report / "fig_selectors.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_is_reproducible_with_its_seed(workspace):
    params = load_params("params.yaml")
    prepare_stage.main(params, "arith")
    evaluate_stage.main(params, "base", "arith")
    first = pd.read_parquet("data/eval/base/arith/problems.parquet")
    evaluate_stage.main(params, "base", "arith")
    pd.testing.assert_frame_equal(first, pd.read_parquet("data/eval/base/arith/problems.parquet"))


def test_evaluate_without_a_model_fails_before_writing(workspace):
    params = load_params("params.yaml")
    prepare_stage.main(params, "arith")
    params = edit_params(workspace / "params.yaml", lambda r: r["evaluate"].update(models=["base", "dash"]))
    with pytest.raises(FileNotFoundError, match="data/models/dash: no model there"):
        evaluate_stage.main(params, "dash", "arith")
    assert not (workspace / "data/eval/dash").exists()


def test_report_names_a_missing_evaluation(workspace):
    with pytest.raises(FileNotFoundError, match=r"data/eval/base/arith/metrics.json: missing; run `dvc repro evaluate@base-arith`"):
        report_stage.main(load_params("params.yaml"))


def test_prepare_gsm8k_from_a_local_file(workspace):
    source = workspace / "gsm8k_test.jsonl"
    source.write_text(
        json.dumps({"question": "Ann has 1,000 coins and finds 234. How many?", "answer": "1000 + 234 = 1234\n#### 1,234"})
        + "\n" + json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}) + "\n"
    )

    def use_gsm8k(raw):
        raw["prepare"]["datasets"] = ["arith", "gsm8k"]
        raw["prepare"]["gsm8k"]["path"] = str(source)

    params = edit_params(workspace / "params.yaml", use_gsm8k)
    prepare_stage.main(params, "gsm8k")
    test = read_problems("data/prepared/gsm8k/test.parquet")
    assert test["answer"].tolist() == ["1234", "4"]
    assert not (workspace / "data/prepared/gsm8k/train.parquet").exists()


def test_prepare_with_bad_input_writes_nothing_and_keeps_old_output(workspace):
    source = workspace / "gsm8k_test.jsonl"
    source.write_text(json.dumps({"question": "Q", "answer": "4"}) + "\n")

    def use_gsm8k(raw):
        raw["prepare"]["datasets"] = ["arith", "gsm8k"]
        raw["prepare"]["gsm8k"]["path"] = str(source)

    params = edit_params(workspace / "params.yaml", use_gsm8k)
    old = workspace / "data/prepared/gsm8k"
    old.mkdir(parents=True)
    (old / "test.parquet").write_bytes(b"previous output")
    with pytest.raises(ProblemDataError, match=r"gsm8k_test.jsonl row 0.*field 'answer'"):
        prepare_stage.main(params, "gsm8k")
    assert (old / "test.parquet").read_bytes() == b"previous output"
    assert sorted(p.name for p in (workspace / "data/prepared").iterdir()) == ["gsm8k"]


def test_model_stage_from_a_local_directory(workspace, tiny_model_dir):
    params = edit_params(workspace / "params.yaml", lambda r: r["model"].update(source=str(tiny_model_dir)))
    model_stage.main(params)
    record = json.loads((workspace / "data/models/base/dashrl_model.json").read_text())
    assert record["model"]["source"] == str(tiny_model_dir) and len(record["model"]["content_sha256"]) == 64
    assert record["params"]["model"]["dtype"] == "float32" and record["base_model"] == str(tiny_model_dir)
    # Versions, commit, machine and time: in the run record outside the model directory, which no stage reads.
    assert not {"packages", "git_commit", "finished_utc", "platform", "compute"} & set(record)
    run = json.loads((workspace / "data/runs/model.json").read_text())
    assert run["model"]["content_sha256"] == record["model"]["content_sha256"] and "torch" in run["packages"]
    assert {"git_commit", "finished_utc", "compute"} <= set(run)
    assert not [p for p in (workspace / "data/models").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_rl_stage_writes_policy_rollouts_metrics_and_curves(workspace):
    params = edit_params(workspace / "params.yaml", lambda r: r["evaluate"].update(models=["base", "dash"]))
    prepare_stage.main(params, "arith")
    rl_stage.main(params, "dash")
    out = workspace / "data/rl/dash"
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1]
    assert sorted(p.name for p in (out / "rollouts").iterdir()) == ["step-000000.parquet", "step-000001.parquet"]
    rollouts = pd.read_parquet(out / "rollouts/step-000001.parquet")
    assert len(rollouts) == 2 * 4 and {"reward", "advantage", "kept", "logprob_sum", "tokens"} <= set(rollouts)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["samples_total"] == 16
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (workspace / "data/models/dash/model.safetensors").is_file()
    assert sorted(p.name for p in (workspace / "data/work/rl/dash/checkpoints").iterdir()) == ["step-000002"]  # keep_checkpoints: 1
    # The trained policy is an ordinary model directory: evaluate takes it as it is.
    evaluate_stage.main(params, "dash", "arith")
    assert json.loads((workspace / "data/eval/dash/arith/metrics.json").read_text())["model"] == "dash"


def test_rl_stage_without_its_initial_model_fails_before_sampling(workspace):
    params = edit_params(workspace / "params.yaml", lambda r: r["rl"]["runs"]["dash"].update(init_from="sft_h"))
    prepare_stage.main(params, "arith")
    with pytest.raises(FileNotFoundError, match=r"data/models/sft_h: no model there \(rl.runs.dash.init_from: 'sft_h'\)"):
        rl_stage.main(params, "dash")
    assert not (workspace / "data/rl").exists()
