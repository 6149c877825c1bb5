"""A small pool of worker *processes* that run picklable calls with a per-call deadline.

``WorkerPool(size, name, warm_up).run(fn, calls, deadline_s)`` runs ``fn(*args)`` for each ``args``
in ``calls`` on ``size`` worker processes and returns, per call, ``("ok", result)``,
``("timeout", None)`` or ``("died", returncode)``:

- Workers are fresh interpreters started with ``subprocess`` (never a fork of, say, a torch
  process); each runs its calls in its main thread, so code that relies on ``signal.alarm`` (which
  raises ``ValueError`` in any non-main thread) works whichever thread of the parent calls ``run``.
  ``fn`` and its arguments are pickled: ``fn`` must be importable by the worker (a module-level
  function; the worker sees the parent's ``sys.path``). Before saying it is ready a worker imports
  the ``warm_up`` modules, so that a slow import does not count against the first call's deadline.
- A call past ``deadline_s`` (counted from when a worker took it) gets ``("timeout", None)``: its
  worker is killed and replaced by a fresh one, and the other calls go on (calls in flight on other
  workers are not lost). A worker that dies during a call gives ``("died", returncode)`` and is
  replaced too.
- An exception raised by ``fn`` is not a result: ``run`` raises it as ``RuntimeError`` with the
  worker's traceback. After any exception out of ``run`` (that one, Ctrl-C, a worker that cannot
  start) the workers are killed, since they may hold half-finished calls; the next ``run`` starts
  fresh ones.

The pool is created cheaply (no process starts until the first ``run``), is safe to share between
threads (one ``run`` at a time), starts new workers in a child process that inherited it through
``fork`` (those workers belong to the parent), and stops its workers at interpreter exit
(``atexit``) or on ``close()``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait

logger = logging.getLogger(__name__)

WORKER_STARTUP_S = 120.0  # a worker must say "ready" (warm-up imports done) within this
WORKER_EXIT_GRACE_S = 1.0  # on close, a worker gets this long to exit before it is killed
_CLOSE_LOCK_TIMEOUT_S = 10.0  # close() at exit does not wait forever for a run in another thread


# ----------------------------------------------------------------------------- worker side


def _serve(read_fd: int, write_fd: int, warm_up: Sequence[str] = ()) -> None:
    """Worker process main loop: receive (task_id, pickled (fn, args)), send (task_id, kind, value)."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    inbox = Connection(read_fd, writable=False)
    outbox = Connection(write_fd, readable=False)
    for module in warm_up:
        importlib.import_module(module)

    outbox.send(("ready", os.getpid()))
    while True:
        try:
            task_id, payload = inbox.recv()
        except EOFError:
            return  # the parent closed the pipe or died
        try:
            fn, args = pickle.loads(payload)
            result = fn(*args)
        except Exception:  # not swallowed: the parent raises it as RuntimeError
            outbox.send((task_id, "error", traceback.format_exc()))
        else:
            outbox.send((task_id, "ok", result))


# ----------------------------------------------------------------------------- parent side

_WORKER_BOOT = (
    "import sys; from dashrl.grading.worker_pool import _serve; "
    "_serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:])"
)


class _Worker:
    """One worker process with its two pipes; ``task`` is the index of the call it is running."""

    def __init__(self, warm_up: Sequence[str]) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # The child sees the parent's import path, so dashrl (and test-only worker functions) resolve.
        path = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER_BOOT, str(to_child_r), str(from_child_w), *warm_up],
                pass_fds=(to_child_r, from_child_w),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.inbox = Connection(from_child_r, writable=False)
        self.outbox = Connection(to_child_w, readable=False)
        self.ready = False
        self.task: int | None = None
        self.task_id = 0
        self.since = time.monotonic()  # spawn time, then the current task's start time

    def send(self, task: int, task_id: int, payload: bytes) -> None:
        self.task, self.task_id, self.since = task, task_id, time.monotonic()
        self.outbox.send((task_id, payload))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.inbox.close()
        self.outbox.close()

    def stop(self) -> None:
        """Ask the worker to exit (EOF on its inbox); kill it if it does not."""
        if not self.outbox.closed:
            self.outbox.close()
        try:
            self.proc.wait(timeout=WORKER_EXIT_GRACE_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.inbox.close()


class _Workers:
    """A fixed number of worker processes running calls with a per-call deadline (one ``run`` at a time)."""

    def __init__(self, size: int, name: str, warm_up: Sequence[str]) -> None:
        self.size = size
        self.name = name
        self.warm_up = tuple(warm_up)
        self.pid = os.getpid()
        self.workers: list[_Worker] = []
        self.next_task_id = 0

    def close(self) -> None:
        for w in self.workers:
            w.outbox.close()  # EOF: the worker's loop returns
        for w in self.workers:
            w.stop()
        self.workers = []

    def kill(self) -> None:
        for w in self.workers:
            w.kill()
        self.workers = []

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self.workers[self.workers.index(w)] = _Worker(self.warm_up)

    def run(self, fn: Callable, calls: Sequence[tuple], deadline_s: float) -> list[tuple[str, object]]:
        """See ``WorkerPool.run``."""
        results: list[tuple[str, object] | None] = [None] * len(calls)
        pending = collections.deque(range(len(calls)))
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.warm_up))
        while pending or any(w.task is not None for w in self.workers):
            for w in self.workers:
                if w.ready and w.task is None and pending:
                    i = pending.popleft()
                    self.next_task_id += 1
                    w.send(i, self.next_task_id, pickle.dumps((fn, tuple(calls[i]))))
            now = time.monotonic()
            limits = [
                w.since + (deadline_s if w.ready else WORKER_STARTUP_S) - now
                for w in self.workers
                if w.task is not None or not w.ready
            ]
            by_inbox = {w.inbox: w for w in self.workers}
            for inbox in wait(list(by_inbox), timeout=max(0.0, min(limits, default=0.0))):
                w = by_inbox[inbox]
                try:
                    message = inbox.recv()
                except EOFError:
                    w.proc.wait()
                    if not w.ready:
                        raise RuntimeError(
                            f"{self.name} worker failed to start (exit code {w.proc.returncode})"
                        ) from None
                    if w.task is not None:
                        logger.warning(
                            "%s worker died (exit code %s) on a call", self.name, w.proc.returncode
                        )
                        results[w.task] = ("died", w.proc.returncode)
                    self._replace(w)
                    continue
                if message[0] == "ready":
                    w.ready, w.since = True, time.monotonic()
                    continue
                task_id, kind, value = message
                if task_id != w.task_id or w.task is None:
                    raise RuntimeError(f"{self.name} worker answered task {task_id}, expected {w.task_id}")
                if kind == "error":
                    raise RuntimeError(f"{self.name} call raised in the worker process:\n{value}")
                results[w.task] = ("ok", value)
                w.task = None
            now = time.monotonic()
            for w in list(self.workers):
                if not w.ready and now - w.since > WORKER_STARTUP_S:
                    raise RuntimeError(f"{self.name} worker did not start within {WORKER_STARTUP_S:.0f} s")
                if w.task is not None and now - w.since > deadline_s:
                    logger.warning(
                        "a %s call ran past the %.1f s deadline: worker killed", self.name, deadline_s
                    )
                    results[w.task] = ("timeout", None)
                    self._replace(w)
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]


class WorkerPool:
    """``size`` worker processes, started on the first ``run`` (see the module docstring).

    name     names the pool in log lines and errors ("grader worker died ...")
    warm_up  modules each worker imports before it takes calls
    """

    def __init__(self, size: int, name: str = "pool", warm_up: Sequence[str] = ()) -> None:
        if size < 1:
            raise ValueError(f"a worker pool needs at least one worker, got size={size}")
        self.size = size
        self.name = name
        self.warm_up = tuple(warm_up)
        self._workers: _Workers | None = None
        self._lock = threading.Lock()
        self._atexit_registered = False

    @property
    def started(self) -> bool:
        """Whether this process has worker processes (started by a ``run``, not closed since)."""
        return self._workers is not None and self._workers.pid == os.getpid()

    def run(self, fn: Callable, calls: Sequence[tuple], deadline_s: float) -> list[tuple[str, object]]:
        """Run ``fn(*args)`` for each args in ``calls`` -> per call ("ok", result) | ("timeout", None)
        | ("died", returncode). A call past ``deadline_s`` (counted from when a worker took it) gets
        ("timeout", None); its worker is killed and replaced, the other calls go on. Calls from
        several threads run one batch at a time."""
        with self._lock:
            if self._workers is not None and self._workers.pid != os.getpid():
                self._workers = None  # inherited through fork: those workers belong to the parent process
            if self._workers is None:
                self._workers = _Workers(self.size, self.name, self.warm_up)
                if not self._atexit_registered:
                    atexit.register(self.close)
                    self._atexit_registered = True
            try:
                return self._workers.run(fn, calls, deadline_s)
            except BaseException:
                # Workers may hold half-finished calls (error, Ctrl-C): never reuse them.
                self._workers.kill()
                self._workers = None
                raise

    def close(self) -> None:
        """Stop the worker processes (a later ``run`` starts fresh ones)."""
        locked = self._lock.acquire(timeout=_CLOSE_LOCK_TIMEOUT_S)
        try:
            if self._workers is not None and self._workers.pid == os.getpid():
                self._workers.close()
            self._workers = None
        finally:
            if locked:
                self._lock.release()
