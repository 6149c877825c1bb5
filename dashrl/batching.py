"""One layout for every (prompt, completion) batch that is trained on (RL and SFT).

Prompts are left-padded and completions right-padded, so every completion starts at the same
column: ``input_ids[:, Tp:]`` are the completion tokens and ``completion_mask`` marks the real ones.
``dashrl.losses.completion_logprobs`` reads log-probs of exactly these positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, Tp + Tc) prompts left-padded, completions right-padded
    attention_mask: torch.Tensor  # (B, Tp + Tc)
    completion_ids: torch.Tensor  # (B, Tc)
    completion_mask: torch.Tensor  # (B, Tc) float, 1 on real completion tokens
    behaviour_logprobs: torch.Tensor  # (B, Tc) saved at sampling time (0 where not given)

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    behaviour_logprobs: Sequence[Sequence[float] | None] | None = None,
) -> PackedBatch:
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(f"need as many prompts as completions (>= 1), got {len(prompt_ids)} and {len(completion_ids)}")
    width_prompt = max(len(p) for p in prompt_ids)
    width_completion = max(len(c) for c in completion_ids)
    ids, mask, completions, completion_mask, behaviour = [], [], [], [], []
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
        left, right = width_prompt - len(p), width_completion - len(c)
        ids.append([pad_id] * left + list(p) + list(c) + [pad_id] * right)
        mask.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
        completions.append(list(c) + [pad_id] * right)
        completion_mask.append([1.0] * len(c) + [0.0] * right)
        given = behaviour_logprobs[i] if behaviour_logprobs is not None else None
        behaviour.append(list(given if given is not None else [0.0] * len(c)) + [0.0] * right)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
        completion_ids=torch.tensor(completions, dtype=torch.long, device=device),
        completion_mask=torch.tensor(completion_mask, dtype=torch.float32, device=device),
        behaviour_logprobs=torch.tensor(behaviour, dtype=torch.float32, device=device),
    )
