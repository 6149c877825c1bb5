"""The Prefect flow over DVC (flows/pipeline.py, flows/dvc_plan.py, flows/dvc_process.py,
flows/artifacts.py) on a tiny DVC repo built in a temp dir: stages a -> b -> c (b reads params.yaml
`b.value`, c writes data/report/results.{csv,md} and a metric).
Each stage appends its name to runs.log (not tracked), so the tests see what really ran.

Only the tests that run flows use the (session-scoped, ~13 s) Prefect test harness."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from flows import artifacts as fa  # noqa: E402
from flows import dvc_plan  # noqa: E402
from flows import dvc_process as dp  # noqa: E402
from flows import pipeline as fp  # noqa: E402

STEP_PY = """\
import json, pathlib, sys
name = sys.argv[1]
with open("runs.log", "a") as f:
    f.write(name + "\\n")
if name == "a":
    pathlib.Path("a.txt").write_text("a\\n")
elif name == "b":
    import yaml
    value = yaml.safe_load(open("params.yaml"))["b"]["value"]
    pathlib.Path("b.txt").write_text(pathlib.Path("a.txt").read_text() + f"{value}\\n")
elif name == "c":
    value = pathlib.Path("b.txt").read_text().split()[-1]
    out = pathlib.Path("data/report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.csv").write_text(f"name,value,ratio\\nb,{value},{int(value) / 3}\\n")
    (out / "results.md").write_text(f"| name | value |\\n|---|---|\\n| b | {value} |\\n")
    pathlib.Path("metrics.json").write_text(json.dumps({"value": int(value)}))
"""

# Listed downstream-first on purpose: the flow's order must come from DVC's graph, not the file.
DVC_YAML = """\
stages:
  c:
    cmd: python step.py c
    deps: [b.txt, step.py]
    outs: [data/report]
    metrics:
      - metrics.json:
          cache: false
  b:
    cmd: {b_cmd}
    deps: [a.txt]
    params: [b.value]
    outs: [b.txt]
  a:
    cmd: python step.py a
    outs: [a.txt]
"""
FAILING_CMD = """python -c "import sys; print('boom: bad value', file=sys.stderr); sys.exit(3)\""""
# An uncaught exception (exit status 1), then one more stderr line (atexit runs after the traceback).
RAISING_CMD = (
    "python -c \"import atexit, sys; atexit.register(lambda: print('cleaning up', file=sys.stderr)); "
    "raise ValueError('boom: bad value')\""
)
SLOW_CMD = "sh -c 'sleep 300 & echo $! > child.pid; wait'"


def make_repo(root: Path, b_cmd: str = "python step.py b", value: int = 1) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    dvc = dp.dvc_command()
    for cmd in (
        ["git", "init", "-q"],
        [*dvc, "init", "-q"],
        [*dvc, "config", "core.analytics", "false"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    (root / "step.py").write_text(STEP_PY)
    (root / "dvc.yaml").write_text(DVC_YAML.format(b_cmd=json.dumps(b_cmd)))  # JSON is YAML
    set_param(root, value)
    return root


def set_param(root: Path, value: int) -> None:
    (root / "params.yaml").write_text(f"b:\n  value: {value}\n")


def git_commit(root: Path) -> None:
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, capture_output=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "run"],
        cwd=root,
        check=True,
        capture_output=True,
    )


def ran(root: Path) -> list[str]:
    """Stage commands executed since the last call (and forget them)."""
    log = root / "runs.log"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return names


def pid_alive(pid: int) -> bool:
    """False when the process is gone or a zombie (dead, waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] not in ("Z", "X")


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def artifact(key: str):
    from prefect.artifacts import Artifact

    return Artifact.get(key)


# ----------------------------------------------------------------------------- no Prefect run


def test_plan_is_dvc_graph_order_with_upstream_of_selected(tmp_path):
    root = make_repo(tmp_path / "repo")
    assert dvc_plan.plan_stages(root) == (["a", "b", "c"], ["c", "b", "a"])
    assert dvc_plan.plan_stages(root, ["b"]) == (["a", "b"], ["b"])
    assert dvc_plan.plan_stages(root, ["c", "a"]) == (["a", "b", "c"], ["c", "a"])
    with pytest.raises(Exception, match="nope"):
        dvc_plan.plan_stages(root, ["nope"])


def test_stage_status_reads_dvc_output_for_that_stage():
    upstream_ran = ["Running stage 'a':", "> cmd", "Stage 'b' didn't change, skipping"]
    assert dp.stage_status("b", upstream_ran) == "skipped"
    assert dp.stage_status("a", upstream_ran) == "ran"
    cached = ["Stage 'b' is cached - skipping run, checking out outputs"]
    assert dp.stage_status("b", cached) == "restored"
    assert dp.stage_status("rl@dash", ["Running stage 'rl@dash':"]) == "ran"
    assert dp.stage_status("rl@dash", ["Running stage 'rl@grpo':"]) == "skipped"


def test_exception_while_waiting_kills_the_process_group(tmp_path):
    """What a cancelled flow run sees: Prefect turns the runner's SIGTERM into an exception in the
    main thread while the stage runs; the stage's own child must not survive it."""
    root = make_repo(tmp_path / "repo", b_cmd=SLOW_CMD)
    dp.repro("a", root)
    pid_file = root / "child.pid"

    class Cancelled(Exception):
        pass

    def on_sigterm(signum, frame):
        raise Cancelled

    def send_sigterm_when_child_started():
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    sender = threading.Thread(target=send_sigterm_when_child_started, daemon=True)
    try:
        sender.start()
        with pytest.raises(Cancelled):
            dp.repro("b", root, grace_s=2.0)
    finally:
        signal.signal(signal.SIGTERM, previous)
        sender.join(timeout=5)
    child = int(pid_file.read_text())
    assert not pid_alive(child)


def test_failing_stage_reports_its_error_line_first_and_its_exit_code(tmp_path):
    root = make_repo(tmp_path / "repo", b_cmd=RAISING_CMD)
    dp.repro("a", root)
    logged: list[tuple[int, str]] = []
    with pytest.raises(dp.StageFailed) as failed:
        dp.repro("b", root, log=lambda level, line: logged.append((level, line)))
    error = failed.value
    # (a) the last exception-like line of the stage's stderr, not its last line, comes first ...
    assert str(error).splitlines()[0] == error.error_line == "ValueError: boom: bad value"
    assert "cleaning up" in error.tail
    # ... and is logged at ERROR
    assert any(level == logging.ERROR and "ValueError: boom: bad value" in line for level, line in logged)
    # (b) the stage command's exit status, not dvc's own 255
    assert (error.exit_code, error.dvc_exit_code) == (1, 255)
    assert "its command exited with 1; `dvc repro b` exited with 255" in str(error)


def test_metrics_diff_without_a_baseline_says_so(tmp_path):
    root = make_repo(tmp_path / "repo")
    git_commit(root)  # HEAD has no metrics.json
    dp.repro("c", root)
    report = fa.metrics_markdown(root)
    assert "nothing to compare against (no git-committed metrics / no dvc remote)" in report.lower()
    assert "| - |" not in report
    git_commit(root)
    set_param(root, 2)
    dp.repro("c", root)
    assert "| metrics.json | value | 1 | 2 | 1 |" in fa.metrics_markdown(root)


def test_round_sig():
    assert [fa.round_sig(v) for v in ("0.123456", "200", "12345.678", "1.5e-05", "abc", "nan", "")] == [
        "0.1235", "200", "12350", "0.000015", "abc", "nan", "",
    ]  # fmt: skip


# ----------------------------------------------------------------------------- flow runs


def test_flow_reruns_only_what_dvc_says_is_stale(prefect_harness, tmp_path):
    root = make_repo(tmp_path / "repo")

    # (a) first run: every stage, in DVC's order; the report is published
    assert fp.pipeline(repo_root=str(root)) == {"a": "ran", "b": "ran", "c": "ran"}
    assert ran(root) == ["a", "b", "c"]
    table = artifact("dashrl-results")
    assert table is not None and "b" in table.data
    assert "0.3333" in table.data and "0.33333" not in table.data  # numbers rounded to 4 digits
    report = artifact("dashrl-report").data
    assert "| b | 1 |" in report and "dvc metrics show" in report
    git_commit(root)

    # (b) nothing stale: no stage command runs
    assert fp.pipeline(repo_root=str(root)) == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert ran(root) == []

    # (c) b's param changed: b and what depends on it, nothing upstream
    set_param(root, 2)
    assert fp.pipeline(repo_root=str(root)) == {"a": "skipped", "b": "ran", "c": "ran"}
    assert ran(root) == ["b", "c"]
    report = artifact("dashrl-report").data
    assert "| b | 2 |" in report and "dvc metrics diff" in report and "value" in report

    # back to the old value: DVC's run-cache restores the outputs without running anything
    set_param(root, 1)
    assert fp.pipeline(repo_root=str(root)) == {"a": "skipped", "b": "restored", "c": "restored"}
    assert ran(root) == []
    assert (root / "b.txt").read_text() == "a\n1\n"


def test_selected_stage_and_force(prefect_harness, tmp_path):
    root = make_repo(tmp_path / "repo")
    assert fp.main(["--root", str(root), "--stage", "b"]) == 0  # b and its upstream only
    assert ran(root) == ["a", "b"]
    # force reruns the selected stage only; its up-to-date upstream is left alone
    assert fp.pipeline(stages=["b"], force=True, repo_root=str(root)) == {"a": "skipped", "b": "ran"}
    assert ran(root) == ["b"]
    # no selection + force: every stage once, in order
    assert fp.pipeline(force=True, repo_root=str(root)) == {"a": "ran", "b": "ran", "c": "ran"}
    assert ran(root) == ["a", "b", "c"]


def test_failing_stage_fails_the_flow_with_its_message(prefect_harness, tmp_path):
    root = make_repo(tmp_path / "repo", b_cmd=FAILING_CMD)
    state = fp.pipeline(repo_root=str(root), return_state=True)
    assert state.is_failed()
    assert "boom: bad value" in state.message
    # The stage's own error line first, then the stage command's exit status (dvc's is 255).
    assert state.message.index("boom: bad value") < state.message.index("its command exited with 3;")
    with pytest.raises(dp.StageFailed, match="boom: bad value"):
        state.result()
    assert ran(root) == ["a"]  # c never ran
    assert (root / "a.txt").read_text() == "a\n"  # upstream output intact
    assert not (root / "data" / "report").exists()
    assert fp.main(["--root", str(root)]) == 1  # the CLI exits non-zero


def test_stage_timeout_leaves_no_process_behind(prefect_harness, tmp_path):
    root = make_repo(tmp_path / "repo", b_cmd=SLOW_CMD)
    start = time.monotonic()
    state = fp.pipeline(repo_root=str(root), timeout_s=3, return_state=True)
    assert time.monotonic() - start < 60
    assert state.is_failed()
    assert ran(root) == ["a"]
    child = int((root / "child.pid").read_text())
    assert not pid_alive(child)
