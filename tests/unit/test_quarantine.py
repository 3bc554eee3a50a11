"""What the volume service does with files the store refuses for good (the local sync process
holds them back): the quarantine their bytes go to. The whole path, with a real session and the
embedded endpoint, is in tests/integration/test_sessions.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provisioning.volumed.fuseproc import MountError
from provisioning.volumed.mounters import HeldFile
from provisioning.volumed.quarantine import Quarantine

VOLUME = "sandbox-ws-abc.1900000005"
HOSTILE = "a\n\x1b]0;pwned\x07\x1b[2Jstopped cleanly"

def written(root: Path, path: str, data: bytes) -> Path:
    """A file the session's tree holds and the store would not take."""
    target = root / "ws" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return target


@pytest.fixture
def quarantine(tmp_path: Path) -> Quarantine:
    return Quarantine(tmp_path / "data" / "quarantine", max_bytes=64)


def test_refused_files_are_copied_to_the_quarantine_and_named_escaped(quarantine: Quarantine,
                                                                      tmp_path: Path) -> None:
    message = quarantine.keep(VOLUME, [HeldFile(HOSTILE, written(tmp_path, HOSTILE, b"odd bytes"), True)])
    [kept] = (tmp_path / "data" / "quarantine").iterdir()
    assert kept.name.startswith("sandbox-ws-abc.1900000005.") and kept.stat().st_mode & 0o777 == 0o700
    assert (kept / "1").read_bytes() == b"odd bytes" and (kept / "1").stat().st_mode & 0o777 == 0o600
    assert json.loads((kept / "index.json").read_text()) == [{"file": "1", "name": HOSTILE}]
    assert message == ("the store refused 1 file(s) for good; their bytes are kept on this host: "
                       f"'a\\n\\x1b]0;pwned\\x07\\x1b[2Jstopped cleanly' in {kept / '1'}")


def test_refused_files_that_do_not_fit_or_are_not_all_here_stay_where_they_are(quarantine: Quarantine,
                                                                               tmp_path: Path) -> None:
    with pytest.raises(MountError, match=r"'a\\n\\x1b\]0;pwned.*65 bytes do not fit"):
        quarantine.keep(VOLUME, [HeldFile(HOSTILE, written(tmp_path, HOSTILE, b"x" * 65), True)])
    with pytest.raises(MountError, match="holds only part of it"):
        quarantine.keep(VOLUME, [HeldFile("big.bin", written(tmp_path, "big.bin", b"x" * 10), False)])
    assert not list((tmp_path / "data").glob("quarantine/*"))
