"""The seam between the launcher and how a session's /workspace is mounted.

A strategy turns a session into a :class:`WorkspacePlan`: what the session container needs
for its workspace (a user, an entrypoint, devices, capabilities, files, a volume) and what must
exist in S3 before it starts. ``backends/container.py`` describes the session's container from
the plan, with the confinement every session gets; a backend (where sessions run) realizes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..config import ValidSettings
from ..errors import InputError
from ..validation import SessionId


class StrategyError(InputError):
    pass


@dataclass(frozen=True)
class BootFile:
    """A file for the in-container entrypoint: written by the launcher into a root-only host
    directory bound at ``facts.BOOT_DIR`` (no image layer, no copy through the Docker API)."""

    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class VolumeSpec:
    """A Docker volume from the sandbox-host volume driver, mounted at ``target``."""

    name: str
    driver: str
    options: dict[str, str]
    target: str


@dataclass(frozen=True)
class WorkspacePlan:
    user: str | None  # "uid:gid" from the start, or None: the entrypoint starts as root
    entrypoint: list[str]
    devices: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    tmpfs: dict[str, str] = field(default_factory=dict)
    boot_files: list[BootFile] = field(default_factory=list)
    volume: VolumeSpec | None = None


class MountStrategy(Protocol):
    name: str

    def check(self, settings: ValidSettings) -> None:
        """Raise StrategyError when the settings cannot work with this strategy."""

    def plan(self, session_id: SessionId, settings: ValidSettings, uid: int) -> WorkspacePlan:
        """Everything the session container needs for its workspace (may mint credentials and
        write S3 markers: it runs right before the container is created)."""
