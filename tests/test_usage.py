"""The run's CPU seconds and machine load (dashrl.infra.usage) from fake sources: /proc/stat files,
load averages and CPU clocks written by the tests; the outside-load rule on both sides of its thresholds."""

from __future__ import annotations

import threading
from itertools import count

import pytest

from dashrl.infra import usage as u

# user nice system idle iowait irq softirq steal guest guest_nice
STAT_START = "cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 50 0 25 400 5 0 2 18 10 0\nintr 12345\n"
STAT_END = "cpu  700 0 150 1800 10 0 5 335 20 0\ncpu0 350 0 75 900 5 0 2 168 10 0\nintr 23456\n"


def test_steal_is_read_from_the_aggregate_cpu_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(STAT_START)
    assert u.read_steal(stat) == (35, 1000)  # 100 + 50 + 800 + 10 + 5 + 35; guest is inside user already
    stat.write_text("cpu  100 0 50 800 10 0 5\n")  # a kernel without the steal column
    assert u.read_steal(stat) is None
    assert u.read_steal(tmp_path / "missing") is None


def test_the_record_from_fake_sources(tmp_path):
    """A 100 s run that used 150 s of user and 10 s of system CPU (1.6 cores) while the load average
    read 2, 3 and 4, and the hypervisor stole 300 of 2,000 ticks."""
    stat = tmp_path / "stat"
    stat.write_text(STAT_START)
    loads = iter([2.0, 3.0, 4.0])
    cpu = iter([(10.0, 1.0), (160.0, 11.0)])
    clock = iter([50.0, 150.0])
    monitor = u.UsageMonitor(interval_s=3600, loadavg=lambda: (next(loads), 0.0, 0.0), proc_stat=stat,
                             cpu_times=lambda: next(cpu), clock=lambda: next(clock))
    with monitor:
        monitor.sample()  # what the sampling thread does every interval_s
        stat.write_text(STAT_END)
    record = monitor.record()
    assert record["wall_s"] == 100.0 and record["cpu_s"] == 160.0
    assert (record["cpu_user_s"], record["cpu_system_s"]) == (150.0, 10.0)
    assert record["cpu_use_mean"] == pytest.approx(1.6)
    assert (record["load_1m_mean"], record["load_1m_max"], record["load_samples"]) == (3.0, 4.0, 3)
    assert record["outside_threads_mean"] == pytest.approx(1.4)
    assert record["steal_share"] == pytest.approx(300 / 2000)  # (335 - 35) / ((700+150+1800+10+5+335) - 1000)
    assert record["outside_load"] is True
    assert "1.40 threads > 0.5" in record["outside_load_why"] and "steal 15.0%" in record["outside_load_why"]
    assert record["cpus_usable"] >= 1 and record["cpus_online"] >= record["cpus_usable"]


@pytest.mark.parametrize(("loads", "steal_end", "flagged"), [
    ([1.9, 2.1], (85, 2000), False),  # load = own CPU use (2.0), 5% steal: an idle machine
    ([2.25, 2.75], (35, 2000), False),  # 0.5 threads beyond its own use: at the threshold, not over
    ([2.6, 2.8], (35, 2000), True),  # 0.7 threads of someone else's work
    ([2.0, 2.0], (86, 2000), True),  # steal 5.1%
])
def test_the_outside_load_rule(loads, steal_end, flagged):
    record = u.usage_record(wall_s=100.0, cpu_user_s=190.0, cpu_system_s=10.0, load_samples=loads,
                            steal_start=(35, 1000), steal_end=steal_end, cpus=2, cpus_online=2)
    assert record["outside_load"] is flagged
    assert bool(record["outside_load_why"]) is flagged


def test_without_proc_stat_or_load_average_the_record_says_unknown(tmp_path):
    def no_loadavg():
        raise OSError("no load average here")

    monitor = u.UsageMonitor(interval_s=3600, loadavg=no_loadavg, proc_stat=tmp_path / "missing")
    with monitor:
        pass
    record = monitor.record()
    assert record["steal_share"] is None and record["load_1m_mean"] is None and record["load_samples"] == 0
    assert record["outside_load"] is False and record["outside_load_why"] == ""


def test_the_thread_samples_while_the_block_runs(tmp_path):
    """Three samples from the thread (besides start and end) before the block is let go."""
    calls = count()
    third_thread_sample = threading.Event()

    def loadavg():
        n = next(calls)
        if n == 3:  # 0: the start sample; 1-3: the thread's
            third_thread_sample.set()
        return (float(n), 0.0, 0.0)

    monitor = u.UsageMonitor(interval_s=0.01, loadavg=loadavg, proc_stat=tmp_path / "missing")
    with monitor:
        assert third_thread_sample.wait(timeout=60)
    record = monitor.record()
    assert record["load_samples"] >= 5 and record["load_1m_max"] == record["load_samples"] - 1


def test_the_record_exists_only_after_the_block_and_the_interval_is_checked():
    monitor = u.UsageMonitor(interval_s=3600)
    with pytest.raises(RuntimeError, match="has not ended"):
        monitor.record()
    with pytest.raises(ValueError, match="interval_s must be > 0, got 0"):
        u.UsageMonitor(interval_s=0)
