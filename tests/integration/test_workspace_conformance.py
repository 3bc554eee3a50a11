"""The workspace against the POSIX behaviours user code relies on, inside a session, for each
mount strategy and S3 server. Each behaviour either works as on a local disk, or is a limitation
pinned here exactly as it shows (and written down in the README, "What the workspace is and is
not"), so a change of behaviour, for better or worse, fails this test."""

from __future__ import annotations

import json

import pytest
from pathlib import Path

from provisioning import facts
from provisioning.launcher import SessionManager
from provisioning.storage import SessionStorage

from ..conftest import Store, session_id

PROBE = (Path(__file__).parent / "conformance_probe.py").read_bytes()

# What a local disk gives; the workspace gives the same unless listed in LIMITATIONS.
LOCAL_DISK = {
    "truncate by path": "hell",
    "truncate by fd": "hell",
    "rename over an existing file": ["new", False],
    "rename a directory": [["a", "b", "sub/c"], False, "sub/c"],
    "append": "1\n2\n3\n",
    "O_EXCL": "second open: EEXIST",
    "flock": "second lock refused",
    "fcntl lock": "other process refused",
    "mmap write": "mmap!",
    "sparse write": [1048577, True, "x"],
    "fsync": "ok",
    "symlink": ["target", "via link"],
    "hard link": [2, "two"],
    "user xattr": "kept",
    "utime": 1000000000,
    "chmod and stat": ["0o640", "0o755", "0o600", "0o750"],
    "workspace root mode": "0o750",  # the session's own uid, and its gid, which no one else has
    "chown to root": "EPERM",
    "owner is the session's uid": True,
    "large file": True,
    "many small files": [200, "199"],
    "git repository": [["second", "first"], 0],
    "sqlite rollback journal": ["delete", [50, 1225], "ok"],
    "sqlite WAL": ["wal", [50, 1225], "ok"],
    "venv": "True",
    "workspace root mtime": [True, "ok"],
    "directory made only by a key below it": True,
    "file name with a newline": "stored",
}

# s3fs's behaviour where it is not a local disk's, as observed; the README explains each.
LIMITATIONS: dict[str, object] = {
    # s3fs 1.90-1.95 would leave the file untouched and report success: the executor's syscall
    # filter refuses truncate(2) instead (ftruncate, on an open file, works: "truncate by fd").
    "truncate by path": "OSError: [Errno 95] Operation not supported: 't1'",
    # A directory that exists only as the prefix of a key put from outside: s3fs shows a 1969 mtime.
    "directory made only by a key below it": False,
    # No hard links and no extended attributes (s3fs answers EOPNOTSUPP).
    "hard link": "OSError: [Errno 95] Operation not supported: 'h1' -> 'h2'",
    "user xattr": "OSError: [Errno 95] Operation not supported: 'x1'",
}
# The embedded endpoint (moto) alone: a key with a newline is not stored, and the close fails.
EMBEDDED_ENDPOINT_LIMITATIONS: dict[str, object] = {"file name with a newline": "ENOENT"}


def probe_matches(manager: SessionManager, storage: SessionStorage, expected: dict[str, object],
                  outside_within: float = 0.0) -> str:
    """Run the probe in a new session (with a key put from outside first, given ``outside_within``
    seconds to show); assert that every behaviour is as expected. Returns the session's id."""
    sid = session_id()
    manager.create(sid)
    storage.client.put_object(Bucket=storage.settings.bucket, Key=f"{facts.session_prefix(sid)}/uploads/deep/x.txt",
                              Body=b"from outside")
    if outside_within:
        shown = manager.exec(sid, argv=["python3", "-c", (
            "import os, sys, time\n"
            f"deadline = time.monotonic() + {outside_within}\n"
            "while not os.path.exists('/workspace/uploads/deep/x.txt') and time.monotonic() < deadline:\n"
            "    time.sleep(0.05)\n"
            "sys.exit(0 if os.path.exists('/workspace/uploads/deep/x.txt') else 1)")])
        assert shown.exit_code == 0, f"a key put from outside did not show within {outside_within} s"
    result = manager.exec(sid, argv=["python3", "-"], stdin=PROBE, timeout=300)
    assert result.exit_code == 0, result.stderr.decode()
    observed = json.loads(result.stdout)
    differences = {name: {"expected": expected[name], "observed": observed.get(name)}
                   for name in expected if observed.get(name) != expected[name]}
    assert not differences, json.dumps(differences)
    return sid


def test_workspace_conformance(manager: SessionManager, storage: SessionStorage, s3_store: Store) -> None:
    probe_matches(manager, storage, {**LOCAL_DISK, **LIMITATIONS,
                                     **(EMBEDDED_ENDPOINT_LIMITATIONS if s3_store.name == "moto" else {})})


@pytest.mark.parametrize("strategy", ["host"])
def test_a_name_looked_up_before_its_upload_shows_once_uploaded(manager: SessionManager,
                                                               storage: SessionStorage) -> None:
    """s3fs 1.95 remembers a missing name until its stat cache expires: a name user code looked
    up (a poll for an expected upload) stayed invisible for 80 s and more after the platform
    put it. The host's s3fs forgets misses (``disable_noobj_cache``): it shows at once."""
    assert manager.settings.mounter == "s3fs"
    sid = session_id()
    manager.create(sid)
    missing = manager.exec(sid, argv=["stat", "/workspace/uploads/late.txt"])
    assert missing.exit_code != 0
    storage.client.put_object(Bucket=storage.settings.bucket, Key=f"{facts.session_prefix(sid)}/uploads/late.txt",
                              Body=b"late")
    shown = manager.exec(sid, argv=["python3", "-c", (
        "import os, sys, time\n"
        "deadline = time.monotonic() + 3\n"
        "while not os.path.exists('/workspace/uploads/late.txt') and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "sys.exit(0 if open('/workspace/uploads/late.txt').read() == 'late' else 1)")])
    assert shown.exit_code == 0, shown.stderr.decode()
