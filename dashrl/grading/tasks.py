"""One grader per task, shared by the RL reward and evaluation (and SFT-M's rejection sampling).

A problem's task follows from its dataset (the ``source`` column, ``dashrl.data.loaders.task_of``):

    math    dashrl.grading.math_grader.grade_batch            the final answer, math-verify equivalence
    code    dashrl.grading.code_grader.grade_code_batch       the program passes the task's tests in the sandbox
    custom  dashrl.grading.custom_grader.grade_custom_batch   the user's reward function (a dataset of your own)

This module is the one entry point to grading: ``grade_completions`` grades a mixed batch, each
completion with its own problem's grader, results in input order; ``count_statuses`` counts the
statuses of a batch. ``GRADERS`` is one explicit table (task -> the statuses the grader can give and
its function ``(completions, answers, grader_params) -> list[Grade]``), looked up once per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dashrl.config.params import GraderParams
from dashrl.data.loaders import task_of
from dashrl.grading.code_grader import CODE_STATUSES, grade_code_batch
from dashrl.grading.custom_grader import CUSTOM_STATUSES, grade_custom_batch
from dashrl.grading.math_grader import STATUSES, Grade, grade_batch

GradeFn = Callable[[Sequence[str], Sequence[str], GraderParams], list[Grade]]


@dataclass(frozen=True)
class TaskGrader:
    task: str
    statuses: tuple[str, ...]  # every status the grader gives, the rewarded one first
    grade: GradeFn


def _grade_math(completions: Sequence[str], answers: Sequence[str], grader: GraderParams) -> list[Grade]:
    return grade_batch(completions, answers, require_box=grader.require_box, timeout_s=grader.timeout_s)


def _grade_code(completions: Sequence[str], answers: Sequence[str], grader: GraderParams) -> list[Grade]:
    return grade_code_batch(completions, answers, limits=grader.code)


def _grade_custom(completions: Sequence[str], answers: Sequence[str], grader: GraderParams) -> list[Grade]:
    return grade_custom_batch(completions, answers, timeout_s=grader.timeout_s)


GRADERS: dict[str, TaskGrader] = {
    "math": TaskGrader("math", STATUSES, _grade_math),
    "code": TaskGrader("code", CODE_STATUSES, _grade_code),
    "custom": TaskGrader("custom", CUSTOM_STATUSES, _grade_custom),
}


def get_grader(task: str) -> TaskGrader:
    if task not in GRADERS:
        raise ValueError(f"no grader for task {task!r} (valid: {', '.join(sorted(GRADERS))})")
    return GRADERS[task]


def grade_completions(
    completions: Sequence[str], answers: Sequence[str], sources: Sequence[str], grader: GraderParams
) -> list[Grade]:
    """Grade completions[i] against answers[i] with the grader of dataset sources[i]'s task."""
    if not len(completions) == len(answers) == len(sources):
        raise ValueError(f"{len(completions)} completions, {len(answers)} answers, {len(sources)} sources")
    by_task: dict[str, list[int]] = {}
    for i, source in enumerate(sources):
        by_task.setdefault(task_of(source), []).append(i)
    grades: list[Grade | None] = [None] * len(completions)
    for task, rows in by_task.items():
        graded = get_grader(task).grade([completions[i] for i in rows], [answers[i] for i in rows], grader)
        for i, g in zip(rows, graded, strict=True):
            grades[i] = g
    return grades  # type: ignore[return-value]


def count_statuses(statuses: Iterable[str], sources: Iterable[str]) -> dict[str, int]:
    """Number of grades per status, every status of the tasks of ``sources`` listed (0 where none)."""
    tasks = sorted({task_of(s) for s in sources})
    counts = {status: 0 for task in tasks for status in get_grader(task).statuses}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts
