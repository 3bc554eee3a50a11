"""The local-first workspace (mounter ``local``) in real sessions: the files on the session's own
capped host filesystem, S3 kept up to date behind them (provisioning/volumed/localsync.py)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from provisioning import facts
from provisioning.config import Settings
from provisioning.launcher import SessionError, SessionManager
from provisioning.storage import SessionStorage

from ..conftest import Store, session_id
from .conftest import cli
from .test_sessions import run_ok, workspace_state
from .test_workspace_conformance import LOCAL_DISK, probe_matches

pytestmark = [pytest.mark.parametrize("strategy", ["host"]), pytest.mark.parametrize("mounter", ["local"])]

# Where the local-first workspace is not a local disk's, as observed.
LOCAL_LIMITATIONS: dict[str, object] = {
    # The executor's syscall filter refuses truncate(2) whatever the mounter (as for s3fs).
    "truncate by path": "OSError: [Errno 95] Operation not supported: 't1'",
}


def listing(storage: SessionStorage, sid: str) -> dict[str, Any]:
    pages = storage.client.get_paginator("list_objects_v2").paginate(
        Bucket=storage.settings.bucket, Prefix=f"{facts.session_prefix(sid)}/")
    return {o["Key"][len(facts.session_prefix(sid)) + 1:]: o for page in pages for o in page.get("Contents", [])}


def test_workspace_conformance_with_local(manager: SessionManager, storage: SessionStorage, s3_store: Store) -> None:
    assert manager.settings.mounter == "local"
    sid = probe_matches(manager, storage, {**LOCAL_DISK, **LOCAL_LIMITATIONS}, outside_within=5)
    if s3_store.name == "moto":
        # The embedded endpoint cannot store a key with a newline (in test_sessions: such a file
        # is kept aside at stop, and named).
        assert manager.exec(sid, argv=["rm", "conformance/a\nb"]).exit_code == 0
    assert manager.stop(sid, timeout=60) == 0


def test_hydrated_then_every_write_is_in_s3_by_the_end_of_stop(manager: SessionManager,
                                                                storage: SessionStorage) -> None:
    sid = session_id()
    prefix = facts.session_prefix(sid)
    for i in range(50):
        storage.client.put_object(Bucket=storage.settings.bucket, Key=f"{prefix}/uploads/in/{i}.txt",
                                  Body=str(i).encode() * 100)
    manager.create(sid)
    out = run_ok(manager, sid, """
        import os
        print(sum(len(open(f"uploads/in/{i}.txt").read()) for i in range(50)))
        os.makedirs("artifacts/tree/sub")
        for i in range(300):
            open(f"artifacts/tree/sub/{i}.txt", "w").write(str(i) * 40)
        os.rename("artifacts/tree", "artifacts/moved")
        with open("artifacts/big.bin", "wb") as f:
            f.write(bytes(range(256)) * 49152)
        os.remove("uploads/in/0.txt")
        os.chmod("artifacts/big.bin", 0o600)
    """)
    assert int(out) == sum(len(str(i)) * 100 for i in range(50))
    assert manager.stop(sid, timeout=60) == 0
    stored = listing(storage, sid)
    assert "uploads/in/0.txt" not in stored and not [k for k in stored if k.startswith("artifacts/tree")]
    assert storage.get_bytes(sid, "artifacts", "big.bin") == bytes(range(256)) * 49152
    assert all(storage.get_bytes(sid, "artifacts", f"moved/sub/{i}.txt") == (str(i) * 40).encode()
               for i in range(300))
    head = storage.client.head_object(Bucket=storage.settings.bucket, Key=f"{prefix}/artifacts/big.bin")
    assert int(head["Metadata"]["mode"]) & 0o777 == 0o600  # as s3fs records it


def test_a_closed_file_reaches_s3_while_the_session_runs(manager: SessionManager, storage: SessionStorage) -> None:
    """Within a round or two (localsync.ROUND_EVERY is 1 s); outside writes: test_sessions'
    test_file_put_from_outside_shows_within_the_stated_time."""
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/early.txt', 'w').write('early')")
    start = time.monotonic()
    while "artifacts/early.txt" not in listing(storage, sid):
        assert time.monotonic() - start < 5, "a closed file did not reach S3 within 5 s"
        time.sleep(0.1)
    assert storage.get_bytes(sid, "artifacts", "early.txt") == b"early"
    assert manager.stop(sid) == 0


def test_session_sync_returns_once_everything_written_is_in_s3(manager: SessionManager, settings: Settings,
                                                               storage: SessionStorage) -> None:
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, """
        import os
        os.makedirs("artifacts/batch")
        for i in range(200):
            open(f"artifacts/batch/{i}.txt", "w").write(str(i))
    """)
    synced = cli(settings, "session", "sync", sid)
    assert "every write made before this command is in S3" in synced.stdout
    stored = listing(storage, sid)  # right after: no waiting
    assert all(f"artifacts/batch/{i}.txt" in stored for i in range(200))
    assert manager.exec(sid, argv=["true"]).exit_code == 0  # the session runs on
    manager.stop(sid)
    with pytest.raises(SessionError, match="no session"):
        manager.sync(sid)


def test_a_killed_sync_process_loses_nothing_at_stop(manager: SessionManager, storage: SessionStorage,
                                                     volume_service: Any) -> None:
    """kill -9 of the session's sync process: the session's files stay on its filesystem and
    user code goes on; the stop sends what the dead process had not (from its index: a deletion
    too), then removes the filesystem."""
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/before.txt', 'w').write('1'); open('artifacts/doomed.txt', 'w').write('x')")
    manager.sync(sid)
    state = workspace_state(volume_service, sid)
    os.kill(state["pid"], signal.SIGKILL)
    run_ok(manager, sid, """
        import os
        open('artifacts/after.txt', 'w').write('2')
        os.remove('artifacts/doomed.txt')
        os.makedirs('artifacts/many')
        for i in range(100):
            open(f'artifacts/many/{i}.txt', 'w').write(str(i))
    """)
    assert manager.stop(sid, timeout=60) in (0, 143)
    stored = listing(storage, sid)
    assert "artifacts/doomed.txt" not in stored
    assert storage.get_bytes(sid, "artifacts", "before.txt") == b"1"
    assert storage.get_bytes(sid, "artifacts", "after.txt") == b"2"
    assert all(f"artifacts/many/{i}.txt" in stored for i in range(100))
    assert not Path(state["staging"]).exists()
    assert "recovered: everything it held is in S3" in volume_service.log.read_text()


def test_the_workspace_is_capped_and_the_cap_is_enospc(manager: SessionManager, storage: SessionStorage) -> None:
    """The session's files live on its own filesystem of ``staging_size`` (1500m here): past it,
    ENOSPC for this session alone; what fitted reaches S3."""
    sid = session_id()
    manager.create(sid)
    result = manager.exec(sid, argv=["sh", "-c", "echo ok > artifacts/small.txt; "
                                     "dd if=/dev/zero of=scratch bs=1M count=1600 2>&1; status=$?; "
                                     "rm -f scratch; exit $status"], timeout=300)
    assert result.exit_code != 0 and b"No space left on device" in result.stdout, result.stdout
    assert manager.stop(sid, timeout=60) == 0
    assert storage.get_bytes(sid, "artifacts", "small.txt") == b"ok\n"
