"""Problem records: an embedded arithmetic task generator, loaders of public benchmarks, parquet I/O.

Every problem set is a pandas DataFrame with exactly the columns ``COLUMNS``, in this order:

    id        str, unique within a set
    prompt    str, the raw problem text (no chat template: the paper prompts base models with it)
    answer    str, the reference final answer, non-empty
    solution  str, a worked solution
    source    str, the dataset name ("arith", "gsm8k", "math500", "math_train", ...)
    level     int, difficulty level; 0 where the source has none

Two ways to get problems:

* ``generate_arith`` writes our own grade-school arithmetic word problems (levels 1-5), fully
  determined by a seed. Each level draws from its own random stream, ``default_rng([seed, level])``,
  and the test problems are drawn before the training problems, so the test set depends only on
  (seed, levels, n_test): growing the training set never changes the test set. Texts are unique
  within and across the two splits.
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
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dashrl.io import atomic_file

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
    generate_arith + write_problems).
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
            "dataset 'arith' is generated, not downloaded: call generate_arith() or pass a path"
        )
    return read_problems(path)


# ---------------------------------------------------------------------------------------------
# Embedded arithmetic task
# ---------------------------------------------------------------------------------------------

_PEOPLE = (
    ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Emma", "she"),
    ("Omar", "he"), ("Sofia", "she"), ("Lucas", "he"), ("Zara", "she"), ("Ethan", "he"),
    ("Priya", "she"), ("Mateo", "he"), ("Chloe", "she"), ("Kenji", "he"), ("Amara", "she"),
    ("Leo", "he"), ("Nina", "she"), ("Samuel", "he"), ("Hana", "she"), ("Diego", "he"),
)  # fmt: skip
_ITEMS = (
    ("pencil", "pencils"), ("sticker", "stickers"), ("marble", "marbles"), ("apple", "apples"),
    ("book", "books"), ("cookie", "cookies"), ("stamp", "stamps"), ("shell", "shells"),
    ("card", "cards"), ("balloon", "balloons"), ("crayon", "crayons"), ("button", "buttons"),
    ("bead", "beads"), ("toy car", "toy cars"), ("orange", "oranges"), ("egg", "eggs"),
)  # fmt: skip
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"), ("basket", "baskets"))
_GAIN_VERBS = ("buys", "finds", "gets", "collects", "is given", "wins")
_LOSS_VERBS = ("gives away", "loses", "uses", "sells", "trades away")


@dataclass(frozen=True)
class _Arith:
    text: str
    steps: list[str]  # sentences of the worked solution, each with its equation
    answer: int


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _people(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    return [_PEOPLE[i] for i in rng.choice(len(_PEOPLE), size=k, replace=False)]


def _noun(n: int, noun: tuple[str, str]) -> str:
    return noun[0] if n == 1 else noun[1]


def _count(n: int, noun: tuple[str, str]) -> str:
    """'1 pencil', '7 pencils'."""
    return f"{n} {_noun(n, noun)}"


def _operand(rng: np.random.Generator) -> int:
    """A one- or two-digit number, each with probability 1/2."""
    return int(rng.integers(1, 10)) if rng.random() < 0.5 else int(rng.integers(10, 100))


def _one_step(rng: np.random.Generator, low: int, high: int, n_templates: int = 5) -> _Arith:
    """Levels 1 and 2: one addition or subtraction of operands in [low, high].

    Templates 0-2 state the operation (gains, altogether, gives away); 3-4 are comparisons
    ("N fewer than", "how many more than"), which the embedded model finds much harder.
    """
    (a_name, a_pron), (b_name, _) = _people(rng, 2)
    item = _pick(rng, _ITEMS)
    x, y = (int(v) for v in rng.integers(low, high + 1, size=2))
    big, small = max(x, y), min(x, y)
    template = int(rng.integers(n_templates))
    if template == 0:
        verb, total = _pick(rng, _GAIN_VERBS), x + y
        text = f"{a_name} has {_count(x, item)}. {a_pron.capitalize()} {verb} {y} more. How many {item[1]} does {a_name} have now?"
        steps = [
            f"{a_name} starts with {_count(x, item)}.",
            f"{a_pron.capitalize()} {verb} {y} more, so {x} + {y} = {total}.",
        ]
        return _Arith(text, steps, total)
    if template == 1:
        total = x + y
        text = f"{a_name} has {_count(x, item)} and {b_name} has {_count(y, item)}. How many {item[1]} do they have altogether?"
        steps = [f"Together they have {x} + {y} = {_count(total, item)}."]
        return _Arith(text, steps, total)
    left = big - small
    if template == 2:
        verb = _pick(rng, _LOSS_VERBS)
        text = f"{a_name} has {_count(big, item)}. {a_pron.capitalize()} {verb} {small} of them. How many {item[1]} does {a_name} have now?"
        steps = [
            f"{a_name} starts with {_count(big, item)}.",
            f"{a_pron.capitalize()} {verb} {small}, so {big} - {small} = {left}.",
        ]
        return _Arith(text, steps, left)
    if template == 3:
        text = f"{a_name} has {_count(big, item)}. {b_name} has {small} fewer {_noun(small, item)} than {a_name}. How many {item[1]} does {b_name} have?"
        steps = [f"{b_name} has {small} fewer than {a_name}'s {big}, so {big} - {small} = {left}."]
        return _Arith(text, steps, left)
    text = f"{a_name} has {_count(big, item)} and {b_name} has {_count(small, item)}. How many more {item[1]} does {a_name} have than {b_name}?"
    steps = [f"The difference is {big} - {small} = {left}."]
    return _Arith(text, steps, left)


def _level_1(rng: np.random.Generator) -> _Arith:
    """One-digit operands, the operation stated in the text: the embedded model's easiest band."""
    return _one_step(rng, 1, 9, n_templates=3)


def _level_2(rng: np.random.Generator) -> _Arith:
    return _one_step(rng, 10, 99)


def _level_3(rng: np.random.Generator) -> _Arith:
    """Two or three additions/subtractions of one- and two-digit numbers."""
    (a_name, a_pron), (b_name, _), (c_name, _) = _people(rng, 3)
    item = _pick(rng, _ITEMS)
    template = int(rng.integers(4))
    if template == 0:  # a chain of 2 or 3 gains and losses
        start = int(rng.integers(10, 100))
        value, actions, steps = start, [], [f"{a_name} starts with {_count(start, item)}."]
        for k in range(int(rng.integers(2, 4))):
            amount = _operand(rng)
            subject = a_pron.capitalize() if k == 0 else f"Then {a_pron}"
            if rng.random() < 0.5 and amount <= value:
                verb = _pick(rng, _LOSS_VERBS)
                actions.append(f"{verb} {amount}")
                steps.append(f"{subject} {verb} {amount}, so {value} - {amount} = {value - amount}.")
                value -= amount
            else:
                verb = _pick(rng, _GAIN_VERBS)
                actions.append(f"{verb} {amount} more")
                steps.append(f"{subject} {verb} {amount} more, so {value} + {amount} = {value + amount}.")
                value += amount
        chain = (
            actions[0] + ", then " + actions[1] + (f", and then {actions[2]}" if len(actions) == 3 else "")
        )
        text = f"{a_name} has {_count(start, item)}. {a_pron.capitalize()} {chain}. How many {item[1]} does {a_name} have now?"
        return _Arith(text, steps, value)
    if template == 1:  # three people, in total
        x, y, z = _operand(rng), _operand(rng), _operand(rng)
        text = (
            f"{a_name} has {_count(x, item)}, {b_name} has {_count(y, item)}, and {c_name} has {_count(z, item)}. "
            f"How many {item[1]} do they have in total?"
        )
        steps = [
            f"{a_name} and {b_name} have {x} + {y} = {_count(x + y, item)}.",
            f"Adding {c_name}'s {z} gives {x + y} + {z} = {_count(x + y + z, item)}.",
        ]
        return _Arith(text, steps, x + y + z)
    if template == 2:  # more than, then fewer than
        x, y = int(rng.integers(10, 100)), _operand(rng)
        z = int(rng.integers(1, min(x + y, 99) + 1))
        text = (
            f"{a_name} has {_count(x, item)}. {b_name} has {y} more {_noun(y, item)} than {a_name}, "
            f"and {c_name} has {z} fewer {_noun(z, item)} than {b_name}. How many {item[1]} does {c_name} have?"
        )
        steps = [
            f"{b_name} has {x} + {y} = {_count(x + y, item)}.",
            f"{c_name} has {x + y} - {z} = {_count(x + y - z, item)}.",
        ]
        return _Arith(text, steps, x + y - z)
    # a container: take out, put back, take out
    container = _pick(rng, _CONTAINERS)
    start = int(rng.integers(10, 100))
    taken = int(rng.integers(1, start + 1))
    back = _operand(rng)
    again = int(rng.integers(1, min(start - taken + back, 99) + 1))
    after_take, after_back = start - taken, start - taken + back
    text = (
        f"A {container[0]} holds {_count(start, item)}. {a_name} takes out {taken}, then puts back {back}, "
        f"and then takes out {again}. How many {item[1]} are in the {container[0]} now?"
    )
    steps = [
        f"After taking out {taken}, {start} - {taken} = {after_take} are left.",
        f"Putting back {back} gives {after_take} + {back} = {after_back}.",
        f"Taking out {again} leaves {after_back} - {again} = {after_back - again}.",
    ]
    return _Arith(text, steps, after_back - again)


def _level_4(rng: np.random.Generator) -> _Arith:
    """One multiplication or exact division: a single-digit number times a one- or two-digit number."""
    a_name, a_pron = _pick(rng, _PEOPLE)
    item, container = _pick(rng, _ITEMS), _pick(rng, _CONTAINERS)
    small = int(rng.integers(2, 10))
    other = int(rng.integers(2, 10)) if rng.random() < 0.5 else int(rng.integers(10, 100))
    product = small * other
    template = int(rng.integers(4))
    if template == 0:
        text = (
            f"{a_name} buys {small} {container[1]} of {item[1]}. Each {container[0]} has {_count(other, item)}. "
            f"How many {item[1]} does {a_name} buy?"
        )
        steps = [f"{a_name} buys {small} {container[1]} with {other} each, so {small} * {other} = {product}."]
        return _Arith(text, steps, product)
    if template == 1:
        text = f"{a_name} reads {other} pages every day for {small} days. How many pages does {a_name} read?"
        steps = [
            f"{a_pron.capitalize()} reads {other} pages on each of {small} days, so {small} * {other} = {product}."
        ]
        return _Arith(text, steps, product)
    if template == 2:
        text = (
            f"{a_name} has {_count(product, item)} and shares them equally among {small} friends. "
            f"How many {item[1]} does each friend get?"
        )
        steps = [f"Sharing {product} among {small} friends gives {product} / {small} = {other} each."]
        return _Arith(text, steps, other)
    text = (
        f"{a_name} packs {_count(product, item)} into {container[1]} of {small}. "
        f"How many {container[1]} does {a_name} fill?"
    )
    steps = [f"Each {container[0]} holds {small}, so {product} / {small} = {other}."]
    return _Arith(text, steps, other)


def _level_5(rng: np.random.Generator) -> _Arith:
    """A multiplication or division followed by an addition or subtraction."""
    a_name, a_pron = _pick(rng, _PEOPLE)
    item, container = _pick(rng, _ITEMS), _pick(rng, _CONTAINERS)
    groups, size = int(rng.integers(2, 10)), int(rng.integers(2, 13))
    product = groups * size
    template = int(rng.integers(4))
    if template == 0:  # buy groups, use some
        used, verb = int(rng.integers(1, product + 1)), _pick(rng, _LOSS_VERBS)
        text = (
            f"{a_name} buys {groups} {container[1]} of {size} {item[1]} and {verb} {used} of them. "
            f"How many {item[1]} does {a_name} have left?"
        )
        steps = [
            f"{a_name} buys {groups} * {size} = {_count(product, item)}.",
            f"{a_pron.capitalize()} {verb} {used}, so {product} - {used} = {product - used}.",
        ]
        return _Arith(text, steps, product - used)
    if template == 1:  # have some, buy groups
        start = _operand(rng)
        text = (
            f"{a_name} has {_count(start, item)}. {a_pron.capitalize()} buys {groups} more {container[1]} "
            f"with {size} {item[1]} in each. How many {item[1]} does {a_name} have now?"
        )
        steps = [
            f"The {container[1]} hold {groups} * {size} = {_count(product, item)}.",
            f"{a_name} now has {start} + {product} = {_count(start + product, item)}.",
        ]
        return _Arith(text, steps, start + product)
    if template == 2:  # earn per day, spend some
        spent = int(rng.integers(1, product + 1))
        dollar = ("dollar", "dollars")
        text = (
            f"{a_name} earns {size} dollars each day for {groups} days and then spends {spent} dollars. "
            f"How many dollars does {a_name} have left?"
        )
        steps = [
            f"{a_name} earns {groups} * {size} = {_count(product, dollar)}.",
            f"After spending {spent}, {product} - {spent} = {_count(product - spent, dollar)} are left.",
        ]
        return _Arith(text, steps, product - spent)
    # split equally, then add some to one container
    extra = _operand(rng)
    text = (
        f"{a_name} splits {_count(product, item)} equally into {groups} {container[1]}. Then {a_pron} adds "
        f"{extra} more {_noun(extra, item)} to one {container[0]}. How many {item[1]} are in that {container[0]} now?"
    )
    steps = [
        f"Each {container[0]} gets {product} / {groups} = {_count(size, item)}.",
        f"That {container[0]} now has {size} + {extra} = {_count(size + extra, item)}.",
    ]
    return _Arith(text, steps, size + extra)


_LEVEL_GENERATORS: dict[int, Callable[[np.random.Generator], _Arith]] = {
    1: _level_1,
    2: _level_2,
    3: _level_3,
    4: _level_4,
    5: _level_5,
}
_ATTEMPTS_PER_PROBLEM = 20  # rejection sampling budget; every level has far more texts than this needs


def _equal_shares(n: int, k: int) -> list[int]:
    """n split into k shares differing by at most one; the first shares get the remainder."""
    base, extra = divmod(n, k)
    return [base + (i < extra) for i in range(k)]


def _draw_unique(level: int, n: int, rng: np.random.Generator, seen: set[str]) -> list[_Arith]:
    """n problems of one level whose texts are not in `seen` (and are added to it)."""
    generate, problems = _LEVEL_GENERATORS[level], []
    max_attempts, attempts = _ATTEMPTS_PER_PROBLEM * n + 100, 0
    while len(problems) < n and attempts < max_attempts:
        problem = generate(rng)
        attempts += 1
        if problem.text not in seen:
            seen.add(problem.text)
            problems.append(problem)
    if len(problems) == n:
        return problems
    raise ValueError(
        f"could only generate {len(problems)} unique level-{level} arithmetic problems of the {n} "
        f"requested in {max_attempts} attempts; ask for fewer problems or more levels"
    )


def _arith_frame(problems: list[_Arith], levels: list[int], split: str) -> pd.DataFrame:
    records = [
        {
            "id": f"arith-{split}-{index:05d}",
            "prompt": problem.text,
            "answer": str(problem.answer),
            "solution": " ".join(problem.steps) + f"\nThe answer is \\boxed{{{problem.answer}}}.",
            "source": "arith",
            "level": level,
        }
        for index, (problem, level) in enumerate(zip(problems, levels, strict=True))
    ]
    return _to_frame(records, f"arith[{split}]")


def generate_arith(
    n_train: int, n_test: int, levels: Sequence[int], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate (train, test) arithmetic word problems, shared equally among `levels` (1-5).

    1: one stated addition/subtraction, one-digit numbers  2: two-digit numbers, comparisons too
    3: two or three additions/subtractions                 4: one multiplication or exact division
    5: a multiplication/division, then an addition/subtraction
    Example (level 1): prompt "Mia has 7 pencils. She gives away 3 of them. How many pencils does Mia
    have now?", solution "Mia starts with 7 pencils. She gives away 3, so 7 - 3 = 4.\\nThe answer is
    \\boxed{4}.", answer "4". Shares differ by at most one (lower levels get the remainder); rows are
    shuffled; no text repeats within or across the splits. Same arguments, same frames.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be non-negative, got n_train={n_train}, n_test={n_test}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    levels = sorted(int(level) for level in levels)
    unknown = sorted(set(levels) - set(_LEVEL_GENERATORS))
    if unknown:
        raise ValueError(f"unknown arithmetic levels {unknown}; valid levels: {sorted(_LEVEL_GENERATORS)}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"arithmetic levels must be distinct, got {levels}")
    if not levels:
        if n_train + n_test > 0:
            raise ValueError("no arithmetic levels requested")
        return _arith_frame([], [], "train"), _arith_frame([], [], "test")

    # One stream per level; test problems first, so that n_train never changes the test set.
    streams = {level: np.random.default_rng([seed, level]) for level in levels}
    seen: set[str] = set()
    frames = []
    for split_number, (split, n) in enumerate((("test", n_test), ("train", n_train))):
        problems, problem_levels = [], []
        for level, share in zip(levels, _equal_shares(n, len(levels)), strict=True):
            problems += _draw_unique(level, share, streams[level], seen)
            problem_levels += [level] * share
        order = np.random.default_rng([seed, 0, split_number]).permutation(
            len(problems)
        )  # level 0: no stream
        frames.append(_arith_frame([problems[i] for i in order], [problem_levels[i] for i in order], split))
    test, train = frames
    return train, test


# The code datasets (mbppplus, humaneval, pyfunc) register their loaders in dashrl.code_data, which
# imports this module: importing it here completes the registry after `import dashrl.data` alone.
# It comes last, when every name code_data takes from here exists, so either import order works.
import dashrl.code_data  # noqa: E402, F401
