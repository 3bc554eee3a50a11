"""rclone mount with its VFS cache (selectable: ``mounter = "rclone"``): writes land in the
session's staging area on host disk and reach S3 in the background a moment after each close,
which makes small-file work fast. The price is a window in which a file exists only on the
host: the teardown drains it (asks rclone's remote control until nothing is left to upload)
before it unmounts, and fails loudly, keeping the cache, if that does not happen.

rclone retries an upload the store refuses for good (the embedded endpoint answers 404 to a key
with a newline) forever, at growing intervals, and 1.60 says neither which files wait nor why
(no ``vfs/queue``; ``core/stats`` has one ``lastError``, here "XML syntax error", without the
status). So when uploads stall, the drain reads the files still dirty from the cache's metadata
and lets the caller ask the store itself about them (``Refuses``).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ... import facts
from ...config import Credentials, ValidSettings
from ..fuseproc import MountError
from .base import HeldFile, MountCommand, MountTarget, Refuses, credentials_only_at_mount

# A file closed this long ago is uploaded: the most a crash of the host (not a stop) can lose.
WRITE_BACK = "1s"
# How long a directory listing is trusted: a file put into S3 from outside shows up within this.
DIR_CACHE_TIME = "5s"
# Uploads at once while draining and in the background.
TRANSFERS = 8
REMOTE = "ws"  # the remote's name in the environment-only configuration
# Nothing uploading this long after the drain began, yet files still queued: each of them has
# failed at least once (write-back is WRITE_BACK, rclone's first retry 2 s after a failure), so
# the store is asked why. A stop with nothing refused is done well before this.
STALLED_AFTER = 2.0
# How often the store is asked again while it gives no verdict (unreachable, failing, or it
# takes some of the files: rclone's next try will do).
ASK_EVERY = 5.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RcloneMounter:
    name = "rclone"
    # rclone reads its keys from the environment once, at start.
    renews = False

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

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        deadline = time.monotonic() + timeout
        next_question = time.monotonic() + STALLED_AFTER
        while True:
            cache = self.stats(control).get("diskCache", {})
            uploading, queued = int(cache.get("uploadsInProgress", 0)), int(cache.get("uploadsQueued", 0))
            if uploading + queued == 0:
                return []
            now = time.monotonic()
            if uploading == 0 and now >= next_question:
                held = held_files(cache)
                # Every queued file accounted for (a metadata file being rewritten is not read),
                # and every one refused: nothing else waits.
                if held and len(held) == queued and refuses(held):
                    return held
                next_question = time.monotonic() + ASK_EVERY
            if now > deadline:
                raise MountError(f"rclone still had {uploading + queued} file(s) to upload after {timeout:g}s; "
                                 "they stay in its cache")
            time.sleep(0.05)

    def sync(self, control: str, timeout: float) -> None:
        """Until rclone's upload queue is empty (files still being written keep it busy)."""
        self.drain(control, timeout, lambda _held: False)

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

    def renew(self, control: str, credentials: Credentials, timeout: float) -> None:
        raise credentials_only_at_mount(self.name)

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        raise MountError("rclone keeps nothing it could send without its process")

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise MountError("rclone is not installed on this host (mounter = \"rclone\"); set "
                             "sandbox_host_config.mounter: rclone and rerun the playbook, or apt-get install rclone")


def held_files(cache: dict[str, Any]) -> list[HeldFile]:
    """The files rclone's VFS cache marks dirty (not uploaded yet), from its metadata: one JSON
    file per cached file under ``pathMeta``, its bytes under ``path`` (both from ``vfs/stats``)."""
    if not cache.get("pathMeta") or not cache.get("path"):
        return []
    meta_root, data_root = Path(str(cache["pathMeta"])), Path(str(cache["path"]))
    held = []
    for directory, _dirs, files in os.walk(meta_root):  # symbolic links are not followed
        for name in files:
            meta = Path(directory) / name
            try:
                item = json.loads(meta.read_text())
                if not item.get("Dirty"):
                    continue
                complete = _covers(item.get("Rs") or [], int(item.get("Size", 0)))
            except (OSError, ValueError, AttributeError, TypeError):
                continue  # gone (uploaded, removed) or being rewritten: the caller compares counts
            path = str(meta.relative_to(meta_root))
            held.append(HeldFile(path, data_root / path, complete))
    return sorted(held, key=lambda f: f.path)


def _covers(ranges: list[dict[str, int]], size: int) -> bool:
    """Whether the cached ranges (``Rs``: Pos, Size) hold every byte of a file of ``size``: a file
    opened from S3 and changed in part holds only the parts read or written."""
    end = 0
    for span in sorted(ranges, key=lambda r: int(r.get("Pos", 0))):
        if int(span.get("Pos", 0)) > end:
            return False
        end = max(end, int(span.get("Pos", 0)) + int(span.get("Size", 0)))
    return end >= size
