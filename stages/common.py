"""Shared stage plumbing: logging, the training stages' checked inputs, and what a model directory records."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pandas as pd

from dashrl.config.params import EXECUTION_KEYS, ParamsError
from dashrl.data.schema import read_problems
from dashrl.infra.files import write_json
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


# In every model directory a stage writes: what the model is, a function of the stage's inputs only
# (params, source, initial model, content hash). Times, commit, versions and machine go to the
# stage's run record outside data/models/ (paths.run_record, data/{rl,sft}/<run>/run.json), so that
# a rerun that reproduces the weights leaves every stage that reads the model up to date.
MODEL_RECORD = "dashrl_model.json"


def model_params(used: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The params a model directory records: ``used`` without the keys that change how a run executes
    but not what it trains (``EXECUTION_KEYS``: trackers, checkpointing, ddp/fsdp), so switching
    them leaves the directory's bytes, and the stages that read it, as they are."""
    return {section: {k: v for k, v in values.items() if k not in EXECUTION_KEYS} for section, values in used.items()}


def write_model_record(model_dir: Path, record: dict[str, Any]) -> None:
    write_json(model_dir / MODEL_RECORD, record)


def base_model_of(model_dir: Path) -> str | None:
    """The base model (Hub id or local path) a model directory descends from, from its
    ``dashrl_model.json``; None for a directory without one (put there by hand)."""
    path = model_dir / MODEL_RECORD
    return json.loads(path.read_text()).get("base_model") if path.is_file() else None
