"""Look at running processes through /proc: process trees, memory, socket owners.

Memory is read from /proc/<pid>/status (VmRSS now, VmHWM the kernel's own
peak), so a short spike between two polls is still caught by VmHWM.
Socket owners let the revocation scenario tell which gateway worker
answered on each keep-alive connection.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (spawned workers, helper processes)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for kid in parents.get(todo.pop(), []):
            found.append(kid)
            todo.append(kid)
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def worker_pids(master: int) -> list[int]:
    """The gateway's serving processes: spawned workers, or the master if it serves alone."""
    kids = [p for p in children(master) if "multiprocessing.spawn" in cmdline(p)
            and "resource_tracker" not in cmdline(p)]
    return kids or [master]


def memory_kib(pid: int) -> tuple[int, int]:
    """``(VmRSS, VmHWM)`` in KiB, zeros if the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


@dataclass
class MemorySampler:
    """Polls VmRSS/VmHWM of a fixed set of processes on a thread until stopped."""

    pids: list[int]
    interval: float = 0.02
    peak_rss: dict[int, int] = field(default_factory=dict)
    peak_hwm: dict[int, int] = field(default_factory=dict)
    start_rss: dict[int, int] = field(default_factory=dict)
    peak_sum_rss: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        for pid in self.pids:
            self.start_rss[pid] = memory_kib(pid)[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        total = 0
        for pid in self.pids:
            rss, hwm = memory_kib(pid)
            total += rss
            self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)
            self.peak_hwm[pid] = max(self.peak_hwm.get(pid, 0), hwm)
        self.peak_sum_rss = max(self.peak_sum_rss, total)

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def connection_owners(pids: list[int], server_port: int) -> dict[int, int]:
    """Client port -> pid of the process holding the server side of that TCP connection."""
    by_inode = {ino: pid for pid in pids for ino in _socket_inodes(pid)}
    owners: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    local_port = int(cols[1].rsplit(":", 1)[1], 16)
                    remote_port = int(cols[2].rsplit(":", 1)[1], 16)
                    pid = by_inode.get(int(cols[9]))
                    if pid is not None and local_port == server_port:
                        owners[remote_port] = pid
        except OSError:
            continue
    return owners


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def _cpu_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (ppid, own CPU ticks, ticks of its reaped children) for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is state; ppid=1, utime=11, stime=12, cutime=13, cstime=14
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]),
                             int(fields[13]) + int(fields[14]))
    return table


def _system_ticks() -> tuple[int, int]:
    """(user+nice+system, steal) ticks over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        cols = [int(x) for x in f.readline().split()[1:]]
    return cols[0] + cols[1] + cols[2], cols[7] if len(cols) > 7 else 0


def _comm(pid: int) -> str:
    text = cmdline(pid).strip()
    if not text:
        try:
            with open(f"/proc/{pid}/comm") as f:
                text = f.read().strip()
        except OSError:
            text = str(pid)
    return text[:60]


def _ours(table: dict[int, tuple[int, int, int]], root: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = {root}, [root]
    while todo:
        for kid in kids.get(todo.pop(), []):
            found.add(kid)
            todo.append(kid)
    return found


class ForeignCpu:
    """CPU the rest of the machine took while a measurement ran: the noise gauge.

    The machine may be shared (test suites, editors, other VMs): this is
    reported next to the figures. Foreign = all user+system CPU time of the
    machine (``/proc/stat``) minus that of our own process tree (this
    process, every service, wrk, curl, including children they reaped),
    plus hypervisor steal. Interrupt and softirq time (our own loopback
    traffic) is not counted. ``busy`` is a fraction of all cores; ``top``
    names the biggest other processes.
    """

    def __enter__(self) -> "ForeignCpu":
        self._t0 = time.monotonic()
        self._sys0 = _system_ticks()
        self._before = _cpu_table()
        self.busy = 0.0
        self.top: list[tuple[float, str]] = []  # (share, command) of the biggest users
        return self

    def __exit__(self, *exc: object) -> None:
        after = _cpu_table()
        sys1 = _system_ticks()
        wall = time.monotonic() - self._t0
        me = os.getpid()
        ours = _ours(after, me) | _ours(self._before, me)
        ours_ticks = 0
        others: dict[int, int] = {}
        for pid, (_, own, reaped) in after.items():
            _, own0, reaped0 = self._before.get(pid, (0, 0, 0))
            if pid in ours:
                ours_ticks += max(0, own - own0) + max(0, reaped - reaped0)
            elif own > own0:
                others[pid] = own - own0
        busy = sys1[0] - self._sys0[0]
        steal = sys1[1] - self._sys0[1]
        hz = os.sysconf("SC_CLK_TCK")
        scale = 1 / hz / max(wall, 1e-6) / (os.cpu_count() or 1)
        self.busy = min(1.0, max(0, busy - ours_ticks + steal) * scale)
        self.top = sorted(((t * scale, _comm(pid)) for pid, t in others.items()
                           if t * scale >= 0.01), reverse=True)[:3]
        if steal * scale >= 0.01:
            self.top = sorted(self.top + [(steal * scale, "hypervisor steal")], reverse=True)[:3]
