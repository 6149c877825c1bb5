"""Prompt rendering and model materialisation on tiny local models (the Hub is never contacted)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dashrl.config.params import PromptParams
from dashrl.infra.files import dir_sha256
from dashrl.models import load_model, load_tokenizer, materialise_model, render_prompt

CHAT = PromptParams(format="chat", instruction="Put the answer in \\boxed{}.", system_prompt=None)


def test_chat_prompt_uses_the_template_and_instruction(tiny_tokenizer):
    text = render_prompt("What is 2+3?", tiny_tokenizer, CHAT)
    assert text == (
        "<|im_start|>system\nYou are a tiny test model.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?\nPut the answer in \\boxed{}.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_prompt_with_own_system_prompt(tiny_tokenizer):
    params = PromptParams(format="chat", instruction="", system_prompt="Be brief.")
    text = render_prompt("Q", tiny_tokenizer, params)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nQ<|im_end|>")


def test_raw_prompt_is_the_problem_text(tiny_tokenizer):
    raw = PromptParams(format="raw", instruction="ignored", system_prompt=None)
    assert render_prompt("What is 2+3?", tiny_tokenizer, raw) == "What is 2+3?"


def test_chat_format_needs_a_template(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template: use prompt.format: raw"):
        render_prompt("Q", tokenizer, CHAT)


def test_load_tokenizer_pads_left(tiny_model_dir):
    tokenizer = load_tokenizer(tiny_model_dir)
    assert tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id


def test_materialise_from_a_local_dir_copies_weights_and_records_a_hash(tiny_model_dir, tmp_path):
    out = tmp_path / "base"
    record = materialise_model(str(tiny_model_dir), out, dtype="float32")
    assert record["kind"] == "local"
    assert record["content_sha256"] == dir_sha256(out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    original, copied = load_model(tiny_model_dir), load_model(out)
    for (name, a), (_, b) in zip(original.state_dict().items(), copied.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 64


def test_materialise_in_bfloat16(tiny_model_dir, tmp_path):
    materialise_model(str(tiny_model_dir), tmp_path / "bf16", dtype="bfloat16")
    tensors = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_materialise_rejects_a_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'embedded', a local directory nor a Hub id"):
        materialise_model(str(tmp_path / "nowhere" / "model"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_load_model_names_a_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: not a model directory"):
        load_model(tmp_path)
