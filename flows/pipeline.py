"""The dashrl pipeline as a Prefect flow: one task per DVC stage, in DVC's own order.

DVC owns "what is stale", Prefect owns "when, where, what happened". The flow computes nothing:
it asks DVC for the stages and their order, then runs one task per stage whose body is
`dvc repro <stage>` in its own process group. `dvc repro` itself decides whether the stage (and
anything upstream of it) is stale, so a run with nothing stale does no work and a run after a
param change reruns only what DVC says depends on that param.

Order and selection come from DVC's own planner (`dvc.repo.reproduce.plan_repro` over the repo's
stage graph), i.e. exactly the order `dvc repro [targets]` would use: the selected stages (all of
`dvc.yaml` when none are given; a foreach/matrix group name such as `rl` selects all its items)
plus every stage upstream of them, upstream first.

`force=True` forces the *selected* stages only. Their tasks run `dvc repro --force --single-item
<stage>`; `--single-item` is safe there because every upstream stage is in the plan and has
already been brought up to date by an earlier task of the same flow run. Plain `dvc repro --force
<stage>` would also force every upstream stage (dvc applies `--force` to its whole plan), i.e. the
model conversion and RL training behind `report`, once per task. Upstream stages that were pulled
in only because they are ancestors run plain `dvc repro <stage>` (rerun only when stale). With no
stages given every stage is selected, so `force=True` reruns the whole pipeline once, in order.

A failing stage fails its task with the last lines of the stage's own output in the exception;
later tasks do not run and outputs of earlier stages are left as they are. On success the flow
publishes `data/report/results.csv` as a table artifact (`dashrl-results`) and a markdown artifact
(`dashrl-report`) with the stage summary, `data/report/results.md` and the metrics diff against
HEAD (`dvc metrics diff --md`; `dvc metrics show --md` when the repo has no commit yet).

Process handling: `dvc repro` is started with `start_new_session=True`; on task timeout, on flow
cancellation (Prefect turns the runner's SIGTERM into an exception in the flow's main thread), on
Ctrl-C or on any other exception while waiting, the whole process group (dvc and the stage command
it started) gets SIGTERM and, after a grace period, SIGKILL. Killing only `dvc` would orphan the
stage command.

Usage:
    python -m flows.pipeline                      # every stage, stale ones only
    python -m flows.pipeline --stage report       # report and what it needs upstream
    python -m flows.pipeline --stage rl@dash --force --retries 1 --timeout-s 7200

Without `PREFECT_API_URL` the run goes to a temporary local server that disappears when the
command ends; to keep history, start `prefect server start --host 127.0.0.1` and set
`PREFECT_API_URL=http://127.0.0.1:4200/api` (see flows/README.md).

Environment: DASHRL_ROOT (repo root; default: the directory above flows/), DASHRL_STAGE_RETRIES,
DASHRL_STAGE_RETRY_DELAY_S, DASHRL_STAGE_TIMEOUT_S (defaults for the flow parameters),
DASHRL_KILL_GRACE_S (SIGTERM → SIGKILL grace, default 10 s).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import csv  # noqa: E402
import queue  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import deque  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

FLOW_NAME = "dashrl-pipeline"
DEFAULT_ROOT = Path(__file__).resolve().parents[1]
REPORT_CSV = Path("data/report/results.csv")
REPORT_MD = Path("data/report/results.md")
TAIL_LINES = 30  # lines of a failing stage's output carried in the exception
STATUSES = ("ran", "restored", "skipped")


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited non-zero; the message ends with the stage's last output lines."""


# ----------------------------------------------------------------------------- configuration


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The DVC repo to run in: `root`, else $DASHRL_ROOT, else the directory above flows/."""
    return Path(root or os.environ.get("DASHRL_ROOT") or DEFAULT_ROOT).resolve()


def _env_number(name: str, default: float | None, cast: Callable = float) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value or value.lower() == "none":
        return default
    return cast(value)


def dvc_command() -> list[str]:
    """The venv's `dvc` beside this interpreter, else `dvc` on PATH, else `python -m dvc`."""
    venv_dvc = Path(sys.executable).parent / "dvc"
    if venv_dvc.is_file() and os.access(venv_dvc, os.X_OK):
        return [str(venv_dvc)]
    on_path = shutil.which("dvc")
    return [on_path] if on_path else [sys.executable, "-m", "dvc"]


def _subprocess_env() -> dict[str, str]:
    """Our environment, with this interpreter's bin first on PATH so stage commands (`python -m
    stages.x`) run in the same venv even when it is not activated, and unbuffered output."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


# ----------------------------------------------------------------------------- planning (DVC's)


def _address(stage, root: Path) -> str:
    """The stage's name as `dvc repro` takes it from the repo root (dvc's own `addressing` is
    relative to the current directory, which need not be the root)."""
    rel = Path(os.path.relpath(stage.path, root)).as_posix()
    name = getattr(stage, "name", None)
    if name is None:  # a .dvc file
        return rel
    return name if rel == "dvc.yaml" else f"{rel}:{name}"


def plan_stages(root: str | os.PathLike, stages: list[str] | None = None) -> tuple[list[str], list[str]]:
    """(plan, selected): the stages `dvc repro [stages]` would visit, upstream first, and the ones
    the targets named. Both come from DVC itself (stage collection, active graph, `plan_repro`).

    >>> plan_stages(".", ["report"])  # doctest: +SKIP
    (['prepare@arith', 'model', 'evaluate@base-arith', 'report'], ['report'])
    """
    from dvc.dvcfile import PROJECT_FILE
    from dvc.repo import Repo
    from dvc.repo.reproduce import collect_stages, get_active_graph, plan_repro

    root = Path(root).resolve()
    # Targets are resolved like `dvc repro` run from the root; dvc 3.67's own DeprecationWarnings
    # (pygtrie) are noise here.
    with contextlib.chdir(root), Repo(str(root)) as repo, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        targets = collect_stages(repo, list(stages) if stages else [PROJECT_FILE])
        graph = get_active_graph(repo.index.graph)
        ordered = plan_repro(graph, targets)
        return [_address(s, root) for s in ordered], [_address(s, root) for s in targets]


# ----------------------------------------------------------------------------- running one stage


def stage_status(stage: str, output: list[str]) -> str:
    """What `dvc repro` did with `stage`, read from its log lines: "restored" (outputs checked out
    from the run-cache), "ran" (command executed) or "skipped" (didn't change / up to date).

    >>> stage_status("b", ["Stage 'a' didn't change, skipping", "Running stage 'b':", "> cmd"])
    'ran'
    """
    quoted = re.escape(f"'{stage}'")
    if any(re.search(rf"Stage {quoted} is cached - skipping run", line) for line in output):
        return "restored"
    if any(re.search(rf"Running stage {quoted}", line) for line in output):
        return "ran"
    return "skipped"


def _group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is left in process group `pgid`."""
    proc_dir = Path("/proc")
    if proc_dir.is_dir():
        for entry in proc_dir.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_process_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group led by `proc`, SIGKILL whatever is left after `grace_s` seconds;
    reap `proc` itself."""
    pgid = proc.pid
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            proc.poll()  # reap dvc so that it does not linger as a zombie member of the group
            if not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            continue
        break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _pump(stream, lines: queue.SimpleQueue) -> None:
    """Reader thread: every line of `stream`, then None at end of file."""
    try:
        for line in stream:
            lines.put(line.rstrip("\r\n"))
    except (OSError, ValueError):  # stream closed under us during cleanup
        pass
    finally:
        lines.put(None)


def repro(
    stage: str,
    root: str | os.PathLike,
    force: bool = False,
    log: Callable[[int, str], None] | None = None,
    grace_s: float | None = None,
) -> str:
    """Run `dvc repro <stage>` (`--force --single-item` when `force`) in its own process group from
    `root`, passing each output line to `log(level, line)`; return `stage_status`. Raise
    `StageFailed` on a non-zero exit. However this function is left (return, exception, timeout,
    cancellation, Ctrl-C), no process of the group survives it."""
    import logging

    grace_s = _env_number("DASHRL_KILL_GRACE_S", 10.0) if grace_s is None else grace_s
    log = log or (lambda level, line: print(line, flush=True))
    cmd = [*dvc_command(), "repro", *(["--force", "--single-item"] if force else []), stage]
    log(logging.INFO, "$ " + shlex.join(["dvc", *cmd[len(dvc_command()) :]]))

    tail: deque[str] = deque(maxlen=TAIL_LINES)
    dvc_lines: list[str] = []  # dvc's own status lines, for stage_status
    lines: queue.SimpleQueue = queue.SimpleQueue()
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=_subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # own process group: dvc + the stage command it starts
    )
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        exited_at = None
        while True:
            # Short waits keep this loop interruptible: Prefect's timeout and cancellation arrive
            # as exceptions raised in this thread.
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 5.0:
                        break  # dvc is gone but something it left behind holds the pipe open
                continue
            if line is None:
                break
            if not line.strip():
                continue
            tail.append(line)
            if line.startswith(("Running stage", "Stage '", "'")):
                dvc_lines.append(line)
            if line.startswith("ERROR"):
                level = logging.ERROR
            elif line.startswith("WARNING"):
                level = logging.WARNING
            else:
                level = logging.INFO
            log(level, line)
        returncode = proc.wait()
    finally:
        kill_process_group(proc, grace_s)
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
        reader.join(timeout=1.0)

    if returncode != 0:
        raise StageFailed(
            f"stage {stage!r} failed: `dvc repro {stage}` exited with {returncode}; "
            f"last lines of its output:\n" + "\n".join(tail)
        )
    return stage_status(stage, dvc_lines)


# ----------------------------------------------------------------------------- Prefect tasks


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(root: str, stages: list[str] | None) -> tuple[list[str], list[str]]:
    """DVC's plan for these targets (see `plan_stages`)."""
    ordered, selected = plan_stages(root, stages)
    get_run_logger().info("plan (upstream first): %s", ", ".join(ordered) or "(no stages)")
    return ordered, selected


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE)
def repro_stage(stage: str, root: str, force: bool = False) -> str:
    """One DVC stage: `dvc repro <stage>`, its output streamed into the task's log."""
    logger = get_run_logger()
    status = repro(stage, root, force=force, log=logger.log)
    logger.info("stage %s: %s", stage, status)
    return status


def _run_quiet(cmd: list[str], root: Path) -> tuple[int, str]:
    try:
        done = subprocess.run(
            cmd, cwd=root, env=_subprocess_env(), capture_output=True, text=True, timeout=300
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def metrics_markdown(root: Path) -> str:
    """`dvc metrics diff --md` against HEAD, or `dvc metrics show --md` when there is no commit."""
    has_commit = _run_quiet(["git", "rev-parse", "--verify", "--quiet", "HEAD"], root)[0] == 0
    if has_commit:
        rc, out = _run_quiet([*dvc_command(), "metrics", "diff", "--md"], root)
        title = "Metrics diff (HEAD → workspace, `dvc metrics diff`)"
        if rc == 0 and not out:
            out = "No metric changed since HEAD."
    else:
        rc, out = _run_quiet([*dvc_command(), "metrics", "show", "--md"], root)
        title = "Metrics (`dvc metrics show`; no commit to diff against)"
        if rc == 0 and not out:
            out = "No metrics."
    if rc != 0:
        out = f"(dvc exited with {rc})\n\n```\n{out}\n```"
    return f"## {title}\n\n{out}\n"


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(root: str, summary: dict[str, str]) -> str:
    """Table artifact from the results CSV, markdown artifact with summary, report and metrics."""
    root_path = Path(root)
    logger = get_run_logger()
    csv_path = root_path / REPORT_CSV
    if csv_path.is_file():
        with csv_path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        create_table_artifact(table=rows, key="dashrl-results", description=f"`{REPORT_CSV}`")
    else:
        logger.info("no %s: no table artifact", REPORT_CSV)

    parts = ["# dashrl pipeline run", "", "| stage | status |", "|---|---|"]
    parts += [f"| {stage} | {status} |" for stage, status in summary.items()]
    md_path = root_path / REPORT_MD
    parts += ["", f"## Report (`{REPORT_MD}`)", ""]
    parts.append(md_path.read_text() if md_path.is_file() else "No report yet.")
    parts += ["", metrics_markdown(root_path)]
    markdown = "\n".join(parts)
    create_markdown_artifact(markdown=markdown, key="dashrl-report", description="dashrl pipeline run")
    return markdown


# ----------------------------------------------------------------------------- the flow


@flow(name=FLOW_NAME)
def pipeline(
    stages: list[str] | None = None,
    force: bool = False,
    retries: int | None = None,
    retry_delay_s: float | None = None,
    timeout_s: float | None = None,
    repo_root: str | None = None,
) -> dict[str, str]:
    """Run the DVC pipeline, one task per stage, upstream first; return {stage: ran|restored|skipped}.

    Args:
        stages: DVC targets (`report`, `rl@dash`, `rl` for every rl item); None: all of dvc.yaml.
            Stages upstream of them run too (`dvc repro` skips them when they are up to date).
        force: rerun the selected stages even when up to date (upstream ones only when stale).
        retries: retries per stage task (None: $DASHRL_STAGE_RETRIES or 0).
        retry_delay_s: seconds between retries (None: $DASHRL_STAGE_RETRY_DELAY_S or 10).
        timeout_s: per-stage time limit; the stage's process group is killed when it is exceeded
            (None: $DASHRL_STAGE_TIMEOUT_S or no limit).
        repo_root: the DVC repo (None: $DASHRL_ROOT or the directory above flows/).
    """
    root = str(resolve_root(repo_root))
    retries = int(_env_number("DASHRL_STAGE_RETRIES", 0, int)) if retries is None else retries
    if retry_delay_s is None:
        retry_delay_s = _env_number("DASHRL_STAGE_RETRY_DELAY_S", 10.0)
    timeout_s = _env_number("DASHRL_STAGE_TIMEOUT_S", None) if timeout_s is None else timeout_s

    ordered, selected = plan_task(root, stages)
    run_stage = repro_stage.with_options(
        retries=retries, retry_delay_seconds=retry_delay_s, timeout_seconds=timeout_s
    )
    summary: dict[str, str] = {}
    for stage in ordered:  # sequential: a failure raises here, so later stages never start
        summary[stage] = run_stage(stage, root, force=force and stage in selected)
    publish_report(root, summary)
    return summary


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline", description="Run the dashrl DVC pipeline as a Prefect flow."
    )
    parser.add_argument(
        "--stage",
        dest="stages",
        action="append",
        metavar="NAME",
        help="DVC stage to run (repeatable; upstream stages come along); default: all",
    )
    parser.add_argument("--force", action="store_true", help="rerun the named stages even if up to date")
    parser.add_argument("--retries", type=int, default=None, help="retries per stage (default 0)")
    parser.add_argument("--timeout-s", type=float, default=None, help="time limit per stage, seconds")
    parser.add_argument("--root", default=None, help="DVC repo root (default: $DASHRL_ROOT or this repo)")
    args = parser.parse_args(argv)

    state = pipeline(
        stages=args.stages,
        force=args.force,
        retries=args.retries,
        timeout_s=args.timeout_s,
        repo_root=args.root,
        return_state=True,
    )
    if not state.is_completed():
        print(f"pipeline {state.name}: {state.message}", file=sys.stderr)
        return 1
    for stage, status in state.result().items():
        print(f"{status:>8}  {stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
