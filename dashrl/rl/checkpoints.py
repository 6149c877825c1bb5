"""Checkpoints of an RL run: what ``dashrl.rl.loop.train`` writes so that a killed run resumes exactly.

A checkpoint ``<work_dir>/checkpoints/step-NNNNNN/`` holds the policy weights, the optimizer state
and the torch RNG state (safetensors), and the step, the optimizer's param groups, the scheduler,
the sample selector's state (``dashrl.rl.selectors``: greso's per-prompt history) and the run
fingerprint (JSON), written atomically; the newest ``keep_checkpoints`` are kept. A
run resumes only from a checkpoint whose fingerprint (params, initial weights, training data)
matches its own. Kept apart from the loop: none of this changes an update, only where a run starts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from dashrl.config.params import EXECUTION_KEYS, GraderParams, PromptParams, RLRunParams
from dashrl.infra.distributed import full_model_state, full_optimizer_state, load_full_optimizer_state
from dashrl.infra.files import atomic_dir, file_sha256

if TYPE_CHECKING:
    from dashrl.rl.run import RLRun


def run_fingerprint(cfg: RLRunParams, prompt: PromptParams, grader: GraderParams, init_dir: Path, train_file: Path) -> str:
    """What a checkpoint must match to be resumed: params, initial weights and training data."""
    digest = hashlib.sha256()
    rl = {k: v for k, v in asdict(cfg).items() if k not in EXECUTION_KEYS}  # how a step runs is not what it computes
    digest.update(json.dumps({"rl": rl, "prompt": asdict(prompt), "grader": asdict(grader)}, sort_keys=True).encode())
    for weights in sorted(init_dir.glob("*.safetensors")):
        digest.update(file_sha256(weights).encode())
    digest.update(file_sha256(train_file).encode())
    return digest.hexdigest()


def gather_policy_state(run: RLRun) -> dict[str, torch.Tensor] | None:
    """A sharded policy's whole state dict on rank 0 (a collective: every rank calls it); None for a
    replicated policy (each rank holds it whole)."""
    return full_model_state(run.policy) if run.sharded else None


def save_policy(run: RLRun, directory: Path, state: dict[str, torch.Tensor] | None) -> None:
    """The policy as one HF directory (safetensors), from ``gather_policy_state``'s result."""
    if state is None:
        run.policy.save_pretrained(directory, safe_serialization=True)
    else:
        run.policy.save_pretrained(directory, state_dict=state, safe_serialization=True)


def _optimizer_state(run: RLRun) -> dict[str, Any]:
    """The optimizer's state keyed by parameter index (``Optimizer.state_dict``'s form), whole: a
    sharded one is gathered onto rank 0 (a collective), so the file is the same under ddp and fsdp."""
    if not run.sharded:
        return run.optimizer.state_dict()
    full = full_optimizer_state(run.policy, run.optimizer)
    index = {name: i for i, (name, _) in enumerate(run.policy.named_parameters())}
    return {"state": {index[name]: state for name, state in full.get("state", {}).items()},
            "param_groups": run.optimizer.state_dict()["param_groups"]}


def save_checkpoint(run: RLRun, work_dir: Path, step: int, fingerprint: str) -> Path:
    """Weights, optimizer, scheduler, RNG and selector state after ``step`` steps, safetensors + JSON, atomically.

    A sharded policy: every rank calls it (the state is gathered), rank 0 writes; the files are the
    ones a replicated run writes, so a run resumes under either ``parallel`` setting."""
    target = work_dir / "checkpoints" / f"step-{step:06d}"
    policy_state, optimizer_state = gather_policy_state(run), _optimizer_state(run)
    if not run.world.is_main:
        return target
    with atomic_dir(target) as tmp:
        save_policy(run, tmp, policy_state)
        tensors = {"rng.torch": torch.get_rng_state()}
        for index, state in optimizer_state["state"].items():
            for key, value in state.items():
                tensors[f"state.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "optimizer.safetensors"))
        (tmp / "trainer_state.json").write_text(json.dumps({
            "step": step,
            "fingerprint": fingerprint,
            "param_groups": optimizer_state["param_groups"],
            "scheduler": run.scheduler.state_dict(),
            "selector_state": run.selector_state,  # greso: each prompt's zero-variance history
        }, indent=2, default=_json_default))
    checkpoints = sorted((work_dir / "checkpoints").glob("step-*"))
    for old in checkpoints[: -run.cfg.keep_checkpoints]:
        shutil.rmtree(old)
    return target


def _json_default(value: Any) -> Any:
    if callable(value) or value is None:
        return None
    raise TypeError(f"not JSON serialisable: {value!r}")


def latest_checkpoint(work_dir: Path, fingerprint: str) -> Path | None:
    for path in sorted((work_dir / "checkpoints").glob("step-*"), reverse=True):
        state_file = path / "trainer_state.json"
        if state_file.is_file() and json.loads(state_file.read_text())["fingerprint"] == fingerprint:
            return path
    return None


def restore_checkpoint(run: RLRun, checkpoint: Path) -> int:
    """Load optimizer, scheduler, RNG and selector state (weights were loaded with the policy). Returns the step."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    tensors = load_file(str(checkpoint / "optimizer.safetensors"))
    optimizer_state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
    for key, value in tensors.items():
        if key.startswith("state."):
            _, index, name = key.split(".", 2)
            optimizer_state[int(index)][name] = value
    if run.sharded:  # shard the whole state onto this rank's parameters
        names = [name for name, _ in run.policy.named_parameters()]
        load_full_optimizer_state(run.policy, run.optimizer, {
            "state": {names[i]: value for i, value in optimizer_state.items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]})
    else:
        run.optimizer.load_state_dict({"state": dict(optimizer_state), "param_groups": state["param_groups"]})
    scheduler_state = state["scheduler"]
    scheduler_state.pop("lr_lambdas", None)
    run.scheduler.load_state_dict({**run.scheduler.state_dict(), **scheduler_state})
    torch.set_rng_state(tensors["rng.torch"])
    run.selector_state = state.get("selector_state", {})
    return int(state["step"])
