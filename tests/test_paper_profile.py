"""The `paper` profile, validated as far as a CPU allows: the real profile files, then only sizes,
the model (a tiny local one), the data files (tiny, in the releases' formats) and the engine (HF:
no GPU here) overridden; every stage of the paper's matrix runs one tiny step."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dashrl.config.params import load_params
from dashrl.config.profiles import apply_profile
from stages import evaluate as evaluate_stage
from stages import model as model_stage
from stages import prepare as prepare_stage
from stages import report as report_stage
from stages import rl as rl_stage
from stages import sft as sft_stage

REPO = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def paper_workspace(tmp_path, monkeypatch, tiny_model_dir) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    math_rows = [{"problem": f"What is ${i} + {i}$?", "solution": f"${i} + {i} = {2 * i}$, so the answer is $\\boxed{{{2 * i}}}$.",
                  "answer": str(2 * i), "subject": "Algebra", "level": 1 + i % 5, "unique_id": f"train/algebra/{i}.json"}
                 for i in range(8)]
    gsm8k = write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Tom has 3 apples and gets 4. How many?", "answer": "3 + 4 = 7\n#### 7"}])
    sets = [
        f"model.source={tiny_model_dir}", "model.dtype=float32",
        f"prepare.math_train.path={write_jsonl(tmp_path / 'math_train.jsonl', math_rows)}",
        f"prepare.math500.path={write_jsonl(tmp_path / 'math500.jsonl', math_rows[:4])}",
        f"prepare.gsm8k.path={gsm8k}",
        "rl.common.engine=hf", "rl.common.epochs=null", "rl.common.steps=1", "rl.common.prompts_per_step=4",
        "rl.common.max_new_tokens=8", "rl.common.rollout_batch_rows=16", "rl.common.train_dtype=float32",
        "rl.common.rollout_dtype=float32", "rl.runs.ppo_multi.steps=1", "rl.runs.ppo_multi.epochs=null",
        "rl.runs.ppo_mini.optimizer_steps_per_rollout=4", "sft.common.max_length=256", "sft.common.batch_size=4",
        "sft.common.train_dtype=float32", "sft.common.max_new_tokens=8",
        "evaluate.generation.engine=hf", "evaluate.generation.max_new_tokens=8", "evaluate.generation.dtype=float32", "evaluate.pass_k.samples_per_problem=2",
    ]
    apply_profile(tmp_path / "params.yaml", [REPO / "profiles/full.yaml", REPO / "profiles/paper.yaml"], sets)
    shutil.copytree(tiny_model_dir, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_paper_profile_runs_every_stage_on_a_tiny_model(paper_workspace):
    params = load_params("params.yaml")
    # What the profile itself sets (not overridden above).
    assert params.prompt.format == "raw" and params.grader.require_box
    assert params.prepare.datasets == ["math_train", "math500", "gsm8k"]
    dash = params.rl.run("dash")
    assert (dash.group_size, dash.micro_batch_size, dash.lr, dash.lr_schedule, dash.kl_coef) == (4, 4, 3e-6, "linear", 0.04)
    assert params.sft.run("sft_m").teacher == "Qwen/Qwen2.5-7B-Instruct"
    raw = yaml.safe_load((REPO / "profiles/paper.yaml").read_text())
    assert raw["rl"]["common"]["engine"] == raw["evaluate"]["generation"]["engine"] == "vllm"  # overridden above: no GPU here

    for name in params.prepare.datasets:
        prepare_stage.main(params, name)
    model_stage.main(params)
    sft_stage.main(params, "sft_h")
    examples = pd.read_parquet("data/sft/sft_h/examples.parquet")
    problems = pd.read_parquet("data/prepared/math_train/train.parquet")
    # Raw prompts: the model sees the problem text itself, no template.
    assert examples["prompt"].tolist() == problems["prompt"].tolist()
    for run in params.rl.runs:
        rl_stage.main(params, run)
    rollouts = pd.read_parquet("data/rl/dash/rollouts/step-000000.parquet")
    assert len(rollouts) == 4 * 4  # P x G
    for model in ["base", "sft_h", *params.rl.runs]:
        for benchmark in params.evaluate.benchmarks:
            evaluate_stage.main(params, model, benchmark)
    for model in params.evaluate.pass_k.models:
        for benchmark in params.evaluate.benchmarks:
            evaluate_stage.main(params, model, benchmark, pass_k=True)
    # sft_m needs the Hub teacher (Qwen2.5-7B-Instruct): the report without it.
    raw = yaml.safe_load(Path("params.yaml").read_text())
    del raw["sft"]["runs"]["sft_m"]
    raw["evaluate"]["models"].remove("sft_m")
    Path("params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    report_stage.main(load_params("params.yaml"))
    table1 = pd.read_csv("data/report/table1.csv")
    assert {"accuracy_math500", "accuracy_gsm8k"} <= set(table1.columns)
    assert table1.set_index("config").loc["sft_m", "status"] == "not run"
    assert set(pd.read_csv("data/report/table3.csv")["status"]) == {"ok"}
