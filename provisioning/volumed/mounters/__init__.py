"""How the volume service mounts a session's prefix on the host: local (the default: the files on
host disk, S3 kept up to date behind them) or s3fs (every close in S3).
Each mounter is one small class with the same interface (``base.Mounter``)."""

from __future__ import annotations

from ... import facts
from .base import HeldFile, MountCommand, Mounter, MountTarget, Refuses
from .local import LocalMounter
from .s3fs import S3fsMounter

__all__ = ["HeldFile", "LocalMounter", "MountCommand", "MountTarget", "Mounter", "Refuses", "S3fsMounter",
           "make"]


def make(name: str, s3fs_binary: str | None = None) -> Mounter:
    """The mounter called ``name`` (one of facts.MOUNTERS, already validated)."""
    if name == "local":
        return LocalMounter()
    if name == "s3fs":
        return S3fsMounter(s3fs_binary)
    raise ValueError(f"unknown mounter {name!r}; known: {', '.join(facts.MOUNTERS)}")
