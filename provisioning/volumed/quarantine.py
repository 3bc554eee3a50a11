"""Files the store refuses for good (the local sync process holds them back: a name S3 cannot take) are copied
here before their volume is torn down, so that nothing written is lost silently: under the
service's data directory (root's, 0700, on disk: they outlive the volume and a reboot), at most
``max_bytes`` in all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from ..escape import printable
from .fuseproc import MountError
from .mounters import HeldFile

MAX_BYTES = 256 << 20


class Quarantine:
    def __init__(self, root: Path, max_bytes: int = MAX_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._lock = threading.Lock()  # teardowns run side by side: one measures the room at a time

    def keep(self, volume: str, files: list[HeldFile]) -> str:
        """Copy the bytes of ``files`` out of the staging area, into ``<root>/<volume>.<random>/<n>``
        (with ``index.json`` giving each file's name); the message that names each (escaped) and
        where its bytes are. MountError when they are not all on this host, do not fit or cannot
        be copied: the volume then keeps everything."""
        if not files:
            return ""
        with self._lock:
            return self._keep(volume, files)

    def _keep(self, volume: str, files: list[HeldFile]) -> str:
        names = ", ".join(f"'{printable(item.path)}'" for item in files)
        if not all(item.complete for item in files):
            raise MountError(f"the store refuses {names} for good, and the staging area holds only part of it")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            used, size = _tree_bytes(self.root), sum(item.data.stat().st_size for item in files)
        except OSError as exc:
            raise MountError(f"the store refuses {names} for good, and they cannot be measured: {exc}") from None
        if used + size > self.max_bytes:
            raise MountError(f"the store refuses {names} for good, and their {size} bytes do not fit in {self.root} "
                             f"({used} of {self.max_bytes} bytes used): make room there, then remove the volume")
        target = Path(tempfile.mkdtemp(prefix=f"{volume}.", dir=self.root))  # 0700, and never one that exists
        try:
            for number, item in enumerate(files, 1):
                with open(item.data, "rb") as source, _private_file(target / str(number)) as copy:
                    shutil.copyfileobj(source, copy)
            with _private_file(target / "index.json") as index:
                index.write(json.dumps([{"file": str(n), "name": f.path} for n, f in enumerate(files, 1)],
                                       indent=1).encode())
            _fsync_dir(target)
        except OSError as exc:
            shutil.rmtree(target, ignore_errors=True)  # this attempt's copies only: the originals stay
            raise MountError(f"the store refuses {names} for good, and they cannot be copied to {target}: "
                             f"{exc.strerror or exc}") from None
        kept = "; ".join(f"'{printable(item.path)}' in {target / str(n)}" for n, item in enumerate(files, 1))
        return f"the store refused {len(files)} file(s) for good; their bytes are kept on this host: {kept}"


def _tree_bytes(root: Path) -> int:
    total = 0
    for directory, _dirs, files in os.walk(root):
        total += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return total


@contextlib.contextmanager
def _private_file(path: Path) -> Iterator[BinaryIO]:
    """A new file only root reads (0600), on disk (fsync) when the block ends."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
