"""The HF rollout engine on a tiny model built from a config."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dashrl.config.params import PromptParams
from dashrl.engines.base import Completion, GenerationStats, SamplingConfig, ShardedEngine
from dashrl.engines.hf import HFEngine
from dashrl.infra.seeds import derive_seed
from dashrl.models import load_model, load_tokenizer, render_prompt

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


# --- several engines sharing one rollout batch


class RecordingEngine:
    """Returns one fake completion per sample naming the engine, prompt and seed; records calls."""

    name = "fake"

    def __init__(self, tag: str, fail: bool = False):
        self.tag, self.fail = tag, fail
        self.calls: list[tuple[list[str], int, int]] = []
        self.synced: list[object] = []
        self.last_stats = GenerationStats()

    def generate(self, prompts, n, sampling):
        if self.fail:
            raise RuntimeError(f"engine {self.tag} failed")
        self.calls.append((list(prompts), n, sampling.seed))
        self.last_stats = GenerationStats(wall_s=0.5, generated_tokens=10 * len(prompts) * n,
                                          padded_token_slots=12 * len(prompts) * n, engine_calls=1)
        return [[Completion(text=f"{self.tag}:{p}:{j}", token_ids=[j], finish_reason="stop") for j in range(n)]
                for p in prompts]

    def sync_weights(self, policy):
        self.synced.append(policy)


def test_sharded_engine_gives_each_engine_contiguous_whole_prompts():
    engines = [RecordingEngine("a"), RecordingEngine("b"), RecordingEngine("c")]
    sharded = ShardedEngine(engines)
    assert [list(r) for r in sharded.shards(5)] == [[0, 1], [2, 3], [4]]
    assert [list(r) for r in sharded.shards(1)] == [[0], [], []]
    prompts = ["p0", "p1", "p2", "p3", "p4"]
    out = sharded.generate(prompts, 2, SamplingConfig(temperature=1.0, seed=9))
    # Input order, n per prompt, each prompt's samples from one engine.
    assert [[c.text for c in row] for row in out] == [[f"{tag}:{p}:{j}" for j in range(2)]
                                                      for tag, p in zip("aabbc", prompts, strict=True)]
    assert [e.calls for e in engines] == [[(["p0", "p1"], 2, 9)], [(["p2", "p3"], 2, derive_seed(9, 1))],
                                          [(["p4"], 2, derive_seed(9, 2))]]
    stats = sharded.last_stats
    assert (stats.generated_tokens, stats.padded_token_slots, stats.engine_calls) == (100, 120, 3)
    assert stats.chunk_wall_s == [0.5, 0.5, 0.5] and stats.wall_s > 0
    assert sharded.name == "fake x3"

    # A call with fewer prompts than engines leaves the others idle.
    sharded.generate(["q"], 3, SamplingConfig(temperature=1.0, seed=1))
    assert [len(e.calls) for e in engines] == [2, 1, 1] and engines[0].calls[-1] == (["q"], 3, 1)
    assert sharded.last_stats.engine_calls == 1

    policy = object()
    sharded.sync_weights(policy)
    assert all(e.synced == [policy] for e in engines)


def test_sharded_engine_raises_an_engines_error():
    sharded = ShardedEngine([RecordingEngine("a"), RecordingEngine("b", fail=True)])
    with pytest.raises(RuntimeError, match="engine b failed"):
        sharded.generate(["x", "y"], 1, SamplingConfig(temperature=1.0))
    with pytest.raises(ValueError, match="at least one engine"):
        ShardedEngine([])


def test_sharded_hf_engines_equal_each_engine_alone(engine_parts):
    """Two HF engines (own model copy and tokenizer each): shard 0 is what engine 0 alone samples
    with the call's seed, shard 1 what engine 1 alone samples with derive_seed(seed, 1); one engine
    behind ShardedEngine is the engine itself."""
    model, tokenizer, prompts = engine_parts
    first = HFEngine(model, tokenizer, max_batch_rows=8)
    second = HFEngine(copy.deepcopy(model).requires_grad_(False), copy.deepcopy(tokenizer), max_batch_rows=8)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=10, seed=5)
    out = ShardedEngine([first, second]).generate(prompts, 3, sampling)
    alone_first = first.generate(prompts[:2], 3, sampling)
    alone_second = second.generate(prompts[2:], 3, dataclasses.replace(sampling, seed=derive_seed(5, 1)))
    assert [[c.token_ids for c in row] for row in out] == [[c.token_ids for c in row] for row in alone_first + alone_second]
    assert [[c.logprobs for c in row] for row in out] == [[c.logprobs for c in row] for row in alone_first + alone_second]
    assert texts(ShardedEngine([first]).generate(prompts, 2, sampling)) == texts(first.generate(prompts, 2, sampling))


def test_sharded_sync_weights_reaches_every_engine(engine_parts):
    model, tokenizer, prompts = engine_parts
    engines = [HFEngine(copy.deepcopy(model).requires_grad_(False), copy.deepcopy(tokenizer)) for _ in range(2)]
    sharded = ShardedEngine(engines)
    updated = copy.deepcopy(model)
    with torch.no_grad():
        for p in updated.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=8)
    expected = HFEngine(updated, tokenizer).generate(prompts, 1, greedy)
    assert texts(sharded.generate(prompts, 1, greedy)) != texts(expected)
    sharded.sync_weights(updated)
    assert texts(sharded.generate(prompts, 1, greedy)) == texts(expected)
    for engine in engines:
        assert all(torch.equal(a, b) for a, b in zip(engine.model.parameters(), updated.parameters(), strict=True))


def test_preallocated_cache_equals_the_dynamic_cache_when_it_grows_and_drops_rows(engine_parts):
    """Logits from a PreallocatedLayer cache (capacity far too small: it must grow, repeat and
    select rows) equal those from transformers' DynamicCache step by step."""
    import functools

    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    from dashrl.engines.hf import PreallocatedLayer

    model, tokenizer, _ = engine_parts
    prompt = torch.tensor([tokenizer("Add 10 and 15.", add_special_tokens=False)["input_ids"]])  # (1, Tp)
    logits = []
    for cache in (DynamicCache(), Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity=2))):
        with torch.no_grad():
            out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
            cache.batch_repeat_interleave(3)
            steps = [out.logits[:, -1]]
            token = torch.tensor([[5], [6], [7]])
            for t in range(6):
                if t == 3:  # drop the middle row, as the engine drops finished rows
                    cache.batch_select_indices(torch.tensor([0, 2]))
                    token = token[[0, 2]]
                steps.append(model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1])
                token = steps[-1].argmax(-1, keepdim=True)
        assert cache.get_seq_length() == prompt.shape[1] + 6
        logits.append(steps)
    for dynamic, preallocated in zip(*logits, strict=True):
        assert torch.allclose(dynamic, preallocated, atol=1e-6)
