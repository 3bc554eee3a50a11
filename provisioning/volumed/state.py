"""What the volume service knows about each volume, and keeps on disk so that a restarted
instance adopts what the previous one left: the record (:class:`VolumeState`), the options Docker
creates a volume with, and the state files (root's, 0600, written atomically)."""

from __future__ import annotations

import dataclasses
import grp
import json
import os
import pwd
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import facts, validation
from ..errors import SandboxHostError
from ..procs import ProcessRef
from ..validation import SessionId


class VolumeError(SandboxHostError):
    kind = "volume"


class VolumeNotFound(VolumeError):
    kind = "not-found"


class SealConflict(VolumeError):
    kind = "sealed"


WORKSPACE = "workspace"  # a session's files: a FUSE mount of its prefix (``workspaces``)
CONTROL = "control"  # the executor's app and socket, for a swarm session (``control``)


@dataclass
class VolumeState:
    name: str
    session_id: str
    uid: int
    gid: int
    status: str = "mounting"  # mounting | mounted | failed | unmounted
    error: str = ""
    refs: list[str] = field(default_factory=list)
    pid: int = 0
    start_time: int = 0
    staging: str = ""  # the staging image's path
    kind: str = WORKSPACE  # or CONTROL
    executor: str = ""  # control: "pid start_time" of the executor, once sealed
    ephemeral: bool = False  # removed from Docker once unmounted (a swarm task's volumes)
    created: float = field(default_factory=time.time)
    mounter: str = "s3fs"  # one of facts.MOUNTERS
    control: str = ""  # what the mounter's drain needs (local: its control socket)
    undrained: str = ""  # why writes of this volume did not all reach S3 (a failed drain, files kept aside)

    @property
    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.start_time) if self.pid else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VolumeOptions:
    session_id: SessionId
    uid: int
    gid: int
    kind: str = WORKSPACE
    ephemeral: bool = False
    mounter: str = "s3fs"

    def state(self, name: str) -> VolumeState:
        return VolumeState(name, self.session_id, self.uid, self.gid, kind=self.kind, ephemeral=self.ephemeral,
                           mounter=self.mounter)


def parse_options(name: str, opts: dict[str, Any] | None, uid_range: tuple[int, int]) -> VolumeOptions:
    """``session=<id>,uid=<n>,gid=<n>[,mounter=local|s3fs]``; the name must be ``sandbox-ws-<id>.<uid>``
    (or the control volume's ``sandbox-ctl-<id>.<uid>``); the ids must lie in the sandbox range and
    belong to no host account."""
    opts = dict(opts or {})
    unknown = sorted(set(opts) - {"session", "uid", "gid", "ephemeral", "mounter"})
    if unknown:
        raise validation.ValidationError("volume option", ",".join(unknown),
                                         "known options: session, uid, gid, ephemeral, mounter")
    sid = validation.session_id(str(opts.get("session", "")))
    ids = []
    for key in ("uid", "gid"):
        try:
            value = int(str(opts.get(key, "")), 10)
        except ValueError:
            raise validation.ValidationError(f"volume option {key}", opts.get(key), "give a number") from None
        if not uid_range[0] <= value <= uid_range[1]:
            raise validation.ValidationError(f"volume option {key}", value,
                                             f"must lie in the sandbox range {uid_range[0]}-{uid_range[1]}")
        ids.append(value)
    check_not_an_account(*ids)
    workspace, control = facts.volume_name(sid, ids[0]), facts.control_volume_name(sid, ids[0])
    if name not in (workspace, control):
        raise validation.ValidationError("volume name", name,
                                         f"must be {workspace} or {control} for session {sid}, uid {ids[0]}")
    ephemeral = str(opts.get("ephemeral", "false")).lower()
    if ephemeral not in ("true", "false"):
        raise validation.ValidationError("volume option ephemeral", opts.get("ephemeral"), "true or false")
    mounter = validation.choice("volume option mounter", str(opts.get("mounter", facts.DEFAULT_MOUNTER)),
                                facts.MOUNTERS)
    return VolumeOptions(sid, ids[0], ids[1], WORKSPACE if name == workspace else CONTROL,
                         ephemeral == "true", mounter)


def check_not_an_account(uid: int, gid: int) -> None:
    for lookup, kind, value in ((pwd.getpwuid, "user", uid), (grp.getgrgid, "group", gid)):
        try:
            lookup(value)
        except KeyError:
            continue
        raise validation.ValidationError(
            "sandbox id", value, f"is a host {kind} account; sandbox ids must be unknown to getent"
        )


class StateFiles:
    """One JSON file per volume under the service's state directory, and its mounter's log."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def save(self, state: VolumeState) -> None:
        """Write the volume's state file atomically. Serialised: the mount's own thread and a
        Docker call may save one volume at once, and two writers of one temporary file made the
        second rename fail (FileNotFoundError in Mount, seen with sessions created at once)."""
        path = self.directory / f"{state.name}.json"
        tmp = path.with_suffix(".json.tmp")
        with self._lock:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state.to_json(), out)
            os.replace(tmp, path)

    def load(self, log: Callable[[str], None]) -> Iterator[VolumeState]:
        """The volumes a previous instance left (an unreadable file is named and skipped)."""
        for path in sorted(self.directory.glob("*.json")):
            try:
                yield VolumeState(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                log(f"ignoring unreadable state file {path}")

    def log_path(self, name: str) -> Path:
        return self.directory / f"{name}.log"

    def forget(self, name: str) -> None:
        for path in (self.directory / f"{name}.json", self.log_path(name)):
            path.unlink(missing_ok=True)
