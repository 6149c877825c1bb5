"""The reward function of your own: ``task: custom`` problems are graded by a function you name.

``prepare.<name>: {task: custom, reward_function: "my_pkg.rewards:score", ...}`` names it; prepare
writes the name into every problem's answer (``dashrl.data.user_data.CustomSpec``), so the RL reward
and evaluation grade with the function the prepared data names. The contract:

    def score(completions: list[str], answers: list[str], rows: list[dict]) -> list[float | Grade]

``completions[i]`` is a model's completion (the text after the prompt), ``answers[i]`` the problem's
answer field, ``rows[i]`` the problem's other fields (every field of its source row but the prompt and
answer fields: strings, numbers, lists ... as JSON reads them). It returns one item per completion,
in order: a reward in [0, 1] (a float or an int; 1 gets status "correct", 0 "wrong", anything between
"partial"), or a ``dashrl.grading.math_grader.Grade`` whose reward is in [0, 1] and whose status is
one of ``USER_STATUSES`` (its ``extracted`` text and ``boxed`` flag are kept).

How it runs (the math grader's way, ``dashrl.grading.worker_pool``): in worker processes started
fresh (never a fork of the torch process), which import the function's module before they take
calls; one call per completion (lists of one), with ``grader.timeout_s`` seconds each. The worker
sees the parent's ``sys.path``, so the module is found where the stage finds it (the repository
root, where DVC runs the stages, or ``PYTHONPATH``). A function that raises, returns something
outside the contract or dies gives that completion reward 0 with status "error" (the detail says
why, and a warning is logged with the count); one past its time is killed and gives reward 0 with
status "timeout". Neither stops the stage. A module that does not import or a name that is not
a function stops it before any call (and ``python -m dashrl.preflight`` says so before any model
loads: ``probe_reward_function`` imports the function and calls it on one problem).

Worked example: ``score(["The answer is 42."], ["42"], [{"unit": "cm"}])`` returning ``[1.0]``
grades the completion ``Grade(reward=1.0, extracted=None, boxed=False, status="correct")``.
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from dashrl.data.user_data import check_function_reference, custom_spec
from dashrl.grading.math_grader import Grade
from dashrl.grading.worker_pool import WorkerPool

logger = logging.getLogger(__name__)

USER_STATUSES = ("correct", "partial", "wrong", "no_answer", "error")  # a Grade's status, as the function may set it
CUSTOM_STATUSES = (*USER_STATUSES, "timeout")  # every status a custom grade has, the rewarded one first
_WORKERS = 2


class RewardFunctionError(ValueError):
    """A reward function cannot be imported or does not keep its contract; names the function."""


def import_reward_function(reference: str) -> Callable[..., Any]:
    """The function named "module:function"; RewardFunctionError says why not."""
    try:
        module_name, function_name = check_function_reference(reference)
    except ValueError as err:
        raise RewardFunctionError(str(err)) from err
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure of the user's module to import is reported as such
        raise RewardFunctionError(
            f"{reference}: module {module_name!r} does not import ({type(err).__name__}: {err}); it is looked for "
            "on sys.path: the repository root (where DVC runs the stages) or PYTHONPATH"
        ) from err
    function = getattr(module, function_name, None)
    if function is None:
        names = sorted(n for n in vars(module) if callable(getattr(module, n)) and not n.startswith("_"))
        raise RewardFunctionError(f"{reference}: module {module_name!r} has no {function_name!r} (its functions: {names})")
    if not callable(function):
        raise RewardFunctionError(f"{reference}: {function_name!r} is a {type(function).__name__}, not a function")
    return function


def _status_of(reward: float) -> str:
    return "correct" if reward == 1 else "wrong" if reward == 0 else "partial"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def to_grades(returned: Any, n: int, reference: str) -> list[Grade]:
    """The grades of what a reward function returned for ``n`` completions; RewardFunctionError if it
    breaks the contract (not a list of n items, an item not a reward in [0, 1] or a Grade, a status
    not in USER_STATUSES)."""
    if not isinstance(returned, list | tuple):
        raise RewardFunctionError(
            f"{reference} returned a {type(returned).__name__} ({_short(returned)}); expected a list of {n} "
            "rewards in [0, 1] or Grades, one per completion"
        )
    if len(returned) != n:
        raise RewardFunctionError(f"{reference} returned {len(returned)} items for {n} completions: {_short(returned)}")
    grades = []
    for i, item in enumerate(returned):
        if isinstance(item, Grade):
            reward, status = item.reward, item.status
            if status not in USER_STATUSES:
                raise RewardFunctionError(
                    f"{reference} returned item {i} with status {status!r}; valid: {', '.join(USER_STATUSES)}"
                )
        elif isinstance(item, int | float) and not isinstance(item, bool):
            reward, status = item, None
        else:
            raise RewardFunctionError(
                f"{reference} returned item {i} of type {type(item).__name__} ({_short(item)}); "
                "expected a reward in [0, 1] (float) or a Grade"
            )
        if not (isinstance(reward, int | float) and not isinstance(reward, bool) and math.isfinite(reward) and 0 <= reward <= 1):
            raise RewardFunctionError(f"{reference} returned item {i} with reward {_short(reward)}, outside [0, 1]")
        reward = float(reward)
        if isinstance(item, Grade):
            grades.append(Grade(reward, item.extracted, bool(item.boxed), item.status, item.detail))
        else:
            grades.append(Grade(reward, None, False, _status_of(reward)))
    return grades


# ----------------------------------------------------------------------------- worker side


def _score_in_worker(reference: str, completion: str, answer: str, fields: dict[str, Any]) -> Grade:
    """Grade one completion in a worker process: the user's function, its return checked."""
    try:
        function = import_reward_function(reference)
        returned = function([completion], [answer], [fields])
    except Exception as err:  # noqa: BLE001 - the user's code may raise anything: a 0 reward, counted, logged
        return Grade(0.0, None, False, "error", f"{type(err).__name__}: {str(err)[:200]}")
    try:
        return to_grades(returned, 1, reference)[0]
    except RewardFunctionError as err:
        return Grade(0.0, None, False, "error", str(err)[:300])


# ----------------------------------------------------------------------------- parent side

# One pool per module: its workers import this module and the user's before they take calls.
_pools: dict[str, WorkerPool] = {}
_imported: set[str] = set()


def _pool(module: str) -> WorkerPool:
    if module not in _pools:
        # Both imports before the first call: neither counts against a completion's timeout.
        _pools[module] = WorkerPool(_WORKERS, name=f"reward function ({module})", warm_up=(__name__, module))
    return _pools[module]


def grade_custom_batch(completions: Sequence[str], answers: Sequence[str], *, timeout_s: float) -> list[Grade]:
    """Grade completions[i] with the reward function that the custom answer answers[i] names (see the
    module docstring); ``timeout_s`` seconds per completion. A malformed answer raises (a data bug)."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    specs = {answer: custom_spec(answer) for answer in dict.fromkeys(answers)}
    for reference in {spec.reward_function for spec in specs.values()} - _imported:
        import_reward_function(reference)  # a clear error here, not a worker that cannot start
        _imported.add(reference)
    by_module: dict[str, list[int]] = {}
    for i, answer in enumerate(answers):
        by_module.setdefault(check_function_reference(specs[answer].reward_function)[0], []).append(i)
    grades: list[Grade | None] = [None] * len(completions)
    for module, rows in by_module.items():
        calls = [(specs[answers[i]].reward_function, completions[i], specs[answers[i]].answer, specs[answers[i]].fields)
                 for i in rows]
        for i, (outcome, value) in zip(rows, _pool(module).run(_score_in_worker, calls, timeout_s), strict=True):
            if outcome == "ok":
                grades[i] = value  # type: ignore[assignment]
            elif outcome == "timeout":
                grades[i] = Grade(0.0, None, False, "timeout", f"killed after {timeout_s:.1f} s (grader.timeout_s)")
            else:
                grades[i] = Grade(0.0, None, False, "error", f"worker died (exit code {value})")
    failed = [g for g in grades if g is not None and g.status in ("error", "timeout") and g.detail]
    if failed:
        logger.warning("reward function: %d of %d completions got reward 0 for an error or timeout; first: %s",
                       len(failed), len(grades), failed[0].detail)
    return grades  # type: ignore[return-value]


def probe_reward_function(reference: str, answer: str, fields: dict[str, Any]) -> list[Grade]:
    """Import the function and call it, in this process, on one problem with two completions (the
    answer itself and ""); its grades, or RewardFunctionError naming the function and what is wrong."""
    function = import_reward_function(reference)
    try:
        returned = function([answer, ""], [answer, answer], [fields, fields])
    except Exception as err:  # noqa: BLE001 - reported with the function's name, the stage would count it as an error
        raise RewardFunctionError(f"{reference} raised {type(err).__name__}: {err} (called on one problem, answer {answer!r})") from err
    return to_grades(returned, 2, reference)
