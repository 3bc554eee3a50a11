"""Naming host processes robustly: a pid plus its start time (a reused pid is not mistaken for
the process it replaced), and whether a process belongs to a given container."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRef:
    pid: int
    start_time: int  # clock ticks after boot, field 22 of /proc/PID/stat

    @classmethod
    def of(cls, pid: int) -> ProcessRef | None:
        start = start_time(pid)
        return None if start is None else cls(pid, start)

    def alive(self) -> bool:
        return start_time(self.pid) == self.start_time

    def dump(self) -> str:
        return f"{self.pid} {self.start_time}"

    @classmethod
    def load(cls, text: str) -> ProcessRef | None:
        try:
            pid, start = (int(part) for part in text.split())
        except ValueError:
            return None
        return cls(pid, start)


def start_time(pid: int) -> int | None:
    """None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def in_container(pid: int, container_id: str) -> bool:
    """Whether host PID ``pid`` is alive and inside the given container (by its cgroup)."""
    if not container_id:
        return False
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return container_id in cgroups


def namespace_init(pid: int) -> bool:
    """Whether the process is PID 1 of a PID namespace nested in this one (a container's first
    process): user code inside that container can never be."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        return False
    return False
