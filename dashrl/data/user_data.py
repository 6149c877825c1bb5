"""A dataset of your own: the generic loader behind ``prepare.<name>: {loader: file | hub, ...}``.

``load_user_splits(name, loader=..., ...)`` (the keyword arguments are the keys of a
``prepare.<name>`` section, ``dashrl.config.params.UserDatasetParams``) reads the rows of a local
``.jsonl`` / ``.parquet`` / ``.csv`` file (``loader: file``, ``path``) or of a Hub dataset split
(``loader: hub``, ``hub_id``, ``hub_config``, ``split``), maps the user's field names onto the problem
schema (``dashrl.data.schema``) and returns the validated train and test splits:

    id        the ``id_field`` value (a string or an integer), else "<name>-<row>" (a separate test
              source: "<name>-test-<row>")
    prompt    the ``prompt_field`` value, a non-empty string
    answer    the ``answer_field`` value, a non-empty string; what it holds depends on ``task``:
              math    the final answer, graded by math-verify (``dashrl.grading.math_grader``)
              code    a JSON code spec (``dashrl.data.code_tasks.CodeSpec``), graded by running its tests
              custom  ``CustomSpec(reward_function, answer, fields).to_answer()``: the user's answer, the
                      row's other fields and the reward function that grades it
                      (``dashrl.grading.custom_grader``), as one JSON object
    solution  the ``solution_field`` value (SFT on reference solutions), else ""
    source    ``name``
    level     the ``level_field`` value (an integer or "Level N"), else 1

Splits: the train rows come from ``path`` (``split`` for the Hub); the test rows from ``test_path``
(``test_split``) when given, else ``test_fraction`` of the train source's rows are held out, chosen
by a shuffle seeded with ``split_seed`` (each split keeps the source's row order). A split with no
row is not returned.

Every row is validated before anything is returned; a bad row raises ``ProblemDataError`` naming the
file (or Hub split), the row, the field and the value, e.g.
``mine.jsonl row 2 (line 3): field 'answer' is not a string: 42``.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dashrl.data.code_tasks import code_spec
from dashrl.data.rows import Row, file_rows, load_hub_rows, row_field, row_level, row_text
from dashrl.data.schema import ProblemDataError, show, to_frame

USER_FILE_SUFFIXES = (".jsonl", ".parquet", ".csv")
USER_TASKS = ("math", "code", "custom")
DEFAULT_LEVEL = 1

_CUSTOM_KEYS = ("answer", "fields", "reward_function")


# ---------------------------------------------------------------------------------------------
# The answer of a custom-graded problem
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CustomSpec:
    """What the ``answer`` of a ``task: custom`` problem holds.

    reward_function  "module:function", the user's reward function (``dashrl.grading.custom_grader``)
    answer           the row's answer field, passed to the function as ``answers[i]``
    fields           the row's other fields (all but the prompt and answer fields), as ``rows[i]``
    """

    reward_function: str
    answer: str
    fields: dict[str, Any]

    def to_answer(self) -> str:
        """The ``answer`` string of this spec (``custom_spec`` reads it back)."""
        return json.dumps(
            {"answer": self.answer, "fields": self.fields, "reward_function": self.reward_function},
            sort_keys=True, ensure_ascii=False, allow_nan=False,
        )


def check_function_reference(reference: Any) -> tuple[str, str]:
    """("module", "function") of a "module:function" reference; ValueError says what is wrong."""
    if not isinstance(reference, str) or reference.count(":") != 1:
        raise ValueError(f"expected 'module:function' (e.g. 'my_pkg.rewards:score'), got {reference!r}")
    module, function = reference.split(":")
    if not all(part.isidentifier() for part in module.split(".")) or not function.isidentifier():
        raise ValueError(f"expected 'module:function' with Python names (e.g. 'my_pkg.rewards:score'), got {reference!r}")
    return module, function


def custom_spec(answer: str) -> CustomSpec:
    """Parse and validate the ``answer`` of a custom-graded problem; ProblemDataError says what is wrong."""
    try:
        fields = json.loads(answer) if isinstance(answer, str) else None
    except json.JSONDecodeError as err:
        raise ProblemDataError(f"custom answer is not valid JSON ({err.msg}): {show(answer)}") from err
    if not isinstance(fields, dict) or sorted(fields) != list(_CUSTOM_KEYS):
        raise ProblemDataError(
            f"custom answer must be a JSON object with exactly the keys {list(_CUSTOM_KEYS)} "
            f"(written by prepare for task: custom): {show(answer)}"
        )
    try:
        check_function_reference(fields["reward_function"])
    except ValueError as err:
        raise ProblemDataError(f"custom answer: 'reward_function': {err}") from err
    if not isinstance(fields["answer"], str) or not isinstance(fields["fields"], dict):
        raise ProblemDataError(f"custom answer: 'answer' must be a string and 'fields' an object: {show(answer)}")
    return CustomSpec(fields["reward_function"], fields["answer"], fields["fields"])


# ---------------------------------------------------------------------------------------------
# Rows -> problem records
# ---------------------------------------------------------------------------------------------


def _json_value(row: Row, key: str, value: Any) -> Any:
    """``value`` as JSON data (a custom problem's other fields travel as JSON); raises naming the field."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ProblemDataError(
            f"{row.where}: field {key!r} is not JSON data (strings, numbers, booleans, null, lists, "
            f"objects; task: custom passes it to the reward function): {show(value)}"
        ) from err


def _row_id(row: Row, key: str) -> str:
    value = row_field(row, key)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ProblemDataError(f"{row.where}: field {key!r} is not a string or an integer: {show(value)}")
    if not str(value).strip():
        raise ProblemDataError(f"{row.where}: field {key!r} is empty: {show(value)}")
    return str(value)


def _record(row: Row, name: str, default_id: str, fields: dict[str, Any]) -> dict[str, Any]:
    prompt_field, answer_field = fields["prompt_field"], fields["answer_field"]
    answer = row_text(row, answer_field, non_empty=True)
    task = fields["task"]
    if task == "math":
        answer = answer.strip()
    elif task == "code":
        try:
            code_spec(answer)
        except ProblemDataError as err:
            why = str(err).removeprefix("code answer: ")
            raise ProblemDataError(f"{row.where}: field {answer_field!r} (task: code): {why}") from err
    else:
        others = {key: _json_value(row, key, value) for key, value in row.fields.items()
                  if key not in (prompt_field, answer_field)}
        answer = CustomSpec(fields["reward_function"], answer, others).to_answer()
    return {
        "id": default_id if fields["id_field"] is None else _row_id(row, fields["id_field"]),
        "prompt": row_text(row, prompt_field, non_empty=True),
        "answer": answer,
        "solution": "" if fields["solution_field"] is None else row_text(row, fields["solution_field"]),
        "source": name,
        "level": DEFAULT_LEVEL if fields["level_field"] is None else row_level(row, fields["level_field"]),
    }


def _source_rows(fields: dict[str, Any], test: bool) -> tuple[str, list[Row]] | None:
    """(label, rows) of the train source, or of the separate test source (None when there is none)."""
    if fields["loader"] == "file":
        path = fields["test_path" if test else "path"]
        return None if path is None else file_rows(Path(path), USER_FILE_SUFFIXES)
    split = fields["test_split" if test else "split"]
    return None if split is None else load_hub_rows(fields["hub_id"], fields["hub_config"], split)


def held_out(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) row positions, each in source order: round(test_fraction x n) rows, chosen by a
    shuffle seeded with ``seed``, are the test split."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_test = int(math.floor(test_fraction * n + 0.5))
    return sorted(order[n_test:]), sorted(order[:n_test])


def load_user_splits(name: str, **fields: Any) -> dict[str, pd.DataFrame]:
    """{"train": problems, "test": problems} of a dataset of your own (splits with no row left out).

    ``fields`` are the keys of its ``prepare.<name>`` section (see the module docstring); every row
    of every source is validated before anything is returned.
    """
    if fields["task"] not in USER_TASKS:
        raise ValueError(f"unknown task {fields['task']!r}; valid tasks: {', '.join(USER_TASKS)}")
    where, rows = _source_rows(fields, test=False)
    records = [_record(row, name, f"{name}-{row.index:05d}", fields) for row in rows]
    to_frame(records, where)  # the whole source is validated (ids unique) before it is split
    separate = _source_rows(fields, test=True)
    if separate is None:
        train, test = held_out(len(records), fields["test_fraction"], fields["split_seed"])
        splits = {"train": ([records[i] for i in train], f"{where} (train split)"),
                  "test": ([records[i] for i in test], f"{where} (test split)")}
    else:
        test_where, test_rows = separate
        splits = {"train": (records, where),
                  "test": ([_record(row, name, f"{name}-test-{row.index:05d}", fields) for row in test_rows], test_where)}
    frames = {split: to_frame(split_records, label) for split, (split_records, label) in splits.items() if split_records}
    if not frames:
        raise ProblemDataError(f"{where}: no rows")
    return frames
