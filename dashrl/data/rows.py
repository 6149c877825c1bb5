"""Raw rows of a dataset (a local .jsonl / .parquet file or a Hub split) and typed access to their fields.

A ``Row`` keeps its position and a label for errors ("data/gsm8k.jsonl row 3 (line 4)",
"openai/gsm8k[test] row 3", "data/mine.csv row 3 (line 5)"); ``row_field``, ``row_text``, ``row_level``, ``row_int``,
``row_str_list`` and ``row_python`` read one field and raise ``ProblemDataError`` naming the
row, the field and the value when it is missing, null or of the wrong kind. Rows are numbered from 0
in file order (blank lines of a .jsonl are not rows); a .jsonl or .csv row also gives its 1-based
line number (a .csv file's first line is its header; every .csv field is a string, an empty cell "").
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dashrl.data.schema import ProblemDataError, check_file, read_parquet, show


@dataclass(frozen=True)
class Row:
    index: int  # 0-based position among the rows of the source
    where: str  # "data/gsm8k.jsonl row 3 (line 4)", "openai/gsm8k[test] row 3"
    fields: dict[str, Any]


def jsonl_rows(lines: Iterable[str], label: str) -> list[Row]:
    """The rows of a JSON-lines stream; `label` names its file in errors (also for a .jsonl.gz)."""
    rows: list[Row] = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProblemDataError(
                f"{label} line {line_number}: malformed JSON ({err.msg} at column {err.colno}): {show(line.strip())}"
            ) from err
        if not isinstance(fields, dict):
            raise ProblemDataError(f"{label} line {line_number}: expected a JSON object, got {show(fields)}")
        rows.append(Row(len(rows), f"{label} row {len(rows)} (line {line_number})", fields))
    return rows


def read_jsonl_rows(path: Path) -> list[Row]:
    with path.open(encoding="utf-8") as lines:
        return jsonl_rows(lines, str(path))


def read_csv_rows(path: Path) -> list[Row]:
    """The rows of a .csv file with a header line; a row with more or fewer cells than the header raises."""
    rows: list[Row] = []
    with path.open(encoding="utf-8", newline="") as lines:
        reader = csv.reader(lines)
        try:
            header = next(reader)
        except StopIteration:
            raise ProblemDataError(f"{path}: empty .csv file (expected a header line)") from None
        except csv.Error as err:
            raise ProblemDataError(f"{path} line 1: malformed CSV ({err})") from err
        if len(set(header)) != len(header):
            raise ProblemDataError(f"{path} line 1: the header names a column twice: {show(header)}")
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                raise ProblemDataError(f"{path} line {reader.line_num}: malformed CSV ({err})") from err
            if not cells:
                continue  # a blank line is not a row
            where = f"{path} row {len(rows)} (line {reader.line_num})"
            if len(cells) != len(header):
                raise ProblemDataError(f"{where}: {len(cells)} cells, the header has {len(header)}: {show(cells)}")
            rows.append(Row(len(rows), where, dict(zip(header, cells, strict=True))))
    return rows


def file_rows(path: Path, suffixes: tuple[str, ...] = (".jsonl", ".parquet")) -> tuple[str, list[Row]]:
    """(label naming the file, its rows) of a local file with one of ``suffixes`` (.jsonl, .parquet, .csv)."""
    check_file(path, suffixes)
    if path.suffix == ".jsonl":
        return str(path), read_jsonl_rows(path)
    if path.suffix == ".csv":
        return str(path), read_csv_rows(path)
    return str(path), [
        Row(i, f"{path} row {i}", fields) for i, fields in enumerate(read_parquet(path).to_pylist())
    ]


def load_hub_rows(hub_id: str, config: str | None, split: str) -> tuple[str, list[Row]]:
    """(label "<hub_id>[<split>]", the rows) of one split of a Hub dataset."""
    # Imported here: `datasets` is slow to import and only this path needs it.
    import datasets

    where = f"{hub_id}[{split}]"
    rows = datasets.load_dataset(hub_id, config, split=split)
    return where, [Row(i, f"{where} row {i}", dict(fields)) for i, fields in enumerate(rows)]


def row_field(row: Row, key: str) -> Any:
    """The value of a required field; missing or null raises."""
    if key not in row.fields:
        raise ProblemDataError(
            f"{row.where}: required field {key!r} is missing (fields: {sorted(row.fields)})"
        )
    value = row.fields[key]
    if value is None:
        raise ProblemDataError(f"{row.where}: required field {key!r} is null")
    return value


def row_text(row: Row, key: str, non_empty: bool = False) -> str:
    value = row_field(row, key)
    if not isinstance(value, str):
        raise ProblemDataError(f"{row.where}: field {key!r} is not a string: {show(value)}")
    if non_empty and not value.strip():
        raise ProblemDataError(f"{row.where}: field {key!r} is empty: {show(value)}")
    return value


def row_level(row: Row, key: str = "level") -> int:
    """MATH levels come as ints (PRM800K, MATH-500) or as "Level 3" (the original release)."""
    value = row_field(row, key)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        if match := re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", value):
            return int(match.group(1))
        if value.strip() == "Level ?":  # a few original MATH problems have no level
            return 0
    raise ProblemDataError(f"{row.where}: field {key!r} is not an integer or 'Level N': {show(value)}")


def show_tail(value: str, limit: int = 80) -> str:
    """The end of a long program, where the MBPP+ test loop is; repr()'d like show."""
    return show(value, limit) if len(repr(value)) <= limit else "..." + repr(value)[-(limit - 3) :]


def row_int(row: Row, key: str) -> int:
    value = row_field(row, key)
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ProblemDataError(f"{row.where}: field {key!r} is not an integer: {show(value)}")
    return int(value)


def row_str_list(row: Row, key: str, non_empty: bool = False) -> list[str]:
    value = row_field(row, key)
    if isinstance(value, np.ndarray):  # a list column read through pandas
        value = value.tolist()
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ProblemDataError(f"{row.where}: field {key!r} is not a list of strings: {show(value)}")
    if non_empty and not value:
        raise ProblemDataError(f"{row.where}: field {key!r} is an empty list")
    return list(value)


def row_python(row: Row, key: str, source: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as err:
        raise ProblemDataError(
            f"{row.where}: field {key!r} is not valid Python ({err.msg}, line {err.lineno}): {show(source)}"
        ) from err
