"""Where each stage reads and writes: the file layout policy, relative to the repository root.

Everything generated lives under ``data/`` and is a DVC output; ``dvc.yaml`` names the same paths.
"""

from __future__ import annotations

from pathlib import Path

PARAMS = Path("params.yaml")
DATA = Path("data")


def prepared(dataset: str, split: str) -> Path:
    return DATA / "prepared" / dataset / f"{split}.parquet"


def prepared_dir(dataset: str) -> Path:
    return DATA / "prepared" / dataset


def model_dir(name: str) -> Path:
    return DATA / "models" / name


def eval_dir(model: str, benchmark: str) -> Path:
    return DATA / "eval" / model / benchmark


def report_dir() -> Path:
    return DATA / "report"


def run_record(stage: str) -> Path:
    """The record of a stage whose only other output is a model directory (times, commit, versions,
    machine): kept out of ``data/models/`` so that a rerun that reproduces the weights leaves the
    stages that read the model up to date. No stage depends on it."""
    return DATA / "runs" / f"{stage}.json"


def rl_dir(run: str) -> Path:
    return DATA / "rl" / run


def rl_work_dir(run: str) -> Path:
    """Checkpoints and per-step logs of a run in progress (DVC: persist, so a rerun can resume).

    Outside ``data/rl`` so that the report can depend on ``data/rl`` without hashing checkpoints.
    """
    return DATA / "work" / "rl" / run


def sft_dir(run: str) -> Path:
    return DATA / "sft" / run


def live_dir(kind: str, run: str) -> Path:
    """DVCLive's files of a training run (``kind``: rl | sft), written step by step: DVC metrics and plots."""
    return DATA / kind / run / "live"


def tracking_dir(kind: str, run: str) -> Path:
    """Where the other trackers of ``report_to`` write files (TensorBoard events, W&B offline runs,
    MLflow's file store); not a DVC output (which trackers run is not what the stage computes)."""
    return DATA / "tracking" / kind / run


def passk_dir(model: str, benchmark: str) -> Path:
    return DATA / "passk" / model / benchmark
