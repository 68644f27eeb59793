"""CPU time and resident memory of groups of processes, from /proc."""

from __future__ import annotations

import os
from collections.abc import Callable


def descendants(pid: int) -> set[int]:
    """A process and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        found.add(p)
        todo.extend(children.get(p, []))
    return found


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total = 0
    for p in descendants(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def _cpu_groups(groups: dict[str, Callable[[int, str], bool]]) -> dict[str, float]:
    tick = os.sysconf("SC_CLK_TCK")
    totals = dict.fromkeys(groups, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        for name, match in groups.items():
            if match(pid, cmd):
                totals[name] += cpu
                break
    return totals


class CpuMeter:
    """CPU seconds spent by groups of processes between start() and stop(),
    from /proc (processes that exit in between are not counted; pooled
    Postgres backends and worker children live through a run)."""

    def __init__(self, groups: dict[str, Callable[[int, str], bool]]) -> None:
        self.groups = groups
        self.before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = _cpu_groups(self.groups)

    def stop(self) -> dict[str, float]:
        after = _cpu_groups(self.groups)
        self.used = {k: after[k] - self.before.get(k, 0.0) for k in after}
        return self.used
