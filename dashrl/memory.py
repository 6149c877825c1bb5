"""The memory plan: bytes per device of an SFT or RL run, estimated before anything loads.

    python -m dashrl.memory                       # every SFT and RL run of params.yaml, on this machine
    python -m dashrl.memory --world-size 8 --capacity-gib 80 --model-config Qwen/Qwen2.5-3B

The model's shape comes from its config alone (``config.json`` of a directory or a Hub id, or the
embedded GGUF's metadata): the parameter counts are exact, from the model built on the meta device
(no weights are read or allocated). The plan adds, per device:

  weights, gradients   fp32 master weights and their gradients: 4 + 4 bytes per parameter
  AdamW state          exp_avg and exp_avg_sq, fp32: 8 bytes per parameter
                       (the three above are divided by the number of processes under parallel: fsdp)
  gathered layers      fsdp: the decoder layers being computed (this one and the prefetched next)
                       and the root's parameters, whole, in the compute dtype
  KL reference         kl_coef > 0: a frozen fp32 copy of the initial model
  rollout engine       hf: its copy of the policy in rollout_dtype (none when it samples with the
                       fp32 policy itself) and its KV cache for rollout_batch_rows sequences;
                       vllm: vllm_gpu_memory_utilization of the device, which vLLM takes whole
  activations          one micro-batch of micro_batch_size x (prompt + max_new_tokens) tokens: the
                       tensors each decoder layer keeps for the backward pass (with
                       gradient_checkpointing: each layer's input only, plus one layer recomputed),
                       and the head's logits on the completion positions with their gradient
  runtime              CUDA context and allocator reserve (a constant; none on the CPU)

RL accumulates gradients over the micro-batches of a step, so every line is resident at once at
the peak (the second micro-batch's forward). SFT takes one backward per optimizer step: its
gradients fill as the activations are freed, and only the larger of the two counts ("overlap").

When the total does not fit the device (the GPU's memory, or the machine's RAM on a CPU run), the
preflight stops the run before any download or training, naming the keys that would make it fit
and how much each saves. docs/scaling.md compares the estimate with measured peaks.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dashrl.config.params import Params, ParamsError, RLRunParams, SFTRunParams, load_params
from dashrl.engines.factory import auto_engine
from dashrl.models import embedded_config

GIB = 1024**3
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
CUDA_RUNTIME_BYTES = 1 * GIB  # CUDA context, cuBLAS workspaces, allocator slack (measured: docs/scaling.md)
# Activation elements each decoder layer keeps per token for the backward pass (Llama / Qwen2 blocks:
# the two norms' inputs and outputs, q/k/v and their projections' inputs, the attention output, the
# MLP's gate, up, activation and product, the down projection's input). See ``activation_bytes``.
LAYER_HIDDEN_TENSORS = 12  # tensors of width hidden_size
LAYER_KV_TENSORS = 4  # of width num_key_value_heads x head_dim (k, v: projected and rotated)
LAYER_MLP_TENSORS = 5  # of width intermediate_size


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a decoder-only model, read from its config."""

    n_params: int  # every parameter once (a tied head is the embedding)
    layer_params: int  # one decoder layer's
    n_layers: int
    hidden: int
    intermediate: int
    kv_width: int  # num_key_value_heads x head_dim
    n_heads: int
    vocab: int

    @property
    def root_params(self) -> int:
        """Parameters outside the decoder layers: embeddings, final norm, an untied head."""
        return self.n_params - self.n_layers * self.layer_params

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        """Exact counts from the model built on the meta device (no memory, no weights)."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        layers = model.get_decoder().layers
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
        return cls(
            n_params=sum(p.numel() for p in model.parameters()),
            layer_params=sum(p.numel() for p in layers[0].parameters()),
            n_layers=len(layers), hidden=text.hidden_size, intermediate=text.intermediate_size,
            kv_width=kv_heads * head_dim, n_heads=text.num_attention_heads, vocab=text.vocab_size,
        )


def read_config(source: str | Path) -> Any:
    """The config of ``model.source``: ``embedded`` (the GGUF's metadata), a directory or a Hub id
    (``config.json`` only)."""
    from transformers import AutoConfig

    if str(source) == "embedded":
        return embedded_config()
    return AutoConfig.from_pretrained(source)


@dataclass(frozen=True)
class Setting:
    """How one run trains, as far as memory goes (from an RL or SFT run's params)."""

    name: str  # the params key of the run (rl.runs.dash)
    kind: str  # rl | sft
    world_size: int
    parallel: str  # ddp | fsdp
    gradient_checkpointing: bool
    compute_dtype: str  # float32 | bfloat16 (autocast over fp32 weights)
    micro_batch_size: int  # sequences per forward/backward pass
    sequence_tokens: int  # prompt + completion tokens of the longest sequence
    completion_tokens: int  # positions the head runs on, per sequence
    kl_reference: bool = False
    engine: str = "none"  # hf | vllm | none (SFT)
    rollout_dtype: str = "float32"
    rollout_rows: int = 0
    engine_shares_policy: bool = False
    vllm_share: float = 0.0
    # RL accumulates gradients over the step's micro-batches: the gradients of the first are held while
    # the next ones' activations exist. SFT runs one backward per optimizer step: activations are freed
    # as the gradients fill, so only the larger of the two counts.
    accumulates: bool = True


@dataclass(frozen=True)
class Line:
    component: str
    bytes: float
    keys: str  # the params that set it


@dataclass(frozen=True)
class Plan:
    setting: Setting
    lines: tuple[Line, ...]
    capacity_bytes: float  # the device's memory
    device: str

    @property
    def total_bytes(self) -> float:
        return sum(line.bytes for line in self.lines)

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.capacity_bytes

    def table(self) -> str:
        s = self.setting
        head = (f"{s.name}: {s.world_size} process(es), parallel {s.parallel}, gradient_checkpointing "
                f"{str(s.gradient_checkpointing).lower()}, compute {s.compute_dtype}, micro-batch {s.micro_batch_size} "
                f"x {s.sequence_tokens} tokens, on {self.device}")
        rows = [f"  {line.component:<18} {line.bytes / GIB:8.2f} GiB   {line.keys}" for line in self.lines]
        verdict = "fits" if self.fits else "DOES NOT FIT"
        rows.append(f"  {'total':<18} {self.total_bytes / GIB:8.2f} GiB   of {self.capacity_bytes / GIB:.1f} GiB: {verdict}")
        return "\n".join([head, *rows])


def activation_bytes(shape: ModelShape, s: Setting) -> tuple[float, float]:
    """(decoder layers' saved tensors, the head's logits and their gradient) of one micro-batch.

    A layer keeps about ``12 hidden + 4 kv + 5 intermediate`` elements per token in the compute
    dtype (the residual stream and the norms' statistics in fp32 add 2 hidden at 4 bytes). With
    checkpointing a layer keeps only its input (fp32 residual stream), and one layer's full set is
    recomputed at a time. The head runs on the completion positions only; the log-softmax works on
    a float32 copy: logits, their fp32 copy and the gradients of both."""
    b = BYTES[s.compute_dtype]
    tokens = s.micro_batch_size * s.sequence_tokens
    per_layer = (LAYER_HIDDEN_TENSORS * shape.hidden + LAYER_KV_TENSORS * shape.kv_width
                 + LAYER_MLP_TENSORS * shape.intermediate) * b + 2 * shape.hidden * 4
    if s.gradient_checkpointing:
        layers = tokens * (shape.n_layers * shape.hidden * 4 + per_layer)
    else:
        layers = tokens * shape.n_layers * per_layer
    positions = s.micro_batch_size * s.completion_tokens
    head = positions * shape.vocab * (2 * b + 2 * 4)
    return float(layers), float(head)


def plan(shape: ModelShape, s: Setting, capacity_bytes: float, device: str) -> Plan:
    """Bytes per device of ``s`` for a model of ``shape`` (module docstring)."""
    shards = s.world_size if s.parallel == "fsdp" else 1
    n = shape.n_params
    b = BYTES[s.compute_dtype]
    run = f"{s.kind}.runs.*"
    lines = [
        Line("weights (fp32)", 4 * n / shards, "model; parallel + WORLD_SIZE"),
        Line("gradients (fp32)", 4 * n / shards, "model; parallel + WORLD_SIZE"),
        Line("AdamW state", 8 * n / shards, "model; parallel + WORLD_SIZE"),
    ]
    if shards > 1:
        gathered = (2 * shape.layer_params + shape.root_params) * b
        lines.append(Line("gathered layers", gathered, "parallel: fsdp (2 layers + root, compute dtype)"))
    if s.kl_reference:
        lines.append(Line("KL reference", 4 * n, f"{run}.kl_coef > 0"))
    if s.engine == "hf":
        r = BYTES[s.rollout_dtype]
        copy_bytes = 0 if s.engine_shares_policy else n * r
        kv = s.rollout_rows * s.sequence_tokens * shape.n_layers * 2 * shape.kv_width * r
        lines.append(Line("rollout engine", copy_bytes + kv, f"{run}.rollout_dtype, rollout_batch_rows"))
    elif s.engine == "vllm":
        lines.append(Line("rollout engine", s.vllm_share * capacity_bytes, f"{run}.vllm_gpu_memory_utilization"))
    layers, head = activation_bytes(shape, s)
    lines.append(Line("activations", layers, f"{run}.micro_batch_size, max_new_tokens, gradient_checkpointing"))
    lines.append(Line("logits", head, f"{run}.micro_batch_size, max_new_tokens"))
    if not s.accumulates:  # one backward per step: gradients fill as the activations are freed
        lines.append(Line("overlap", -min(4 * n / shards, layers + head), "sft: gradients replace activations"))
    if device.startswith("cuda"):
        lines.append(Line("runtime", CUDA_RUNTIME_BYTES, "CUDA context and allocator"))
    return Plan(setting=s, lines=tuple(lines), capacity_bytes=capacity_bytes, device=device)


def remedies(shape: ModelShape, p: Plan, max_world_size: int = 8) -> list[str]:
    """The keys that would shrink the plan, each with what it saves, largest saving first."""
    s, found = p.setting, []

    def saving(**changes: Any) -> float:
        return p.total_bytes - plan(shape, dataclasses.replace(s, **changes), p.capacity_bytes, p.device).total_bytes

    key = f"{s.kind}.runs.{s.name.rsplit('.', 1)[-1]}"
    if not s.gradient_checkpointing:
        found.append((saving(gradient_checkpointing=True), f"{key}.gradient_checkpointing: true"))
    if s.parallel != "fsdp" and s.kind == "rl":
        size = max(s.world_size, 2)
        found.append((saving(parallel="fsdp", world_size=size),
                      f"{key}.parallel: fsdp (under torchrun, {size} processes; more processes shard further)"))
    elif s.parallel == "fsdp" and s.world_size < max_world_size:
        found.append((saving(world_size=s.world_size * 2), f"torchrun --nproc_per_node {s.world_size * 2}"))
    if s.micro_batch_size > 1:
        found.append((saving(micro_batch_size=max(1, s.micro_batch_size // 2)),
                      f"{key}.micro_batch_size: {max(1, s.micro_batch_size // 2)}"))
    if s.kl_reference:
        found.append((saving(kl_reference=False), f"{key}.kl_coef: 0 (no reference model)"))
    if s.engine == "vllm" and s.vllm_share > 0.2:
        found.append((saving(vllm_share=s.vllm_share - 0.1),
                      f"{key}.vllm_gpu_memory_utilization: {s.vllm_share - 0.1:.2f}"))
    if s.engine == "hf" and s.rollout_rows > 8:
        found.append((saving(rollout_rows=s.rollout_rows // 2), f"{key}.rollout_batch_rows: {s.rollout_rows // 2}"))
    found = [(b, text) for b, text in found if b > 0]
    return [f"{text} (-{b / GIB:.1f} GiB)" for b, text in sorted(found, key=lambda x: -x[0])]


def refusal(shape: ModelShape, p: Plan) -> str:
    """One line: the run, what it needs against what there is, and the keys that would help."""
    fixes = remedies(shape, p)
    return (f"params.yaml: {p.setting.name}: the memory plan needs {p.total_bytes / GIB:.1f} GiB per device, "
            f"{p.device} has {p.capacity_bytes / GIB:.1f} GiB; change "
            + ("; or ".join(fixes) if fixes else "the model (nothing in the run's keys saves enough)")
            + " (python -m dashrl.memory shows the plan)")


# ------------------------------------------------------------------------------------------------
# From params.yaml


def device_capacity(device: str) -> float:
    """Memory of ``device``: the GPU's total, or the machine's RAM for the CPU."""
    if device.startswith("cuda"):
        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def rl_setting(name: str, cfg: RLRunParams, world_size: int, prompt_tokens: int, device: str) -> Setting:
    from dashrl.infra.hardware import resolve_dtype

    train, rollout = resolve_dtype(cfg.train_dtype, device), resolve_dtype(cfg.rollout_dtype, device)
    fsdp = cfg.parallel == "fsdp" and world_size > 1
    engine = cfg.engine if cfg.engine != "auto" else auto_engine(device.startswith("cuda"), share_policy=not fsdp)
    return Setting(
        name=f"rl.runs.{name}", kind="rl", world_size=world_size, parallel=cfg.parallel,
        gradient_checkpointing=cfg.gradient_checkpointing, compute_dtype=train, micro_batch_size=cfg.micro_batch_size,
        sequence_tokens=prompt_tokens + cfg.max_new_tokens, completion_tokens=cfg.max_new_tokens,
        kl_reference=cfg.kl_coef > 0, engine=engine, rollout_dtype=rollout, rollout_rows=cfg.rollout_batch_rows,
        engine_shares_policy=rollout == "float32" and not fsdp, vllm_share=cfg.vllm_gpu_memory_utilization,
    )


def sft_setting(name: str, cfg: SFTRunParams, device: str) -> Setting:
    from dashrl.infra.hardware import resolve_dtype

    return Setting(
        name=f"sft.runs.{name}", kind="sft", world_size=1, parallel="ddp",
        gradient_checkpointing=cfg.gradient_checkpointing, compute_dtype=resolve_dtype(cfg.train_dtype, device),
        micro_batch_size=cfg.batch_size, sequence_tokens=cfg.max_length, completion_tokens=cfg.max_length,
        accumulates=False,
    )


def plans(params: Params, shape: ModelShape, *, world_size: int, device: str, capacity_bytes: float,
          prompt_tokens: int = 256) -> list[Plan]:
    """The plan of every SFT and RL run of ``params`` (``prompt_tokens``: the longest prompt assumed)."""
    settings = [sft_setting(name, params.sft.run(name), device) for name in params.sft.runs]
    settings += [rl_setting(name, params.rl.run(name), world_size, prompt_tokens, device) for name in params.rl.runs]
    return [plan(shape, s, capacity_bytes, device) for s in settings]


def problems(params: Params, shape: ModelShape | None = None, **kwargs: Any) -> list[str]:
    """One refusal line per run whose plan does not fit (the preflight's memory check)."""
    shape = shape or ModelShape.from_config(read_config(params.model.source))
    return [refusal(shape, p) for p in plans(params, shape, **kwargs) if not p.fits]


def this_machine(world_size: int | None = None) -> dict[str, Any]:
    """Device, its capacity and the process count of a run started here (torchrun's WORLD_SIZE)."""
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    return {"device": device, "capacity_bytes": device_capacity(device), "world_size": size}


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The memory plan of every SFT and RL run of a params file.")
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--model-config", help="a model directory or Hub id (default: params' model.source)")
    parser.add_argument("--world-size", type=int, help="processes per run (default: WORLD_SIZE or 1)")
    parser.add_argument("--capacity-gib", type=float, help="device memory (default: this machine's GPU, or RAM)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when a GPU is visible)")
    parser.add_argument("--prompt-tokens", type=int, default=256, help="longest prompt assumed (RL)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        params = load_params(args.params)
    except ParamsError as e:
        print(f"memory: {e}", file=sys.stderr)
        return 2
    machine = this_machine(args.world_size)
    device = args.device or machine["device"]
    device = "cuda:0" if device == "cuda" else device
    capacity = args.capacity_gib * GIB if args.capacity_gib else (
        machine["capacity_bytes"] if device == machine["device"] else 80 * GIB)
    shape = ModelShape.from_config(read_config(args.model_config or params.model.source))
    print(f"model: {args.model_config or params.model.source}: {shape.n_params / 1e6:.1f}M parameters, "
          f"{shape.n_layers} layers, hidden {shape.hidden}, vocab {shape.vocab}")
    found = plans(params, shape, world_size=machine["world_size"], device=device, capacity_bytes=capacity,
                  prompt_tokens=args.prompt_tokens)
    for p in found:
        print(p.table())
        if not p.fits:
            print("  " + refusal(shape, p))
    return 0 if all(p.fits for p in found) else 2


if __name__ == "__main__":
    raise SystemExit(main())
