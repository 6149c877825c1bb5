"""Data parallelism across processes with torch.distributed: the few collectives the RL loop needs.

A ``World`` is this process's place among the processes that train one model together: its rank,
the number of processes, and its device. ``init_from_env`` reads what ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins the process group
(NCCL when CUDA is available, gloo otherwise), one device per local rank. Without that environment
it returns ``SINGLE``, a world of one process whose collectives return their input untouched: one
process runs exactly the code it ran before data parallelism existed, with no communication.

The RL loop (``dashrl.rl.loop``) uses a world in three places: each rank samples its own contiguous
share of the step's prompts (``shard``); before the optimizer step the ranks sum their gradients,
step counts and losses (``sum_gradients``, ``sum_floats``), so every rank divides the same summed
gradient by the same global normaliser and takes the same step; after it the step's samples and
statistics are gathered for metrics and rollout logs (``gather_objects``, ``sum_floats``, ``max_floats``).

With ``parallel: fsdp`` the model is sharded instead of replicated (``shard_model``, PyTorch's FSDP2):
each rank holds 1/W of the parameters, gradients and AdamW state, and gathers one decoder layer at a
time for its forward and backward. The gradient is then reduced (summed) by FSDP during the backward
pass instead of by ``sum_gradients``; the normaliser and the clip stay global, so the update is the
one DDP (and one process) makes. Every rank must run the same number of forward and backward passes
(each is a collective): the loop pads a rank that has fewer kept micro-batches with empty passes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    local_size: int = 1  # processes on this machine (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    def shard(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (``n`` must be a multiple of ``size``)."""
        if n % self.size:
            raise ValueError(f"{n} items cannot be split evenly over {self.size} processes")
        per_rank = n // self.size
        return range(self.rank * per_rank, (self.rank + 1) * per_rank)

    # --- collectives: each returns its input at once in a world of one process

    def sum_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum ``p.grad`` over ranks, in place. A parameter whose gradient is None on every rank stays
        None (the optimizer skips it, as in one process); None on some ranks counts as zeros."""
        if not self.is_distributed:
            return
        device = params[0].device
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)  # (n_params,)
        dist.all_reduce(has_grad)
        summed = [p for p, flag in zip(params, has_grad.tolist(), strict=True) if flag]
        if not summed:
            return
        for p in summed:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in summed])  # (sum of numels,) one bucket
        dist.all_reduce(flat)
        offset = 0
        for p in summed:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
            offset += p.numel()

    def sum_counts(self, counts: dict[str, int]) -> dict[str, int]:
        """Integer counts (a step's sequences, tokens) summed over ranks, from every rank's own."""
        if not self.is_distributed:
            return counts
        return {key: int(total) for key, total in self.sum_floats(counts).items()}

    def sum_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each value summed over ranks (every rank passes the same keys). float64: counts stay exact."""
        return self._reduce(values, dist.ReduceOp.SUM)

    def max_floats(self, values: dict[str, float]) -> dict[str, float]:
        return self._reduce(values, dist.ReduceOp.MAX)

    def _reduce(self, values: dict[str, float], op: dist.ReduceOp) -> dict[str, float]:
        if not self.is_distributed:
            return values
        keys = sorted(values)
        tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)  # (K,)
        dist.all_reduce(tensor, op=op)
        return dict(zip(keys, tensor.tolist(), strict=True))

    def gather_objects(self, items: list[Any]) -> list[Any]:
        """Every rank's list, concatenated in rank order, on every rank (picklable items)."""
        if not self.is_distributed:
            return items
        gathered: list[list[Any] | None] = [None] * self.size
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]  # type: ignore[union-attr]

    def check_same(self, value: Any, what: str) -> None:
        """Raise on every rank unless every rank holds the same ``value`` (picklable, comparable)."""
        if not self.is_distributed:
            return
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise RuntimeError(f"ranks disagree on {what}: {values} (rank r holds entry r)")

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers to every rank (the same start, whatever each rank loaded)."""
        if not self.is_distributed:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor, src=0)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on at least one rank."""
        if not self.is_distributed:
            return flag
        return self.max_floats({"flag": float(flag)})["flag"] > 0

    def max_int(self, value: int) -> int:
        """The largest ``value`` over ranks."""
        if not self.is_distributed:
            return value
        return int(self.max_floats({"value": float(value)})["value"])

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()


SINGLE = World()


# ------------------------------------------------------------------------------------------------
# Sharded data parallelism (FSDP2): parameters, gradients and optimizer state split over the ranks


def shard_model(model: torch.nn.Module, blocks: Sequence[torch.nn.Module], compute_dtype: torch.dtype | None) -> None:
    """Shard ``model`` over the default process group with PyTorch's FSDP2 (``fully_shard``), in place.

    Each of ``blocks`` (the decoder layers) becomes one unit that is gathered for its forward and
    backward and freed after, then the root takes what is left (embeddings, final norm, head; a tied
    head stays one parameter). ``compute_dtype`` (bf16 on GPU) is the dtype the gathered parameters
    compute in; gradients are reduced in float32 into float32 shards, and optimizer state lives on
    the shards. Gradients are SUMMED over ranks (divide factor 1), as ``World.sum_gradients`` does:
    the RL loop divides by the whole step's normaliser itself.
    """
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no PREMUL_SUM)


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` was sharded by ``shard_model`` (its parameters are DTensor shards)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor shard gathered into the whole tensor (a collective: every rank calls it), else as is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded model on rank 0, on the CPU (empty on the other ranks).

    A collective: every rank calls it. Parameters are gathered one at a time, so no rank holds a
    second full copy on its device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's whole state on rank 0 (keyed by parameter name), on the CPU; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Shard a whole optimizer state (keyed by parameter name, as ``full_optimizer_state`` gives it)
    onto this rank's parameters."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def init_from_env(timeout_s: float = 1800.0) -> World:
    """Join the process group that ``torchrun`` describes in the environment, or return ``SINGLE``.

    Backend NCCL with one GPU per local rank when CUDA is available, gloo on CPU otherwise. A single
    process trains on the first GPU when there is one (else the CPU).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World(device=torch.device("cuda", 0)) if torch.cuda.is_available() else SINGLE
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} not set: launch with torchrun")
    rank, size, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        device, backend = torch.device("cuda", local_rank), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", size))
    return World(rank=rank, size=size, local_rank=local_rank, device=device, local_size=local_size)


def teardown(world: World) -> None:
    """Leave the process group (no barrier: after an error on one rank the others may not reach it)."""
    if world.is_distributed and dist.is_initialized():
        dist.destroy_process_group()
