"""The run log of an RL run in its ``work_dir``: ``metrics.jsonl`` and ``rollouts/step-NNNNNN.parquet``.

Rank 0 appends one metrics line and one rollout file per step (``record_step``); a resumed run
first drops what was logged after its checkpoint (``start_work_dir``), so the log always matches
the weights (``dashrl.infra.files.read_jsonl`` reads it back). The RL loop (``dashrl.rl.loop``) computes a
step; this module only writes it down.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from dashrl.infra.files import atomic_file

if TYPE_CHECKING:
    from dashrl.rl.run import RLRun
    from dashrl.rl.samples import StepOutput

log = logging.getLogger(__name__)


def start_work_dir(work_dir: Path, checkpoint: Path | None, start_step: int, total_steps: int) -> None:
    """A fresh ``work_dir`` for a new run; for a resumed one, drop what was logged after its checkpoint."""
    if checkpoint is None and work_dir.exists():
        shutil.rmtree(work_dir)  # another run's state: start clean
    (work_dir / "rollouts").mkdir(parents=True, exist_ok=True)
    truncate_logs(work_dir, start_step)
    if start_step:
        log.info("resuming from %s at step %d of %d", checkpoint, start_step, total_steps)


def record_step(run: RLRun, work_dir: Path, out: StepOutput) -> None:
    """Rollouts, a metrics.jsonl line and a log line for one step."""
    step = out.metrics["step"]
    out.rollouts.to_parquet(work_dir / "rollouts" / f"step-{step:06d}.parquet", index=False)
    with (work_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(out.metrics) + "\n")
    m = out.metrics
    log.info("step %d/%d: reward %.3f, kept %d/%d, loss %.4f, %.1f s (sampling %.1f, fwd+bwd %.1f)",
             step + 1, run.total_steps, m["reward_mean"], m["samples_kept"], m["samples"], m["loss"],
             m["time_step_s"], m["time_sampling_s"], m["time_forward_backward_s"])


def truncate_logs(work_dir: Path, start_step: int) -> None:
    """Drop rollouts and metrics of steps at or after ``start_step`` (redone after a resume)."""
    for path in (work_dir / "rollouts").glob("step-*.parquet"):
        if int(path.stem.split("-")[1]) >= start_step:
            path.unlink()
    metrics_file = work_dir / "metrics.jsonl"
    if metrics_file.exists():
        lines = [line for line in metrics_file.read_text().splitlines() if line and json.loads(line)["step"] < start_step]
        with atomic_file(metrics_file) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines))
