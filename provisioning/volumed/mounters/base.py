"""What a workspace mounter is to the volume service: the command that mounts a session's
prefix on the host, and what must happen before that mount is taken down so that nothing
written is lost."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ...config import Credentials, ValidSettings
from ...validation import SessionId
from ..fuseproc import MountError
from ..staging import Staging


@dataclass(frozen=True)
class MountTarget:
    """One session's mount: where, as whom, and the host disk it may stage data on."""

    session_id: SessionId
    mountpoint: Path
    uid: int
    gid: int
    staging: Staging  # the session's capped area on host disk, removed when it ends
    staging_bytes: int


@dataclass(frozen=True)
class MountCommand:
    argv: list[str]
    env: dict[str, str] = field(repr=False)  # credentials: the process's environment only
    # What drain() needs later, kept in the volume's state (root's, 0600) across service restarts.
    control: str = field(default="", repr=False)


@dataclass(frozen=True)
class HeldFile:
    """A file written through the mount that is on host disk only, not (yet) in S3."""

    path: str  # relative to the workspace root, as user code named it: escape it before showing it
    data: Path  # its bytes, in the staging area
    complete: bool  # the staging area holds every byte of it (not only the parts read or written)


# Asked by drain() when uploads stall: does the store refuse every one of these files for good?
Refuses = Callable[[list[HeldFile]], bool]


class Mounter(Protocol):
    name: str
    renews: bool  # takes fresh credentials while mounted (``renew``); else the first ones last the session


    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        """The foreground process that mounts ``target``."""

    def verify(self, control: str, timeout: float) -> None:
        """Raise MountError unless what drain() needs works (after the mount appeared)."""

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        """Return once every write made through the mount is in S3 (an empty list), or once the
        only files left are ones ``refuses`` says the store will never take (those files: the
        caller keeps their bytes); raise MountError if neither happens within ``timeout``.
        Called after the last container left, before unmount."""

    def sync(self, control: str, timeout: float) -> None:
        """Return once every write made through the mount before the call is in S3; MountError
        naming what is not after ``timeout``. The session keeps running (``session sync``)."""

    def renew(self, control: str, credentials: Credentials, timeout: float) -> None:
        """Hand the mounter fresh credentials, user code running on (only where ``renews``);
        MountError if it did not take them."""

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        """After the mounter process died: get what it left on host disk to S3 without it (the
        mount is no longer used); MountError if that cannot be done."""

    def check(self) -> None:
        """Raise MountError naming the fix when this host cannot run the mounter."""


def credentials_only_at_mount(name: str) -> MountError:
    return MountError(f"{name} takes credentials only when it mounts: its session lasts one credential "
                      "lifetime (session_lifetime); the local mounter renews them")


def aws_env(credentials: Credentials) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": credentials.access_key, "AWS_SECRET_ACCESS_KEY": credentials.secret_key}
    if credentials.session_token:
        env["AWS_SESSION_TOKEN"] = credentials.session_token
    return env
