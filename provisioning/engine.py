"""The one Docker Engine API read the session hot path needs (a container's inspect data, for
exec and health), over the local engine's unix socket with the standard library alone: importing
the Docker SDK (requests, urllib3) costs more than the call itself. Everything else goes through
the SDK."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from . import unixhttp
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
    """GET /containers/NAME/json: the container's inspect data, or None when there is no such
    container. ``timeout`` bounds the whole call."""
    request = unixhttp.Request("GET", f"/containers/{quote(name, safe='')}/json", host="docker",
                               headers=(("Accept", "application/json"),), version="HTTP/1.0")
    try:
        # HTTP/1.0: the engine answers without chunks, and may send no Content-Length (it closes).
        answer = unixhttp.call(socket_path, request, timeout=timeout, max_answer=_MAX_ANSWER)
    except (unixhttp.Unreachable, unixhttp.TimedOut) as exc:
        cause = type(exc.error).__name__ if isinstance(exc, unixhttp.Unreachable) else "TimeoutError"
        raise EngineUnavailable(
            f"Docker engine not reachable at unix://{socket_path} ({cause}); "
            "start it (systemctl start docker, or 'dockerd &' where there is no systemd)") from None
    except unixhttp.TooLarge:
        raise EngineError(f"the Docker engine at {socket_path} answered more than {_MAX_ANSWER} bytes") from None
    except unixhttp.Malformed as exc:
        what = "an answer cut short" if exc.part == "length" else "no HTTP answer"
        raise EngineError(f"the Docker engine at {socket_path} gave {what}") from None
    status = answer.status
    if status == 404:
        return None
    try:
        data = answer.json()
    except unixhttp.Malformed:
        raise EngineError(f"the Docker engine at {socket_path} answered {status} with no JSON") from None
    if status != 200:
        raise EngineError(f"Docker engine: {data.get('message', status) if isinstance(data, dict) else status}")
    if not isinstance(data, dict):
        raise EngineError(f"the Docker engine at {socket_path} answered {status} with no object")
    return data
