"""Running DVC for the flows: `dvc repro <stage>` as a supervised process group, and quiet `dvc` /
`git` calls, all through the `dvc` command line. Nothing here knows about Prefect (flows/pipeline.py
and flows/artifacts.py call these). DVC's stage plan, the one use of DVC's private Python API, is in
flows/dvc_plan.py.

Supervision. `repro` starts `dvc repro <stage>` with `start_new_session=True`. However it is left
(the stage failed, a task timeout, a flow cancellation, which Prefect turns into an exception in
the flow's main thread, Ctrl-C, any other exception while waiting), the whole process group, dvc and
the stage command it started, gets SIGTERM and, after a grace period ($DASHRL_KILL_GRACE_S, default
10 s), SIGKILL. Killing only `dvc` would orphan the stage command.

Failure. The stage command inherits dvc's stdout and stderr, which are read as two pipes. `dvc repro`
exits with 255 whatever the stage command's status: its CLI maps every `DvcException`, here the
`ReproductionError` wrapping `StageCmdFailedError`, to 255. The command's own status is only in
dvc's last error line, ``ERROR: failed to reproduce 'b': failed to run: <cmd>, exited with 3``
(a negative status is a signal), so `repro` reads it from there. `StageFailed` puts the stage's own
error line first: the last stderr line of the stage that looks like an exception
(``ValueError: bad value``), else its last non-empty stderr line, else dvc's error line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

TAIL_LINES = 30  # lines of a failing stage's output carried in the exception
KILL_GRACE_ENV = "DASHRL_KILL_GRACE_S"

# `dvc repro`'s last line when a stage fails; everything after it on stderr is dvc's too.
_DVC_FAILED = re.compile(r"^ERROR: failed to reproduce\b")
# The stage command's exit status in that message (",\s*exited with -9": killed by signal 9).
_DVC_CMD_STATUS = re.compile(r"\bfailed to run: .*, exited with (-?\d+)\s*$", re.DOTALL | re.MULTILINE)
# A line that looks like a Python exception: "ValueError: msg", "torch.OutOfMemoryError: ...",
# "dashrl.data.schema.ProblemDataError: ...", "MemoryError", "SystemExit: 2". Not indented (traceback
# context lines are), not dvc's "ERROR: ..." (all capitals) and not warnings.
_EXCEPTION_LINE = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?:[A-Z]\w*)?(?:Error|Exception|Exit|Interrupt|Failed|Failure)(?::\s.*)?\s*$"
)


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited non-zero. The message starts with the stage's own error line, then
    the stage command's exit status, then the stage's last output lines.

    stage          the stage
    error_line     the stage's own error line (see the module docstring)
    exit_code      the stage command's exit status (negative: killed by that signal); None when the
                   command did not fail (dvc itself failed: a lock, a missing output, ...)
    dvc_exit_code  `dvc repro`'s own exit status (255 for any DVC error)
    """

    def __init__(
        self, stage: str, error_line: str, exit_code: int | None, dvc_exit_code: int, tail: list[str]
    ) -> None:
        self.stage = stage
        self.error_line = error_line
        self.exit_code = exit_code
        self.dvc_exit_code = dvc_exit_code
        self.tail = tail
        super().__init__(
            f"{error_line}\nstage {stage!r} failed: {describe_failure(stage, exit_code, dvc_exit_code)}.\n"
            f"Last lines of its output:\n" + "\n".join(tail)
        )


def describe_failure(stage: str, exit_code: int | None, dvc_exit_code: int) -> str:
    """How the stage failed: "its command exited with 3; `dvc repro b` exited with 255", "its command
    was killed by signal 9 (SIGKILL); ...", or a DVC error whose command did not fail."""
    dvc = f"`dvc repro {stage}` exited with {dvc_exit_code}"
    if exit_code is None:
        return f"{dvc}, a DVC error (the stage's command did not fail)"
    if exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = "unknown signal"
        return f"its command was killed by signal {-exit_code} ({name}); {dvc}"
    return f"its command exited with {exit_code}; {dvc}"


# ----------------------------------------------------------------------------- configuration


def env_number(name: str, default: float | None, cast: Callable = float) -> float | None:
    """$name as a number (`cast`), `default` when unset, empty or "none"."""
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


def subprocess_env() -> dict[str, str]:
    """Our environment, with this interpreter's bin first on PATH so stage commands (`python -m
    stages.x`) run in the same venv even when it is not activated, and unbuffered output."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


def run_quiet(cmd: list[str], root: str | os.PathLike, timeout_s: float = 300) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a short command run from `root`; (1, "", why) if it cannot run."""
    try:
        done = subprocess.run(
            cmd, cwd=root, env=subprocess_env(), capture_output=True, text=True, timeout=timeout_s
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return done.returncode, done.stdout.strip(), done.stderr.strip()


def has_commit(root: str | os.PathLike) -> bool:
    """Whether the git repo at `root` has a HEAD commit."""
    return run_quiet(["git", "rev-parse", "--verify", "--quiet", "HEAD"], root)[0] == 0


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


class _FailureReader:
    """Follows a `dvc repro` run's stderr for what `StageFailed` needs, in constant memory."""

    def __init__(self) -> None:
        self.last_exception: str | None = None  # the stage's last exception-like stderr line
        self.last_stage_line: str | None = None  # the stage's last non-empty stderr line
        self.dvc_error: list[str] = []  # dvc's failure message (from "ERROR: failed to reproduce" on)

    def stderr_line(self, line: str) -> None:
        if self.dvc_error or _DVC_FAILED.match(line):
            self.dvc_error.append(line)
        elif line.strip():
            self.last_stage_line = line.strip()
            if _EXCEPTION_LINE.match(line):
                self.last_exception = line.strip()

    def exit_code(self) -> int | None:
        """The stage command's exit status from dvc's message; None if the command did not fail."""
        match = _DVC_CMD_STATUS.search("\n".join(self.dvc_error))
        return int(match.group(1)) if match else None

    def error_line(self, fallback: str) -> str:
        dvc_line = self.dvc_error[0] if self.dvc_error else None
        if self.dvc_error and self.exit_code() is None:
            return dvc_line  # the command did not fail: dvc's own error ("output ... does not exist")
        return self.last_exception or self.last_stage_line or dvc_line or fallback


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


def _pump(stream, name: str, lines: queue.SimpleQueue) -> None:
    """Reader thread: (name, line) for every line of `stream`, then (name, None) at end of file."""
    try:
        for line in stream:
            lines.put((name, line.rstrip("\r\n")))
    except (OSError, ValueError):  # stream closed under us during cleanup
        pass
    finally:
        lines.put((name, None))


def repro(
    stage: str,
    root: str | os.PathLike,
    force: bool = False,
    log: Callable[[int, str], None] | None = None,
    grace_s: float | None = None,
) -> str:
    """Run `dvc repro <stage>` (`--force --single-item` when `force`) in its own process group from
    `root`, passing each output line to `log(level, line)`; return `stage_status`. On a non-zero
    exit, log the stage's error line at ERROR and raise `StageFailed`. However this function is left
    (return, exception, timeout, cancellation, Ctrl-C), no process of the group survives it."""
    grace_s = env_number(KILL_GRACE_ENV, 10.0) if grace_s is None else grace_s
    log = log or (lambda level, line: print(line, flush=True))
    cmd = [*dvc_command(), "repro", *(["--force", "--single-item"] if force else []), stage]
    log(logging.INFO, "$ " + shlex.join(["dvc", *cmd[len(dvc_command()) :]]))

    tail: deque[str] = deque(maxlen=TAIL_LINES)
    dvc_lines: list[str] = []  # dvc's own status lines, for stage_status
    failure = _FailureReader()
    lines: queue.SimpleQueue = queue.SimpleQueue()
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,  # read apart from stdout: the stage's error line is on stderr
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,  # own process group: dvc + the stage command it starts
    )
    readers = [
        threading.Thread(target=_pump, args=(stream, name, lines), daemon=True)
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    try:
        exited_at = None
        open_streams = len(readers)
        while open_streams:
            # Short waits keep this loop interruptible: Prefect's timeout and cancellation arrive
            # as exceptions raised in this thread.
            try:
                name, line = lines.get(timeout=0.2)
            except queue.Empty:
                if proc.poll() is not None:
                    exited_at = exited_at or time.monotonic()
                    if time.monotonic() - exited_at > 5.0:
                        break  # dvc is gone but something it left behind holds a pipe open
                continue
            if line is None:
                open_streams -= 1
                continue
            if name == "stderr":
                failure.stderr_line(line)
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
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        for reader in readers:
            reader.join(timeout=1.0)

    if returncode != 0:
        exit_code = failure.exit_code()
        error_line = failure.error_line(fallback=tail[-1] if tail else "(no output)")
        how = describe_failure(stage, exit_code, returncode)
        log(logging.ERROR, f"stage {stage!r} failed: {error_line} ({how})")
        raise StageFailed(stage, error_line, exit_code, returncode, list(tail))
    return stage_status(stage, dvc_lines)
