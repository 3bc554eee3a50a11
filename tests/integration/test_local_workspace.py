"""The local-first workspace (mounter ``local``) in real sessions: the files on the session's own
capped host filesystem, S3 kept up to date behind them (provisioning/volumed/localsync.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
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


WRITER = """
    import os, time
    os.makedirs("artifacts/steady", exist_ok=True)
    end = time.monotonic() + {seconds}
    i = 0
    while time.monotonic() < end:
        open(f"artifacts/steady/{{i}}.txt", "w").write(str(i))
        i += 1
        time.sleep(0.25)
    print(i)
"""


def test_a_session_writes_on_across_three_credential_lifetimes(settings: Settings, docker_engine: Any,
                                                                storage: SessionStorage, s3_store: Store,
                                                                tmp_path: Path) -> None:
    """Credentials of 10 s (the embedded endpoint's test switch; a real store's floor is 900 s):
    the volume service renews them at half-life on the sync process's control socket, and a
    session writing through 35 s (three and a half lifetimes) loses nothing."""
    import dataclasses

    from ..servers.volumed import VolumeService
    from .conftest import TEST_DRIVER

    if s3_store.name != "moto":
        pytest.skip("Ceph RGW issues credentials of 900 s at least: test_a_forced_renewal... covers it there")
    service_settings = {name: getattr(settings, name) for name in ("s3_endpoint", "bucket", "access_key",
                                                                  "secret_key", "sts_role_arn", "staging_size")}
    with VolumeService({**service_settings, "session_lifetime": 10}, tmp_path, driver=f"{TEST_DRIVER}-renew") as svc:
        manager = SessionManager(dataclasses.replace(settings, volume_driver=svc.driver, network=svc.network,
                                                     session_lifetime=10), client=docker_engine, storage=storage)
        sid = session_id()
        manager.create(sid)
        try:
            written = int(run_ok(manager, sid, WRITER.format(seconds=35)))
            manager.sync(sid)
            stored = listing(storage, sid)
            assert all(f"artifacts/steady/{i}.txt" in stored for i in range(written)), written
            log = svc.log.read_text()
            assert log.count("credentials renewed in") >= 5, log[-2000:]  # one every ~5 s
            assert "credentials not renewed" not in log
        finally:
            assert manager.stop(sid, timeout=60) == 0


def test_a_forced_renewal_is_taken_and_the_session_writes_on(manager: SessionManager, storage: SessionStorage,
                                                             volume_service: Any) -> None:
    """SIGHUP makes the volume service renew every workspace's credentials now (the path a
    half-life renewal takes: AssumeRole at the store, then the sync process's control socket);
    the session's next writes sign with them and reach S3."""
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/before.txt', 'w').write('before')")
    log_before = volume_service.log.read_text().count("credentials renewed in")
    os.kill(volume_service.proc.pid, signal.SIGHUP)
    start = time.monotonic()
    while volume_service.log.read_text().count("credentials renewed in") == log_before:
        assert time.monotonic() - start < 10, volume_service.log.read_text()[-2000:]
        time.sleep(0.1)
    run_ok(manager, sid, "open('artifacts/after.txt', 'w').write('after')")
    manager.sync(sid)
    assert storage.get_bytes(sid, "artifacts", "after.txt") == b"after"
    assert manager.stop(sid, timeout=60) == 0


def own_service(settings: Settings, tmp_path: Path, suffix: str, **overrides: Any) -> Any:
    """A volume service of the test's own (its own driver name and network), with ``overrides``."""
    from ..servers.volumed import VolumeService
    from .conftest import TEST_DRIVER

    values = {name: getattr(settings, name) for name in ("s3_endpoint", "bucket", "access_key", "secret_key",
                                                         "sts_role_arn", "staging_size")}
    return VolumeService({**values, **overrides}, tmp_path, driver=f"{TEST_DRIVER}-{suffix}")


def test_through_an_s3_outage_user_code_works_on_and_nothing_is_lost(settings: Settings, docker_engine: Any,
                                                                     storage: SessionStorage, s3_store: Store,
                                                                     tmp_path: Path) -> None:
    """The store goes away mid-session, first as a stopped server (connections refused), then
    as a black hole (connections hang): user code keeps working on its own disk, `session sync`
    fails within its timeout naming the cause, a `stop` waits for the store (up to its drain
    timeout), and once the store is back everything written reaches it."""
    import dataclasses

    from ..servers.outage import Outage

    if s3_store.name != "moto":
        pytest.skip("the store does not matter here: the embedded endpoint's run covers it")
    port = int(settings.s3_endpoint.rsplit(":", 1)[1])
    with Outage(port) as outage, own_service(dataclasses.replace(settings, s3_endpoint=outage.endpoint),
                                             tmp_path, "outage") as svc:
        manager = SessionManager(dataclasses.replace(settings, s3_endpoint=outage.endpoint, volume_driver=svc.driver,
                                                     network=svc.network), client=docker_engine, storage=storage)
        sid = session_id()
        manager.create(sid)
        run_ok(manager, sid, "open('artifacts/before.txt', 'w').write('before')")
        manager.sync(sid)
        for how in ("refused", "blackhole"):
            outage.down(how)
            run_ok(manager, sid, f"""
                import os
                os.makedirs("artifacts/{how}")
                for i in range(100):
                    open(f"artifacts/{how}/{{i}}.txt", "w").write(str(i))
                os.remove("artifacts/before.txt")
            """ if how == "refused" else f"""
                import os
                os.makedirs("artifacts/{how}")
                for i in range(100):
                    open(f"artifacts/{how}/{{i}}.txt", "w").write(str(i))
            """)
            started = time.monotonic()
            with pytest.raises(SessionError, match="not in S3") as err:
                manager.sync(sid, timeout=150)
            took = time.monotonic() - started
            # Refused: each request fails within its tries' backoff. Black hole: the flush's
            # listing and its round's first put each wait out their connect timeouts (about
            # 20 s), after a background round that holds the tree (as long).
            assert took < (30 if how == "refused" else 120), f"session sync took {took:.1f}s with the store {how}"
            assert "unreachable" in str(err.value), str(err.value)
        stopped: list[int] = []
        stopper = threading.Thread(target=lambda: stopped.append(manager.stop(sid, timeout=10)))
        stopper.start()
        time.sleep(10)
        assert stopper.is_alive()  # waiting for the store, not dropping what it holds
        outage.up()
        stopper.join(120)
        assert stopped == [0]
    stored = listing(storage, sid)
    assert "artifacts/before.txt" not in stored
    assert all(f"artifacts/{how}/{i}.txt" in stored for how in ("refused", "blackhole") for i in range(100))
    assert storage.get_bytes(sid, "artifacts", "blackhole/99.txt") == b"99"


def test_a_throttling_store_slows_the_sync_and_loses_nothing(manager: SessionManager, storage: SessionStorage,
                                                             s3_store: Store, s3_server: Any) -> None:
    """The embedded endpoint answers 503 SlowDown to a third of requests (its test switch): the
    sync process backs off and retries (botocore's standard mode, then the next round), and
    every file reaches S3 with its bytes."""
    if s3_store.name != "moto":
        pytest.skip("the switch is the embedded endpoint's")
    sid = session_id()
    manager.create(sid)
    s3_server.verifier.slowdown = 0.33
    try:
        run_ok(manager, sid, """
            import os
            os.makedirs("artifacts/t")
            for i in range(300):
                open(f"artifacts/t/{i}.txt", "w").write(str(i) * 10)
        """)
        manager.sync(sid, timeout=120)
    finally:
        s3_server.verifier.slowdown = 0.0
    assert all(storage.get_bytes(sid, "artifacts", f"t/{i}.txt") == (str(i) * 10).encode() for i in range(300))
    assert manager.stop(sid, timeout=60) == 0


def test_after_a_host_restart_the_service_sends_what_s3_lacked_then_removes_the_files(
        manager: SessionManager, storage: SessionStorage, volume_service: Any) -> None:
    """A host restart, simulated: the sync process is held (its last writes reach the session's
    disk only), then every process of the session's workspace dies (the volume service and the
    sync process, kill -9), its mounts go and the service's records with them (they live in /run).
    The staging image and its index stay on host disk. The service, started again, sends what
    S3 lacked (deletions too), from the index, with fresh credentials, then removes the image."""
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/synced.txt', 'w').write('synced')")
    manager.sync(sid)
    state = workspace_state(volume_service, sid)
    os.kill(state["pid"], signal.SIGSTOP)
    run_ok(manager, sid, """
        import os
        os.remove('artifacts/synced.txt')
        os.makedirs('artifacts/late')
        for i in range(50):
            open(f'artifacts/late/{i}.txt', 'w').write(str(i))
    """)
    assert "artifacts/late/0.txt" not in listing(storage, sid)
    volume_service.kill()
    os.kill(state["pid"], signal.SIGKILL)
    image = Path(state["staging"])
    workspace = Path(facts.SERVICE_DATA_DIR) / volume_service.driver / "volumes" / state["name"] / "workspace"
    for target in (workspace, image.with_suffix("")):  # the bind of the tree, then its filesystem
        subprocess.run(["umount", "-l", str(target)], check=True, capture_output=True)
    for record in volume_service.state_dir().glob(f"{state['name']}.*"):  # its record and log
        record.unlink()
    volume_service.start()
    start = time.monotonic()
    while image.exists():
        assert time.monotonic() - start < 60, volume_service.log.read_text()[-3000:]
        time.sleep(0.2)
    stored = listing(storage, sid)
    assert "artifacts/synced.txt" not in stored
    assert all(storage.get_bytes(sid, "artifacts", f"late/{i}.txt") == str(i).encode() for i in range(50))
    assert f"session {sid}'s files are in S3; removed" in volume_service.log.read_text()


CRASH_WRITER = """
    import hashlib, os
    os.makedirs("artifacts/crash")
    with open("artifacts/crash/manifest", "w") as manifest:
        for i in range(400):
            data = os.urandom(2000 + 37 * i)
            with open(f"artifacts/crash/{i}.bin", "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            manifest.write(f"{i} {hashlib.sha256(data).hexdigest()}\\n")
            manifest.flush()
            os.fsync(manifest.fileno())
"""

READ_BACK = """
    import hashlib
    bad = []
    lines = open("artifacts/crash/manifest").read().splitlines()
    for line in lines:
        i, digest = line.split()
        if hashlib.sha256(open(f"artifacts/crash/{i}.bin", "rb").read()).hexdigest() != digest:
            bad.append(i)
    print(len(lines), bad)
"""


def test_every_fsynced_file_reads_back_identical_through_a_fresh_hydrate_after_a_kill_mid_burst(
        manager: SessionManager, storage: SessionStorage, volume_service: Any) -> None:
    """JuiceFS's crash-consistency pattern: user code writes 400 files, fsyncing each and then
    its digest in a manifest; the sync process is killed (-9) while it is sending them. The
    session stops, and the same id is created again, hydrated fresh from S3: every file the
    manifest names reads back identical."""
    sid = session_id()
    manager.create(sid)
    pid = workspace_state(volume_service, sid)["pid"]
    writer = threading.Thread(target=run_ok, args=(manager, sid, CRASH_WRITER))
    writer.start()
    start = time.monotonic()
    while sum(k.startswith("artifacts/crash/") for k in listing(storage, sid)) < 20:
        assert time.monotonic() - start < 60, "the burst did not start reaching S3"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)  # mid-burst: some files in S3, the rest on the session's disk only
    writer.join(timeout=120)
    assert not writer.is_alive()
    assert manager.stop(sid, timeout=120) in (0, 143)
    manager.create(sid)  # a fresh filesystem, hydrated from S3
    assert run_ok(manager, sid, READ_BACK).split(maxsplit=1) == ["400", "[]\n"]
    assert manager.stop(sid, timeout=60) == 0
