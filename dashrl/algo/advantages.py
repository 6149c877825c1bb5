"""Group advantages and the DASH keep-mask.

For each prompt, G completions with rewards r_1..r_G (binary here):

    A_i = r_i - mean(r)                          (scale_rewards = False)
    A_i = (r_i - mean(r)) / (std(r) + 1e-4)      (scale_rewards = True; unbiased std, as the authors)

A group whose G rewards are all equal (all right or all wrong) has A = 0 everywhere: it carries no
policy gradient. Gradient filtering keeps a sample only if |A_i| > tau, so any tau below the
smallest non-zero |A| (``params.min_nonzero_abs_advantage``) drops exactly those groups.

Example (G = 4, no scaling): rewards [1, 0, 0, 0] -> A = [0.75, -0.25, -0.25, -0.25], all kept
at tau = 0.1; rewards [1, 1, 1, 1] -> A = [0, 0, 0, 0], all dropped at tau = 0.1.
tau = 0 turns filtering off (everything is kept).
"""

from __future__ import annotations

import torch

STD_EPS = 1e-4


def group_advantages(rewards: torch.Tensor, scale_rewards: bool) -> torch.Tensor:
    """rewards: (P, G) -> advantages (P, G), float32."""
    rewards = rewards.float()
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group_size >= 2), got shape {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # (P, G)
    if not scale_rewards:
        return centred
    std = rewards.std(dim=1, unbiased=True, keepdim=True)  # (P, 1)
    return centred / (std + STD_EPS)  # (P, G)


def keep_mask(advantages: torch.Tensor, threshold: float) -> torch.Tensor:
    """True where a sample goes into the backward pass: |A| > threshold, or everywhere if threshold == 0."""
    if threshold == 0:
        return torch.ones_like(advantages, dtype=torch.bool)
    return advantages.abs() > threshold  # (P, G)


def zero_variance_fraction(rewards: torch.Tensor) -> float:
    """Fraction of groups whose rewards are all equal. rewards: (P, G)."""
    return float((rewards.max(dim=1).values == rewards.min(dim=1).values).float().mean())
