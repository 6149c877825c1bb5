"""The tree layout gives the padded layout's log-probs and gradients, and packs what it says it packs."""

from __future__ import annotations

import pytest
import torch
from conftest import build_tiny_model

from dashrl.algo.batching import get_packing, pack_sequences, pack_trees
from dashrl.algo.losses import attention_kernel, batch_logprobs, check_tree_packing

PAD = 0
CPU = torch.device("cpu")


def sequences(seed: int = 0):
    """Two prompts with three and two completions (RL groups), plus one prompt with one (SFT-like)."""
    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 250, (n,), generator=g).tolist()

    p1, p2, p3 = ids(7), ids(4), ids(9)
    prompts = [p1, p2, p1, p3, p2, p1]
    completions = [ids(n) for n in (5, 1, 11, 3, 8, 2)]
    return prompts, completions


def test_tree_layout_shares_prompts_and_puts_no_padding_inside_a_tree():
    prompts, completions = sequences()
    batch = pack_trees(prompts, completions, PAD, CPU)
    n_completion = sum(map(len, completions))
    assert batch.real_tokens == (7 + 4 + 9) + n_completion  # each distinct prompt once
    assert batch.predictor_index.shape == (n_completion,)
    # rows hold whole trees, none longer than the longest tree (7 + 5 + 11 + 2 = 25)
    assert batch.input_ids.shape[1] == 25
    assert int((batch.input_ids != PAD).sum()) == batch.real_tokens
    # each completion token sits right after its predictor, or the predictor is its prompt's last token
    flat = batch.input_ids.reshape(-1)
    targets = batch.completion_ids[batch.token_row, batch.token_col]
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        mine = (batch.token_row == i).nonzero().squeeze(-1)
        assert targets[mine].tolist() == c
        first = int(batch.predictor_index[mine[0]])
        assert flat[first] == p[-1]
        assert batch.position_ids.reshape(-1)[first] == len(p) - 1
        for t in range(1, len(c)):
            assert flat[int(batch.predictor_index[mine[t]])] == c[t - 1]


def test_a_completion_sees_its_prompt_and_itself_only():
    prompts, completions = [[5, 6], [5, 6]], [[7, 8], [9]]
    batch = pack_trees(prompts, completions, PAD, CPU)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3, 2]]
    mask = batch.attention_mask[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the second branch skips the first
    ]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (20, 0.9)])
def test_tree_and_padded_give_the_same_logprobs_and_gradients(tiny_tokenizer, top_k, top_p, attention):
    model = build_tiny_model(len(tiny_tokenizer))
    model.set_attn_implementation(attention)
    assert attention_kernel(model) == attention
    prompts, completions = sequences(1)
    results = {}
    for name in ("padded", "tree"):
        batch = get_packing(name).pack(prompts, completions, PAD, CPU)
        logp = batch_logprobs(model, batch, 0.7, top_k, top_p)  # (B, Tc)
        mask = batch.completion_mask
        (logp * mask * torch.arange(1, logp.shape[1] + 1)).sum().backward()  # weights differ per position
        results[name] = (logp.detach() * mask, [p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    (logp_padded, grads_padded), (logp_tree, grads_tree) = results["padded"], results["tree"]
    assert torch.allclose(logp_padded, logp_tree, atol=1e-5)
    assert (logp_tree[pack_sequences(prompts, completions, PAD, CPU).completion_mask == 0] == 0).all()
    for a, b in zip(grads_padded, grads_tree, strict=True):  # equal up to float32 summation order
        assert float((a - b).abs().max()) <= 1e-5 * float(a.abs().max()) + 1e-7


def test_unknown_packing_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown packing 'dense' \\(valid: padded, tree\\)"):
        get_packing("dense")


def test_a_boolean_tree_mask_under_eager_attention_would_be_wrong(tiny_tokenizer):
    """Why the eager case needs the additive mask: eager adds the mask to the scores, so the boolean
    one (SDPA's form) gives other numbers; the layout converts it (the test above)."""
    model = build_tiny_model(len(tiny_tokenizer))
    model.set_attn_implementation("eager")
    batch = pack_trees(*sequences(1), PAD, CPU)
    decoder = model.get_decoder()
    right = batch_logprobs(model, batch, 0.7).detach()
    raw = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                  use_cache=False).last_hidden_state
    hidden = raw.reshape(-1, raw.shape[-1])[batch.predictor_index]
    wrong = torch.log_softmax(model.get_output_embeddings()(hidden).float() / 0.7, -1)
    targets = batch.completion_ids[batch.token_row, batch.token_col]
    wrong = wrong.gather(-1, targets[:, None]).squeeze(-1)
    assert float((wrong.detach() - right[batch.token_row, batch.token_col]).abs().max()) > 1e-3


def test_tree_packing_refuses_kernels_and_windows_it_cannot_serve(tiny_tokenizer):
    model = build_tiny_model(len(tiny_tokenizer))
    model.config._attn_implementation = "flash_attention_2"  # not installed here: only the check is exercised
    with pytest.raises(ValueError, match=r"runs attention 'flash_attention_2', which takes no custom 4-D mask: "
                                         r"packing: tree needs sdpa or eager .* or use packing: padded"):
        check_tree_packing(model)
    model.config._attn_implementation = "sdpa"
    model.config.sliding_window = 4096
    with pytest.raises(ValueError, match=r"sliding-window attention \(sliding_window=4096\).*use packing: padded"):
        check_tree_packing(model)
    model.config.use_sliding_window = False  # Qwen2.5: a window in the config, switched off
    check_tree_packing(model)
