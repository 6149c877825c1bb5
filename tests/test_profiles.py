"""Profiles merge into params.yaml, validate before writing, and keep the file's comments."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from dashrl.config.params import ParamsError, load_params
from dashrl.config.profiles import apply_profile, main, merge

REPO = Path(__file__).resolve().parents[1]
MATRIX = ["base", "sft_h", "sft_m", "dash", "grpo", "no_gf", "no_kl", "ppo_multi", "ppo_mini"]


@pytest.fixture
def repo_copy(tmp_path) -> Path:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    return tmp_path


def test_merge_is_deep_for_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    assert merge(base, {"a": {"y": [3], "z": None}, "c": {"d": 1}}) == {"a": {"x": 1, "y": [3], "z": None}, "b": 2, "c": {"d": 1}}


def test_default_profile_is_a_subset_of_the_full_matrix():
    params = load_params(REPO / "params.yaml")
    assert set(params.evaluate.models) < set(MATRIX)
    assert {"dash", "grpo"} <= set(params.rl.runs) and "sft_h" in params.sft.runs


def test_full_profile_names_the_whole_matrix(repo_copy):
    before = (repo_copy / "params.yaml").read_text()
    apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/full.yaml"])
    params = load_params(repo_copy / "params.yaml")
    assert params.evaluate.models == MATRIX
    assert set(params.rl.runs) == {"dash", "grpo", "no_gf", "no_kl", "ppo_multi", "ppo_mini"}
    assert set(params.sft.runs) == {"sft_h", "sft_m"}
    dash, no_gf, no_kl = params.rl.run("dash"), params.rl.run("no_gf"), params.rl.run("no_kl")
    assert (dash.filter_threshold, dash.kl_coef, dash.sampling) == (0.1, 0.04, "preemptive")
    assert no_gf.filter_threshold == 0 and no_gf.kl_coef == dash.kl_coef
    assert no_kl.kl_coef == 0 and no_kl.filter_threshold == dash.filter_threshold
    assert params.rl.run("grpo").sampling == "per_micro_batch" and params.rl.run("ppo_multi").ppo_epochs == 3
    assert params.rl.run("ppo_mini").optimizer_steps_per_rollout == 8 and params.sft.run("sft_m").source == "self"
    after = (repo_copy / "params.yaml").read_text()
    # Everything the profile did not touch is unchanged, comments and nulls included.
    untouched = [line for line in before.splitlines() if line.startswith(("prompt:", "  system_prompt:", "grader:", "    path:"))]
    assert untouched and all(line in after.splitlines() for line in untouched)


def test_paper_profile_on_top_of_full_and_a_set_override(repo_copy):
    apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/full.yaml", repo_copy / "profiles/paper.yaml"],
                  ["model.source=Qwen/Qwen2.5-1.5B"])
    params = load_params(repo_copy / "params.yaml")
    assert params.model.source == "Qwen/Qwen2.5-1.5B" and params.prompt.format == "raw" and params.grader.require_box
    dash = params.rl.run("dash")
    assert (dash.prompts_per_step, dash.group_size, dash.lr, dash.kl_coef, dash.epochs, dash.engine) == (64, 4, 3e-6, 0.04, 3, "vllm")
    assert params.rl.run("ppo_mini").optimizer_steps_per_rollout == 32
    assert params.evaluate.benchmarks == ["math500", "gsm8k"] and dash.dataset == "math_train"


def test_a_bad_profile_fails_before_writing_and_names_the_key(repo_copy):
    before = (repo_copy / "params.yaml").read_text()
    (repo_copy / "profiles/bad.yaml").write_text(yaml.safe_dump({"rl": {"common": {"filter_treshold": 0.2}}}))
    with pytest.raises(ParamsError, match="rl.common.filter_treshold: unknown key"):
        apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/bad.yaml"])
    known = ", ".join(sorted(p.stem for p in (repo_copy / "profiles").glob("*.yaml")))  # bad, code, ..., seeds
    with pytest.raises(ParamsError, match=rf"profiles/nope.yaml: no such profile \(profiles: {known}\)"):
        apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/nope.yaml"])
    # Alone, the paper profile adds runs without init_from: caught, nothing written.
    with pytest.raises(ParamsError, match="rl.runs.ppo_multi.init_from: missing key"):
        apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/paper.yaml"])
    assert (repo_copy / "params.yaml").read_text() == before


def test_cli_dry_run_prints_and_writes_nothing(repo_copy, capsys, monkeypatch):
    monkeypatch.chdir(repo_copy)
    before = (repo_copy / "params.yaml").read_text()
    assert main(["full", "--dry", "--set", "rl.common.steps=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["rl"]["common"]["steps"] == 3 and "no_kl" in printed["rl"]["runs"]
    assert (repo_copy / "params.yaml").read_text() == before
    assert main(["--set", "rl.common.nosuchsection.x=1"]) == 2
    assert "nosuchsection" in capsys.readouterr().err


def test_seeds_profile_repeats_dash_and_grpo_as_explicit_runs(repo_copy):
    apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/seeds.yaml"])
    text = (repo_copy / "params.yaml").read_text()
    assert "repeat" not in yaml.safe_load(text)  # read by dashrl.config.profiles, never written
    params = load_params(repo_copy / "params.yaml")
    assert list(params.rl.runs) == ["dash", "dash-s1", "dash-s2", "grpo", "grpo-s1", "grpo-s2"]
    assert params.evaluate.models == ["base", "sft_h", "dash", "dash-s1", "dash-s2", "grpo", "grpo-s1", "grpo-s2"]
    assert params.evaluate.pass_k.models == ["base", "dash", "dash-s1", "dash-s2"]  # grpo is not there: its copies neither
    dash, dash_s2, grpo_s1 = params.rl.run("dash"), params.rl.run("dash-s2"), params.rl.run("grpo-s1")
    assert (dash.seed, dash_s2.seed, grpo_s1.seed) == (0, 2, 1)
    assert grpo_s1.sampling == "per_micro_batch" and grpo_s1.filter_threshold == 0.0
    assert {**vars(dash_s2), "seed": 0} == vars(dash)  # the run itself, but for its seed
    assert "dash-s1:                     # dash with seed 1 (repeat in seeds.yaml)" in text
    # Applying it again rewrites the same copies: nothing changes.
    apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/seeds.yaml"])
    assert (repo_copy / "params.yaml").read_text() == text


def test_seeds_after_full_and_an_sft_run(repo_copy):
    (repo_copy / "profiles/more.yaml").write_text(yaml.safe_dump({"repeat": {"runs": ["sft_h", "no_kl"], "seeds": [3]}}))
    apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/full.yaml", repo_copy / "profiles/more.yaml"],
                  ["rl.common.lr=1.0e-4"])
    params = load_params(repo_copy / "params.yaml")
    assert params.sft.run("sft_h-s3").seed == 3 and params.sft.run("sft_h-s3").source == "reference"
    assert params.rl.run("no_kl-s3").kl_coef == 0 and params.rl.run("no_kl-s3").lr == 1e-4
    assert params.evaluate.models.index("sft_h-s3") == params.evaluate.models.index("sft_h") + 1
    assert "sft_h-s3" in params.evaluate.pass_k.models and "no_kl-s3" in params.evaluate.pass_k.models


@pytest.mark.parametrize(("repeat", "message"), [
    ({"runs": ["dahs"], "seeds": [1]}, r"bad.yaml: repeat.runs: 'dahs': no such run in rl.runs or sft.runs \(runs: dash, grpo, sft_h\)"),
    ({"runs": ["dash"], "seeds": [1, 2, 1]}, r"bad.yaml: repeat.seeds: 1: listed twice"),
    ({"runs": ["dash"], "seeds": [0]}, r"bad.yaml: repeat.seeds: 0: is rl.runs.dash's own seed"),
    ({"runs": ["dash", "dash"], "seeds": [1]}, r"bad.yaml: repeat.runs: 'dash': listed twice"),
    ({"runs": ["dash-s1"], "seeds": [2]}, r"bad.yaml: repeat.runs: 'dash-s1': is a seeded copy"),
    ({"runs": ["dash"], "seeds": [-1]}, r"bad.yaml: repeat.seeds\[0\]: expected an integer >= 0, got -1"),
    ({"runs": ["dash"], "seeds": []}, r"bad.yaml: repeat.seeds: expected a non-empty list, got \[\]"),
    ({"runs": ["dash"], "seeds": [1], "seed": 2}, r"bad.yaml: repeat.seed: unknown key \(valid: runs, seeds\)"),
    ([1, 2], r"bad.yaml: repeat: expected a mapping with runs and seeds"),
])
def test_a_bad_repeat_fails_before_writing_and_names_file_key_and_value(repo_copy, repeat, message):
    before = (repo_copy / "params.yaml").read_text()
    (repo_copy / "profiles/bad.yaml").write_text(yaml.safe_dump({"repeat": repeat}))
    with pytest.raises(ParamsError, match=message):
        apply_profile(repo_copy / "params.yaml", [repo_copy / "profiles/bad.yaml"])
    assert (repo_copy / "params.yaml").read_text() == before
