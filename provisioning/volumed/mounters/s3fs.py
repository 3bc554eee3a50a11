"""s3fs-fuse (the default): every close uploads the file, so an unmount has nothing left to send."""

from __future__ import annotations

import shutil

from ...config import Credentials, ValidSettings
from ...hostinfo import s3fs_binary
from ...s3fsopts import s3fs_mount
from ..fuseproc import MountError
from .base import HeldFile, MountCommand, MountTarget, Refuses, aws_env


class S3fsMounter:
    name = "s3fs"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or s3fs_binary() or "s3fs"

    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        mount = s3fs_mount(settings, target.session_id, str(target.mountpoint), uid=target.uid, gid=target.gid,
                           tmpdir=str(target.staging.tmpdir), ensure_diskfree_mb=64)
        return MountCommand(mount.argv(self.binary), aws_env(credentials))

    def verify(self, control: str, timeout: float) -> None:
        """s3fs needs nothing beyond its mount."""

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        """Nothing to wait for here: s3fs uploaded each file when it was closed (a close the store
        refused failed), and it finishes what is pending before it exits (the teardown waits)."""
        return []

    def sync(self, control: str, timeout: float) -> None:
        """Nothing to wait for: s3fs uploads each file when it is closed (or fsynced)."""

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        raise MountError("s3fs keeps nothing it could send without its process")

    def check(self) -> None:
        if shutil.which(self.binary) is None:  # a name on PATH, or the private runtime's path
            raise MountError("s3fs is not installed on this host; run playbooks/s3fs.yml")
