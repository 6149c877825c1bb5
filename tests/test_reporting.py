"""The report's statistics on made-up results: seeds grouped into configurations, intervals in the
tables, and the findings' verdicts (no models, no files)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashrl.report.findings import findings_table, report_metrics, seeds_table
from dashrl.report.paper import RunResults, StatsSettings, config_of, paper_table, seed_groups
from dashrl.report.tables import results_table

P = 400  # problems


def run_eval(scores: np.ndarray) -> dict:
    return {"n_problems": len(scores), "accuracy": float(scores.mean()), "samples_per_problem": 1,
            "completion_tokens_mean": 40.0, "boxed_rate": 0.5, "truncation_rate": 0.0, "generation_tokens_per_s": 100.0}


def summary(wall: float) -> dict:
    return {"train_wall_s": wall, "total_sampling_s": wall / 2, "total_forward_backward_s": wall / 3,
            "total_optimizer_s": 1.0, "kept_fraction_mean": 0.7, "steps": 2, "reward_last_steps": 0.5,
            "completion_tokens_last_steps": 30.0}


def steps() -> list[dict]:
    return [{"step": i, "reward_mean": 0.1 * i, "kept_fraction": 0.5, "zero_variance_group_fraction": 0.5,
             "completion_tokens_mean": 30.0, "optimizer_steps": 1, "time_step_s": 2.0, "note": "text"} for i in range(2)]


def make_results(models: dict[str, np.ndarray], times: dict[str, float]) -> RunResults:
    ids = [f"p{i}" for i in range(P)]
    sft = [m for m in models if m.startswith("sft_")]
    return RunResults(
        benchmarks=["arith"],
        evals={(m, "arith"): run_eval(s) for m, s in models.items()},
        passk={},
        rl_summary={r: summary(t) for r, t in times.items()},
        rl_steps={r: steps() for r in times},
        sft_summary={r: {"stage_wall_s": 30.0, "examples": 8} for r in sft},
        tasks={"arith": "math", **{r: "math" for r in [*times, *sft]}},
        scores={(m, "arith"): pd.Series(s, index=ids) for m, s in models.items()},
        sft_steps={r: [{"step": 0, "loss": 2.0}, {"step": 1, "loss": 1.5}] for r in sft},
        stats=StatsSettings(equivalence_margin=0.05, bootstrap_samples=2000, bootstrap_seed=0),
    )


@pytest.fixture
def seeded() -> RunResults:
    """base 0.1, SFT-H 0.2, DASH and GRPO over three seeds at the same ~0.5 (DASH 3x faster)."""
    rng = np.random.default_rng(0)

    def scores(p):
        return (rng.random(P) < p).astype(float)

    dash = [scores(0.5) for _ in range(3)]
    models = {"base": scores(0.1), "sft_h": scores(0.2), "dash": dash[0], "dash-s1": dash[1], "dash-s2": dash[2],
              "grpo": dash[2].copy(), "grpo-s1": dash[0].copy(), "grpo-s2": dash[1].copy()}
    times = {"dash": 100.0, "dash-s1": 110.0, "dash-s2": 95.0, "grpo": 300.0, "grpo-s1": 320.0, "grpo-s2": 290.0}
    return make_results(models, times)


def test_seeded_runs_group_into_configurations():
    assert config_of("dash-s12") == ("dash", "s12") and config_of("no_kl") == ("no_kl", "")
    assert seed_groups(["grpo-s2", "dash-s1", "dash", "grpo", "base"]) == {
        "grpo": ["grpo", "grpo-s2"], "dash": ["dash", "dash-s1"], "base": ["base"]}


def test_results_table_gives_each_run_a_wilson_interval(seeded):
    table = results_table(seeded.evals).set_index("model")
    assert list(table.columns[:5]) == ["benchmark", "n_problems", "accuracy", "accuracy_lo", "accuracy_hi"]
    assert (table["accuracy_lo"] < table["accuracy"]).all() and (table["accuracy"] < table["accuracy_hi"]).all()
    assert len(table) == 8  # every seed is its own row here


def test_paper_tables_read_a_configuration_over_its_seeds(seeded):
    table3 = paper_table(seeded, "table3").set_index("config")
    assert table3.loc["dash", "seeds"] == 3 and table3.loc["no_gf", "status"] == "not run"
    dash_mean = np.mean([seeded.evals[(m, "arith")]["accuracy"] for m in ("dash", "dash-s1", "dash-s2")])
    assert table3.loc["dash", "accuracy_arith"] == pytest.approx(dash_mean)
    assert table3.loc["dash", "accuracy_arith_lo"] < dash_mean < table3.loc["dash", "accuracy_arith_hi"]
    assert table3.loc["dash", "train_wall_s"] == pytest.approx((100 + 110 + 95) / 3)
    ratios = [100 / 300, 110 / 320, 95 / 290]
    assert table3.loc["dash", "time_vs_grpo"] == pytest.approx(np.exp(np.mean(np.log(ratios))))
    assert (table3.loc["dash", "time_vs_grpo_min"], table3.loc["dash", "time_vs_grpo_max"]) == (min(ratios), max(ratios))
    assert table3.loc["dash", "time_vs_grpo_lo"] < table3.loc["dash", "time_vs_grpo"] < table3.loc["dash", "time_vs_grpo_hi"] < 1
    assert table3.loc["grpo", "time_vs_grpo"] == pytest.approx(1.0)
    assert pd.isna(table3.loc["no_gf", "accuracy_arith_lo"]) and pd.isna(table3.loc["no_gf", "time_vs_grpo"])
    table1 = paper_table(seeded, "table1").set_index("config")
    assert table1.loc["base", "seeds"] == 1 and table1.loc["sft_h", "accuracy_arith_lo"] < table1.loc["sft_h", "accuracy_arith"]


def test_seeds_table_gives_three_intervals_per_seeded_configuration(seeded):
    table = seeds_table(seeded).set_index("config")
    assert sorted(table.index) == ["dash", "grpo"]
    row = table.loc["dash"]
    assert row["seeds"] == 3 and row["runs"] == "dash, dash-s1, dash-s2"
    for side in ("seeds", "problems", ""):
        lo, hi = row[f"{side}_lo" if side else "lo"], row[f"{side}_hi" if side else "hi"]
        assert lo < row["accuracy_mean"] < hi
    assert (row["train_wall_s_min"], row["train_wall_s_max"]) == (95.0, 110.0)


def test_findings_decide_by_the_intervals_and_list_what_was_not_run(seeded):
    findings = findings_table(seeded).set_index("id")
    # GRPO's seeds score exactly what DASH's do, problem by problem: a difference of 0 with a tight interval.
    assert findings.loc["dash_matches_grpo", "verdict"] == "reproduces"
    assert findings.loc["dash_matches_grpo", "benchmark"] == "arith" and findings.loc["dash_matches_grpo", "seeds"] == "3 vs 3"
    assert findings.loc["dash_faster_than_grpo", "verdict"] == "reproduces"
    assert findings.loc["dash_faster_than_grpo", "hi"] < 1 and findings.loc["dash_faster_than_grpo", "seeds"] == "3 paired"
    assert findings.loc["rl_beats_sft_h", "verdict"] == "reproduces" and findings.loc["rl_beats_sft_h", "lo"] > 0
    assert findings.loc["sft_h_hurts_base", "verdict"] == "does not"  # SFT-H helps here: 0.2 vs 0.1
    for claim in ("no_kl_no_worse", "no_kl_faster", "gf_keeps_accuracy", "sft_m_neutral"):
        assert findings.loc[claim, "verdict"] == "not run", claim
    assert "no_kl" in findings.loc["no_kl_faster", "method"] and "sft_m" in findings.loc["sft_m_neutral", "method"]
    assert set(findings["verdict"]) <= {"reproduces", "does not", "inconclusive", "not run"}


def test_one_seed_of_time_gives_no_time_verdict():
    rng = np.random.default_rng(1)
    results = make_results({"dash": (rng.random(P) < 0.5).astype(float), "grpo": (rng.random(P) < 0.5).astype(float)},
                           {"dash": 100.0, "grpo": 300.0})
    findings = findings_table(results).set_index("id")
    faster = findings.loc["dash_faster_than_grpo"]
    assert faster["verdict"] == "inconclusive" and faster["estimate"] == pytest.approx(1 / 3)
    assert pd.isna(faster["lo"]) and "needs >= 3 seeds" in faster["method"]
    # Two independent runs at the same true accuracy on 400 problems: an interval about +-0.07 wide.
    matches = findings.loc["dash_matches_grpo"]
    assert matches["verdict"] == "inconclusive" and matches["hi"] - matches["lo"] > 0.1


def test_a_run_trained_on_the_other_task_is_not_compared():
    rng = np.random.default_rng(2)
    results = make_results({"dash": (rng.random(P) < 0.5).astype(float), "grpo": (rng.random(P) < 0.5).astype(float)},
                           {"dash": 100.0, "grpo": 300.0})
    results.tasks["grpo"] = "code"
    findings = findings_table(results).set_index("id")
    assert findings.loc["dash_matches_grpo", "verdict"] == "not run"


def test_report_metrics(seeded):
    findings = findings_table(seeded)
    metrics = report_metrics(seeded, findings)
    assert metrics["accuracy"]["dash"]["arith"]["seeds"] == 3 and "dash-s1" not in metrics["accuracy"]
    assert metrics["time_vs_grpo"]["dash"]["seeds"] == 3
    assert metrics["findings"]["dash_matches_grpo.arith"]["verdict"] == "reproduces"
    assert metrics["findings"]["no_kl_faster"]["verdict"] == "not run"


def loaded_summary(wall: float, cpu: float, outside: bool | None) -> dict:
    """An RL summary with the training call's CPU seconds and its load record (None: not recorded)."""
    usage = {} if outside is None else {"usage": {"outside_load": outside, "cpu_s": cpu, "wall_s": wall}}
    return {**summary(wall), "stage_cpu_s": cpu, **usage}


def test_a_time_claim_gives_the_cpu_ratio_and_flags_runs_that_saw_outside_load():
    """The shared-machine case: DASH's run had another process on one of two cores (wall 1,294 s
    against GRPO's 600 s, 2.2x "slower"), while its CPU seconds say 0.32x."""
    rng = np.random.default_rng(3)
    results = make_results({"dash": (rng.random(P) < 0.5).astype(float), "grpo": (rng.random(P) < 0.5).astype(float)},
                           {"dash": 1294.0, "grpo": 600.0})
    results.rl_summary = {"dash": loaded_summary(1294.0, 380.0, True), "grpo": loaded_summary(600.0, 1180.0, False)}
    frame = findings_table(results)
    findings = frame.set_index("id")
    faster = findings.loc["dash_faster_than_grpo"]
    assert faster["estimate"] == pytest.approx(1294 / 600, abs=1e-6)
    assert faster["cpu_estimate"] == pytest.approx(380 / 1180, abs=1e-6)
    assert faster["outside_load"] == "dash" and "WARNING: dash ran beside outside load" in faster["method"]
    assert pd.isna(findings.loc["dash_matches_grpo", "cpu_estimate"])  # accuracy claims have no times
    metrics = report_metrics(results, frame)["time_vs_grpo"]
    assert metrics["dash"]["cpu_ratio"] == pytest.approx(380 / 1180, abs=1e-6) and metrics["dash"]["outside_load"] is True
    assert metrics["grpo"]["cpu_ratio"] == 1.0 and metrics["grpo"]["outside_load"] is False
    table3 = paper_table(results, "table3").set_index("config")
    assert table3.loc["dash", "cpu_time_vs_grpo"] == pytest.approx(380 / 1180)
    assert table3.loc["dash", "outside_load"] == "dash" and table3.loc["grpo", "outside_load"] == "none"

    # An idle machine: no flag, no warning; summaries from before the record: "not recorded".
    results.rl_summary = {"dash": loaded_summary(200.0, 380.0, False), "grpo": loaded_summary(600.0, 1180.0, False)}
    faster = findings_table(results).set_index("id").loc["dash_faster_than_grpo"]
    assert faster["outside_load"] == "none" and "WARNING" not in faster["method"]
    results.rl_summary = {"dash": loaded_summary(200.0, 380.0, None), "grpo": loaded_summary(600.0, 1180.0, False)}
    assert findings_table(results).set_index("id").loc["dash_faster_than_grpo", "outside_load"] == "not recorded"
