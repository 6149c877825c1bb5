"""Each of dashrl's speed-ups against what it replaced, side by side in one process (a script, not a test).

    python -m benchmarks.speedups [--dtype auto] [--repeats 3]

On the embedded model (``data/models/base``, from ``make run`` or ``dvc repro model``), in the dtype
``auto`` resolves to here (or ``--dtype``), each line times the old way and the new way of one piece
on the same inputs, alternating, and prints the median seconds and old/new:

- training layout: one micro-batch (a group of 8 completions of one prompt, lengths from the
  embedded model's rollouts) forward + backward, ``padded`` vs ``tree`` (``dashrl.algo.batching``);
- top-p draw at batch 200 (evaluation: top_p 0.95): a full sort of the vocabulary vs candidate lists;
- a decoding step at batch 64 after 150 tokens: ``DynamicCache`` (grows by concatenation) vs
  ``PreallocatedLayer``;
- prefill of 8 prompts x 8 samples: 64 rows vs 8 rows whose cache is repeated;
- the optimizer step of 135M parameters: AdamW ``foreach`` vs ``fused``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch


def full_sort_top_p(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """The draw dashrl used before candidate lists: sort the whole vocabulary (kept for comparison)."""
    scaled = logits.float() / temperature
    sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    logp = scaled.masked_fill(drop, float("-inf")).log_softmax(-1)
    cdf = logp.exp().cumsum(-1)
    u = torch.rand((logits.shape[0], 1), generator=generator) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(name: str, old: Callable[[], object], new: Callable[[], object], repeats: int) -> None:
    old(), new()  # warm-up: allocations, kernel selection
    olds, news = [], []
    for _ in range(repeats):
        olds.append(timed(old))
        news.append(timed(new))
    o, n = statistics.median(olds), statistics.median(news)
    print(f"| {name} | {o:.3f} | {n:.3f} | {o / n:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="data/models/base")
    args = parser.parse_args()

    from transformers import DynamicCache
    from transformers.cache_utils import Cache

    from dashrl.algo.batching import get_packing
    from dashrl.algo.losses import batch_logprobs
    from dashrl.algo.sampling import sample_tokens
    from dashrl.engines.hf import PreallocatedLayer
    from dashrl.infra.hardware import compute_record, resolve_dtype
    from dashrl.models import load_model

    dtype = resolve_dtype(args.dtype, "cpu")
    record = compute_record("cpu", dtype=dtype)
    print(f"CPU: {record['cpu_model']} ({torch.get_num_threads()} threads, torch kernels "
          f"{record['torch_cpu_capability']}); dtype {dtype}; median of {args.repeats}")
    print()
    print("| piece | before s | after s | before/after |")
    print("|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    autocast = functools.partial(torch.autocast, "cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    # 1. training layout
    policy = load_model(args.model, dtype="float32")
    vocab = policy.config.vocab_size
    prompt = torch.randint(100, vocab, (62,), generator=gen).tolist()
    lengths = [96, 41, 73, 96, 28, 55, 96, 64]  # a group as the embedded model samples it (96: truncated)
    completions = [torch.randint(100, vocab, (n,), generator=gen).tolist() for n in lengths]

    def train(packing: str) -> None:
        batch = get_packing(packing).pack([prompt] * 8, completions, 0, torch.device("cpu"))
        with autocast():
            logp = batch_logprobs(policy, batch, 0.7).float()
        (logp * batch.completion_mask).sum().backward()
        policy.zero_grad(set_to_none=True)

    compare("forward + backward, one group of 8 (padded -> tree)", lambda: train("padded"), lambda: train("tree"),
            args.repeats)

    # 2. top-p draw
    engine_model = load_model(args.model, dtype=dtype).eval()
    with torch.no_grad():
        ids = torch.randint(100, vocab, (200, 60), generator=gen)
        logits = engine_model(input_ids=ids, logits_to_keep=1).logits[:, -1].float()  # real next-token logits
    compare("top-p 0.95 draw, batch 200 (sort -> candidates)", lambda: full_sort_top_p(logits, 0.6, 0.95, gen),
            lambda: sample_tokens(logits, 0.6, 0, 0.95, gen), args.repeats)

    # 3. decoding step with a long cache
    def decode(make_cache: Callable[[], Cache], steps: int = 8) -> None:
        with torch.no_grad():
            cache = make_cache()
            out = engine_model(input_ids=torch.randint(100, vocab, (64, 150), generator=gen), past_key_values=cache,
                               use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            start = time.perf_counter()
            for _ in range(steps):
                token = engine_model(input_ids=token, past_key_values=cache, use_cache=True).logits[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - start

    dynamic = [decode(DynamicCache) for _ in range(args.repeats + 1)][1:]
    prealloc = [decode(lambda: Cache(layer_class_to_replicate=functools.partial(PreallocatedLayer, capacity=170)))
                for _ in range(args.repeats + 1)][1:]
    o, n = statistics.median(dynamic) / 8, statistics.median(prealloc) / 8
    print(f"| decoding step, batch 64, 150 cached tokens (DynamicCache -> preallocated) | {o:.3f} | {n:.3f} | {o / n:.2f}x |")

    # 4. prefill of 8 prompts x 8 samples
    prompts = torch.randint(100, vocab, (8, 62), generator=gen)

    def prefill_rows() -> None:
        with torch.no_grad():
            engine_model(input_ids=prompts.repeat_interleave(8, dim=0), past_key_values=DynamicCache(), use_cache=True,
                         logits_to_keep=1)

    def prefill_shared() -> None:
        with torch.no_grad():
            cache = DynamicCache()
            engine_model(input_ids=prompts, past_key_values=cache, use_cache=True, logits_to_keep=1)
            cache.batch_repeat_interleave(8)

    compare("prefill, 8 prompts x 8 samples (64 rows -> 8 + repeat)", prefill_rows, prefill_shared, args.repeats)

    # 5. optimizer step
    for p in policy.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    foreach = torch.optim.AdamW(policy.parameters(), lr=1e-6)
    fused = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=True)
    compare("AdamW step, 135M parameters (foreach -> fused)", foreach.step, fused.step, args.repeats)


if __name__ == "__main__":
    main()
