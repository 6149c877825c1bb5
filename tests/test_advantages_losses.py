"""Group advantages, the DASH keep-mask and the loss terms, on hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from dashrl.algo.advantages import group_advantages, keep_mask, zero_variance_fraction
from dashrl.algo.losses import (
    LOGP_FLOOR,
    LOSS_AGGREGATIONS,
    StepCounts,
    get_loss_agg,
    kl_k3,
    policy_token_loss,
)
from dashrl.config.params import min_nonzero_abs_advantage

# Three groups of G = 4: one right, two right, all right.
REWARDS = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])  # (P, G)


def test_group_advantages_without_scaling():
    # Means 0.25, 0.5, 1: A = r - mean.
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.5, 0.5, -0.5, -0.5], [0.0, 0.0, 0.0, 0.0]])
    assert torch.equal(group_advantages(REWARDS, scale_rewards=False), expected)


def test_group_advantages_with_scaling_use_unbiased_std_and_eps():
    # Row 0: unbiased std sqrt((0.75^2 + 3 x 0.25^2) / 3) = 0.5 -> divide by 0.5001:
    #        0.75 / 0.5001 = 1.4997000600, 0.25 / 0.5001 = 0.4999000200.
    # Row 1: unbiased std sqrt(4 x 0.25 / 3) = 0.5773502692 -> 0.5 / 0.5774502692 = 0.8658754298.
    # Row 2: std 0, centred 0 -> 0 / 1e-4 = 0.
    a, b, c = 1.4997000600, 0.4999000200, 0.8658754298
    expected = torch.tensor([[a, -b, -b, -b], [c, c, -c, -c], [0.0, 0.0, 0.0, 0.0]])
    got = group_advantages(REWARDS, scale_rewards=True)
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale_rewards", [False, True])
def test_all_equal_groups_have_exactly_zero_advantage(scale_rewards):
    rewards = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    advantages = group_advantages(rewards, scale_rewards)
    assert torch.equal(advantages, torch.zeros(3, 3))
    assert not advantages.isnan().any()


def test_group_advantages_reject_a_group_of_one():
    with pytest.raises(ValueError, match="group_size >= 2"):
        group_advantages(torch.ones(3, 1), scale_rewards=False)


@pytest.mark.parametrize("scale_rewards", [False, True])
def test_keep_mask_tau_zero_keeps_all_and_tau_drops_exactly_the_zero_variance_groups(scale_rewards):
    advantages = group_advantages(REWARDS, scale_rewards)
    assert keep_mask(advantages, 0.0).all()  # tau = 0: filtering off, even A = 0 is kept
    kept = keep_mask(advantages, 0.1)
    assert kept.dtype == torch.bool
    assert kept.tolist() == [[True] * 4, [True] * 4, [False] * 4]


def test_keep_mask_drops_an_advantage_equal_to_tau():
    advantages = torch.tensor([[0.25, -0.25, 0.3, -0.3]])
    assert keep_mask(advantages, 0.25).tolist() == [[False, False, True, True]]  # keep |A| > tau


def test_zero_variance_fraction():
    assert zero_variance_fraction(REWARDS) == pytest.approx(1 / 3)
    assert zero_variance_fraction(torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == 0.0
    assert zero_variance_fraction(torch.tensor([[0.0, 0.0], [1.0, 1.0]])) == 1.0


@pytest.mark.parametrize(
    ("group_size", "scale_rewards", "expected"),
    [
        # Without scaling: one right of G (or one wrong): 1/G.
        (2, False, 0.5),
        (4, False, 0.25),
        (8, False, 0.125),
        # G = 2, k = 1: mean 0.5, unbiased std sqrt(0.5) = 0.7071067812: 0.5 / 0.7072067812.
        (2, True, 0.5 / (math.sqrt(0.5) + 1e-4)),
        # G = 4, k = 1 (or 3): 0.25 / (0.5 + 1e-4) = 0.4999000200 (k = 2 gives 0.866).
        (4, True, 0.4999000200),
        # G = 8, k = 1 (or 7): std sqrt(7/56) = 0.3535533906: 0.125 / 0.3536533906 = 0.3534534189.
        (8, True, 0.3534534189),
    ],
)
def test_min_nonzero_abs_advantage_by_hand(group_size, scale_rewards, expected):
    assert min_nonzero_abs_advantage(group_size, scale_rewards) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("group_size", [2, 3, 4, 8, 16])
@pytest.mark.parametrize("scale_rewards", [False, True])
def test_min_nonzero_abs_advantage_is_the_smallest_group_advantage(group_size, scale_rewards):
    """Every k of G right: the smallest non-zero |A| group_advantages produces is the bound."""
    rewards = torch.tensor([[1.0] * k + [0.0] * (group_size - k) for k in range(1, group_size)])
    advantages = group_advantages(rewards, scale_rewards).abs()
    smallest = float(advantages[advantages > 0].min())
    assert smallest == pytest.approx(min_nonzero_abs_advantage(group_size, scale_rewards), rel=1e-6)


# ------------------------------------------------------------------------------------------------
# Loss aggregation

# B = 2 sequences of 3 and 2 completion tokens; the third token of row 1 is padding whose loss (60)
# must not count.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # (B, T)
TOKEN_LOSS = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 60.0]])  # (B, T)
COUNTS = StepCounts(sequences=2, tokens=5, max_new_tokens=4)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        # grpo: mean of per-sequence token means: ((1+2+3)/3 + (4+5)/2) / 2 = (2 + 4.5) / 2 = 3.25
        ("grpo", 3.25),
        # bnpo: all tokens' sum / tokens: (1+2+3+4+5) / 5 = 3.0
        ("bnpo", 3.0),
        # dr_grpo: all tokens' sum / (sequences x max_new_tokens): 15 / (2 x 4) = 1.875
        ("dr_grpo", 1.875),
    ],
)
def test_loss_aggregations_by_hand(name, expected):
    agg = get_loss_agg(name)
    value = float((agg.token_weights(MASK) * TOKEN_LOSS).sum()) / agg.normaliser(COUNTS)
    assert value == pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("name", sorted(LOSS_AGGREGATIONS))
def test_loss_aggregation_weights_are_per_row(name):
    """Weights of a row depend on that row alone: summing over row-wise micro-batches is the same."""
    agg = get_loss_agg(name)
    whole = (agg.token_weights(MASK) * TOKEN_LOSS).sum()
    split = sum((agg.token_weights(MASK[i : i + 1]) * TOKEN_LOSS[i : i + 1]).sum() for i in range(2))
    assert torch.equal(whole, split)


def test_registered_aggregations_and_unknown_name():
    assert set(LOSS_AGGREGATIONS) == {"grpo", "bnpo", "dapo", "dr_grpo"}
    with pytest.raises(ValueError, match=r"unknown loss_agg 'nope' \(valid: bnpo, dapo, dr_grpo, grpo\)"):
        get_loss_agg("nope")


# ------------------------------------------------------------------------------------------------
# Policy-gradient / PPO token term and KL


def test_on_policy_gradient_is_minus_advantage_per_token():
    logp = torch.tensor([[-1.2, -0.3, -2.5], [-0.7, -4.0, -0.1]], requires_grad=True)  # (B, T)
    advantages = torch.tensor([0.5, -2.0])  # (B,)
    loss, clipped = policy_token_loss(logp, logp.detach(), advantages, clip_low=0.2, clip_high=0.2)
    assert torch.equal(loss.detach(), torch.tensor([[-0.5] * 3, [2.0] * 3]))  # rho = 1: -A
    assert not clipped.any()
    loss.sum().backward()
    assert torch.equal(logp.grad, torch.tensor([[-0.5] * 3, [2.0] * 3]))


@pytest.mark.parametrize(
    ("ratio", "advantage", "clipped_expected"),
    [
        (1.5, 1.0, True),  # above 1 + clip_high with A > 0: clipped, no gradient
        (0.5, -1.0, True),  # below 1 - clip_low with A < 0: clipped, no gradient
        (1.5, -1.0, False),  # above 1 + clip_high with A < 0: the unclipped (pessimistic) branch
        (0.5, 1.0, False),  # below 1 - clip_low with A > 0: likewise
    ],
)
def test_ppo_clipping(ratio, advantage, clipped_expected):
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)  # (1, 1)
    loss, clipped = policy_token_loss(logp, old, torch.tensor([advantage]), clip_low=0.2, clip_high=0.2)
    loss.sum().backward()
    assert bool(clipped) is clipped_expected
    if clipped_expected:
        bound = 1.2 if ratio > 1 else 0.8
        assert float(loss.detach()) == pytest.approx(-bound * advantage)
        assert float(logp.grad) == 0.0
    else:
        assert float(loss.detach()) == pytest.approx(-ratio * advantage)
        assert float(logp.grad) == pytest.approx(-ratio * advantage)  # d(-rho A)/dl = -rho A


def test_kl_k3():
    logp = torch.tensor([[-1.0, -2.0]])
    assert torch.equal(kl_k3(logp, logp), torch.zeros(1, 2))
    ref = torch.tensor([[-1.5, -0.5]])
    # delta = ref - logp = [-0.5, 1.5]: exp(-0.5) + 0.5 - 1 = 0.1065306597, exp(1.5) - 1.5 - 1 = 1.9816890703
    kl = kl_k3(logp, ref)
    assert torch.allclose(kl, torch.tensor([[0.1065306597, 1.9816890703]]), rtol=1e-6)
    delta = ref - logp
    assert torch.equal(kl, torch.exp(delta) - delta - 1)
    other = torch.randn(50, generator=torch.Generator().manual_seed(0))[None]
    assert (kl_k3(torch.zeros(1, 50), other) > 0).all()


@pytest.mark.parametrize(
    ("ratio", "advantage", "loss_expected", "grad_expected", "clipped_expected"),
    [
        # A < 0, ratio above c = 3: the loss is c |A| whatever the ratio, and no gradient.
        (5.0, -1.0, 3.0, 0.0, True),
        (50.0, -2.0, 6.0, 0.0, True),
        # A < 0, ratio between 1 + clip_high and c: the ordinary (unclipped, pessimistic) branch.
        (2.0, -1.0, 2.0, 2.0, False),
        # A > 0: the dual clip does not apply (the ratio clip at 1 + clip_high does).
        (5.0, 1.0, -1.2, 0.0, True),
        (0.5, 1.0, -0.5, -0.5, False),
    ],
)
def test_dual_clip_bounds_a_negative_advantage_token(ratio, advantage, loss_expected, grad_expected, clipped_expected):
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_(True)  # (1, 1)
    loss, clipped = policy_token_loss(logp, old, torch.tensor([advantage]), 0.2, 0.2, dual_clip=3.0)
    loss.sum().backward()
    assert float(loss.detach()) == pytest.approx(loss_expected, rel=1e-6)
    assert float(logp.grad) == pytest.approx(grad_expected, rel=1e-6)
    assert bool(clipped) is clipped_expected
    # Off (None or 0): the plain clipped surrogate, -min(rho A, clip(rho) A).
    for off in (None, 0.0):
        plain, _ = policy_token_loss(logp.detach(), old, torch.tensor([advantage]), 0.2, 0.2, dual_clip=off)
        assert float(plain) == pytest.approx(-min(ratio * advantage, min(max(ratio, 0.8), 1.2) * advantage), rel=1e-6)


def test_policy_loss_is_finite_when_the_old_logprob_is_at_the_floor():
    """A token outside the old top-k set (old log-prob at the floor) that the update brought back:
    rho would overflow; the loss and its gradient stay finite for either sign of A."""
    logp = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    old = torch.tensor([[LOGP_FLOOR, -1.0]])
    for dual_clip in (None, 3.0):
        loss, clipped = policy_token_loss(logp, old, torch.tensor([-1.0]), 0.2, 0.2, dual_clip=dual_clip)
        (grad,) = torch.autograd.grad(loss.sum(), logp)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert float(grad[0, 0]) == 0.0 and bool(clipped[0, 0]) is (dual_clip is not None)
    loss, _ = policy_token_loss(logp, old, torch.tensor([1.0]), 0.2, 0.2)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    assert float(loss.detach()[0, 0]) == pytest.approx(-1.2) and torch.isfinite(grad).all() and float(grad[0, 0]) == 0.0


def test_kl_k3_is_zero_and_nan_free_where_masked_or_at_the_policy_floor():
    """Masked positions (padding) and a policy log-prob at the floor (a token outside the policy's
    current top-k / top-p set) would give exp(l_ref - l) = inf; they give 0, and no NaN gradient."""
    logp = torch.tensor([[-1.0, LOGP_FLOOR, -2.0], [-0.5, -3.0, LOGP_FLOOR]], requires_grad=True)  # (B, T)
    ref = torch.tensor([[-1.5, -0.7, -1.0], [-0.5, -2.0, -0.1]])  # (B, T)
    mask = torch.tensor([[True, True, True], [True, True, False]])  # (B, T): row 1's last token is padding
    kl = kl_k3(logp, ref, mask)
    delta = ref - logp.detach()
    expected = torch.where(torch.tensor([[True, False, True], [True, True, False]]), torch.exp(delta) - delta - 1, 0.0)
    assert torch.equal(kl.detach(), expected)
    kl.sum().backward()
    assert torch.isfinite(logp.grad).all()
    assert logp.grad[0, 1] == 0 and logp.grad[1, 2] == 0
    assert torch.equal(kl_k3(logp.detach()[:, :1], ref[:, :1]), expected[:, :1])  # no mask: every position
