"""Sessions: validate, lease a uid, plan the workspace (the mount strategy), run it (the
backend). The CLI and the library share this one path."""

from __future__ import annotations

import builtins  # list[...] in SessionManager, whose own list() shadows it there
from typing import TYPE_CHECKING, Any


from . import facts, validation
from .backends import Backend, SessionInfo, SessionSpec, backend_for
from .config import Settings
from .errors import SessionError, SessionExists, SessionNotFound
from .backends.base import Executor
from .executor_client import ExecResult
from .mounts import MountStrategy, strategy_for

if TYPE_CHECKING:
    from pathlib import Path

    import docker

    from .storage import ObjectInfo, SessionStorage

__all__ = ["SessionError", "SessionExists", "SessionInfo", "SessionManager", "SessionNotFound"]


class SessionManager:
    def __init__(self, settings: Settings, *, client: docker.DockerClient | None = None,
                 strategy: MountStrategy | None = None, storage: SessionStorage | None = None,
                 backend: Backend | None = None) -> None:
        self.settings = settings.validated()
        self._storage = storage
        self.strategy = strategy or strategy_for(self.settings, lambda: self.storage)
        self.backend: Backend = backend or backend_for(self.settings, client)
        self._bucket_checked = False  # the bucket is checked (and made) once per manager

    @property
    def storage(self) -> SessionStorage:
        """The sessions' files in S3, where their workspaces are mounted from: the mount
        strategy refuses settings that would put them elsewhere (see HostMount.check)."""
        self.strategy.check(self.settings)  # once: a strategy remembers settings it agreed with
        if self._storage is None:
            from .storage import SessionStorage  # boto3: not on the exec path

            self._storage = SessionStorage(self.settings)
        return self._storage

    # -- create ---------------------------------------------------------------------------------
    def create(self, session_id: str) -> SessionInfo:
        """Start a session and wait until its executor reports a mounted workspace."""
        sid = validation.session_id(session_id)
        settings = self.settings
        self.strategy.check(settings)
        if not self._bucket_checked:
            self.storage.ensure_bucket()  # proves the endpoint and credentials before any container
            self._bucket_checked = True
        uid = self.backend.lease_uid(sid)
        try:
            plan = self.strategy.plan(sid, settings, uid)
            return self.backend.launch(SessionSpec(sid, uid, self.strategy.name, plan, settings))
        except BaseException:
            self.backend.release_uid(uid)
            raise

    # -- use ------------------------------------------------------------------------------------
    def get(self, session_id: str) -> SessionInfo:
        info = self.backend.find(validation.session_id(session_id))
        if info is None:
            raise SessionNotFound(f"no session {session_id}; list sessions with 'sandbox-host session list'")
        return info

    def list(self) -> list[SessionInfo]:
        return self.backend.list()

    def executor(self, session_id: str) -> Executor:
        return self.backend.executor(validation.session_id(session_id))

    def exec(self, session_id: str, argv: builtins.list[str] | None = None, code: str | None = None,
             timeout: float = 60.0, stdin: bytes = b"") -> ExecResult:
        return self.executor(session_id).exec(argv=argv, code=code, timeout=timeout, stdin=stdin)

    def health(self, session_id: str) -> dict[str, Any]:
        return self.executor(session_id).health()

    def sync(self, session_id: str, timeout: float = facts.DRAIN_TIMEOUT) -> None:
        """Return once every write the session made before the call is in S3, and what others
        put before it is in the workspace (it runs on); SessionError naming what is not, after
        ``timeout`` seconds at most."""
        self.backend.sync(validation.session_id(session_id), timeout)

    # -- the session's files, as the platform sees them -----------------------------------------
    # A running session's workspace and S3 agree at each of these calls: an upload is in the
    # workspace when upload() returns, and what the session wrote before a listing or a download
    # is in S3 for it (the local-first workspace syncs behind the session; s3fs needs nothing).
    def upload(self, session_id: str, source: Path, name: str | None = None) -> str:
        key = self.storage.upload(session_id, source, name)
        self._agree(session_id)
        return key

    def files(self, session_id: str, area: str = "artifacts") -> builtins.list[ObjectInfo]:
        self._agree(session_id)
        return self.storage.list(session_id, area)

    def read(self, session_id: str, name: str, area: str = "artifacts") -> bytes:
        self._agree(session_id)
        return self.storage.get_bytes(session_id, area, name)

    def download(self, session_id: str, name: str, dest: Path, area: str = "artifacts") -> Path:
        self._agree(session_id)
        return self.storage.download(session_id, name, dest, area)

    def _agree(self, session_id: str) -> None:
        """``sync`` for a running session (its workspace pulls what others put, then sends what
        it wrote); a session that is not running has everything in S3 already."""
        sid = validation.session_id(session_id)
        info = self.backend.find(sid)
        if info is not None and info.status == "running":
            self.backend.sync(sid, facts.DRAIN_TIMEOUT)

    # -- stop -----------------------------------------------------------------------------------
    def stop(self, session_id: str, timeout: int = 30) -> int:
        """Graceful stop (user code ends, the workspace is flushed and unmounted), then remove.
        Returns the exit status of the session's first process."""
        return self.backend.stop(validation.session_id(session_id), timeout)
