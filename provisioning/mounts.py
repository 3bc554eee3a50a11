"""How a session's /workspace gets mounted: the one seam between the launcher and FUSE.

A strategy says what the session container needs (devices, capabilities, security options,
files the entrypoint reads at start). Today there is one, :class:`InContainerFuse`: s3fs runs inside
the container as root, and user code runs without capabilities. A host-side strategy (mount
outside the sandbox, bind into a container with no SYS_ADMIN and no /dev/fuse) implements the
same protocol without touching the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import jinja2

from . import render
from .config import Credentials, Settings
from .hostinfo import apparmor_enforced


class StrategyError(ValueError):
    pass


@dataclass(frozen=True)
class BootFile:
    """A file for the entrypoint: written by the launcher into a root-only host directory that
    is bound at ``render.BOOT_DIR`` (no image layer, no copy through the Docker API)."""

    name: str
    data: bytes
    mode: int


@dataclass(frozen=True)
class ContainerPlan:
    """What a strategy asks of the container, merged into the launcher's own settings."""

    devices: list[str] = field(default_factory=list)
    cap_add: list[str] = field(default_factory=list)
    security_opt: list[str] = field(default_factory=list)
    tmpfs: dict[str, str] = field(default_factory=dict)
    boot_files: list[BootFile] = field(default_factory=list)


class MountStrategy(Protocol):
    name: str

    def check(self, settings: Settings) -> None:
        """Raise StrategyError when the settings cannot work with this strategy."""

    def plan(self, session_id: str, settings: Settings, credentials: Credentials) -> ContainerPlan:
        """Everything the session container needs for its workspace."""


def _credentials_file(credentials: Credentials) -> bytes:
    return f"{credentials.access_key}\n{credentials.secret_key}\n{credentials.session_token}\n".encode()


class InContainerFuse:
    """s3fs inside the session container, mounted by the rendered entrypoint."""

    name = "fuse-in-container"
    # Root in the container needs exactly these: SYS_ADMIN to mount and unmount, SETUID/SETGID
    # and SETPCAP to become the sandbox user with an empty bounding set, KILL to forward signals
    # to it. The executor drops all of them.
    capabilities = ("SYS_ADMIN", "SETUID", "SETGID", "SETPCAP", "KILL")

    def __init__(self, apparmor: bool | None = None) -> None:
        self._apparmor = apparmor
        self._templates: jinja2.Environment = render.environment()  # the template compiles once

    def check(self, settings: Settings) -> None:
        if settings.network == "none":
            raise StrategyError(
                "network 'none' cannot work with the fuse-in-container mount: s3fs inside the "
                "container must reach the S3 endpoint; use 'host' or 'bridge'"
            )

    def plan(self, session_id: str, settings: Settings, credentials: Credentials) -> ContainerPlan:
        entrypoint = render.render_entrypoint(session_id, settings, self._templates)
        security = ["no-new-privileges"]
        apparmor = apparmor_enforced() if self._apparmor is None else self._apparmor
        if apparmor:
            security.append("apparmor=unconfined")  # docker-default denies mount(2)
        return ContainerPlan(
            devices=["/dev/fuse:/dev/fuse:rwm"],
            cap_add=list(self.capabilities),
            security_opt=security,
            tmpfs={"/tmp": f"rw,nosuid,nodev,size={settings.tmp_size},mode=1777"},
            boot_files=[
                BootFile(Path(render.ENTRYPOINT_FILE).name, entrypoint.script.encode(), 0o500),
                BootFile(Path(render.SECRETS_FILE).name, _credentials_file(credentials), 0o400),
            ],
        )
