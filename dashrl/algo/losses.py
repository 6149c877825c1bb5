"""Token log-probs, the policy-gradient / PPO / KL token terms, and registered loss aggregations.

Per token t of completion i (docs/algorithm.md §2):

    pg_{i,t}  = -min(rho A_i, clip(rho, 1 - clip_low, 1 + clip_high) A_i),  rho = exp(l - l_old)
                and, for A_i < 0 with the dual clip c: min(pg_{i,t}, -c A_i)   (rho's effect <= c)
    kl_{i,t}  = exp(l_ref - l) - (l_ref - l) - 1                        (k3 estimator, >= 0)
    loss_{i,t} = pg_{i,t} + beta kl_{i,t}

l is the log-prob under the sampling distribution (temperature, top-k, top-p); l_ref is the
reference's under the temperature alone: the untruncated reference gives every sampled token a
finite log-prob, where a truncated one would floor the tokens outside its own top-k / top-p set
(k3 of order 1e4, or inf). With one optimizer step per sampled batch, l_old = stopgrad(l): rho = 1
and the gradient is exactly -A_i grad l (REINFORCE with a group baseline). With reuse (PPO), l_old
are the trainer's own log-probs of the batch before its first update (``dashrl.rl.loop``).

Padding and masked positions are excluded with ``torch.where``, never by multiplying with a 0/1
mask: 0 x inf is NaN, and a NaN in one padded position would poison the whole gradient.

Aggregation over tokens is a registered variant: each gives per-token weights and a normaliser
computed from the WHOLE optimizer step's counts, so the aggregate does not depend on how the step
is split into micro-batches. The loop back-propagates sum(weights * loss) per micro-batch and
divides the accumulated gradient by the normaliser once, before clipping:

    grpo     sum_i (1/|y_i|) sum_t loss_{i,t} / N          (mean of per-sequence token means)
    dapo     sum_{i,t} loss_{i,t} / (total tokens)          (DAPO's token-level loss; TRL's default)
    bnpo     the same as dapo here (see below)
    dr_grpo  sum_{i,t} loss_{i,t} / (N x max_new_tokens)    (all of the paper's scripts)

N and "total tokens" count the step's samples as ``filter_norm`` says: every selected sample
(``original``: a filtered sample's tokens stay in the denominator, so tau = 0 is lossless at beta = 0)
or the kept ones only (``kept``). dapo with ``filter_norm: kept`` is DAPO's own objective: its dynamic
sampling never lets a zero-advantage group into the batch, so their tokens never count; with
``original`` it is TRL's dapo (every sampled token counts). TRL's bnpo divides each micro-batch by its
own token count, so its weights depend on how the step is split; dashrl's ``bnpo`` always used the
whole step's count, which is dapo: the name stays for configs that use it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from dashrl.algo.batching import PackedBatch, TreeBatch
from dashrl.algo.sampling import sampling_logprobs

LOGP_FLOOR = -1e4  # a token outside the current top-k / top-p set (no gradient flows through it)
LOG_RATIO_MAX = 20.0  # rho = exp(l - l_old) is computed from a log-ratio clamped here (rho <= 4.9e8)


@dataclass(frozen=True)
class StepCounts:
    """What the normaliser of one optimizer step counts (all sampled, or kept only: filter_norm)."""

    sequences: int
    tokens: int
    max_new_tokens: int


@dataclass(frozen=True)
class LossAggregation:
    name: str
    token_weights: Callable[[torch.Tensor], torch.Tensor]  # mask (B, T) -> weights (B, T)
    normaliser: Callable[[StepCounts], float]


LOSS_AGGREGATIONS: dict[str, LossAggregation] = {}


def register_loss_agg(name: str, normaliser: Callable[[StepCounts], float]):
    def decorate(token_weights: Callable[[torch.Tensor], torch.Tensor]):
        if name in LOSS_AGGREGATIONS:
            raise ValueError(f"loss aggregation {name!r} registered twice")
        LOSS_AGGREGATIONS[name] = LossAggregation(name, token_weights, normaliser)
        return token_weights

    return decorate


def get_loss_agg(name: str) -> LossAggregation:
    if name not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {name!r} (valid: {', '.join(sorted(LOSS_AGGREGATIONS))})")
    return LOSS_AGGREGATIONS[name]


@register_loss_agg("grpo", normaliser=lambda c: c.sequences)
def _grpo_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1)  # (B, T): 1/|y_i| on each real token


def _total_tokens(counts: StepCounts) -> float:
    return counts.tokens  # every counted completion token of the whole step (all micro-batches and processes)


@register_loss_agg("dapo", normaliser=_total_tokens)
def _dapo_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask  # (B, T): each token weighs the same, whichever sequence it is in


@register_loss_agg("bnpo", normaliser=_total_tokens)
def _bnpo_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask  # (B, T)


@register_loss_agg("dr_grpo", normaliser=lambda c: c.sequences * c.max_new_tokens)
def _dr_grpo_weights(mask: torch.Tensor) -> torch.Tensor:
    return mask  # (B, T)


def policy_token_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped surrogate per token. logp, old_logp: (B, T); advantages: (B,).

    ``dual_clip`` c (> 1; None or 0: off): for A < 0 the loss is min(surrogate loss, -c A), so a
    ratio far above 1 (a bad token the updates since sampling made much likelier) costs at most
    c |A| and gets no gradient past it (Ye et al. 2020's dual-clip PPO). The log-ratio is clamped at ``LOG_RATIO_MAX``: only an
    old log-prob at the floor (a token outside the old top-k / top-p set) gets there, and rho stays
    finite (exp overflow would turn the unselected branch's zero gradient into NaN).

    Returns (loss (B, T), clipped (B, T) bool: where a clip (ratio or dual) decided the loss).
    """
    ratio = torch.exp((logp - old_logp).clamp(max=LOG_RATIO_MAX))  # (B, T)
    adv = advantages[:, None]  # (B, 1)
    unclipped = ratio * adv  # (B, T)
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * adv  # (B, T)
    loss = -torch.minimum(unclipped, clipped)  # (B, T)
    was_clipped = clipped < unclipped  # (B, T)
    if dual_clip:
        bound = (-dual_clip * adv).expand_as(loss)  # (B, T): c |A| where A < 0
        dual = (adv < 0) & (loss > bound)  # (B, T)
        loss = torch.where(dual, bound, loss)
        was_clipped = was_clipped | dual
    return loss, was_clipped


def truncated_is_weights(target_logp: torch.Tensor, behaviour_logp: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Per-token importance weights min(pi_target / pi_behaviour, cap), no gradient. (B, T), (B, T) -> (B, T).

    Truncated importance sampling (Ionides 2008; for RL on LLMs, Yao et al. 2025): the rollout engine
    (a bf16 copy, another kernel, vLLM) samples from pi_behaviour while the update assumes the
    trainer's pi_target; the weight corrects the mismatch, truncation at ``cap`` bounds its variance.
    ``cap`` None: the untruncated ratio (a metric). The log-ratio is clamped at ``LOG_RATIO_MAX``.
    """
    with torch.no_grad():
        ratio = torch.exp((target_logp - behaviour_logp).clamp(max=LOG_RATIO_MAX))  # (B, T)
        return ratio if cap is None else ratio.clamp(max=cap)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy || reference). (B, T) -> (B, T), >= 0.

    ``logp`` is the policy's log-prob of the sampled token, ``ref_logp`` the reference's (under the
    temperature alone, so finite). 0 where ``mask`` (B, T) is false and where ``logp`` is at the
    floor (a token outside the policy's current top-k / top-p set: it gets no gradient, and
    exp(l_ref - floor) overflows); the excluded positions are replaced before the exp, so neither
    the value nor the gradient can be inf or NaN.
    """
    valid = logp > LOGP_FLOOR  # (B, T)
    if mask is not None:
        valid = valid & mask.bool()
    delta = torch.where(valid, ref_logp - logp, torch.zeros_like(logp))  # (B, T)
    return torch.exp(delta) - delta - 1


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, top_k: int = 0,
                   top_p: float = 1.0, with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``token_ids`` under the sampling distribution of ``logits``. (..., V), (...) -> (...).

    ``with_entropy``: also the entropy (nats) of that distribution at each position (...), without
    gradient (a metric: computed from the same (..., V) scores, so it costs one softmax, no forward)."""
    if top_k == 0 and top_p == 1.0:
        # Full softmax: log p = z/T - logsumexp(z/T), without materialising (..., V) log-probs.
        scaled = logits.float() / temperature  # (..., V)
        chosen = scaled.gather(-1, token_ids[..., None]).squeeze(-1)  # (...)
        log_z = torch.logsumexp(scaled, dim=-1)  # (...)
        if not with_entropy:
            return chosen - log_z  # (...)
        with torch.no_grad():
            # H = log Z - E_p[z/T]
            entropy = log_z - (scaled.softmax(-1) * scaled).sum(-1)  # (...)
        return chosen - log_z, entropy
    logp = sampling_logprobs(logits, temperature, top_k, top_p)  # (..., V)
    # A token sampled under slightly different weights (bf16 engine, PPO reuse) may fall outside the
    # current top-k/top-p set: a finite floor keeps the ratio defined; such a token gets no gradient.
    chosen = logp.gather(-1, token_ids[..., None]).squeeze(-1).clamp(min=LOGP_FLOOR)  # (...)
    if not with_entropy:
        return chosen
    with torch.no_grad():
        inside = torch.isfinite(logp)  # (..., V): the top-k / top-p set; -inf outside contributes 0
        entropy = -torch.where(inside, logp.exp() * logp, 0.0).sum(-1)  # (...)
    return chosen, entropy


def completion_logprobs(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the completion tokens under the sampling distribution (the padded layout).

    input_ids, attention_mask: (B, Tp + Tc), prompts left-padded to Tp, completions right-padded to
    Tc; completion_ids: (B, Tc). Returns (B, Tc) (``with_entropy``: and the entropy (B, Tc)). The
    head runs only on the Tc + 1 last positions.
    """
    n_completion = completion_ids.shape[1]
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, Tp + Tc)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, logits_to_keep=n_completion + 1,
        use_cache=False,
    ).logits[:, :-1, :]  # (B, Tc, V): position t predicts completion token t
    return token_logprobs(logits, completion_ids, temperature, top_k, top_p, with_entropy)  # (B, Tc)


# Attention kernels that read a custom 4-D mask. transformers hands a 4-D mask to the kernel as it
# is: SDPA reads a boolean one (True = attend); eager ADDS the mask to the scores, so it needs the
# additive form (0 / a large negative), where a boolean one would add 1 to the visible scores and 0 to
# the hidden ones (log-probs off by ~0.3, and every branch sees its siblings). FlashAttention takes no
# 4-D mask at all (varlen packing through position_ids cannot express a tree: branches share a prefix).
TREE_MASK_KERNELS = ("sdpa", "eager")


def attention_kernel(model: PreTrainedModel) -> str:
    """The attention implementation the model runs (``config._attn_implementation``; sdpa when unset)."""
    return getattr(model.config, "_attn_implementation", None) or "sdpa"


def check_tree_packing(model: PreTrainedModel) -> None:
    """Raise, naming the model and the setting, where the tree layout would not compute the padded
    layout's log-probs: an attention kernel that cannot take its 4-D mask, a sliding window (a custom
    mask replaces the window), soft-capped logits (the head is applied by hand)."""
    name, config = type(model).__name__, model.config
    kernel = attention_kernel(model)
    if kernel not in TREE_MASK_KERNELS:
        raise ValueError(f"{name} runs attention {kernel!r}, which takes no custom 4-D mask: packing: tree needs "
                         f"{' or '.join(TREE_MASK_KERNELS)} (attn_implementation), or use packing: padded")
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None) or []
    if (window and getattr(config, "use_sliding_window", True)) or "sliding_attention" in layer_types:
        raise ValueError(f"{name} uses sliding-window attention (sliding_window={window}): the tree layout's mask "
                         f"would replace the window; use packing: padded")
    if getattr(config, "final_logit_softcapping", None):
        raise ValueError(f"{name} soft-caps its logits: use packing: padded")


def tree_attention_mask(visible: torch.Tensor, model: PreTrainedModel) -> torch.Tensor:
    """The tree layout's boolean mask (R, 1, L, L) as the model's kernel reads it: as is for SDPA,
    additive (0 where visible, the dtype's minimum elsewhere) for eager."""
    if attention_kernel(model) == "sdpa":
        return visible
    dtype = model.get_input_embeddings().weight.dtype
    if torch.is_autocast_enabled(visible.device.type):
        dtype = torch.get_autocast_dtype(visible.device.type)
    hidden = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=visible.device)
    return torch.where(visible, torch.zeros((), dtype=dtype, device=visible.device), hidden)  # (R, 1, L, L)


def tree_completion_logprobs(
    model: PreTrainedModel, batch: TreeBatch, temperature: float, top_k: int = 0, top_p: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The same log-probs from the tree layout (``dashrl.algo.batching.pack_trees``). Returns (B, Tc), 0 at padding
    (``with_entropy``: and the entropy (B, Tc), 0 at padding).

    The decoder runs on the packed rows; the head only on the N positions that predict a completion
    token. Needs a model whose logits are ``lm_head(last hidden state)`` (Llama, Qwen2, SmolLM, ...).
    """
    check_tree_packing(model)
    mask = tree_attention_mask(batch.attention_mask, model)  # (R, 1, L, L) in the form the kernel reads
    hidden = model.get_decoder()(input_ids=batch.input_ids, attention_mask=mask,
                                 position_ids=batch.position_ids, use_cache=False).last_hidden_state  # (R, L, H)
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch.predictor_index]  # (N, H)
    logits = model.get_output_embeddings()(hidden)  # (N, V)
    targets = batch.completion_ids[batch.token_row, batch.token_col]  # (N,)
    where = (batch.token_row, batch.token_col)
    if not with_entropy:
        flat = token_logprobs(logits, targets, temperature, top_k, top_p)  # (N,)
        return flat.new_zeros(batch.completion_ids.shape).index_put(where, flat)  # (B, Tc)
    flat, entropy = token_logprobs(logits, targets, temperature, top_k, top_p, with_entropy=True)  # (N,), (N,)
    return (flat.new_zeros(batch.completion_ids.shape).index_put(where, flat),  # (B, Tc)
            entropy.new_zeros(batch.completion_ids.shape).index_put(where, entropy))  # (B, Tc)


def batch_logprobs(
    model: PreTrainedModel, batch: PackedBatch | TreeBatch, temperature: float, top_k: int = 0, top_p: float = 1.0,
    with_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Completion log-probs (B, Tc) of a batch in either layout (``dashrl.algo.batching``), 0 at padding;
    ``with_entropy``: (log-probs, entropy of the sampling distribution (B, Tc), no gradient, 0 at padding).

    ``top_k`` 0 and ``top_p`` 1 give the temperature-only distribution (the KL reference's).
    """
    if isinstance(batch, TreeBatch):
        return tree_completion_logprobs(model, batch, temperature, top_k, top_p, with_entropy)  # 0 at padding already
    out = completion_logprobs(model, batch.input_ids, batch.attention_mask, batch.completion_ids, temperature, top_k,
                              top_p, with_entropy)  # (B, Tc), or ((B, Tc), (B, Tc))
    real = batch.completion_mask > 0  # (B, Tc): a padded row's floor is not a value
    if not with_entropy:
        return torch.where(real, out, torch.zeros_like(out))
    logp, entropy = out
    return torch.where(real, logp, torch.zeros_like(logp)), torch.where(real, entropy, torch.zeros_like(entropy))


class LogprobModel(torch.nn.Module):
    """``batch_logprobs`` of the wrapped model as a module's forward: the unit a trainer calls.

    Under FSDP this wrapper is the root that is sharded (``dashrl.infra.distributed.shard_model``), so
    that every parameter the tree layout touches (the decoder, and the head applied to the N
    predicting positions only) is gathered and reduced by FSDP's own hooks. In one process it is a
    plain call of ``batch_logprobs``."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, batch: PackedBatch | TreeBatch, temperature: float, top_k: int = 0,
                top_p: float = 1.0, with_entropy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return batch_logprobs(self.model, batch, temperature, top_k, top_p, with_entropy)  # (B, Tc)
