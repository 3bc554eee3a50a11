"""End to end: real dockerd, real s3fs in the executor image, real S3 server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from provisioning import facts, mountinfo
from provisioning.config import Settings
from provisioning.executor_client import WorkspaceUnavailable
from provisioning.launcher import SessionError, SessionExists, SessionManager
from provisioning.mounts import StrategyError
from provisioning.storage import SessionStorage, StorageError
from provisioning.uids import known_to_host

from ..conftest import session_id
from .conftest import CHECKOUT, TEST_DRIVER, cli, containers_for, host_s3fs_pids, state_dirs


def run_ok(manager: SessionManager, sid: str, code: str, stdin: bytes = b"") -> str:
    result = manager.exec(sid, argv=["python3", "-c", textwrap.dedent(code)], timeout=60, stdin=stdin)
    assert result.exit_code == 0, result.stderr.decode()
    return result.stdout.decode()


def test_upload_exec_artifact_roundtrip(manager: SessionManager, storage: SessionStorage, tmp_path) -> None:
    sid = session_id()
    info = manager.create(sid)
    assert info.session_id == sid and info.status == "running"
    source = tmp_path / "data.csv"
    source.write_bytes(b"name,value\nalpha,1\n")
    storage.upload(sid, source)
    result = manager.exec(sid, argv=["python3", "-c",
                                     "open('artifacts/out.txt','w').write(open('uploads/data.csv').read().upper())"])
    assert result.exit_code == 0, result.stderr
    assert storage.get_bytes(sid, "artifacts", "out.txt") == b"NAME,VALUE\nALPHA,1\n"
    assert [a.name for a in storage.list(sid)] == ["out.txt"]


def test_exec_passes_exit_code_and_streams(manager: SessionManager) -> None:
    sid = session_id()
    manager.create(sid)
    result = manager.exec(sid, argv=["sh", "-c", "pwd; echo oops >&2; exit 7"])
    assert (result.exit_code, result.stdout, result.stderr) == (7, b"/workspace\n", b"oops\n")
    timed = manager.exec(sid, argv=["sleep", "30"], timeout=0.5)
    assert timed.timed_out and timed.exit_code == 124


def test_sandbox_user_has_no_capabilities(manager: SessionManager, settings: Settings) -> None:
    sid = session_id()
    info = manager.create(sid)
    out = json.loads(run_ok(manager, sid, """
        import json, os
        status = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
        print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
                          "caps": {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
                          "nnp": status["NoNewPrivs"].strip()}))
    """))
    # Each session has a uid of its own from the sandbox range, unknown to the host.
    first, last = settings.validated().uid_range
    assert out["uid"] == out["euid"] == out["gid"] == info.uid and first <= info.uid <= last
    assert not known_to_host(info.uid)
    assert out["groups"] in ([], [info.uid])
    assert out["caps"] == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": 0, "CapAmb": 0}
    assert out["nnp"] == "1"
    umount = manager.exec(sid, argv=["umount", "/workspace"])
    assert umount.exit_code != 0
    assert manager.health(sid)["ok"] is True


def test_credentials_are_nowhere_readable(manager: SessionManager, settings: Settings,
                                          docker_engine: docker.DockerClient) -> None:
    sid = session_id()
    info = manager.create(sid)
    secret, key = settings.secret_key, settings.access_key
    # The secrets go in on stdin, so the search program's own command line does not hold them.
    found = json.loads(run_ok(manager, sid, """
        import json, os, sys
        needles = sys.stdin.buffer.read().split()
        hits = []
        if any(n.decode() in v for v in os.environ.values() for n in needles):
            hits.append("environ")
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                for name in ("environ", "cmdline"):
                    try:
                        data = open(f"/proc/{pid}/{name}", "rb").read()
                    except OSError:
                        continue
                    if any(n in data for n in needles):
                        hits.append(f"/proc/{pid}/{name}")
        for root, dirs, files in os.walk("/"):
            if root.startswith(("/proc", "/sys", "/dev")):
                dirs[:] = []
                continue
            for f in files:
                path = os.path.join(root, f)
                try:
                    if os.path.islink(path) or os.path.getsize(path) > 4_000_000:
                        continue
                    data = open(path, "rb").read()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    hits.append(path)
        print(json.dumps(hits))
    """, stdin=f"{secret} {key}".encode()))
    assert found == []
    # Nor left on the container's disk for root, nor in the container's configuration.
    container = docker_engine.containers.get(info.container_id)
    assert container.exec_run(["test", "-e", "/etc/sandbox-host/credentials"]).exit_code == 1
    assert secret not in json.dumps(container.attrs)
    # The session's host directory (bound for the in-container entrypoint): root-only, and the
    # credentials are gone from it.
    boot = Path(container.labels["io.sandbox-host.boot-dir"])
    assert boot.parent == Path(settings.state_dir) / "boot"
    assert (boot.stat().st_mode & 0o777, boot.stat().st_uid) == (0o700, 0)
    assert (boot.parent.stat().st_mode & 0o777) == 0o700
    expected = ["entrypoint.sh", "executor.peer"] if settings.mount == "in-container" else ["executor.peer"]
    assert sorted(p.name for p in boot.iterdir()) == expected


def test_other_sessions_are_invisible(manager: SessionManager, storage: SessionStorage) -> None:
    first, second = session_id(), session_id()
    manager.create(first)
    manager.create(second)
    storage.put_bytes(second, "uploads", "secret-of-second.txt", b"mine")
    run_ok(manager, second, "open('artifacts/also-second.txt','w').write('x')")
    seen = json.loads(run_ok(manager, first, """
        import json, os
        print(json.dumps([os.path.join(r, f) for r, d, fs in os.walk("/workspace") for f in fs + d]))
    """))
    assert sorted(seen) == ["/workspace/artifacts", "/workspace/uploads"]
    probe = manager.exec(first, argv=["cat", "/workspace/../sessions/" + second + "/uploads/secret-of-second.txt"])
    assert probe.exit_code != 0


def test_write_then_immediate_stop_loses_nothing(manager: SessionManager, storage: SessionStorage) -> None:
    sid = session_id()
    manager.create(sid)
    payload = bytes(range(256)) * 8192  # 2 MiB
    run_ok(manager, sid, """
        import os, subprocess
        with open("artifacts/big.bin", "wb") as f:
            f.write(bytes(range(256)) * 8192)
        for i in range(20):
            open(f"artifacts/small-{i}.txt", "w").write(str(i))
        # A process that still holds a written file open when the stop comes.
        subprocess.Popen(["python3", "-c",
                          "import time; f=open('artifacts/open.txt','w'); f.write('held'); f.flush(); time.sleep(600)"],
                         start_new_session=True)
        import time
        while not os.path.exists("artifacts/open.txt"):
            time.sleep(0.01)
    """)
    assert manager.stop(sid, timeout=20) == 0
    assert storage.get_bytes(sid, "artifacts", "big.bin") == payload
    assert all(storage.get_bytes(sid, "artifacts", f"small-{i}.txt") == str(i).encode() for i in range(20))
    assert storage.get_bytes(sid, "artifacts", "open.txt") == b"held"


# A name the embedded endpoint cannot store (it answers 404 to a key with a newline); the escapes
# would set the terminal's title, clear the screen and forge a line if printed raw.
HOSTILE_NAME = "a\n\x1b]0;pwned\x07\x1b[2Jstopped cleanly"


def workspace_state(volume_service: Any, sid: str) -> dict[str, Any]:
    """The volume service's saved state of the session's workspace volume."""
    states = [json.loads(f.read_text()) for f in volume_service.state_dir().glob("*.json")]
    [state] = [s for s in states if s["session_id"] == sid and s["kind"] == "workspace"]
    return state


def host_leftovers(bucket: str, sid: str, state: dict[str, Any]) -> list[str]:
    """What of a session's workspace is still on the host: its sync process, its
    mounts, its staging image."""
    remote = f"{bucket}/{facts.session_prefix(sid)}".encode()
    left = [f"mounter pid {p.name}" for p in Path("/proc").iterdir()
            if p.name.isdigit() and _is_mounter_of(_cmdline(p).split(b"\0"), remote)]
    staging = str(Path(state["staging"]).with_suffix(""))
    left += [f"mount {m.mount_point}" for m in mountinfo.read()
             if f"/{state['name']}/" in m.mount_point or m.mount_point == staging]
    return left + ([f"staging image {state['staging']}"] if Path(state["staging"]).exists() else [])


def _is_mounter_of(argv: list[bytes], remote: bytes) -> bool:
    bucket, prefix = remote.split(b"/", 1)
    return b"provisioning.volumed.localsync" in argv and b"--prefix" in argv \
        and argv[argv.index(b"--prefix") + 1:][:1] == [prefix] and argv[argv.index(b"--bucket") + 1:][:1] == [bucket]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("strategy", ["host"])
@pytest.mark.parametrize("mounter", ["local"])
def test_a_file_the_store_refuses_is_kept_aside_and_named_escaped(manager: SessionManager, settings: Settings,
                                                                        storage: SessionStorage, s3_store: Any,
                                                                        volume_service: Any,
                                                                        docker_engine: docker.DockerClient) -> None:
    """A file named with a newline and terminal escapes, next to a normal one. On the embedded
    endpoint, which refuses that key for good, `sandbox-host session stop` fails within seconds
    (not after the 300 s drain), naming the file escaped (one line, no escape character) and
    where its bytes were kept, and leaves no mounter, mount or staging image behind. Ceph RGW
    stores the name: the stop succeeds and the file is in S3."""
    sid = session_id()
    manager.create(sid)
    state = workspace_state(volume_service, sid)
    run_ok(manager, sid, f"""
        open("artifacts/normal.txt", "w").write("normal")
        open("artifacts/" + {HOSTILE_NAME!r}, "wb").write(b"odd bytes")
    """)
    started = time.monotonic()
    stopped = cli(settings, "session", "stop", sid, check=False)
    took = time.monotonic() - started
    print(f"stop with a file the store {'refuses' if s3_store.name == 'moto' else 'takes'} took {took:.1f}s:",
          stopped.stderr or "ok")
    assert took < 60, stopped.stderr
    assert host_leftovers(settings.bucket, sid, state) == []
    assert containers_for(docker_engine, settings.bucket) == []
    assert storage.get_bytes(sid, "artifacts", "normal.txt") == b"normal"
    if s3_store.name != "moto":
        assert stopped.returncode == 0, stopped.stderr
        assert storage.get_bytes(sid, "artifacts", HOSTILE_NAME) == b"odd bytes"
        return
    assert stopped.returncode == 1 and stopped.stdout == ""
    error = stopped.stderr
    assert "\x1b" not in error and "\x07" not in error and error.count("\n") == 1 and error.endswith("\n"), error
    assert "the store refused 1 file(s) for good" in error
    kept = re.search(r"'artifacts/a\\n\\x1b\]0;pwned\\x07\\x1b\[2Jstopped cleanly' in (/\S+)$", error.strip())
    assert kept, error
    assert Path(kept[1]).read_bytes() == b"odd bytes"
    assert json.loads((Path(kept[1]).parent / "index.json").read_text()) == [
        {"file": "1", "name": "artifacts/" + HOSTILE_NAME}]
    with pytest.raises(StorageError):
        storage.get_bytes(sid, "artifacts", HOSTILE_NAME)
    assert "\x1b" not in volume_service.log.read_text(errors="replace")  # the service logged it escaped


class Outage:
    """The embedded endpoint answers 500 to every request for keys below ``path`` until end()
    (a WSGI layer in front of it: the volume service and the sync process talk to it over loopback)."""

    def __init__(self, server: Any, path: str) -> None:
        self.wsgi = server._server  # private: the test's own server, failing on purpose
        self.app, self.path = self.wsgi.app, path
        self.wsgi.app = self._serve

    def _serve(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO", "").startswith(self.path):
            start_response("500 Internal Server Error", [("Content-Type", "application/xml")])
            return [b"<?xml version='1.0'?><Error><Code>InternalError</Code><Message>outage</Message></Error>"]
        return self.app(environ, start_response)

    def end(self) -> None:
        self.wsgi.app = self.app


@pytest.mark.parametrize("strategy", ["host"])
@pytest.mark.parametrize("mounter", ["local"])
def test_a_store_failing_refuses_nothing(manager: SessionManager, settings: Settings, storage: SessionStorage,
                                              s3_store: Any, s3_server: Any, volume_service: Any) -> None:
    """The store answers 500 to the session's keys while a stop drains: no file counts as
    refused, the stop waits (as for any write the store does not take yet); once the store
    answers again, the normal file reaches S3 and only the one it refuses is kept aside."""
    if s3_store.name != "moto":
        pytest.skip("the outage is the embedded endpoint's, in this process")
    sid = session_id()
    manager.create(sid)
    outage = Outage(s3_server, f"/{settings.bucket}/{facts.session_prefix(sid)}/")
    timer = threading.Timer(12.0, outage.end)
    try:
        run_ok(manager, sid, f"""
            open("artifacts/normal.txt", "w").write("normal")
            open("artifacts/" + {HOSTILE_NAME!r}, "wb").write(b"odd bytes")
        """)
        timer.start()
        started = time.monotonic()
        stopped = cli(settings, "session", "stop", sid, check=False)
        took = time.monotonic() - started
    finally:
        timer.cancel()
        outage.end()
    print(f"stop through a 12 s outage took {took:.1f}s")
    assert 10 < took < 60, stopped.stderr
    assert stopped.returncode == 1 and "the store refused 1 file(s) for good" in stopped.stderr, stopped.stderr
    assert storage.get_bytes(sid, "artifacts", "normal.txt") == b"normal"
    kept = re.search(r"' in (/\S+)$", stopped.stderr.strip())
    assert kept and Path(kept[1]).read_bytes() == b"odd bytes", stopped.stderr


# How soon a file put into S3 from outside shows in a directory the session listed already:
# s3fs lists S3 on every readdir; the local-first workspace lists the prefix every 2 s
# (localsync.PULL_EVERY) and downloads.
VISIBLE_WITHIN = {"s3fs": 1.0, "local": 3.0}


@pytest.mark.parametrize("strategy", ["host"])
@pytest.mark.parametrize("mounter", ["s3fs", "local"])
def test_file_put_from_outside_shows_within_the_stated_time(manager: SessionManager, storage: SessionStorage,
                                                            mounter: str) -> None:
    sid = session_id()
    manager.create(sid)
    assert run_ok(manager, sid, "import os; print(os.listdir('uploads'))").strip() == "[]"
    storage.client.put_object(Bucket=storage.settings.bucket, Key=f"{facts.session_prefix(sid)}/uploads/late.txt",
                              Body=b"late")
    waited = float(run_ok(manager, sid, """
        import os, time
        start = time.monotonic()
        while "late.txt" not in os.listdir("uploads") and time.monotonic() - start < 30:
            time.sleep(0.05)
        print(time.monotonic() - start if open("uploads/late.txt").read() == "late" else "nan")
    """))
    assert waited <= VISIBLE_WITHIN[mounter] + 0.5, waited


def test_unreachable_endpoint_fails_before_any_container(settings: Settings, docker_engine: docker.DockerClient,
                                                         tmp_path: Path) -> None:
    from ..servers.volumed import VolumeService

    bad = dataclasses.replace(settings, s3_endpoint="http://127.0.0.1:9")
    if settings.mount == "host":  # the endpoint is the volume service's: one that cannot reach it
        service_settings = {name: getattr(bad, name) for name in ("s3_endpoint", "bucket", "access_key", "secret_key",
                                                                  "sts_role_arn", "staging_size")}
        with (VolumeService(service_settings, tmp_path, driver=f"{TEST_DRIVER}-broken") as service,
              pytest.raises(StorageError, match="unreachable")):
            SessionManager(dataclasses.replace(bad, volume_driver=service.driver, network=service.network),
                           client=docker_engine).create(session_id())
    else:
        with pytest.raises(StorageError, match="unreachable"):
            SessionManager(bad, client=docker_engine).create(session_id())
    assert containers_for(docker_engine, settings.bucket) == []


def test_a_launcher_pointed_elsewhere_than_the_volume_service_is_refused(settings: Settings,
                                                                       docker_engine: docker.DockerClient) -> None:
    """SANDBOX_S3_BUCKET=other sandbox-host session create X would have put uploads where the
    workspace never looks: refused, naming both values, before anything is made."""
    if settings.mount != "host":
        pytest.skip("the in-container strategy mounts with the launcher's own settings")
    other = dataclasses.replace(settings, bucket="other-bucket", s3fs_options={"parallel_count": 3})
    with pytest.raises(StrategyError, match=f"bucket 'other-bucket' here, '{settings.bucket}' in the service") as err:
        SessionManager(other, client=docker_engine).create(session_id())
    assert "s3fs_options {'parallel_count': 3} here, {} in the service" in str(err.value)
    with pytest.raises(StrategyError, match="bucket 'other-bucket' here"):
        SessionManager(other, client=docker_engine).storage.list("abc")
    assert containers_for(docker_engine, settings.bucket) == []
    assert containers_for(docker_engine, "other-bucket") == []


def test_wrong_credentials_fail_before_any_container(settings: Settings, docker_engine: docker.DockerClient) -> None:
    bad = dataclasses.replace(settings, secret_key="not-the-secret")
    with pytest.raises(StorageError, match="refused the credentials"):
        SessionManager(bad, client=docker_engine).create(session_id())
    assert containers_for(docker_engine, settings.bucket) == []


def test_mount_failure_fails_closed(settings: Settings, storage: SessionStorage, docker_engine: docker.DockerClient,
                                    tmp_path: Path) -> None:
    """The store refuses the workspace's credentials after the launcher's own check passed: no
    session, nothing served, the reason named, nothing left behind."""
    from ..servers.volumed import VolumeService

    before = state_dirs(settings)
    if settings.mount == "host":
        # A volume service whose key the store refuses.
        broken = {"s3_endpoint": settings.s3_endpoint, "bucket": settings.bucket, "access_key": settings.access_key,
                  "secret_key": "not-the-secret", "sts_role_arn": settings.sts_role_arn,
                  "staging_size": settings.staging_size}
        with VolumeService(broken, tmp_path, driver=f"{TEST_DRIVER}-broken") as service:
            manager = SessionManager(dataclasses.replace(settings, volume_driver=service.driver,
                                                         network=service.network),
                                     client=docker_engine, storage=storage)
            with pytest.raises(SessionError, match="failed to start|refused the workspace volume") as err:
                manager.create(session_id())
    else:
        bad = dataclasses.replace(settings, secret_key="not-the-secret", scoped_credentials=False)
        manager = SessionManager(bad, client=docker_engine, storage=storage)
        with pytest.raises(SessionError, match="failed to start: s3fs exited") as err:
            manager.create(session_id())
    assert "not-the-secret" not in str(err.value)
    assert containers_for(docker_engine, settings.bucket) == []
    assert state_dirs(settings) == before


def test_killed_s3fs_is_reported_and_the_session_ends_failed(manager: SessionManager, settings: Settings,
                                                             docker_engine: docker.DockerClient,
                                                             storage: SessionStorage) -> None:
    """s3fs dies: health says so within a second, exec refuses, the session ends as failed and
    `list` says so; everything written and closed before the death is in S3."""
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/before.txt','w').write('kept')")
    kill_s3fs(settings, sid)
    killed_at = time.monotonic()
    health = manager.health(sid)
    assert time.monotonic() - killed_at < 1.0
    assert health["ok"] is False and health["workspace_mounted"] is False
    try:
        result = manager.exec(sid, argv=["sh", "-c", "echo lost > /workspace/artifacts/x"])
    except (WorkspaceUnavailable, SessionError):
        pass
    else:
        raise AssertionError(f"exec ran on a dead workspace: {result}")
    deadline = time.monotonic() + 10
    while (state := manager.get(sid)).status == "running":
        assert time.monotonic() < deadline, "the session did not end after its workspace died"
        time.sleep(0.1)
    assert state.status == "failed" and "workspace" in state.detail
    assert [s.status for s in manager.list() if s.session_id == sid] == ["failed"]
    assert storage.get_bytes(sid, "artifacts", "before.txt") == b"kept"
    manager.stop(sid)


def kill_s3fs(settings: Settings, sid: str) -> None:
    pids = host_s3fs_pids(settings.bucket, sid)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)


def test_second_create_of_live_session_is_an_error(manager: SessionManager, docker_engine: docker.DockerClient,
                                                   settings: Settings) -> None:
    sid = session_id()
    manager.create(sid)
    before = state_dirs(settings)
    with pytest.raises(SessionExists, match="already exists"):
        manager.create(sid)
    assert len(containers_for(docker_engine, settings.bucket)) == 1
    assert [s.session_id for s in manager.list() if s.bucket == settings.bucket] == [sid]
    # The refused create left the live session's directories alone and took its own away.
    assert state_dirs(settings) == before
    assert manager.health(sid)["ok"] is True


def test_ended_session_leftover_is_replaced(manager: SessionManager, docker_engine: docker.DockerClient,
                                            settings: Settings) -> None:
    sid = session_id()
    old = docker_engine.containers.get(manager.create(sid).container_id)
    old.kill()
    old.wait(timeout=30)
    info = manager.create(sid)
    assert info.container_id != old.id and manager.health(sid)["ok"] is True
    assert not Path(old.labels["io.sandbox-host.control-dir"]).exists()


def test_missing_image_names_the_fix(settings: Settings, docker_engine: docker.DockerClient,
                                     storage: SessionStorage) -> None:
    missing = dataclasses.replace(settings, image="sandbox-executor:no-such-tag")
    before = state_dirs(settings)
    with pytest.raises(SessionError, match="not found; build it with 'sandbox-host image build'"):
        SessionManager(missing, client=docker_engine, storage=storage).create(session_id())
    assert containers_for(docker_engine, settings.bucket) == []
    assert state_dirs(settings) == before


def test_container_is_confined(manager: SessionManager, docker_engine: docker.DockerClient,
                               settings: Settings) -> None:
    sid = session_id()
    info = manager.create(sid)
    attrs = docker_engine.containers.get(info.container_id).attrs
    host_config = attrs["HostConfig"]
    assert host_config["Privileged"] is False
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges" in host_config["SecurityOpt"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["Tmpfs"]["/tmp"] == f"rw,nosuid,nodev,size={100 << 20},mode=1777"
    assert host_config["Memory"] == 1024**3 and host_config["PidsLimit"] == 256
    assert host_config["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m", "max-file": "2"}}
    # The image's own ENTRYPOINT and CMD never run: both are set explicitly.
    assert attrs["Config"]["Cmd"] in (None, []) and attrs["Config"]["Entrypoint"]
    if settings.mount == "host":
        assert not host_config["CapAdd"] and not host_config["Devices"]
        assert attrs["Config"]["User"] == f"{info.uid}:{info.uid}"
        assert attrs["Config"]["Entrypoint"][0] == "python3"
        assert host_config["NetworkMode"] == "none"
        assert [m["Type"] for m in attrs["Mounts"] if m["Destination"] == "/workspace"] == ["volume"]
    else:
        assert sorted(host_config["CapAdd"]) == ["KILL", "SETGID", "SETPCAP", "SETUID", "SYS_ADMIN"]


def test_stop_is_graceful_and_removes(manager: SessionManager, docker_engine: docker.DockerClient,
                                      settings: Settings) -> None:
    sid = session_id()
    labels = docker_engine.containers.get(manager.create(sid).container_id).labels
    assert manager.stop(sid) == 0
    assert containers_for(docker_engine, settings.bucket) == []
    # Nothing of the session left on the host either.
    assert not Path(labels["io.sandbox-host.boot-dir"]).exists()
    assert not Path(labels["io.sandbox-host.control-dir"]).exists()
    # The id is free again.
    assert manager.create(sid).status == "running"


def test_file_larger_than_staging_fails_loudly(manager: SessionManager, storage: SessionStorage,
                                               settings: Settings) -> None:
    """In-container: s3fs stages in the /tmp tmpfs. A file bigger than it: the write fails where
    user code sees it, or the object is complete in S3; never a success with a short object."""
    if settings.mount == "host":
        pytest.skip("the host strategy stages on host disk: see test_large_file_beyond_memory_limit")
    sid = session_id()
    manager.create(sid)
    mb = 120  # the default tmpfs is 100 MB
    assert settings.tmp_size == "100m"
    result = manager.exec(sid, argv=["sh", "-c", f"dd if=/dev/zero of=artifacts/big bs=1M count={mb} 2>&1"],
                          timeout=600)
    manager.stop(sid)
    size = {o.name: o.size for o in storage.list(sid, "artifacts")}.get("big")
    if result.exit_code == 0:
        assert size == mb << 20, f"dd reported success but S3 holds {size} bytes"
    else:
        assert b"Input/output error" in result.stdout or b"No space left" in result.stdout, result.stdout
        assert size in (None, 0), f"a failed write left a partial object of {size} bytes"


def test_entrypoint_death_is_seen_quickly(manager: SessionManager, docker_engine: docker.DockerClient,
                                          settings: Settings, tmp_path: Path) -> None:
    """After Docker names the container's init PID, /proc (not Docker) watches it: a death is seen in ms."""
    control = tmp_path / "control"
    control.mkdir()
    container = docker_engine.containers.run(
        settings.image, entrypoint=["sh", "-c", "sleep 0.8; exit 3"], detach=True, network_mode="none",
        labels={facts.LABEL_CONTROL: str(control), facts.LABEL_BUCKET: settings.bucket})
    inspections = []
    reload = container.reload
    container.reload = lambda: (inspections.append(1), reload())[1]  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        with pytest.raises(SessionError, match="entrypoint exited before the workspace was ready"):
            manager.backend._wait_ready(container, timeout=20)  # type: ignore[attr-defined]
        assert 0.7 < time.monotonic() - started < 5
        assert len(inspections) == 1  # Docker gave the PID once; /proc did the watching
    finally:
        container.remove(force=True)


def test_any_python_image_serves_a_host_mounted_session(manager: SessionManager, settings: Settings,
                                                        docker_engine: docker.DockerClient,
                                                        storage: SessionStorage) -> None:
    """The host strategy needs nothing of its image but python3: here, the executor image with
    s3fs (and FUSE) purged."""
    if settings.mount != "host":
        pytest.skip("the in-container strategy runs s3fs inside the image")
    tag = "sandbox-host-test/python-without-s3fs:latest"
    try:
        docker_engine.images.get(tag)
    except docker.errors.ImageNotFound:
        container = docker_engine.containers.run(settings.image, entrypoint=["sh", "-c",
                                                 "dpkg --purge s3fs >/dev/null && ! command -v s3fs"],
                                                 network_mode="none", detach=True)
        assert container.wait()["StatusCode"] == 0, container.logs()
        container.commit(*tag.split(":"))
        container.remove()
    plain = SessionManager(dataclasses.replace(settings, image=tag), client=docker_engine, storage=storage)
    sid = session_id()
    plain.create(sid)
    assert plain.exec(sid, argv=["sh", "-c", "command -v s3fs || echo none"]).stdout == b"none\n"
    run_ok(plain, sid, "open('artifacts/plain.txt','w').write('fine')")
    plain.stop(sid)
    assert storage.get_bytes(sid, "artifacts", "plain.txt") == b"fine"


def test_large_file_beyond_memory_limit(manager: SessionManager, settings: Settings, docker_engine,
                                        storage: SessionStorage) -> None:
    """Host strategy: s3fs stages on host disk, outside the session's memory limit, so a 1 GB file
    written by user code in a 512 MB session lands whole in S3 (sha256)."""
    if settings.mount != "host":
        pytest.skip("the in-container strategy stages in the session's own /tmp")
    import hashlib

    small = SessionManager(dataclasses.replace(settings, memory="512m"), client=docker_engine, storage=storage)
    sid = session_id()
    small.create(sid)
    digest = run_ok(small, sid, """
        import hashlib, os
        block = bytes(range(256)) * 4096  # 1 MiB
        h = hashlib.sha256()
        with open("artifacts/big.bin", "wb") as f:
            for i in range(1024):
                chunk = block[i % 256:] + block[:i % 256]
                f.write(chunk)
                h.update(chunk)
        print(h.hexdigest())
    """).strip()
    assert small.stop(sid) == 0
    body = storage.client.get_object(Bucket=settings.bucket, Key=f"sessions/{sid}/artifacts/big.bin")["Body"]
    h = hashlib.sha256()
    for chunk in iter(lambda: body.read(1 << 20), b""):
        h.update(chunk)
    storage.client.delete_object(Bucket=settings.bucket, Key=f"sessions/{sid}/artifacts/big.bin")
    assert h.hexdigest() == digest


def test_a_second_service_of_one_driver_name_refuses_and_names_the_first(volume_service) -> None:
    """Two services of one name would take each other's socket and staging areas."""
    second = subprocess.run([sys.executable, "-m", "provisioning.cli", "volumes", "serve",
                             "--config", str(volume_service.config)],
                            capture_output=True, text=True, timeout=30, cwd=CHECKOUT)
    assert second.returncode != 0
    assert f"already serves the driver {volume_service.driver!r} (pid {volume_service.proc.pid}" in second.stderr
    assert volume_service.answers()


@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_service_restart_keeps_live_sessions(manager: SessionManager, settings: Settings,
                                             storage: SessionStorage, volume_service, ending: str) -> None:
    """Restarting (or upgrading) the volume service leaves live workspaces mounted: their s3fs
    processes outlive it and the new instance adopts them, and stops them cleanly later. The
    same after a crash, which leaves its socket behind: nobody takes that for the new instance."""
    if settings.mount != "host":
        pytest.skip("the in-container strategy uses no volume service")
    sid = session_id()
    manager.create(sid)
    run_ok(manager, sid, "open('artifacts/before.txt','w').write('1')")
    getattr(volume_service, ending)()
    assert volume_service.socket.exists() == (ending == "kill")
    run_ok(manager, sid, "open('artifacts/during.txt','w').write('2')")  # the service is down
    volume_service.start()
    assert "adopted" in volume_service.log.read_text()
    assert manager.health(sid)["ok"] is True
    run_ok(manager, sid, "open('artifacts/after.txt','w').write('3')")
    assert manager.stop(sid) == 0
    assert {o.name for o in storage.list(sid)} == {"before.txt", "during.txt", "after.txt"}
    assert host_s3fs_pids(settings.bucket, sid) == []
