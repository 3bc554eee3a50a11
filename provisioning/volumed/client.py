"""Ask a running volume service (the Docker plugin socket) a question, as Docker does. The
calls and their answers: docs/volume-service-protocol.md."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from ..errors import UnreachableError
from .service import socket_path

MAX_ANSWER = 4 << 20


def call(driver: str, endpoint: str, body: dict[str, Any] | None = None, timeout: float = 5.0,
         path: Path | None = None) -> dict[str, Any]:
    target = path or socket_path(driver)
    payload = json.dumps(body or {}).encode()
    request = (f"POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(target))
            sock.sendall(request)
            chunks, size = [], 0
            while chunk := sock.recv(65536):
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise UnreachableError(f"the volume service at {target} sent an oversized answer")
                chunks.append(chunk)
    except OSError as exc:
        raise UnreachableError(
            f"the volume service {driver!r} does not answer at {target} ({exc.strerror or exc}); "
            "start it (systemctl start sandbox-host-volumes, or /etc/init.d/sandbox-host-volumes start)"
        ) from None
    _head, _sep, raw = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise UnreachableError(f"the volume service at {target} sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise UnreachableError(f"the volume service at {target} sent an unreadable answer")
    return answer
