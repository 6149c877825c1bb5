"""The HF rollout engine: batched decoding with a transformers causal LM and its KV cache, on CPU or GPU.

Implements ``dashrl.engines.base.RolloutEngine``. Sampling distribution: ``dashrl.algo.sampling``
(logits / temperature, then top-k, then top-p; temperature 0 is greedy), the same function the
training loss uses. Prompts are tokenised without adding special tokens: ``render_prompt`` already
produced the exact string (chat template or BOS + raw text). Batches use left padding.

Seeding: chunk ``c`` of a call with seed ``s`` draws from its own ``torch.Generator`` seeded with
``derive_seed(s, c)``: the global RNG is untouched, and the same seed, prompts and batch size give
the same completions.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import Cache, DynamicLayer

from dashrl.algo.sampling import sample_tokens
from dashrl.engines.base import Completion, GenerationStats, SamplingConfig, stop_token_ids
from dashrl.infra.distributed import full_tensor
from dashrl.infra.progress import progress
from dashrl.infra.seeds import derive_seed

log = logging.getLogger(__name__)

class HFEngine:
    """Batched decoding with a transformers causal LM and its KV cache, on CPU or GPU.

    Its own decode loop instead of ``model.generate``: (1) tokens are drawn by ``sample_tokens``, the
    distribution the loss uses, and each token's log-prob is kept (behaviour log-probs for PPO and
    the trainer-vs-engine gap); (2) rows that finished are dropped from the batch and the KV cache
    at once, so a batch does not decode until its longest row ends (HF's static batching does);
    (3) the 49k-wide head runs on the last position only during prefill; (4) the n samples of a
    prompt share one prefill (its KV cache is repeated n times); (5) the KV cache is preallocated
    for the whole call (``PreallocatedLayer``), not grown by concatenation at every token.

    ``max_batch_rows`` bounds the sequences decoded together (prompts per chunk x n); prompts are
    sorted by token length so each chunk pads little; results come back in input order.
    ``model`` may be the policy itself or a separate (e.g. bf16) copy kept current by ``sync_weights``.
    ``progress_label``: show a progress bar over the sequences of each call (evaluation), under
    this name; None (RL rollouts, whose steps have their own bar): no bar.
    """

    name = "hf"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_batch_rows: int = 64,
                 progress_label: str | None = None):
        if max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be >= 1, got {max_batch_rows}")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token: load it with dashrl.models.load_tokenizer")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.progress_label = progress_label
        self.last_stats = GenerationStats()
        self.eos_ids = stop_token_ids(model, tokenizer)

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
        self.model.eval()
        n_chunks = -(-len(order) // prompts_per_chunk)
        bar = progress(desc=self.progress_label or "generate", total=len(prompts) * n, unit="seq",
                       disable=self.progress_label is None)
        for chunk_index, lo in enumerate(range(0, len(order), prompts_per_chunk)):
            chunk = order[lo : lo + prompts_per_chunk]
            chunk_start = time.perf_counter()
            generator = torch.Generator(device=self.model.device).manual_seed(derive_seed(sampling.seed, chunk_index))
            completions = self._decode([encoded[i] for i in chunk], n, sampling, generator, stats, bar)
            for j, i in enumerate(chunk):
                results[i] = completions[j * n : (j + 1) * n]
            stats.chunk_wall_s.append(time.perf_counter() - chunk_start)
            stats.engine_calls += 1
            log.debug("generated chunk %d/%d: %d sequences in %.1f s (%d tokens so far)",
                      chunk_index + 1, n_chunks, len(chunk) * n, stats.chunk_wall_s[-1], stats.generated_tokens)
        bar.close()
        stats.wall_s = time.perf_counter() - start
        self.last_stats = stats
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def sync_weights(self, policy: PreTrainedModel) -> None:
        """Copy the policy's current weights into the engine's model (cast to its dtype).

        A sharded policy (FSDP) is gathered one parameter at a time (a collective: every rank syncs),
        so no second full copy of the policy is ever held."""
        if policy is self.model:
            return
        engine_params = dict(self.model.named_parameters())
        for name, param in policy.named_parameters():
            engine_params[name].copy_(full_tensor(param))

    def _prefill(self, prompts: list[list[int]], cache: Cache) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the prompts into ``cache``; returns (next-token logits (P, V), attention mask (P, T),
        next position (P,)).

        The prompts' longest common token prefix (a chat template's system prompt, say) is computed
        once and its cache repeated for every prompt; the rest of each prompt follows, left-padded
        after the prefix ([prefix | padding | suffix], padding masked out, positions contiguous), so
        every prompt sees exactly its own tokens at their own positions, as in a plain left-padded
        batch.
        """
        device, pad = self.model.device, self.tokenizer.pad_token_id
        shared = _common_prefix_length(prompts) if len(prompts) > 1 else 0
        shared = min(shared, min(len(p) for p in prompts) - 1)  # every prompt keeps >= 1 token of its own
        if shared >= 1:
            self.model(input_ids=torch.tensor([prompts[0][:shared]], device=device), past_key_values=cache,
                       use_cache=True, logits_to_keep=1)  # (1, Ts): the shared prefix, once
            cache.batch_repeat_interleave(len(prompts))
        suffixes = [p[shared:] for p in prompts]
        width = max(len(x) for x in suffixes)
        input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in suffixes], device=device)  # (P, Tw)
        suffix_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in suffixes], device=device)  # (P, Tw)
        attention_mask = torch.cat([suffix_mask.new_ones((len(prompts), shared)), suffix_mask], dim=-1)  # (P, Ts + Tw)
        position_ids = ((attention_mask.cumsum(-1) - 1).clamp(min=0))[:, shared:]  # (P, Tw)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :], attention_mask, position_ids[:, -1] + 1

    @torch.no_grad()
    def _decode(
        self, prompts: list[list[int]], n: int, sampling: SamplingConfig, generator: torch.Generator,
        stats: GenerationStats, bar: Any = None,
    ) -> list[Completion]:
        """``n`` completions of each prompt, rows in prompt order (prompt 0's n samples first).
        ``bar`` (a progress bar) advances by each sequence as it finishes."""
        device, pad = self.model.device, self.tokenizer.pad_token_id
        batch, width = len(prompts) * n, max(len(x) for x in prompts)
        eos = torch.tensor(self.eos_ids, device=device)
        cache = Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity=width + sampling.max_new_tokens))
        logits, attention_mask, next_position = self._prefill(prompts, cache)  # (P, V), (P, T), (P,)
        # One prefill per prompt; its n samples continue from copies of its cache.
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, dim=0)  # (B, V)
        attention_mask = attention_mask.repeat_interleave(n, dim=0)  # (B, T)
        next_position = next_position.repeat_interleave(n, dim=0)  # (B,)
        rows_in_batch = torch.arange(batch)  # original row of each batch row
        done = torch.zeros(batch, dtype=torch.bool)  # (B,) per original row: eos generated
        tokens = torch.full((batch, sampling.max_new_tokens), pad, dtype=torch.long)  # (B, Tg)
        logprobs = torch.zeros((batch, sampling.max_new_tokens))  # (B, Tg)
        lengths = torch.zeros(batch, dtype=torch.long)  # (B,)
        for t in range(sampling.max_new_tokens):
            token, logprob = sample_tokens(logits, sampling.temperature, sampling.top_k, sampling.top_p, generator)  # (b,), (b,)
            token_cpu = token.cpu()
            live = ~done[rows_in_batch]  # (b,) rows still generating (finished rows may ride along as filler)
            live_rows = rows_in_batch[live]
            tokens[live_rows, t] = token_cpu[live]
            logprobs[live_rows, t] = logprob.float().cpu()[live]
            lengths[live_rows] += 1
            stats.padded_token_slots += len(rows_in_batch)
            finished = live_rows[torch.isin(token_cpu[live], eos.cpu())]
            done[finished] = True
            if bar is not None:
                bar.set_postfix({"tokens": t + 1, "live": len(live_rows) - len(finished)}, refresh=False)
                bar.update(len(finished) if t < sampling.max_new_tokens - 1 else len(live_rows))
            if t == sampling.max_new_tokens - 1 or bool(done.all()):
                break
            # Drop finished rows from the batch and the KV cache, in steps of a few batch sizes only
            # (every new shape costs kernel set-up on CPU bf16), keeping finished rows as filler.
            n_live = int((~done[rows_in_batch]).sum())
            target = _bucket(n_live)
            if target < len(rows_in_batch):
                order = torch.argsort(done[rows_in_batch].int(), stable=True)[:target]  # live rows first
                keep = order.sort().values.to(device)  # (b',)
                cache.batch_select_indices(keep)
                rows_in_batch = rows_in_batch[keep.cpu()]
                token, attention_mask, next_position = token[keep], attention_mask[keep], next_position[keep]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(rows_in_batch), 1))], dim=-1)  # (b, T+1)
            out = self.model(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position[:, None],
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1, :]  # (b, V)
            next_position = next_position + 1

        completions = []
        for row in range(batch):
            ids = tokens[row, : lengths[row]].tolist()
            completions.append(Completion(
                text=self.tokenizer.decode(ids, skip_special_tokens=True),
                token_ids=ids,
                finish_reason="stop" if done[row] else "length",
                logprobs=logprobs[row, : lengths[row]].tolist(),
            ))
        stats.generated_tokens += int(lengths.sum())
        return completions


class PreallocatedLayer(DynamicLayer):
    """A KV-cache layer with room for ``capacity`` positions allocated at the first update.

    ``DynamicLayer`` concatenates every new token onto the whole cache (O(T) copying per token, ~10%
    of a decode step at batch 64 on CPU); this one writes it into the buffer and returns a view of
    the filled part. It grows (doubling) if a call goes past ``capacity``. Rows can be repeated
    (shared prefill) or selected (finished rows dropped), as in ``DynamicLayer``.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        batch, heads, _, dim = key_states.shape
        self.key_buffer = key_states.new_empty((batch, heads, self.capacity, dim))  # (B, H, capacity, D)
        self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[2]:
            self.key_buffer = self._grown(self.key_buffer, end)
            self.value_buffer = self._grown(self.value_buffer, end)
        self.key_buffer[:, :, self.length : end] = key_states
        self.value_buffer[:, :, self.length : end] = value_states
        self.length = end
        self._expose()
        return self.keys, self.values

    def _grown(self, buffer: torch.Tensor, needed: int) -> torch.Tensor:
        shape = list(buffer.shape)
        shape[2] = max(needed, 2 * shape[2])
        grown = buffer.new_empty(shape)
        grown[:, :, : self.length] = buffer[:, :, : self.length]
        return grown

    def _expose(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]  # (B, H, T, D) view
        self.values = self.value_buffer[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer.repeat_interleave(repeats, dim=0)
            self.value_buffer = self.value_buffer.repeat_interleave(repeats, dim=0)
            self._expose()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.key_buffer = self.key_buffer[indices]
            self.value_buffer = self.value_buffer[indices]
            self._expose()


_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def _common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all rows share."""
    first, length = rows[0], min(len(r) for r in rows)
    for row in rows[1:]:
        length = next((i for i in range(length) if row[i] != first[i]), length)
        if length == 0:
            break
    return length


def _bucket(n: int) -> int:
    """The smallest bucket size >= n (n itself past the largest bucket)."""
    return next((b for b in _BATCH_BUCKETS if b >= n), n)
