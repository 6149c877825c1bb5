"""The report's figures (PNG): accuracy, and the paper's Figs. 1 and 3-6 from the runs' recorded metrics."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from dashrl.report.curves import save_figure
from dashrl.report.paper import RunResults, gradient_update_s


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
        "gradient update (fwd+bwd+optimizer)": [gradient_update_s(results.rl_summary[n]) for n in names],
        "other (reward, weight sync)": [results.rl_summary[n]["train_wall_s"] - results.rl_summary[n].get("total_sampling_s", 0.0)
                                        - gradient_update_s(results.rl_summary[n]) for n in names],
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
    save_figure(fig, path, dpi)

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
    save_figure(fig, path, dpi)

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
    save_figure(fig, path, dpi)

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
    save_figure(fig, path, dpi)

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
    save_figure(fig, path, dpi)
