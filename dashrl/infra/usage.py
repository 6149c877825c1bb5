"""What a run cost the machine, and what else the machine was doing meanwhile.

A wall time alone cannot tell a slow run from a run that shared its cores: on a 2-core machine,
one other busy process made ``rl@dash`` take 1,294 s instead of 236 s, and a DASH-vs-GRPO wall-time
ratio then read DASH as 2.2x slower. So each training stage records, over its training call
(``UsageMonitor``):

- ``wall_s`` and the process CPU seconds (user + system of the process and of its children that
  have exited: ``resource.getrusage``), so a ratio of CPU times can stand beside a ratio of wall times;
- the 1-minute load average (``os.getloadavg``) sampled every ``interval_s`` seconds and at the start
  and end: mean, max and the number of samples;
- the CPUs the process may run on (``os.sched_getaffinity``) and the CPUs online;
- steal time: the share of all CPU time the hypervisor gave to other guests over the run (the
  ``steal`` column of ``/proc/stat``'s ``cpu`` line), where ``/proc/stat`` has it.

**Outside load** (``outside_load``): the run shared the machine when

    load_1m_mean - cpu_use_mean > OUTSIDE_THREADS (0.5)     or     steal_share > OUTSIDE_STEAL_SHARE (0.05)

``cpu_use_mean`` (CPU seconds / wall seconds) is how many cores the run itself kept busy on average,
so the difference is the mean number of runnable threads that were not this run's. Caveats: the
load average is a 1-minute moving average (a run of under a few minutes mostly sees what ran before
it); it counts a run's own threads waiting for a core too (a run with more threads than cores flags
itself); children still alive at the end (a grader's worker pool) are not in the CPU seconds; in a
container the load average and ``/proc/stat`` may be the whole host's.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOAD_SAMPLE_INTERVAL_S = 5.0
OUTSIDE_THREADS = 0.5  # mean runnable threads beyond the run's own CPU use that count as outside load
OUTSIDE_STEAL_SHARE = 0.05  # share of CPU time stolen by the hypervisor that counts as outside load
PROC_STAT = Path("/proc/stat")


def process_cpu_s() -> tuple[float, float]:
    """(user, system) CPU seconds of this process and of its children that have exited."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + children.ru_utime, own.ru_stime + children.ru_stime


def read_steal(path: Path = PROC_STAT) -> tuple[int, int] | None:
    """(steal, total) clock ticks of all CPUs from ``/proc/stat``'s ``cpu`` line; None where the
    file or its steal column is missing (not Linux, a kernel before 2.6.11).

    The total is user + nice + system + idle + iowait + irq + softirq + steal (guest time is already
    in user): ``cpu  100 0 50 800 10 0 5 35 0 0`` -> (35, 1000).
    """
    try:
        with open(path) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == "cpu":
                    ticks = [int(v) for v in fields[1:9]]
                    return (ticks[7], sum(ticks)) if len(ticks) == 8 else None
    except (OSError, ValueError):
        return None
    return None


def cpus_usable() -> int:
    """The CPUs this process may run on (its affinity mask), else every CPU online."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def usage_record(*, wall_s: float, cpu_user_s: float, cpu_system_s: float, load_samples: list[float],
                 steal_start: tuple[int, int] | None, steal_end: tuple[int, int] | None,
                 cpus: int, cpus_online: int) -> dict[str, Any]:
    """The machine-load record of one run (the numbers ``UsageMonitor`` measured; see the module
    docstring for the outside-load rule)."""
    cpu_s = cpu_user_s + cpu_system_s
    cpu_use = cpu_s / wall_s if wall_s > 0 else 0.0
    load_mean = sum(load_samples) / len(load_samples) if load_samples else None
    steal_share = None
    if steal_start is not None and steal_end is not None and steal_end[1] > steal_start[1]:
        steal_share = (steal_end[0] - steal_start[0]) / (steal_end[1] - steal_start[1])
    outside_threads = None if load_mean is None else load_mean - cpu_use
    why = []
    if outside_threads is not None and outside_threads > OUTSIDE_THREADS:
        why.append(f"load average {load_mean:.2f} - own CPU use {cpu_use:.2f} = {outside_threads:.2f} "
                   f"threads > {OUTSIDE_THREADS}")
    if steal_share is not None and steal_share > OUTSIDE_STEAL_SHARE:
        why.append(f"steal {steal_share:.1%} of CPU time > {OUTSIDE_STEAL_SHARE:.0%}")
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "cpu_user_s": cpu_user_s,
        "cpu_system_s": cpu_system_s,
        "cpu_use_mean": cpu_use,
        "load_1m_mean": load_mean,
        "load_1m_max": max(load_samples) if load_samples else None,
        "load_samples": len(load_samples),
        "outside_threads_mean": outside_threads,
        "steal_share": steal_share,
        "cpus_usable": cpus,
        "cpus_online": cpus_online,
        "outside_load": bool(why),
        "outside_load_why": "; ".join(why),
    }


class UsageMonitor:
    """Measures a block of code: ``with UsageMonitor() as usage: ...``, then ``usage.record()``.

    A daemon thread samples the load average every ``interval_s`` seconds while the block runs
    (one sample at the start and one at the end besides). The sources are arguments so that tests
    can give fake ones.
    """

    def __init__(self, interval_s: float = LOAD_SAMPLE_INTERVAL_S, *,
                 loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
                 proc_stat: Path = PROC_STAT,
                 cpu_times: Callable[[], tuple[float, float]] = process_cpu_s,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if interval_s <= 0:
            raise ValueError(f"UsageMonitor: interval_s must be > 0, got {interval_s!r}")
        self.interval_s = interval_s
        self._loadavg, self._proc_stat, self._cpu_times, self._clock = loadavg, proc_stat, cpu_times, clock
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict[str, Any] | None = None

    def sample(self) -> None:
        try:
            self._samples.append(float(self._loadavg()[0]))
        except OSError:  # no load average on this platform
            pass

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> UsageMonitor:
        self._steal_start = read_steal(self._proc_stat)
        self._cpu_start = self._cpu_times()
        self._start = self._clock()
        self.sample()
        self._thread = threading.Thread(target=self._sample_until_stopped, name="usage-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wall_s = self._clock() - self._start
        cpu_end = self._cpu_times()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
        self._result = usage_record(
            wall_s=wall_s, cpu_user_s=cpu_end[0] - self._cpu_start[0], cpu_system_s=cpu_end[1] - self._cpu_start[1],
            load_samples=list(self._samples), steal_start=self._steal_start, steal_end=read_steal(self._proc_stat),
            cpus=cpus_usable(), cpus_online=os.cpu_count() or 1)

    def record(self) -> dict[str, Any]:
        """The ``usage_record`` of the block; only after it has ended."""
        if self._result is None:
            raise RuntimeError("UsageMonitor.record(): the monitored block has not ended yet")
        return self._result
