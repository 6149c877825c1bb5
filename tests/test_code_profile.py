"""The `code` profile end to end on a tiny model: the real profile file, only sizes and the model
overridden; every stage runs (pyfunc + the bundled HumanEval, SFT-H, DASH / GRPO / No-GF, evaluation
with n samples, the report's Tables 2 and 4). The `code_paper` profile is validated as params."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dashrl.config.params import load_params
from dashrl.config.profiles import apply_profile
from dashrl.grading.code_grader import CODE_STATUSES
from stages import evaluate as evaluate_stage
from stages import model as model_stage
from stages import prepare as prepare_stage
from stages import report as report_stage
from stages import rl as rl_stage
from stages import sft as sft_stage

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def code_workspace(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    sets = [
        f"model.source={tiny_model_dir}", "model.dtype=float32",
        "prepare.pyfunc.n_train=30", "prepare.pyfunc.n_test=10",
        "rl.common.steps=1", "rl.common.prompts_per_step=2", "rl.common.group_size=4", "rl.common.micro_batch_size=4",
        "rl.common.max_new_tokens=8", "rl.common.train_dtype=float32", "rl.common.rollout_dtype=float32",
        "sft.common.max_problems=4", "sft.common.batch_size=4", "sft.common.train_dtype=float32", "sft.common.max_length=512",
        "evaluate.generation.max_new_tokens=8", "evaluate.generation.dtype=float32", "evaluate.generation.max_problems=2",
        "evaluate.generation.samples_per_problem=2", "evaluate.pass_k.samples_per_problem=2", "evaluate.pass_k.max_problems=1",
        "grader.code.timeout_s=5.0",
    ]
    apply_profile(tmp_path / "params.yaml", [REPO / "profiles/code.yaml"], sets)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_code_profile_runs_every_stage_on_a_tiny_model(code_workspace):
    params = load_params("params.yaml")
    assert params.prepare.datasets == ["pyfunc", "humaneval"]
    assert params.rl.run("dash").filter_threshold == 0.01 and params.rl.run("no_gf").filter_threshold == 0.0
    assert (params.evaluate.generation.temperature, params.evaluate.generation.top_p) == (0.9, 1.0)

    for name in params.prepare.datasets:
        prepare_stage.main(params, name)
    assert len(pd.read_parquet("data/prepared/humaneval/test.parquet")) == 164
    model_stage.main(params)
    sft_stage.main(params, "sft_h")
    examples = pd.read_parquet("data/sft/sft_h/examples.parquet")
    assert examples["prompt"].str.contains(params.prompt.code_instruction, regex=False).all()  # the code instruction
    assert examples["completion"].str.startswith("def ").all()  # SFT-H targets: the reference programs
    for run in params.rl.runs:
        rl_stage.main(params, run)
    rollouts = pd.read_parquet("data/rl/dash/rollouts/step-000000.parquet")
    assert len(rollouts) == 2 * 4 and set(rollouts["grade_status"]) <= set(CODE_STATUSES)
    step = json.loads(Path("data/rl/dash/metrics.jsonl").read_text().splitlines()[0])
    assert sum(step[f"grade_{s}"] for s in CODE_STATUSES) == 8
    for model in ["base", "sft_h", *params.rl.runs]:
        for benchmark in params.evaluate.benchmarks:
            evaluate_stage.main(params, model, benchmark)
    for model in params.evaluate.pass_k.models:
        for benchmark in params.evaluate.benchmarks:
            evaluate_stage.main(params, model, benchmark, pass_k=True)
    metrics = json.loads(Path("data/eval/base/humaneval/metrics.json").read_text())
    assert set(metrics["grader_status_counts"]) == set(CODE_STATUSES) and sum(metrics["grader_status_counts"].values()) == 4
    report_stage.main(params)

    table2 = pd.read_csv("data/report/table2.csv").set_index("config")
    assert table2["status"].to_dict() == {"base": "ok", "sft_h": "ok", "dash": "ok"}
    assert {"pass@1_first_pyfunc", "pass@n_pyfunc", "pass@1_first_humaneval", "pass@n_humaneval"} <= set(table2.columns)
    assert table2.loc["base", "pass@1_first_humaneval"] == pytest.approx(metrics["accuracy"])
    table4 = pd.read_csv("data/report/table4.csv").set_index("config")
    assert table4["status"].to_dict() == {"grpo": "ok", "no_gf": "ok", "dash": "ok"}
    assert table4.loc["grpo", "time_vs_grpo"] == pytest.approx(1.0) and table4["train_wall_s"].notna().all()
    # The math tables keep their rows and say why they are empty.
    table3 = pd.read_csv("data/report/table3.csv").set_index("config")
    assert table3.loc["dash", "status"] == "not run (trained on code)"
    assert "Grader (code)" in Path("data/report/results.md").read_text()


def test_code_paper_profile_is_valid(tmp_path):
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    apply_profile(tmp_path / "params.yaml", [REPO / "profiles/code_paper.yaml"])
    params = load_params(tmp_path / "params.yaml")
    assert params.prompt.format == "raw" and params.prepare.datasets == ["mbppplus", "humaneval"]
    assert params.rl.run("dash").filter_threshold == 0.01 and params.rl.run("dash").engine == "vllm"
    assert params.evaluate.generation.samples_per_problem == 8
