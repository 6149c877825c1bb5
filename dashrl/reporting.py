"""Result tables (markdown, CSV) and plots (PNG) from evaluation metrics.

Input: one metrics dict per (model, benchmark), as written by the evaluate stage. Output: a table
with one row per model x benchmark and figures; nothing here reads or writes files except through
the paths it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

TABLE_COLUMNS = (
    "model", "benchmark", "n_problems", "accuracy", "boxed_rate", "truncation_rate",
    "completion_tokens_mean", "generation_tokens_per_s", "grader_timeouts", "grader_parse_errors",
)


def results_table(metrics: Mapping[tuple[str, str], Mapping[str, Any]]) -> pd.DataFrame:
    """One row per (model, benchmark); pass@k / mean@k columns appear when any run has them."""
    rows = []
    for (model, benchmark), m in metrics.items():
        counts = m.get("grader_status_counts", {})
        row = {
            "model": model,
            "benchmark": benchmark,
            **{c: m[c] for c in TABLE_COLUMNS[2:8]},
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
    if value is None or (isinstance(value, float) and math.isnan(value)):
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


@dataclass
class RunResults:
    """Everything the report reads, keyed by configuration name (and benchmark)."""

    benchmarks: list[str]
    evals: dict[tuple[str, str], dict[str, Any]]  # (model, benchmark) -> evaluate metrics
    passk: dict[tuple[str, str], dict[str, Any]]  # (model, benchmark) -> pass@k metrics
    rl_summary: dict[str, dict[str, Any]]  # run -> data/rl/<run>/summary.json
    rl_steps: dict[str, list[dict[str, Any]]]  # run -> metrics.jsonl rows
    sft_summary: dict[str, dict[str, Any]]  # run -> data/sft/<run>/summary.json
    tasks: dict[str, str] = field(default_factory=dict)  # benchmark or run -> "math" | "code" (its training data's)


def _task_benchmarks(results: RunResults, task: str) -> list[str]:
    return [b for b in results.benchmarks if results.tasks.get(b, "math") == task]


def _accuracy_columns(results: RunResults, name: str, benchmarks: list[str]) -> dict[str, Any]:
    return {f"accuracy_{b}": results.evals.get((name, b), {}).get("accuracy") for b in benchmarks}


def _code_columns(results: RunResults, name: str, benchmarks: list[str]) -> dict[str, Any]:
    """pass@1 as the paper (the first of n samples), the unbiased pass@1 (mean over n) and pass@n."""
    row: dict[str, Any] = {}
    for b in benchmarks:
        m = results.evals.get((name, b), {})
        n = m.get("samples_per_problem")
        row[f"pass@1_first_{b}"] = m.get("accuracy")
        row[f"pass@1_mean_{b}"] = m.get(f"mean@{n}") if n and n > 1 else m.get("accuracy")
        row[f"pass@n_{b}"] = m.get(f"pass@{n}") if n and n > 1 else None
        row[f"n_{b}"] = n
    return row


def _status(results: RunResults, name: str, task: str, benchmarks: list[str]) -> str:
    evaluated = any((name, b) in results.evals for b in benchmarks)
    if name == "base":
        return "ok" if evaluated else f"not evaluated (no {task} benchmark)"
    trained = name in results.rl_summary or name in results.sft_summary
    if trained and results.tasks.get(name, "math") != task:
        return f"not run (trained on {results.tasks.get(name)})"
    return "ok" if trained and evaluated else ("trained, not evaluated" if trained else "not run")


def paper_table(results: RunResults, table: str) -> pd.DataFrame:
    """One of the paper's tables as a DataFrame (columns depend on the table)."""
    _, names = PAPER_TABLES[table]
    task = TABLE_TASKS[table]
    benchmarks = _task_benchmarks(results, task)
    rows = []
    for name in names:
        status = _status(results, name, task, benchmarks)
        run = status == "ok" or status == "trained, not evaluated"
        rl = results.rl_summary.get(name, {}) if run else {}
        row: dict[str, Any] = {"config": name, "status": status}
        if task == "code":
            row.update(_code_columns(results, name, benchmarks) if run else
                       {k: None for k in _code_columns(results, "", benchmarks)})
        else:
            row.update(_accuracy_columns(results, name if run else "", benchmarks))
        if table == "table1":
            sft = results.sft_summary.get(name, {}) if run else {}
            row["train_wall_s"] = rl.get("train_wall_s", sft.get("stage_wall_s"))
            row["sft_examples"] = sft.get("examples")
        if table in ("table3", "table4", "table5", "table6"):
            row["train_wall_s"] = rl.get("train_wall_s")
            row["steps"] = rl.get("steps")
            row["reward_last_steps"] = rl.get("reward_last_steps")
        if table in ("table3", "table4"):
            row["sampling_s"] = rl.get("total_sampling_s")
            row["gradient_update_s"] = _gradient_update_s(rl) if rl else None
            row["kept_fraction"] = rl.get("kept_fraction_mean")
        if table == "table5":
            row["optimizer_steps"] = (sum(m["optimizer_steps"] for m in results.rl_steps.get(name, [])) or None) if run else None
            row["reward_std_over_steps"] = (float(np.std([m["reward_mean"] for m in results.rl_steps[name]]))
                                            if run and name in results.rl_steps else None)
        if table == "table6":
            for b in benchmarks:
                row[f"eval_completion_tokens_{b}"] = results.evals.get((name, b), {}).get("completion_tokens_mean") if run else None
            row["train_completion_tokens_last_steps"] = rl.get("completion_tokens_last_steps")
        rows.append(row)
    frame = pd.DataFrame(rows)
    if table in ("table3", "table4") and frame["train_wall_s"].notna().any():
        reference = frame.set_index("config")["train_wall_s"].get("grpo")
        frame["time_vs_grpo"] = frame["train_wall_s"] / reference if reference and not pd.isna(reference) else None
    return frame


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
