"""How a session's /workspace is mounted: one small interface, its implementations side by side."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import ValidSettings
from .base import BootFile, MountStrategy, StrategyError, VolumeSpec, WorkspacePlan
from .host import HostMount

if TYPE_CHECKING:
    from ..storage import SessionStorage
    from .in_container import InContainerMount

# The in-container strategy brings jinja2 and boto3 (STS): imported when it is chosen or named.

__all__ = ["BootFile", "HostMount", "InContainerMount", "MountStrategy", "StrategyError", "VolumeSpec",
           "WorkspacePlan", "strategy_for"]


def strategy_for(settings: ValidSettings, storage: Callable[[], SessionStorage]) -> MountStrategy:
    if settings.mount == "in-container":
        from .in_container import InContainerMount

        return InContainerMount(storage)
    return HostMount()


def __getattr__(name: str) -> Any:
    if name == "InContainerMount":
        from .in_container import InContainerMount

        return InContainerMount
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
