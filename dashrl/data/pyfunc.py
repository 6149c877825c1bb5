"""``pyfunc``: the embedded generated coding task, small Python functions with hidden asserts at five levels.

``generate_pyfunc(n_train, n_test, levels, seed)`` returns (train, test) DataFrames in the problem
schema (source "pyfunc"), each problem's answer a code spec of ``dashrl.data.code_tasks`` and its
prompt the paper's raw MBPP+-style prompt. Fully determined by a seed, with the split/level scheme
of ``dashrl.data.generate``. Only the ``prepare`` stage runs this module; the file it writes is read
back by the ``pyfunc`` loader of ``dashrl.data.code_tasks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from dashrl.data.code_tasks import CodeSpec, paper_prompt
from dashrl.data.generate import generate_split_by_levels, pick
from dashrl.data.schema import to_frame


@dataclass(frozen=True)
class _PyFunc:
    description: str  # "Write a function `add_7(x)` that returns x plus 7."; unique within a generation
    entry_point: str
    solution: str
    asserts: tuple[str, ...]


Sampler = Callable[[np.random.Generator], tuple[Any, ...]]

_INT = (("x",), ("n",), ("num",), ("value",), ("a",))
_NAT = (("n",), ("num",), ("k",), ("count",))
_STR = (("s",), ("text",), ("word",), ("string",))
_LIST = (("nums",), ("numbers",), ("values",), ("items",), ("lst",), ("arr",))
_SENTENCE = (("sentence",), ("text",), ("s",), ("phrase",))
_PAIR = (("a", "b"), ("x", "y"), ("m", "n"), ("first", "second"))
_WORDS = (
    "apple", "river", "cat", "dog", "house", "sun", "tree", "book", "light", "stone", "blue", "green",
    "music", "code", "python", "bird", "cloud", "rain", "snow", "fire", "water", "table", "chair",
    "window", "garden", "road", "ocean", "moon", "star", "paper", "pen", "lamp", "door", "bread", "milk",
    "honey", "tiger", "lion", "zebra", "mouse", "horse", "fish", "plant", "seed", "leaf", "rock", "sand",
    "hill", "lake", "wind", "a", "to", "is", "banana", "orange", "queen", "jump", "quick", "yellow",
)  # fmt: skip
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_COUNT_LETTERS = "abcdeghilmnoprstuw"
_VOWELS = "aeiou"


def _int_arg(low: int, high: int) -> Sampler:
    return lambda rng: (int(rng.integers(low, high + 1)),)


def _int_pair(low: int, high: int) -> Sampler:
    return lambda rng: (int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1)))


def _letters(rng: np.random.Generator, alphabet: str, low: int, high: int) -> str:
    return "".join(pick(rng, alphabet) for _ in range(int(rng.integers(low, high + 1))))


def _word(rng: np.random.Generator, min_len: int = 1) -> str:
    """A dictionary word or, a third of the time, random letters; at least min_len characters."""
    if rng.random() < 2 / 3:
        word = pick(rng, _WORDS)
        if len(word) >= min_len:
            return word
    return _letters(rng, _LETTERS, max(min_len, 1), max(min_len, 1) + 6)


def _word_arg(min_len: int = 1) -> Sampler:
    return lambda rng: (_word(rng, min_len),)


def _mixed_case_arg(rng: np.random.Generator) -> tuple[str]:
    return ("".join(c.upper() if rng.random() < 0.4 else c for c in _word(rng)),)


def _sentence(rng: np.random.Generator, low: int = 1, high: int = 5) -> str:
    return " ".join(pick(rng, _WORDS) for _ in range(int(rng.integers(low, high + 1))))


def _sentence_arg(low: int = 1, high: int = 5) -> Sampler:
    return lambda rng: (_sentence(rng, low, high),)


def _int_list(rng: np.random.Generator, low: int, high: int, min_len: int, max_len: int) -> list[int]:
    return [int(v) for v in rng.integers(low, high + 1, size=int(rng.integers(min_len, max_len + 1)))]


def _list_arg(low: int = -20, high: int = 50, min_len: int = 0, max_len: int = 8) -> Sampler:
    return lambda rng: (_int_list(rng, low, high, min_len, max_len),)


_N_ASSERTS = (5, 8)  # each problem has 5-8 hidden asserts; the first is shown in the prompt
_INPUT_ATTEMPTS = 200  # draws to find distinct inputs whose outputs are not all equal


def _task(
    rng: np.random.Generator,
    names: Sequence[str],
    params: Sequence[tuple[str, ...]],
    phrases: Sequence[str],
    body: Sequence[str],
    semantics: Callable[..., Any],
    sample: Sampler,
    **constants: Any,
) -> _PyFunc:
    """One problem: a name, parameter names and a phrasing picked from the template's options, a
    solution from `body` (lines, formatted with the constants and {p0}, {p1} for the parameters),
    and asserts on sampled inputs whose expected values are computed by `semantics` (trusted)."""
    name = pick(rng, names).format(**constants)
    args = pick(rng, params)
    fields = {**constants, **{f"p{i}": arg for i, arg in enumerate(args)}}
    signature = f"{name}({', '.join(args)})"
    description = f"Write a function `{signature}` that {pick(rng, phrases).format(**fields)}."
    solution = f"def {signature}:\n" + "".join(f"    {line.format(**fields)}\n" for line in body)
    n_asserts = int(rng.integers(_N_ASSERTS[0], _N_ASSERTS[1] + 1))
    inputs: list[str] = []
    outputs: list[str] = []
    asserts: list[str] = []
    for _ in range(_INPUT_ATTEMPTS):
        values = sample(rng)
        call = f"{name}({', '.join(repr(value) for value in values)})"
        if call in inputs:
            continue
        expected = repr(semantics(*values))
        if len(asserts) == n_asserts - 1 and all(output == expected for output in outputs):
            continue  # the tests must tell apart a function that always returns the same value
        inputs.append(call)
        outputs.append(expected)
        asserts.append(f"assert {call} == {expected}")
        if len(asserts) == n_asserts:
            return _PyFunc(description, name, solution, tuple(asserts))
    raise RuntimeError(f"pyfunc template of {description!r} could not draw {n_asserts} distinct test inputs")


# Level 1: one-line arithmetic on one integer.


def _l1_add(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(1, 100))
    return _task(
        rng, ("add_{k}", "plus_{k}", "increase_by_{k}"), _INT,
        ("returns {p0} plus {k}", "returns the sum of {p0} and {k}", "adds {k} to {p0} and returns the result"),
        ["return {p0} + {k}"], lambda x: x + k, _int_arg(-20, 50), k=k,
    )  # fmt: skip


def _l1_subtract(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(1, 100))
    return _task(
        rng, ("minus_{k}", "subtract_{k}", "decrease_by_{k}"), _INT,
        ("returns {p0} minus {k}", "subtracts {k} from {p0} and returns the result",
         "returns the result of taking {k} away from {p0}"),
        ["return {p0} - {k}"], lambda x: x - k, _int_arg(-20, 120), k=k,
    )  # fmt: skip


def _l1_multiply(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 21))
    return _task(
        rng, ("times_{k}", "multiply_by_{k}", "scale_by_{k}"), _INT,
        ("returns {p0} times {k}", "returns {p0} multiplied by {k}", "returns the product of {p0} and {k}"),
        ["return {p0} * {k}"], lambda x: x * k, _int_arg(-20, 50), k=k,
    )  # fmt: skip


def _l1_from_constant(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(1, 100))
    return _task(
        rng, ("from_{k}_minus", "subtract_from_{k}", "take_from_{k}"), _INT,
        ("returns {k} minus {p0}", "subtracts {p0} from {k} and returns the result"),
        ["return {k} - {p0}"], lambda x: k - x, _int_arg(-20, 120), k=k,
    )  # fmt: skip


def _l1_power(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 6))
    names = {2: ("square", "squared", "square_number"), 3: ("cube", "cubed", "cube_number")}
    phrases = {2: ("returns the square of {p0}", "returns {p0} multiplied by itself", "returns {p0} squared"),
               3: ("returns the cube of {p0}", "returns {p0} raised to the power 3")}  # fmt: skip
    return _task(
        rng, names.get(k, ("power_{k}", "to_the_{k}", "raise_to_{k}")), _INT,
        phrases.get(k, ("returns {p0} raised to the power {k}", "returns {p0} to the power of {k}")),
        ["return {p0} ** {k}"], lambda x: x**k, _int_arg(-9, 12), k=k,
    )  # fmt: skip


def _l1_negate(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("negate", "negative", "flip_sign", "opposite"), _INT,
        ("returns the negation of {p0}", "returns {p0} with its sign flipped", "returns minus {p0}"),
        ["return -{p0}"], lambda x: -x, _int_arg(-50, 50),
    )  # fmt: skip


def _l1_floor_divide(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 11))
    return _task(
        rng, ("div_{k}", "floor_div_{k}", "divide_by_{k}"), _INT,
        ("returns {p0} divided by {k}, rounded down (integer division)",
         "returns the integer division {p0} // {k}"),
        ["return {p0} // {k}"], lambda x: x // k, _int_arg(0, 100), k=k,
    )  # fmt: skip


def _l1_remainder(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 13))
    return _task(
        rng, ("mod_{k}", "remainder_{k}", "rem_{k}"), _INT,
        ("returns the remainder of {p0} divided by {k}", "returns {p0} modulo {k}"),
        ["return {p0} % {k}"], lambda x: x % k, _int_arg(0, 100), k=k,
    )  # fmt: skip


# Level 2: one string or list builtin.


def _l2_reverse(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("reverse_string", "reverse_text", "reversed_word", "flip_string"), _STR,
        ("returns {p0} reversed", "returns the reverse of the string {p0}",
         "returns the characters of {p0} in reverse order"),
        ["return {p0}[::-1]"], lambda s: s[::-1], _word_arg(2),
    )  # fmt: skip


def _l2_upper(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("to_upper", "upper_case", "shout", "make_upper"), _STR,
        ("returns {p0} converted to uppercase", "returns {p0} with every letter in upper case"),
        ["return {p0}.upper()"], lambda s: s.upper(), _mixed_case_arg,
    )  # fmt: skip


def _l2_lower(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("to_lower", "lower_case", "whisper", "make_lower"), _STR,
        ("returns {p0} converted to lowercase", "returns {p0} with every letter in lower case"),
        ["return {p0}.lower()"], lambda s: s.lower(), _mixed_case_arg,
    )  # fmt: skip


def _l2_string_length(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("string_length", "text_length", "count_chars", "str_len"), _STR,
        ("returns the number of characters in {p0}", "returns the length of the string {p0}"),
        ["return len({p0})"], len, _word_arg(0),
    )  # fmt: skip


def _l2_list_builtin(rng: np.random.Generator) -> _PyFunc:
    """len / sum / max / min / sorted of a list of integers."""
    which = int(rng.integers(5))
    names, phrases, body, semantics, min_len = (
        (("list_length", "count_items", "num_elements", "size_of_list"),
         ("returns the number of elements in the list {p0}", "returns the length of the list {p0}"),
         "return len({p0})", len, 0),
        (("sum_list", "list_sum", "total", "add_all"),
         ("returns the sum of the numbers in the list {p0}", "returns the total of all elements of {p0}"),
         "return sum({p0})", sum, 0),
        (("max_of_list", "largest", "biggest", "find_max"),
         ("returns the largest number in the list {p0}", "returns the maximum of the non-empty list {p0}"),
         "return max({p0})", max, 1),
        (("min_of_list", "smallest", "find_min", "lowest"),
         ("returns the smallest number in the list {p0}", "returns the minimum of the non-empty list {p0}"),
         "return min({p0})", min, 1),
        (("sort_list", "sorted_list", "sort_ascending", "in_order"),
         ("returns a new list with the elements of {p0} sorted in increasing order",
          "returns the numbers of {p0} sorted from smallest to largest"),
         "return sorted({p0})", sorted, 0),
    )[which]  # fmt: skip
    return _task(rng, names, _LIST, phrases, [body], semantics, _list_arg(-20, 50, min_len, 8))


def _l2_first_last(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("first_element", "head", "get_first", "first_item"), _LIST,
            ("returns the first element of the non-empty list {p0}", "returns the item at index 0 of {p0}"),
            ["return {p0}[0]"], lambda xs: xs[0], _list_arg(-20, 50, 1, 8),
        )  # fmt: skip
    return _task(
        rng, ("last_element", "get_last", "last_item", "final_element"), _LIST,
        ("returns the last element of the non-empty list {p0}", "returns the final item of the list {p0}"),
        ["return {p0}[-1]"], lambda xs: xs[-1], _list_arg(-20, 50, 1, 8),
    )  # fmt: skip


def _l2_slice(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(1, 10))
    if rng.random() < 0.5:
        return _task(
            rng, ("first_{k}_chars", "prefix_{k}", "take_{k}", "head_{k}"), _STR,
            ("returns the first {k} characters of {p0}", "returns the string made of the first {k} characters of {p0}"),
            ["return {p0}[:{k}]"], lambda s: s[:k], _word_arg(k), k=k,
        )  # fmt: skip
    return _task(
        rng, ("last_{k}_chars", "suffix_{k}", "tail_{k}", "ending_{k}"), _STR,
        ("returns the last {k} characters of {p0}", "returns the string made of the last {k} characters of {p0}"),
        ["return {p0}[-{k}:]"], lambda s: s[-k:], _word_arg(k), k=k,
    )  # fmt: skip


def _l2_count_letter(rng: np.random.Generator) -> _PyFunc:
    c = pick(rng, _COUNT_LETTERS)
    alphabet = c + "".join(pick(rng, _LETTERS) for _ in range(3))
    return _task(
        rng, ("count_{c}", "count_letter_{c}", "how_many_{c}"), _STR,
        ("returns how many times the letter '{c}' appears in {p0}",
         "returns the number of occurrences of the letter '{c}' in {p0}"),
        ["return {p0}.count('{c}')"], lambda s: s.count(c),
        lambda r: (_letters(r, alphabet, 0, 9),), c=c,
    )  # fmt: skip


def _l2_starts_ends(rng: np.random.Generator) -> _PyFunc:
    c = pick(rng, _COUNT_LETTERS)
    ends = rng.random() < 0.5

    def sample(r: np.random.Generator) -> tuple[str]:
        """A word that, half of the time, is made to end (or start) with the letter c."""
        word = _word(r)
        if r.random() < 0.5:
            word = word[:-1] + c if ends else c + word[1:]
        return (word,)

    if not ends:
        return _task(
            rng, ("starts_with_{c}", "begins_with_{c}"), _STR,
            ("returns True if {p0} starts with the letter '{c}' and False otherwise",
             "checks whether {p0} begins with '{c}', returning True or False"),
            ["return {p0}.startswith('{c}')"], lambda s: s.startswith(c), sample, c=c,
        )  # fmt: skip
    return _task(
        rng, ("ends_with_{c}", "finishes_with_{c}"), _STR,
        ("returns True if {p0} ends with the letter '{c}' and False otherwise",
         "checks whether {p0} ends with '{c}', returning True or False"),
        ["return {p0}.endswith('{c}')"], lambda s: s.endswith(c), sample, c=c,
    )  # fmt: skip


def _l2_repeat(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 6))
    return _task(
        rng, ("repeat_{k}_times", "repeat_{k}", "copies_{k}"), _STR,
        ("returns {p0} repeated {k} times", "returns {k} copies of {p0} joined together"),
        ["return {p0} * {k}"], lambda s: s * k, _word_arg(1), k=k,
    )  # fmt: skip


# Level 3: a condition.


def _l3_parity(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("is_even", "check_even", "even"), _INT,
            ("returns True if {p0} is even and False otherwise", "checks whether {p0} is even, returning True or False"),
            ["return {p0} % 2 == 0"], lambda x: x % 2 == 0, _int_arg(-30, 60),
        )  # fmt: skip
    return _task(
        rng, ("is_odd", "check_odd", "odd"), _INT,
        ("returns True if {p0} is odd and False otherwise", "checks whether {p0} is odd, returning True or False"),
        ["return {p0} % 2 == 1"], lambda x: x % 2 == 1, _int_arg(-30, 60),
    )  # fmt: skip


def _l3_divisible(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(3, 13))
    return _task(
        rng, ("is_divisible_by_{k}", "is_multiple_of_{k}", "divisible_by_{k}"), _INT,
        ("returns True if {p0} is divisible by {k} and False otherwise",
         "checks whether {p0} is a multiple of {k}, returning True or False"),
        ["return {p0} % {k} == 0"], lambda x: x % k == 0,
        lambda r: (int(r.integers(0, 15)) * k if r.random() < 0.5 else int(r.integers(0, 15 * k)),), k=k,
    )  # fmt: skip


def _l3_compare(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(0, 100))
    if rng.random() < 0.5:
        return _task(
            rng, ("is_greater_than_{k}", "above_{k}", "exceeds_{k}"), _INT,
            ("returns True if {p0} is greater than {k} and False otherwise",
             "checks whether {p0} is strictly larger than {k}, returning True or False"),
            ["return {p0} > {k}"], lambda x: x > k, _int_arg(k - 10, k + 10), k=k,
        )  # fmt: skip
    return _task(
        rng, ("is_less_than_{k}", "below_{k}", "under_{k}"), _INT,
        ("returns True if {p0} is less than {k} and False otherwise",
         "checks whether {p0} is strictly smaller than {k}, returning True or False"),
        ["return {p0} < {k}"], lambda x: x < k, _int_arg(k - 10, k + 10), k=k,
    )  # fmt: skip


def _l3_absolute(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("absolute", "abs_value", "magnitude", "my_abs"), _INT,
        ("returns the absolute value of {p0} without using abs()",
         "returns {p0} if it is not negative and -{p0} otherwise (do not use abs())"),
        ["if {p0} < 0:", "    return -{p0}", "return {p0}"], abs, _int_arg(-50, 50),
    )  # fmt: skip


def _l3_clamp(rng: np.random.Generator) -> _PyFunc:
    low = int(rng.integers(-10, 30))
    high = low + int(rng.integers(5, 41))
    return _task(
        rng, ("clamp", "clip", "limit", "bound"), _INT,
        ("returns {p0} clamped to the range {low} to {high}: {low} if {p0} is below {low}, "
         "{high} if it is above {high}, and {p0} otherwise",
         "returns {p0} limited to lie between {low} and {high} (inclusive)"),
        ["if {p0} < {low}:", "    return {low}", "if {p0} > {high}:", "    return {high}", "return {p0}"],
        lambda x: min(max(x, low), high), _int_arg(low - 10, high + 10), low=low, high=high,
    )  # fmt: skip


def _l3_larger_smaller(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("larger", "max_of_two", "bigger", "greater_of"), _PAIR,
            ("returns the larger of {p0} and {p1} without using max()",
             "returns whichever of {p0} and {p1} is bigger (do not use max())"),
            ["if {p0} > {p1}:", "    return {p0}", "return {p1}"], max, _int_pair(-30, 60),
        )  # fmt: skip
    return _task(
        rng, ("smaller", "min_of_two", "lesser", "lower_of"), _PAIR,
        ("returns the smaller of {p0} and {p1} without using min()",
         "returns whichever of {p0} and {p1} is smaller (do not use min())"),
        ["if {p0} < {p1}:", "    return {p0}", "return {p1}"], min, _int_pair(-30, 60),
    )  # fmt: skip


def _l3_sign(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("sign", "sign_of", "signum"), _INT,
            ("returns 1 if {p0} is positive, -1 if it is negative and 0 if it is zero",),
            ["if {p0} > 0:", "    return 1", "if {p0} < 0:", "    return -1", "return 0"],
            lambda x: (x > 0) - (x < 0), _int_arg(-5, 5),
        )  # fmt: skip
    return _task(
        rng, ("relu", "positive_part", "non_negative"), _INT,
        ("returns {p0} if it is positive and 0 otherwise", "returns {p0}, or 0 when {p0} is negative"),
        ["if {p0} > 0:", "    return {p0}", "return 0"], lambda x: max(x, 0), _int_arg(-30, 30),
    )  # fmt: skip


def _l3_labels(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("parity", "even_or_odd", "parity_word"), _INT,
            ("returns the string 'even' if {p0} is even and 'odd' otherwise",),
            ["if {p0} % 2 == 0:", "    return 'even'", "return 'odd'"],
            lambda x: "even" if x % 2 == 0 else "odd", _int_arg(-30, 60),
        )  # fmt: skip
    k = int(rng.integers(30, 91))
    return _task(
        rng, ("grade", "pass_or_fail", "check_score", "result"), (("score",), ("points",), ("mark",)),
        ("returns 'pass' if {p0} is at least {k} and 'fail' otherwise",
         "returns the string 'pass' when {p0} >= {k} and the string 'fail' when it is lower"),
        ["if {p0} >= {k}:", "    return 'pass'", "return 'fail'"],
        lambda x: "pass" if x >= k else "fail", _int_arg(0, 100), k=k,
    )  # fmt: skip


# Level 4: a loop or an accumulation.


def _l4_sum_range(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("sum_to_n", "sum_up_to", "triangular", "sum_first_n"), _NAT,
            ("returns the sum of the integers from 1 to {p0} (0 when {p0} is 0)",
             "returns 1 + 2 + ... + {p0}, using a loop"),
            ["total = 0", "for i in range(1, {p0} + 1):", "    total += i", "return total"],
            lambda n: n * (n + 1) // 2, _int_arg(0, 40),
        )  # fmt: skip
    return _task(
        rng, ("sum_of_squares_to", "square_sum_up_to", "squares_total"), _NAT,
        ("returns the sum of the squares of the integers from 1 to {p0}",
         "returns 1*1 + 2*2 + ... + {p0}*{p0}, using a loop"),
        ["total = 0", "for i in range(1, {p0} + 1):", "    total += i * i", "return total"],
        lambda n: sum(i * i for i in range(1, n + 1)), _int_arg(0, 25),
    )  # fmt: skip


def _l4_factorial(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("factorial", "fact", "product_up_to"), _NAT,
        ("returns the factorial of {p0} (the product 1 * 2 * ... * {p0}; the factorial of 0 is 1)",
         "returns {p0}! computed with a loop"),
        ["result = 1", "for i in range(2, {p0} + 1):", "    result *= i", "return result"],
        lambda n: int(np.prod(range(1, n + 1), dtype=object)) if n else 1, _int_arg(0, 12),
    )  # fmt: skip


def _l4_product(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("product", "list_product", "multiply_all", "product_of"), _LIST,
        ("returns the product of all numbers in the list {p0} (1 for an empty list)",
         "multiplies together all the elements of {p0} and returns the result (1 if {p0} is empty)"),
        ["result = 1", "for v in {p0}:", "    result *= v", "return result"],
        lambda xs: int(np.prod(xs, dtype=object)) if xs else 1, _list_arg(-5, 6, 0, 5),
    )  # fmt: skip


def _l4_count_vowels(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("count_vowels", "vowel_count", "num_vowels"), _STR,
        ("returns the number of vowels (a, e, i, o, u) in the lowercase string {p0}",
         "counts how many characters of {p0} are one of 'a', 'e', 'i', 'o', 'u'"),
        ["count = 0", "for ch in {p0}:", "    if ch in 'aeiou':", "        count += 1", "return count"],
        lambda s: sum(ch in _VOWELS for ch in s), lambda r: (_sentence(r, 1, 3),),
    )  # fmt: skip


def _l4_count_value(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        v = int(rng.integers(0, 10))
        return _task(
            rng, ("count_{v}", "count_{v}s", "occurrences_of_{v}"), _LIST,
            ("returns how many times the number {v} appears in the list {p0}",
             "counts the elements of {p0} that are equal to {v}"),
            ["count = 0", "for item in {p0}:", "    if item == {v}:", "        count += 1", "return count"],
            lambda xs: xs.count(v), _list_arg(max(v - 3, 0), v + 3, 0, 9), v=v,
        )  # fmt: skip
    return _task(
        rng, ("count_occurrences", "count_value", "occurrences"), (("nums", "target"), ("lst", "x"), ("items", "value")),
        ("returns how many times {p1} appears in the list {p0}", "counts the elements of {p0} equal to {p1}"),
        ["count = 0", "for item in {p0}:", "    if item == {p1}:", "        count += 1", "return count"],
        lambda xs, t: xs.count(t),
        lambda r: (_int_list(r, 0, 5, 0, 9), int(r.integers(0, 6))),
    )  # fmt: skip


def _l4_digits(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("digit_sum", "sum_digits", "sum_of_digits"), _NAT,
            ("returns the sum of the decimal digits of the non-negative integer {p0}",
             "adds up the digits of {p0} (which is at least 0) and returns the total"),
            ["total = 0", "while {p0} > 0:", "    total += {p0} % 10", "    {p0} //= 10", "return total"],
            lambda n: sum(int(d) for d in str(n)), _int_arg(0, 99999),
        )  # fmt: skip
    return _task(
        rng, ("count_digits", "num_digits", "digit_count"), _NAT,
        ("returns the number of decimal digits of the non-negative integer {p0} (0 has one digit)",),
        ["return len(str({p0}))"], lambda n: len(str(n)), lambda r: (int(10 ** r.uniform(0, 7)) - 1,),
    )  # fmt: skip


def _l4_count_above(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(0, 50))
    return _task(
        rng, ("count_above_{k}", "count_greater_than_{k}", "num_over_{k}"), _LIST,
        ("returns how many numbers in the list {p0} are greater than {k}",
         "counts the elements of {p0} that are strictly larger than {k}"),
        ["count = 0", "for v in {p0}:", "    if v > {k}:", "        count += 1", "return count"],
        lambda xs: sum(v > k for v in xs), _list_arg(k - 20, k + 20, 0, 8), k=k,
    )  # fmt: skip


def _l4_power(rng: np.random.Generator) -> _PyFunc:
    return _task(
        rng, ("power", "pow_int", "raise_to"), (("base", "exp"), ("a", "b"), ("x", "n")),
        ("returns {p0} raised to the power {p1} (with {p1} >= 0), using a loop instead of **",
         "multiplies {p0} by itself {p1} times (1 when {p1} is 0) and returns the result"),
        ["result = 1", "for _ in range({p1}):", "    result *= {p0}", "return result"],
        lambda a, b: a**b, lambda r: (int(r.integers(-5, 10)), int(r.integers(0, 7))),
    )  # fmt: skip


# Level 5: two steps combined.


def _l5_filter_sum(rng: np.random.Generator) -> _PyFunc:
    which = int(rng.integers(3))
    if which == 0:
        return _task(
            rng, ("sum_evens", "sum_of_even", "even_sum"), _LIST,
            ("returns the sum of the even numbers in the list {p0}", "adds up the even elements of {p0}"),
            ["return sum(v for v in {p0} if v % 2 == 0)"],
            lambda xs: sum(v for v in xs if v % 2 == 0), _list_arg(-20, 50, 0, 8),
        )  # fmt: skip
    if which == 1:
        return _task(
            rng, ("sum_odds", "sum_of_odd", "odd_sum"), _LIST,
            ("returns the sum of the odd numbers in the list {p0}", "adds up the odd elements of {p0}"),
            ["return sum(v for v in {p0} if v % 2 == 1)"],
            lambda xs: sum(v for v in xs if v % 2 == 1), _list_arg(-20, 50, 0, 8),
        )  # fmt: skip
    k = int(rng.integers(0, 50))
    return _task(
        rng, ("sum_above_{k}", "sum_greater_than_{k}", "total_over_{k}"), _LIST,
        ("returns the sum of the numbers in the list {p0} that are greater than {k}",
         "adds up the elements of {p0} that are strictly larger than {k}"),
        ["return sum(v for v in {p0} if v > {k})"],
        lambda xs: sum(v for v in xs if v > k), _list_arg(k - 20, k + 20, 0, 8), k=k,
    )  # fmt: skip


def _l5_filter_map(rng: np.random.Generator) -> _PyFunc:
    odd = rng.random() < 0.5
    if rng.random() < 0.5:
        kind, rest = ("odd", 1) if odd else ("even", 0)
        return _task(
            rng, ("square_{kind}s", "{kind}_squares", "squares_of_{kind}"), _LIST,
            ("returns a list of the squares of the {kind} numbers in {p0}, in their original order",
             "keeps the {kind} elements of {p0} and returns their squares as a list"),
            ["return [v * v for v in {p0} if v % 2 == {rest}]"],
            lambda xs: [v * v for v in xs if v % 2 == rest], _list_arg(-10, 20, 0, 8), kind=kind, rest=rest,
        )  # fmt: skip
    k = int(rng.integers(2, 11))
    kind, rest = ("odd", 1) if odd else ("even", 0)
    return _task(
        rng, ("scale_{kind}s_by_{k}", "{kind}s_times_{k}", "multiply_{kind}s_{k}"), _LIST,
        ("returns a list of the {kind} numbers in {p0}, each multiplied by {k}, in their original order",
         "keeps the {kind} elements of {p0} and returns them multiplied by {k} as a list"),
        ["return [v * {k} for v in {p0} if v % 2 == {rest}]"],
        lambda xs: [v * k for v in xs if v % 2 == rest], _list_arg(-10, 20, 0, 8), kind=kind, rest=rest, k=k,
    )  # fmt: skip


def _l5_words(rng: np.random.Generator) -> _PyFunc:
    which = int(rng.integers(3))
    if which == 0:
        return _task(
            rng, ("reverse_words", "reverse_each_word", "flip_words"), _SENTENCE,
            ("returns {p0} with each word reversed, keeping the words in their order "
             "(words are separated by single spaces)",
             "reverses every word of {p0} (words are separated by single spaces) but not the order of the words"),
            ["return ' '.join(word[::-1] for word in {p0}.split(' '))"],
            lambda s: " ".join(w[::-1] for w in s.split(" ")), _sentence_arg(1, 5),
        )  # fmt: skip
    if which == 1:
        return _task(
            rng, ("capitalize_words", "title_words", "cap_each_word"), _SENTENCE,
            ("returns {p0} with the first letter of each word in upper case "
             "(the words are lowercase and separated by single spaces)",),
            ["return ' '.join(word[0].upper() + word[1:] for word in {p0}.split(' '))"],
            lambda s: " ".join(w[0].upper() + w[1:] for w in s.split(" ")), _sentence_arg(1, 5),
        )  # fmt: skip
    return _task(
        rng, ("word_lengths", "lengths_of_words", "measure_words"), _SENTENCE,
        ("returns a list of the lengths of the words in {p0} (words are separated by single spaces)",),
        ["return [len(word) for word in {p0}.split(' ')]"],
        lambda s: [len(w) for w in s.split(" ")], _sentence_arg(1, 5),
    )  # fmt: skip


def _l5_count_long_words(rng: np.random.Generator) -> _PyFunc:
    k = int(rng.integers(2, 6))  # the longest words of _WORDS have 6 letters: k = 6 would always give 0
    return _task(
        rng, ("count_long_words", "count_words_longer_than_{k}", "long_word_count"), _SENTENCE,
        ("returns how many words in {p0} have more than {k} letters (words are separated by single spaces)",
         "splits {p0} into words at spaces and counts the words longer than {k} characters"),
        ["return sum(1 for word in {p0}.split() if len(word) > {k})"],
        lambda s: sum(len(w) > k for w in s.split()), _sentence_arg(1, 6), k=k,
    )  # fmt: skip


def _l5_list_stats(rng: np.random.Generator) -> _PyFunc:
    if rng.random() < 0.5:
        return _task(
            rng, ("spread", "max_minus_min", "value_range"), _LIST,
            ("returns the difference between the largest and the smallest number in the non-empty list {p0}",),
            ["return max({p0}) - min({p0})"], lambda xs: max(xs) - min(xs), _list_arg(-20, 50, 1, 8),
        )  # fmt: skip
    return _task(
        rng, ("sum_of_squares", "square_sum", "squared_total"), _LIST,
        ("returns the sum of the squares of the numbers in the list {p0}",
         "squares every element of {p0} and returns the total"),
        ["return sum(v * v for v in {p0})"], lambda xs: sum(v * v for v in xs), _list_arg(-10, 10, 0, 6),
    )  # fmt: skip


_PYFUNC_TEMPLATES: dict[int, tuple[Callable[[np.random.Generator], _PyFunc], ...]] = {
    1: (_l1_add, _l1_subtract, _l1_multiply, _l1_from_constant, _l1_power, _l1_negate,
        _l1_floor_divide, _l1_remainder),
    2: (_l2_reverse, _l2_upper, _l2_lower, _l2_string_length, _l2_list_builtin, _l2_first_last,
        _l2_slice, _l2_count_letter, _l2_starts_ends, _l2_repeat),
    3: (_l3_parity, _l3_divisible, _l3_compare, _l3_absolute, _l3_clamp, _l3_larger_smaller,
        _l3_sign, _l3_labels),
    4: (_l4_sum_range, _l4_factorial, _l4_product, _l4_count_vowels, _l4_count_value, _l4_digits,
        _l4_count_above, _l4_power),
    5: (_l5_filter_sum, _l5_filter_map, _l5_words, _l5_count_long_words, _l5_list_stats),
}  # fmt: skip
PYFUNC_LEVELS = tuple(sorted(_PYFUNC_TEMPLATES))


def _draw_pyfunc(level: int, rng: np.random.Generator) -> _PyFunc:
    templates = _PYFUNC_TEMPLATES[level]
    return templates[int(rng.integers(len(templates)))](rng)


def _pyfunc_frame(problems: list[_PyFunc], levels: list[int], split: str) -> pd.DataFrame:
    records = [
        {
            "id": f"pyfunc-{split}-{index:05d}",
            "prompt": paper_prompt(problem.description, problem.asserts[0]),
            "answer": CodeSpec(problem.entry_point, "\n".join(problem.asserts) + "\n", "").to_answer(),
            "solution": problem.solution,
            "source": "pyfunc",
            "level": level,
        }
        for index, (problem, level) in enumerate(zip(problems, levels, strict=True))
    ]
    return to_frame(records, f"pyfunc[{split}]")


def generate_pyfunc(
    n_train: int, n_test: int, levels: Sequence[int], seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Generate (train, test) small Python-function problems, shared equally among `levels` (1-5).

    1: one-line arithmetic on one int (add_7, times_3, square, x % k, ...)
    2: one string/list builtin (reverse, upper, len, sum/max/min, first element, s[:k], ...)
    3: a condition (is_even, abs without abs(), clamp, larger of two, sign, ...)
    4: a loop or accumulation (sum 1..n, factorial, count vowels, product, digit sum, ...)
    5: two steps (sum of the evens, squares of the odd elements, reverse each word, ...)
    Example (level 1): description "Write a function `add_7(x)` that returns x plus 7.", prompt
    ``paper_prompt(description, "assert add_7(2) == 9")``, solution "def add_7(x):\\n    return x + 7\\n",
    answer a code spec (``code_spec``, prefix "") whose tests are 5-8 ``assert add_7(...) == ...``
    lines, the first of them the one in the prompt, on seeded inputs whose expected values are
    computed from the template's semantics; never all the same value.
    Same guarantees as ``dashrl.data.arith.generate_arith`` (both use ``dashrl.data.generate.generate_split_by_levels``):
    one random stream per level, ``default_rng([seed, level])``, test drawn before train (the test
    set depends only on seed, levels and n_test), shares differing by at most one, rows shuffled,
    task descriptions (hence prompts) unique within and across splits.
    """
    return generate_split_by_levels(
        n_train,
        n_test,
        levels,
        seed,
        valid_levels=PYFUNC_LEVELS,
        draw=_draw_pyfunc,
        text=lambda problem: problem.description,
        frame=_pyfunc_frame,
        what="pyfunc",
    )
