"""Problem records: the schema, parquet I/O, the loader registry and loaders of public benchmarks.

Every problem set is a pandas DataFrame with exactly the columns ``COLUMNS``, in this order:

    id        str, unique within a set
    prompt    str, the raw problem text (no chat template: the paper prompts base models with it)
    answer    str, the reference final answer, non-empty
    solution  str, a worked solution
    source    str, the dataset name ("arith", "gsm8k", "math500", "math_train", ...)
    level     int, difficulty level; 0 where the source has none

Two ways to get problems:

* Generate them: ``dashrl.arith.generate_arith`` (grade-school arithmetic word problems) and
  ``dashrl.code_data.generate_pyfunc`` (small Python functions), levels 1-5, fully determined by a
  seed. Both use ``generate_split_by_levels`` (here): one random stream per level,
  ``default_rng([seed, level])``, the test problems drawn before the training problems, so the
  test set depends only on (seed, levels, n_test): growing the training set never changes the test
  set. Texts are unique within and across the two splits.
* ``load_problems(name, split, path=None)`` reads a public benchmark in its public release field
  names, from the Hugging Face Hub (``HUB_IDS``) or from a local ``.jsonl`` / ``.parquet`` file:
  ``gsm8k`` (question/answer with a final ``#### N`` line), ``math500`` and ``math_train`` (the
  PRM800K splits of MATH: problem/solution/answer/subject/level/unique_id). ``arith`` reads a file
  already in our schema. Loaders are registered functions (``@register_loader``), looked up once.
  The coding datasets ``mbppplus``, ``humaneval`` and ``pyfunc`` live in ``dashrl.code_data``, which
  this module imports (at its end) so that they are always registered; ``task_of(name)`` says whether
  a dataset is "math" (the answer is a final answer) or "code" (the answer is a JSON code spec).

Every input is validated before anything is returned or written: a bad row raises
``ProblemDataError`` naming the file (or Hub id), the row, the field and the offending value, e.g.
``data/gsm8k.jsonl row 3 (line 4): field 'answer' has no '#### <number>' line: 'She has 5 apples'``.
Rows are numbered from 0 in file order (blank lines of a .jsonl are not rows), the same numbering
as the GSM8K ids; a .jsonl row also gives its 1-based line number.

``write_problems`` / ``read_problems`` store a validated set as parquet; writes are atomic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dashrl.infra.files import atomic_file
from dashrl.infra.seeds import rng

COLUMNS = ("id", "prompt", "answer", "solution", "source", "level")
_TEXT_COLUMNS = ("id", "prompt", "answer", "solution", "source")
_NON_EMPTY_COLUMNS = ("id", "prompt", "answer", "source")
_DTYPES = {**{column: "str" for column in _TEXT_COLUMNS}, "level": "int64"}

# Hub sources of the public benchmarks; change an entry to read a mirror.
HUB_IDS: dict[str, str] = {
    "gsm8k": "openai/gsm8k",
    "math500": "HuggingFaceH4/MATH-500",
    # No official Hub copy of PRM800K's MATH training split exists. This mirror holds
    # prm800k/math_splits/train.jsonl (12,000 rows; problem, solution, answer, subject, level,
    # unique_id) as its "train" split; a local copy of that file can be passed as `path` instead.
    "math_train": "zzy1123/MATH_train_test_split",
}
HUB_CONFIGS: dict[str, str | None] = {"gsm8k": "main"}


class ProblemDataError(ValueError):
    """A problem file, Hub dataset or DataFrame does not hold valid problem records."""


# ---------------------------------------------------------------------------------------------
# Schema validation and parquet I/O
# ---------------------------------------------------------------------------------------------


def _show(value: Any, limit: int = 80) -> str:
    """repr() of an offending value, shortened so that an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validate_problems(df: pd.DataFrame, where: str = "problems") -> None:
    """Raise ProblemDataError unless `df` holds valid problem records; `where` names it in errors."""
    if tuple(df.columns) != COLUMNS:
        raise ProblemDataError(f"{where}: columns are {list(df.columns)}, expected {list(COLUMNS)}")
    for column in _TEXT_COLUMNS:
        for row, value in enumerate(df[column].tolist()):
            if not isinstance(value, str):
                raise ProblemDataError(f"{where} row {row}: field {column!r} is not a string: {_show(value)}")
            if column in _NON_EMPTY_COLUMNS and not value.strip():
                raise ProblemDataError(f"{where} row {row}: field {column!r} is empty: {_show(value)}")
    for row, value in enumerate(df["level"].tolist()):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ProblemDataError(
                f"{where} row {row}: field 'level' is not a non-negative integer: {_show(value)}"
            )
    first_row: dict[str, int] = {}
    for row, problem_id in enumerate(df["id"].tolist()):
        if problem_id in first_row:
            raise ProblemDataError(
                f"{where} rows {first_row[problem_id]} and {row}: field 'id' has duplicate value {_show(problem_id)}"
            )
        first_row[problem_id] = row


def _to_frame(records: list[dict[str, Any]], where: str) -> pd.DataFrame:
    """Records → validated DataFrame with the schema's dtypes (validated before the cast hides nulls)."""
    df = pd.DataFrame(records, columns=list(COLUMNS))
    validate_problems(df, where)
    return df.astype(_DTYPES)


def write_problems(df: pd.DataFrame, path: str | Path) -> None:
    """Validate `df` and write it to `path` (.parquet) atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise ProblemDataError(
            f"{path}: unsupported file extension {path.suffix!r} for writing (expected .parquet)"
        )
    validate_problems(df, str(path))
    with atomic_file(path) as tmp:
        df.astype(_DTYPES).to_parquet(tmp, index=False)


def read_problems(path: str | Path) -> pd.DataFrame:
    """Read a parquet file in our schema (as written by write_problems) and validate it."""
    path = Path(path)
    _check_file(path, (".parquet",))
    table = _read_parquet(path)
    if tuple(table.column_names) != COLUMNS:
        raise ProblemDataError(f"{path}: columns are {table.column_names}, expected {list(COLUMNS)}")
    return _to_frame(table.to_pylist(), str(path))


# ---------------------------------------------------------------------------------------------
# Reading raw rows: local .jsonl / .parquet files or the Hub
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    index: int  # 0-based position among the rows of the source
    where: str  # "data/gsm8k.jsonl row 3 (line 4)", "openai/gsm8k[test] row 3"
    fields: dict[str, Any]


def _check_file(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix not in suffixes:
        raise ProblemDataError(
            f"{path}: unsupported file extension {path.suffix!r} (expected {' or '.join(suffixes)})"
        )
    if not path.is_file():
        raise ProblemDataError(f"{path}: file not found")


def _read_parquet(path: Path) -> pa.Table:
    """The table; its .to_pylist() gives nulls as None (not NaN), so validation sees them as nulls."""
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ProblemDataError(f"{path}: not a readable parquet file ({err})") from err


def _jsonl_rows(lines: Iterable[str], label: str) -> list[_Row]:
    """The rows of a JSON-lines stream; `label` names its file in errors (also for a .jsonl.gz)."""
    rows: list[_Row] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProblemDataError(
                f"{label} line {line_number}: malformed JSON ({err.msg} at column {err.colno}): {_show(line.strip())}"
            ) from err
        if not isinstance(fields, dict):
            raise ProblemDataError(f"{label} line {line_number}: expected a JSON object, got {_show(fields)}")
        rows.append(_Row(len(rows), f"{label} row {len(rows)} (line {line_number})", fields))
    return rows


def _read_jsonl(path: Path) -> list[_Row]:
    with path.open(encoding="utf-8") as lines:
        return _jsonl_rows(lines, str(path))


def _file_rows(path: Path) -> tuple[str, list[_Row]]:
    _check_file(path, (".jsonl", ".parquet"))
    if path.suffix == ".jsonl":
        return str(path), _read_jsonl(path)
    return str(path), [
        _Row(i, f"{path} row {i}", fields) for i, fields in enumerate(_read_parquet(path).to_pylist())
    ]


def _hub_rows(name: str, split: str) -> tuple[str, list[_Row]]:
    if name not in HUB_IDS:
        raise ProblemDataError(f"dataset {name!r} has no Hub source; pass the path of a local file")
    return _load_hub_rows(HUB_IDS[name], HUB_CONFIGS.get(name), split)


def _load_hub_rows(hub_id: str, config: str | None, split: str) -> tuple[str, list[_Row]]:
    """(label "<hub_id>[<split>]", the rows) of one split of a Hub dataset."""
    # Imported here: `datasets` is slow to import and only this path needs it.
    import datasets

    where = f"{hub_id}[{split}]"
    rows = datasets.load_dataset(hub_id, config, split=split)
    return where, [_Row(i, f"{where} row {i}", dict(fields)) for i, fields in enumerate(rows)]


def _source_rows(name: str, split: str, path: str | Path | None) -> tuple[str, list[_Row]]:
    """(label naming the file or Hub dataset, its rows) for one dataset split."""
    return _hub_rows(name, split) if path is None else _file_rows(Path(path))


def _field(row: _Row, key: str) -> Any:
    """The value of a required field; missing or null raises."""
    if key not in row.fields:
        raise ProblemDataError(
            f"{row.where}: required field {key!r} is missing (fields: {sorted(row.fields)})"
        )
    value = row.fields[key]
    if value is None:
        raise ProblemDataError(f"{row.where}: required field {key!r} is null")
    return value


def _text(row: _Row, key: str, non_empty: bool = False) -> str:
    value = _field(row, key)
    if not isinstance(value, str):
        raise ProblemDataError(f"{row.where}: field {key!r} is not a string: {_show(value)}")
    if non_empty and not value.strip():
        raise ProblemDataError(f"{row.where}: field {key!r} is empty: {_show(value)}")
    return value


def _level(row: _Row) -> int:
    """MATH levels come as ints (PRM800K, MATH-500) or as "Level 3" (the original release)."""
    value = _field(row, "level")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if match := re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", value):
            return int(match.group(1))
        if value.strip() == "Level ?":  # a few original MATH problems have no level
            return 0
    raise ProblemDataError(f"{row.where}: field 'level' is not an integer or 'Level N': {_show(value)}")


# ---------------------------------------------------------------------------------------------
# Loader registry
# ---------------------------------------------------------------------------------------------

Loader = Callable[[str, str | Path | None], pd.DataFrame]


TASKS = ("math", "code")  # how a dataset's problems are prompted and graded (see task_of)


@dataclass(frozen=True)
class _RegisteredLoader:
    splits: tuple[str, ...]
    load: Loader
    task: str


_LOADERS: dict[str, _RegisteredLoader] = {}


def register_loader(name: str, splits: tuple[str, ...], task: str = "math") -> Callable[[Loader], Loader]:
    """Register `load(split, path)` as the loader of dataset `name`, which has the given splits.

    `task` says what its problems are: "math" (answer = the final answer, graded by math-verify) or
    "code" (answer = a JSON code spec of dashrl.code_data, graded by running the tests).
    """
    if task not in TASKS:
        raise ValueError(f"dataset {name!r}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")

    def decorator(load: Loader) -> Loader:
        _LOADERS[name] = _RegisteredLoader(splits, load, task)
        return load

    return decorator


def _dataset_names() -> str:
    """The registered datasets for error messages, grouped by task: "arith, gsm8k (math); pyfunc (code)"."""
    groups = {
        task: sorted(name for name, loader in _LOADERS.items() if loader.task == task) for task in TASKS
    }
    return "; ".join(f"{', '.join(names)} ({task})" for task, names in groups.items() if names)


def task_of(name: str) -> str:
    """The task of registered dataset `name`, "math" or "code": how its problems are prompted and graded."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {_dataset_names()}")
    return _LOADERS[name].task


def load_problems(name: str, split: str, path: str | Path | None = None) -> pd.DataFrame:
    """Load one split of dataset `name` as validated problem records.

    From the Hub (``HUB_IDS[name]``) when `path` is None, else from a local .jsonl or .parquet file
    in the dataset's public field names. ``"arith"`` reads a file in our own schema (make one with
    dashrl.arith.generate_arith + write_problems).
    """
    if name not in _LOADERS:
        raise ProblemDataError(f"unknown dataset {name!r}; valid names: {_dataset_names()}")
    loader = _LOADERS[name]
    if split not in loader.splits:
        raise ProblemDataError(
            f"dataset {name!r} has no split {split!r}; valid splits: {', '.join(loader.splits)}"
        )
    return loader.load(split, path)


# "#### 1,234" on a line of its own ends every GSM8K solution.
_GSM8K_FINAL = re.compile(r"^####[ \t]*(.*?)[ \t]*$", re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@register_loader("gsm8k", splits=("train", "test"))
def _load_gsm8k(split: str, path: str | Path | None) -> pd.DataFrame:
    where, rows = _source_rows("gsm8k", split, path)
    records = []
    for row in rows:
        text = _text(row, "answer")
        finals = list(_GSM8K_FINAL.finditer(text))
        if not finals:
            raise ProblemDataError(f"{row.where}: field 'answer' has no '#### <number>' line: {_show(text)}")
        final = finals[-1]
        answer = final.group(1).replace(",", "")
        if not _NUMBER.fullmatch(answer):
            raise ProblemDataError(
                f"{row.where}: field 'answer' has no number after '####': {_show(final.group(0))}"
            )
        records.append(
            {
                "id": f"gsm8k-{split}-{row.index:05d}",
                "prompt": _text(row, "question", non_empty=True),
                "answer": answer,
                "solution": (text[: final.start()] + text[final.end() :]).strip(),
                "source": "gsm8k",
                "level": 0,
            }
        )
    return _to_frame(records, where)


def _load_math(name: str, split: str, path: str | Path | None) -> pd.DataFrame:
    """MATH in the PRM800K / MATH-500 release fields; `subject` is not kept."""
    where, rows = _source_rows(name, split, path)
    records = [
        {
            "id": _text(row, "unique_id", non_empty=True),
            "prompt": _text(row, "problem", non_empty=True),
            "answer": _text(row, "answer", non_empty=True).strip(),
            "solution": _text(row, "solution"),
            "source": name,
            "level": _level(row),
        }
        for row in rows
    ]
    return _to_frame(records, where)


@register_loader("math500", splits=("test",))
def _load_math500(split: str, path: str | Path | None) -> pd.DataFrame:
    return _load_math("math500", split, path)


@register_loader("math_train", splits=("train",))
def _load_math_train(split: str, path: str | Path | None) -> pd.DataFrame:
    return _load_math("math_train", split, path)


@register_loader("arith", splits=("train", "test"))
def _load_arith(split: str, path: str | Path | None) -> pd.DataFrame:
    if path is None:
        raise ProblemDataError(
            "dataset 'arith' is generated, not downloaded: call dashrl.arith.generate_arith() or pass a path"
        )
    return read_problems(path)


# ---------------------------------------------------------------------------------------------
# Generated tasks: the split/level scheme shared by dashrl.arith and dashrl.code_data (pyfunc)
# ---------------------------------------------------------------------------------------------

_Problem = TypeVar("_Problem")
_ATTEMPTS_PER_PROBLEM = 20  # rejection sampling budget; every level has far more texts than this needs


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _equal_shares(n: int, k: int) -> list[int]:
    """n split into k shares differing by at most one; the first shares get the remainder."""
    base, extra = divmod(n, k)
    return [base + (i < extra) for i in range(k)]


def _draw_unique(
    level: int,
    n: int,
    rng: np.random.Generator,
    seen: set[str],
    draw: Callable[[int, np.random.Generator], _Problem],
    text: Callable[[_Problem], str],
    what: str,
) -> list[_Problem]:
    """n problems of one level whose texts are not in `seen` (and are added to it)."""
    problems: list[_Problem] = []
    max_attempts, attempts = _ATTEMPTS_PER_PROBLEM * n + 100, 0
    while len(problems) < n and attempts < max_attempts:
        problem = draw(level, rng)
        attempts += 1
        key = text(problem)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    if len(problems) == n:
        return problems
    raise ValueError(
        f"could only generate {len(problems)} unique level-{level} {what} problems of the {n} "
        f"requested in {max_attempts} attempts; ask for fewer problems or more levels"
    )


def generate_split_by_levels(
    n_train: int,
    n_test: int,
    levels: Sequence[int],
    seed: int,
    *,
    valid_levels: Iterable[int],
    draw: Callable[[int, np.random.Generator], _Problem],
    text: Callable[[_Problem], str],
    frame: Callable[[list[_Problem], list[int], str], pd.DataFrame],
    what: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames of a generated task, `n_train` and `n_test` problems shared equally among `levels`.

    The scheme of the embedded generators (``dashrl.arith.generate_arith``,
    ``dashrl.code_data.generate_pyfunc``): one random stream per level, ``default_rng([seed, level])``,
    from which ``draw(level, rng)`` makes one problem; the test problems are drawn before the
    training problems, so the test set depends only on (seed, levels, n_test); shares differ by at
    most one (lower levels get the remainder); ``text(problem)`` (the prompt's distinctive text) is
    unique within and across the splits (rejection sampling); each split's rows are shuffled by
    ``default_rng([seed, 0, split_number])`` (test 0, train 1) before ``frame(problems,
    problem_levels, split)`` builds its DataFrame. `valid_levels` are the levels `draw` knows;
    `what` names the task in errors ("arithmetic", "pyfunc"). Same arguments, same frames.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be non-negative, got n_train={n_train}, n_test={n_test}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    valid = sorted(valid_levels)
    levels = sorted(int(level) for level in levels)
    unknown = sorted(set(levels) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} levels {unknown}; valid levels: {valid}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"{what} levels must be distinct, got {levels}")
    if not levels:
        if n_train + n_test > 0:
            raise ValueError(f"no {what} levels requested")
        return frame([], [], "train"), frame([], [], "test")

    # One stream per level; test problems first, so that n_train never changes the test set.
    streams = {level: rng(seed, level) for level in levels}
    seen: set[str] = set()
    frames = []
    for split_number, (split, n) in enumerate((("test", n_test), ("train", n_train))):
        problems: list[_Problem] = []
        problem_levels: list[int] = []
        for level, share in zip(levels, _equal_shares(n, len(levels)), strict=True):
            problems += _draw_unique(level, share, streams[level], seen, draw, text, what)
            problem_levels += [level] * share
        # Level 0 has no stream: [seed, 0, split_number] is the shuffle's own.
        order = rng(seed, 0, split_number).permutation(len(problems))
        frames.append(frame([problems[i] for i in order], [problem_levels[i] for i in order], split))
    test, train = frames
    return train, test


# The code datasets (mbppplus, humaneval, pyfunc) register their loaders in dashrl.code_data, which
# imports this module: importing it here completes the registry after `import dashrl.data` alone.
# It comes last, when every name code_data takes from here exists, so either import order works.
import dashrl.code_data  # noqa: E402, F401
