"""Evaluation metrics: pass@k by hand, and evaluate() end to end with a scripted engine."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from dashrl.config.params import GraderParams, PromptParams
from dashrl.engines.base import Completion, GenerationStats, SamplingConfig
from dashrl.evaluation import evaluate, pass_at_k, pass_k_values

PROMPT = PromptParams(format="chat", instruction="Box it.", system_prompt=None)
GRADER = GraderParams(require_box=False, timeout_s=5.0)


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(4, 1, 1, 0.25), (4, 1, 2, 0.5), (4, 0, 2, 0.0), (4, 3, 2, 1.0), (5, 2, 3, 1 - 1 / 10), (8, 8, 8, 1.0)],
)
def test_pass_at_k_by_hand(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)


def test_pass_at_k_equals_the_combinatorial_definition():
    # 1 - P(all k drawn without replacement are wrong), computed as a product.
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                p_all_wrong = math.prod((n - c - i) / (n - i) for i in range(k)) if n - c >= k else 0.0
                assert pass_at_k(n, c, k) == pytest.approx(1 - p_all_wrong)


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="n=4 c=5 k=1"):
        pass_at_k(4, 5, 1)


def test_pass_k_values():
    assert pass_k_values(1) == [1]
    assert pass_k_values(8) == [1, 2, 4, 8]
    assert pass_k_values(6) == [1, 2, 4, 6]


class ScriptedEngine:
    """Returns given completion texts: ``script[i][s]`` for problem i, sample s."""

    name = "scripted"

    def __init__(self, script: list[list[tuple[str, str]]]):
        self.script = script
        self.last_stats = GenerationStats()
        self.seen_prompts: list[str] = []

    def generate(self, prompts, n, sampling):
        self.seen_prompts = list(prompts)
        out = [[Completion(text=t, token_ids=list(range(len(t.split()))), finish_reason=r) for t, r in row[:n]] for row in self.script]
        self.last_stats = GenerationStats(wall_s=2.0, generated_tokens=sum(c.n_tokens for row in out for c in row), padded_token_slots=40)
        return out


class WordTokenizer:
    chat_template = "unused"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        return "USER: " + messages[-1]["content"] + "\nASSISTANT:"


def test_evaluate_metrics_from_scripted_completions():
    problems = pd.DataFrame(
        {
            "id": ["p0", "p1", "p2"],
            "prompt": ["1+1?", "2+2?", "3+3?"],
            "answer": ["2", "4", "6"],
            "solution": ["", "", ""],
            "source": ["arith", "arith", "arith"],
            "level": [1, 1, 2],
        }
    )
    script = [
        [("so \\boxed{2}", "stop"), ("it is 3", "stop")],  # right, wrong
        [("The answer is: 5", "length"), ("\\boxed{4}", "stop")],  # wrong (truncated), right
        [("no idea", "length"), ("\\boxed{7}", "stop")],  # no answer, wrong
    ]
    engine = ScriptedEngine(script)
    rows, metrics = evaluate(
        problems, engine=engine, tokenizer=WordTokenizer(), prompt=PROMPT, grader=GRADER,
        sampling=SamplingConfig(temperature=0.7), samples_per_problem=2,
    )
    assert engine.seen_prompts[0] == "USER: 1+1?\nBox it.\nASSISTANT:"
    assert len(rows) == 6
    assert rows["reward"].tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert rows["grade_status"].tolist() == ["correct", "wrong", "wrong", "correct", "no_answer", "wrong"]
    assert metrics["accuracy"] == pytest.approx(1 / 3)  # sample 0 only: the paper's metric
    assert metrics["mean@2"] == pytest.approx(2 / 6)
    assert metrics["pass@1"] == pytest.approx(2 / 6)
    assert metrics["pass@2"] == pytest.approx(2 / 3)
    assert metrics["boxed_rate"] == pytest.approx(3 / 6)
    assert metrics["truncation_rate"] == pytest.approx(2 / 6)
    assert metrics["accuracy_by_level"] == {"1": 0.5, "2": 0.0}
    assert metrics["grader_status_counts"]["no_answer"] == 1
    assert metrics["generation_tokens_per_s"] == pytest.approx(rows["tokens"].sum() / 2.0)


def test_evaluate_rejects_an_empty_problem_set():
    empty = pd.DataFrame(columns=["id", "prompt", "answer", "solution", "source", "level"])
    with pytest.raises(ValueError, match="no problems"):
        evaluate(empty, engine=ScriptedEngine([]), tokenizer=WordTokenizer(), prompt=PROMPT, grader=GRADER,
                 sampling=SamplingConfig(temperature=0.7), samples_per_problem=1)
