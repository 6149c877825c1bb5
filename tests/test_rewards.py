"""The grader: box extraction, math-verify equivalence, statuses, threads, and the timeout backstop."""

import doctest
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from dashrl.grading import math_grader
from dashrl.grading.math_grader import Grade, extract_boxed, grade, grade_batch


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"first \boxed{3}, then \boxed{4}", "4"),  # the last box wins
        (r"answer \boxed{5} (format: \boxed{})", "5"),  # the empty box copied from the prompt is skipped
        (r"\boxed{ }", None),
        (r"\fbox{12}", "12"),
        (r"\boxed{1} and \fbox{2}", "2"),
        (r"so the answer is $\boxed 7$.", "7"),  # brace-less
        (r"\boxed 42.", "42"),
        (r"\boxed{7", None),  # unterminated
        (r"\boxed{6} then \boxed{7", "6"),  # an unterminated last box does not hide an earlier one
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not groups
        (r"\boxed {8}", "8"),
        (r"\boxedfoo{9}", None),  # another command, not a box
        ("The answer is 7", None),
        ("", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_is_linear_on_adversarial_input():
    text = r"\boxed{" * 20_000 + "x"
    assert extract_boxed(text) is None


# (completion, reference, reward, status, boxed)
CASES = [
    (r"so \boxed{\frac{1}{2}}", "0.5", 1.0, "correct", True),
    (r"\boxed{0.50}", r"\frac12", 1.0, "correct", True),
    (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", 1.0, "correct", True),
    (r"\boxed{3} no wait \boxed{4}", "4", 1.0, "correct", True),
    (r"\boxed{4} no wait \boxed{3}", "4", 0.0, "wrong", True),
    (r"\boxed{x=3}", "3", 1.0, "correct", True),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0, "correct", True),
    (r"\boxed{1000}", "1,000", 1.0, "correct", True),  # math-verify reads "1,000" as 1000
    (r"\boxed{1,000}", "1000", 1.0, "correct", True),
    (r"\boxed{50\%}", "50", 1.0, "correct", True),
    (r"\boxed{\$5}", "5", 1.0, "correct", True),
    (r"\boxed{\pi}", "3.14159", 0.0, "wrong", True),
    (r"\boxed{6}", "7", 0.0, "wrong", True),
    (r"\boxed{\frac{1}{}}", "7", 0.0, "parse_error", True),
    ("Adding them gives 7. The answer is: 7", "7", 1.0, "correct", False),
    ("3 + 4 = 7\n#### 7", "7", 1.0, "correct", False),
    (r"Put it in \boxed{}. #### 7", "7", 1.0, "correct", False),  # empty box -> fallback
    ("The answer is: 8", "7", 0.0, "wrong", False),
    ("blah blah", "7", 0.0, "no_answer", False),
]


@pytest.mark.parametrize(("completion", "reference", "reward", "status", "boxed"), CASES)
def test_grade_table(completion, reference, reward, status, boxed):
    g = grade(completion, reference)
    assert (g.reward, g.status, g.boxed) == (reward, status, boxed)


def test_grade_reports_what_was_graded():
    assert grade(r"so \boxed{\frac{1}{2}}", "0.5").extracted == r"\frac{1}{2}"
    assert grade("The answer is: 7", "7").extracted == "7"
    assert grade("blah blah", "7").extracted is None


def test_require_box():
    for completion in ("The answer is: 7", "#### 7", r"format: \boxed{}. 7", "blah"):
        g = grade(completion, "7", require_box=True)
        assert g == Grade(0.0, None, False, "no_answer")
    assert grade(r"\boxed{7}", "7", require_box=True).status == "correct"


def test_unparseable_reference_raises():
    with pytest.raises(ValueError, match=r"\\frac\{1\}\{\}"):
        grade(r"\boxed{7}", r"\frac{1}{}")
    with pytest.raises(ValueError, match="unparseable reference"):
        grade_batch([r"\boxed{7}", "no box"], ["7", ""], require_box=True)  # even without an answer


def test_real_timeout_is_a_timeout_status():
    # Comparing a tower of powers with 7 runs past the answer's time budget.
    g = grade(r"\boxed{9^{9^{9}}}", "7", timeout_s=1)
    assert (g.reward, g.status, g.boxed) == (0.0, "timeout", True)


@pytest.mark.parametrize("timeout_s", [1.0, 2.5])
def test_a_verdict_comes_back_within_the_timeout_plus_a_margin(timeout_s):
    """9^{9^{9^{9}}} against 1 once took 8.1 s with timeout_s 5 (three math-verify timeouts and a
    3 x timeout + 2 backstop). One budget covers the whole answer now, and the parent kills a worker
    DEADLINE_MARGIN_S after it. Wall-clock bounds are the feature here (with a generous margin)."""
    assert grade(r"\boxed{2}", "2").status == "correct"  # a warm pool: worker start-up is not the answer's
    start = time.monotonic()
    g = grade(r"\boxed{9^{9^{9^{9}}}}", "1", timeout_s=timeout_s)
    elapsed = time.monotonic() - start
    assert (g.reward, g.status, g.boxed) == (0.0, "timeout", True)
    assert elapsed < timeout_s + 1.5, elapsed
    assert grade(r"\boxed{\frac{1}{2}}", "0.5", timeout_s=timeout_s).status == "correct"  # the pool goes on


def test_docstring_examples():
    assert doctest.testmod(math_grader).failed == 0


def test_grade_batch_matches_grade_and_counts():
    completions = [c for c, *_ in CASES]
    references = [r for _, r, *_ in CASES]
    grades = grade_batch(completions, references)
    assert [g.status for g in grades] == [s for *_, s, _ in CASES]
    assert grades == [grade(c, r) for c, r in zip(completions, references, strict=True)]
    # Imported here: the grader workers import this module (its test functions), so it stays light.
    from dashrl.grading.tasks import count_statuses

    counts = count_statuses([g.status for g in grades], ["gsm8k"])
    assert counts == {"correct": 13, "wrong": 4, "no_answer": 1, "parse_error": 1, "timeout": 0}
    assert sum(counts.values()) == len(CASES)
    assert grade_batch([], []) == []


def test_grade_batch_length_mismatch():
    with pytest.raises(ValueError, match="2 completions but 1 references"):
        grade_batch(["a", "b"], ["1"])


def test_same_results_from_worker_threads():
    completions = [c for c, *_ in CASES]
    references = [r for _, r, *_ in CASES]
    expected = [grade(c, r) for c, r in zip(completions, references, strict=True)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        from_threads = list(pool.map(grade, completions, references))
    assert from_threads == expected
    box = {}
    thread = threading.Thread(target=lambda: box.update(g=grade_batch(completions, references)))
    thread.start()
    thread.join()
    assert box["g"] == expected


def _hang_on_marker(kind, text, reference, timeout_s):
    """Test-only worker: hangs like a computation no signal can interrupt (SIGALRM blocked) on
    answers with HANG."""
    if "HANG" in text:
        import signal

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})  # a timer would not be delivered
        time.sleep(3600)
    return math_grader._grade_in_worker(kind, text, reference, timeout_s)


def test_hanging_answer_is_killed_and_the_rest_is_graded():
    completions = [
        r"\boxed{1}",
        r"\boxed{HANG}",
        r"\boxed{3}",
        "The answer is: 4",
        r"\boxed{6}",
        r"\boxed{6}",
    ]
    references = ["1", "2", "3", "4", "5", "6"]
    deadline = math_grader._deadline_s(1)
    assert deadline == 1 + math_grader.DEADLINE_MARGIN_S <= 2
    start = time.perf_counter()
    grades = math_grader._grade_batch_with(
        _hang_on_marker, completions, references, require_box=False, timeout_s=1
    )
    elapsed = time.perf_counter() - start
    assert [g.status for g in grades] == ["correct", "timeout", "correct", "correct", "wrong", "correct"]
    assert grades[1] == Grade(0.0, "HANG", True, "timeout", grades[1].detail)
    # The backstop fired (not the hang's 3600 s): a behaviour bound, not a speed assertion.
    assert deadline <= elapsed < 600
    # Alone, on a warm pool, the hanging answer's verdict comes back at timeout + margin (a
    # wall-clock bound is the feature here; generous margin): the replacement worker starts after.
    grade_batch([r"\boxed{1}"], ["1"])
    start = time.monotonic()
    (hung,) = math_grader._grade_batch_with(_hang_on_marker, [r"\boxed{HANG}"], ["2"], require_box=False, timeout_s=1)
    elapsed = time.monotonic() - start
    assert hung.status == "timeout" and deadline <= elapsed < 1 + 1.5, elapsed
    # The pool replaced the killed worker: grading works again.
    assert [g.reward for g in grade_batch(completions, references)] == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]


def _crash_or_raise_on_marker(kind, text, reference, timeout_s):
    """Test-only worker: the process dies on CRASH, the function raises on RAISE."""
    if "CRASH" in text:
        os._exit(3)
    if "RAISE" in text:
        raise KeyError("a bug in the grader")
    return math_grader._grade_in_worker(kind, text, reference, timeout_s)


def test_dead_worker_and_grader_bug():
    grades = math_grader._grade_batch_with(
        _crash_or_raise_on_marker,
        [r"\boxed{CRASH}", r"\boxed{2}"],
        ["1", "2"],
        require_box=False,
        timeout_s=1,
    )
    assert [g.status for g in grades] == ["parse_error", "correct"]
    assert "worker died" in grades[0].detail
    # A bug in the grader is raised, not scored 0; the pool is rebuilt afterwards.
    with pytest.raises(RuntimeError, match="a bug in the grader"):
        math_grader._grade_batch_with(
            _crash_or_raise_on_marker, [r"\boxed{RAISE}"], ["1"], require_box=False, timeout_s=1
        )
    assert grade(r"\boxed{2}", "2").reward == 1.0


def test_shutdown_and_restart():
    assert grade(r"\boxed{2}", "2").reward == 1.0
    math_grader._pool.close()
    assert not math_grader._pool.started
    assert grade(r"\boxed{2}", "2").reward == 1.0


def test_import_is_cheap():
    code = (
        "import sys, dashrl.grading.math_grader; "
        "assert not {'torch', 'sympy', 'math_verify'} & set(sys.modules), sorted(sys.modules); "
        "assert not dashrl.grading.math_grader._pool.started"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grading_a_large_batch():
    completions = [f"{i} + {i} = {2 * i}. The answer is: {2 * i}" for i in range(100)]
    completions += [f"so \\boxed{{\\frac{{{i}}}{{2}}}}" for i in range(100)]
    references = [str(2 * i) for i in range(100)] + [str(i / 2) for i in range(100)]
    grade_batch(completions[:4], references[:4])  # warm
    grades = grade_batch(completions, references)
    # Imported here: the grader workers import this module (its test functions), so it stays light.
    from dashrl.grading.tasks import count_statuses

    assert count_statuses([g.status for g in grades], ["gsm8k"])["correct"] == 200
