"""Rollout engines: turn prompt strings into sampled completions.

Every engine implements ``RolloutEngine.generate(prompts, n, sampling)`` and returns, for each
prompt, ``n`` ``Completion`` records (text, token ids, token count, finish reason). The HF backend
here runs ``model.generate`` in batches on CPU or GPU; a vLLM backend (GPU) plugs in behind the
same interface.

Sampling distribution: logits / temperature, then top-k (0 = off), then top-p (1 = off);
temperature 0 is greedy. The training loss must use the same distribution (DASH.md §5).
Prompts are tokenised without adding special tokens: ``render_prompt`` already produced the exact
string (chat template or BOS + raw text). Batches use left padding.

Seeding: chunk ``c`` of a call with seed ``s`` samples under ``torch.manual_seed(hash(s, c))`` inside
``torch.random.fork_rng``, so the caller's global RNG is untouched and the same seed, prompts and
batch size give the same completions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

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

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class GenerationStats:
    """What one ``generate`` call cost."""

    wall_s: float = 0.0
    generated_tokens: int = 0  # tokens of all completions (eos included)
    padded_token_slots: int = 0  # rows x decoding steps actually run (static batching waste included)
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


class HFEngine:
    """Batched ``transformers`` generate.

    ``max_batch_rows`` bounds the sequences decoded together (prompts per chunk x n); prompts are
    sorted by token length first so that each chunk pads little, and results return in input order.
    """

    name = "hf"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_batch_rows: int = 64):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token: load it with dashrl.models.load_tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.last_stats = GenerationStats()
        self.eos_ids = _eos_ids(model, tokenizer)

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.greedy and n > 1:
            raise ValueError("greedy decoding (temperature 0) with n > 1 gives n identical completions")
        stats = GenerationStats()
        start = time.perf_counter()
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        prompts_per_chunk = max(1, self.max_batch_rows // n)
        results: list[list[Completion] | None] = [None] * len(prompts)
        config = self._generation_config(n, sampling)
        self.model.eval()
        n_chunks = -(-len(order) // prompts_per_chunk)
        for chunk_index, lo in enumerate(range(0, len(order), prompts_per_chunk)):
            chunk = order[lo : lo + prompts_per_chunk]
            chunk_start = time.perf_counter()
            completions = self._generate_chunk([encoded[i] for i in chunk], config, sampling.seed, chunk_index, stats)
            for j, i in enumerate(chunk):
                results[i] = completions[j * n : (j + 1) * n]
            stats.chunk_wall_s.append(time.perf_counter() - chunk_start)
            stats.engine_calls += 1
            log.info("generated chunk %d/%d: %d sequences in %.1f s (%d tokens so far)",
                     chunk_index + 1, n_chunks, len(chunk) * n, stats.chunk_wall_s[-1], stats.generated_tokens)
        stats.wall_s = time.perf_counter() - start
        self.last_stats = stats
        return results  # type: ignore[return-value]

    def _generation_config(self, n: int, sampling: SamplingConfig) -> GenerationConfig:
        common = dict(
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.eos_ids,
        )
        if sampling.greedy:
            return GenerationConfig(do_sample=False, **common)
        # Every processor is set explicitly: a model's own generation_config (e.g. top_k=50) must not
        # silently change the sampling distribution.
        return GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_k=sampling.top_k if sampling.top_k > 0 else None,
            top_p=sampling.top_p,
            **common,
        )

    @torch.no_grad()
    def _generate_chunk(
        self, ids: list[list[int]], config: GenerationConfig, seed: int, chunk_index: int, stats: GenerationStats
    ) -> list[Completion]:
        width = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], dtype=torch.long)  # (B, Tp)
        attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)  # (B, Tp)
        device = self.model.device
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(derive_seed(seed, chunk_index))
            sequences = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
            )  # (B * n, Tp + Tg)
        generated = sequences[:, width:].cpu()  # (B * n, Tg)
        stats.padded_token_slots += generated.numel()
        completions = [self._completion(row.tolist()) for row in generated]
        stats.generated_tokens += sum(c.n_tokens for c in completions)
        return completions

    def _completion(self, row: list[int]) -> Completion:
        stop_at = next((t for t, token in enumerate(row) if token in self.eos_ids), None)
        if stop_at is None:
            token_ids, reason = row, "length"
        else:
            token_ids, reason = row[: stop_at + 1], "stop"
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return Completion(text=text, token_ids=token_ids, finish_reason=reason)


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    return sorted(i for i in ids if i is not None)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, index, ...), stable across runs and platforms."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)
