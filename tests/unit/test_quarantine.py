"""What the volume service does with files the store refuses for good (rclone holds them back):
which files rclone's cache marks dirty, and the quarantine their bytes go to. The whole path,
with real rclone and the embedded endpoint, is in tests/integration/test_sessions.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.volumed.fuseproc import MountError
from provisioning.volumed.mounters import HeldFile
from provisioning.volumed.mounters.rclone import held_files
from provisioning.volumed.quarantine import Quarantine

VOLUME = "sandbox-ws-abc.1900000005"
HOSTILE = "a\n\x1b]0;pwned\x07\x1b[2Jstopped cleanly"

def cached(root: Path, path: str, data: bytes, *, dirty: bool, ranges: list[tuple[int, int]] | None = None) -> None:
    """One file as rclone 1.60's VFS cache keeps it: bytes under vfs/, metadata under vfsMeta/."""
    for part, content in (("vfs", data), ("vfsMeta", None)):
        target = root / part / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            target.write_bytes(content)
        else:
            spans = ranges if ranges is not None else [(0, len(data))]
            target.write_text(json.dumps({"ModTime": "2026-12-01T22:28:50Z", "Size": len(data), "Fingerprint": "",
                                          "Rs": [{"Pos": p, "Size": n} for p, n in spans], "Dirty": dirty}))


def test_held_files_are_the_dirty_ones(tmp_path: Path) -> None:
    cached(tmp_path, "artifacts/uploaded.txt", b"done", dirty=False)
    cached(tmp_path, f"artifacts/{HOSTILE}", b"odd bytes", dirty=True)
    cached(tmp_path, "big.bin", b"x" * 100, dirty=True, ranges=[(0, 10), (50, 50)])  # a hole: part is in S3 only
    cache = {"path": str(tmp_path / "vfs"), "pathMeta": str(tmp_path / "vfsMeta")}
    assert held_files(cache) == [
        HeldFile(f"artifacts/{HOSTILE}", tmp_path / "vfs" / "artifacts" / HOSTILE, True),
        HeldFile("big.bin", tmp_path / "vfs" / "big.bin", False),
    ]
    assert held_files({}) == []  # no cache paths (yet): nothing is claimed held


@pytest.fixture
def quarantine(tmp_path: Path) -> Quarantine:
    return Quarantine(tmp_path / "data" / "quarantine", max_bytes=64)


def test_refused_files_are_copied_to_the_quarantine_and_named_escaped(quarantine: Quarantine,
                                                                      tmp_path: Path) -> None:
    cached(tmp_path, HOSTILE, b"odd bytes", dirty=True)
    message = quarantine.keep(VOLUME, [HeldFile(HOSTILE, tmp_path / "vfs" / HOSTILE, True)])
    [kept] = (tmp_path / "data" / "quarantine").iterdir()
    assert kept.name.startswith("sandbox-ws-abc.1900000005.") and kept.stat().st_mode & 0o777 == 0o700
    assert (kept / "1").read_bytes() == b"odd bytes" and (kept / "1").stat().st_mode & 0o777 == 0o600
    assert json.loads((kept / "index.json").read_text()) == [{"file": "1", "name": HOSTILE}]
    assert message == ("the store refused 1 file(s) for good; their bytes are kept on this host: "
                       f"'a\\n\\x1b]0;pwned\\x07\\x1b[2Jstopped cleanly' in {kept / '1'}")


def test_refused_files_that_do_not_fit_or_are_not_all_here_stay_where_they_are(quarantine: Quarantine,
                                                                               tmp_path: Path) -> None:
    cached(tmp_path, HOSTILE, b"x" * 65, dirty=True)
    with pytest.raises(MountError, match=r"'a\\n\\x1b\]0;pwned.*65 bytes do not fit"):
        quarantine.keep(VOLUME, [HeldFile(HOSTILE, tmp_path / "vfs" / HOSTILE, True)])
    with pytest.raises(MountError, match="holds only part of it"):
        quarantine.keep(VOLUME, [HeldFile("big.bin", tmp_path / "vfs" / "big.bin", False)])
    assert not list((tmp_path / "data").glob("quarantine/*"))
