"""Serve the pipeline flow as the scheduled deployment `dashrl-pipeline/scheduled`.

    prefect server start --host 127.0.0.1                  # once, in another terminal (SQLite)
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve --cron "0 3 * * *"               # registers the deployment, then serves it

This registers (or updates) the deployment with the cron schedule and a deployment concurrency
limit of 1 (`global_limit=1`: `dvc repro` of a stage that is already running fails with "is busy",
so runs queue instead of overlapping), then runs its scheduled and manually triggered flow runs in
subprocesses until stopped with Ctrl-C. Stopping pauses the schedule (Prefect's
`pause_on_shutdown`); serving again resumes it. Each run is `pipeline()` with the deployment's
parameters: by default every stage, of which `dvc repro` reruns only the stale ones.

The server is whatever PREFECT_API_URL points at; without it Prefect starts a temporary local
server that lives only as long as this process. Analytics are off (PREFECT_SERVER_ANALYTICS_ENABLED
defaults to false here and in flows.pipeline).
"""

from __future__ import annotations

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import argparse  # noqa: E402

from prefect.schedules import Cron  # noqa: E402

from flows.pipeline import pipeline  # noqa: E402

DEPLOYMENT_NAME = "scheduled"
DEFAULT_CRON = "0 3 * * *"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description="Register and serve the dashrl-pipeline/scheduled deployment.",
    )
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f'cron schedule (default "{DEFAULT_CRON}")')
    parser.add_argument("--timezone", default="UTC", help="IANA time zone of the cron schedule (default UTC)")
    parser.add_argument(
        "--root", default=None, help="DVC repo the runs use (default: $DASHRL_ROOT or this repo)"
    )
    args = parser.parse_args(argv)

    parameters = {"repo_root": args.root} if args.root else {}
    pipeline.serve(
        name=DEPLOYMENT_NAME,
        schedules=[Cron(args.cron, timezone=args.timezone)],
        global_limit=1,  # deployment concurrency limit: one pipeline run at a time, others queue
        limit=1,  # this runner executes one run at a time too
        parameters=parameters,
        description="The dashrl DVC pipeline, one task per stage; DVC decides what is stale.",
        tags=["dashrl"],
    )


if __name__ == "__main__":
    main()
