"""How many of this process's CPUs other processes leave free, for the default thread count.

A team of OpenMP threads on a machine whose CPUs other processes keep busy waits at every barrier
for a member that is not running, and its spinning members take the CPUs the others need: a small
layer then runs many times slower than on one thread (docs/performance.md, "Threads under load").
So, as OpenMP's own dynamic adjustment does (``OMP_DYNAMIC``, from the load average), a call with
the default thread count runs on no more threads than there are CPUs the other processes leave
free, measured over the last ``SAMPLE_SECONDS`` or more:

    others' CPUs = (busy time of this process's CPUs - this process's own CPU time) / wall time

from ``/proc/stat`` (the CPUs of the affinity mask) and ``os.times()``. A CPU counts as taken once
others keep more than ``TAKEN_FRACTION`` of it busy. A reading costs about 20 us and is taken at
most once per ``SAMPLE_SECONDS``; between readings the last answer is reused. Where
``/proc/stat`` cannot be read (not Linux), nothing is taken.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable

SAMPLE_SECONDS = 0.1
TAKEN_FRACTION = 0.4
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # user, nice, system, irq, softirq, steal (not idle, iowait)

Reading = tuple[float, float, float]  # (wall seconds, busy CPU-seconds of the CPUs, own CPU-seconds)


def read_proc_stat(cpus: Iterable[int], path: str = "/proc/stat") -> float | None:
    """Busy CPU-seconds since boot of the CPUs numbered ``cpus``, or None if unreadable."""
    wanted = {f"cpu{c}" for c in cpus}
    ticks = 0
    try:
        with open(path) as f:
            for line in f:
                if not line.startswith("cpu"):
                    break
                fields = line.split()
                if fields[0] in wanted:
                    ticks += sum(int(fields[1 + i]) for i in _BUSY_FIELDS if 1 + i < len(fields))
    except (OSError, ValueError):
        return None
    return ticks / _TICKS_PER_SECOND


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux (where /proc/stat is not read either)
        return list(range(os.cpu_count() or 1))


_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class FreeCpus:
    """CPUs of ``cpus`` that other processes leave free, from readings at most ``interval`` apart.

    ``busy`` and ``own`` are the readers (``read_proc_stat`` and ``os.times()`` by default; tests
    pass their own)."""

    def __init__(self, cpus: list[int], interval: float = SAMPLE_SECONDS,
                 busy: Callable[[Iterable[int]], float | None] = read_proc_stat,
                 own: Callable[[], float] = _own_cpu_seconds, clock: Callable[[], float] = time.monotonic):
        self.cpus, self.interval = cpus, interval
        self._busy, self._own, self._clock = busy, own, clock
        self._asked: float | None = None
        self._last: Reading | None = None
        self.free = len(cpus)
        self.others = 0.0

    def __call__(self) -> int:
        """The number of free CPUs (at least 1), read again if the last reading is old enough."""
        now = self._clock()
        if self._asked is not None and now - self._asked < self.interval:
            return self.free
        self._asked = now
        busy = self._busy(self.cpus)
        if busy is None:
            return self.free
        own = self._own()
        if self._last is not None and now > self._last[0]:
            then, busy_then, own_then = self._last
            self.others = max(0.0, (busy - busy_then - (own - own_then)) / (now - then))
            self.free = max(1, len(self.cpus) - max(0, math.ceil(self.others - TAKEN_FRACTION)))
        self._last = (now, busy, own)
        return self.free


_monitor: FreeCpus | None = None


def free_cpus() -> int:
    """CPUs of this process's affinity mask that other processes leave free (at least 1)."""
    global _monitor
    if _monitor is None:
        _monitor = FreeCpus(_allowed_cpus())
    return _monitor()


def _forget_in_child() -> None:
    global _monitor
    _monitor = None  # the child's own CPU time starts again from zero


os.register_at_fork(after_in_child=_forget_in_child)
