"""Ask a running volume service (the Docker plugin socket) a question, as Docker does. The
calls and their answers: docs/volume-service-protocol.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import unixhttp
from ..errors import UnreachableError
from .service import socket_path

MAX_ANSWER = 4 << 20


def call(driver: str, endpoint: str, body: dict[str, Any] | None = None, timeout: float = 5.0,
         path: Path | None = None) -> dict[str, Any]:
    """POST /ENDPOINT with ``body`` as JSON: the service's answer, a JSON object (its ``Err``
    is the caller's to read). ``timeout`` bounds the whole call."""
    target = path or socket_path(driver)
    request = unixhttp.Request.json("POST", f"/{endpoint}", "plugin", body or {})
    try:
        # The service (plugin.py) always sends a Content-Length: an answer without one was cut.
        answer = unixhttp.call(str(target), request, timeout=timeout, max_answer=MAX_ANSWER,
                               require_length=True).json()
    except (unixhttp.Unreachable, unixhttp.TimedOut) as exc:
        cause = (exc.error.strerror or exc.error) if isinstance(exc, unixhttp.Unreachable) else exc
        raise UnreachableError(
            f"the volume service {driver!r} does not answer at {target} ({cause}); "
            "start it (systemctl start sandbox-host-volumes, or /etc/init.d/sandbox-host-volumes start)"
        ) from None
    except unixhttp.TooLarge:
        raise UnreachableError(f"the volume service at {target} sent an oversized answer") from None
    except unixhttp.Malformed:
        raise UnreachableError(f"the volume service at {target} sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise UnreachableError(f"the volume service at {target} sent an unreadable answer")
    return answer
