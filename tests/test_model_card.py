"""The model card (README.md, the Hub's format) each SFT and RL run writes into its model directory:
front matter that parses and holds the base model, data, params and training metrics, nothing that
changes between identical reruns, and a directory transformers still loads as it is."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from dashrl.config.params import load_params
from dashrl.report.model_card import card_metrics, model_card, read_model_card, rl_algorithm, sft_algorithm
from stages import model as model_stage
from stages import prepare as prepare_stage
from stages import rl as rl_stage
from stages import sft as sft_stage

VOLATILE = re.compile(r"_s$|_utc$|time|wall|git|commit|packages|platform|python|host|usage|compute")


def keys(tree) -> list[str]:
    """Every mapping key in a nested structure."""
    if isinstance(tree, dict):
        return [k for key, value in tree.items() for k in (str(key), *keys(value))]
    if isinstance(tree, list):
        return [k for item in tree for k in keys(item)]
    return []


def test_card_metrics_keep_what_a_rerun_reproduces():
    summary = {"run": "dash", "steps": 2, "stage_wall_s": 12.5, "stage_cpu_s": 20.1, "train_wall_s": 10.0,
               "total_sampling_s": 4.0, "reward_first_steps": 0.25, "reward_last_steps": 0.5, "kept_fraction_mean": 0.75,
               "usage": {"outside_load": False}, "finished_utc": "2026-01-01T00:00:00"}
    assert card_metrics(summary) == {"steps": 2, "reward_first_steps": 0.25, "reward_last_steps": 0.5,
                                     "kept_fraction_mean": 0.75}


def test_the_algorithm_is_named_from_the_params():
    assert rl_algorithm({"sampling": "preemptive", "filter_threshold": 0.1, "loss_agg": "grpo", "kl_coef": 0.04})[1] == \
        ["dashrl", "reinforcement-learning", "dash", "gradient-filtering"]
    words, tags = rl_algorithm({"sampling": "per_micro_batch", "filter_threshold": 0.0, "ppo_epochs": 2, "selector": "none"})
    assert words.startswith("GRPO") and "PPO-Multi (2 epochs" in words and tags[2:] == ["grpo", "ppo"]
    assert sft_algorithm({"source": "self", "teacher": None})[1] == ["dashrl", "sft", "rejection-sampling"]


def test_a_card_round_trips_and_a_text_without_front_matter_is_an_error():
    text = model_card(run="r", stage="rl@r", algorithm="DASH", tags=["dashrl"], base_model="org/name", init_from="base",
                      datasets=["arith"], params={"rl": {"lr": 1e-5, "train_levels": (1, 2)}}, metrics={"steps": 3})
    meta, body = read_model_card(text)
    assert meta["base_model"] == "org/name" and meta["datasets"] == ["arith"] and meta["library_name"] == "transformers"
    assert meta["dashrl"]["params"] == {"rl": {"lr": 1e-5, "train_levels": [1, 2]}}
    assert meta["dashrl"]["training_metrics"] == {"steps": 3} and "| steps | 3 |" in body
    with pytest.raises(ValueError, match="no YAML front matter"):
        read_model_card("# just a title\n")


def test_sft_and_rl_model_directories_carry_a_card_and_still_load(workspace, tiny_model_dir):
    """base (the model stage, from a local directory) -> sft_h -> an RL run from sft_h: each card names
    the base model at the start of the chain, its data, params and metrics, and no time or commit."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["model"]["source"] = str(tiny_model_dir)
    raw["rl"]["runs"]["dash"]["init_from"] = "sft_h"
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params("params.yaml")
    model_stage.main(params)
    prepare_stage.main(params, "arith")
    sft_stage.main(params, "sft_h")
    rl_stage.main(params, "dash")

    for stage, run, section in (("sft", "sft_h", "sft"), ("rl", "dash", "rl")):
        model_dir = workspace / "data/models" / run
        meta, body = read_model_card((model_dir / "README.md").read_text())
        summary = json.loads((workspace / f"data/{stage}/{run}/summary.json").read_text())
        used = getattr(params, section).run(run)
        assert meta["base_model"] == str(tiny_model_dir) and meta["datasets"] == [used.dataset]
        assert meta["library_name"] == "transformers" and meta["tags"][0] == "dashrl"
        assert meta["dashrl"]["stage"] == f"{stage}@{run}" and meta["dashrl"]["init_from"] == used.init_from
        assert meta["dashrl"]["params"][section]["lr"] == used.lr
        assert meta["dashrl"]["params"]["prompt"]["format"] == params.prompt.format
        assert meta["dashrl"]["training_metrics"] == card_metrics(summary)
        outside_params = {**meta, "dashrl": {k: v for k, v in meta["dashrl"].items() if k != "params"}}
        assert not [k for k in keys(outside_params) if VOLATILE.search(k)]  # params have timeout_s etc.: inputs
        text = (model_dir / "README.md").read_text()
        assert repr(summary["stage_wall_s"]) not in text  # full precision: a time, never a param value by chance
        record = json.loads((model_dir / "dashrl_model.json").read_text())
        assert not [k for k in keys({**record, "params": None}) if VOLATILE.search(k)]
        assert record["base_model"] == str(tiny_model_dir)
        # The run's times, CPU seconds and machine load are in its summary; versions and commit in run.json.
        assert summary["usage"]["load_samples"] >= 2 and summary["stage_cpu_s"] == summary["usage"]["cpu_s"]
        assert {"git_commit", "finished_utc", "packages"} <= set(json.loads((workspace / f"data/{stage}/{run}/run.json").read_text()))

        # transformers loads the directory with the card in it, to the weights the stage saved.
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        saved = load_file(model_dir / "model.safetensors")
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in saved.items())

    dash = read_model_card((workspace / "data/models/dash/README.md").read_text())[0]
    summary = json.loads((workspace / "data/rl/dash/summary.json").read_text())
    assert dash["dashrl"]["training_metrics"]["reward_last_steps"] == summary["reward_last_steps"]
    assert dash["dashrl"]["training_metrics"]["steps"] == 2 and "dash" in dash["tags"]
    sft = read_model_card((workspace / "data/models/sft_h/README.md").read_text())[0]
    assert sft["dashrl"]["training_metrics"]["loss_last"] == json.loads(
        (workspace / "data/sft/sft_h/summary.json").read_text())["loss_last"]


def test_model_params_leave_out_the_execution_keys():
    """Trackers, checkpointing and ddp/fsdp change how a run executes, not what it trains: a model
    directory records its params without them, so switching them leaves the directory's bytes (and
    the evaluations that read it) as they are."""
    from dashrl.config.params import EXECUTION_KEYS, section_dict
    from stages.common import model_params

    params = load_params("params.yaml")
    used = {"rl": section_dict(params.rl.run("dash")), "sft": section_dict(params.sft.run("sft_h"))}
    assert {"report_to", "gradient_checkpointing", "parallel"} <= set(EXECUTION_KEYS)
    assert "report_to" in used["rl"] and "report_to" in used["sft"]
    recorded = model_params(used)
    assert not set(EXECUTION_KEYS) & (set(recorded["rl"]) | set(recorded["sft"]))
    assert {k: v for k, v in used["rl"].items() if k not in EXECUTION_KEYS} == recorded["rl"]
