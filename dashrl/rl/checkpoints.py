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

from dashrl.config.params import GraderParams, PromptParams, RLRunParams
from dashrl.infra.files import atomic_dir, file_sha256

if TYPE_CHECKING:
    from dashrl.rl.run import RLRun


def run_fingerprint(cfg: RLRunParams, prompt: PromptParams, grader: GraderParams, init_dir: Path, train_file: Path) -> str:
    """What a checkpoint must match to be resumed: params, initial weights and training data."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"rl": asdict(cfg), "prompt": asdict(prompt), "grader": asdict(grader)}, sort_keys=True).encode())
    for weights in sorted(init_dir.glob("*.safetensors")):
        digest.update(file_sha256(weights).encode())
    digest.update(file_sha256(train_file).encode())
    return digest.hexdigest()


def save_checkpoint(run: RLRun, work_dir: Path, step: int, fingerprint: str) -> Path:
    """Weights, optimizer, scheduler, RNG and selector state after ``step`` steps, safetensors + JSON, atomically."""
    target = work_dir / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        run.policy.save_pretrained(tmp, safe_serialization=True)
        optimizer_state = run.optimizer.state_dict()
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
    run.optimizer.load_state_dict({"state": dict(optimizer_state), "param_groups": state["param_groups"]})
    scheduler_state = state["scheduler"]
    scheduler_state.pop("lr_lambdas", None)
    run.scheduler.load_state_dict({**run.scheduler.state_dict(), **scheduler_state})
    torch.set_rng_state(tensors["rng.torch"])
    run.selector_state = state.get("selector_state", {})
    return int(state["step"])
