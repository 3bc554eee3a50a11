"""Each session runs as a uid of its own from the sandbox range (gid = uid), unknown to the
host's account database: sessions share no kernel per-user limits (processes, inotify
instances), and no host account can reach a session's files or processes.

An id is leased by creating ``<state_dir>/uids/<uid>`` (O_EXCL, so two launches never get the
same one) and released when the session is stopped."""

from __future__ import annotations

import grp
import os
import pwd
import secrets
from pathlib import Path

from .errors import SandboxHostError


class UidError(SandboxHostError):
    kind = "uids"


def known_to_host(uid: int) -> bool:
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            continue
    return False


class UidLeases:
    def __init__(self, state_dir: Path, uid_range: tuple[int, int]) -> None:
        self.dir = state_dir / "uids"
        self.first, self.last = uid_range

    def allocate(self, owner: str, attempts: int = 64) -> int:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        for _ in range(attempts):
            uid = self.first + secrets.randbelow(self.last - self.first + 1)
            if known_to_host(uid):
                continue
            try:
                fd = os.open(self.dir / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            except FileExistsError:
                continue
            with os.fdopen(fd, "w") as lease:
                lease.write(owner + "\n")
            return uid
        raise UidError(f"no free sandbox uid in {self.first}-{self.last} after {attempts} tries; "
                       "widen uid_range or stop sessions")

    def release(self, uid: int) -> None:
        (self.dir / str(uid)).unlink(missing_ok=True)
