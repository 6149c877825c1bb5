"""params.yaml, the params dataclasses and dvc.yaml agree; bad params fail with the key named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dashrl.config.params import Params, ParamsError, from_mapping, load_params

REPO = Path(__file__).resolve().parents[1]


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def leaf_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            keys |= leaf_keys(value, dotted + ".")
        else:
            keys.add(dotted)
    return keys


def dvc_stage_params() -> dict[str, list[str]]:
    """Each resolved DVC stage (foreach/matrix expanded by DVC itself) -> its params keys."""
    from dvc.repo import Repo

    with Repo(str(REPO)) as repo:
        result = {}
        for stage in repo.index.stages:
            keys = []
            for dep in stage.deps:
                if hasattr(dep, "params") and dep.def_path == "params.yaml":
                    keys += list(dep.params)
            result[stage.addressing] = keys
        return result


def test_params_yaml_loads():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.evaluate.benchmarks == ["arith"]


def test_every_dvc_params_key_exists_and_every_param_is_used():
    raw = raw_params()
    leaves = leaf_keys(raw)
    stages = dvc_stage_params()
    assert {"prepare@arith", "model", "evaluate@base-arith", "report"} <= set(stages)
    used: set[str] = set()
    for stage, keys in stages.items():
        for key in keys:
            covered = {leaf for leaf in leaves if leaf == key or leaf.startswith(key + ".")}
            assert covered, f"dvc.yaml stage {stage}: params key {key!r} is not in params.yaml"
            used |= covered
    # Keys that select stages (DVC templating) rather than configure one.
    structural = {"prepare.datasets", "evaluate.models", "evaluate.benchmarks"}
    # Datasets not in prepare.datasets have no stage yet, so nothing depends on their section.
    unlisted = set(raw["prepare"]) - {"datasets"} - set(raw["prepare"]["datasets"])
    unprepared = {leaf for leaf in leaves for name in unlisted if leaf.startswith(f"prepare.{name}.")}
    unused = leaves - used - structural - unprepared
    assert not unused, f"params.yaml keys no stage depends on: {sorted(unused)}"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["evaluate"]["generation"].update(temperatur=0.6), r"evaluate\.generation\.temperatur: unknown key"),
        (lambda r: r["grader"].pop("timeout_s"), r"grader\.timeout_s: missing key"),
        (lambda r: r["evaluate"]["generation"].update(max_new_tokens="many"), r"evaluate\.generation\.max_new_tokens: expected int, got 'many'"),
        (lambda r: r["prompt"].update(format="jinja"), r"prompt\.format: 'jinja' is not one of 'chat', 'raw'"),
        (lambda r: r["evaluate"].update(benchmarks=["gsm8k"]), r"evaluate\.benchmarks: 'gsm8k': is not prepared"),
        (lambda r: r["prepare"].update(datasets=["arith", "mmlu"]), r"prepare\.datasets: 'mmlu': unknown dataset"),
        (lambda r: r["evaluate"]["generation"].update(temperature=0.0, samples_per_problem=4), r"greedy decoding"),
        (lambda r: r["evaluate"]["generation"].update(top_p=1.5), r"top_p: 1\.5: must be in \(0, 1\]"),
        (lambda r: r.update(extra_section={}), r"params\.yaml: extra_section: unknown key"),
        (lambda r: r["evaluate"].update(models=["base", "missing"]), r"evaluate\.models: 'missing': no stage writes it"),
        (lambda r: r["rl"]["runs"]["dash"].update(init_from="sft_x"), r"rl\.runs\.dash\.init_from: 'sft_x': must be base or an sft run"),
        (lambda r: r["sft"]["runs"]["sft_h"].update(init_from="dash"), r"sft\.runs\.sft_h\.init_from: 'dash': set it in sft\.common"),
        (lambda r: r["sft"]["runs"]["sft_h"].update(epoch=2), r"sft\.runs\.sft_h\.epoch: unknown key"),
        (lambda r: r["sft"]["runs"].update(dash={"source": "self"}), r"sft\.runs/rl\.runs: \['dash'\]: names must be unique"),
        (lambda r: r["sft"]["runs"]["sft_h"].update(teacher="x/y"), r"sft\.runs\.sft_h\.teacher: 'x/y': only source: self"),
        (lambda r: r["evaluate"]["pass_k"].update(models=["grpo_x"]), r"evaluate\.pass_k\.models: 'grpo_x': must also be in evaluate\.models"),
        (lambda r: r["evaluate"]["pass_k"].update(samples_per_problem=1), r"evaluate\.pass_k\.samples_per_problem: 1: must be >= 2"),
        (lambda r: r["prepare"]["pyfunc"].update(levels=[1, 6]), r"prepare\.pyfunc\.levels: \[1, 6\]: must be distinct levels within 1-5"),
        (lambda r: r["prepare"]["pyfunc"].update(n_test=-1), r"prepare\.pyfunc\.n_train/n_test: \(\d+, -1\): must be >= 0"),
        (lambda r: r["rl"]["common"].update(dual_clip=0.5), r"rl\.runs\.dash\.dual_clip: 0\.5: must be > 1"),
        (lambda r: r["rl"]["common"].pop("dual_clip"), r"dual_clip: missing key"),
    ],
)
def test_bad_params_name_the_key_and_value(edit, message):
    raw = copy.deepcopy(raw_params())
    edit(raw)
    with pytest.raises(ParamsError, match=message):
        from_mapping(Params, raw, where="params.yaml")


def test_missing_params_file_is_a_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="params.yaml: file not found"):
        load_params(tmp_path / "params.yaml")


def test_dual_clip_defaults_to_3_and_null_or_0_turns_it_off():
    raw = copy.deepcopy(raw_params())
    assert from_mapping(Params, raw, where="p").rl.run("dash").dual_clip == 3.0
    for off in (None, 0):
        raw["rl"]["common"]["dual_clip"] = off
        assert not from_mapping(Params, raw, where="p").rl.run("dash").dual_clip


def test_ints_are_accepted_for_floats_but_bools_are_not_ints():
    raw = copy.deepcopy(raw_params())
    raw["grader"]["timeout_s"] = 3
    assert from_mapping(Params, raw, where="p").grader.timeout_s == 3.0
    raw["evaluate"]["generation"]["batch_size"] = True
    with pytest.raises(ParamsError, match="batch_size: expected int, got True"):
        from_mapping(Params, raw, where="p")


def test_the_variant_names_params_accepts_are_exactly_the_registered_ones():
    """params declares the names (it imports no algorithm); the registries hold the code: they must agree."""
    import typing

    from dashrl.algo.batching import PACKINGS
    from dashrl.algo.losses import LOSS_AGGREGATIONS
    from dashrl.config.params import LOSS_AGG_NAMES, SELECTOR_NAMES, RLRunParams, SFTRunParams
    from dashrl.rl.selectors import SELECTORS

    assert set(LOSS_AGG_NAMES) == set(LOSS_AGGREGATIONS) and len(LOSS_AGG_NAMES) == len(LOSS_AGGREGATIONS)
    assert set(SELECTOR_NAMES) == set(SELECTORS) and len(SELECTOR_NAMES) == len(SELECTORS)
    for section in (RLRunParams, SFTRunParams):
        assert set(typing.get_args(typing.get_type_hints(section)["packing"])) == set(PACKINGS)


def test_an_unregistered_variant_name_fails_with_the_valid_names():
    raw = raw_params()
    raw["rl"]["runs"]["dash"]["loss_agg"] = "token_mean"
    with pytest.raises(ParamsError, match=r"rl.runs.dash.loss_agg: 'token_mean': unknown \(valid: bnpo, dapo, dr_grpo, grpo\)"):
        from_mapping(Params, raw, where="params.yaml")


def test_an_exponent_float_without_a_dot_reads_as_dvc_writes_it(tmp_path):
    """`dvc exp run -S '++rl.runs.dash.lr=6e-5'` writes `lr: 6e-05` (ruamel.yaml, YAML 1.2: a float);
    PyYAML's YAML 1.1 reads that as the string '6e-05'. params.yaml is read as DVC reads it."""
    import yaml

    from dashrl.config.params import read_yaml

    text = (REPO / "params.yaml").read_text().replace("    dash:                        # preemptive",
                                                      "    dash:\n      lr: 6e-05\n      # preemptive", 1)
    assert "lr: 6e-05" in text and yaml.safe_load(text)["rl"]["runs"]["dash"]["lr"] == "6e-05"  # YAML 1.1
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").rl.run("dash").lr == 6e-05
    assert read_yaml("a: 1e5\nb: -2E+3\nc: '6e-05'\nd: 1.0e-5\ne: 7") == {"a": 1e5, "b": -2000.0, "c": "6e-05", "d": 1e-5, "e": 7}


def test_params_yaml_and_every_profile_read_the_same_under_both_yaml_rules():
    """Every committed params file has floats with a dot: reading it as YAML 1.2 changes nothing."""
    import yaml

    from dashrl.config.params import read_yaml

    for path in [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]:
        text = path.read_text()
        assert read_yaml(text) == yaml.safe_load(text), path
