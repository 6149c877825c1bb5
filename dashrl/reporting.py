"""Result tables (markdown, CSV) and plots (PNG) from evaluation metrics.

Input: one metrics dict per (model, benchmark), as written by the evaluate stage. Output: a table
with one row per model x benchmark and figures; nothing here reads or writes files except through
the paths it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def plot_accuracy(table: pd.DataFrame, path: str | Path, dpi: int = 120) -> None:
    """Grouped bars: single-sample accuracy per benchmark, one bar per model."""
    pivot = table.pivot(index="benchmark", columns="model", values="accuracy")
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
    for ax in (ax_reward, ax_kept, ax_length, ax_time):
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
