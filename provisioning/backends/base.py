"""The seam between the launcher and where sessions run: one small interface (a backend), its
implementations side by side. The launcher decides what a session is (a :class:`SessionSpec`:
validated id, its uid, the workspace plan, the settings); a backend makes it run, finds it,
reaches its executor and stops it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from ..config import ValidSettings
from ..errors import SessionError
from ..executor_client import ExecResult
from ..mounts import WorkspacePlan
from ..validation import SessionId


@dataclass(frozen=True)
class SessionSpec:
    session_id: SessionId
    uid: int
    strategy: str
    plan: WorkspacePlan
    settings: ValidSettings


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    container_id: str
    container_name: str
    status: str  # running | starting | exited | failed | lost | ...
    image: str
    network: str
    bucket: str
    prefix: str
    mount: str
    uid: int
    node: str
    detail: str = ""
    launch_seconds: float | None = None
    egress: str = ""  # the session's egress policy (provisioning.egress)

    def require_running(self) -> None:
        """Refuse to reach the executor of a session that is not running, saying why."""
        if self.status != "running":
            raise SessionError(f"session {self.session_id} is not running ({self.status}"
                               f"{': ' + self.detail if self.detail else ''})")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Executor(Protocol):
    """How a session's executor is reached: a unix socket here, a node's gateway in a fleet."""

    def health(self, timeout: float = ...) -> dict[str, Any]: ...

    def exec(self, argv: list[str] | None = None, code: str | None = None, timeout: float = 60.0,
             stdin: bytes = b"") -> ExecResult: ...


class Backend(Protocol):
    name: str

    def lease_uid(self, session_id: SessionId) -> int:
        """A sandbox uid no live session (on any machine this backend places on) holds."""

    def release_uid(self, uid: int) -> None: ...

    def launch(self, spec: SessionSpec) -> SessionInfo:
        """Start the session and return once its executor reports a mounted workspace; on any
        failure leave nothing behind and raise SessionError with the reason."""

    def find(self, session_id: SessionId) -> SessionInfo | None: ...

    def list(self) -> list[SessionInfo]: ...

    def executor(self, session_id: SessionId) -> Executor:
        """A client for the session's executor, or SessionError when it is not running."""

    def sync(self, session_id: SessionId, timeout: float) -> None:
        """Return once every write the running session made before the call is in S3;
        SessionError naming what is not."""

    def stop(self, session_id: SessionId, timeout: int) -> int:
        """Graceful stop (the workspace flushed and unmounted), then remove. The exit status."""
