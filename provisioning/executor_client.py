"""Talk to a session's executor over its unix socket (works with every network mode).

The host only ever talks to the session's real executor:
- the socket's directory is closed (root-owned, 0755) as soon as the executor has bound it,
  before any user code runs, so user code cannot replace or front the socket;
- before sending a byte, the client checks the peer (SO_PEERCRED) is the executor process
  itself: the pid and start time recorded when the session became ready (or, while it starts,
  a process of this session's container);
- every call has a total deadline (not a per-read one) and a cap on the answer's size, and a
  malformed, oversized, slow or deeply nested answer is one clear error, never a traceback.

The executor's calls, and the fleet gateway's that :class:`RemoteExecutor` makes (with the seal
of a fleet session): docs/volume-service-protocol.md.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import facts, unixhttp
from .errors import SandboxHostError
from .procs import ProcessRef, in_container, namespace_init

MAX_RESPONSE = 64 << 20  # two 16 MiB outputs, base64, and the JSON around them
HEALTH_TIMEOUT = 5.0
EXEC_MARGIN = 30.0  # on top of the command's own timeout


class ExecutorError(SandboxHostError):
    kind = "executor"


class WorkspaceUnavailable(ExecutorError):
    """The executor refused to run because /workspace is not a live mount."""

    kind = "workspace-unavailable"


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool
    truncated: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExecResult:
        try:
            return cls(
                exit_code=int(data["exit_code"]),
                stdout=base64.b64decode(data["stdout"], validate=True),
                stderr=base64.b64decode(data["stderr"], validate=True),
                duration=float(data["duration"]),
                timed_out=bool(data["timed_out"]),
                truncated=bool(data["truncated"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ExecutorError(f"the executor's answer is malformed ({type(exc).__name__})") from None


class _JsonClient:
    """One HTTP/1.1 request per connection, JSON both ways, a total deadline and a size cap
    (:mod:`provisioning.unixhttp`): what every way of reaching an executor shares. Subclasses
    open the connection."""

    prefix = ""  # put before every path

    def _open(self, deadline: unixhttp.Deadline) -> tuple[unixhttp.Connection, ProcessRef | None]:
        raise NotImplementedError

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = 30.0) -> tuple[int, dict[str, Any], ProcessRef | None]:
        """One request, one connection; ``timeout`` bounds the whole call (None: no bound)."""
        deadline = unixhttp.Deadline(timeout)
        payload = json.dumps(body).encode() if body is not None else b""
        request = unixhttp.Request(method, f"{self.prefix}{path}", "executor", (("Content-Type", "application/json"),),
                                   payload)
        try:
            conn, peer = self._open(deadline)
            with conn:
                answer = conn.exchange(request, MAX_RESPONSE, require_length=True)
            data = answer.json() if answer.body else {}
        except unixhttp.TimedOut as exc:
            raise ExecutorError(f"the executor did not answer within {exc.seconds:g}s") from None
        except unixhttp.Unreachable as exc:
            raise ExecutorError(f"executor connection failed: {exc.error.strerror or exc.error}") from None
        except unixhttp.TooLarge:
            raise ExecutorError(f"the executor's answer exceeds {MAX_RESPONSE >> 20} MiB; refusing it") from None
        except unixhttp.Malformed as exc:
            raise ExecutorError(_MALFORMED[exc.part].format(status=exc.status)) from None
        if not isinstance(data, dict):
            raise ExecutorError(f"the executor's answer is not a JSON object (HTTP {answer.status})")
        return answer.status, data, peer

    def health(self, timeout: float = HEALTH_TIMEOUT) -> dict[str, Any]:
        status, body, _peer = self.request("GET", "/health", timeout=timeout)
        self._check_route(status, body)
        return body

    def exec(self, argv: list[str] | None = None, code: str | None = None, timeout: float = 60.0,
             stdin: bytes = b"") -> ExecResult:
        request: dict[str, Any] = {"timeout": timeout}
        if argv is not None:
            request["argv"] = argv
        elif code is not None:
            request["code"] = code
        else:
            raise ValueError("give argv or code")
        if stdin:
            request["stdin"] = base64.b64encode(stdin).decode()
        status, body, _peer = self.request("POST", "/exec", request, timeout=timeout + EXEC_MARGIN)
        self._check_route(status, body)
        if status == 503:
            raise WorkspaceUnavailable(str(body.get("error", "workspace unavailable"))[:500])
        if status != 200:
            raise ExecutorError(f"executor refused the request (HTTP {status}): {str(body.get('error'))[:500]}")
        return ExecResult.from_json(body)

    def _check_route(self, status: int, body: dict[str, Any]) -> None:
        """Answers of whatever stands between the client and the executor (a gateway)."""


class ExecutorClient(_JsonClient):
    """The executor of a session on this host, through its unix socket."""

    def __init__(self, control_dir: Path, container_id: str, executor: ProcessRef | None = None) -> None:
        self.control_dir = control_dir
        self.container_id = container_id
        # None while the session starts: then any process of its container, or (no container id)
        # the first process of a container.
        self.executor = executor

    @property
    def socket_path(self) -> Path:
        return self.control_dir / facts.SOCKET_NAME

    def _check_peer(self, conn: unixhttp.Connection) -> ProcessRef:
        peer = conn.peer()
        pid, uid = peer.pid, peer.uid
        ref = ProcessRef.of(pid)
        if self.executor is not None:
            ok = ref == self.executor
        elif self.container_id:
            ok = ref is not None and in_container(pid, self.container_id)
        else:  # a container the caller cannot name: its first process, which user code never is
            ok = ref is not None and namespace_init(pid)
        if not ok or ref is None:
            raise ExecutorError(
                f"refusing the socket in {self.control_dir}: its peer (pid {pid}, uid {uid}) is not this "
                f"session's executor (container {self.container_id[:12]})"
            )
        return ref

    def _open(self, deadline: unixhttp.Deadline) -> tuple[unixhttp.Connection, ProcessRef | None]:
        # Through a directory descriptor: keeps the address short whatever the state dir.
        try:
            dir_fd = os.open(self.control_dir, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ExecutorError(f"no control directory {self.control_dir}: {exc.strerror}") from None
        try:
            conn = unixhttp.Connection.unix(f"/proc/self/fd/{dir_fd}/{facts.SOCKET_NAME}", deadline)
        except unixhttp.Unreachable as exc:
            raise ExecutorError(f"executor not answering on {self.socket_path}: "
                                f"{exc.error.strerror or exc.error}") from None
        finally:
            os.close(dir_fd)
        try:
            return conn, self._check_peer(conn)  # before a byte is sent
        except OSError as exc:
            conn.close()
            raise ExecutorError(f"executor not answering on {self.socket_path}: {exc.strerror or exc}") from None
        except BaseException:
            conn.close()
            raise

    def identify(self, timeout: float = HEALTH_TIMEOUT) -> tuple[dict[str, Any], ProcessRef]:
        """Health plus the executor process that answered (recorded once the session is ready)."""
        _status, body, peer = self.request("GET", "/health", timeout=timeout)
        assert peer is not None
        return body, peer


class RemoteExecutor(_JsonClient):
    """The executor of a session on another node, through that node's gateway (mutual TLS:
    the control plane's client certificate, the node's certificate checked against the fleet's CA
    and its address)."""

    def __init__(self, address: str, port: int, session_id: str, context: ssl.SSLContext) -> None:
        self.address = address
        self.port = port
        self.context = context
        self.prefix = f"/v1/sessions/{session_id}"

    def _open(self, deadline: unixhttp.Deadline) -> tuple[unixhttp.Connection, ProcessRef | None]:
        try:
            raw = socket.create_connection((self.address, self.port), timeout=deadline.remaining())
            sock = self.context.wrap_socket(raw, server_hostname=self.address)
        except (OSError, ssl.SSLError) as exc:
            raise ExecutorError(f"node gateway {self.address}:{self.port} not reachable: {exc}") from None
        return unixhttp.Connection(sock, deadline, f"{self.address}:{self.port}"), None

    def _check_route(self, status: int, body: dict[str, Any]) -> None:
        if status in (404, 409, 502) and "kind" in body:
            error = ExecutorError(f"node {self.address}: {str(body.get('error'))[:500]}")
            error.kind = str(body["kind"])
            raise error


def client_context(ca: str, cert: str, key: str) -> ssl.SSLContext:
    """The control plane's side of the fleet's mutual TLS."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ExecutorError(f"cannot load the control plane's TLS files ({ca}, {cert}): {exc}; "
                            "run playbooks/swarm.yml, which issues them") from None
    return context


_MALFORMED: dict[unixhttp.MalformedPart, str] = {
    "head": "the executor sent a malformed answer (no complete HTTP head)",
    "status-line": "the executor sent a malformed status line",
    "length": "the executor's answer was cut short or has a wrong length (HTTP {status})",
    "json": "the executor sent an unreadable answer (HTTP {status})",
}
