"""The in-container strategy (the reference design, kept as a mode): s3fs inside the session
container, mounted by the rendered entrypoint as root with /dev/fuse and SYS_ADMIN, with
credentials scoped to the session's prefix; user code runs without capabilities, under the
executor's syscall filter (which refuses the namespace and mount calls SYS_ADMIN would allow)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import concurrent.futures
from collections.abc import Callable

import jinja2

from .. import credentials as creds_mod
from .. import facts, render
from ..config import Credentials, ValidSettings
from ..hostinfo import apparmor_enforced
from ..validation import SessionId
from .base import BootFile, StrategyError, WorkspacePlan

if TYPE_CHECKING:
    from ..storage import SessionStorage


def _credentials_file(credentials: Credentials) -> bytes:
    return f"{credentials.access_key}\n{credentials.secret_key}\n{credentials.session_token}\n".encode()


class InContainerMount:
    name = "in-container"
    # Root in the container needs exactly these: SYS_ADMIN to mount and unmount, SETUID/SETGID
    # and SETPCAP to become the sandbox user with an empty bounding set, KILL to forward signals
    # to it. The executor drops all of them.
    capabilities = ("SYS_ADMIN", "SETUID", "SETGID", "SETPCAP", "KILL")

    def __init__(self, storage: Callable[[], SessionStorage], apparmor: bool | None = None,
                 mint: Callable[[ValidSettings, SessionId], Credentials] = creds_mod.mint) -> None:
        self._storage = storage
        self._apparmor = apparmor
        self._mint = mint
        self._templates: jinja2.Environment = render.environment()  # the template compiles once
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="in-container")

    def check(self, settings: ValidSettings) -> None:
        if settings.mounter != "s3fs":
            raise StrategyError(
                f"mounter {settings.mounter!r} works with mount = host only; the in-container mount "
                "runs the image's s3fs (set mounter = s3fs, or mount = host)"
            )
        if settings.network == "none":
            raise StrategyError(
                "network 'none' cannot work with the in-container mount: s3fs inside the "
                "container must reach the S3 endpoint; use 'host' or 'bridge', or mount = host"
            )

    def plan(self, session_id: SessionId, settings: ValidSettings, uid: int) -> WorkspacePlan:
        # The credentials and the prefix's marker (s3fs mounts BUCKET:/sessions/<id> only when
        # it exists) in parallel: two round trips to the store.
        minted = self._pool.submit(self._mint, settings, session_id)
        marker = self._pool.submit(self._storage().ensure_root, session_id)
        entrypoint = render.render_entrypoint(session_id, settings, uid, self._templates)
        marker.result()
        credentials = minted.result()
        security = []
        apparmor = apparmor_enforced() if self._apparmor is None else self._apparmor
        if apparmor:
            security.append("apparmor=unconfined")  # docker-default denies mount(2)
        return WorkspacePlan(
            user=None,
            entrypoint=["/bin/sh", f"{facts.BOOT_DIR}/entrypoint.sh"],
            devices=["/dev/fuse:/dev/fuse:rwm"],
            cap_add=list(self.capabilities),
            security_opt=security,
            tmpfs={facts.CONTAINER_STATE_DIR: "rw,nosuid,nodev,noexec,size=1m,mode=0700"},
            boot_files=[
                BootFile("entrypoint.sh", entrypoint.encode(), 0o500),
                BootFile("credentials", _credentials_file(credentials), 0o400),
            ],
        )
