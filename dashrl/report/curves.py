"""The training curves the training stages draw: an RL run's per-step curves, an SFT run's loss.

The ``rl`` and ``sft`` stages import only this module of the report, so editing the paper's tables,
claims or figures never reruns a training stage. ``save_figure`` is shared with ``figures``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


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

def plot_sft_loss(run: str, history: list[dict[str, Any]], path: str | Path, dpi: int = 120) -> None:
    """Training loss (mean NLL per completion token) per optimizer step of one SFT run."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot([h["step"] + 1 for h in history], [h["loss"] for h in history], marker=".")
    ax.set(title=f"sft@{run}: training loss", xlabel="optimizer step", ylabel="NLL per completion token")
    save_figure(fig, path, dpi)

def save_figure(fig: Any, path: str | Path, dpi: int) -> None:
    fig.tight_layout(rect=(0, 0.04, 1, 1))  # room for the "not run" note
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
