"""The code reward: extraction, grading through the sandbox, and the task dispatch shared with math."""

from __future__ import annotations

import pytest

from dashrl.config.params import GraderParams, SandboxLimits
from dashrl.data.code_tasks import CodeSpec
from dashrl.data.schema import ProblemDataError
from dashrl.grading.code_grader import CODE_STATUSES, extract_code, grade_code_batch
from dashrl.grading.tasks import count_statuses, get_grader, grade_completions

LIMITS = SandboxLimits(timeout_s=4.0, cpu_s=4, memory_mb=512, workers=2)
GRADER = GraderParams(require_box=False, timeout_s=5.0, code=LIMITS)
ADD = CodeSpec("add", "assert add(1, 2) == 3\nassert add(0, 0) == 0\n", "").to_answer()


@pytest.mark.parametrize(
    ("completion", "code", "fenced"),
    [
        ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1", True),
        ("text\n```py\nA = 1\n```\nmore\n```python\nB = 2\n```\nend", "B = 2", True),
        # a python block wins over a later untagged one
        ("```python\nA = 1\n```\n```\nshell stuff\n```", "A = 1", True),
        ("```\nA = 1\n```\n```bash\nls\n```", "ls", True),  # no python block: the last block
        ("```Python3 \nA = 1\n```", "A = 1", True),
        ("def f():\n    return 1\n\n", "def f():\n    return 1", False),  # raw continuation
        ("Sure:\n```python\ndef f():\n    return", "def f():\n    return", True),  # cut at max tokens
        ("```python\nA = 1\n```\nnow\n```python\nB = ", "B =", True),  # the unclosed block is the last
        ("def f():\n    return 1\n```\n\nThis function returns 1.", "def f():\n    return 1", True),  # no opening fence
        ("", "", False),
    ],
)
def test_extract_code(completion, code, fenced):
    assert extract_code(completion) == (code, fenced)


def test_grade_code_batch_statuses():
    completions = [
        "```python\ndef add(a, b):\n    return a + b\n```",
        "def add(a, b):\n    return a + b\n",  # bare code also counts
        "```python\ndef add(a, b):\n    return a * b\n```",
        "```python\ndef add(a, b) return\n```",
        "```python\n\n```",
        "```python\ndef add(a, b):\n    while True: pass\n```",
    ]
    grades = grade_code_batch(completions, [ADD] * len(completions),
                              limits=SandboxLimits(timeout_s=2.0, cpu_s=3, workers=2))
    assert [g.status for g in grades] == ["passed", "passed", "failed", "syntax_error", "no_code", "timeout"]
    assert [g.reward for g in grades] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert [g.boxed for g in grades] == [True, False, True, True, True, True]
    assert grades[0].extracted == "def add(a, b):\n    return a + b"
    assert {g.status for g in grades} <= set(CODE_STATUSES)


def test_prefix_is_prepended():
    """HumanEval convention: a continuation of the prompt and a rewritten function both work."""
    prefix = "def sq(x):\n    '''Square x.'''\n"
    answer = CodeSpec("sq", "def check(candidate):\n    assert candidate(3) == 9\n\ncheck(sq)\n", prefix).to_answer()
    grades = grade_code_batch(["    return x * x\n", "```python\ndef sq(x):\n    return x ** 2\n```", "    return x\n"],
                              [answer] * 3, limits=LIMITS)
    assert [g.status for g in grades] == ["passed", "passed", "failed"]


def test_bad_answer_is_a_data_error():
    with pytest.raises(ProblemDataError):
        grade_code_batch(["def add(a, b): return a + b"], ["42"], limits=LIMITS)


def test_a_batch_the_sandbox_cannot_run_raises():
    broken = CodeSpec("add", "assert add(1, 2) == 3\n", "raise RuntimeError('broken prefix')\n").to_answer()
    with pytest.raises(RuntimeError, match="sandbox failed on all 2 programs"):
        grade_code_batch(["def add(a, b): return a + b"] * 2, [broken] * 2, limits=LIMITS)


def test_grade_completions_dispatches_by_source_and_keeps_order():
    completions = ["The answer is \\boxed{4}.", "```python\ndef add(a, b):\n    return a + b\n```",
                   "\\boxed{5}", "def add(a, b):\n    return 0\n"]
    answers = ["4", ADD, "4", ADD]
    grades = grade_completions(completions, answers, ["arith", "pyfunc", "gsm8k", "humaneval"], GRADER)
    assert [g.status for g in grades] == ["correct", "passed", "wrong", "failed"]
    counts = count_statuses([g.status for g in grades], ["arith", "pyfunc"])
    assert counts["correct"] == 1 and counts["passed"] == 1 and counts["no_code"] == 0 and counts["no_answer"] == 0
    with pytest.raises(ValueError, match="valid"):
        get_grader("poetry")
    with pytest.raises(ValueError):
        grade_completions(["x"], ["1"], ["no_such_dataset"], GRADER)


def test_every_humaneval_reference_passes_and_a_wrong_program_fails():
    """The sandbox's call-by-value protocol keeps the real HumanEval tests working: all 164
    canonical solutions pass (as a continuation of the prompt, as the release gives them)."""
    from dashrl.data.loaders import load_problems

    problems = load_problems("humaneval", "test")
    completions = [solution.removeprefix(prompt) for solution, prompt in zip(problems["solution"], problems["prompt"], strict=True)]
    grades = grade_code_batch(completions, problems["answer"].tolist(), limits=SandboxLimits(timeout_s=20.0, cpu_s=20, workers=2))
    assert [g.status for g in grades] == ["passed"] * len(problems), [
        (i, g.status, g.detail) for i, g in zip(problems["id"], grades, strict=True) if g.status != "passed"]
    wrong = grade_code_batch(["    return None\n"] * 5, problems["answer"].tolist()[:5], limits=LIMITS)
    assert all(g.status == "failed" for g in wrong)
