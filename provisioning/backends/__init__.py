"""Where sessions run: one small interface, its implementations side by side."""

from .base import Backend, SessionInfo, SessionSpec

__all__ = ["Backend", "SessionInfo", "SessionSpec"]
