"""The model card of a trained model: ``README.md`` in the Hugging Face Hub's format.

YAML front matter (the Hub's metadata: ``base_model``, ``datasets``, ``library_name``,
``pipeline_tag``, ``tags``; plus a ``dashrl`` block with the run, the stage, the algorithm, the
initial model, the params the run used and its training metrics), then the same for people.

The card lives inside the model directory that evaluation depends on, so nothing in it may change
between identical reruns: no time, no commit, no host, no package version. ``card_metrics`` keeps
only the summary's scalar metrics whose names are not time-like (``*_s``, ``*_utc``, ``time*``,
``*wall*``); the run's times and machine stay in ``data/{rl,sft}/<run>/run.json`` and ``summary.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

TIME_LIKE = re.compile(r"(_s|_utc)$|time|wall|usage")
FRONT_MATTER = re.compile(r"\A---\n(.*?\n)---\n", re.DOTALL)


def card_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's scalar metrics that an identical rerun reproduces: no times, no run name.

    >>> card_metrics({"run": "dash", "steps": 8, "stage_wall_s": 201.5, "reward_last_steps": 0.25,
    ...               "usage": {"cpu_s": 380.0}, "total_sampling_s": 90.1})
    {'steps': 8, 'reward_last_steps': 0.25}
    """
    return {k: v for k, v in summary.items()
            if k != "run" and isinstance(v, int | float | str) and not TIME_LIKE.search(k)}


def rl_algorithm(rl: Mapping[str, Any]) -> tuple[str, list[str]]:
    """An RL run's algorithm in words and its tags, from its params (``rl.runs.<run>`` over ``rl.common``)."""
    preemptive = rl.get("sampling") == "preemptive"
    tau = float(rl.get("filter_threshold") or 0.0)
    if preemptive:
        words, tags = ("DASH: preemptive sampling, gradient filtering" if tau > 0
                       else "DASH without gradient filtering (No-GF): preemptive sampling"), ["dash"]
    else:
        words, tags = "GRPO: samples drawn per micro-batch" + (", gradient filtering" if tau > 0 else ""), ["grpo"]
    if tau > 0:
        words += f" at tau {tau:g} (samples with advantage magnitude <= tau are not trained on)"
        tags.append("gradient-filtering")
    if int(rl.get("ppo_epochs") or 1) > 1:
        words += f"; PPO-Multi ({rl['ppo_epochs']} epochs per batch)"
        tags.append("ppo")
    if int(rl.get("optimizer_steps_per_rollout") or 1) > 1:
        words += f"; PPO-Mini ({rl['optimizer_steps_per_rollout']} optimizer steps per batch)"
        tags.append("ppo")
    if rl.get("selector", "none") != "none":
        words += f"; sample selector {rl['selector']}"
        tags.append(str(rl["selector"]))
    words += f"; loss aggregation {rl.get('loss_agg')}; KL coefficient {rl.get('kl_coef')}"
    return words, ["dashrl", "reinforcement-learning", *dict.fromkeys(tags)]


def sft_algorithm(sft: Mapping[str, Any]) -> tuple[str, list[str]]:
    """An SFT run's data source in words and its tags."""
    if sft.get("source") == "self":
        teacher = sft.get("teacher") or "the initial model"
        return (f"supervised fine-tuning on the correct samples of {teacher} (rejection sampling, SFT-M)",
                ["dashrl", "sft", "rejection-sampling"])
    return "supervised fine-tuning on the dataset's reference solutions (SFT-H)", ["dashrl", "sft"]


def model_card(*, run: str, stage: str, algorithm: str, tags: list[str], base_model: str | None, init_from: str,
               datasets: list[str], params: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """The card's text. ``params``: the sections the run used (e.g. ``{"rl": ..., "prompt": ..., "grader": ...}``);
    ``metrics``: ``card_metrics`` of its summary; ``base_model``: the Hub id (or local path) the chain of
    initial models starts from, None when unknown."""
    meta: dict[str, Any] = {}
    if base_model:
        meta["base_model"] = base_model
    meta |= {
        "datasets": list(datasets),
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": list(tags),
        "dashrl": {"run": run, "stage": stage, "algorithm": algorithm, "init_from": init_from,
                   "params": _plain(params), "training_metrics": _plain(metrics)},
    }
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100)
    rows = [("stage", f"`{stage}`"), ("algorithm", algorithm), ("initial model", f"`{init_from}` (data/models/{init_from})"),
            ("base model", f"`{base_model}`" if base_model else "not recorded"),
            ("training data", ", ".join(f"`{d}` (train split)" for d in datasets))]
    body = [
        f"# {run}",
        "",
        f"A causal language model trained by the `{stage}` stage of dashrl (DVC pipeline; params in `params.yaml`).",
        "Everything below is a function of the run's inputs: an identical rerun writes the same card.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in rows),
        "",
        "## Training metrics",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {_cell(v)} |" for k, v in metrics.items()),
        "",
        "## Params",
        "",
        "```yaml",
        yaml.safe_dump(_plain(params), sort_keys=False, allow_unicode=True, width=100).rstrip("\n"),
        "```",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("<this directory>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this directory>")',
        "```",
        "",
        "Prompts in the format of `params.prompt` above (`dashrl.models` renders them).",
    ]
    return f"---\n{front}---\n\n" + "\n".join(body) + "\n"


def read_model_card(text: str) -> tuple[dict[str, Any], str]:
    """(front matter, body) of a card; a card without front matter is an error naming what it starts with."""
    match = FRONT_MATTER.match(text)
    if match is None:
        raise ValueError(f"model card: no YAML front matter between '---' lines at the top (starts {text[:40]!r})")
    return yaml.safe_load(match.group(1)) or {}, text[match.end():]


def _plain(value: Any) -> Any:
    """Mappings, lists and scalars as plain YAML-safe types (tuples as lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _cell(value: Any) -> str:
    """A markdown table cell: floats to 4 significant digits, pipes escaped."""
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")
