"""Where sessions run: one small interface, its implementations side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import ValidSettings
from .base import Backend, SessionInfo, SessionSpec

if TYPE_CHECKING:
    import docker

__all__ = ["Backend", "SessionInfo", "SessionSpec", "backend_for"]


def backend_for(settings: ValidSettings, client: docker.DockerClient | None = None) -> Backend:
    """``docker``: this host's engine; ``swarm``: a fleet, through a manager's engine."""
    if settings.backend == "swarm":
        from .swarm import SwarmBackend

        return SwarmBackend(settings, client)
    from .docker import DockerBackend

    return DockerBackend(settings, client)
