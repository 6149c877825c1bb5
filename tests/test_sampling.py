"""The shared sampling distribution: same masks as HF's warpers, draws that follow it."""

from __future__ import annotations

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from dashrl.algo.sampling import sample_tokens, sampling_logprobs
from dashrl.engines.base import SamplingConfig
from dashrl.engines.hf import HFEngine
from dashrl.models import load_model, load_tokenizer


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (5, 1.0), (0, 0.9), (7, 0.8), (1, 1.0)])
def test_distribution_matches_hf_warpers(top_k, top_p):
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3  # (B, V)
    temperature = 0.7
    expected = logits / temperature
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = sampling_logprobs(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(ours), torch.isinf(expected))
    assert torch.allclose(ours.exp(), expected.softmax(-1), atol=1e-6)


def test_draws_follow_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -9.0]]).repeat(20000, 1)  # (B, V)
    tokens, logprobs = sample_tokens(logits, 0.8, 0, 0.95, torch.Generator().manual_seed(1))
    probs = sampling_logprobs(logits[:1], 0.8, 0, 0.95).exp()[0]
    freq = torch.bincount(tokens, minlength=5).float() / len(tokens)
    assert torch.allclose(freq, probs, atol=0.01)  # 20k draws: standard error < 0.004
    assert freq[4] == 0  # outside the top-p set: never drawn
    assert torch.allclose(logprobs, probs.log()[tokens])


def test_greedy_tokens_and_logprobs():
    logits = torch.tensor([[0.0, 3.0, 1.0], [5.0, 0.0, 0.0]])
    tokens, logprobs = sample_tokens(logits, 0.0, 0, 1.0, None)
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(logprobs, logits.log_softmax(-1)[[0, 1], [1, 0]])


def test_temperature_must_be_positive_for_a_distribution():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        sampling_logprobs(torch.zeros(1, 3), 0.0)


def test_engine_greedy_equals_hf_generate(tiny_model_dir):
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    prompts = ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "abc", "a longer prompt, 1 + 2 = ?"]
    ours = HFEngine(model, tokenizer, max_batch_rows=8).generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=10))
    for prompt, (completion,) in zip(prompts, ours, strict=True):
        ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
        config = GenerationConfig(do_sample=False, max_new_tokens=10, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        reference = model.generate(ids, generation_config=config)[0, ids.shape[1]:].tolist()
        if tokenizer.eos_token_id in reference:
            reference = reference[: reference.index(tokenizer.eos_token_id) + 1]
        assert completion.token_ids == reference


@pytest.mark.parametrize("prompts", [
    ["short", "a somewhat longer prompt"],
    # a shared prefix (prefilled once), different suffix lengths, one prompt equal to the prefix + 1 token
    ["<|im_start|>system\nBe brief.<|im_end|>\nQ: 1+1?", "<|im_start|>system\nBe brief.<|im_end|>\nQ: what is 12 * 3?",
     "<|im_start|>system\nBe brief.<|im_end|>\nQ"],
])
def test_engine_logprobs_equal_a_full_forward(tiny_model_dir, prompts):
    """The behaviour log-probs recorded while decoding (shared prefill, KV cache, shrinking batch)
    equal those of one forward pass over prompt + completion under the same distribution."""
    tokenizer, model = load_tokenizer(tiny_model_dir), load_model(tiny_model_dir)
    sampling = SamplingConfig(temperature=0.9, top_k=20, top_p=0.9, max_new_tokens=12, seed=4)
    results = HFEngine(model, tokenizer, max_batch_rows=8).generate(prompts, 3, sampling)
    for prompt, group in zip(prompts, results, strict=True):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in group:
            ids = torch.tensor([prompt_ids + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (Tg, V)
            logp = sampling_logprobs(logits, 0.9, 20, 0.9).gather(-1, torch.tensor(c.token_ids)[:, None]).squeeze(-1)
            assert torch.allclose(logp, torch.tensor(c.logprobs), atol=1e-4)
