"""Layouts for the (prompt, completion) batches that are trained on (RL and SFT), registered by name.

``padded``: one row per sequence. Prompts are left-padded and completions right-padded, so every
completion starts at the same column: ``input_ids[:, Tp:]`` are the completion tokens and
``completion_mask`` marks the real ones (``PackedBatch``, read by ``completion_logprobs``).

``tree`` (the default): one copy of each distinct prompt, its completions after it as branches of
a tree, several trees per row (``TreeBatch``). A custom 4-D attention mask lets a prompt token see
the earlier tokens of its own prompt, and a completion token its prompt and the earlier tokens of
its own completion only; position ids restart at the prompt's length for every branch. So each
completion sees exactly the context it has in the padded layout, and its log-probs are the same
numbers (up to float rounding), while

  - the G samples of a prompt share one prompt pass instead of G (an RL micro-batch of one group
    of 8 with a 62-token prompt and ~70-token completions: 622 tokens instead of 8 x 132);
  - no padding goes through the model except at the end of a short row, and the 49k-wide head runs
    only on the positions that predict a completion token.

Rows are filled first-fit-decreasing with whole trees, up to the longest tree's length, so the
attention's quadratic cost never grows past what the longest tree alone costs. Both layouts give
per-completion results as ``(B, Tc)`` tensors in the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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

    @property
    def model_tokens(self) -> int:
        """Real (non-padding) tokens the model runs on."""
        return int(self.attention_mask.sum())


@dataclass
class TreeBatch:
    input_ids: torch.Tensor  # (R, L) rows of trees: a prompt, then its completions
    position_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool: query row attends to key column
    predictor_index: torch.Tensor  # (N,) flat index into (R * L) of the position predicting each completion token
    token_row: torch.Tensor  # (N,) which sequence (0..B-1) each completion token belongs to
    token_col: torch.Tensor  # (N,) its index within the completion
    completion_ids: torch.Tensor  # (B, Tc) right-padded
    completion_mask: torch.Tensor  # (B, Tc) float, 1 on real completion tokens
    behaviour_logprobs: torch.Tensor  # (B, Tc) saved at sampling time (0 where not given)
    real_tokens: int  # prompt copies + completion tokens in the rows (no padding)

    @property
    def n_tokens(self) -> int:
        return int(self.completion_mask.sum())

    @property
    def model_tokens(self) -> int:
        return self.real_tokens


def _check_lengths(prompt_ids: Sequence, completion_ids: Sequence) -> None:
    if len(prompt_ids) != len(completion_ids) or not prompt_ids:
        raise ValueError(f"need as many prompts as completions (>= 1), got {len(prompt_ids)} and {len(completion_ids)}")


def _completion_tensors(
    completion_ids: Sequence[Sequence[int]], behaviour_logprobs: Sequence[Sequence[float] | None] | None,
    pad_id: int, device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(c) for c in completion_ids)
    ids, mask, behaviour = [], [], []
    for i, c in enumerate(completion_ids):
        right = width - len(c)
        ids.append(list(c) + [pad_id] * right)
        mask.append([1.0] * len(c) + [0.0] * right)
        given = behaviour_logprobs[i] if behaviour_logprobs is not None else None
        behaviour.append(list(given if given is not None else [0.0] * len(c)) + [0.0] * right)
    return (torch.tensor(ids, dtype=torch.long, device=device),
            torch.tensor(mask, dtype=torch.float32, device=device),
            torch.tensor(behaviour, dtype=torch.float32, device=device))


def pack_sequences(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    behaviour_logprobs: Sequence[Sequence[float] | None] | None = None,
) -> PackedBatch:
    """The padded layout: one row per sequence."""
    _check_lengths(prompt_ids, completion_ids)
    width_prompt = max(len(p) for p in prompt_ids)
    width_completion = max(len(c) for c in completion_ids)
    ids, mask = [], []
    for p, c in zip(prompt_ids, completion_ids, strict=True):
        left, right = width_prompt - len(p), width_completion - len(c)
        ids.append([pad_id] * left + list(p) + list(c) + [pad_id] * right)
        mask.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
    completions, completion_mask, behaviour = _completion_tensors(completion_ids, behaviour_logprobs, pad_id, device)
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long, device=device),
        attention_mask=torch.tensor(mask, dtype=torch.long, device=device),
        completion_ids=completions,
        completion_mask=completion_mask,
        behaviour_logprobs=behaviour,
    )


def pack_trees(
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    behaviour_logprobs: Sequence[Sequence[float] | None] | None = None,
) -> TreeBatch:
    """The tree layout (module docstring): sequences with the same prompt token ids share one prompt."""
    _check_lengths(prompt_ids, completion_ids)
    # Trees: distinct prompts in first-appearance order, each with the sequences that continue it.
    trees: dict[tuple[int, ...], list[int]] = {}
    for i, p in enumerate(prompt_ids):
        trees.setdefault(tuple(p), []).append(i)
    sizes = {p: len(p) + sum(len(completion_ids[i]) for i in members) for p, members in trees.items()}
    capacity = max(sizes.values())
    rows: list[list[tuple[int, ...]]] = []
    room: list[int] = []
    for p in sorted(trees, key=lambda p: -sizes[p]):  # first-fit decreasing (stable for equal sizes)
        slot = next((r for r, free in enumerate(room) if free >= sizes[p]), None)
        if slot is None:
            rows.append([])
            room.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(p)
        room[slot] -= sizes[p]

    n_rows, width = len(rows), capacity
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    tree_of = torch.full((n_rows, width), -1, dtype=torch.long)  # which tree a position belongs to (-1: padding)
    branch_of = torch.full((n_rows, width), -1, dtype=torch.long)  # which completion (-1: a prompt or padding)
    predictor = [0] * sum(len(c) for c in completion_ids)
    starts = [0] * len(completion_ids)  # offset of each sequence's tokens in the flat (N,) order
    for i in range(1, len(completion_ids)):
        starts[i] = starts[i - 1] + len(completion_ids[i - 1])
    tree_index = 0
    for r, row in enumerate(rows):
        col = 0
        for p in row:
            n_prompt = len(p)
            input_ids[r, col : col + n_prompt] = torch.tensor(p, dtype=torch.long)
            position_ids[r, col : col + n_prompt] = torch.arange(n_prompt)
            tree_of[r, col : col + n_prompt] = tree_index
            last_prompt = r * width + col + n_prompt - 1
            col += n_prompt
            for i in trees[p]:
                c = completion_ids[i]
                input_ids[r, col : col + len(c)] = torch.tensor(list(c), dtype=torch.long)
                position_ids[r, col : col + len(c)] = torch.arange(n_prompt, n_prompt + len(c))
                tree_of[r, col : col + len(c)] = tree_index
                branch_of[r, col : col + len(c)] = i
                # token 0 is predicted by the prompt's last position, token t by the branch's token t - 1
                if c:
                    predictor[starts[i]] = last_prompt
                    predictor[starts[i] + 1 : starts[i] + len(c)] = range(r * width + col, r * width + col + len(c) - 1)
                col += len(c)
            tree_index += 1

    causal = torch.ones((width, width), dtype=torch.bool).tril()  # (L, L) key <= query
    same_tree = tree_of[:, :, None] == tree_of[:, None, :]  # (R, L, L)
    key_branch, query_branch = branch_of[:, None, :], branch_of[:, :, None]
    visible = (key_branch == -1) | (key_branch == query_branch)  # a key in the prompt, or in the query's own branch
    mask = causal & same_tree & visible & (tree_of[:, None, :] >= 0)
    mask |= torch.eye(width, dtype=torch.bool)  # padding attends to itself (no empty softmax row)
    token_row = torch.tensor([i for i, c in enumerate(completion_ids) for _ in c], dtype=torch.long)
    token_col = torch.tensor([t for c in completion_ids for t in range(len(c))], dtype=torch.long)
    completions, completion_mask, behaviour = _completion_tensors(completion_ids, behaviour_logprobs, pad_id, device)
    return TreeBatch(
        input_ids=input_ids.to(device),
        position_ids=position_ids.to(device),
        attention_mask=mask[:, None].to(device),
        predictor_index=torch.tensor(predictor, dtype=torch.long, device=device),
        token_row=token_row.to(device),
        token_col=token_col.to(device),
        completion_ids=completions,
        completion_mask=completion_mask,
        behaviour_logprobs=behaviour,
        real_tokens=sum(len(p) for p in trees) + sum(len(c) for c in completion_ids),
    )


@dataclass(frozen=True)
class Packing:
    name: str
    pack: Callable[..., PackedBatch | TreeBatch]


PACKINGS: dict[str, Packing] = {
    "padded": Packing("padded", pack_sequences),
    "tree": Packing("tree", pack_trees),
}


def get_packing(name: str) -> Packing:
    if name not in PACKINGS:
        raise ValueError(f"unknown packing {name!r} (valid: {', '.join(sorted(PACKINGS))})")
    return PACKINGS[name]
