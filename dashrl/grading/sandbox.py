"""Run untrusted programs against their tests, each in its own sandboxed processes, several at once.

    results = run_programs([SandboxJob(program, prefix, tests, entry_point), ...], SandboxLimits())

Each job starts a fresh *tester* process (the task's trusted test code) in its own session, which
starts a fresh *candidate* process (the program under test) with every isolation layer the machine
allows; ``dashrl/grading/sandbox_runner.py`` describes the two processes and the layers. This module adds
what only the trainer side can do:

* a hard wall-clock deadline per job (``timeout_s``, covering start-up, loading and every test):
  past it the tester's whole process group is killed with SIGKILL, the candidate dies with it
  (parent-death signal, PID namespace), and the job is "timeout";
* a fresh temporary directory per job, owned by the job's own uid, removed afterwards;
* a scrubbed environment (nothing of the trainer's environment reaches the program; a fixed hash
  seed so that set iteration, hence a verdict, does not change from run to run);
* a nonce that the tester's verdict must carry: nothing the candidate prints can pass for it;
* a pool of ``workers`` jobs in flight (threads that wait on processes: no work in the trainer).

Statuses: ``passed`` (every test ran to the end), ``failed`` (an assertion or error in the tests, a
program that did not load, exited, or returned something other than plain data), ``timeout``,
``syntax_error`` (the program does not compile) and ``sandbox_error`` (the sandbox itself failed: the
tester crashed or the task's own code is broken; never the program's fault, counted and logged).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from dashrl.config.params import SANDBOX_UID_SLOTS, SandboxLimits

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
SANDBOX_STATUSES = ("passed", "failed", "timeout", "syntax_error", "sandbox_error")
# Dedicated uids for jobs when the trainer runs as root: one per pool slot, spread by pid so that two
# trainers on one machine do not share one (RLIMIT_NPROC counts per uid). 60000-65459 lies inside the
# uid range a container's user namespace usually maps.
_UID_BASE, _UID_PROCESS_SPREAD = 60000, 91  # uid = base + (pid % spread) x SANDBOX_UID_SLOTS + slot
_MAX_MESSAGE_BYTES = 16 << 20
_VERDICT_BYTES = 1 << 16


@dataclass(frozen=True)
class SandboxJob:
    program: str  # the candidate's source (untrusted): prefix + extracted code
    prefix: str  # the task's own code run before the tests (trusted)
    tests: str  # the task's test program (trusted); calls the entry point by name
    entry_point: str  # the function the tests call


@dataclass(frozen=True)
class SandboxResult:
    status: str  # one of SANDBOX_STATUSES
    detail: str | None  # why, for everything but passed
    seconds: float  # wall time of the job
    isolation: tuple[str, ...]  # the isolation layers that were in force


def _scrubbed_env(workdir: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": workdir,
        "TMPDIR": workdir,
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _job_uid(slot: int) -> int | None:
    if os.geteuid() != 0:
        return None
    return _UID_BASE + (os.getpid() % _UID_PROCESS_SPREAD) * SANDBOX_UID_SLOTS + slot


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a job's own uid: a fork bomb's children that left the group)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


def _remove_tree(path: str) -> None:
    def make_writable_and_retry(function, failed_path, _exc_info):  # noqa: ANN001, ANN202
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            function(failed_path)
        except OSError:
            pass

    shutil.rmtree(path, onerror=make_writable_and_retry)


def run_job(job: SandboxJob, limits: SandboxLimits, slot: int = 0, *, audit: bool = True,
            namespaces: bool = True) -> SandboxResult:
    """Run one job to its verdict. ``audit`` / ``namespaces`` off exist for the sandbox's own tests
    (each layer must hold alone); the grader always runs with both on."""
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    uid = _job_uid(slot)
    workdir = tempfile.mkdtemp(prefix="dashrl-sandbox-")
    try:
        if uid is not None:
            os.chown(workdir, uid, uid)
        payload = json.dumps({
            "nonce": nonce, "program": job.program, "prefix": job.prefix, "tests": job.tests,
            "entry_point": job.entry_point, "uid": uid, "audit": audit, "namespaces": namespaces,
            "max_message_bytes": _MAX_MESSAGE_BYTES,
            "limits": {k: v for k, v in asdict(limits).items() if k in ("cpu_s", "memory_mb", "file_size_mb", "max_processes")},
        })  # fmt: skip
        proc = subprocess.Popen(
            [sys.executable, "-s", "-P", "-B", str(RUNNER), "tester"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=workdir, env=_scrubbed_env(workdir), start_new_session=True,
        )  # fmt: skip
        try:
            out, err = proc.communicate(payload.encode("utf-8"), timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return SandboxResult("timeout", f"killed after the {limits.timeout_s:g} s wall-clock limit",
                                 time.monotonic() - start, ())
        finally:
            if uid is not None:
                _kill_uid(uid)
        return _parse_verdict(out, err, proc.returncode, nonce, time.monotonic() - start)
    finally:
        _remove_tree(workdir)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _parse_verdict(out: bytes, err: bytes, returncode: int, nonce: str, seconds: float) -> SandboxResult:
    def broken(why: str) -> SandboxResult:
        tail = err.decode("utf-8", "replace")[-300:].strip()
        return SandboxResult("sandbox_error", f"{why} (tester exit code {returncode}){': ' + tail if tail else ''}",
                             seconds, ())

    if len(out) > _VERDICT_BYTES:
        return broken("the tester's verdict is oversized")
    try:
        verdict = json.loads(out.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return broken("the tester wrote no verdict")
    if not isinstance(verdict, dict) or verdict.get("nonce") != nonce:
        return broken("the tester's verdict does not carry this job's nonce")
    status = verdict.get("status")
    if status not in SANDBOX_STATUSES:
        return broken(f"the tester returned an unknown status {status!r}")
    return SandboxResult(status, verdict.get("detail"), seconds, tuple(verdict.get("isolation") or ()))


def run_programs(jobs: Sequence[SandboxJob], limits: SandboxLimits, *, audit: bool = True,
                 namespaces: bool = True) -> list[SandboxResult]:
    """Run every job (``limits.workers`` at a time); results in input order."""
    if not jobs:
        return []
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for slot in range(limits.workers):
        slots.put(slot)

    def run(job: SandboxJob) -> SandboxResult:
        slot = slots.get()
        try:
            return run_job(job, limits, slot, audit=audit, namespaces=namespaces)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(max_workers=min(limits.workers, len(jobs)), thread_name_prefix="sandbox") as pool:
        results = list(pool.map(run, jobs))
    _log_isolation(results)
    return results


_isolation_logged = False


def _log_isolation(results: Sequence[SandboxResult]) -> None:
    """Say once per process which isolation layers are in force (a warning where some are missing)."""
    global _isolation_logged
    layers = next((r.isolation for r in results if r.isolation), None)
    if _isolation_logged or layers is None:
        return
    _isolation_logged = True
    missing = [x for x in ("own_uid", "network_namespace", "pid_namespace") if x not in layers]
    if missing:
        logger.warning("code sandbox: running without %s (layers in force: %s); the audit hook and rlimits "
                       "still apply. Run as root or enable unprivileged user namespaces for full isolation.",
                       ", ".join(missing), ", ".join(layers))
    else:
        logger.info("code sandbox: isolation layers %s", ", ".join(layers))
