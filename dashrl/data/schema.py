"""The problem schema: every problem set is a validated DataFrame, stored as parquet.

Every problem set is a pandas DataFrame with exactly the columns ``COLUMNS``, in this order:

    id        str, unique within a set
    prompt    str, the raw problem text (no chat template: the paper prompts base models with it)
    answer    str, the reference final answer, non-empty (code problems: a JSON code spec,
              ``dashrl.data.code_tasks``)
    solution  str, a worked solution
    source    str, the dataset name ("arith", "gsm8k", "math500", "math_train", ...)
    level     int, difficulty level; 0 where the source has none

``write_problems`` / ``read_problems`` store a validated set as parquet; writes are atomic. A bad
record raises ``ProblemDataError`` naming the file (or Hub id), the row, the field and the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dashrl.infra.files import atomic_file

COLUMNS = ("id", "prompt", "answer", "solution", "source", "level")
_TEXT_COLUMNS = ("id", "prompt", "answer", "solution", "source")
_NON_EMPTY_COLUMNS = ("id", "prompt", "answer", "source")
_DTYPES = {**{column: "str" for column in _TEXT_COLUMNS}, "level": "int64"}


class ProblemDataError(ValueError):
    """A problem file, Hub dataset or DataFrame does not hold valid problem records."""


def show(value: Any, limit: int = 80) -> str:
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
                raise ProblemDataError(f"{where} row {row}: field {column!r} is not a string: {show(value)}")
            if column in _NON_EMPTY_COLUMNS and not value.strip():
                raise ProblemDataError(f"{where} row {row}: field {column!r} is empty: {show(value)}")
    for row, value in enumerate(df["level"].tolist()):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ProblemDataError(
                f"{where} row {row}: field 'level' is not a non-negative integer: {show(value)}"
            )
    first_row: dict[str, int] = {}
    for row, problem_id in enumerate(df["id"].tolist()):
        if problem_id in first_row:
            raise ProblemDataError(
                f"{where} rows {first_row[problem_id]} and {row}: field 'id' has duplicate value {show(problem_id)}"
            )
        first_row[problem_id] = row


def to_frame(records: list[dict[str, Any]], where: str) -> pd.DataFrame:
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
    check_file(path, (".parquet",))
    table = read_parquet(path)
    if tuple(table.column_names) != COLUMNS:
        raise ProblemDataError(f"{path}: columns are {table.column_names}, expected {list(COLUMNS)}")
    return to_frame(table.to_pylist(), str(path))


def check_file(path: Path, suffixes: tuple[str, ...]) -> None:
    if path.suffix not in suffixes:
        raise ProblemDataError(
            f"{path}: unsupported file extension {path.suffix!r} (expected {' or '.join(suffixes)})"
        )
    if not path.is_file():
        raise ProblemDataError(f"{path}: file not found")


def read_parquet(path: Path) -> pa.Table:
    """The table; its .to_pylist() gives nulls as None (not NaN), so validation sees them as nulls."""
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise ProblemDataError(f"{path}: not a readable parquet file ({err})") from err
