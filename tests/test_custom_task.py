"""A task of your own: the generic dataset loader (file, Hub), the reward function of your own (task:
custom) in the grader's worker processes, its preflight probe, the documented example, and one run
prepare -> rl -> evaluate on a tiny model with a user module and a JSONL file written here."""

from __future__ import annotations

import copy
import json
import re
import shutil
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from dashrl import preflight
from dashrl.config.params import (
    Params,
    ParamsError,
    UserDatasetParams,
    from_mapping,
    load_params,
    section_dict,
)
from dashrl.config.profiles import apply_profile
from dashrl.data.loaders import register_user_datasets, task_of
from dashrl.data.schema import ProblemDataError, read_problems
from dashrl.data.user_data import custom_spec, held_out, load_user_splits
from dashrl.grading.custom_grader import (
    CUSTOM_STATUSES,
    RewardFunctionError,
    grade_custom_batch,
    probe_reward_function,
)
from dashrl.grading.math_grader import Grade
from dashrl.grading.tasks import count_statuses, grade_completions
from stages import evaluate as evaluate_stage
from stages import prepare as prepare_stage
from stages import rl as rl_stage

REPO = Path(__file__).resolve().parents[1]

ROWS = [
    {"q": "What is 2 + 3?", "a": "5", "hard": 1, "hint": "add"},
    {"q": "What is 7 - 4?", "a": "3", "hard": 2, "hint": "subtract"},
    {"q": "What is 6 * 7?", "a": "42", "hard": 3, "hint": "multiply"},
    {"q": "What is 9 / 3?", "a": "3", "hard": 2, "hint": "divide"},
]


def user_fields(path: Path | None, **overrides) -> dict:
    """The keys of a prepare.<name> section (UserDatasetParams' defaults), as the stage passes them."""
    section = {"loader": "file", "path": None if path is None else str(path), "prompt_field": "q", "answer_field": "a",
               **overrides}
    return section_dict(UserDatasetParams(**section))


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_module(folder: Path, name: str, source: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))


# ------------------------------------------------------------------------------------------------
# The loader


def test_custom_loader_reads_jsonl_parquet_and_csv_alike(tmp_path):
    jsonl = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    csv = tmp_path / "mine.csv"
    pd.DataFrame(ROWS).to_csv(csv, index=False)  # every cell a string when read back: "1", "2", ...
    frames = [load_user_splits("mine", **user_fields(p, level_field="hard"))["train"] for p in (jsonl, parquet, csv)]
    for frame in frames[1:]:
        pd.testing.assert_frame_equal(frame, frames[0])
    first = frames[0]
    assert first["id"].tolist() == ["mine-00000", "mine-00001", "mine-00002", "mine-00003"]
    assert first["prompt"].tolist() == [r["q"] for r in ROWS] and first["answer"].tolist() == ["5", "3", "42", "3"]
    assert first["level"].tolist() == [1, 2, 3, 2] and set(first["source"]) == {"mine"} and set(first["solution"]) == {""}
    # No level field: level 1; an id field and a solution field.
    no_level = load_user_splits("mine", **user_fields(jsonl, id_field="hint", solution_field="hint"))
    assert no_level.keys() == {"train"}
    assert set(no_level["train"]["level"]) == {1}
    assert no_level["train"]["id"].tolist() == no_level["train"]["solution"].tolist() == [r["hint"] for r in ROWS]
    # An integer id field is read as a string; a repeated id is an error naming both rows.
    with pytest.raises(ProblemDataError, match=r"rows 1 and 3: field 'id' has duplicate value '2'"):
        load_user_splits("mine", **user_fields(jsonl, id_field="hard"))


def test_custom_held_out_test_split_is_seeded_disjoint_and_in_file_order(tmp_path):
    rows = [{"q": f"question {i}", "a": str(i)} for i in range(20)]
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    splits = load_user_splits("mine", **user_fields(path, test_fraction=0.25, split_seed=3))
    train, test = splits["train"]["answer"].tolist(), splits["test"]["answer"].tolist()
    assert len(test) == 5 and len(train) == 15 and sorted(train + test, key=int) == [str(i) for i in range(20)]
    assert train == sorted(train, key=int) and test == sorted(test, key=int)  # each split keeps the file's order
    again = load_user_splits("mine", **user_fields(path, test_fraction=0.25, split_seed=3))
    assert again["test"]["answer"].tolist() == test
    other = load_user_splits("mine", **user_fields(path, test_fraction=0.25, split_seed=4))
    assert other["test"]["answer"].tolist() != test
    assert held_out(4, 1.0, 0) == ([], [0, 1, 2, 3])
    only_test = load_user_splits("mine", **user_fields(path, test_fraction=1.0))
    assert only_test.keys() == {"test"} and len(only_test["test"]) == 20


def test_custom_loader_reads_a_separate_test_file(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", ROWS[:3])
    test = write_jsonl(tmp_path / "test.jsonl", ROWS[3:])
    splits = load_user_splits("mine", **user_fields(train, test_path=str(test)))
    assert splits["train"]["id"].tolist() == ["mine-00000", "mine-00001", "mine-00002"]
    assert splits["test"]["id"].tolist() == ["mine-test-00000"] and splits["test"]["answer"].tolist() == ["3"]


def test_custom_loader_reads_a_hub_dataset(monkeypatch):
    import datasets

    loaded = []

    def load_dataset(hub_id, config, split):
        loaded.append((hub_id, config, split))
        return datasets.Dataset.from_list(ROWS if split == "train" else [{"q": "What is 1 + 1?", "a": 2}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    fields = section_dict(UserDatasetParams(loader="hub", hub_id="someone/arith", hub_config="easy", split="train",
                                            prompt_field="q", answer_field="a", task="math"))
    splits = load_user_splits("mine", **fields)
    assert loaded == [("someone/arith", "easy", "train")] and splits["train"]["answer"].tolist() == ["5", "3", "42", "3"]
    with pytest.raises(ProblemDataError, match=r"someone/arith\[test\] row 0: field 'a' is not a string: 2"):
        load_user_splits("mine", **{**fields, "test_split": "test"})


@pytest.mark.parametrize(
    ("rows", "fields", "message"),
    [
        ([ROWS[0], {"q": "Q"}], {}, r"mine.jsonl row 1 \(line 2\): required field 'a' is missing"),
        ([ROWS[0], {"q": "  ", "a": "1"}], {}, r"mine.jsonl row 1 \(line 2\): field 'q' is empty: '  '"),
        ([{"q": "Q", "a": 42}], {}, r"mine.jsonl row 0 \(line 1\): field 'a' is not a string: 42"),
        ([{"q": "Q", "a": None}], {}, r"mine.jsonl row 0 \(line 1\): required field 'a' is null"),
        ([{"q": "Q", "a": "1", "hard": "very"}], {"level_field": "hard"},
         r"mine.jsonl row 0 \(line 1\): field 'hard' is not an integer or 'Level N': 'very'"),
        ([{"q": "Q", "a": "1", "hard": True}], {"id_field": "hard"},
         r"mine.jsonl row 0 \(line 1\): field 'hard' is not a string or an integer: True"),
        ([{"q": "Q", "a": "def f(): pass"}], {"task": "code"},
         r"mine.jsonl row 0 \(line 1\): field 'a' \(task: code\): code answer is not valid JSON"),
    ],
)
def test_custom_loader_bad_rows_name_the_file_row_field_and_value(tmp_path, rows, fields, message):
    path = write_jsonl(tmp_path / "mine.jsonl", rows)
    with pytest.raises(ProblemDataError, match=message):
        load_user_splits("mine", **user_fields(path, **fields))


def test_custom_loader_bad_csv_and_parquet_rows(tmp_path):
    csv = tmp_path / "mine.csv"
    csv.write_text("q,a\nWhat is 1 + 1?,2\nWhat is 2 + 2?\n")
    with pytest.raises(ProblemDataError, match=r"mine.csv row 1 \(line 3\): 1 cells, the header has 2"):
        load_user_splits("mine", **user_fields(csv))
    csv.write_text("q,a\nWhat is 1 + 1?,\n")
    with pytest.raises(ProblemDataError, match=r"mine.csv row 0 \(line 2\): field 'a' is empty: ''"):
        load_user_splits("mine", **user_fields(csv))
    parquet = tmp_path / "mine.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "Q", "a": "1", "blob": b"\x00\x01"}]), parquet)
    custom = {"task": "custom", "reward_function": "some.module:score"}
    with pytest.raises(ProblemDataError, match=r"mine.parquet row 0: field 'blob' is not JSON data .*b'\\x00\\x01'"):
        load_user_splits("mine", **user_fields(parquet, **custom))
    with pytest.raises(ProblemDataError, match=r"mine.txt: unsupported file extension '.txt' \(expected .jsonl or .parquet or .csv\)"):
        load_user_splits("mine", **{**user_fields(parquet), "path": str(tmp_path / "mine.txt")})


def test_custom_task_answers_carry_the_answer_the_other_fields_and_the_function(tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    train = load_user_splits("mine", **user_fields(path, task="custom", reward_function="my_pkg.rewards:score"))["train"]
    spec = custom_spec(train["answer"].iloc[2])
    assert (spec.reward_function, spec.answer, spec.fields) == ("my_pkg.rewards:score", "42", {"hard": 3, "hint": "multiply"})
    with pytest.raises(ProblemDataError, match=r"custom answer must be a JSON object with exactly the keys"):
        custom_spec(json.dumps({"answer": "42"}))


# ------------------------------------------------------------------------------------------------
# Params


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def with_user_dataset(raw: dict, **section) -> dict:
    raw = copy.deepcopy(raw)
    raw["prepare"]["mine"] = {"loader": "file", "path": "mine.jsonl", "prompt_field": "q", "answer_field": "a", **section}
    raw["prepare"]["datasets"] = ["arith", "mine"]
    return raw


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: with_user_dataset(r, colour="red"), r"prepare\.mine\.colour: unknown key \(valid: loader, prompt_field"),
        (lambda r: with_user_dataset(r, loader="ftp"), r"prepare\.mine\.loader: 'ftp' is not one of 'file', 'hub'"),
        (lambda r: with_user_dataset(r, path=None), r"prepare\.mine: path: None: loader: file needs the path"),
        (lambda r: with_user_dataset(r, path="mine.txt"), r"prepare\.mine: path: 'mine.txt': must end in .jsonl, .parquet or .csv"),
        (lambda r: with_user_dataset(r, loader="hub", path=None, hub_id="arith"), r"prepare\.mine: hub_id: 'arith': loader: hub needs"),
        (lambda r: with_user_dataset(r, hub_id="a/b"), r"prepare\.mine: hub_id: 'a/b': is for loader: hub \(loader is file\)"),
        (lambda r: with_user_dataset(r, task="custom"), r"prepare\.mine: reward_function: None: task: custom needs a reward function"),
        (lambda r: with_user_dataset(r, reward_function="m:f"), r"reward_function: 'm:f': task: custom needs .* other tasks take none"),
        (lambda r: with_user_dataset(r, task="custom", reward_function="m.py"), r"reward_function: 'm.py': expected 'module:function'"),
        (lambda r: with_user_dataset(r, test_fraction=1.5), r"prepare\.mine: test_fraction: 1\.5: must be in \[0, 1\]"),
        (lambda r: with_user_dataset(r, test_path="t.jsonl", test_fraction=0.2), r"test_fraction: 0\.2: the test rows come from"),
        (lambda r: with_user_dataset(r, answer_field="q"), r"prepare\.mine: answer_field: 'q': must differ from prompt_field"),
        (lambda r: with_user_dataset(r) | {"evaluate": {**r["evaluate"], "benchmarks": ["arith", "mine"]}},
         r"evaluate\.benchmarks: 'mine': prepare\.mine gives no test split"),
        (lambda r: with_user_dataset(r, test_fraction=1.0) | {"rl": {**r["rl"], "common": {**r["rl"]["common"], "dataset": "mine"}}},
         r"rl\.runs\.dash\.dataset: 'mine': prepare\.mine gives no train split"),
        (lambda r: {**r, "prepare": {**r["prepare"], "my-task": {"loader": "file", "path": "a.csv", "prompt_field": "q",
                                                                  "answer_field": "a"}}},
         r"prepare\.my-task: 'my-task': a dataset's name may hold only letters, digits and _"),
        (lambda r: {**r, "prepare": {**r["prepare"], "mine": {"path": "a.csv"}}},
         r"prepare\.mine: unknown key \(valid: datasets, arith, .*; a dataset of your own needs a `loader` key\)"),
        (lambda r: {**r, "prepare": {**r["prepare"], "datasets": ["arith", "mine"]}},
         r"prepare\.datasets: 'mine': unknown dataset .*or a section prepare\.mine with a loader"),
    ],
)
def test_custom_dataset_params_name_the_key_and_value(edit, message):
    with pytest.raises(ParamsError, match=message):
        from_mapping(Params, edit(raw_params()), where="params.yaml")


def test_custom_dataset_params_are_read_and_declare_their_task():
    raw = with_user_dataset(raw_params(), task="custom", reward_function="my_pkg.rewards:score", test_fraction=0.2)
    raw["evaluate"]["benchmarks"] = ["arith", "mine"]
    params = from_mapping(Params, raw, where="params.yaml")
    assert params.prepare.dataset("mine") == params.prepare.user["mine"] and params.prepare.dataset("arith").n_test == 200
    assert params.prepare.user_tasks() == {"mine": "custom"}
    register_user_datasets(params.prepare.user_tasks())
    assert task_of("mine") == "custom" and task_of("arith") == "math"
    assert list(count_statuses(["correct", "partial"], ["mine"])) == list(CUSTOM_STATUSES)
    with pytest.raises(ValueError, match=r"dataset 'arith' is built in"):
        register_user_datasets({"arith": "custom"})


# ------------------------------------------------------------------------------------------------
# The reward function of your own


SCORING = """
    import time

    from dashrl.grading.math_grader import Grade


    def score(completions, answers, rows):
        out = []
        for completion, answer, row in zip(completions, answers, rows):
            if completion == "boom":
                raise RuntimeError("the user's bug")
            if completion == "slow":
                time.sleep(30)
            if completion == "too much":
                out.append(2.0)
            elif completion == "graded":
                out.append(Grade(0.25, "extracted text", True, "partial", "my detail"))
            elif completion == answer:
                out.append(1)
            elif completion.startswith(answer):
                out.append(row["half"])
            else:
                out.append(0.0)
        return out


    NOT_A_FUNCTION = 3


    def wrong_length(completions, answers, rows):
        return [1.0]


    def a_dict(completions, answers, rows):
        return {"reward": 1.0}


    def bad_status(completions, answers, rows):
        return [Grade(1.0, None, False, "great")] * len(completions)


    def raises(completions, answers, rows):
        return rows[0]["missing"]
"""


def custom_answers(module: str, answer: str, half: float, function: str = "score") -> str:
    from dashrl.data.user_data import CustomSpec

    return CustomSpec(f"{module}:{function}", answer, {"half": half}).to_answer()


def test_custom_reward_function_grades_in_workers_with_errors_and_timeouts_as_zero(tmp_path, monkeypatch):
    write_module(tmp_path / "lib", "custom_scoring_a", SCORING)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    answer = custom_answers("custom_scoring_a", "42", 0.5)
    completions = ["42", "42 or so", "7", "graded", "boom", "too much", "slow", "42"]
    grades = grade_custom_batch(completions, [answer] * len(completions), timeout_s=1.0)
    assert [(g.reward, g.status) for g in grades] == [
        (1.0, "correct"), (0.5, "partial"), (0.0, "wrong"), (0.25, "partial"), (0.0, "error"), (0.0, "error"),
        (0.0, "timeout"), (1.0, "correct"),
    ]
    assert grades[3] == Grade(0.25, "extracted text", True, "partial", "my detail")
    assert grades[4].detail == "RuntimeError: the user's bug"
    assert "returned item 0 with reward 2.0, outside [0, 1]" in grades[5].detail
    assert "killed after 1.0 s" in grades[6].detail
    # Through the one grading entry point, mixed with a built-in task, in input order.
    register_user_datasets({"mine": "custom"})
    mixed = grade_completions(["42", "\\boxed{5}", "7"], [answer, "5", answer], ["mine", "arith", "mine"], GRADER)
    assert [(g.reward, g.status) for g in mixed] == [(1.0, "correct"), (1.0, "correct"), (0.0, "wrong")]


GRADER = load_params(REPO / "params.yaml").grader


def test_custom_reward_function_that_does_not_import_stops_before_any_call(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RewardFunctionError, match=r"no_such_module_xyz:score: module 'no_such_module_xyz' does not import"):
        grade_custom_batch(["1"], [custom_answers("no_such_module_xyz", "1", 0.5)], timeout_s=1.0)


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("missing_one", r"custom_scoring_b:missing_one: module 'custom_scoring_b' has no 'missing_one' \(its functions: .*'score'"),
        ("NOT_A_FUNCTION", r"custom_scoring_b:NOT_A_FUNCTION: 'NOT_A_FUNCTION' is a int, not a function"),
        ("wrong_length", r"custom_scoring_b:wrong_length returned 1 items for 2 completions"),
        ("a_dict", r"custom_scoring_b:a_dict returned a dict \(\{'reward': 1.0\}\); expected a list of 2 rewards"),
        ("bad_status", r"custom_scoring_b:bad_status returned item 0 with status 'great'; valid: correct, partial"),
        ("raises", r"custom_scoring_b:raises raised KeyError: 'missing' \(called on one problem, answer '42'\)"),
    ],
)
def test_custom_reward_function_probe_names_the_function_and_what_is_wrong(tmp_path, monkeypatch, function, message):
    write_module(tmp_path / "lib", "custom_scoring_b", SCORING)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    with pytest.raises(RewardFunctionError, match=message):
        probe_reward_function(f"custom_scoring_b:{function}", "42", {"half": 0.5})
    assert [g.reward for g in probe_reward_function("custom_scoring_b:score", "42", {"half": 0.5})] == [1.0, 0.0]


def test_custom_preflight_probes_the_function_on_the_first_problem_before_any_model(tmp_path, monkeypatch):
    write_module(tmp_path / "lib", "custom_scoring_c", SCORING)
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    path = write_jsonl(tmp_path / "mine.jsonl", [{"q": "Q", "a": "42", "half": 0.5}])

    def problems(**section):
        raw = with_user_dataset(raw_params(), **{"path": str(path), "task": "custom", **section})
        params = from_mapping(Params, raw, where="params.yaml")
        return preflight.user_dataset_problems("mine", params.prepare.user["mine"], check_hub=False)

    assert problems(reward_function="custom_scoring_c:score") == []
    raw = with_user_dataset(raw_params(), path=str(path), task="custom", reward_function="custom_scoring_c:a_dict")
    assert any(line.startswith("params.yaml: prepare.mine.reward_function: custom_scoring_c:a_dict returned a dict")
               for line in preflight.problems(from_mapping(Params, raw, where="params.yaml"), check_hub=False))
    assert problems(reward_function="custom_scoring_c:a_dict") == [
        "params.yaml: prepare.mine.reward_function: custom_scoring_c:a_dict returned a dict ({'reward': 1.0}); expected a "
        "list of 2 rewards in [0, 1] or Grades, one per completion (probed on problem 'mine-00000')"]
    [line] = problems(reward_function="custom_scoring_nowhere:score")
    assert line.startswith("params.yaml: prepare.mine.reward_function: custom_scoring_nowhere:score: module "
                           "'custom_scoring_nowhere' does not import (ModuleNotFoundError")
    path.write_text(json.dumps({"q": "Q"}) + "\n")
    assert problems(reward_function="custom_scoring_c:score") == [
        f"params.yaml: prepare.mine: {path} row 0 (line 1): required field 'a' is missing (fields: ['q'])"]
    assert problems(reward_function="custom_scoring_c:score", path=str(tmp_path / "gone.jsonl")) == [
        f"params.yaml: prepare.mine.path: '{tmp_path / 'gone.jsonl'}': no such file"]


# ------------------------------------------------------------------------------------------------
# The documented example (docs/pipeline.md "Your own task"; profiles/own_task.yaml; examples/own_task)


def docs_block() -> dict:
    text = (REPO / "docs/pipeline.md").read_text()
    section = text.split("## Your own task", 1)[1]
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1))


def test_custom_example_params_block_validates_and_is_the_profile(tmp_path, monkeypatch):
    profile = yaml.safe_load((REPO / "profiles/own_task.yaml").read_text())
    assert docs_block() == profile
    params_file = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params_file)
    apply_profile(params_file, [REPO / "profiles/own_task.yaml"])
    params = load_params(params_file)
    section = params.prepare.user["own_task"]
    assert (section.task, section.reward_function) == ("custom", "examples.own_task.rewards:score")
    assert params.rl.run("dash").dataset == "own_task" and "own_task" in params.evaluate.benchmarks
    monkeypatch.chdir(REPO)  # the example's paths are relative to the repository root
    assert preflight.user_dataset_problems("own_task", section, check_hub=False) == []


def test_custom_example_reward_function_scores_its_rows(monkeypatch):
    monkeypatch.chdir(REPO)
    params = from_mapping(Params, {**raw_params(), "prepare": {**raw_params()["prepare"], **docs_block()["prepare"]}},
                          where="params.yaml")
    splits = load_user_splits("own_task", **section_dict(params.prepare.user["own_task"]))
    assert {split: len(df) for split, df in splits.items()} == {"train": 12, "test": 4}
    problems = pd.concat(splits.values())
    rows = [json.loads(line) for line in (REPO / "examples/own_task/problems.jsonl").read_text().splitlines()]
    answers = problems["answer"].tolist()
    n = len(answers)
    exact = [f"In {custom_spec(a).fields['unit']} that is {custom_spec(a).answer}." for a in answers]
    near = [str(float(custom_spec(a).answer) + 3 * custom_spec(a).fields["tolerance"]) for a in answers]
    far = [str(float(custom_spec(a).answer) + 1000) for a in answers]
    grades = grade_custom_batch(exact + near + far + ["I do not know."] * n, answers * 4, timeout_s=5.0)
    assert [g.status for g in grades] == ["correct"] * n + ["partial"] * n + ["wrong"] * n + ["no_answer"] * n
    assert [g.reward for g in grades] == [1.0] * n + [0.5] * n + [0.0] * (2 * n)
    assert sorted(custom_spec(a).answer for a in answers) == sorted(r["answer"] for r in rows)


# ------------------------------------------------------------------------------------------------
# prepare -> rl -> evaluate on a tiny model


USER_MODULE = """
    def score(completions, answers, rows):
        '''The share of the completion's characters that are in the row's alphabet (partial credit).'''
        return [round(sum(c in row["alphabet"] for c in text) / max(len(text), 1), 4) for text, row in zip(completions, rows)]
"""


def expected_reward(text: str, alphabet: str) -> float:
    return round(sum(c in alphabet for c in text) / max(len(text), 1), 4)


def test_custom_task_prepare_rl_evaluate_end_to_end(workspace, monkeypatch):
    write_module(workspace / "userlib", "custom_e2e_rewards", USER_MODULE)
    monkeypatch.syspath_prepend(str(workspace / "userlib"))
    alphabets = ["abcdefghijklm", "nopqrstuvwxyz", "0123456789 ", "aeiou!?.,"]
    write_jsonl(workspace / "mine.jsonl",
                [{"task": f"Say something, number {i}.", "ref": str(i), "alphabet": alphabets[i % 4]} for i in range(8)])

    def use_mine(raw):
        raw["prepare"]["mine"] = {"loader": "file", "path": "mine.jsonl", "prompt_field": "task", "answer_field": "ref",
                                  "task": "custom", "reward_function": "custom_e2e_rewards:score", "test_fraction": 0.25}
        raw["prepare"]["datasets"] = ["arith", "mine"]
        raw["rl"]["common"]["dataset"] = "mine"
        raw["rl"]["runs"] = {"dash": {"init_from": "base"}}
        raw["sft"]["runs"] = {}
        raw["evaluate"].update(models=["base", "dash"], benchmarks=["mine"])

    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    use_mine(raw)
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(workspace / "params.yaml")
    assert preflight.user_dataset_problems("mine", params.prepare.user["mine"], check_hub=False) == []

    prepare_stage.main(params, "mine")
    train, test = read_problems("data/prepared/mine/train.parquet"), read_problems("data/prepared/mine/test.parquet")
    assert (len(train), len(test)) == (6, 2)
    alphabet_of = {row.id: custom_spec(row.answer).fields["alphabet"] for row in pd.concat([train, test]).itertuples()}

    rl_stage.main(params, "dash")
    rollouts = pd.concat(pd.read_parquet(p) for p in sorted((workspace / "data/rl/dash/rollouts").iterdir()))
    assert len(rollouts) == 2 * 2 * 4  # steps x prompts x group
    expected = [expected_reward(r.completion, alphabet_of[r.problem_id]) for r in rollouts.itertuples()]
    assert rollouts["reward"].tolist() == pytest.approx(expected)
    assert set(rollouts["problem_id"]) <= set(train["id"])
    statuses = ["correct" if r == 1 else "wrong" if r == 0 else "partial" for r in expected]
    assert rollouts["grade_status"].tolist() == statuses
    steps = [json.loads(line) for line in (workspace / "data/rl/dash/metrics.jsonl").read_text().splitlines()]
    assert [s["grade_partial"] + s["grade_correct"] + s["grade_wrong"] for s in steps] == [8, 8]
    assert [s["grade_error"] + s["grade_timeout"] for s in steps] == [0, 0]

    evaluate_stage.main(params, "dash", "mine")
    out = workspace / "data/eval/dash/mine"
    rows = pd.read_parquet(out / "problems.parquet")
    assert sorted(set(rows["id"])) == sorted(test["id"])
    assert rows["reward"].tolist() == pytest.approx([expected_reward(r.completion, alphabet_of[r.id]) for r in rows.itertuples()])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(rows.loc[rows["sample"] == 0, "reward"].mean())
    assert set(metrics["grader_status_counts"]) == set(CUSTOM_STATUSES) and sum(metrics["grader_status_counts"].values()) == 4
