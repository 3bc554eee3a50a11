"""A session's s3fs staging area: a sparse ext4 image on host disk, loop-mounted, so that what
one session stages is capped (``staging_size``) and removed with the session.

A loop filesystem rather than a quota: it needs nothing of the host's filesystem (no project
quotas, which many kernels and filesystems lack), statvfs inside it reports the cap (s3fs's
``ensure_diskfree`` sees it), and with ``discard`` deleted files give their blocks back to the
host. Making one costs ~10 ms (no journal, lazy inode tables)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import mountinfo
from ..errors import SandboxHostError


class StagingError(SandboxHostError):
    kind = "staging"


def size_bytes(size: str) -> int:
    """'10g' / '512m' / '1048576k' / plain bytes (already validated) to bytes."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    unit = size[-1:].lower()
    return int(size[:-1]) * units[unit] if unit in units else int(size)


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StagingError(f"{argv[0]} failed ({proc.returncode}): {detail[0]}")


def is_mounted(path: Path) -> bool:
    try:
        return mountinfo.at(path) is not None
    except OSError:
        return False


@dataclass(frozen=True)
class Staging:
    image: Path
    mountpoint: Path

    def create(self, size: str, owner_uid: int, owner_gid: int) -> None:
        self.image.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.image, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, size_bytes(size))
        finally:
            os.close(fd)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal",
              "-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard,root_owner=0:0", str(self.image)])
        _run(["mount", "-o", "loop,discard,nosuid,nodev,noexec", str(self.image), str(self.mountpoint)])
        os.chmod(self.mountpoint, 0o700)
        tmp = self.mountpoint / "tmp"
        tmp.mkdir(mode=0o700, exist_ok=True)
        os.chown(tmp, owner_uid, owner_gid)

    def mount(self) -> None:
        """Mount an existing image (one a host restart left unmounted) where create() would."""
        if not is_mounted(self.mountpoint):
            self.mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
            _run(["mount", "-o", "loop,discard,nosuid,nodev,noexec", str(self.image), str(self.mountpoint)])

    @property
    def tmpdir(self) -> Path:
        return self.mountpoint / "tmp"

    def remove(self) -> None:
        if is_mounted(self.mountpoint):
            try:
                _run(["umount", str(self.mountpoint)])
            except StagingError:
                _run(["umount", "-l", str(self.mountpoint)])  # the loop device goes when the last user does
        self.image.unlink(missing_ok=True)
        self.index.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()

    @property
    def index(self) -> Path:
        """Beside the image, on host disk: the local-first workspace's sync index (what S3 holds
        of the files in the image). Its presence marks an image whose files may not all be in S3."""
        return self.image.with_suffix(".index.json")


class StagingPool:
    """Staging areas made ahead of time (formatted and mounted), so that a session's mount does
    not wait for mkfs and the loop mount: take() hands one over at once and a background thread
    makes the next. Spares left by a previous instance of the service are discarded at start."""

    def __init__(self, root: Path, size: str, *, spares: int = 2, log: Callable[[str], None] = lambda _m: None) -> None:
        self.root = root
        self.size = size
        self.spares = spares
        self._log = log
        self._ready: list[Staging] = []
        self._lock = threading.Lock()
        self._wanted = threading.Event()

    def start(self, keep: set[Path]) -> list[Path]:
        """Discard what a previous instance left but the areas in ``keep`` (live volumes'), then
        start making spares. Returns the orphans: areas no volume claims that hold a local-first
        workspace's files (its index beside it), which may not all be in S3. Never removed here:
        the caller sends their files to S3 first."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        orphans = []
        for leftover in sorted(self.root.glob("*.img")):
            if leftover in keep:
                continue
            if Staging(leftover, leftover.with_suffix("")).index.exists():
                orphans.append(leftover)
                continue
            self.release(leftover)
        threading.Thread(target=self._fill, name="staging-pool", daemon=True).start()
        self._wanted.set()
        return orphans

    @staticmethod
    def attach(image: Path) -> Staging:
        """An existing area (an orphan: start() named it), mounted again if a restart unmounted it."""
        staging = Staging(image, image.with_suffix(""))
        staging.mount()
        return staging

    @staticmethod
    def release(image: Path) -> None:
        """Remove a staging area (a volume's, once its writes are in S3; or a spare)."""
        Staging(image, image.with_suffix("")).remove()

    def _make(self) -> Staging:
        token = secrets.token_hex(6)
        staging = Staging(self.root / f"{token}.img", self.root / token)
        staging.create(self.size, 0, 0)
        return staging

    def _fill(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            while True:
                with self._lock:
                    if len(self._ready) >= self.spares:
                        break
                try:
                    staging = self._make()
                except StagingError as exc:
                    self._log(f"cannot make a spare staging area: {exc}")
                    break
                with self._lock:
                    self._ready.append(staging)

    def take(self) -> Staging:
        with self._lock:
            staging = self._ready.pop() if self._ready else None
        self._wanted.set()
        return staging if staging is not None else self._make()
