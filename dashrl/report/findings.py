"""The paper's findings tested on these runs: the seeds table, the claims, their verdicts, the report's DVC metrics.

Each claim compares two configurations (accuracy a - b with a paired bootstrap over the same
problems, or training time a / b over seeds); its verdict comes from the 95% interval only
(``dashrl.report.stats.decide``). A time claim also gives the ratio of the runs' process CPU
seconds (``cpu_estimate``) and names the runs that shared the machine with outside load
(``outside_load``, dashrl.infra.usage's rule): their wall times measure the machine as much as the
algorithm, and the method says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashrl.infra.seeds import keyed_rng
from dashrl.report.paper import (
    RunResults,
    config_accuracy,
    config_status,
    config_times,
    outside_load,
    score_matrix,
    seed_groups,
    time_ratio,
)
from dashrl.report.stats import bootstrap_mean, decide, paired_difference, rule, t_interval
from dashrl.report.tables import json_value, rounded

# ------------------------------------------------------------------------------------------------
# Statistics: seeds, and the findings the report can test (docs/results.md, "The paper's findings").


def seeds_table(results: RunResults) -> pd.DataFrame:
    """One row per configuration with several seeds x benchmark: each seed's accuracy, their mean with a
    t interval over seeds, a bootstrap over problems resampled jointly across seeds (seeds fixed), and
    one over seeds then problems; for RL configurations the training time's mean, min and max."""
    columns = ["config", "benchmark", "seeds", "runs", "accuracy_per_seed", "accuracy_mean", "seeds_lo", "seeds_hi",
               "problems_lo", "problems_hi", "lo", "hi", "train_wall_s_mean", "train_wall_s_min", "train_wall_s_max"]
    rows = []
    groups = seed_groups(dict.fromkeys([m for m, _ in results.evals] + list(results.rl_summary)))
    st = results.stats
    for config, members in groups.items():
        if len(members) < 2:
            continue
        times = list(config_times(results, config).values())
        timing = {"train_wall_s_mean": float(np.mean(times)) if times else None,
                  "train_wall_s_min": min(times, default=None), "train_wall_s_max": max(times, default=None)}
        for b in results.benchmarks:
            evaluated = [m for m in members if (m, b) in results.evals]
            if not evaluated:
                continue
            accuracies = [results.evals[(m, b)]["accuracy"] for m in evaluated]
            over_seeds = t_interval(accuracies)
            matrices = score_matrix(results, [evaluated], b)
            rng_key = f"accuracy/{config}/{b}"
            joint = bootstrap_mean(matrices[0], st.bootstrap_samples, keyed_rng(st.bootstrap_seed, rng_key + "/problems"),
                                   resample_seeds=False) if matrices else None
            both = config_accuracy(results, config, b)
            rows.append({"config": config, "benchmark": b, "seeds": len(evaluated), "runs": ", ".join(evaluated),
                         "accuracy_per_seed": ", ".join(f"{a:.3f}" for a in accuracies), "accuracy_mean": over_seeds.estimate,
                         "seeds_lo": rounded(over_seeds.lo), "seeds_hi": rounded(over_seeds.hi),
                         "problems_lo": rounded(joint.lo) if joint else None, "problems_hi": rounded(joint.hi) if joint else None,
                         "lo": rounded(both.lo) if both else None, "hi": rounded(both.hi) if both else None, **timing})
    return pd.DataFrame(rows, columns=columns)

@dataclass(frozen=True)
class Claim:
    """A finding of the paper the report can test: ``a`` against ``b`` (configurations)."""

    key: str
    text: str
    paper: str
    kind: str  # dashrl.report.stats.CLAIM_KINDS: better | worse | matches | no_worse | neutral (accuracy a - b) | faster (time a / b)
    a: str
    b: str

CLAIMS = (
    Claim("rl_beats_sft_h", "On-policy RL (DASH) beats SFT on human solutions", "0.5B MATH: DASH 27.2 vs SFT-H 8.0",
          "better", "dash", "sft_h"),
    Claim("sft_h_hurts_base", "SFT on human solutions lowers the base model's accuracy", "base 22.6 -> SFT-H 8.0",
          "worse", "sft_h", "base"),
    Claim("sft_m_neutral", "SFT on the model's own traces is about neutral", "SFT-M 24.0 vs base 22.6",
          "neutral", "sft_m", "base"),
    Claim("sft_m_below_rl", "SFT on the model's own traces stays below RL (DASH)", "SFT-M 24.0 vs DASH 27.2",
          "better", "dash", "sft_m"),
    Claim("dash_matches_grpo", "DASH matches GRPO's accuracy", "MATH 27.2 vs 27.6", "matches", "dash", "grpo"),
    Claim("dash_faster_than_grpo", "DASH trains faster than GRPO", "6.6 h vs 38.9 h (0.17x)", "faster", "dash", "grpo"),
    Claim("no_gf_faster_than_grpo", "Preemptive sampling alone (No-GF) trains faster than GRPO", "6.9 h vs 38.9 h",
          "faster", "no_gf", "grpo"),
    Claim("gf_faster", "Gradient filtering saves time on top (DASH faster than No-GF)", "6.6 h vs 6.9 h (-4%)",
          "faster", "dash", "no_gf"),
    Claim("gf_keeps_accuracy", "Gradient filtering keeps accuracy (DASH matches No-GF)", "DASH 27.2 vs No-GF 27.4",
          "matches", "dash", "no_gf"),
    Claim("no_kl_no_worse", "Without the KL term accuracy is no worse (No-KL vs DASH)", "MATH 31.4 vs 27.2",
          "no_worse", "no_kl", "dash"),
    Claim("no_kl_faster", "Without the KL term training is faster (No-KL vs DASH)", "5.7 h vs 6.6 h (0.5B)",
          "faster", "no_kl", "dash"),
)

FINDINGS_COLUMNS = ("id", "claim", "benchmark", "comparison", "verdict", "estimate", "lo", "hi", "min", "max",
                    "cpu_estimate", "outside_load", "seeds", "paper", "rule", "method")

def _seed_count(results: RunResults, config: str, benchmark: str | None) -> int:
    if benchmark is None:
        return len(config_times(results, config))
    return sum((m, benchmark) in results.evals for m in results.members(config))

def _claim_rows(results: RunResults, claim: Claim) -> list[dict[str, Any]]:
    st = results.stats
    base = {"id": claim.key, "claim": claim.text, "paper": claim.paper, "rule": rule(claim.kind, st.equivalence_margin)}
    if claim.kind == "faster":
        base["comparison"] = f"{claim.a} / {claim.b} (training time)"
        missing = [c for c in (claim.a, claim.b) if not config_times(results, c)]
        if missing:
            return [{**base, "benchmark": None, "verdict": "not run", "method": f"not run: {', '.join(missing)}"}]
        ratio = time_ratio(results, claim.a, claim.b)
        if ratio is None:
            return [{**base, "benchmark": None, "verdict": "inconclusive",
                     "method": f"no seed in both ({', '.join(results.members(claim.a))} vs {', '.join(results.members(claim.b))})"}]
        cpu = time_ratio(results, claim.a, claim.b, key="stage_cpu_s")
        loaded, unrecorded = outside_load(results, (claim.a, claim.b))
        method = f"geometric mean of per-seed ratios; {ratio.method}"
        if loaded:
            method += (f"; WARNING: {', '.join(loaded)} ran beside outside load (load average above the run's own CPU "
                       "use, or steal): their wall times measure the machine too; cpu_estimate is the CPU-time ratio")
        return [{**base, "benchmark": None, "seeds": f"{ratio.seeds} paired", "estimate": rounded(ratio.estimate),
                 "lo": rounded(ratio.lo), "hi": rounded(ratio.hi), "min": rounded(ratio.min), "max": rounded(ratio.max),
                 "cpu_estimate": rounded(cpu.estimate) if cpu else None,
                 "outside_load": ", ".join(loaded) or ("not recorded" if unrecorded else "none"),
                 "verdict": decide(claim.kind, ratio.lo, ratio.hi, st.equivalence_margin), "method": method}]
    base["comparison"] = f"{claim.a} - {claim.b} (accuracy)"
    rows = []
    for b in results.benchmarks:
        task = results.tasks.get(b, "math")
        if any(config_status(results, c, task, [b]) != "ok" for c in (claim.a, claim.b)):
            continue
        arms = [[m for m in results.members(c) if (m, b) in results.evals] for c in (claim.a, claim.b)]
        matrices = score_matrix(results, arms, b)
        if matrices is None:
            rows.append({**base, "benchmark": b, "verdict": "inconclusive", "method": "no per-problem rows"})
            continue
        diff = paired_difference(matrices[0], matrices[1], st.bootstrap_samples,
                                 keyed_rng(st.bootstrap_seed, f"{claim.key}/{b}"))
        rows.append({**base, "benchmark": b, "seeds": f"{len(arms[0])} vs {len(arms[1])}", "estimate": rounded(diff.estimate),
                     "lo": rounded(diff.lo), "hi": rounded(diff.hi), "verdict": decide(claim.kind, diff.lo, diff.hi, st.equivalence_margin),
                     "method": f"{diff.method} ({diff.n} problems, {st.bootstrap_samples} replicates)"})
    if not rows:
        missing = []
        for c in (claim.a, claim.b):
            statuses = [config_status(results, c, results.tasks.get(b, "math"), [b]) for b in results.benchmarks]
            if "ok" not in statuses:
                status = statuses[0] if statuses else "not run"
                detail = status.removeprefix("not run").strip(" ()")  # "trained on code", "trained, not evaluated"
                missing.append(f"{c} ({detail})" if detail else c)
        why = (f"not run: {', '.join(missing)}" if missing
               else "not run: no benchmark of the task both were trained on evaluates both")
        rows.append({**base, "benchmark": None, "verdict": "not run", "method": why})
    return rows

def findings_table(results: RunResults) -> pd.DataFrame:
    """One row per claim (accuracy claims: per benchmark that evaluates both configurations): the
    estimate (difference a - b, or time ratio a / b), its 95% interval, and the verdict its interval
    gives (dashrl.report.stats.decide); claims whose runs this profile did not run say so."""
    rows = [row for claim in CLAIMS for row in _claim_rows(results, claim)]
    return pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))

def report_metrics(results: RunResults, findings: pd.DataFrame) -> dict[str, Any]:
    """``data/report/metrics.json`` (DVC metrics: ``dvc exp show``, ``dvc metrics diff``): each
    configuration's accuracy per benchmark with its interval and seeds, training time relative to
    GRPO (wall, and CPU: ``cpu_ratio``; ``outside_load``: a run of either saw outside load), and each
    finding's estimate, interval and verdict."""
    accuracy: dict[str, dict[str, Any]] = {}
    for config in seed_groups(dict.fromkeys(m for m, _ in results.evals)):
        for b in results.benchmarks:
            interval = config_accuracy(results, config, b)
            if interval:
                accuracy.setdefault(config, {})[b] = {"mean": json_value(interval.estimate), "lo": json_value(interval.lo),
                                                      "hi": json_value(interval.hi), "seeds": _seed_count(results, config, b)}
    times = {}
    for config in seed_groups(results.rl_summary):
        ratio = time_ratio(results, config, "grpo")
        if ratio:
            cpu = time_ratio(results, config, "grpo", key="stage_cpu_s")
            times[config] = {"ratio": json_value(ratio.estimate), "min": json_value(ratio.min), "max": json_value(ratio.max),
                             "lo": json_value(ratio.lo), "hi": json_value(ratio.hi), "seeds": ratio.seeds,
                             "cpu_ratio": json_value(cpu.estimate) if cpu else None,
                             "outside_load": bool(outside_load(results, (config, "grpo"))[0])}
    claims = {}
    for row in findings.itertuples(index=False):
        name = row.id if not isinstance(row.benchmark, str) else f"{row.id}.{row.benchmark}"
        claims[name] = {"verdict": row.verdict, "estimate": json_value(row.estimate), "lo": json_value(row.lo),
                        "hi": json_value(row.hi)}
    return {"accuracy": accuracy, "time_vs_grpo": times, "findings": claims}
