"""The sample selectors compared (docs/algorithm.md §6; profiles/selectors.yaml): a table and a figure.

Inputs are those of ``dashrl.reporting``: per-run summaries (``data/rl/<run>/summary.json``), per-step
metrics (``metrics.jsonl`` rows) and evaluation metrics per (model, benchmark); nothing here reads or
writes files except the figure's path. A run of ``runs`` that was not run keeps its row with empty
cells and ``not run`` in ``status``, as the paper's tables do.

The reward curve of a run is its training reward (the step's mean over every generated sample) as a
3-step rolling mean, against the training wall-clock at the end of each step (cumulative
``time_step_s``): "at equal wall-clock" reads every curve at the shortest run's total training time,
so a selector that spends more time per step is compared where the others stand at that time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

SELECTOR_RUNS = ("dash", "dapo", "pods", "greso", "grpo")  # profiles/selectors.yaml: dash = selector none
SMOOTHING_STEPS = 3  # the reward curve's rolling mean, as the report's other reward figures
COUNTS = ("samples_generated", "samples_backpropagated", "prompts_sampled", "prompts_skipped", "extra_rounds")
# Per-step metrics from before the selectors' accounting: every sample was generated and selected.
FALLBACK = {"samples_generated": "samples", "samples_backpropagated": "samples_kept"}


def reward_curve(steps: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(wall-clock seconds at the end of each step, the reward's rolling mean at that step)."""
    wall = np.cumsum([float(m["time_step_s"]) for m in steps])
    reward = pd.Series([float(m["reward_mean"]) for m in steps]).rolling(SMOOTHING_STEPS, min_periods=1).mean()
    return wall, reward.to_numpy()


def reward_at(steps: Sequence[Mapping[str, Any]], seconds: float) -> float:
    """The reward curve read at ``seconds`` of training (linear between steps; before the first step
    ends, the first step's; past the last, the last)."""
    wall, reward = reward_curve(steps)
    return float(np.interp(seconds, wall, reward))


def equal_time(rl_steps: Mapping[str, Sequence[Mapping[str, Any]]], runs: Sequence[str]) -> float | None:
    """The shortest total training time among ``runs`` that have steps (None: none has)."""
    totals = [reward_curve(rl_steps[r])[0][-1] for r in runs if rl_steps.get(r)]
    return float(min(totals)) if totals else None


def _total(steps: Sequence[Mapping[str, Any]], key: str) -> int | None:
    source = key if all(key in m for m in steps) else FALLBACK.get(key)
    if source is None or not all(source in m for m in steps):
        return None
    return int(sum(m[source] for m in steps))


def selector_table(
    rl_summary: Mapping[str, Mapping[str, Any]],
    rl_steps: Mapping[str, Sequence[Mapping[str, Any]]],
    evals: Mapping[tuple[str, str], Mapping[str, Any]],
    runs: Sequence[str] = SELECTOR_RUNS,
) -> pd.DataFrame:
    """One row per selector run: training wall time, samples generated and back-propagated (and their
    ratio), prompts sampled / skipped, extra rollout rounds, training reward at the end (the summary's
    last steps) and at equal wall-clock (``equal_time_s``: the shortest run's), and the evaluation
    accuracy per benchmark (``accuracy_<benchmark>``) where the run was evaluated."""
    benchmarks = sorted({b for _, b in evals})
    t_equal = equal_time(rl_steps, runs)
    rows = []
    for run in runs:
        steps, summary = rl_steps.get(run) or [], rl_summary.get(run) or {}
        accuracy = {f"accuracy_{b}": float(evals[(run, b)]["accuracy"]) if (run, b) in evals else None
                    for b in benchmarks}
        row: dict[str, Any] = {"run": run, "status": "ok", "steps": len(steps) or summary.get("steps")}
        if not steps and not summary:
            row["status"] = "not run"
        elif not any(v is not None for v in accuracy.values()):
            row["status"] = "not evaluated"
        wall = summary.get("train_wall_s", float(reward_curve(steps)[0][-1]) if steps else None)
        row["train_wall_s"] = wall
        counts = {key: _total(steps, key) if steps else None for key in COUNTS}
        generated, backpropagated = counts["samples_generated"], counts["samples_backpropagated"]
        row.update(samples_generated=generated, samples_backpropagated=backpropagated,
                   backprop_fraction=backpropagated / generated if generated and backpropagated is not None else None,
                   prompts_sampled=counts["prompts_sampled"], prompts_skipped=counts["prompts_skipped"],
                   extra_rounds=counts["extra_rounds"])
        if steps:
            k = max(1, min(3, len(steps) // 3))  # as stages/rl.py's summary: the last steps' mean
            end = summary.get("reward_last_steps", float(np.mean([m["reward_mean"] for m in steps[-k:]])))
        else:
            end = summary.get("reward_last_steps")
        row["reward_end"] = end
        row["equal_time_s"] = t_equal if steps else None
        row["reward_at_equal_time"] = reward_at(steps, t_equal) if steps and t_equal is not None else None
        rows.append({**row, **accuracy})
    return pd.DataFrame(rows)


def selector_notes(table: pd.DataFrame) -> list[str]:
    """The notes under the table: what "equal wall-clock" is, what was not run."""
    notes = []
    times = table["equal_time_s"].dropna()
    if len(times):
        notes.append(f"reward_at_equal_time: each run's reward curve ({SMOOTHING_STEPS}-step rolling mean) read at "
                     f"{times.iloc[0]:.0f} s of training, the shortest run's total")
    notes.append("samples_backpropagated: sequences through a backward pass (each PPO epoch counts again); "
                 "samples_generated: every sampled completion, extra rounds (dapo) and dropped draws (pods) included")
    missing = table.loc[table["status"] == "not run", "run"].tolist()
    if missing:
        notes.append("not run in this profile: " + ", ".join(missing) + " (make run PROFILE=selectors)")
    return notes


def plot_selectors(
    rl_summary: Mapping[str, Mapping[str, Any]],
    rl_steps: Mapping[str, Sequence[Mapping[str, Any]]],
    evals: Mapping[tuple[str, str], Mapping[str, Any]],
    path: str | Path,
    dpi: int = 120,
    runs: Sequence[str] = SELECTOR_RUNS,
) -> None:
    """Left: training reward against wall-clock, one line per selector run (dots: step, line: rolling
    mean; dotted: the equal wall-clock). Right: samples generated and back-propagated per run."""
    table = selector_table(rl_summary, rl_steps, evals, runs)
    present = [r for r in runs if rl_steps.get(r)]
    fig, (ax_reward, ax_samples) = plt.subplots(1, 2, figsize=(11, 4))
    for run in present:
        steps = rl_steps[run]
        wall, smooth = reward_curve(steps)
        minutes = wall / 60
        line = ax_reward.plot(minutes, [m["reward_mean"] for m in steps], marker=".", ls="", alpha=0.4)[0]
        ax_reward.plot(minutes, smooth, color=line.get_color(), label=run)
    t_equal = equal_time(rl_steps, runs)
    if t_equal is not None:
        ax_reward.axvline(t_equal / 60, color="0.5", ls=":", lw=1, label="equal wall-clock")
    ax_reward.set(title="training reward vs wall-clock", xlabel="minutes", ylabel="training reward")
    rows = table[table["run"].isin(present)]
    y = np.arange(len(rows))
    generated = rows["samples_generated"].astype(float).fillna(0).to_numpy()
    backpropagated = rows["samples_backpropagated"].astype(float).fillna(0).to_numpy()
    ax_samples.barh(y - 0.2, generated, height=0.4, label="generated")
    ax_samples.barh(y + 0.2, backpropagated, height=0.4, label="back-propagated")
    ax_samples.set_yticks(y, rows["run"].tolist())
    ax_samples.invert_yaxis()
    ax_samples.set(title="samples over the run", xlabel="samples")
    for ax in (ax_reward, ax_samples):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    missing = [r for r in runs if r not in present]
    if missing:
        fig.text(0.99, 0.01, "not run in this profile: " + ", ".join(missing), ha="right", va="bottom",
                 fontsize=7, color="0.4")
    fig.suptitle("Sample selectors on DASH (docs/algorithm.md §6)", fontsize=10)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
