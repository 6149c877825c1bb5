"""The sampling distribution, stated once and shared by the rollout engine and the training loss.

    p(token | context) = softmax(top_p(top_k(logits / temperature)))[token]

top-k keeps the k largest logits (0 = off); top-p then keeps the smallest set of most likely tokens
whose probability reaches top_p (1 = off), always at least one token. This is the order HF's
``generate`` applies them. The reference code sampled with top_k = 50 but trained on the full
softmax (behaviour != target policy, DASH.md §5); here the engine's log-probs and the loss's
log-probs come from this one function, so they describe the same policy.

Sampling draws by inverse CDF (cumsum + searchsorted on one uniform per row) from a seeded
``torch.Generator``: the same distribution as ``torch.multinomial``, about an order of magnitude
cheaper over a 49k vocabulary on CPU.
"""

from __future__ import annotations

import torch


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Log-probabilities of the sampling distribution; -inf outside the top-k / top-p set.

    logits: (..., V) -> (..., V), float32. ``temperature`` must be > 0.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 for a sampling distribution, got {temperature}")
    scaled = logits.float() / temperature  # (..., V)
    if top_k > 0 and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]  # (..., 1)
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True)  # (..., V)
        sorted_probs = sorted_logits.softmax(-1)
        mass_before = sorted_probs.cumsum(-1) - sorted_probs  # (..., V) probability of strictly likelier tokens
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, float("-inf"))
    return scaled.log_softmax(-1)


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row. logits: (B, V) -> tokens (B,), their log-prob under the distribution (B,).

    temperature 0 is greedy; its log-prob is then that of the untempered softmax.
    """
    if temperature == 0:
        logp = logits.float().log_softmax(-1)  # (B, V)
        tokens = logp.argmax(-1)  # (B,)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
    logp = sampling_logprobs(logits, temperature, top_k, top_p)  # (B, V)
    cdf = logp.exp().cumsum(-1)  # (B, V)
    u = torch.rand((logits.shape[0], 1), generator=generator, device=logits.device) * cdf[:, -1:]  # (B, 1)
    tokens = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)  # (B,)
    # right=True lands on a token where the CDF jumps (positive mass); only float rounding at the very
    # top can pick a dead token, in which case take the most likely one.
    dead = logp.gather(-1, tokens[:, None]).squeeze(-1) == float("-inf")
    if dead.any():
        tokens[dead] = logp[dead].argmax(-1)
    return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)
