"""What every rollout engine is: the interface, its records, and one call split over several engines.

Every engine implements ``RolloutEngine.generate(prompts, n, sampling)`` and returns, for each
prompt, ``n`` ``Completion`` records (text, token ids, per-token log-probs, finish reason), and
``sync_weights(policy)`` to load the policy's current weights. ``dashrl.engines.hf`` decodes with
transformers on CPU or GPU, ``dashrl.engines.vllm`` with vLLM (GPU); ``dashrl.engines.factory``
chooses and places them from the params.

Sampling distribution: ``dashrl.algo.sampling`` (logits / temperature, then top-k, then top-p;
temperature 0 is greedy), the same function the training loss uses.

``ShardedEngine`` splits one call over several engines (the paper's "engine call split over several
inference servers"): each gets a contiguous share of whole prompts, so a group's G samples come
from one engine; the engines run concurrently and the results come back in input order.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal, Protocol

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.infra.seeds import derive_seed

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 256
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    text: str  # decoded completion, special tokens removed
    token_ids: list[int]  # generated ids, including the final eos when finish_reason == "stop"
    finish_reason: FinishReason  # "stop": eos generated; "length": max_new_tokens reached
    logprobs: list[float] | None = None  # per token, under the sampling distribution (behaviour policy)

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationStats:
    """What one ``generate`` call cost."""

    wall_s: float = 0.0
    generated_tokens: int = 0  # tokens of all completions (eos included)
    padded_token_slots: int = 0  # rows x decoding steps actually run
    engine_calls: int = 0
    chunk_wall_s: list[float] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0


class RolloutEngine(Protocol):
    """Samples ``n`` completions per prompt. Returns a list of length P of lists of length n."""

    name: str
    last_stats: GenerationStats

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Completion]]: ...

    def sync_weights(self, policy: PreTrainedModel) -> None: ...


class ShardedEngine:
    """One rollout batch split over several engines that hold the same weights.

    Engine ``k`` gets the ``k``-th of ``len(engines)`` contiguous, near-equal shares of the prompts
    (whole prompts, so all ``n`` samples of a prompt come from one engine; an engine whose share is
    empty is not called). Shard 0 samples with the call's seed, shard ``k > 0`` with
    ``derive_seed(seed, k)``: shard 0 gets exactly what its engine alone would return for those
    prompts, and the same seed, prompts and engine count give the same completions. (Changing the
    engine count changes which seed a prompt draws from, as changing the batch size does.)

    The engines run in threads: useful when each has its own device (a GPU each, or a vLLM engine
    core in its own process); engines on the same CPU cores only take turns. ``sync_weights`` loads
    the policy into every engine. ``last_stats`` adds up the engines' tokens and slots; ``wall_s`` is
    the whole call's (the slowest engine's) time and ``chunk_wall_s`` lists each engine's.
    """

    def __init__(self, engines: Sequence[RolloutEngine]):
        if not engines:
            raise ValueError("ShardedEngine needs at least one engine")
        self.engines = list(engines)
        self.name = f"{'+'.join(sorted({e.name for e in self.engines}))} x{len(self.engines)}"
        self.last_stats = GenerationStats()
        self._pool = ThreadPoolExecutor(max_workers=len(self.engines), thread_name_prefix="rollout-engine")

    def shards(self, n_prompts: int) -> list[range]:
        """Engine k's prompts: contiguous, sizes differing by at most one, larger shares first."""
        per_engine, extra = divmod(n_prompts, len(self.engines))
        bounds = [0]
        for k in range(len(self.engines)):
            bounds.append(bounds[-1] + per_engine + (k < extra))
        return [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        start = time.perf_counter()
        calls = [(engine, shard, sampling if k == 0 else dataclasses.replace(sampling, seed=derive_seed(sampling.seed, k)))
                 for k, (engine, shard) in enumerate(zip(self.engines, self.shards(len(prompts)), strict=True)) if shard]
        futures = [self._pool.submit(engine.generate, [prompts[i] for i in shard], n, shard_sampling)
                   for engine, shard, shard_sampling in calls]
        results: list[list[Completion]] = []
        stats = GenerationStats()
        for (engine, _shard, _sampling), future in zip(calls, futures, strict=True):
            results += future.result()  # re-raises an engine's error here
            stats.generated_tokens += engine.last_stats.generated_tokens
            stats.padded_token_slots += engine.last_stats.padded_token_slots
            stats.engine_calls += engine.last_stats.engine_calls
            stats.chunk_wall_s.append(engine.last_stats.wall_s)
        stats.wall_s = time.perf_counter() - start
        self.last_stats = stats
        log.info("%d engines generated %d sequences in %.1f s (per engine: %s s)", len(calls), len(prompts) * n,
                 stats.wall_s, ", ".join(f"{w:.1f}" for w in stats.chunk_wall_s))
        return results

    def sync_weights(self, policy: PreTrainedModel) -> None:
        for future in [self._pool.submit(engine.sync_weights, policy) for engine in self.engines]:
            future.result()


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token ids that end a completion: the tokenizer's eos and the model's generation-config eos ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)
