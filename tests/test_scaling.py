"""GPU-scale features tested on CPU: activation checkpointing, the RoPE buffers of a bf16 rollout copy,
and the memory plan (its arithmetic on the paper's Qwen2.5 configs, its refusals, and its estimate
against a measured peak). FSDP is tested in tests/test_distributed.py; tree packing under eager
attention in tests/test_batching.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import REPO, build_tiny_model
from test_rl import make_cfg

from dashrl.algo.batching import pack_trees
from dashrl.algo.losses import LogprobModel
from dashrl.config.params import load_params
from dashrl.engines.factory import make_engine
from dashrl.memory import GIB, ModelShape, Setting, plan, plans, problems, refusal
from dashrl.models import cast_for_rollout, enable_activation_checkpointing, eval_mode

CPU = torch.device("cpu")

# ------------------------------------------------------------------------------------------------
# Activation checkpointing


def layer_calls(model) -> list[int]:
    calls = [0]
    # a pre-hook: the recomputation stops once the saved tensors are back (torch's early stop), before
    # the MLP's own forward hook would run
    model.get_decoder().layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize("mode", ["rl", "sft"])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_tokenizer, mode):
    """RL computes log-probs in eval mode (no dropout), SFT in train mode: both keep checkpointing on
    (a layer's forward runs again in the backward pass) and give the gradients of the plain run."""
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 250, (9,), generator=g).tolist()] * 3
    completions = [torch.randint(3, 250, (n,), generator=g).tolist() for n in (7, 12, 4)]
    batch = pack_trees(prompts, completions, 0, CPU)
    grads, forwards = {}, {}
    for checkpointing in (False, True):
        model = build_tiny_model(len(tiny_tokenizer), seed=1)
        if checkpointing:
            enable_activation_checkpointing(model)
        eval_mode(model) if mode == "rl" else model.train()
        calls = layer_calls(model)
        logp = LogprobModel(model)(batch, 0.8)  # (B, Tc)
        (logp * batch.completion_mask * torch.arange(1.0, logp.shape[1] + 1)).sum().backward()
        grads[checkpointing] = {n: p.grad.clone() for n, p in model.named_parameters()}
        forwards[checkpointing] = calls[0]
    assert forwards == {False: 1, True: 2}  # recomputed in the backward pass: checkpointing was on
    if mode == "rl":
        assert not model.get_decoder().layers[0].mlp.training  # eval_mode left dropout off below the layer
    for name, grad in grads[False].items():
        assert torch.allclose(grads[True][name], grad, rtol=1e-5, atol=1e-7), name


def test_gradient_checkpointing_is_an_optional_key_left_out_of_the_fingerprint(tiny_model_dir, tmp_path):
    from test_rl import GRADER, PROMPT

    from dashrl.rl.checkpoints import run_fingerprint

    train = tmp_path / "train.parquet"
    train.write_bytes(b"rows")
    base = make_cfg()
    assert (base.gradient_checkpointing, base.parallel) == (False, "ddp")  # absent from params: the defaults
    fingerprints = {run_fingerprint(make_cfg(**kw), PROMPT, GRADER, tiny_model_dir, train)
                    for kw in ({}, {"gradient_checkpointing": True}, {"parallel": "fsdp"})}
    assert len(fingerprints) == 1  # how a step runs: a run resumes under either setting
    assert run_fingerprint(make_cfg(lr=0.5), PROMPT, GRADER, tiny_model_dir, train) not in fingerprints


# ------------------------------------------------------------------------------------------------
# The bf16 rollout copy keeps RoPE's frequencies in float32


def test_rollout_copy_keeps_rope_buffers_float32(tiny_tokenizer):
    policy = build_tiny_model(len(tiny_tokenizer))
    engine = make_engine(make_cfg(engine="hf", rollout_dtype="bfloat16"), policy, tiny_tokenizer)
    copy = engine.model
    assert copy is not policy and copy.get_input_embeddings().weight.dtype == torch.bfloat16
    for name, buffer in copy.named_buffers():
        if name.endswith("inv_freq"):
            assert buffer.dtype == torch.float32, name
            assert torch.equal(buffer, dict(policy.named_buffers())[name]), name
    # What a plain cast would have done: frequencies rounded to 8 bits, a phase error growing with position.
    plain = build_tiny_model(len(tiny_tokenizer)).to(torch.bfloat16)
    inv_freq = dict(policy.named_buffers())["model.rotary_emb.inv_freq"]
    rounded = dict(plain.named_buffers())["model.rotary_emb.inv_freq"]
    assert rounded.dtype == torch.bfloat16
    assert float(((rounded.float() - inv_freq) * 2048).abs().max()) > 0.01  # radians at position 2048
    kept = cast_for_rollout(build_tiny_model(len(tiny_tokenizer)), torch.bfloat16)
    assert dict(kept.named_buffers())["model.rotary_emb.inv_freq"].dtype == torch.float32


# ------------------------------------------------------------------------------------------------
# The memory plan

# The published architectures (config.json of Qwen/Qwen2.5-{0.5B,1.5B,3B}) and their parameter counts.
QWEN = {
    "0.5B": (dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2), 494_032_768),
    "1.5B": (dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2), 1_543_714_304),
    "3B": (dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                num_key_value_heads=2), 3_085_938_688),
}


def qwen_dir(tmp_path, size: str):
    arch, _ = QWEN[size]
    config = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
              "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
              "tie_word_embeddings": True, "hidden_act": "silu", "use_sliding_window": False,
              "sliding_window": 32768, "torch_dtype": "bfloat16", **arch}
    path = tmp_path / f"qwen2.5-{size}"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return path


def setting(**overrides) -> Setting:
    values = dict(name="rl.runs.dash", kind="rl", world_size=1, parallel="ddp", gradient_checkpointing=False,
                  compute_dtype="bfloat16", micro_batch_size=4, sequence_tokens=1280, completion_tokens=1024,
                  kl_reference=False, engine="hf", rollout_dtype="bfloat16", rollout_rows=64)
    return Setting(**{**values, **overrides})


@pytest.mark.parametrize("size", list(QWEN))
def test_memory_plan_counts_the_qwen_parameters_exactly(tmp_path, size):
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(qwen_dir(tmp_path, size)))
    assert shape.n_params == QWEN[size][1]
    arch = QWEN[size][0]
    h, i = arch["hidden_size"], arch["intermediate_size"]
    kv = h // arch["num_attention_heads"] * arch["num_key_value_heads"]  # head_dim x kv heads
    # q, k, v (with biases), o, the MLP's three matrices, two norms
    assert shape.layer_params == (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert shape.root_params == 151936 * h + h  # tied: the embedding is the head; the final norm


def test_memory_plan_arithmetic_on_qwen_3b(tmp_path):
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(qwen_dir(tmp_path, "3B")))
    n = shape.n_params
    ddp = plan(shape, setting(kl_reference=True), 80 * GIB, "cuda:0")
    lines = {line.component: line.bytes for line in ddp.lines}
    assert lines["weights (fp32)"] == lines["gradients (fp32)"] == 4 * n and lines["AdamW state"] == 8 * n
    assert lines["KL reference"] == 4 * n
    kv = 64 * 1280 * 36 * 2 * 256 * 2  # rows x tokens x layers x (k, v) x kv width x bf16
    assert lines["rollout engine"] == 2 * n + kv
    assert lines["runtime"] == GIB
    assert not ddp.fits  # 20 bytes per parameter = 57.5 GiB before activations and logits
    fsdp = plan(shape, setting(kl_reference=True, parallel="fsdp", world_size=4), 80 * GIB, "cuda:0")
    sharded = {line.component: line.bytes for line in fsdp.lines}
    assert sharded["weights (fp32)"] == n and sharded["AdamW state"] == 2 * n
    assert sharded["gathered layers"] == (2 * shape.layer_params + shape.root_params) * 2
    checkpointed = plan(shape, setting(gradient_checkpointing=True), 80 * GIB, "cuda:0")
    assert ({line.component: line.bytes for line in checkpointed.lines}["activations"]
            < {line.component: line.bytes for line in ddp.lines}["activations"] / 10)
    text = refusal(shape, ddp)
    assert text.startswith("params.yaml: rl.runs.dash: the memory plan needs ")
    for key in ("rl.runs.dash.gradient_checkpointing: true", "rl.runs.dash.parallel: fsdp",
                "rl.runs.dash.kl_coef: 0", "rl.runs.dash.micro_batch_size: 2"):
        assert key in text, key
    vllm = plan(shape, setting(engine="vllm", vllm_share=0.4), 80 * GIB, "cuda:0")
    assert {line.component: line.bytes for line in vllm.lines}["rollout engine"] == 0.4 * 80 * GIB


def test_memory_plan_refuses_the_paper_3b_run_on_one_gpu_and_names_the_keys(tmp_path):
    from transformers import AutoConfig

    params = load_params(REPO / "params.yaml")
    shape = ModelShape.from_config(AutoConfig.from_pretrained(qwen_dir(tmp_path, "3B")))
    found = problems(params, shape, world_size=1, device="cuda:0", capacity_bytes=60 * GIB)
    assert found and all("gradient_checkpointing: true" in line for line in found)
    assert any(line.startswith("params.yaml: rl.runs.dash: the memory plan needs") for line in found)
    # The embedded default's runs fit a 24 GiB CPU machine (what make run checks in its preflight).
    small = ModelShape(n_params=134_515_008, layer_params=3_540_096, n_layers=30, hidden=576, intermediate=1536,
                       kv_width=192, n_heads=9, vocab=49152)
    assert all(p.fits for p in plans(params, small, world_size=1, device="cpu", capacity_bytes=24 * GIB))


MEASURE = textwrap.dedent("""
    import json, resource, sys, torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from dashrl.algo.batching import pack_sequences
    from dashrl.algo.losses import LogprobModel
    from dashrl.memory import ModelShape, Setting, plan
    torch.set_num_threads(1)
    config = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         num_key_value_heads=4, vocab_size=32000, tie_word_embeddings=False)
    checkpointing = sys.argv[1] == "1"
    shape = ModelShape.from_config(config)
    B, P, C = 4, 64, 192
    s = Setting(name="m", kind="rl", world_size=1, parallel="ddp", gradient_checkpointing=checkpointing,
                compute_dtype="float32", micro_batch_size=B, sequence_tokens=P + C, completion_tokens=C)
    estimate = sum(l.bytes for l in plan(shape, s, 1e12, "cpu").lines)
    def rss():
        return int(open("/proc/self/statm").read().split()[1]) * 4096
    base = rss()
    model = LlamaForCausalLM(config)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    g = torch.Generator().manual_seed(0)
    batch = pack_sequences([torch.randint(0, 32000, (P,), generator=g).tolist()] * B,
                           [torch.randint(0, 32000, (C,), generator=g).tolist()] * B, 0, torch.device("cpu"))
    model.train()
    for step in range(2):  # as the RL loop: micro-batches accumulate, AdamW steps, gradients set to None
        for micro in range(2):
            LogprobModel(model)(batch, 1.0).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"n_params": shape.n_params, "estimate": estimate, "measured": peak - base}))
""")


@pytest.mark.parametrize("checkpointing", [False, True])
def test_memory_plan_estimate_against_the_measured_peak_of_a_100m_model(checkpointing):
    """Two RL-like optimizer steps (two micro-batches accumulated each) of a 124M-parameter Llama (fp32,
    CPU) in a fresh process: the peak RSS over the process's start against the plan (docs/scaling.md
    states the error)."""
    out = subprocess.run([sys.executable, "-c", MEASURE, "1" if checkpointing else "0"], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=600).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n_params"] >= 100e6
    ratio = result["estimate"] / result["measured"]
    print(f"memory plan vs measured peak (checkpointing {checkpointing}): {result['estimate'] / GIB:.2f} GiB / "
          f"{result['measured'] / GIB:.2f} GiB = {ratio:.2f}")
    assert 0.8 < ratio < 1.25
