"""This process's mount table (/proc/self/mountinfo, see proc(5)), read in one place: where
something is mounted, its filesystem type, and its propagation (a mount made below a shared mount
reaches the containers that bound a directory there).

Mount points are unescaped (the kernel writes a space in a name as ``\\040``, and so a tab, a
newline and a backslash) and decoded as the filesystem's names are (os.fsdecode): they compare
equal to the paths the runtime made, and can be handed back to ``umount``. The executor, which
runs inside sessions with the standard library alone and cannot import the runtime, keeps a copy
of its own (executor/app/executor.py).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SELF = "/proc/self/mountinfo"
_ESCAPED = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str
    propagation: tuple[str, ...]  # the optional fields: shared:N, master:N, propagate_from:N, unbindable

    @property
    def shared(self) -> bool:
        return any(tag.startswith("shared:") for tag in self.propagation)


def parse(text: str) -> list[Mount]:
    """The mounts in the table's order: of two at one mount point, the later is on top."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            end = fields.index("-", 6)  # the optional fields end at a lone "-"
            mounts.append(Mount(_unescape(fields[4]), _unescape(fields[end + 1]), tuple(fields[6:end])))
        except (ValueError, IndexError):
            raise ValueError(f"not a mountinfo line (proc(5)): {line[:300]!r}") from None
    return mounts


def read(path: str = SELF) -> list[Mount]:
    """The table at ``path`` (this process's by default); OSError when it cannot be read."""
    with open(path, "rb") as table:
        return parse(os.fsdecode(table.read()))


def at(target: str | Path, mounts: Iterable[Mount] | None = None) -> Mount | None:
    """The mount on top at ``target``, or None when nothing is mounted there."""
    wanted = str(target)
    found = None
    for mount in read() if mounts is None else mounts:
        if mount.mount_point == wanted:
            found = mount
    return found


def under(directory: str | Path, mounts: Iterable[Mount] | None = None) -> list[Mount]:
    """The mounts strictly below ``directory`` (not at it), in the table's order."""
    prefix = str(directory).rstrip("/") + "/"
    return [m for m in (read() if mounts is None else mounts) if m.mount_point.startswith(prefix)]


def _unescape(field: str) -> str:
    return _ESCAPED.sub(lambda match: chr(int(match.group(1), 8)), field)
