"""Binary code reward: the program in a completion passes its task's tests in the sandbox, or not.

Algorithm, per (completion, answer):
1) Code. The last fenced block tagged python (```python / ```py / ```python3), else the last fenced
   block of any language, else the whole completion (a base model continuing a raw prompt writes
   bare code). A block the completion opened but never closed (cut at ``max_new_tokens``) counts as
   a block, up to the end; code followed by a lone closing fence and prose (the reply forgot the
   opening fence, as small chat models do) counts as a block from the start. Nothing left after stripping: status ``no_code``, reward 0, no process.
2) Program. ``prefix + "\\n" + code`` (the answer's code spec, ``dashrl.data.code_tasks.code_spec``; the
   prefix is the HumanEval prompt for HumanEval, empty otherwise: the official convention, so the
   prompt's helper functions exist whether the model rewrote the function or continued it).
3) Verdict. ``dashrl.grading.sandbox.run_programs``: the task's own ``tests`` run in a trusted process and
   call the program's entry point in a separate, isolated process; reward 1.0 only for ``passed``.

Statuses (``CODE_STATUSES``): passed | failed | timeout | syntax_error | no_code | sandbox_error.
``Grade.extracted`` holds the extracted code and ``Grade.boxed`` whether it came from a fenced
block (the code task's answer format, as the box is the math task's). A malformed answer spec raises
(a data bug, never a 0 reward), and so does a batch in which the sandbox failed on every program
(the machine cannot run the sandbox: training on all-zero rewards would be silent nonsense).

Worked example: the completion "Here it is:\\n```python\\ndef add(a, b):\\n    return a + b\\n```"
against the pyfunc tests ``assert add(1, 2) == 3`` gives code "def add(a, b):\\n    return a + b",
fenced, and reward 1.0 (status passed).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from dashrl.config.params import SandboxLimits
from dashrl.data.code_tasks import CodeSpec, code_spec
from dashrl.grading.math_grader import Grade
from dashrl.grading.sandbox import SandboxJob, run_programs

logger = logging.getLogger(__name__)

CODE_STATUSES = ("passed", "failed", "timeout", "syntax_error", "no_code", "sandbox_error")
_PYTHON_TAGS = frozenset({"python", "py", "python3"})
_BLOCK = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)```", re.DOTALL)
_OPENING = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n")
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)")


def extract_code(completion: str) -> tuple[str, bool]:
    """(code, fenced): the program a completion holds, as described in the module docstring.

    >>> extract_code("```\\nprint(1)\\n```\\nthen\\n```python\\nx = 2\\n```\\n")
    ('x = 2', True)
    >>> extract_code("def f():\\n    return 1")
    ('def f():\\n    return 1', False)
    """
    fences = list(_FENCE.finditer(completion))
    if len(fences) % 2 == 1 and not fences[0].group(1) and completion[: fences[0].start()].strip():
        # Code first, then a lone closing fence and prose (small chat models do this): the text
        # before the fence is the first block, as if the reply had opened with one.
        completion = "```\n" + completion
    blocks = [(m.group(1).lower(), m.group(2)) for m in _BLOCK.finditer(completion)]
    tail_start = max((m.end() for m in _BLOCK.finditer(completion)), default=0)
    unclosed = _OPENING.search(completion, tail_start)
    if unclosed:  # opened after the last closed block and never closed: truncated
        blocks.append((unclosed.group(1).lower(), completion[unclosed.end() :]))
    if not blocks:
        return completion.strip("\n").rstrip(), False
    python = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    body = python[-1] if python else blocks[-1][1]
    return body.strip("\n").rstrip(), True


def grade_code_batch(completions: Sequence[str], answers: Sequence[str], *, limits: SandboxLimits) -> list[Grade]:
    """Grade completions[i] against the code spec answers[i] (see the module docstring)."""
    if len(completions) != len(answers):
        raise ValueError(f"{len(completions)} completions but {len(answers)} answers")
    specs: dict[str, CodeSpec] = {}
    for answer in answers:
        if answer not in specs:
            specs[answer] = code_spec(answer)  # ProblemDataError (a ValueError) on a malformed spec
    extracted = [extract_code(c) for c in completions]
    jobs, job_rows = [], []
    for row, ((code, _), answer) in enumerate(zip(extracted, answers, strict=True)):
        if code.strip():
            spec = specs[answer]
            jobs.append(SandboxJob(spec.prefix + "\n" + code, spec.prefix, spec.tests, spec.entry_point))
            job_rows.append(row)
    results = dict(zip(job_rows, run_programs(jobs, limits), strict=True))
    if results and all(r.status == "sandbox_error" for r in results.values()):
        detail = next(iter(results.values())).detail
        raise RuntimeError(f"the code sandbox failed on all {len(results)} programs of the batch: {detail}")
    grades = []
    for row, (code, fenced) in enumerate(extracted):
        if row not in results:
            grades.append(Grade(0.0, None, fenced, "no_code"))
            continue
        result = results[row]
        if result.status == "sandbox_error":
            logger.warning("code sandbox error (counted as reward 0): %s", result.detail)
        grades.append(Grade(1.0 if result.status == "passed" else 0.0, code, fenced, result.status, result.detail))
    return grades
