"""Resident memory, CPU time and CPU affinity of processes, from ``/proc`` (Linux only).

Figures are summed over a set of PIDs, so one node and a group of worker nodes are measured the same
way. ``Pss`` (proportional set size) is reported beside ``VmRSS`` because pages shared between
forked workers are counted once per process in RSS but split between them in PSS.
"""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Sample:
    """Memory and cumulative CPU time of a set of processes at one instant."""

    rss_kib: int
    pss_kib: int | None
    cpu_seconds: float


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(f"{name} not in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """``VmRSS`` of ``pid`` in KiB."""
    return _status_field(pid, "VmRSS")


def pss_kib(pid: int) -> int | None:
    """``Pss`` of ``pid`` in KiB, or ``None`` where ``smaps_rollup`` is not readable."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of ``pid`` (all its threads) in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # After "pid (comm) ": state is field 3, utime field 14, stime field 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_or_zero(pid: int) -> int:
    """``VmRSS``, or 0 for a process that has exited and not been reaped yet (a zombie)."""
    try:
        return rss_kib(pid)
    except LookupError:
        return 0


def sample(pids: list[int]) -> Sample:
    """Sum memory and CPU over ``pids``."""
    pss_values = [pss_kib(p) for p in pids]
    pss = None if any(v is None for v in pss_values) else sum(v or 0 for v in pss_values)
    return Sample(
        rss_kib=sum(_rss_or_zero(p) for p in pids),
        pss_kib=pss,
        cpu_seconds=sum(cpu_seconds(p) for p in pids),
    )


@dataclass(frozen=True, slots=True)
class CoreTimes:
    """Cumulative time of one CPU from ``/proc/stat``, in clock ticks."""

    busy: int
    idle: int
    task: int
    """user + nice + system: time spent running processes and kernel threads."""
    softirq: int
    steal: int


def core_times() -> dict[int, CoreTimes]:
    """Per-CPU cumulative times. ``busy`` counts everything but idle and iowait (steal too)."""
    out: dict[int, CoreTimes] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *values = line.split()
        v = [int(x) for x in values] + [0] * 10
        # user nice system idle iowait irq softirq steal guest guest_nice
        idle = v[3] + v[4]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        task = v[0] + v[1] + v[2]
        out[int(name[3:])] = CoreTimes(busy=busy, idle=idle, task=task, softirq=v[6], steal=v[7])
    return out


def core_shares(
    before: dict[int, CoreTimes], after: dict[int, CoreTimes]
) -> dict[int, dict[str, float]]:
    """Share of wall time each CPU spent busy / in softirq / stolen between two readings."""
    out: dict[int, dict[str, float]] = {}
    for cpu, a in after.items():
        b = before.get(cpu)
        if b is None:
            continue
        total = (a.busy - b.busy) + (a.idle - b.idle)
        if total <= 0:
            continue
        out[cpu] = {
            "busy": (a.busy - b.busy) / total,
            "softirq": (a.softirq - b.softirq) / total,
            "steal": (a.steal - b.steal) / total,
        }
    return out


class Window:
    """CPU accounting over an interval: the server's, the load clients', and everyone else's.

    ``other_cpu_seconds`` is the process time of every task on the machine that is neither the
    server, a load worker, a helper of the system under test (``helpers``, e.g. its
    redis-server) nor this benchmark: other people's work that competes for the CPUs.
    """

    def __init__(
        self, server: list[int], clients: list[int], helpers: list[int] | None = None
    ) -> None:
        self.server = server
        self.clients = clients
        self.helpers = [p for p in helpers or [] if alive(p)]
        self.own = [os.getpid()]
        self._t0 = time.monotonic()
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float, dict[int, CoreTimes]]:
        return (
            sample(self.server).cpu_seconds if self.server else 0.0,
            sample(self.clients).cpu_seconds,
            sample(self.own).cpu_seconds,
            sample(self.helpers).cpu_seconds if self.helpers else 0.0,
            core_times(),
        )

    def close(self) -> dict[str, object]:
        """Figures since the window was opened (seconds, and shares of wall time per CPU)."""
        s0, c0, o0, h0, k0 = self._start
        s1, c1, o1, h1, k1 = self._read()
        task = sum(k1[c].task - k0[c].task for c in k1 if c in k0) / CLK_TCK
        softirq = sum(k1[c].softirq - k0[c].softirq for c in k1 if c in k0) / CLK_TCK
        ours = (s1 - s0) + (c1 - c0) + (o1 - o0) + (h1 - h0)
        return {
            "seconds": time.monotonic() - self._t0,
            "server_cpu_seconds": s1 - s0,
            "client_cpu_seconds": c1 - c0,
            "benchmark_cpu_seconds": o1 - o0,
            "helper_cpu_seconds": h1 - h0,
            "softirq_seconds": softirq,
            "other_cpu_seconds": max(0.0, task - ours),
            "cores": core_shares(k0, k1),
        }


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` in the process tree (not ``pid`` itself)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return sorted(out)


def die_with_parent() -> None:
    """In a child before ``exec``: get SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def affinity(pid: int) -> list[int]:
    """CPUs the main thread of ``pid`` may run on."""
    return sorted(os.sched_getaffinity(pid))


def pin(pid: int, cpus: list[int]) -> None:
    """Restrict every thread of ``pid`` to ``cpus``; threads started later inherit it."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def parse_cpus(spec: str) -> list[int]:
    """``"0"``, ``"1,3"``, ``"2-5"`` → a sorted list of CPU numbers."""
    cpus: set[int] = set()
    for part in spec.split(","):
        if not part.strip():
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cpus)


def machine_info() -> dict[str, object]:
    """What a benchmark figure depends on: CPU model and count, memory, kernel, Python."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = _meminfo_total()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": model,
        "nproc": os.cpu_count(),
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1) if mem_kib else None,
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "python_impl": platform.python_implementation(),
        "nofile_limit": {"soft": soft, "hard": hard},
        "hostname": platform.node(),
    }


def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
