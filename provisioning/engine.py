"""The one Docker Engine API read the session hot path needs (a container's inspect data, for
exec and health), over the local engine's unix socket with the standard library alone: importing
the Docker SDK (requests, urllib3) costs more than the call itself. Everything else goes through
the SDK."""

from __future__ import annotations

import json
import os
import socket
from typing import Any
from urllib.parse import quote

from .errors import SandboxHostError, UnreachableError

DEFAULT_SOCKET = "/var/run/docker.sock"
_MAX_ANSWER = 16 * 1024 * 1024


class EngineUnavailable(UnreachableError):
    pass


class EngineError(SandboxHostError):
    kind = "docker"


def local_socket(environ: dict[str, str] | None = None) -> str | None:
    """The engine's unix socket, or None when DOCKER_HOST names another kind of address (then the
    SDK, which speaks them all, is the way)."""
    host = (os.environ if environ is None else environ).get("DOCKER_HOST", "")
    if not host:
        return DEFAULT_SOCKET
    if host.startswith("unix://"):
        return host[len("unix://"):]
    return None


def inspect_container(name: str, socket_path: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """GET /containers/NAME/json: the container's inspect data, or None when there is no such container."""
    request = (f"GET /containers/{quote(name, safe='')}/json HTTP/1.0\r\nHost: docker\r\n"
               "Accept: application/json\r\n\r\n").encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(socket_path)
            conn.sendall(request)
            chunks, size = [], 0
            while chunk := conn.recv(65536):
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_ANSWER:
                    raise EngineError(f"the Docker engine at {socket_path} answered more than {_MAX_ANSWER} bytes")
    except OSError as exc:
        raise EngineUnavailable(
            f"Docker engine not reachable at unix://{socket_path} ({exc.__class__.__name__}); "
            "start it (systemctl start docker, or 'dockerd &' where there is no systemd)") from None
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise EngineError(f"the Docker engine at {socket_path} gave no HTTP answer") from None
    if status == 404:
        return None
    try:
        data = json.loads(body)
    except ValueError:
        raise EngineError(f"the Docker engine at {socket_path} answered {status} with no JSON") from None
    if status != 200:
        raise EngineError(f"Docker engine: {data.get('message', status) if isinstance(data, dict) else status}")
    if not isinstance(data, dict):
        raise EngineError(f"the Docker engine at {socket_path} answered {status} with no object")
    return data
