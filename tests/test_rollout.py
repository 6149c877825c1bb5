"""The HF rollout engine on a tiny model built from a config."""

from __future__ import annotations

import pytest
import torch

from dashrl.models import load_model, load_tokenizer, render_prompt
from dashrl.params import PromptParams
from dashrl.rollout import HFEngine, SamplingConfig, derive_seed

PROMPT = PromptParams(format="chat", instruction="Box it.", system_prompt=None)
PROBLEMS = ["What is 1+1?", "Tom has 3 apples and eats one. How many are left?", "2*3?", "Add 10 and 15."]


@pytest.fixture(scope="module")
def engine_parts(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    model = load_model(tiny_model_dir)
    prompts = [render_prompt(p, tokenizer, PROMPT) for p in PROBLEMS]
    return model, tokenizer, prompts


def texts(results):
    return [[c.text for c in group] for group in results]


def test_shapes_n_per_prompt_and_finish_reasons(engine_parts):
    model, tokenizer, prompts = engine_parts
    engine = HFEngine(model, tokenizer, max_batch_rows=6)
    results = engine.generate(prompts, 3, SamplingConfig(temperature=1.0, max_new_tokens=10, seed=1))
    assert len(results) == 4 and all(len(group) == 3 for group in results)
    for group in results:
        for c in group:
            assert 1 <= c.n_tokens <= 10
            if c.finish_reason == "stop":
                assert c.token_ids[-1] == tokenizer.eos_token_id
                assert tokenizer.eos_token_id not in c.token_ids[:-1]
            else:
                assert c.n_tokens == 10 and tokenizer.eos_token_id not in c.token_ids
            assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
    stats = engine.last_stats
    assert stats.generated_tokens == sum(c.n_tokens for g in results for c in g)
    assert stats.engine_calls == 2  # 6 rows per chunk / 3 samples = 2 prompts per chunk
    assert stats.padded_token_slots >= stats.generated_tokens


def test_same_seed_same_output_other_seed_other_output(engine_parts):
    model, tokenizer, prompts = engine_parts
    engine = HFEngine(model, tokenizer, max_batch_rows=8)
    a = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_new_tokens=12, seed=7))
    b = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_new_tokens=12, seed=7))
    c = engine.generate(prompts, 2, SamplingConfig(temperature=1.0, max_new_tokens=12, seed=8))
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


def test_generate_leaves_the_global_rng_alone(engine_parts):
    model, tokenizer, prompts = engine_parts
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    HFEngine(model, tokenizer).generate(prompts[:1], 2, SamplingConfig(temperature=1.0, max_new_tokens=4, seed=0))
    assert torch.equal(torch.rand(3), expected)


def test_greedy_is_independent_of_batching_and_order(engine_parts):
    model, tokenizer, prompts = engine_parts
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    together = HFEngine(model, tokenizer, max_batch_rows=16).generate(prompts, 1, greedy)
    one_by_one = [HFEngine(model, tokenizer, max_batch_rows=1).generate([p], 1, greedy)[0] for p in prompts]
    # Left padding must not change what a prompt produces, and results come back in input order.
    assert [g[0].token_ids for g in together] == [g[0].token_ids for g in one_by_one]


def test_greedy_with_several_samples_is_refused(engine_parts):
    model, tokenizer, prompts = engine_parts
    with pytest.raises(ValueError, match="greedy decoding"):
        HFEngine(model, tokenizer).generate(prompts, 2, SamplingConfig(temperature=0.0))


def test_top_k_one_equals_greedy(engine_parts):
    model, tokenizer, prompts = engine_parts
    engine = HFEngine(model, tokenizer, max_batch_rows=16)
    greedy = engine.generate(prompts, 1, SamplingConfig(temperature=0.0, max_new_tokens=8))
    top1 = engine.generate(prompts, 1, SamplingConfig(temperature=1.3, top_k=1, max_new_tokens=8, seed=3))
    assert texts(greedy) == texts(top1)


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(0, 1) == derive_seed(0, 1)
    assert len({derive_seed(0, i) for i in range(100)}) == 100
    assert 0 <= derive_seed(2**40, 5) < 2**63
