"""rclone mount with its VFS cache (selectable: ``mounter = "rclone"``): writes land in the
session's staging area on host disk and reach S3 in the background a moment after each close,
which makes small-file work fast. The price is a window in which a file exists only on the
host: the teardown drains it (asks rclone's remote control until nothing is left to upload)
before it unmounts, and fails loudly, keeping the cache, if that does not happen."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from typing import Any

from ... import facts
from ...config import Credentials, ValidSettings
from ..fuseproc import MountError
from .base import MountCommand, MountTarget

# A file closed this long ago is uploaded: the most a crash of the host (not a stop) can lose.
WRITE_BACK = "1s"
# How long a directory listing is trusted: a file put into S3 from outside shows up within this.
DIR_CACHE_TIME = "5s"
# Uploads at once while draining and in the background.
TRANSFERS = 8
REMOTE = "ws"  # the remote's name in the environment-only configuration


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RcloneMounter:
    name = "rclone"

    def __init__(self, binary: str | None = None) -> None:
        self.binary = binary or shutil.which("rclone") or "rclone"

    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        cache = target.staging.mountpoint / "rclone"
        cache.mkdir(mode=0o700, exist_ok=True)
        # Leave a tenth of the staging area (and at least 64 MiB) for rclone's metadata and a
        # file being written past the limit; rclone evicts clean files to stay under it.
        cache_bytes = max(target.staging_bytes - max(target.staging_bytes // 10, 64 << 20), 64 << 20)
        control = {"addr": f"127.0.0.1:{_free_port()}", "user": "volumed", "pass": secrets.token_urlsafe(24)}
        argv = [
            self.binary, "mount", f"{REMOTE}:{settings.bucket}/{facts.session_prefix(target.session_id)}",
            str(target.mountpoint),
            "--config", str(cache / "none.conf"),  # never read: the remote lives in the environment
            "--cache-dir", str(cache),
            "--vfs-cache-mode", "full",
            "--vfs-write-back", WRITE_BACK,
            "--vfs-cache-max-size", str(cache_bytes),
            "--dir-cache-time", DIR_CACHE_TIME,
            "--transfers", str(TRANSFERS),
            "--s3-acl", "",  # no x-amz-acl header: the session's policy grants PutObject, not PutObjectAcl
            "--allow-other", "--default-permissions",  # the kernel checks modes: the session's uid alone
            "--uid", str(target.uid), "--gid", str(target.gid), "--umask", "077",
            "--rc", "--rc-addr", control["addr"],
        ]
        prefix = f"RCLONE_CONFIG_{REMOTE.upper()}_"
        env = {
            f"{prefix}TYPE": "s3", f"{prefix}PROVIDER": "Other", f"{prefix}ENV_AUTH": "false",
            f"{prefix}ENDPOINT": settings.s3_endpoint, f"{prefix}REGION": settings.region,
            f"{prefix}FORCE_PATH_STYLE": "true",
            f"{prefix}NO_CHECK_BUCKET": "true",  # the session's credentials may not create buckets
            f"{prefix}ACCESS_KEY_ID": credentials.access_key,
            f"{prefix}SECRET_ACCESS_KEY": credentials.secret_key,
            "RCLONE_RC_USER": control["user"], "RCLONE_RC_PASS": control["pass"],
        }
        if credentials.session_token:
            env[f"{prefix}SESSION_TOKEN"] = credentials.session_token
        return MountCommand(argv, env, json.dumps(control))

    def verify(self, control: str, timeout: float) -> None:
        """The remote control answers: without it no teardown could tell when the uploads are done."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.stats(control)
                return
            except MountError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def drain(self, control: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            cache = self.stats(control).get("diskCache", {})
            pending = int(cache.get("uploadsInProgress", 0)) + int(cache.get("uploadsQueued", 0))
            if pending == 0:
                return
            if time.monotonic() > deadline:
                raise MountError(f"rclone still had {pending} file(s) to upload after {timeout:g}s; "
                                 "they stay in its cache")
            time.sleep(0.05)

    @staticmethod
    def stats(control: str) -> dict[str, Any]:
        ctl = json.loads(control)
        token = base64.b64encode(f"{ctl['user']}:{ctl['pass']}".encode()).decode()
        request = urllib.request.Request(f"http://{ctl['addr']}/vfs/stats", data=b"{}", method="POST",
                                         headers={"Authorization": f"Basic {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback, fixed scheme
                return dict(json.load(response))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MountError(f"rclone's remote control at {ctl['addr']} does not answer: {exc}") from None

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise MountError("rclone is not installed on this host (mounter = \"rclone\"); set "
                             "sandbox_host_config.mounter: rclone and rerun the playbook, or apt-get install rclone")
