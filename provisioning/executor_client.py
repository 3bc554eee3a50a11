"""Talk to a session's executor over its unix socket (works with every network mode).

The socket lives in a directory the sandbox user can write to, so user code could swap it
for a symlink to another socket on the host (the Docker socket, say). Before sending a byte
the client checks the peer with SO_PEERCRED: it must run as the sandbox uid inside this
session's container, or the connection is dropped.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOCKET_NAME = "executor.sock"


class ExecutorError(RuntimeError):
    pass


class WorkspaceUnavailable(ExecutorError):
    """The executor refused to run because /workspace is not a live mount."""


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    duration: float
    timed_out: bool
    truncated: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ExecResult":
        return cls(
            exit_code=int(data["exit_code"]),
            stdout=base64.b64decode(data["stdout"]),
            stderr=base64.b64decode(data["stderr"]),
            duration=float(data["duration"]),
            timed_out=bool(data["timed_out"]),
            truncated=bool(data["truncated"]),
        )


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def process_in_container(pid: int, container_id: str) -> bool:
    """Whether host PID ``pid`` is alive and inside the given container (by its cgroup)."""
    try:
        cgroups = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return False
    return container_id in cgroups


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, client: "ExecutorClient", timeout: float | None) -> None:
        super().__init__("executor", timeout=timeout)
        self._client = client

    def connect(self) -> None:
        self.sock = self._client.connect(self.timeout)


class ExecutorClient:
    def __init__(self, control_dir: Path, container_id: str, uid: int) -> None:
        self.control_dir = control_dir
        self.container_id = container_id
        self.uid = uid

    def connect(self, timeout: float | None) -> socket.socket:
        # Connect through a directory descriptor: keeps the address short whatever the state dir.
        dir_fd = os.open(self.control_dir, os.O_PATH | os.O_DIRECTORY)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
            pid, uid, _gid = peer_credentials(sock)
            if uid != self.uid or not process_in_container(pid, self.container_id):
                raise ExecutorError(
                    f"refusing executor socket in {self.control_dir}: its peer (pid {pid}, uid {uid}) "
                    f"is not the sandbox user in container {self.container_id[:12]}"
                )
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dir_fd)
        return sock

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                timeout: float | None = 30.0) -> tuple[int, dict[str, Any]]:
        conn = _UnixConnection(self, timeout)  # None: block until the executor answers
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, ExecutorError):
                raise
            raise ExecutorError(f"executor not answering on {self.control_dir / SOCKET_NAME}: {exc}") from None
        finally:
            conn.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            raise ExecutorError(f"executor sent an unreadable answer (HTTP {response.status})") from None

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        _status, body = self.request("GET", "/health", timeout=timeout)
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
        status, body = self.request("POST", "/exec", request, timeout=timeout + 30)
        if status == 503:
            raise WorkspaceUnavailable(str(body.get("error", "workspace unavailable")))
        if status != 200:
            raise ExecutorError(f"executor refused the request (HTTP {status}): {body.get('error')}")
        return ExecResult.from_json(body)
