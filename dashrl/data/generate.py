"""Generated tasks: the split/level/shuffle scheme shared by the embedded generators.

``dashrl.data.arith.generate_arith`` (grade-school arithmetic word problems) and
``dashrl.data.pyfunc.generate_pyfunc`` (small Python functions) are fully determined by a seed:
one random stream per level, the test problems drawn before the training problems, so the test set
depends only on (seed, levels, n_test); growing the training set never changes the test set. Texts
are unique within and across the two splits.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from dashrl.infra.seeds import rng

_Problem = TypeVar("_Problem")
_ATTEMPTS_PER_PROBLEM = 20  # rejection sampling budget; every level has far more texts than this needs


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _equal_shares(n: int, k: int) -> list[int]:
    """n split into k shares differing by at most one; the first shares get the remainder."""
    base, extra = divmod(n, k)
    return [base + (i < extra) for i in range(k)]


def _draw_unique(
    level: int,
    n: int,
    rng: np.random.Generator,
    seen: set[str],
    draw: Callable[[int, np.random.Generator], _Problem],
    text: Callable[[_Problem], str],
    what: str,
) -> list[_Problem]:
    """n problems of one level whose texts are not in `seen` (and are added to it)."""
    problems: list[_Problem] = []
    max_attempts, attempts = _ATTEMPTS_PER_PROBLEM * n + 100, 0
    while len(problems) < n and attempts < max_attempts:
        problem = draw(level, rng)
        attempts += 1
        key = text(problem)
        if key not in seen:
            seen.add(key)
            problems.append(problem)
    if len(problems) == n:
        return problems
    raise ValueError(
        f"could only generate {len(problems)} unique level-{level} {what} problems of the {n} "
        f"requested in {max_attempts} attempts; ask for fewer problems or more levels"
    )


def generate_split_by_levels(
    n_train: int,
    n_test: int,
    levels: Sequence[int],
    seed: int,
    *,
    valid_levels: Iterable[int],
    draw: Callable[[int, np.random.Generator], _Problem],
    text: Callable[[_Problem], str],
    frame: Callable[[list[_Problem], list[int], str], pd.DataFrame],
    what: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames of a generated task, `n_train` and `n_test` problems shared equally among `levels`.

    The scheme of the embedded generators (``dashrl.data.arith.generate_arith``,
    ``dashrl.data.pyfunc.generate_pyfunc``): one random stream per level, ``default_rng([seed, level])``,
    from which ``draw(level, rng)`` makes one problem; the test problems are drawn before the
    training problems, so the test set depends only on (seed, levels, n_test); shares differ by at
    most one (lower levels get the remainder); ``text(problem)`` (the prompt's distinctive text) is
    unique within and across the splits (rejection sampling); each split's rows are shuffled by
    ``default_rng([seed, 0, split_number])`` (test 0, train 1) before ``frame(problems,
    problem_levels, split)`` builds its DataFrame. `valid_levels` are the levels `draw` knows;
    `what` names the task in errors ("arithmetic", "pyfunc"). Same arguments, same frames.
    """
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be non-negative, got n_train={n_train}, n_test={n_test}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    valid = sorted(valid_levels)
    levels = sorted(int(level) for level in levels)
    unknown = sorted(set(levels) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} levels {unknown}; valid levels: {valid}")
    if len(set(levels)) != len(levels):
        raise ValueError(f"{what} levels must be distinct, got {levels}")
    if not levels:
        if n_train + n_test > 0:
            raise ValueError(f"no {what} levels requested")
        return frame([], [], "train"), frame([], [], "test")

    # One stream per level; test problems first, so that n_train never changes the test set.
    streams = {level: rng(seed, level) for level in levels}
    seen: set[str] = set()
    frames = []
    for split_number, (split, n) in enumerate((("test", n_test), ("train", n_train))):
        problems: list[_Problem] = []
        problem_levels: list[int] = []
        for level, share in zip(levels, _equal_shares(n, len(levels)), strict=True):
            problems += _draw_unique(level, share, streams[level], seen, draw, text, what)
            problem_levels += [level] * share
        # Level 0 has no stream: [seed, 0, split_number] is the shuffle's own.
        order = rng(seed, 0, split_number).permutation(len(problems))
        frames.append(frame([problems[i] for i in order], [problem_levels[i] for i in order], split))
    test, train = frames
    return train, test
