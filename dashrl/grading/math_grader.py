"""Binary math grader: the RL reward and the evaluation grader are this one function.

Algorithm, per (completion, reference):
1) Answer. If the completion has a usable box -- the last non-empty ``\\boxed{...}`` / ``\\fbox{...}``
   (nested braces matched, brace-less ``\\boxed 7`` accepted) -- its content is the answer.
   Otherwise, with ``require_box=True`` (the paper's setting) there is no answer (reward 0); with
   ``require_box=False`` math-verify extracts the final answer from the whole completion itself
   (``parse(completion)``: "The answer is: 7", "#### 7", the last number, ...).
2) Gold. The reference is parsed as ``$reference$`` (or as is when it holds a ``\\boxed``). A reference
   that parses to no mathematical object raises ``ValueError``: a data bug, never a 0 reward.
3) Equivalence. ``math_verify.verify(gold, answer)``: reward 1.0 if mathematically equal, else 0.0.

Departures from calling math-verify directly (as open-r1 / TRL reward functions do):
- Every math-verify call runs in a small pool of worker *processes* (``dashrl.grading.worker_pool``: fresh
  interpreters started with ``subprocess``, never a fork of a torch process), in the worker's main
  thread. math-verify's timeouts use ``signal.alarm``, which raises ``ValueError`` in any non-main
  thread, so grading from a thread pool or a Prefect task would otherwise fail; here it works from
  any thread.
- Errors are not folded into 0 silently: ``raise_on_error=True``, and each answer gets a status
  (``correct | wrong | no_answer | parse_error | timeout``) that callers count (``dashrl.grading.tasks.count_statuses``).
- One time budget per answer, ``timeout_s`` (float seconds), for all of its math-verify calls
  together (reference parse, answer parse, comparisons): the worker arms one interval timer for the
  whole answer and runs math-verify with its own per-call alarms off (they are whole seconds each,
  and three of them could add up to three times the budget). Past the budget the answer is
  "timeout".
- A hard deadline: a signal cannot interrupt every C-level computation, so the parent gives each
  answer ``timeout_s + DEADLINE_MARGIN_S`` (0.5 s) from when a worker takes it. A worker past it is
  killed, its answer is graded "timeout", a fresh worker replaces it (in the background: the verdict
  does not wait for it), and the rest of the batch goes on (answers in flight on other workers are
  not lost). A verdict therefore comes back within ``timeout_s + 0.5`` s of a worker taking it.

Importing this module is cheap: no math-verify, sympy or torch import, no process is started until
the first grade; the pool stops them at exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dashrl.grading.worker_pool import WorkerPool

logger = logging.getLogger(__name__)

STATUSES = ("correct", "wrong", "no_answer", "parse_error", "timeout")

# Task kinds sent to the worker.
_BOXED = "boxed"  # grade the content of a box
_FREE = "free"  # let math-verify find the final answer in the whole completion
_REFERENCE_ONLY = "reference_only"  # no answer (box required, none usable): only check the reference
_BAD_REFERENCE = "bad_reference"  # worker's marker, raised as ValueError in the parent

_BOX_COMMANDS = ("\\boxed", "\\fbox")
DEADLINE_MARGIN_S = 0.5  # the parent kills a worker this long after the answer's time budget
_TRAILING_PUNCTUATION = ".,;:!?"
_DEFAULT_WORKERS = max(1, min(2, os.cpu_count() or 1))


@dataclass(frozen=True)
class Grade:
    """The verdict on one completion.

    reward: 1.0 if the answer is equivalent to the reference, else 0.0.
    extracted: the answer text that was graded (the box content, or what math-verify extracted).
    boxed: whether the answer came in the task's answer format: a non-empty box (math), a fenced code
        block (code, ``dashrl.grading.code_grader``).
    status: one of STATUSES.
    detail: why, for parse_error / timeout (exception type and message); None otherwise.
    """

    reward: float
    extracted: str | None
    boxed: bool
    status: str
    detail: str | None = None


# ----------------------------------------------------------------------------- answer extraction


def _matching_braces(text: str) -> dict[int, int]:
    """Map the index of every balanced "{" to the index of its "}" in one pass (O(len(text))).

    A backslash escapes the next character, so ``\\{`` and ``\\}`` are literal braces, not groups.
    """
    match: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            match[stack.pop()] = i
        i += 1
    return match


def _box_content(text: str, start: int, braces: dict[int, int]) -> str | None:
    """Content of the box whose argument starts at ``start`` (just after the command), or None."""
    n = len(text)
    i = start
    if i < n and text[i].isalpha():
        return None  # a longer command such as \boxedfoo, not a box
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] == "{":
        close = braces.get(i)
        return None if close is None else text[i + 1 : close].strip()
    # Brace-less form: "\boxed 7" -> the run of characters up to whitespace or "$".
    j = i
    while j < n and not text[j].isspace() and text[j] not in "$}":
        j += 1
    return text[i:j].rstrip(_TRAILING_PUNCTUATION)


def extract_boxed(text: str) -> str | None:
    """Content of the last non-empty ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, else None.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); an unterminated box
    and an empty ``\\boxed{}`` (which small models copy from the instruction) are skipped; the
    brace-less ``\\boxed 7`` gives ``7``. Linear time, no regular expressions.
    """
    starts = []
    for command in _BOX_COMMANDS:
        i = text.find(command)
        while i != -1:
            starts.append((i, i + len(command)))
            i = text.find(command, i + 1)
    if not starts:
        return None
    braces = _matching_braces(text)
    for _, arg_start in sorted(starts, reverse=True):
        content = _box_content(text, arg_start, braces)
        if content:
            return content
    return None


# ----------------------------------------------------------------------------- worker side


def _math_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this text could not be parsed or compared as math" (worker only)."""
    from sympy.polys.polyerrors import BasePolynomialError

    return (
        ArithmeticError,
        AttributeError,
        LookupError,
        NotImplementedError,
        RecursionError,
        TypeError,
        ValueError,  # includes sympy's SympifyError
        BasePolynomialError,
    )


def _is_math(x: object) -> bool:
    from sympy import Basic, MatrixBase

    return isinstance(x, Basic | MatrixBase)


def _short(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e)[:200]}"


_reference_cache: dict[str, list] = {}


def _parse_reference(reference: str) -> list:
    """Parsed reference, cached per worker (a group of G completions shares one reference)."""
    if reference not in _reference_cache:
        from math_verify import parse

        text = reference if ("\\boxed" in reference or "\\fbox" in reference) else f"${reference}$"
        if len(_reference_cache) >= 4096:
            _reference_cache.clear()
        _reference_cache[reference] = parse(text, parsing_timeout=None, raise_on_error=True)
    return _reference_cache[reference]


class _NoDisabledTimeoutWarning(logging.Filter):
    """math-verify warns once that its timeouts are off: here one timer covers the whole answer."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


def _grade_in_worker(kind: str, text: str, reference: str, timeout_s: float) -> tuple[str, str | None, str | None]:
    """Grade one answer in a worker process's main thread -> (status, extracted, detail).

    ``kind`` is "boxed" (``text`` is box content), "free" (``text`` is the whole completion) or
    "reference_only" (only validate the reference). Returns the status "bad_reference" for an
    unparseable reference. Only strings go back to the parent (sympy objects stay here).

    Everything runs under one ``timeout_s`` budget (an interval timer, float seconds): when it
    fires, math-verify's TimeoutException ends whichever call is running and the answer is "timeout".
    """
    import signal

    from math_verify.errors import TimeoutException

    for name in ("math_verify.parser", "math_verify.grader"):
        logger_ = logging.getLogger(name)
        if not any(isinstance(f, _NoDisabledTimeoutWarning) for f in logger_.filters):
            logger_.addFilter(_NoDisabledTimeoutWarning())

    def expire(signum, frame):
        raise TimeoutException(f"grading took over {timeout_s} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        try:
            return _grade_answer(kind, text, reference)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    except TimeoutException:  # the timer fired outside the calls that handle it themselves
        return "timeout", (text if kind == _BOXED else None), f"grading took over {timeout_s} s"


def _grade_answer(kind: str, text: str, reference: str) -> tuple[str, str | None, str | None]:
    """``_grade_in_worker``'s work, under its timer (math-verify's own timeouts off)."""
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    math_errors = _math_errors()
    try:
        gold = _parse_reference(reference)
    except TimeoutException:
        return "timeout", None, f"parsing the reference {reference!r} timed out"
    except math_errors as e:
        return _BAD_REFERENCE, None, _short(e)
    if not any(_is_math(g) for g in gold):
        return _BAD_REFERENCE, None, f"math-verify parse gave {[g for g in gold if isinstance(g, str)]!r}"
    if kind == _REFERENCE_ONLY:
        return "no_answer", None, None

    boxed = kind == _BOXED
    try:
        pred = parse(f"${text}$" if boxed else text, parsing_timeout=None, raise_on_error=True)
    except TimeoutException:
        return "timeout", text if boxed else None, "parsing the answer timed out"
    except math_errors as e:
        return "parse_error", text if boxed else None, _short(e)
    strings = [p for p in pred if isinstance(p, str)]
    extracted = text if boxed else (strings[0] if strings else None)
    if not pred:
        return ("parse_error" if boxed else "no_answer"), extracted, None

    # Compare pair by pair so that one failing comparison does not hide a successful one.
    error = None
    for g in gold:
        for p in pred:
            if _is_math(g) != _is_math(p):
                continue  # math-verify never equates a sympy object with a string
            try:
                if verify(g, p, timeout_seconds=None, raise_on_error=True):
                    return "correct", extracted, None
            except TimeoutException:
                return "timeout", extracted, "comparison timed out"  # the answer's budget is spent
            except math_errors as e:
                error = _short(e)
    if error is not None:
        return "parse_error", extracted, f"comparison failed: {error}"
    if not any(_is_math(p) for p in pred):
        return "parse_error", extracted, "the answer did not parse into math"
    return "wrong", extracted, None


# ----------------------------------------------------------------------------- parent side: the workers

# The grader's worker processes (dashrl.grading.worker_pool), started on the first grade. Each imports
# math-verify before it takes answers, so the import does not count against an answer's deadline.
_pool = WorkerPool(_DEFAULT_WORKERS, name="grader", warm_up=("math_verify",))


# ----------------------------------------------------------------------------- public API


def _check_timeout(timeout_s: float) -> float:
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    return float(timeout_s)


def _deadline_s(timeout_s: float) -> float:
    """Parent-side deadline per answer: the worker's budget for the whole answer, plus a margin."""
    return _check_timeout(timeout_s) + DEADLINE_MARGIN_S


def _grade_batch_with(
    worker_fn: Callable[[str, str, str, float], tuple[str, str | None, str | None]],
    completions: Sequence[str],
    references: Sequence[str],
    *,
    require_box: bool,
    timeout_s: float,
    deadline_s: float | None = None,
) -> list[Grade]:
    """grade_batch with the worker function as a parameter (tests pass a slow one)."""
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} references")
    for name, items in (("completion", completions), ("reference", references)):
        for x in items:
            if not isinstance(x, str):
                raise TypeError(f"every {name} must be a str, got {type(x).__name__}: {x!r}")
    timeout_s = _check_timeout(timeout_s)
    deadline = _deadline_s(timeout_s) if deadline_s is None else deadline_s

    calls = []
    for completion, reference in zip(completions, references, strict=True):
        box = extract_boxed(completion)
        if box is not None:
            calls.append((_BOXED, box, reference, timeout_s))
        elif require_box:
            calls.append((_REFERENCE_ONLY, "", reference, timeout_s))
        else:
            calls.append((_FREE, completion, reference, timeout_s))
    if not calls:
        return []
    outcomes = _pool.run(worker_fn, calls, deadline)

    bad = {}
    grades = []
    for (kind, text, reference, _), (outcome, value) in zip(calls, outcomes, strict=True):
        boxed = kind == _BOXED
        if outcome == "ok":
            status, extracted, detail = value  # type: ignore[misc]
        elif outcome == "timeout":
            status, extracted, detail = "timeout", (text if boxed else None), f"killed after {deadline:.1f} s"
        else:
            status, extracted, detail = "parse_error", (text if boxed else None), f"worker died ({value})"
        if status == _BAD_REFERENCE:
            bad.setdefault(reference, detail)
            continue
        if status not in STATUSES:
            raise RuntimeError(f"grader returned unknown status {status!r}")
        grades.append(Grade(1.0 if status == "correct" else 0.0, extracted, boxed, status, detail))
    if bad:
        listed = "; ".join(f"{ref!r} ({why})" for ref, why in list(bad.items())[:5])
        raise ValueError(f"unparseable reference answer(s), a data bug: {listed}")
    return grades


def grade_batch(
    completions: Sequence[str],
    references: Sequence[str],
    *,
    require_box: bool = False,
    timeout_s: float = 5.0,
) -> list[Grade]:
    """Grade completions[i] against references[i], in parallel worker processes (see ``grade``).

    Raises ValueError if the lengths differ or a reference is unparseable.
    """
    return _grade_batch_with(
        _grade_in_worker, completions, references, require_box=require_box, timeout_s=timeout_s
    )


def grade(completion: str, reference: str, *, require_box: bool = False, timeout_s: float = 5.0) -> Grade:
    """Grade one completion against its reference answer.

    The last non-empty box is the answer; without one, ``require_box=True`` gives "no_answer" and
    ``require_box=False`` lets math-verify extract the final answer from the whole completion.
    ``timeout_s`` bounds the grading of the answer (all its math-verify calls together); a verdict
    comes back within ``timeout_s + DEADLINE_MARGIN_S`` of a worker taking it. Safe from any thread.

    Worked example: the box ``\\boxed{\\frac{1}{2}}`` holds ``\\frac{1}{2}``, which math-verify
    parses to Rational(1, 2); the reference "0.5" parses to the same number, so the reward is 1.0.

    >>> grade("so the answer is \\\\boxed{\\\\frac{1}{2}}", "0.5")
    Grade(reward=1.0, extracted='\\\\frac{1}{2}', boxed=True, status='correct', detail=None)
    >>> grade("The answer is: 7", "7").reward  # no box: math-verify's own extraction
    1.0
    >>> grade("The answer is: 7", "7", require_box=True).status
    'no_answer'
    """
    return grade_batch([completion], [reference], require_box=require_box, timeout_s=timeout_s)[0]
