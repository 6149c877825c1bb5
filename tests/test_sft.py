"""SFT on a tiny model: completion-only loss, learning, examples from references and rejection sampling."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from dashrl.algo.batching import pack_sequences
from dashrl.config.params import GraderParams, PromptParams
from dashrl.engines.base import Completion, GenerationStats, SamplingConfig
from dashrl.models import load_model, load_tokenizer
from dashrl.sft import (
    Example,
    reference_examples,
    rejection_sampled_examples,
    sft_train,
    tokenize,
)

PROMPT = PromptParams(format="chat", instruction="Box it.", system_prompt=None)
PROBLEMS = pd.DataFrame({
    "id": ["a", "b"], "prompt": ["1+1?", "2+3?"], "answer": ["2", "5"],
    "solution": ["1 + 1 = 2. The answer is \\boxed{2}.", "2 + 3 = 5. The answer is \\boxed{5}."],
    "source": ["arith", "arith"], "level": [1, 1],
})


def test_reference_examples_use_the_rl_prompt_and_the_solution(tiny_tokenizer):
    examples = reference_examples(PROBLEMS, tiny_tokenizer, PROMPT)
    assert [e.completion for e in examples] == list(PROBLEMS["solution"])
    assert examples[0].prompt.endswith("<|im_start|>user\n1+1?\nBox it.<|im_end|>\n<|im_start|>assistant\n")


def test_loss_is_on_completion_tokens_only(tiny_model_dir):
    """Changing the prompt changes the context, but the loss counts only completion tokens (+ eos)."""
    tokenizer = load_tokenizer(tiny_model_dir)
    items = tokenize([Example("a", "some prompt", "xyz")], tokenizer, max_length=64)
    assert items[0].completion_ids == tokenizer("xyz", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    packed = pack_sequences([items[0].prompt_ids], [items[0].completion_ids], tokenizer.pad_token_id, torch.device("cpu"))
    assert packed.completion_mask.sum() == len(items[0].completion_ids) == packed.completion_ids.shape[1]
    assert packed.attention_mask.sum() == len(items[0].prompt_ids) + len(items[0].completion_ids)


def test_truncation_and_a_prompt_longer_than_max_length(tiny_tokenizer):
    items = tokenize([Example("a", "ab", "cdefgh")], tiny_tokenizer, max_length=5)
    assert len(items[0].prompt_ids) + len(items[0].completion_ids) == 5
    with pytest.raises(ValueError, match="problem a: prompt is 2 tokens, max_length is 2"):
        tokenize([Example("a", "ab", "cd")], tiny_tokenizer, max_length=2)


def test_sft_lowers_the_loss_and_is_seeded(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    examples = reference_examples(PROBLEMS, tokenizer, PROMPT)
    runs = []
    for _ in range(2):
        model = load_model(tiny_model_dir)
        history = sft_train(model, tokenizer, examples, lr=3e-3, epochs=12, batch_size=2, max_length=256, seed=0)
        runs.append((history, model))
    losses = [h["loss"] for h in runs[0][0]]
    assert len(losses) == 12 and losses[-1] < 0.6 * losses[0]  # 5.6 -> 3.1 on this tiny model
    assert [h["loss"] for h in runs[1][0]] == losses  # same seed, same run
    for a, b in zip(runs[0][1].parameters(), runs[1][1].parameters(), strict=True):
        assert torch.equal(a, b)


class ScriptedEngine:
    name = "scripted"

    def __init__(self, texts):
        self.texts, self.last_stats = texts, GenerationStats()

    def generate(self, prompts, n, sampling):
        return [[Completion(text=t, token_ids=[1], finish_reason=r) for t, r in row[:n]] for row in self.texts]


def test_rejection_sampling_keeps_correct_finished_distinct_samples(tiny_tokenizer):
    engine = ScriptedEngine([
        [("so \\boxed{2}", "stop"), ("so \\boxed{2}", "stop"), ("it is 3", "stop")],  # duplicate kept once
        [("The answer is: 5", "length"), ("The answer is: 5", "stop"), ("\\boxed{6}", "stop")],  # truncated dropped
    ])
    examples = rejection_sampled_examples(
        PROBLEMS, engine=engine, tokenizer=tiny_tokenizer, prompt=PROMPT,
        grader=GraderParams(require_box=False, timeout_s=5.0), sampling=SamplingConfig(temperature=0.7), samples_per_problem=3,
    )
    assert [(e.problem_id, e.completion) for e in examples] == [("a", "so \\boxed{2}"), ("b", "The answer is: 5")]


def test_no_examples_is_an_error(tiny_model_dir):
    with pytest.raises(ValueError, match="no SFT examples"):
        sft_train(load_model(tiny_model_dir), load_tokenizer(tiny_model_dir), [], lr=1e-3, epochs=1, batch_size=2,
                  max_length=64, seed=0)
