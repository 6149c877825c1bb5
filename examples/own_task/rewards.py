"""The reward function of the example task of your own (docs/pipeline.md, "Your own task"): unit conversions.

``score(completions, answers, rows)`` reads the last number of each completion ("1,200" counts as
1200) and compares it with the answer, within the row's own ``tolerance`` field:

    |number - answer| <= tolerance       reward 1.0, status "correct"
    |number - answer| <= 10 x tolerance  reward 0.5, status "partial" (close, e.g. a rounding slip)
    farther                              reward 0.0, status "wrong"
    no number in the completion          reward 0.0, status "no_answer"

Worked example: for the row {"tolerance": 0.5} with answer "250", the completion
"2.5 m is 250 cm." ends in the number 250: reward 1.0; "about 253" gives 0.5; "25" gives 0.0.

>>> [g.reward for g in score(["2.5 m is 250 cm.", "about 253", "25", "no idea"], ["250"] * 4, [{"tolerance": 0.5}] * 4)]
[1.0, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

import re

from dashrl.grading.math_grader import Grade

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def score(completions: list[str], answers: list[str], rows: list[dict]) -> list[Grade]:
    grades = []
    for completion, answer, row in zip(completions, answers, rows, strict=True):
        numbers = _NUMBER.findall(completion)
        if not numbers:
            grades.append(Grade(0.0, None, False, "no_answer"))
            continue
        error = abs(float(numbers[-1].replace(",", "")) - float(answer))
        tolerance = float(row["tolerance"])
        if error <= tolerance:
            reward, status = 1.0, "correct"
        elif error <= 10 * tolerance:
            reward, status = 0.5, "partial"
        else:
            reward, status = 0.0, "wrong"
        grades.append(Grade(reward, numbers[-1], False, status))
    return grades
