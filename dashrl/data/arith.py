"""The embedded arithmetic task: grade-school word problems at five levels, fully determined by a seed.

``generate_arith(n_train, n_test, levels, seed)`` returns (train, test) DataFrames in the problem
schema of ``dashrl.data.schema`` (source "arith"; write them with ``write_problems``, read them
back with ``dashrl.data.loaders.load_problems("arith", split, path)``). Each level draws from its own random stream,
``default_rng([seed, level])``, and the test problems are drawn before the training problems, so the
test set depends only on (seed, levels, n_test): growing the training set never changes the test
set. Texts are unique within and across the two splits. The split/level/shuffle scheme is
``dashrl.data.generate.generate_split_by_levels``, shared with the ``pyfunc`` generator of
``dashrl.data.pyfunc``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dashrl.data.generate import generate_split_by_levels, pick
from dashrl.data.schema import to_frame

_PEOPLE = (
    ("Mia", "she"), ("Liam", "he"), ("Ava", "she"), ("Noah", "he"), ("Emma", "she"),
    ("Omar", "he"), ("Sofia", "she"), ("Lucas", "he"), ("Zara", "she"), ("Ethan", "he"),
    ("Priya", "she"), ("Mateo", "he"), ("Chloe", "she"), ("Kenji", "he"), ("Amara", "she"),
    ("Leo", "he"), ("Nina", "she"), ("Samuel", "he"), ("Hana", "she"), ("Diego", "he"),
)  # fmt: skip
_ITEMS = (
    ("pencil", "pencils"), ("sticker", "stickers"), ("marble", "marbles"), ("apple", "apples"),
    ("book", "books"), ("cookie", "cookies"), ("stamp", "stamps"), ("shell", "shells"),
    ("card", "cards"), ("balloon", "balloons"), ("crayon", "crayons"), ("button", "buttons"),
    ("bead", "beads"), ("toy car", "toy cars"), ("orange", "oranges"), ("egg", "eggs"),
)  # fmt: skip
_CONTAINERS = (("box", "boxes"), ("bag", "bags"), ("pack", "packs"), ("jar", "jars"), ("basket", "baskets"))
_GAIN_VERBS = ("buys", "finds", "gets", "collects", "is given", "wins")
_LOSS_VERBS = ("gives away", "loses", "uses", "sells", "trades away")


@dataclass(frozen=True)
class _Arith:
    text: str
    steps: list[str]  # sentences of the worked solution, each with its equation
    answer: int


def _people(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    return [_PEOPLE[i] for i in rng.choice(len(_PEOPLE), size=k, replace=False)]


def _noun(n: int, noun: tuple[str, str]) -> str:
    return noun[0] if n == 1 else noun[1]


def _count(n: int, noun: tuple[str, str]) -> str:
    """'1 pencil', '7 pencils'."""
    return f"{n} {_noun(n, noun)}"


def _operand(rng: np.random.Generator) -> int:
    """A one- or two-digit number, each with probability 1/2."""
    return int(rng.integers(1, 10)) if rng.random() < 0.5 else int(rng.integers(10, 100))


def _one_step(rng: np.random.Generator, low: int, high: int, n_templates: int = 5) -> _Arith:
    """Levels 1 and 2: one addition or subtraction of operands in [low, high].

    Templates 0-2 state the operation (gains, altogether, gives away); 3-4 are comparisons
    ("N fewer than", "how many more than"), which the embedded model finds much harder.
    """
    (a_name, a_pron), (b_name, _) = _people(rng, 2)
    item = pick(rng, _ITEMS)
    x, y = (int(v) for v in rng.integers(low, high + 1, size=2))
    big, small = max(x, y), min(x, y)
    template = int(rng.integers(n_templates))
    if template == 0:
        verb, total = pick(rng, _GAIN_VERBS), x + y
        text = f"{a_name} has {_count(x, item)}. {a_pron.capitalize()} {verb} {y} more. How many {item[1]} does {a_name} have now?"
        steps = [
            f"{a_name} starts with {_count(x, item)}.",
            f"{a_pron.capitalize()} {verb} {y} more, so {x} + {y} = {total}.",
        ]
        return _Arith(text, steps, total)
    if template == 1:
        total = x + y
        text = f"{a_name} has {_count(x, item)} and {b_name} has {_count(y, item)}. How many {item[1]} do they have altogether?"
        steps = [f"Together they have {x} + {y} = {_count(total, item)}."]
        return _Arith(text, steps, total)
    left = big - small
    if template == 2:
        verb = pick(rng, _LOSS_VERBS)
        text = f"{a_name} has {_count(big, item)}. {a_pron.capitalize()} {verb} {small} of them. How many {item[1]} does {a_name} have now?"
        steps = [
            f"{a_name} starts with {_count(big, item)}.",
            f"{a_pron.capitalize()} {verb} {small}, so {big} - {small} = {left}.",
        ]
        return _Arith(text, steps, left)
    if template == 3:
        text = f"{a_name} has {_count(big, item)}. {b_name} has {small} fewer {_noun(small, item)} than {a_name}. How many {item[1]} does {b_name} have?"
        steps = [f"{b_name} has {small} fewer than {a_name}'s {big}, so {big} - {small} = {left}."]
        return _Arith(text, steps, left)
    text = f"{a_name} has {_count(big, item)} and {b_name} has {_count(small, item)}. How many more {item[1]} does {a_name} have than {b_name}?"
    steps = [f"The difference is {big} - {small} = {left}."]
    return _Arith(text, steps, left)


def _level_1(rng: np.random.Generator) -> _Arith:
    """One-digit operands, the operation stated in the text: the embedded model's easiest band."""
    return _one_step(rng, 1, 9, n_templates=3)


def _level_2(rng: np.random.Generator) -> _Arith:
    return _one_step(rng, 10, 99)


def _level_3(rng: np.random.Generator) -> _Arith:
    """Two or three additions/subtractions of one- and two-digit numbers."""
    (a_name, a_pron), (b_name, _), (c_name, _) = _people(rng, 3)
    item = pick(rng, _ITEMS)
    template = int(rng.integers(4))
    if template == 0:  # a chain of 2 or 3 gains and losses
        start = int(rng.integers(10, 100))
        value, actions, steps = start, [], [f"{a_name} starts with {_count(start, item)}."]
        for k in range(int(rng.integers(2, 4))):
            amount = _operand(rng)
            subject = a_pron.capitalize() if k == 0 else f"Then {a_pron}"
            if rng.random() < 0.5 and amount <= value:
                verb = pick(rng, _LOSS_VERBS)
                actions.append(f"{verb} {amount}")
                steps.append(f"{subject} {verb} {amount}, so {value} - {amount} = {value - amount}.")
                value -= amount
            else:
                verb = pick(rng, _GAIN_VERBS)
                actions.append(f"{verb} {amount} more")
                steps.append(f"{subject} {verb} {amount} more, so {value} + {amount} = {value + amount}.")
                value += amount
        chain = (
            actions[0] + ", then " + actions[1] + (f", and then {actions[2]}" if len(actions) == 3 else "")
        )
        text = f"{a_name} has {_count(start, item)}. {a_pron.capitalize()} {chain}. How many {item[1]} does {a_name} have now?"
        return _Arith(text, steps, value)
    if template == 1:  # three people, in total
        x, y, z = _operand(rng), _operand(rng), _operand(rng)
        text = (
            f"{a_name} has {_count(x, item)}, {b_name} has {_count(y, item)}, and {c_name} has {_count(z, item)}. "
            f"How many {item[1]} do they have in total?"
        )
        steps = [
            f"{a_name} and {b_name} have {x} + {y} = {_count(x + y, item)}.",
            f"Adding {c_name}'s {z} gives {x + y} + {z} = {_count(x + y + z, item)}.",
        ]
        return _Arith(text, steps, x + y + z)
    if template == 2:  # more than, then fewer than
        x, y = int(rng.integers(10, 100)), _operand(rng)
        z = int(rng.integers(1, min(x + y, 99) + 1))
        text = (
            f"{a_name} has {_count(x, item)}. {b_name} has {y} more {_noun(y, item)} than {a_name}, "
            f"and {c_name} has {z} fewer {_noun(z, item)} than {b_name}. How many {item[1]} does {c_name} have?"
        )
        steps = [
            f"{b_name} has {x} + {y} = {_count(x + y, item)}.",
            f"{c_name} has {x + y} - {z} = {_count(x + y - z, item)}.",
        ]
        return _Arith(text, steps, x + y - z)
    # a container: take out, put back, take out
    container = pick(rng, _CONTAINERS)
    start = int(rng.integers(10, 100))
    taken = int(rng.integers(1, start + 1))
    back = _operand(rng)
    again = int(rng.integers(1, min(start - taken + back, 99) + 1))
    after_take, after_back = start - taken, start - taken + back
    text = (
        f"A {container[0]} holds {_count(start, item)}. {a_name} takes out {taken}, then puts back {back}, "
        f"and then takes out {again}. How many {item[1]} are in the {container[0]} now?"
    )
    steps = [
        f"After taking out {taken}, {start} - {taken} = {after_take} are left.",
        f"Putting back {back} gives {after_take} + {back} = {after_back}.",
        f"Taking out {again} leaves {after_back} - {again} = {after_back - again}.",
    ]
    return _Arith(text, steps, after_back - again)


def _level_4(rng: np.random.Generator) -> _Arith:
    """One multiplication or exact division: a single-digit number times a one- or two-digit number."""
    a_name, a_pron = pick(rng, _PEOPLE)
    item, container = pick(rng, _ITEMS), pick(rng, _CONTAINERS)
    small = int(rng.integers(2, 10))
    other = int(rng.integers(2, 10)) if rng.random() < 0.5 else int(rng.integers(10, 100))
    product = small * other
    template = int(rng.integers(4))
    if template == 0:
        text = (
            f"{a_name} buys {small} {container[1]} of {item[1]}. Each {container[0]} has {_count(other, item)}. "
            f"How many {item[1]} does {a_name} buy?"
        )
        steps = [f"{a_name} buys {small} {container[1]} with {other} each, so {small} * {other} = {product}."]
        return _Arith(text, steps, product)
    if template == 1:
        text = f"{a_name} reads {other} pages every day for {small} days. How many pages does {a_name} read?"
        steps = [
            f"{a_pron.capitalize()} reads {other} pages on each of {small} days, so {small} * {other} = {product}."
        ]
        return _Arith(text, steps, product)
    if template == 2:
        text = (
            f"{a_name} has {_count(product, item)} and shares them equally among {small} friends. "
            f"How many {item[1]} does each friend get?"
        )
        steps = [f"Sharing {product} among {small} friends gives {product} / {small} = {other} each."]
        return _Arith(text, steps, other)
    text = (
        f"{a_name} packs {_count(product, item)} into {container[1]} of {small}. "
        f"How many {container[1]} does {a_name} fill?"
    )
    steps = [f"Each {container[0]} holds {small}, so {product} / {small} = {other}."]
    return _Arith(text, steps, other)


def _level_5(rng: np.random.Generator) -> _Arith:
    """A multiplication or division followed by an addition or subtraction."""
    a_name, a_pron = pick(rng, _PEOPLE)
    item, container = pick(rng, _ITEMS), pick(rng, _CONTAINERS)
    groups, size = int(rng.integers(2, 10)), int(rng.integers(2, 13))
    product = groups * size
    template = int(rng.integers(4))
    if template == 0:  # buy groups, use some
        used, verb = int(rng.integers(1, product + 1)), pick(rng, _LOSS_VERBS)
        text = (
            f"{a_name} buys {groups} {container[1]} of {size} {item[1]} and {verb} {used} of them. "
            f"How many {item[1]} does {a_name} have left?"
        )
        steps = [
            f"{a_name} buys {groups} * {size} = {_count(product, item)}.",
            f"{a_pron.capitalize()} {verb} {used}, so {product} - {used} = {product - used}.",
        ]
        return _Arith(text, steps, product - used)
    if template == 1:  # have some, buy groups
        start = _operand(rng)
        text = (
            f"{a_name} has {_count(start, item)}. {a_pron.capitalize()} buys {groups} more {container[1]} "
            f"with {size} {item[1]} in each. How many {item[1]} does {a_name} have now?"
        )
        steps = [
            f"The {container[1]} hold {groups} * {size} = {_count(product, item)}.",
            f"{a_name} now has {start} + {product} = {_count(start + product, item)}.",
        ]
        return _Arith(text, steps, start + product)
    if template == 2:  # earn per day, spend some
        spent = int(rng.integers(1, product + 1))
        dollar = ("dollar", "dollars")
        text = (
            f"{a_name} earns {size} dollars each day for {groups} days and then spends {spent} dollars. "
            f"How many dollars does {a_name} have left?"
        )
        steps = [
            f"{a_name} earns {groups} * {size} = {_count(product, dollar)}.",
            f"After spending {spent}, {product} - {spent} = {_count(product - spent, dollar)} are left.",
        ]
        return _Arith(text, steps, product - spent)
    # split equally, then add some to one container
    extra = _operand(rng)
    text = (
        f"{a_name} splits {_count(product, item)} equally into {groups} {container[1]}. Then {a_pron} adds "
        f"{extra} more {_noun(extra, item)} to one {container[0]}. How many {item[1]} are in that {container[0]} now?"
    )
    steps = [
        f"Each {container[0]} gets {product} / {groups} = {_count(size, item)}.",
        f"That {container[0]} now has {size} + {extra} = {_count(size + extra, item)}.",
    ]
    return _Arith(text, steps, size + extra)


_LEVEL_GENERATORS: dict[int, Callable[[np.random.Generator], _Arith]] = {
    1: _level_1,
    2: _level_2,
    3: _level_3,
    4: _level_4,
    5: _level_5,
}


def _arith_frame(problems: list[_Arith], levels: list[int], split: str) -> pd.DataFrame:
    records = [
        {
            "id": f"arith-{split}-{index:05d}",
            "prompt": problem.text,
            "answer": str(problem.answer),
            "solution": " ".join(problem.steps) + f"\nThe answer is \\boxed{{{problem.answer}}}.",
            "source": "arith",
            "level": level,
        }
        for index, (problem, level) in enumerate(zip(problems, levels, strict=True))
    ]
    return to_frame(records, f"arith[{split}]")


def generate_arith(
    n_train: int, n_test: int, levels: Sequence[int], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate (train, test) arithmetic word problems, shared equally among `levels` (1-5).

    1: one stated addition/subtraction, one-digit numbers  2: two-digit numbers, comparisons too
    3: two or three additions/subtractions                 4: one multiplication or exact division
    5: a multiplication/division, then an addition/subtraction
    Example (level 1): prompt "Mia has 7 pencils. She gives away 3 of them. How many pencils does Mia
    have now?", solution "Mia starts with 7 pencils. She gives away 3, so 7 - 3 = 4.\\nThe answer is
    \\boxed{4}.", answer "4". Shares differ by at most one (lower levels get the remainder); rows are
    shuffled; no text repeats within or across the splits. Same arguments, same frames.
    """
    return generate_split_by_levels(
        n_train,
        n_test,
        levels,
        seed,
        valid_levels=_LEVEL_GENERATORS,
        draw=lambda level, rng: _LEVEL_GENERATORS[level](rng),
        text=lambda problem: problem.text,
        frame=_arith_frame,
        what="arithmetic",
    )
