"""How a session's /workspace is mounted: one small interface, its implementations side by side."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ValidSettings
from ..storage import SessionStorage
from .base import BootFile, MountStrategy, StrategyError, VolumeSpec, WorkspacePlan
from .host import HostMount
from .in_container import InContainerMount

__all__ = ["BootFile", "HostMount", "InContainerMount", "MountStrategy", "StrategyError", "VolumeSpec",
           "WorkspacePlan", "strategy_for"]


def strategy_for(settings: ValidSettings, storage: Callable[[], SessionStorage]) -> MountStrategy:
    if settings.mount == "in-container":
        return InContainerMount(storage)
    return HostMount()
