"""Per-step training metrics to experiment trackers, named as in TRL's ``report_to``.

A training stage opens the trackers its params name (``rl.common.report_to``, ``sft.common.report_to``),
logs each step's numeric metrics to all of them while it trains, and closes them at the end:

    trackers = open_trackers(["dvclive", "tensorboard"], TrackerContext(...), history=[])
    trackers.log({"loss": 0.31, "reward_mean": 0.5}, step=0)   # one call per step, rank 0 only
    trackers.close()

Backends are registered functions (``@register_tracker``), looked up once; each returns an object
with ``log(metrics, step)`` and ``close()``. Only DVCLive is a core dependency; the others are the
package's extras (``pip install 'dashrl[tensorboard]'``), imported only when opened, and
``check_installed`` names the missing package, the params key and the pip command before any model
loads. ``none`` (TRL's spelling) alone means no tracker.

DVCLive writes ``<live_dir>/metrics.json`` (the latest step: ``dvc metrics show``, ``dvc exp show``)
and ``<live_dir>/plots/metrics/<metric>.tsv`` (``step`` and the value, one row per step: ``dvc plots``),
rewritten as each step ends. It writes no ``dvc.yaml`` and makes no experiment of its own: the
pipeline's ``dvc.yaml`` declares these files as the stage's metrics and plots. A resumed run passes
the steps its log kept (``history``): the first step it logs live writes the kept steps before it,
so the files hold every step once, as an uninterrupted run's do. File-based backends write under
``TrackerContext.log_dir`` (MLflow: ``mlflow.db`` there, a SQLite store); W&B, MLflow and Trackio also follow their own environment variables
(``WANDB_MODE=offline``, ``MLFLOW_TRACKING_URI``, ``TRACKIO_DIR``, ...).
"""

from __future__ import annotations

import importlib.util
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class Tracker(Protocol):
    def log(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class TrackerContext:
    """What every backend is opened with."""

    run_name: str  # e.g. "rl@dash": the run's name in the tracker
    live_dir: Path  # DVCLive's directory (a DVC output of the stage)
    log_dir: Path  # where file-based backends write (TensorBoard events, W&B offline files, MLflow's SQLite store)
    project: str = "dashrl"  # W&B / Trackio project, MLflow experiment (their environment variables win)
    config: Mapping[str, Any] = field(default_factory=dict)  # the run's params, recorded by backends that keep them


@dataclass(frozen=True)
class TrackerSpec:
    name: str
    module: str  # the module it imports: checked before any model loads
    pip: str  # what installs it
    open: Callable[[TrackerContext, list[dict]], Tracker]


TRACKERS: dict[str, TrackerSpec] = {}
NO_TRACKER = "none"


def register_tracker(name: str, *, module: str, pip: str) -> Callable:
    def wrap(open_fn: Callable[[TrackerContext, list[dict]], Tracker]) -> Callable:
        TRACKERS[name] = TrackerSpec(name, module, pip, open_fn)
        return open_fn
    return wrap


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """The loggable values of a step's record: finite numbers (bools as 0/1), ``step`` left out."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if key == "step" or not isinstance(value, int | float):
            continue
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, float) and not math.isfinite(value):
            continue
        out[key] = value
    return out


def check_report_to(report_to: Sequence[str], key: str) -> list[str]:
    """The backends ``report_to`` names (``[]`` for ``[none]``); an unknown or missing one is an error
    naming ``key``, the value and, for a package that is not installed, the pip command."""
    names = list(report_to)
    if NO_TRACKER in names:
        if names != [NO_TRACKER]:
            raise ValueError(f"params.yaml: {key}: {names!r}: 'none' turns every tracker off; list it alone")
        return []
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"params.yaml: {key}: {name!r} is not a tracker (valid: {', '.join([*TRACKERS, NO_TRACKER])})")
    if len(set(names)) != len(names):
        raise ValueError(f"params.yaml: {key}: {names!r}: a tracker is listed twice")
    return names


def check_installed(report_to: Sequence[str], key: str) -> list[str]:
    """``check_report_to``, plus each backend's package importable (without importing it)."""
    names = check_report_to(report_to, key)
    for name in names:
        spec = TRACKERS[name]
        if importlib.util.find_spec(spec.module) is None:
            raise ModuleNotFoundError(f"params.yaml: {key}: {name!r}: package {spec.module!r} is not installed; "
                                      f"pip install {spec.pip} (or drop {name!r} from {key})")
    return names


class Trackers:
    """Every opened backend; ``log`` and ``close`` go to each of them."""

    def __init__(self, backends: dict[str, Tracker]):
        self.backends = backends

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        values = numeric_metrics(metrics)
        for backend in self.backends.values():
            backend.log(values, step)

    def close(self) -> None:
        for backend in self.backends.values():
            backend.close()


def open_trackers(report_to: Sequence[str], context: TrackerContext, history: Iterable[Mapping[str, Any]] = ()) -> Trackers:
    """Open the named backends. ``history``: the steps a resumed run's log kept (DVCLive writes those
    before the first live step; the other backends keep what they were sent before the interruption)."""
    kept = [dict(h) for h in history]
    opened = Trackers({})
    try:
        for name in check_report_to(report_to, "report_to"):
            opened.backends[name] = TRACKERS[name].open(context, kept)
    except BaseException:
        opened.close()  # the ones already open (a W&B run, an MLflow run) end instead of dangling
        raise
    return opened


def write_dvclive(live_dir: Path, steps: Iterable[Mapping[str, Any]]) -> None:
    """DVCLive's files for a run's whole log at once (a run whose ``report_to`` left DVCLive out still
    writes the files ``dvc.yaml`` declares)."""
    tracker = DVCLiveTracker(live_dir, history=[])
    for record in sorted(steps, key=lambda r: r["step"]):
        tracker.log(numeric_metrics(record), int(record["step"]))
    tracker.close()


# ------------------------------------------------------------------------------------------------
# The backends


class DVCLiveTracker:
    def __init__(self, live_dir: Path, history: list[dict]):
        from dvclive import Live

        # dvcyaml=None: the project's dvc.yaml declares the files; save_dvc_exp=False: the stage runs
        # under `dvc repro` / `dvc exp run`, which record the experiment themselves.
        self.live = Live(dir=str(live_dir), resume=False, dvcyaml=None, save_dvc_exp=False)
        self.pending: list[dict] | None = sorted(history, key=lambda r: r["step"])

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.pending is not None:  # a resumed run: the kept steps first, then the live ones
            for record in self.pending:
                if record["step"] < step:
                    self._write(numeric_metrics(record), int(record["step"]))
            self.pending = None
        self._write(metrics, step)

    def _write(self, metrics: Mapping[str, Any], step: int) -> None:
        self.live.step = step
        for key, value in metrics.items():
            self.live.log_metric(key, value)
        self.live.next_step()  # metrics.json and the .tsv rows are on disk when this returns

    def close(self) -> None:
        if self.pending:  # resumed after its last step: nothing ran live
            for record in self.pending:
                self._write(numeric_metrics(record), int(record["step"]))
            self.pending = None
        self.live.end()


@register_tracker("dvclive", module="dvclive", pip="dvclive")
def _open_dvclive(context: TrackerContext, history: list[dict]) -> Tracker:
    return DVCLiveTracker(context.live_dir, history)


class TensorBoardTracker:
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # live: the event file holds the step when log returns

    def close(self) -> None:
        self.writer.close()


@register_tracker("tensorboard", module="tensorboard", pip="'dashrl[tensorboard]'")
def _open_tensorboard(context: TrackerContext, history: list[dict]) -> Tracker:
    return TensorBoardTracker(context.log_dir / "tensorboard")


class WandbTracker:
    def __init__(self, context: TrackerContext):
        import wandb

        context.log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", context.project), name=context.run_name,
                              config=dict(context.config), dir=str(context.log_dir))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(metrics), step=step, commit=True)  # commit: the step is sent now, not with the next one

    def close(self) -> None:
        self.run.finish()


@register_tracker("wandb", module="wandb", pip="'dashrl[wandb]'")
def _open_wandb(context: TrackerContext, history: list[dict]) -> Tracker:
    return WandbTracker(context)


class MLflowTracker:
    def __init__(self, context: TrackerContext):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        context.log_dir.mkdir(parents=True, exist_ok=True)  # MLflow's default store: a SQLite file there
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(context.log_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", context.project)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=context.run_name).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in flatten(context.config).items()]
        if params:
            self.client.log_batch(self.run_id, params=params)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, float(value), now_ms, step) for key, value in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


@register_tracker("mlflow", module="mlflow", pip="'dashrl[mlflow]'")
def _open_mlflow(context: TrackerContext, history: list[dict]) -> Tracker:
    return MLflowTracker(context)


class TrackioTracker:
    def __init__(self, context: TrackerContext):
        import trackio

        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", context.project), name=context.run_name,
                                config=dict(context.config))

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


@register_tracker("trackio", module="trackio", pip="'dashrl[trackio]'")
def _open_trackio(context: TrackerContext, history: list[dict]) -> Tracker:
    return TrackioTracker(context)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"rl": {"lr": 1e-5}}`` -> ``{"rl.lr": 1e-5}`` (trackers that keep flat params)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out
