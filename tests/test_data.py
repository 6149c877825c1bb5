"""Tests of dashrl.data (schema, loaders, generate) and dashrl.data.arith: the arithmetic generator, the benchmark loaders on local files, validation, I/O."""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

import pandas as pd
import pytest

import dashrl.data.arith
import dashrl.infra.files
from dashrl.data import loaders
from dashrl.data.arith import generate_arith
from dashrl.data.loaders import load_problems
from dashrl.data.schema import COLUMNS, ProblemDataError, read_problems, validate_problems, write_problems

LEVELS = (1, 2, 3, 4, 5)
_EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


@pytest.fixture(scope="module")
def arith() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_arith(n_train=503, n_test=52, levels=LEVELS, seed=7)


# ---------------------------------------------------------------------------------------------
# Arithmetic generator
# ---------------------------------------------------------------------------------------------


def test_generate_arith_is_determined_by_the_seed(arith):
    train, test = generate_arith(n_train=503, n_test=52, levels=LEVELS, seed=7)
    pd.testing.assert_frame_equal(train, arith[0])
    pd.testing.assert_frame_equal(test, arith[1])
    other_train, other_test = generate_arith(n_train=503, n_test=52, levels=LEVELS, seed=8)
    assert list(other_train["prompt"]) != list(train["prompt"])
    assert list(other_test["prompt"]) != list(test["prompt"])


def test_generate_arith_test_set_does_not_depend_on_n_train(arith):
    _, test = generate_arith(n_train=20, n_test=52, levels=LEVELS, seed=7)
    pd.testing.assert_frame_equal(test, arith[1])


def test_generate_arith_sizes_columns_and_dtypes(arith):
    train, test = arith
    assert len(train) == 503 and len(test) == 52
    for df, split in ((train, "train"), (test, "test")):
        assert tuple(df.columns) == COLUMNS
        assert all(pd.api.types.is_string_dtype(df[column]) for column in COLUMNS[:-1])
        assert df["level"].dtype == "int64"
        assert list(df["id"]) == [f"arith-{split}-{i:05d}" for i in range(len(df))]
        assert set(df["source"]) == {"arith"}
        validate_problems(df)


def test_generate_arith_balances_levels(arith):
    train, test = arith
    # 503 = 5 * 100 + 3: the three lowest levels get the remainder; 52 = 5 * 10 + 2.
    assert train["level"].value_counts().sort_index().to_dict() == {1: 101, 2: 101, 3: 101, 4: 100, 5: 100}
    assert test["level"].value_counts().sort_index().to_dict() == {1: 11, 2: 11, 3: 10, 4: 10, 5: 10}
    # Rows are shuffled, not grouped by level.
    assert list(train["level"]) != sorted(train["level"])
    only_3 = generate_arith(n_train=9, n_test=3, levels=[3], seed=1)
    assert set(only_3[0]["level"]) == set(only_3[1]["level"]) == {3}


def test_generate_arith_texts_are_unique_and_splits_disjoint(arith):
    train, test = arith
    assert train["prompt"].is_unique and test["prompt"].is_unique
    assert not set(train["prompt"]) & set(test["prompt"])
    assert train["prompt"].str.len().min() > 30


def _check_solution(prompt: str, solution: str, answer: str, level: int) -> None:
    """Every equation of the solution is correct, uses only the prompt's numbers and earlier results,
    uses all of the prompt's numbers, ends in the answer, and has the level's shape."""
    body, last_line = solution.rsplit("\n", 1)
    assert last_line == f"The answer is \\boxed{{{answer}}}."
    equations = [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION.findall(body)]
    assert equations, solution
    given = {int(n) for n in re.findall(r"\d+", prompt)}
    known = set(given)
    for a, op, b, c in equations:
        assert {a, b} <= known, (prompt, solution)
        if op == "/":
            assert a % b == 0, solution
        assert _OPS[op](a, b) == c >= 0, solution
        known.add(c)
    assert given <= {n for a, _, b, _ in equations for n in (a, b)}, (prompt, solution)
    assert str(equations[-1][3]) == answer
    ops = [op for _, op, _, _ in equations]
    operands = [n for a, _, b, _ in equations for n in (a, b)]
    if level == 1:
        assert len(ops) == 1 and ops[0] in "+-" and max(operands) <= 9
    elif level == 2:
        assert len(ops) == 1 and ops[0] in "+-" and min(operands) >= 10 and max(operands) <= 99
    elif level == 3:
        assert len(ops) in (2, 3) and set(ops) <= {"+", "-"} and max(given) <= 99
    elif level == 4:
        a, op, b, c = equations[0]
        assert len(ops) == 1 and op in "*/"
        assert min(a, b) <= 9 if op == "*" else min(b, c) <= 9
    else:
        assert len(ops) == 2 and sorted(op in "*/" for op in ops) == [False, True]


def test_generate_arith_solutions_are_correct(arith):
    train, test = arith
    for df in (train, test):
        for prompt, solution, answer, level in zip(
            df["prompt"], df["solution"], df["answer"], df["level"], strict=True
        ):
            assert answer.isdigit()
            _check_solution(prompt, solution, answer, level)


def test_generate_arith_full_size():
    train, test = generate_arith(n_train=2000, n_test=200, levels=LEVELS, seed=0)
    assert len(train) == 2000 and len(test) == 200
    assert not set(train["prompt"]) & set(test["prompt"])


def test_generate_arith_empty_and_bad_arguments():
    train, test = generate_arith(n_train=0, n_test=0, levels=LEVELS, seed=0)
    assert len(train) == len(test) == 0 and tuple(train.columns) == COLUMNS
    with pytest.raises(ValueError, match=r"unknown arithmetic levels \[0, 7\]"):
        generate_arith(n_train=10, n_test=2, levels=[1, 7, 0], seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        generate_arith(n_train=-1, n_test=2, levels=[1], seed=0)
    with pytest.raises(ValueError, match="non-negative"):
        generate_arith(n_train=1, n_test=-2, levels=[1], seed=0)
    with pytest.raises(ValueError, match="distinct"):
        generate_arith(n_train=1, n_test=2, levels=[1, 1], seed=0)
    with pytest.raises(ValueError, match="no arithmetic levels"):
        generate_arith(n_train=1, n_test=2, levels=[], seed=0)


def test_generate_arith_gives_up_when_texts_run_out(monkeypatch):
    few = dashrl.data.arith._Arith("What is 1 + 1?", ["1 + 1 = 2."], 2)
    monkeypatch.setitem(dashrl.data.arith._LEVEL_GENERATORS, 1, lambda rng: few)
    with pytest.raises(ValueError, match=r"could only generate 1 unique level-1 .* of the 2 requested"):
        generate_arith(n_train=0, n_test=2, levels=[1], seed=0)


# ---------------------------------------------------------------------------------------------
# Loaders on local files
# ---------------------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict], blank_line_after: int | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    if blank_line_after is not None:
        lines.insert(blank_line_after, "")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 2. How many?", "answer": "3 + 2 = <<3+2=5>>5\n#### 5"},
    {
        "question": "A shop sells 617 pens a day for 2 days. How many pens does it sell?",
        "answer": "It sells 617 * 2 = <<617*2=1234>>1,234 pens.\n#### 1,234",
    },
    {
        "question": "The temperature is 2.5 and drops by 10. What is it now?",
        "answer": "2.5 - 10 = -7.5\n####  -7.5 ",
    },
]

MATH_ROWS = [
    {
        "problem": "What is $1+1$?",
        "solution": "$1+1=\\boxed{2}$.",
        "answer": "2",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    },
    {
        "problem": "Simplify $\\frac{2}{4}$.",
        "solution": "It is $\\boxed{\\frac12}$.",
        "answer": " \\frac12 ",
        "subject": "Algebra",
        "level": "Level 3",
        "unique_id": "test/algebra/2.json",
    },
    {
        "problem": "Find $x$.",
        "solution": "$x=\\boxed{0}$",
        "answer": "0",
        "subject": "Algebra",
        "level": "Level ?",
        "unique_id": "test/algebra/3.json",
    },
]


def test_load_gsm8k_from_jsonl(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", GSM8K_ROWS, blank_line_after=1)
    df = load_problems("gsm8k", "test", path=str(path))
    assert tuple(df.columns) == COLUMNS
    assert list(df["id"]) == ["gsm8k-test-00000", "gsm8k-test-00001", "gsm8k-test-00002"]
    assert list(df["answer"]) == ["5", "1234", "-7.5"]
    assert df["prompt"][1] == GSM8K_ROWS[1]["question"]
    assert df["solution"][0] == "3 + 2 = <<3+2=5>>5"
    assert df["solution"][1] == "It sells 617 * 2 = <<617*2=1234>>1,234 pens."
    assert df["solution"][2] == "2.5 - 10 = -7.5"
    assert list(df["level"]) == [0, 0, 0] and df["level"].dtype == "int64"
    assert set(df["source"]) == {"gsm8k"}


def test_load_gsm8k_from_parquet(tmp_path):
    path = tmp_path / "gsm8k.parquet"
    pd.DataFrame(GSM8K_ROWS).to_parquet(path)
    df = load_problems("gsm8k", "train", path=path)
    assert list(df["id"]) == ["gsm8k-train-00000", "gsm8k-train-00001", "gsm8k-train-00002"]
    assert list(df["answer"]) == ["5", "1234", "-7.5"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize(("name", "split"), [("math500", "test"), ("math_train", "train")])
def test_load_math(tmp_path, suffix, name, split):
    path = tmp_path / f"math{suffix}"
    if suffix == ".jsonl":
        _write_jsonl(path, MATH_ROWS)
    else:
        # Parquet needs one type per column: levels as strings, as in the original MATH release.
        levels = ["Level 1", "Level 3", "Level ?"]
        pd.DataFrame(
            [{**row, "level": level} for row, level in zip(MATH_ROWS, levels, strict=True)]
        ).to_parquet(path)
    df = load_problems(name, split, path=str(path))
    assert tuple(df.columns) == COLUMNS
    assert list(df["id"]) == [row["unique_id"] for row in MATH_ROWS]
    assert list(df["prompt"]) == [row["problem"] for row in MATH_ROWS]
    assert list(df["solution"]) == [row["solution"] for row in MATH_ROWS]
    assert list(df["answer"]) == ["2", "\\frac12", "0"]
    assert list(df["level"]) == [1, 3, 0] and df["level"].dtype == "int64"
    assert set(df["source"]) == {name}


def test_load_arith_reads_our_schema(tmp_path, arith):
    path = tmp_path / "prepared" / "test.parquet"
    write_problems(arith[1], path)
    pd.testing.assert_frame_equal(load_problems("arith", "test", path=path), arith[1])
    with pytest.raises(ProblemDataError, match="generate_arith"):
        load_problems("arith", "test")


def test_hub_ids_name_every_public_benchmark():
    assert set(loaders.HUB_IDS) == {"gsm8k", "math500", "math_train"}
    assert loaders.HUB_IDS["gsm8k"] == "openai/gsm8k" and loaders.HUB_CONFIGS["gsm8k"] == "main"


# ---------------------------------------------------------------------------------------------
# Bad inputs: the error names the file, the row, the field and the value
# ---------------------------------------------------------------------------------------------


def test_unknown_dataset_and_split():
    with pytest.raises(
        ProblemDataError, match=r"unknown dataset 'gsm9k'; valid names: arith, gsm8k, math500, math_train"
    ):
        load_problems("gsm9k", "test")
    with pytest.raises(ProblemDataError, match=r"'math500' has no split 'train'; valid splits: test"):
        load_problems("math500", "train")
    with pytest.raises(ValueError, match="has no split 'validation'"):
        load_problems("gsm8k", "validation")


def test_missing_file_and_bad_extension(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(ProblemDataError, match=rf"{re.escape(str(missing))}: file not found"):
        load_problems("gsm8k", "test", path=missing)
    csv = tmp_path / "gsm8k.csv"
    csv.write_text("question,answer\n")
    with pytest.raises(ProblemDataError, match=rf"{re.escape(str(csv))}: unsupported file extension '.csv'"):
        load_problems("gsm8k", "test", path=csv)
    with pytest.raises(ProblemDataError, match="file not found"):
        read_problems(tmp_path / "nope.parquet")
    with pytest.raises(ProblemDataError, match="unsupported file extension '.jsonl'"):
        read_problems(tmp_path / "nope.jsonl")


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "gsm8k.jsonl"
    path.write_text(json.dumps(GSM8K_ROWS[0]) + "\n\n{not json\n")
    with pytest.raises(
        ProblemDataError, match=rf"{re.escape(str(path))} line 3: malformed JSON .*'\{{not json'"
    ):
        load_problems("gsm8k", "test", path=path)
    path.write_text("[1, 2]\n")
    with pytest.raises(ProblemDataError, match=r"line 1: expected a JSON object, got \[1, 2\]"):
        load_problems("gsm8k", "test", path=path)


def test_gsm8k_answer_without_final_line(tmp_path):
    rows = [*GSM8K_ROWS, {"question": "How many apples?", "answer": "She has 5 apples"}]
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", rows, blank_line_after=0)
    expected = f"{path} row 3 (line 5): field 'answer' has no '#### <number>' line: 'She has 5 apples'"
    with pytest.raises(ProblemDataError, match=re.escape(expected)):
        load_problems("gsm8k", "test", path=path)


@pytest.mark.parametrize("final", ["####", "#### ", "#### five"])
def test_gsm8k_final_line_without_number(tmp_path, final):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", [{"question": "Q?", "answer": f"Work.\n{final}"}])
    with pytest.raises(
        ProblemDataError, match=rf"{re.escape(str(path))} row 0 \(line 1\): field 'answer' has no number"
    ):
        load_problems("gsm8k", "train", path=path)


def test_missing_and_null_fields(tmp_path):
    path = _write_jsonl(tmp_path / "gsm8k.jsonl", [GSM8K_ROWS[0], {"answer": "#### 3"}])
    with pytest.raises(
        ProblemDataError,
        match=rf"{re.escape(str(path))} row 1 \(line 2\): required field 'question' is missing",
    ):
        load_problems("gsm8k", "test", path=path)

    rows = [MATH_ROWS[0], MATH_ROWS[1], {**MATH_ROWS[2], "solution": None}]
    path = tmp_path / "math.parquet"
    pd.DataFrame(rows).astype({"level": str}).to_parquet(path)
    with pytest.raises(
        ProblemDataError, match=rf"{re.escape(str(path))} row 2: required field 'solution' is null"
    ):
        load_problems("math500", "test", path=path)


def test_empty_answer_and_bad_level(tmp_path):
    path = _write_jsonl(tmp_path / "math.jsonl", [MATH_ROWS[0], {**MATH_ROWS[1], "answer": "  "}])
    with pytest.raises(ProblemDataError, match=r"math.jsonl row 1 \(line 2\): field 'answer' is empty: '  '"):
        load_problems("math_train", "train", path=path)
    path = _write_jsonl(tmp_path / "math.jsonl", [{**MATH_ROWS[0], "level": "hard"}])
    with pytest.raises(
        ProblemDataError, match=r"math.jsonl row 0 \(line 1\): field 'level' is not an integer .*'hard'"
    ):
        load_problems("math500", "test", path=path)
    path = _write_jsonl(tmp_path / "math.jsonl", [{**MATH_ROWS[0], "answer": 2}])
    with pytest.raises(ProblemDataError, match=r"row 0 \(line 1\): field 'answer' is not a string: 2"):
        load_problems("math500", "test", path=path)


def test_duplicate_ids_name_both_rows(tmp_path):
    rows = [MATH_ROWS[0], MATH_ROWS[1], {**MATH_ROWS[2], "unique_id": MATH_ROWS[0]["unique_id"]}]
    path = _write_jsonl(tmp_path / "math.jsonl", rows)
    with pytest.raises(
        ProblemDataError,
        match=rf"{re.escape(str(path))} rows 0 and 2: field 'id' has duplicate value 'test/prealgebra/1.json'",
    ):
        load_problems("math500", "test", path=path)


def test_validate_problems_rejects_bad_frames(arith):
    df = arith[1].copy()
    with pytest.raises(ProblemDataError, match=r"sample: columns are"):
        validate_problems(df[list(reversed(COLUMNS))], "sample")
    bad = df.astype({"level": object})
    bad.loc[4, "level"] = 1.5
    with pytest.raises(
        ProblemDataError, match=r"sample row 4: field 'level' is not a non-negative integer: 1.5"
    ):
        validate_problems(bad, "sample")
    bad = df.astype({"answer": object})
    bad.loc[2, "answer"] = None
    with pytest.raises(ProblemDataError, match=r"sample row 2: field 'answer' is not a string: None"):
        validate_problems(bad, "sample")


# ---------------------------------------------------------------------------------------------
# Parquet I/O
# ---------------------------------------------------------------------------------------------


def test_write_read_round_trip_is_atomic(tmp_path, arith):
    path = tmp_path / "out" / "train.parquet"
    write_problems(arith[0], path)
    pd.testing.assert_frame_equal(read_problems(path), arith[0])
    write_problems(arith[1], path)  # overwrite in place
    pd.testing.assert_frame_equal(read_problems(path), arith[1])
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.parquet"]


def test_write_validates_before_writing(tmp_path, arith):
    path = tmp_path / "train.parquet"
    duplicated = pd.concat([arith[1], arith[1].iloc[:1]], ignore_index=True)
    with pytest.raises(
        ProblemDataError, match=rf"{re.escape(str(path))} rows 0 and 52: field 'id' has duplicate value"
    ):
        write_problems(duplicated, path)
    with pytest.raises(ProblemDataError, match="unsupported file extension '.csv'"):
        write_problems(arith[1], tmp_path / "train.csv")
    assert list(tmp_path.iterdir()) == []


def test_write_failure_leaves_no_temp_file(tmp_path, arith, monkeypatch):
    path = tmp_path / "train.parquet"
    write_problems(arith[1], path)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dashrl.infra.files.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_problems(arith[0], path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.parquet"]
    pd.testing.assert_frame_equal(read_problems(path), arith[1])  # the old file is intact


def test_read_problems_rejects_a_file_in_another_schema(tmp_path):
    path = tmp_path / "math.parquet"
    pd.DataFrame(MATH_ROWS[:1]).to_parquet(path)
    with pytest.raises(ProblemDataError, match=rf"{re.escape(str(path))}: columns are"):
        read_problems(path)
    path.write_bytes(b"not parquet")
    with pytest.raises(ProblemDataError, match="not a readable parquet file"):
        read_problems(path)
