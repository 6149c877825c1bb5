"""Result tables (markdown, CSV) and plots (PNG) from evaluation metrics.

Input: one metrics dict per (model, benchmark), as written by the evaluate stage. Output: a table
with one row per model x benchmark and figures; nothing here reads or writes files except through
the paths it is given.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashrl.infra.seeds import keyed_rng
from dashrl.stats import (  # noqa: E402
    Interval,
    Ratio,
    bootstrap_mean,
    decide,
    paired_difference,
    ratio_over_seeds,
    rule,
    t_interval,
    wilson,
)

TABLE_COLUMNS = (
    "model", "benchmark", "n_problems", "accuracy", "accuracy_lo", "accuracy_hi", "boxed_rate", "truncation_rate",
    "completion_tokens_mean", "generation_tokens_per_s", "grader_timeouts", "grader_parse_errors",
)


def accuracy_interval(metrics: Mapping[str, Any], scores: np.ndarray | None = None, samples: int = 10000,
                      rng: np.random.Generator | None = None) -> Interval:
    """One run's accuracy on one benchmark with its 95% interval over problems: Wilson when the
    per-problem scores are 0/1 (always, for the graders here); else a bootstrap over ``scores``."""
    n, accuracy = int(metrics["n_problems"]), float(metrics["accuracy"])
    successes = accuracy * n
    if abs(successes - round(successes)) < 1e-6 or scores is None:
        return wilson(min(n, max(0, round(successes))), n)
    return bootstrap_mean(scores, samples, rng if rng is not None else np.random.default_rng(0))


def results_table(metrics: Mapping[tuple[str, str], Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model, benchmark); pass@k / mean@k columns appear when any run has them.
    ``accuracy_lo``/``accuracy_hi``: its 95% Wilson interval over the problems."""
    rows = []
    for (model, benchmark), m in metrics.items():
        counts = m.get("grader_status_counts", {})
        interval = accuracy_interval(m)
        row = {
            "model": model,
            "benchmark": benchmark,
            "n_problems": m["n_problems"],
            "accuracy": m["accuracy"],
            "accuracy_lo": _r(interval.lo),
            "accuracy_hi": _r(interval.hi),
            **{c: m[c] for c in TABLE_COLUMNS[6:10]},
            "grader_timeouts": counts.get("timeout", 0),
            "grader_parse_errors": counts.get("parse_error", 0),
        }
        row.update({k: v for k, v in m.items() if k.startswith(("pass@", "mean@"))})
        rows.append(row)
    table = pd.DataFrame(rows)
    extra = sorted((c for c in table.columns if c not in TABLE_COLUMNS), key=_k_sort_key)
    return table[[*TABLE_COLUMNS, *extra]]


COMPUTE_COLUMNS = ("stage", "dtypes", "device", "cpu", "cpu_flags", "torch_cpu_kernels", "bf16_native")


def compute_table(records: Mapping[str, Mapping[str, Any] | None]) -> pd.DataFrame:
    """Where and in which dtype each stage computed: stage -> its run.json ``compute`` record (None:
    not recorded, e.g. a run from before dtypes were recorded)."""
    rows = []
    for stage, c in records.items():
        if c is None:
            rows.append({"stage": stage, **{k: None for k in COMPUTE_COLUMNS[1:]}})
            continue
        rows.append({
            "stage": stage,
            "dtypes": ", ".join(f"{k} {v}" for k, v in c["dtypes"].items()),
            "device": c.get("gpu") or c["device"],
            "cpu": c["cpu_model"],
            "cpu_flags": " ".join(c["cpu_flags"]) or "—",
            "torch_cpu_kernels": " ".join([str(c.get("torch_cpu_capability")),
                                           *(f"{k}={v}" for k, v in c.get("isa_caps", {}).items())]),
            "bf16_native": c["bf16_native"],
        })
    return pd.DataFrame(rows, columns=list(COMPUTE_COLUMNS))


def compute_notes(records: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """Notes for the report: results in different dtypes or from different machines do not compare."""
    known = [c for c in records.values() if c is not None]
    dtypes = sorted({v for c in known for v in c["dtypes"].values()})
    machines = sorted({c.get("gpu") or c["cpu_model"] for c in known})
    notes = ["Results computed in different dtypes are not comparable: bf16 and fp32 sample different tokens "
             "within a few dozen steps, so a run's numbers move with the dtype and the machine, not only the seed."]
    if len(dtypes) > 1:
        notes.append(f"WARNING: these results mix dtypes ({', '.join(dtypes)}): compare only rows computed alike.")
    if len(machines) > 1:
        notes.append(f"WARNING: these results come from different machines ({'; '.join(machines)}).")
    if len(known) < len(records):
        notes.append("Stages marked — did not record their dtype and machine (run before this was recorded).")
    return notes


def _k_sort_key(column: str) -> tuple[str, int]:
    name, _, k = column.partition("@")
    return name, int(k) if k.isdigit() else 0


def to_markdown(table: pd.DataFrame, title: str, notes: list[str] = ()) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency)."""
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False)]
    parts = [f"# {title}", "", header, rule, *body, ""]
    parts += [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def _fmt(value: Any) -> str:
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "—"  # not run / not applicable
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_accuracy(table: pd.DataFrame, path: str | Path, dpi: int = 120) -> None:
    """Grouped bars: single-sample accuracy per benchmark, one bar per model."""
    pivot = table.pivot(index="benchmark", columns="model", values="accuracy")
    pivot = pivot[list(dict.fromkeys(table["model"]))]  # models in params order, not alphabetical
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(pivot.index) + 2), 3.6))
    pivot.plot.bar(ax=ax, rot=0, width=0.8)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.2f", fontsize=8)
    ax.set_ylabel("accuracy (1 sample / problem)")
    ax.set_xlabel("benchmark")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by model and benchmark")
    ax.legend(title="model", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)


def plot_accuracy_by_level(metrics: Mapping[tuple[str, str], Mapping[str, Any]], path: str | Path, dpi: int = 120) -> None:
    """Accuracy against difficulty level, one line per (model, benchmark) that has levels."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (model, benchmark), m in metrics.items():
        by_level = m.get("accuracy_by_level", {})
        if len(by_level) < 2:
            continue
        levels = sorted(by_level, key=int)
        ax.plot([int(x) for x in levels], [by_level[x] for x in levels], marker="o", label=f"{model} / {benchmark}")
    ax.set_xlabel("difficulty level")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("accuracy (1 sample / problem)")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by difficulty level")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no benchmark with several levels", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)


def plot_rl_curves(runs: Mapping[str, list[Mapping[str, Any]]], path: str | Path, dpi: int = 120) -> None:
    """Per-step training curves of one or more RL runs: reward, kept fraction, length, time split."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    (ax_reward, ax_kept), (ax_length, ax_time) = axes
    for name, metrics in runs.items():
        steps = [m["step"] + 1 for m in metrics]
        rewards = pd.Series([m["reward_mean"] for m in metrics])
        line = ax_reward.plot(steps, rewards, marker=".", alpha=0.45)[0]
        ax_reward.plot(steps, rewards.rolling(3, min_periods=1).mean(), color=line.get_color(), label=name)
        ax_kept.plot(steps, [m["kept_fraction"] for m in metrics], marker=".", color=line.get_color(), label=f"{name} kept")
        ax_kept.plot(steps, [m["zero_variance_group_fraction"] for m in metrics], ls="--", color=line.get_color(),
                     label=f"{name} zero-variance groups")
        ax_length.plot(steps, [m["completion_tokens_mean"] for m in metrics], marker=".", color=line.get_color(), label=name)
    ax_reward.set(title="training reward (dots: step mean, line: 3-step mean)", xlabel="step", ylabel="reward")
    ax_kept.set(title="gradient filtering", xlabel="step", ylabel="fraction", ylim=(0, 1.05))
    ax_length.set(title="completion length", xlabel="step", ylabel="tokens (mean)")
    phases = ("sampling", "reward", "forward_backward", "optimizer", "weight_sync")
    names = list(runs)
    bottom = [0.0] * len(names)
    for phase in phases:
        seconds = [sum(m.get(f"time_{phase}_s", 0.0) for m in runs[n]) for n in names]
        ax_time.bar(names, seconds, bottom=bottom, label=phase.replace("_", " "))
        bottom = [b + s for b, s in zip(bottom, seconds, strict=True)]
    ax_time.set(title="wall time by phase (whole run)", ylabel="seconds")
    ax_time.tick_params(axis="x", labelrotation=30 if len(names) > 3 else 0)
    for ax in (ax_reward, ax_kept, ax_length, ax_time):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6 if len(names) > 3 else 7, ncol=2 if ax is ax_kept and len(names) > 2 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)


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


def _score_matrix(results: RunResults, groups: list[list[str]], benchmark: str) -> list[np.ndarray] | None:
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
    matrices = _score_matrix(results, [members], benchmark)
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


def config_times(results: RunResults, config: str) -> dict[str, float]:
    """Seed label -> training wall time of each of the configuration's RL runs."""
    return {config_of(m)[1]: float(results.rl_summary[m]["train_wall_s"]) for m in results.members(config)
            if m in results.rl_summary and results.rl_summary[m].get("train_wall_s")}


def time_ratio(results: RunResults, config: str, reference: str) -> Ratio | None:
    """``config``'s training time over ``reference``'s, runs paired by seed (stats.ratio_over_seeds)."""
    return ratio_over_seeds(config_times(results, config), config_times(results, reference))


def _n_seeds(results: RunResults, config: str) -> int | None:
    trained = [m for m in results.members(config) if m in results.rl_summary or m in results.sft_summary]
    evaluated = {m for m, _ in results.evals if config_of(m)[0] == config}
    return len(trained) or len(evaluated) or None


def _accuracy_columns(results: RunResults, name: str, benchmarks: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for b in benchmarks:
        interval = config_accuracy(results, name, b) if name else None
        row[f"accuracy_{b}"] = interval.estimate if interval else None
        row[f"accuracy_{b}_lo"] = _r(interval.lo) if interval else None
        row[f"accuracy_{b}_hi"] = _r(interval.hi) if interval else None
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
        row[f"pass@1_first_{b}_lo"] = _r(first.lo) if first else None
        row[f"pass@1_first_{b}_hi"] = _r(first.hi) if first else None
        row[f"pass@1_mean_{b}"] = (_mean_over_seeds(results, name, b, f"mean@{n}") if n and n > 1
                                   else (first.estimate if first else None))
        row[f"pass@n_{b}"] = _mean_over_seeds(results, name, b, f"pass@{n}") if n and n > 1 else None
        row[f"n_{b}"] = n
    return row


def _status(results: RunResults, name: str, task: str, benchmarks: list[str]) -> str:
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
    return {"time_vs_grpo": ratio.estimate if ratio else None, "time_vs_grpo_min": ratio.min if ratio else None,
            "time_vs_grpo_max": ratio.max if ratio else None, "time_vs_grpo_lo": _r(ratio.lo) if ratio else None,
            "time_vs_grpo_hi": _r(ratio.hi) if ratio else None}


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
        status = _status(results, name, task, benchmarks)
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
            row["gradient_update_s"] = _gradient_update_s(rl) if rl else None
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
            matrices = _score_matrix(results, [evaluated], b)
            rng_key = f"accuracy/{config}/{b}"
            joint = bootstrap_mean(matrices[0], st.bootstrap_samples, keyed_rng(st.bootstrap_seed, rng_key + "/problems"),
                                   resample_seeds=False) if matrices else None
            both = config_accuracy(results, config, b)
            rows.append({"config": config, "benchmark": b, "seeds": len(evaluated), "runs": ", ".join(evaluated),
                         "accuracy_per_seed": ", ".join(f"{a:.3f}" for a in accuracies), "accuracy_mean": over_seeds.estimate,
                         "seeds_lo": _r(over_seeds.lo), "seeds_hi": _r(over_seeds.hi),
                         "problems_lo": _r(joint.lo) if joint else None, "problems_hi": _r(joint.hi) if joint else None,
                         "lo": _r(both.lo) if both else None, "hi": _r(both.hi) if both else None, **timing})
    return pd.DataFrame(rows, columns=columns)


@dataclass(frozen=True)
class Claim:
    """A finding of the paper the report can test: ``a`` against ``b`` (configurations)."""

    key: str
    text: str
    paper: str
    kind: str  # dashrl.stats.CLAIM_KINDS: better | worse | matches | no_worse | neutral (accuracy a - b) | faster (time a / b)
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
FINDINGS_COLUMNS = ("id", "claim", "benchmark", "comparison", "verdict", "estimate", "lo", "hi", "min", "max", "seeds",
                    "paper", "rule", "method")


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
        return [{**base, "benchmark": None, "seeds": f"{ratio.seeds} paired", "estimate": _r(ratio.estimate),
                 "lo": _r(ratio.lo), "hi": _r(ratio.hi), "min": _r(ratio.min), "max": _r(ratio.max),
                 "verdict": decide(claim.kind, ratio.lo, ratio.hi, st.equivalence_margin),
                 "method": f"geometric mean of per-seed ratios; {ratio.method}"}]
    base["comparison"] = f"{claim.a} - {claim.b} (accuracy)"
    rows = []
    for b in results.benchmarks:
        task = results.tasks.get(b, "math")
        if any(_status(results, c, task, [b]) != "ok" for c in (claim.a, claim.b)):
            continue
        arms = [[m for m in results.members(c) if (m, b) in results.evals] for c in (claim.a, claim.b)]
        matrices = _score_matrix(results, arms, b)
        if matrices is None:
            rows.append({**base, "benchmark": b, "verdict": "inconclusive", "method": "no per-problem rows"})
            continue
        diff = paired_difference(matrices[0], matrices[1], st.bootstrap_samples,
                                 keyed_rng(st.bootstrap_seed, f"{claim.key}/{b}"))
        rows.append({**base, "benchmark": b, "seeds": f"{len(arms[0])} vs {len(arms[1])}", "estimate": _r(diff.estimate),
                     "lo": _r(diff.lo), "hi": _r(diff.hi), "verdict": decide(claim.kind, diff.lo, diff.hi, st.equivalence_margin),
                     "method": f"{diff.method} ({diff.n} problems, {st.bootstrap_samples} replicates)"})
    if not rows:
        missing = []
        for c in (claim.a, claim.b):
            statuses = [_status(results, c, results.tasks.get(b, "math"), [b]) for b in results.benchmarks]
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
    gives (dashrl.stats.decide); claims whose runs this profile did not run say so."""
    rows = [row for claim in CLAIMS for row in _claim_rows(results, claim)]
    return pd.DataFrame(rows, columns=list(FINDINGS_COLUMNS))


def curve_frames(results: RunResults) -> dict[str, pd.DataFrame]:
    """Per-step training curves as CSV tables for DVC plots (``rl/<run>.csv``, ``sft/<run>.csv``): every
    numeric per-step metric, plus the cumulative training wall time of RL runs (``wall_s``)."""
    frames = {}
    for kind, runs in (("rl", results.rl_steps), ("sft", results.sft_steps)):
        for run, steps in runs.items():
            if not steps:
                continue
            frame = pd.DataFrame(steps)
            frame = frame[[c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])
                           and not pd.api.types.is_bool_dtype(frame[c])]]
            if "time_step_s" in frame:
                frame["wall_s"] = frame["time_step_s"].cumsum()
            frames[f"{kind}/{run}.csv"] = frame
    return frames


def _r(value: float | None) -> float | None:
    """Interval numbers rounded to 6 decimals (no 0.024999999999999994 in the tables)."""
    return None if value is None else round(float(value), 6)


def _clean(value: Any) -> Any:
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    return value


def report_metrics(results: RunResults, findings: pd.DataFrame) -> dict[str, Any]:
    """``data/report/metrics.json`` (DVC metrics: ``dvc exp show``, ``dvc metrics diff``): each
    configuration's accuracy per benchmark with its interval and seeds, training time relative to
    GRPO, and each finding's estimate, interval and verdict."""
    accuracy: dict[str, dict[str, Any]] = {}
    for config in seed_groups(dict.fromkeys(m for m, _ in results.evals)):
        for b in results.benchmarks:
            interval = config_accuracy(results, config, b)
            if interval:
                accuracy.setdefault(config, {})[b] = {"mean": _clean(interval.estimate), "lo": _clean(interval.lo),
                                                      "hi": _clean(interval.hi), "seeds": _seed_count(results, config, b)}
    times = {}
    for config in seed_groups(results.rl_summary):
        ratio = time_ratio(results, config, "grpo")
        if ratio:
            times[config] = {"ratio": _clean(ratio.estimate), "min": _clean(ratio.min), "max": _clean(ratio.max),
                             "lo": _clean(ratio.lo), "hi": _clean(ratio.hi), "seeds": ratio.seeds}
    claims = {}
    for row in findings.itertuples(index=False):
        name = row.id if not isinstance(row.benchmark, str) else f"{row.id}.{row.benchmark}"
        claims[name] = {"verdict": row.verdict, "estimate": _clean(row.estimate), "lo": _clean(row.lo),
                        "hi": _clean(row.hi)}
    return {"accuracy": accuracy, "time_vs_grpo": times, "findings": claims}


def _gradient_update_s(summary: dict[str, Any]) -> float:
    return float(summary.get("total_forward_backward_s", 0.0) + summary.get("total_optimizer_s", 0.0))


def _save(fig: Any, path: str | Path, dpi: int) -> None:
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the "not run" note
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)


def _missing_note(fig: Any, missing: list[str]) -> None:
    """Below the axes, bottom right: which runs of the figure this profile did not run."""
    if missing:
        fig.text(0.99, 0.01, "not run in this profile: " + ", ".join(missing), ha="right", va="bottom",
                 fontsize=7, color="0.4")


def plot_time_split(results: RunResults, path: str | Path, dpi: int = 120) -> None:
    """Fig. 1: training wall time split into sampling, gradient update and the rest (GRPO vs DASH)."""
    names = [n for n in ("grpo", "no_gf", "dash") if n in results.rl_summary]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    left = np.zeros(len(names))
    parts = {
        "sampling (inference)": [results.rl_summary[n].get("total_sampling_s", 0.0) for n in names],
        "gradient update (fwd+bwd+optimizer)": [_gradient_update_s(results.rl_summary[n]) for n in names],
        "other (reward, weight sync)": [results.rl_summary[n]["train_wall_s"] - results.rl_summary[n].get("total_sampling_s", 0.0)
                                        - _gradient_update_s(results.rl_summary[n]) for n in names],
    }
    for label, seconds in parts.items():
        ax.barh(names, seconds, left=left, label=label)
        left = left + np.array(seconds)
    for i, total in enumerate(left):
        ax.text(total, i, f" {total / 60:.1f} min", va="center", fontsize=8)
    ax.set_xlabel("training wall time (s)")
    ax.set_xlim(0, max(left.max() * 1.2, 1) if len(left) else 1)
    ax.set_title("Fig. 1: where the training time goes")
    ax.legend(fontsize=7, loc="lower right" if len(names) < 2 else "best")
    _missing_note(fig, [n for n in ("grpo", "dash") if n not in results.rl_summary])
    _save(fig, path, dpi)


def plot_filtering(results: RunResults, path: str | Path, dpi: int = 120) -> None:
    """Fig. 3: mean |A| of the samples used for the update, and backprop time, with and without GF."""
    without = next((n for n in ("no_gf", "grpo") if n in results.rl_steps), None)
    runs = [n for n in ("dash", without) if n in results.rl_steps]
    fig, (ax_adv, ax_time) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in runs:
        steps = results.rl_steps[name]
        label = f"{name} ({'with' if name == 'dash' else 'without'} filtering)"
        x = [m["step"] + 1 for m in steps]
        ax_adv.plot(x, [m["mean_abs_advantage_kept"] for m in steps], marker=".", label=label)
        ax_time.plot(x, [m["time_forward_backward_s"] for m in steps], marker=".", label=label)
    ax_adv.set(title="mean |A| of samples used in the update", xlabel="step", ylabel="mean |advantage|")
    ax_time.set(title="loss computation time (forward + backward)", xlabel="step", ylabel="seconds per step")
    for ax in (ax_adv, ax_time):
        if ax.lines:
            ax.legend(fontsize=7)
    _missing_note(fig, [n for n in ("dash", "no_gf") if n not in results.rl_steps])
    fig.suptitle("Fig. 3: gradient filtering", fontsize=10)
    _save(fig, path, dpi)


def plot_reward_vs_time(results: RunResults, path: str | Path, dpi: int = 120) -> None:
    """Fig. 4: training reward against wall-clock time, policy gradient vs PPO variants."""
    names = ("dash", "ppo_multi", "ppo_mini")
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name in names:
        if name not in results.rl_steps:
            continue
        steps = results.rl_steps[name]
        minutes = np.cumsum([m["time_step_s"] for m in steps]) / 60
        rewards = pd.Series([m["reward_mean"] for m in steps])
        line = ax.plot(minutes, rewards, marker=".", alpha=0.4)[0]
        ax.plot(minutes, rewards.rolling(3, min_periods=1).mean(), color=line.get_color(),
                label=f"{name} ({'policy gradient' if name == 'dash' else 'PPO'})")
    ax.set(title="Fig. 4: reward vs wall-clock (dots: step, line: 3-step mean)", xlabel="minutes", ylabel="training reward")
    if ax.lines:
        ax.legend(fontsize=7)
    _missing_note(fig, [n for n in names if n not in results.rl_steps])
    _save(fig, path, dpi)


def plot_pass_at_k(results: RunResults, path: str | Path, dpi: int = 120) -> None:
    """Fig. 5: pass@k against k (log scale), one line per (model, benchmark)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    all_ks: set[int] = set()
    for (model, benchmark), m in sorted(results.passk.items()):
        ks = sorted(int(key.split("@")[1]) for key in m if key.startswith("pass@"))
        if ks:
            ax.plot(ks, [m[f"pass@{k}"] for k in ks], marker="o", label=f"{model} / {benchmark}")
            all_ks.update(ks)
    ax.set_xscale("log", base=2)
    if all_ks:
        ax.set_xticks(sorted(all_ks), labels=[str(k) for k in sorted(all_ks)])
    ax.set(title="Fig. 5: pass@k", xlabel="k (samples per problem)", ylabel="pass@k", ylim=(0, 1))
    if ax.lines:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no pass@k evaluation (evaluate.pass_k.models)", ha="center", transform=ax.transAxes)
    _save(fig, path, dpi)


def plot_kl_curves(results: RunResults, path: str | Path, dpi: int = 120) -> None:
    """Fig. 6: training reward and mean completion length over training, with and without KL."""
    names = ("dash", "no_kl")
    fig, (ax_reward, ax_length) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name in names:
        if name not in results.rl_steps:
            continue
        steps = results.rl_steps[name]
        x = [m["step"] + 1 for m in steps]
        label = f"{name} ({'KL' if name == 'dash' else 'no KL'})"
        rewards = pd.Series([m["reward_mean"] for m in steps]).rolling(3, min_periods=1).mean()
        ax_reward.plot(x, rewards, label=label)
        ax_length.plot(x, [m["completion_tokens_mean"] for m in steps], marker=".", label=label)
    ax_reward.set(title="training reward (3-step mean)", xlabel="step", ylabel="reward")
    ax_length.set(title="mean completion length", xlabel="step", ylabel="tokens")
    for ax in (ax_reward, ax_length):
        if ax.lines:
            ax.legend(fontsize=7)
    _missing_note(fig, [n for n in names if n not in results.rl_steps])
    fig.suptitle("Fig. 6: with and without the KL term", fontsize=10)
    _save(fig, path, dpi)


def plot_sft_loss(run: str, history: list[dict[str, Any]], path: str | Path, dpi: int = 120) -> None:
    """Training loss (mean NLL per completion token) per optimizer step of one SFT run."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([h["step"] + 1 for h in history], [h["loss"] for h in history], marker=".")
    ax.set(title=f"sft@{run}: training loss", xlabel="optimizer step", ylabel="NLL per completion token")
    _save(fig, path, dpi)
