"""What an attacker who controls the code run in a session tries, asserted as that user code
(and from the host where the attack is on the host side). Every test runs for each way a
workspace is mounted (the host strategy with the default mounter, local, and with s3fs; s3fs in
the container) against both S3 servers (moto behind our own checks, and Ceph RGW)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import subprocess
import textwrap
import time
from pathlib import Path

import docker
import pytest

from provisioning import facts
from provisioning.config import Settings
from provisioning.errors import SandboxHostError
from provisioning.executor_client import ExecutorError
from provisioning.launcher import SessionManager
from provisioning.storage import SessionStorage

from ..conftest import Store, session_id
from ..servers.volumed import VolumeService
from provisioning.volumed.staging import size_bytes as staging_bytes

from .conftest import STAGING_SIZE, host_s3fs_pids, state_dirs

pytestmark = pytest.mark.parametrize(("strategy", "mounter"),
                                     [("host", "local"), ("host", "s3fs"), ("in-container", "s3fs")])


def run(manager: SessionManager, sid: str, code: str, timeout: float = 120) -> dict:
    result = manager.exec(sid, argv=["python3", "-c", textwrap.dedent(code)], timeout=timeout)
    assert result.exit_code == 0, result.stderr.decode()
    return json.loads(result.stdout)


SYSCALLS = """
    import ctypes, errno, json, platform, subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": {"bpf": 321, "perf_event_open": 298, "io_uring_setup": 425},
          "aarch64": {"bpf": 280, "perf_event_open": 241, "io_uring_setup": 425}}[platform.machine()]
    args = {"bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "io_uring_setup": (1, 0)}
    out = {}
    for name, number in nr.items():
        ret = libc.syscall(number, *args[name])
        out[name] = "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
    unshare = subprocess.run(["unshare", "-Urm", "true"], capture_output=True, text=True)
    out["unshare -Urm"] = [unshare.returncode, unshare.stderr.strip()]
    print(json.dumps(out))
"""


def test_no_namespaces_and_no_kernel_surface(manager: SessionManager) -> None:
    sid = session_id()
    manager.create(sid)
    out = run(manager, sid, SYSCALLS)
    code, message = out.pop("unshare -Urm")
    assert code != 0 and "Operation not permitted" in message
    assert out == {"bpf": "EPERM", "perf_event_open": "EPERM", "io_uring_setup": "EPERM"}


def test_control_socket_cannot_be_replaced_fronted_or_driven(manager: SessionManager) -> None:
    sid = session_id()
    manager.create(sid)
    out = run(manager, sid, f"""
        import json, os, socket
        d = {facts.CONTROL_DIR!r}
        tries = {{}}
        for name, act in (("unlink", lambda: os.unlink(d + "/executor.sock")),
                          ("rename", lambda: os.rename(d + "/executor.sock", d + "/moved")),
                          ("create", lambda: open(d + "/fill", "w").write("x")),
                          ("bind", lambda: socket.socket(socket.AF_UNIX).bind(d + "/other.sock"))):
            try:
                act()
                tries[name] = "done"
            except OSError as exc:
                tries[name] = exc.strerror
        s = socket.socket(socket.AF_UNIX)
        s.connect(d + "/executor.sock")
        body = b'{{"argv": ["true"]}}'
        s.sendall(b"POST /exec HTTP/1.1\\r\\nContent-Length: %d\\r\\n\\r\\n" % len(body) + body)
        tries["drive"] = s.recv(200).split(b"\\r\\n")[0].decode()
        print(json.dumps(tries))
    """)
    assert out["drive"].startswith("HTTP/1.1 403"), out
    assert all(out[k] == "Permission denied" for k in ("unlink", "rename", "create", "bind")), out
    assert manager.health(sid)["ok"] is True
    assert manager.exec(sid, argv=["echo", "still"]).stdout == b"still\n"


def test_a_listener_that_is_not_the_executor_is_refused_in_bounded_time(manager: SessionManager,
                                                                       docker_engine: docker.DockerClient) -> None:
    """Were the socket ever swapped (here by root on the host, the only one who can), the host
    talks to nothing but the recorded executor: a forger gets no request, and no answer is
    believed."""
    sid = session_id()
    info = manager.create(sid)
    control = Path(docker_engine.containers.get(info.container_id).labels[facts.LABEL_CONTROL])
    real = control / facts.SOCKET_NAME
    real.rename(control / "real.sock")
    forger = subprocess.Popen(["python3", "-c", textwrap.dedent(f"""
        import socket
        s = socket.socket(socket.AF_UNIX); s.bind({str(real)!r}); s.listen(8)
        held = []
        while True:
            c, _ = s.accept()
            held.append(c)
            try:  # the host may hang up before a byte is sent: keep listening for the next call
                c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 100000\\r\\n\\r\\n{{\\"ok\\": true")
            except OSError:
                pass
    """)])
    try:
        deadline = time.monotonic() + 10
        while not real.exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = time.monotonic()
        for call in (lambda: manager.health(sid), lambda: manager.exec(sid, argv=["true"], timeout=1)):
            with pytest.raises(ExecutorError, match="not this session's executor"):
                call()
        assert time.monotonic() - started < 2
    finally:
        forger.kill()
        forger.wait()
        real.unlink(missing_ok=True)
        (control / "real.sock").rename(real)
    assert manager.health(sid)["ok"] is True


FILL = """
    import errno, json, os, subprocess
    out = {}
    for path in ("/workspace/artifacts", "/tmp", "/dev/shm", "/var/tmp", "/run/lock", "/run/sandbox-executor",
                 "/", "/opt"):
        target = os.path.join(path, "fill.bin")
        proc = subprocess.run(["dd", "if=/dev/zero", "of=" + target, "bs=1M", "count=2048"],
                              capture_output=True, text=True)
        out[path] = [proc.returncode, proc.stderr.strip().splitlines()[0] if proc.returncode else "wrote 2 GB"]
        if path != "/workspace/artifacts":
            try:
                os.unlink(target)
            except OSError:
                pass
    print(json.dumps(out))
"""
CAPPED = ("No space left", "Read-only file system", "Permission denied", "Disk quota exceeded")


def real_server_only(s3_store: Store) -> None:
    """The longest attacks run once per strategy, against the real S3 server (RGW): they test the
    host's caps and s3fs's flush, which do not depend on the server."""
    if s3_store.name != "rgw":
        pytest.skip("runs per strategy against Ceph RGW")


def test_writing_2gb_anywhere_hits_a_cap(manager: SessionManager, settings: Settings, docker_engine,
                                         storage: SessionStorage, volume_service: VolumeService,
                                         s3_store: Store) -> None:
    """Every path user code can write: the host's disk takes at most the session's caps. The
    workspace is the one path backed by S3. With s3fs, what exceeds its staging area streams to
    the store (s3fs >= 1.92), so there the rule is the durability one: the write fails where user
    code sees it, or the object is whole in S3. With local, the workspace is the session's capped
    filesystem: the write fails at the cap, and S3 holds the file as the disk does."""
    real_server_only(s3_store)
    sid = session_id()
    info = manager.create(sid)
    out = run(manager, sid, FILL, timeout=900)
    code, message = out.pop("/workspace/artifacts")
    if code != 0:
        assert any(reason in message for reason in (*CAPPED, "Input/output error")), message
    for path, (code, message) in out.items():
        assert code != 0, f"{path}: {message}"
        assert any(reason in message for reason in CAPPED), (path, message)
    container = docker_engine.containers.get(info.container_id)
    container.reload()
    # Nothing landed in the container's writable layer, and the host disk took at most the cap.
    size_rw = docker_engine.api.containers(all=True, size=True, filters={"id": container.id})[0].get("SizeRw") or 0
    assert size_rw < 1 << 20, size_rw
    if settings.mount == "host":  # s3fs's staging area on host disk: allocated no further than its cap
        state = json.loads(next(volume_service.state_dir().glob(f"{facts.VOLUME_PREFIX}{sid}.*.json")).read_text())
        allocated = os.stat(state["staging"]).st_blocks * 512
        assert 0 < allocated <= staging_bytes(STAGING_SIZE), allocated
    if settings.mounter == "local":
        on_disk = int(manager.exec(sid, argv=["stat", "-c", "%s", "artifacts/fill.bin"]).stdout)
    manager.stop(sid)
    stored = [o.size for o in storage.list(sid, "artifacts") if o.name == "fill.bin"]
    storage.client.delete_object(Bucket=settings.bucket, Key=f"sessions/{sid}/artifacts/fill.bin")
    if settings.mounter == "local":
        assert code != 0 and stored == [on_disk], (message, on_disk, stored)
    elif code == 0:
        assert stored == [2048 << 20], f"dd reported success but S3 holds {stored}"
    else:
        # A failure reported to user code may still have completed in the store (a timeout while
        # the server finished): never a partial object.
        assert stored in ([], [0], [2048 << 20]), f"a failed write left a partial object of {stored} bytes"


def test_a_host_account_cannot_read_a_workspace(manager: SessionManager, settings: Settings,
                                                docker_engine: docker.DockerClient,
                                                volume_service: VolumeService) -> None:
    """uid 1000 is a real account on many hosts: it reaches no session's files, through the
    mount on the host or through /proc/<pid>/root."""
    sid = session_id()
    info = manager.create(sid)
    run(manager, sid, "import json; open('artifacts/secret.txt', 'w').write('mine'); print(json.dumps(1))")
    pid = docker_engine.containers.get(info.container_id).attrs["State"]["Pid"]
    paths = [f"/proc/{pid}/root/workspace/artifacts/secret.txt"]
    if settings.mount == "host":
        data = Path(facts.SERVICE_DATA_DIR) / volume_service.driver / "volumes"
        paths += [str(p / "workspace" / "artifacts" / "secret.txt") for p in data.iterdir()]
    for path in paths:
        probe = subprocess.run(["setpriv", "--reuid=1000", "--regid=1000", "--clear-groups", "cat", path],
                               capture_output=True, text=True)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, (path, probe)
    assert manager.exec(sid, argv=["cat", "artifacts/secret.txt"]).stdout == b"mine"


def test_stop_right_after_writing_loses_nothing(manager: SessionManager, storage: SessionStorage,
                                                s3_store: Store) -> None:
    """50 sessions: each writes files of random content and sizes (one still open when the stop
    comes) and is stopped at once; every byte is in S3 (sha256)."""
    real_server_only(s3_store)
    for round_ in range(50):
        sid = session_id()
        manager.create(sid)
        size = secrets.choice([1, 4096, 1 << 20, 5 << 20, 12 << 20])
        out = run(manager, sid, f"""
            import hashlib, json, os, subprocess, time
            data = os.urandom({size})
            with open("artifacts/data.bin", "wb") as f:
                f.write(data)
            held = os.urandom(2048)
            with open("artifacts/held.src", "wb") as f:
                f.write(held)
            subprocess.Popen(["python3", "-c", "import shutil, time; f = open('artifacts/held.bin', 'wb'); "
                              "f.write(open('artifacts/held.src', 'rb').read()); f.flush(); time.sleep(600)"],
                             start_new_session=True)
            while not os.path.exists("artifacts/held.bin") or os.path.getsize("artifacts/held.bin") < 2048:
                time.sleep(0.005)
            print(json.dumps({{"data": hashlib.sha256(data).hexdigest(), "held": hashlib.sha256(held).hexdigest()}}))
        """)
        assert manager.stop(sid, timeout=20) == 0
        for name in ("data.bin", "held.bin"):
            got = hashlib.sha256(storage.get_bytes(sid, "artifacts", name)).hexdigest()
            assert got == out[name.split(".")[0]], f"round {round_}: {name} ({size} bytes) differs in S3"


def test_workspace_death_with_a_dead_service_is_refused_at_create(settings: Settings, docker_engine,
                                                                  storage: SessionStorage) -> None:
    """A host-strategy create when the volume service is down fails fast with the fix named."""
    if settings.mount != "host":
        pytest.skip("the in-container strategy uses no volume service")
    down = dataclasses.replace(settings, volume_driver="sbx-not-running")
    started = time.monotonic()
    before = state_dirs(settings)
    with pytest.raises(SandboxHostError, match="volume service 'sbx-not-running' does not answer.*start it"):
        SessionManager(down, client=docker_engine, storage=storage).create(session_id())
    assert time.monotonic() - started < 2
    assert state_dirs(settings) == before


def test_scoped_credentials_of_the_running_mount(manager: SessionManager, settings: Settings,
                                                 docker_engine: docker.DockerClient) -> None:
    """The key the session's s3fs actually holds is a temporary one, and the S3 server refuses it
    on another session's prefix and on the bucket root."""
    import boto3
    import botocore.config
    import botocore.exceptions

    if settings.mounter == "local":
        pytest.skip("the local sync process takes its credentials on stdin and keeps them in memory only; "
                    "they are minted as s3fs's are (credentials.mint), whose policy test_devstore_policy pins")
    mine, other = session_id(), session_id()
    manager.create(mine)
    manager.create(other)
    env = s3fs_environment(settings, mine)
    key, secret, token = env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
    assert key != settings.access_key and token
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name="us-east-1", aws_access_key_id=key,
                      aws_secret_access_key=secret, aws_session_token=token,
                      config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    s3.put_object(Bucket=settings.bucket, Key=f"sessions/{mine}/artifacts/ok.txt", Body=b"ok")
    refused = {
        "get other": lambda: s3.get_object(Bucket=settings.bucket, Key=f"sessions/{other}/"),
        "put other": lambda: s3.put_object(Bucket=settings.bucket, Key=f"sessions/{other}/x", Body=b"x"),
        "list other": lambda: s3.list_objects_v2(Bucket=settings.bucket, Prefix=f"sessions/{other}/"),
        "list root": lambda: s3.list_objects_v2(Bucket=settings.bucket),
        "copy from other": lambda: s3.copy_object(Bucket=settings.bucket, Key=f"sessions/{mine}/stolen",
                                                  CopySource={"Bucket": settings.bucket, "Key": f"sessions/{other}/"}),
    }
    for name, call in refused.items():
        with pytest.raises(botocore.exceptions.ClientError) as err:
            call()
        assert err.value.response["Error"]["Code"] == "AccessDenied", name


def s3fs_environment(settings: Settings, sid: str) -> dict[str, str]:
    """The environment of the s3fs that serves this session (read as root on the host)."""
    pids = host_s3fs_pids(settings.bucket, sid)
    assert len(pids) == 1, pids
    raw = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def test_bad_requests_leave_no_trace_and_user_code_goes_first_to_the_oom_killer(
        manager: SessionManager, docker_engine: docker.DockerClient) -> None:
    """A thousand malformed requests on the control socket (from the host, the only peer the
    executor answers) grow the container's log by nothing; user processes carry oom_score_adj
    1000, so under memory pressure the kernel ends them before the executor (or s3fs)."""
    import socket as socket_mod

    sid = session_id()
    info = manager.create(sid)
    container = docker_engine.containers.get(info.container_id)
    before = len(container.logs())
    control = Path(container.labels[facts.LABEL_CONTROL])
    for raw in [b"GARBAGE\r\n\r\n", b"POST /exec HTTP/1.1\r\nContent-Length: 5\r\n\r\n{[[[[", b"\x00" * 300] * 334:
        with socket_mod.socket(socket_mod.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(control / facts.SOCKET_NAME))
            sock.sendall(raw)
            sock.shutdown(socket_mod.SHUT_WR)
            while sock.recv(65536):
                pass
    assert len(container.logs()) == before
    assert manager.exec(sid, argv=["cat", "/proc/self/oom_score_adj"]).stdout == b"1000\n"
    executor_adj = Path(f"/proc/{container.attrs['State']['Pid']}/oom_score_adj").read_text().strip()
    if settings_mount(container) == "host":  # the executor is the container's init there
        assert int(executor_adj) < 1000


def settings_mount(container: docker.models.containers.Container) -> str:
    return container.labels.get(facts.LABEL_STRATEGY, "")


def test_names_user_code_makes_cannot_drive_the_terminal(manager: SessionManager, settings: Settings) -> None:
    """`session artifacts` prints names as a terminal may show them: escape sequences made by user
    code (to clear the screen or forge lines) come out escaped."""
    from .test_cli_flow import cli

    sid = session_id()
    manager.create(sid)
    run(manager, sid, r"""
        import json
        open("artifacts/evil\x1b[2J\rforged  0  line", "w").write("x")
        print(json.dumps(1))
    """)
    listed = cli(settings, "session", "artifacts", sid).stdout
    assert "\x1b" not in listed and "\r" not in listed and listed.count("\n") == 1
    assert "evil\\x1b[2J\\rforged" in listed
