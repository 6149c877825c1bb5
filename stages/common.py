"""Shared stage plumbing: logging, and the training stages' checked inputs."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from dashrl.config.params import ParamsError
from dashrl.data.schema import read_problems
from dashrl.infra.progress import TqdmLoggingHandler
from stages import paths


def setup_logging() -> None:
    """INFO log lines on stderr, printed so that they do not tear a progress bar."""
    logging.basicConfig(
        level=os.environ.get("DASHRL_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[TqdmLoggingHandler()],
    )
    # transformers' own sub-second "Loading weights" bars are noise in a stage's log.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def training_inputs(key: str, init_from: str, dataset: str, train_levels: list[int] | None) -> tuple[Path, Path, pd.DataFrame]:
    """A training stage's initial model directory, train split, and the split's problems at
    ``train_levels`` (None: all), checked before any work; errors name the params key (``key``,
    e.g. ``rl.runs.dash``) and the value."""
    init_dir, train_file = paths.model_dir(init_from), paths.prepared(dataset, "train")
    if not (init_dir / "config.json").is_file():
        raise FileNotFoundError(f"{init_dir}: no model there ({key}.init_from: {init_from!r}); run its stage first")
    problems = read_problems(train_file)
    if train_levels is not None:
        problems = problems[problems["level"].isin(train_levels)]
    if problems.empty:
        raise ParamsError(f"params.yaml: {key}.train_levels: {train_levels}: no problem of {train_file} has these levels")
    return init_dir, train_file, problems
