"""The paper's tables (docs/algorithm.md §4) from the runs' recorded metrics.

``RunResults`` holds everything the report reads, keyed by run (and benchmark); runs named
``<config>-s<k>`` are seed ``k`` of a configuration, and a table reads a configuration over all
its seeds. Rows are the matrix's named configurations; a configuration this profile did not run
keeps its row with empty cells and "not run" in ``status``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dashrl.infra.seeds import keyed_rng
from dashrl.report.stats import Interval, Ratio, bootstrap_mean, ratio_over_seeds, t_interval
from dashrl.report.tables import accuracy_interval, rounded

# ------------------------------------------------------------------------------------------------
# The paper's tables and figures (docs/algorithm.md §4), from the runs' recorded metrics.
# Rows are the matrix's named configurations; a configuration that was not run in this profile
# keeps its row with empty cells and "not run" in `status`, so a table never silently shrinks.

PAPER_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "table1": ("Table 1: base vs SFT vs DASH (accuracy, 1 sample per problem)", ("base", "sft_h", "sft_m", "dash")),
    "table2": ("Table 2: coding, base vs SFT-H vs DASH (pass@1 = first of n samples, pass@n)", ("base", "sft_h", "dash")),
    "table3": ("Table 3: standard GRPO vs DASH without filtering vs DASH (time and accuracy)", ("grpo", "no_gf", "dash")),
    "table4": ("Table 4: coding, GRPO vs DASH without filtering vs DASH (time, pass@1, pass@n)", ("grpo", "no_gf", "dash")),
    "table5": ("Table 5: policy gradient (DASH) vs PPO-Multi vs PPO-Mini", ("dash", "ppo_multi", "ppo_mini")),
    "table6": ("Table 6: DASH with KL (beta > 0) vs without (No-KL)", ("dash", "no_kl")),
}

# The task each table reports on: math tables read math benchmarks and runs trained on a math
# dataset, the coding tables (2, 4) code benchmarks and runs trained on a code dataset.
TABLE_TASKS = {"table1": "math", "table2": "code", "table3": "math", "table4": "code", "table5": "math", "table6": "math"}

@dataclass(frozen=True)
class StatsSettings:
    """report.equivalence_margin, bootstrap_samples, bootstrap_seed (params.yaml)."""

    equivalence_margin: float = 0.05
    bootstrap_samples: int = 10000
    bootstrap_seed: int = 0

@dataclass
class RunResults:
    """Everything the report reads, keyed by run name (and benchmark).

    Runs named ``<config>-s<k>`` are seed ``k`` of configuration ``<config>`` (profiles' ``repeat``):
    the paper's tables and the findings read a configuration over all its seeds.
    """

    benchmarks: list[str]
    evals: dict[tuple[str, str], dict[str, Any]]  # (model, benchmark) -> evaluate metrics
    passk: dict[tuple[str, str], dict[str, Any]]  # (model, benchmark) -> pass@k metrics
    rl_summary: dict[str, dict[str, Any]]  # run -> data/rl/<run>/summary.json
    rl_steps: dict[str, list[dict[str, Any]]]  # run -> metrics.jsonl rows
    sft_summary: dict[str, dict[str, Any]]  # run -> data/sft/<run>/summary.json
    tasks: dict[str, str] = field(default_factory=dict)  # benchmark or run -> "math" | "code" (its training data's)
    # (model, benchmark) -> the first sample's score per problem (index: problem id), from problems.parquet
    scores: dict[tuple[str, str], pd.Series] = field(default_factory=dict)
    sft_steps: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # run -> data/sft/<run>/metrics.jsonl rows
    stats: StatsSettings = field(default_factory=StatsSettings)

    def members(self, config: str) -> list[str]:
        """The runs of a configuration: the run itself, then its seeded copies by seed."""
        names = {m for m, _ in self.evals} | set(self.rl_summary) | set(self.sft_summary)
        return seed_groups(names).get(config, [])

SEEDED = re.compile(r"^(?P<config>.+)-s(?P<seed>\d+)$")  # <config>-s<k>: seed k of a configuration

def config_of(name: str) -> tuple[str, str]:
    """(configuration, seed label): ``dash`` -> (dash, ""), ``dash-s1`` -> (dash, "s1")."""
    match = SEEDED.match(name)
    return (match["config"], f"s{match['seed']}") if match else (name, "")

def seed_groups(names: Iterable[str]) -> dict[str, list[str]]:
    """Configuration -> its runs (the run itself first, then ``-s<k>`` copies by k), in first-seen order."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(config_of(name)[0], []).append(name)
    for members in groups.values():
        members.sort(key=lambda n: -1 if not config_of(n)[1] else int(config_of(n)[1][1:]))
    return groups

def task_benchmarks(results: RunResults, task: str) -> list[str]:
    return [b for b in results.benchmarks if results.tasks.get(b, "math") == task]

def score_matrix(results: RunResults, groups: list[list[str]], benchmark: str) -> list[np.ndarray] | None:
    """Each group's (seeds, problems) matrix of first-sample scores on the problems all of them have, in
    one order; None when a run's per-problem rows are missing."""
    series = [[results.scores.get((m, benchmark)) for m in group] for group in groups]
    if any(s is None for group in series for s in group):
        return None
    ids = series[0][0].index
    for group in series:
        for s in group:
            ids = ids[ids.isin(s.index)]
    if len(ids) == 0:
        return None
    return [np.stack([s.loc[ids].to_numpy(dtype=float) for s in group]) for group in series]

def config_accuracy(results: RunResults, config: str, benchmark: str) -> Interval | None:
    """A configuration's accuracy on a benchmark with its 95% interval: one seed, Wilson over the
    problems; several, the mean over seeds with a bootstrap over seeds, then problems."""
    members = [m for m in results.members(config) if (m, benchmark) in results.evals]
    if not members:
        return None
    st = results.stats
    key = f"accuracy/{config}/{benchmark}"
    if len(members) == 1:
        scores = results.scores.get((members[0], benchmark))
        return accuracy_interval(results.evals[(members[0], benchmark)], None if scores is None else scores.to_numpy(),
                                 st.bootstrap_samples, keyed_rng(st.bootstrap_seed, key))
    matrices = score_matrix(results, [members], benchmark)
    if matrices is None:  # no per-problem rows: the spread over seeds only
        return t_interval([results.evals[(m, benchmark)]["accuracy"] for m in members])
    return bootstrap_mean(matrices[0], st.bootstrap_samples, keyed_rng(st.bootstrap_seed, key))

def _mean_over_seeds(results: RunResults, config: str, benchmark: str, key: str) -> Any:
    values = [results.evals[(m, benchmark)].get(key) for m in results.members(config) if (m, benchmark) in results.evals]
    return _mean_values(values)

def _mean_values(values: list[Any]) -> Any:
    """The mean of numbers (None when none); anything else: the first value."""
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool) and v is not None]
    if numbers and len(numbers) == len(values):
        return float(np.mean(numbers)) if len(numbers) > 1 else numbers[0]
    return values[0] if values else None

def config_summary(results: RunResults, config: str) -> dict[str, Any]:
    """A configuration's RL summary: each number the mean over its seeds."""
    summaries = [results.rl_summary[m] for m in results.members(config) if m in results.rl_summary]
    if not summaries:
        return {}
    return {k: _mean_values([s.get(k) for s in summaries]) for k in summaries[0]}

def config_times(results: RunResults, config: str, key: str = "train_wall_s") -> dict[str, float]:
    """Seed label -> training time of each of the configuration's RL runs: wall seconds of the steps
    (``train_wall_s``), or ``stage_cpu_s``, the process CPU seconds of the training call."""
    return {config_of(m)[1]: float(results.rl_summary[m][key]) for m in results.members(config)
            if m in results.rl_summary and results.rl_summary[m].get(key)}

def time_ratio(results: RunResults, config: str, reference: str, key: str = "train_wall_s") -> Ratio | None:
    """``config``'s training time over ``reference``'s, runs paired by seed (stats.ratio_over_seeds);
    ``key``: ``train_wall_s`` (wall time) or ``stage_cpu_s`` (CPU time)."""
    return ratio_over_seeds(config_times(results, config, key), config_times(results, reference, key))

def outside_load(results: RunResults, configs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(runs that saw outside load, runs with no load record) among the configurations' RL runs: a
    run's summary ``usage.outside_load`` (dashrl.infra.usage: load beyond the run's own CPU use, or steal)."""
    loaded, unknown = [], []
    for config in configs:
        for m in results.members(config):
            if m not in results.rl_summary:
                continue
            usage = results.rl_summary[m].get("usage")
            if not isinstance(usage, dict) or "outside_load" not in usage:
                unknown.append(m)
            elif usage["outside_load"]:
                loaded.append(m)
    return loaded, unknown

def _n_seeds(results: RunResults, config: str) -> int | None:
    trained = [m for m in results.members(config) if m in results.rl_summary or m in results.sft_summary]
    evaluated = {m for m, _ in results.evals if config_of(m)[0] == config}
    return len(trained) or len(evaluated) or None

def _accuracy_columns(results: RunResults, name: str, benchmarks: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for b in benchmarks:
        interval = config_accuracy(results, name, b) if name else None
        row[f"accuracy_{b}"] = interval.estimate if interval else None
        row[f"accuracy_{b}_lo"] = rounded(interval.lo) if interval else None
        row[f"accuracy_{b}_hi"] = rounded(interval.hi) if interval else None
    return row

def _code_columns(results: RunResults, name: str, benchmarks: list[str]) -> dict[str, Any]:
    """pass@1 as the paper (the first of n samples, with its 95% interval), the unbiased pass@1 (mean
    over n) and pass@n; means over seeds."""
    row: dict[str, Any] = {}
    for b in benchmarks:
        n = _mean_over_seeds(results, name, b, "samples_per_problem") if name else None
        n = int(n) if n else None
        first = config_accuracy(results, name, b) if name else None
        row[f"pass@1_first_{b}"] = first.estimate if first else None
        row[f"pass@1_first_{b}_lo"] = rounded(first.lo) if first else None
        row[f"pass@1_first_{b}_hi"] = rounded(first.hi) if first else None
        row[f"pass@1_mean_{b}"] = (_mean_over_seeds(results, name, b, f"mean@{n}") if n and n > 1
                                   else (first.estimate if first else None))
        row[f"pass@n_{b}"] = _mean_over_seeds(results, name, b, f"pass@{n}") if n and n > 1 else None
        row[f"n_{b}"] = n
    return row

def config_status(results: RunResults, name: str, task: str, benchmarks: list[str]) -> str:
    members = results.members(name)
    evaluated = any((m, b) in results.evals for m in members for b in benchmarks)
    if name == "base":
        return "ok" if evaluated else f"not evaluated (no {task} benchmark)"
    trained = [m for m in members if m in results.rl_summary or m in results.sft_summary]
    if trained and results.tasks.get(trained[0], "math") != task:
        return f"not run (trained on {results.tasks.get(trained[0])})"
    return "ok" if trained and evaluated else ("trained, not evaluated" if trained else "not run")

def _time_columns(results: RunResults, name: str) -> dict[str, Any]:
    ratio = time_ratio(results, name, "grpo") if name else None
    cpu = time_ratio(results, name, "grpo", key="stage_cpu_s") if name else None
    loaded = outside_load(results, [name, "grpo"])[0] if ratio else []
    return {"time_vs_grpo": ratio.estimate if ratio else None, "time_vs_grpo_min": ratio.min if ratio else None,
            "time_vs_grpo_max": ratio.max if ratio else None, "time_vs_grpo_lo": rounded(ratio.lo) if ratio else None,
            "time_vs_grpo_hi": rounded(ratio.hi) if ratio else None, "cpu_time_vs_grpo": cpu.estimate if cpu else None,
            "outside_load": (", ".join(loaded) or "none") if ratio else None}

def paper_table(results: RunResults, table: str) -> pd.DataFrame:
    """One of the paper's tables as a DataFrame (columns depend on the table). A configuration with
    several seeds: means over its seeds, ``seeds`` says how many; ``accuracy_<b>_lo``/``_hi`` is the
    95% interval (config_accuracy); ``time_vs_grpo`` the geometric mean of the per-seed ratios with
    their min, max and (>= 3 seeds) 95% interval."""
    _, names = PAPER_TABLES[table]
    task = TABLE_TASKS[table]
    benchmarks = task_benchmarks(results, task)
    rows = []
    for name in names:
        status = config_status(results, name, task, benchmarks)
        run = status == "ok" or status == "trained, not evaluated"
        rl = config_summary(results, name) if run else {}
        members = results.members(name) if run else []
        row: dict[str, Any] = {"config": name, "status": status, "seeds": _n_seeds(results, name) if run else None}
        if task == "code":
            row.update(_code_columns(results, name if run else "", benchmarks))
        else:
            row.update(_accuracy_columns(results, name if run else "", benchmarks))
        if table == "table1":
            sft = [results.sft_summary[m] for m in members if m in results.sft_summary]
            row["train_wall_s"] = rl.get("train_wall_s", _mean_values([s.get("stage_wall_s") for s in sft]))
            row["sft_examples"] = _mean_values([s.get("examples") for s in sft])
        if table in ("table3", "table4", "table5", "table6"):
            row["train_wall_s"] = rl.get("train_wall_s")
            row["steps"] = rl.get("steps")
            row["reward_last_steps"] = rl.get("reward_last_steps")
        if table in ("table3", "table4"):
            row["sampling_s"] = rl.get("total_sampling_s")
            row["gradient_update_s"] = gradient_update_s(rl) if rl else None
            row["kept_fraction"] = rl.get("kept_fraction_mean")
            row.update(_time_columns(results, name if run else ""))
        if table == "table5":
            steps = [results.rl_steps[m] for m in members if results.rl_steps.get(m)]
            row["optimizer_steps"] = _mean_values([sum(s["optimizer_steps"] for s in run_steps) for run_steps in steps])
            row["reward_std_over_steps"] = _mean_values([float(np.std([s["reward_mean"] for s in run_steps]))
                                                         for run_steps in steps])
        if table == "table6":
            for b in benchmarks:
                row[f"eval_completion_tokens_{b}"] = _mean_over_seeds(results, name, b, "completion_tokens_mean") if run else None
            row["train_completion_tokens_last_steps"] = rl.get("completion_tokens_last_steps")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame["seeds"] = frame["seeds"].astype("Int64")  # a count, blank when not run
    return frame


def gradient_update_s(summary: dict[str, Any]) -> float:
    return float(summary.get("total_forward_backward_s", 0.0) + summary.get("total_optimizer_s", 0.0))
