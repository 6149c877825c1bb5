"""Which engine samples, how many, on which devices: every engine choice of the project is made here.

``make_engine`` turns an RL run's ``engine``, ``rollout_engines`` and ``rollout_dtype`` params into
an engine of ``dashrl.engines.hf`` (HF) or ``dashrl.engines.vllm`` (vLLM), placed beside the
policy it syncs from. ``make_sampling_engine`` builds the engine of a saved model that only samples
(evaluation and pass@k: ``evaluate.generation.engine``). The RL loop and the evaluation only call
``generate`` and ``sync_weights`` on what they get, so choosing and placing engines lives here, apart
from the algorithm. (SFT's teacher always samples with ``dashrl.engines.hf``: there is no choice to
make, and the sft stage does not depend on the vLLM engine.) vllm is imported only where it is asked for.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.config.params import RLRunParams
from dashrl.engines.base import RolloutEngine, ShardedEngine
from dashrl.engines.hf import HFEngine
from dashrl.infra.distributed import SINGLE, World
from dashrl.models import cast_for_rollout, load_model

log = logging.getLogger(__name__)


def make_engine(
    cfg: RLRunParams, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, world: World = SINGLE,
    share_policy: bool = True,
) -> RolloutEngine:
    """The rollout engine(s) of one training process.

    ``engine: auto`` picks vLLM when a GPU and vllm are present, HF otherwise (logged). With
    ``rollout_engines`` N > 1, a ``ShardedEngine`` over N engines: engine 0 on the trainer's device,
    engines 1..N-1 on GPUs of their own (``rollout_gpus``; on a CPU machine all share the cores).
    An fp32 HF engine 0 samples with the policy module itself unless ``share_policy`` is False (a
    policy about to be sharded: the engine then holds its own copy).
    """
    name = cfg.engine
    if name == "auto":
        name = auto_engine(torch.cuda.is_available(), share_policy)
        log.info("engine: auto -> %s (cuda available: %s, vllm importable: %s)",
                 name, torch.cuda.is_available(), _vllm_available())
    extra_gpus = rollout_gpus(cfg, world)
    if cfg.rollout_engines > 1:
        log.info("rollout_engines %d: engine 0 on %s, the others on %s", cfg.rollout_engines, policy.device,
                 f"GPUs {extra_gpus}" if torch.cuda.is_available() else "the same CPU (no speed-up: they share its cores)")
    if name == "vllm" and not share_policy:
        raise ValueError("parallel: fsdp samples with engine: hf only (params.yaml rl): syncing vLLM from a sharded "
                         "policy is not implemented; use parallel: ddp with vLLM")
    if name == "vllm":
        # Pinned engines first: the in-process engine freezes vLLM's environment (dashrl.engines.vllm).
        extra = [_make_vllm_engine(cfg, policy, copy.deepcopy(tokenizer), device_ids=[gpu]) for gpu in extra_gpus]
        engines = [_make_vllm_engine(cfg, policy, tokenizer), *extra]
    else:
        dtype = torch.bfloat16 if cfg.rollout_dtype == "bfloat16" else torch.float32
        devices = [policy.device] + [torch.device("cuda", gpu) if torch.cuda.is_available() else policy.device
                                     for gpu in extra_gpus]
        engines = []
        for k, device in enumerate(devices):
            if share_policy and k == 0 and dtype == torch.float32 and policy.dtype == torch.float32:
                engine_model = policy  # share weights: syncing is free
            else:
                engine_model = cast_for_rollout(copy.deepcopy(policy).to(device), dtype).requires_grad_(False)
            engines.append(HFEngine(engine_model, tokenizer if k == 0 else copy.deepcopy(tokenizer),
                                    max_batch_rows=cfg.rollout_batch_rows))
    return engines[0] if len(engines) == 1 else ShardedEngine(engines)


def make_sampling_engine(
    engine: str, model_dir: Path, tokenizer: PreTrainedTokenizerBase, *, dtype: str, device: torch.device,
    max_batch_rows: int, seed: int, progress_label: str, key: str,
) -> RolloutEngine:
    """The engine that samples from the saved model in ``model_dir`` (no policy in memory to sync).

    ``engine``: "hf" loads the model on ``device`` in ``dtype``; "vllm" starts vLLM on it (the process
    runs alone: vLLM may take most of the GPU, its own default share 0.9). ``key`` names the params
    key that chose the engine in errors.
    """
    if engine == "vllm":
        from dashrl.engines.vllm import VLLMEngine, vllm_device_error

        problem = vllm_device_error()
        if problem:
            raise RuntimeError(f"params.yaml: {key}: vllm cannot run here: {problem}; use engine: hf")
        return VLLMEngine.from_model_dir(model_dir, tokenizer, dtype=dtype, max_num_seqs=max_batch_rows,
                                         gpu_memory_utilization=0.9, seed=seed)
    if engine != "hf":
        raise ValueError(f"params.yaml: {key}: unknown engine {engine!r} (valid: hf, vllm)")
    return HFEngine(load_model(model_dir, dtype=dtype, device=device), tokenizer, max_batch_rows=max_batch_rows,
                    progress_label=progress_label)


def rollout_gpus(cfg: RLRunParams, world: World) -> list[int]:
    """The CUDA device indices of this process's engines 1..N-1 (engine 0 shares the trainer's device).

    The machine's first ``world.local_size`` GPUs train (one per process, engine 0 beside each);
    the next ones hold the other engines, ``rollout_engines - 1`` per process in local-rank order.
    Raises, naming the param, when the machine has too few GPUs. Without CUDA: no GPUs to place
    (the engines share the CPU) and the indices only number the engines.
    """
    n_extra = cfg.rollout_engines - 1
    first = world.local_size + world.local_rank * n_extra
    gpus = list(range(first, first + n_extra))
    if gpus and torch.cuda.is_available() and gpus[-1] >= torch.cuda.device_count():
        raise RuntimeError(
            f"rollout_engines: {cfg.rollout_engines} (params.yaml rl): {world.local_size} training process(es) x "
            f"{cfg.rollout_engines} engines need {world.local_size * cfg.rollout_engines} GPUs on this machine, "
            f"{torch.cuda.device_count()} visible")
    return gpus


def _make_vllm_engine(
    cfg: RLRunParams, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, device_ids: list[int] | None = None
) -> RolloutEngine:
    """A vLLM engine holding its own ``rollout_dtype`` copy of the policy, synced in place: colocated
    in this process (``device_ids`` None) or in its own process on ``device_ids``."""
    from dashrl.engines.vllm import VLLMEngine, vllm_device_error

    problem = vllm_device_error()
    if problem:
        raise RuntimeError(f"engine: vllm (params.yaml rl engine) cannot run here: {problem}; use engine: hf or auto")
    log.info("engine: vllm (rollout_dtype %s, vllm_gpu_memory_utilization %s, vllm_tensor_parallel_size %d, "
             "max_num_seqs = rollout_batch_rows %d%s)", cfg.rollout_dtype, cfg.vllm_gpu_memory_utilization,
             cfg.vllm_tensor_parallel_size, cfg.rollout_batch_rows, "" if device_ids is None else f", GPUs {device_ids}")
    return VLLMEngine.from_policy(
        policy, tokenizer, dtype=cfg.rollout_dtype, gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size, max_num_seqs=cfg.rollout_batch_rows, seed=cfg.seed,
        device_ids=device_ids,
    )


def auto_engine(on_cuda: bool, share_policy: bool = True) -> str:
    """What ``engine: auto`` picks: vLLM on a GPU where vllm is installed, HF otherwise, and HF for a
    policy that will be sharded (vLLM's sync takes the whole state). ``on_cuda``: the device the run
    trains on (the memory plan asks for a machine other than this one)."""
    return "vllm" if share_policy and on_cuda and _vllm_available() else "hf"


def _vllm_available() -> bool:
    from dashrl.engines.vllm import vllm_available

    return vllm_available()
