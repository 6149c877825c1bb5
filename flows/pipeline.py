"""The dashrl pipeline as a Prefect flow: one task per DVC stage, in DVC's own order.

DVC owns "what is stale", Prefect owns "when, where, what happened". The flow computes nothing:
it asks DVC for the stages and their order, then runs one task per stage whose body is
`dvc repro <stage>` in its own process group. `dvc repro` itself decides whether the stage (and
anything upstream of it) is stale, so a run with nothing stale does no work and a run after a
param change reruns only what DVC says depends on that param. DVC's plan is in flows/dvc_plan.py
(the one use of DVC's private API); running and killing `dvc repro` and reading its output are in
flows/dvc_process.py; the Markdown of the artifacts (rounding, metrics diff) is rendered by
flows/artifacts.py. This module defines the Prefect tasks, the flow, the artifacts it publishes and
the CLI.

Order and selection come from DVC's own planner (`plan_stages` in flows/dvc_plan.py: DVC's
`plan_repro` over the repo's stage graph), i.e. exactly the order `dvc repro [targets]` would use:
the selected stages (all of `dvc.yaml` when none are given; a foreach/matrix group name such as
`rl` selects all its items) plus every stage upstream of them, upstream first.

`force=True` forces the *selected* stages only. Their tasks run `dvc repro --force --single-item
<stage>`; `--single-item` is safe there because every upstream stage is in the plan and has
already been brought up to date by an earlier task of the same flow run. Plain `dvc repro --force
<stage>` would also force every upstream stage (dvc applies `--force` to its whole plan), i.e. the
model conversion and RL training behind `report`, once per task. Upstream stages that were pulled
in only because they are ancestors run plain `dvc repro <stage>` (rerun only when stale). With no
stages given every stage is selected, so `force=True` reruns the whole pipeline once, in order.

A failing stage fails its task with `StageFailed`, whose message starts with the stage's own error
line (its last exception-like stderr line, e.g. ``ValueError: bad value``; that line is also logged
at ERROR), then the stage command's real exit status (`dvc repro` itself always exits with 255),
then the last lines of the stage's output; later tasks do not run and outputs of earlier stages
are left as they are. On success the flow publishes `data/report/results.csv` as a table artifact
(`dashrl-results`, numbers rounded to 4 significant digits) and a markdown artifact
(`dashrl-report`) with the stage summary, `data/report/results.md` and the metrics diff against
HEAD (`dvc metrics diff`; "nothing to compare against" when HEAD has no metric values, `dvc
metrics show --md` when the repo has no commit yet).

Process handling (flows/dvc_process.py): on task timeout, on flow cancellation (Prefect turns the
runner's SIGTERM into an exception in the flow's main thread), on Ctrl-C or on any other exception
while waiting, the whole process group of `dvc repro` (dvc and the stage command it started) gets
SIGTERM and, after a grace period, SIGKILL.

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
import csv  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.artifacts import create_markdown_artifact, create_table_artifact  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from flows.artifacts import metrics_markdown, round_sig  # noqa: E402
from flows.dvc_plan import plan_stages  # noqa: E402
from flows.dvc_process import env_number, repro  # noqa: E402

FLOW_NAME = "dashrl-pipeline"
DEFAULT_ROOT = Path(__file__).resolve().parents[1]
REPORT_CSV = Path("data/report/results.csv")
REPORT_MD = Path("data/report/results.md")
STATUSES = ("ran", "restored", "skipped")


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The DVC repo to run in: `root`, else $DASHRL_ROOT, else the directory above flows/."""
    return Path(root or os.environ.get("DASHRL_ROOT") or DEFAULT_ROOT).resolve()


# ----------------------------------------------------------------------------- Prefect tasks


@task(name="plan", cache_policy=NO_CACHE)
def plan_task(root: str, stages: list[str] | None) -> tuple[list[str], list[str]]:
    """DVC's plan for these targets (see `plan_stages`)."""
    ordered, selected = plan_stages(root, stages)
    get_run_logger().info("plan (upstream first): %s", ", ".join(ordered) or "(no stages)")
    return ordered, selected


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE)
def repro_stage(stage: str, root: str, force: bool = False) -> str:
    """One DVC stage: `dvc repro <stage>`, its output streamed into the task's log. A failure raises
    `StageFailed` (its message starts with the stage's own error line, logged at ERROR by `repro`)."""
    logger = get_run_logger()
    status = repro(stage, root, force=force, log=logger.log)
    logger.info("stage %s: %s", stage, status)
    return status


# ----------------------------------------------------------------------------- report artifacts


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(root: str, summary: dict[str, str]) -> str:
    """Table artifact from the results CSV, markdown artifact with summary, report and metrics."""
    root_path = Path(root)
    logger = get_run_logger()
    csv_path = root_path / REPORT_CSV
    if csv_path.is_file():
        with csv_path.open(newline="") as f:
            rows = [{key: round_sig(value) for key, value in row.items()} for row in csv.DictReader(f)]
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
    retries = int(env_number("DASHRL_STAGE_RETRIES", 0, int)) if retries is None else retries
    if retry_delay_s is None:
        retry_delay_s = env_number("DASHRL_STAGE_RETRY_DELAY_S", 10.0)
    timeout_s = env_number("DASHRL_STAGE_TIMEOUT_S", None) if timeout_s is None else timeout_s

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
