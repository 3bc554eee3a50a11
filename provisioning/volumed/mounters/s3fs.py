"""s3fs-fuse (the default): every close uploads the file, so an unmount has nothing left to send."""

from __future__ import annotations

import shutil
import subprocess

from ...config import Credentials, ValidSettings
from ...hostinfo import s3fs_binary
from ...s3fsopts import s3fs_mount
from ..fuseproc import MountError
from .base import HeldFile, MountCommand, MountTarget, Refuses, aws_env, credentials_only_at_mount


class S3fsMounter:
    name = "s3fs"
    # s3fs 1.90-1.95 reads its keys once, at start (it re-reads only an IAM role's or the ECS
    # endpoint's, at fixed link-local addresses).
    renews = False

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or s3fs_binary() or "s3fs"
        self._caches_misses: bool | None = None

    def caches_misses(self) -> bool:
        """Whether this s3fs remembers a missing name by default (it then has ``disable_noobj_cache``)."""
        if self._caches_misses is None:
            try:
                help_text = subprocess.run([self.binary, "--help"], capture_output=True, text=True, timeout=10).stdout
            except (OSError, subprocess.TimeoutExpired):
                help_text = ""
            self._caches_misses = "disable_noobj_cache" in help_text
        return self._caches_misses

    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        mount = s3fs_mount(settings, target.session_id, str(target.mountpoint), uid=target.uid, gid=target.gid,
                           tmpdir=str(target.staging.tmpdir), ensure_diskfree_mb=64,
                           forget_misses=self.caches_misses())
        return MountCommand(mount.argv(self.binary), aws_env(credentials))

    def verify(self, control: str, timeout: float) -> None:
        """s3fs needs nothing beyond its mount."""

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        """Nothing to wait for here: s3fs uploaded each file when it was closed (a close the store
        refused failed), and it finishes what is pending before it exits (the teardown waits)."""
        return []

    def sync(self, control: str, timeout: float) -> None:
        """Nothing to wait for: s3fs uploads each file when it is closed (or fsynced)."""

    def renew(self, control: str, credentials: Credentials, timeout: float) -> None:
        raise credentials_only_at_mount(self.name)

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        raise MountError("s3fs keeps nothing it could send without its process")

    def check(self) -> None:
        if shutil.which(self.binary) is None:  # a name on PATH, or the private runtime's path
            raise MountError("s3fs is not installed on this host; run playbooks/s3fs.yml")
