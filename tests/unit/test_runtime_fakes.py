"""The runtime's pieces against fakes of Docker and S3 (moto in-process, no network): the fast
tier's proof of the launcher, storage, credentials, mount strategies, uids, doctor, image,
volume driver and swarm spec, without an engine."""

from __future__ import annotations

import dataclasses
import itertools
import json
import socket
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from provisioning import facts
from provisioning.backends.base import SessionInfo, SessionSpec
from provisioning.config import SERVICE_SETTINGS, Settings
from provisioning.credentials import mint, session_policy
from provisioning.doctor import Doctor
from provisioning.errors import SessionError, SessionExists
from provisioning.image import USER_TOOLS, ImageBuilder, context_digest
from provisioning.launcher import SessionManager
from provisioning.mounts import HostMount, InContainerMount, StrategyError
from provisioning.storage import SessionStorage
from provisioning.uids import UidLeases
from provisioning.validation import ValidationError, session_id
from provisioning.volumed import volumes
from provisioning.volumed.plugin import PluginServer

SETTINGS = Settings(s3_endpoint="http://127.0.0.1:9", bucket="fake-bucket", access_key="AKIAFAKE",
                    secret_key="fake-secret", state_dir="/run/sandbox-host-unit")


@pytest.fixture
def s3() -> Any:
    with mock_aws():
        yield boto3.client("s3", region_name="us-east-1")


def test_storage_layout_and_names(s3: Any) -> None:
    storage = SessionStorage(SETTINGS.validated(), client=s3)
    assert storage.ensure_bucket() is True and storage.ensure_bucket() is False
    sid = session_id("abc")
    storage.ensure_root(sid)
    storage.ensure_areas(sid)
    storage.put_bytes(sid, "artifacts", "dir/out.txt", b"x")
    assert [o.name for o in storage.list(sid)] == ["dir/out.txt"]
    assert storage.get_bytes(sid, "artifacts", "dir/out.txt") == b"x"
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="fake-bucket")["Contents"])
    assert keys == ["sessions/abc/", "sessions/abc/artifacts/", "sessions/abc/artifacts/dir/out.txt",
                    "sessions/abc/uploads/"]
    for bad in ("../x", "/abs", "a//b", "", "a/./b"):
        with pytest.raises(ValidationError):
            storage.put_bytes(sid, "artifacts", bad, b"x")
    with pytest.raises(ValidationError, match="area"):
        storage.put_bytes(sid, "elsewhere", "x", b"x")
    with pytest.raises(Exception) as err:
        storage.get_bytes(sid, "artifacts", "nope")
    assert getattr(err.value, "kind", "") == "not-found"


def test_credentials_are_minted_for_the_prefix_only() -> None:
    calls: list[dict[str, Any]] = []

    class FakeSTS:
        def assume_role(self, **kwargs: Any) -> dict[str, Any]:
            calls.append(kwargs)
            return {"Credentials": {"AccessKeyId": "ASIA1", "SecretAccessKey": "s", "SessionToken": "t"}}

    settings = SETTINGS.validated()
    creds = mint(settings, session_id("abc"), FakeSTS())
    assert (creds.access_key, creds.session_token) == ("ASIA1", "t")
    policy = json.loads(calls[0]["Policy"])
    assert " " not in calls[0]["Policy"] and calls[0]["DurationSeconds"] == 3600
    assert policy == session_policy("fake-bucket", session_id("abc"))
    statement = next(s for s in policy["Statement"] if s["Action"] == ["s3:ListBucket"])
    listing = statement["Condition"]["StringLike"]["s3:prefix"]
    assert listing == ["sessions/abc/", "sessions/abc/*"]  # never the bare prefix: sessions/abcd/ would show
    unscoped = mint(dataclasses.replace(SETTINGS, scoped_credentials=False).validated(), session_id("abc"), FakeSTS())
    assert unscoped.access_key == "AKIAFAKE" and len(calls) == 1


def test_mount_strategies_plan_what_the_container_needs(s3: Any) -> None:
    settings = SETTINGS.validated()
    sid = session_id("abc")
    host = HostMount().plan(sid, settings, 1900000001)
    assert host.user == "1900000001:1900000001" and not host.cap_add and not host.devices
    assert host.entrypoint[:3] == ["python3", "-I", "-S"] and host.volume is not None
    assert host.volume.name == "sandbox-ws-abc.1900000001" and host.volume.options["uid"] == "1900000001"
    storage = SessionStorage(settings, client=s3)
    storage.ensure_bucket()
    minted = []
    strategy = InContainerMount(lambda: storage, apparmor=False,
                                mint=lambda s, i: minted.append(i) or settings.credentials)
    inside = strategy.plan(sid, settings, 1900000002)
    assert inside.user is None and "SYS_ADMIN" in inside.cap_add and inside.devices == ["/dev/fuse:/dev/fuse:rwm"]
    files = {f.name: f for f in inside.boot_files}
    assert files["credentials"].mode == 0o400 and b"fake-secret" in files["credentials"].data
    assert b"fake-secret" not in files["entrypoint.sh"].data and b"uid=1900000002" in files["entrypoint.sh"].data
    assert minted == [sid]
    assert "sessions/abc/" in [o["Key"] for o in s3.list_objects_v2(Bucket="fake-bucket")["Contents"]]


class FakeBackend:
    """Records what the launcher asks of a backend."""

    name = "fake"

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.leased: list[int] = []
        self.released: list[int] = []
        self.launched: list[SessionSpec] = []
        self.running: set[str] = set()
        self.calls: list[str] = []

    def find(self, session_id: str) -> SessionInfo | None:
        status = "running" if session_id in self.running else "exited"
        return SessionInfo(session_id, "cid", "name", status, "img", "none", SETTINGS.bucket, "p/", "host", 1, "n")

    def sync(self, session_id: str, timeout: float) -> None:
        self.calls.append(f"sync {session_id}")

    def lease_uid(self, session_id: str) -> int:
        self.leased.append(1900000000 + len(self.leased))
        return self.leased[-1]

    def release_uid(self, uid: int) -> None:
        self.released.append(uid)

    def launch(self, spec: SessionSpec) -> SessionInfo:
        self.launched.append(spec)
        if self.fail:
            raise self.fail
        return SessionInfo(spec.session_id, "cid", "name", "running", "img", "none", spec.settings.bucket,
                           "p/", spec.strategy, spec.uid, "node")


def agreeing_service(settings: Any) -> dict[str, Any]:
    """A volume service that mounts with exactly these settings."""
    return {name: getattr(settings, name) for name in SERVICE_SETTINGS}


def test_launcher_validates_first_checks_the_bucket_once_and_releases_a_failed_uid(s3: Any) -> None:
    backend = FakeBackend()
    storage = SessionStorage(SETTINGS.validated(), client=s3)
    manager = SessionManager(SETTINGS, backend=backend, storage=storage,  # type: ignore[arg-type]
                             strategy=HostMount(agreeing_service))
    with pytest.raises(ValidationError):
        manager.create("../etc")
    assert backend.leased == []
    manager.create("one")
    manager.create("two")
    assert [s.session_id for s in backend.launched] == ["one", "two"]
    assert backend.launched[0].plan.volume is not None  # the default strategy is host
    failing = FakeBackend(SessionExists("taken"))
    manager = SessionManager(SETTINGS, backend=failing, storage=storage,  # type: ignore[arg-type]
                             strategy=HostMount(agreeing_service))
    with pytest.raises(SessionExists):
        manager.create("three")
    assert failing.released == failing.leased


def test_files_of_a_running_session_agree_with_its_workspace_at_each_call(s3: Any, tmp_path: Path) -> None:
    """upload() returns once the running session's workspace has the file; a listing and a
    download come after the session's writes reached S3 (a sync each). A session that is not
    running has everything in S3: no sync."""
    backend = FakeBackend()
    storage = SessionStorage(SETTINGS.validated(), client=s3)
    manager = SessionManager(SETTINGS, backend=backend, storage=storage,  # type: ignore[arg-type]
                             strategy=HostMount(agreeing_service))
    storage.ensure_bucket()
    source = tmp_path / "data.csv"
    source.write_text("a,b\n")
    backend.running = {"live"}
    manager.upload("live", source)
    storage.put_bytes("live", "artifacts", "out.txt", b"out")
    assert [o.name for o in manager.files("live")] == ["out.txt"]
    assert manager.read("live", "out.txt") == b"out"
    assert manager.download("live", "out.txt", tmp_path).read_bytes() == b"out"
    assert backend.calls == ["sync live"] * 4
    manager.upload("ended", source)
    assert [o.name for o in manager.files("ended", "uploads")] == ["data.csv"]
    assert backend.calls == ["sync live"] * 4


def test_a_launcher_whose_settings_differ_from_the_volume_service_is_refused_naming_both(s3: Any) -> None:
    """Uploads would land where the workspace never looks: one truth, the service's."""
    backend = FakeBackend()

    def elsewhere(settings: Any) -> dict[str, Any]:
        return {**agreeing_service(settings), "bucket": "sandbox-sessions", "s3fs_options": {"parallel_count": 4},
                "staging_size": "10g"}

    asking = dataclasses.replace(SETTINGS, staging_size="2g")  # a choice of the service's, asked for here
    manager = SessionManager(asking, backend=backend, storage=SessionStorage(SETTINGS.validated(), client=s3),  # type: ignore[arg-type]
                             strategy=HostMount(elsewhere))
    with pytest.raises(StrategyError) as refused:
        manager.create("one")
    message = str(refused.value)
    assert "bucket 'fake-bucket' here, 'sandbox-sessions' in the service" in message
    assert "staging_size '2g' here, '10g' in the service" in message
    assert "s3fs_options" not in message  # left at its default here: the service's options apply
    assert backend.leased == []
    with pytest.raises(StrategyError):
        manager.storage  # noqa: B018 - uploads, listings and downloads are refused the same way


def test_uid_leases_are_exclusive_and_released(tmp_path: Path) -> None:
    leases = UidLeases(tmp_path, (1900000000, 1900001023))
    taken = {leases.allocate("s") for _ in range(200)}
    assert len(taken) == 200 and all(1900000000 <= u <= 1900001023 for u in taken)
    uid = taken.pop()
    leases.release(uid)
    assert not (tmp_path / "uids" / str(uid)).exists()


def test_doctor_decides_by_kind_without_an_engine() -> None:
    from provisioning.hostinfo import DockerUnavailable

    def no_engine() -> Any:
        raise DockerUnavailable("no engine here")

    checks = {c.name: c for c in Doctor(SETTINGS, docker_factory=no_engine).run()}
    assert checks["docker engine"].ok is False and "dockerd" in checks["docker engine"].fix
    assert checks["executor image"].ok is False
    assert checks["s3 endpoint"].ok is False and "start the object store" in checks["s3 endpoint"].fix
    bad = {c.name: c for c in Doctor(dataclasses.replace(SETTINGS, bucket="Bad_Bucket")).run()}
    assert list(bad) == ["settings"] and "bucket" in bad["settings"].detail


def test_image_build_is_skipped_when_its_inputs_match(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM base\n")
    digest = context_digest(tmp_path, "sha256:base\0" + " ".join(USER_TOOLS))

    class Image:
        def __init__(self, labels: dict[str, str]) -> None:
            self.id, self.tags, self.labels, self.attrs = "sha256:img", ["x"], labels, {"Size": 10}

    class Images:
        def __init__(self) -> None:
            self.built = 0

        def get(self, ref: str) -> Image:
            return Image({}) if ref == "base" else Image({"io.sandbox-host.inputs": digest})

        def build(self, **kwargs: Any) -> tuple[Image, list[Any]]:
            self.built += 1
            self.buildargs = kwargs["buildargs"]
            return Image({}), []

    class Client:
        images = Images()

    builder = ImageBuilder(Client(), context=tmp_path, cache_dir=tmp_path)  # type: ignore[arg-type]
    base = Image({})
    base.id = "sha256:base"
    builder.registry_base = lambda ref: base  # type: ignore[method-assign]
    result = builder.build("img:1", base_image="base")
    assert result.built is False and Client.images.built == 0
    # The lean image is another input: built, with no tools asked of the Dockerfile.
    assert builder.build("img:1", base_image="base", minimal=True).built is True
    assert Client.images.buildargs == {"BASE_IMAGE": "x", "TOOLS": ""}
    (tmp_path / "Dockerfile").write_text("FROM base\nRUN true\n")
    assert builder.build("img:1", base_image="base").built is True
    assert Client.images.buildargs["TOOLS"].split() == list(USER_TOOLS)


def test_volume_options_are_checked_at_the_driver() -> None:
    rng = (1900000000, 1999999999)
    parsed = volumes.parse_options("sandbox-ws-abc.1900000005", {"session": "abc", "uid": "1900000005",
                                                                 "gid": "1900000005"}, rng)
    assert (parsed.session_id, parsed.uid, parsed.ephemeral) == ("abc", 1900000005, False)
    assert volumes.parse_options("sandbox-ctl-abc.1900000005",
                                 {"session": "abc", "uid": "1900000005", "gid": "1900000005", "ephemeral": "true"},
                                 rng).ephemeral
    for name, opts, field in [
        ("sandbox-ws-abc.1900000005", {"session": "abc", "uid": "0", "gid": "0"}, "uid"),
        ("sandbox-ws-abc.1900000005", {"session": "../x", "uid": "1900000005", "gid": "1900000005"}, "session id"),
        ("sandbox-ws-other.1900000005", {"session": "abc", "uid": "1900000005", "gid": "1900000005"}, "volume name"),
        ("sandbox-ws-abc.1900000005", {"session": "abc", "uid": "1900000005", "gid": "1900000005", "x": "1"},
         "volume option"),
    ]:
        with pytest.raises(ValidationError, match=field):
            volumes.parse_options(name, opts, rng)
    ws = {"session": "abc", "uid": "1900000005", "gid": "1900000005"}
    assert volumes.parse_options("sandbox-ws-abc.1900000005", ws, rng).mounter == "local"
    assert volumes.parse_options("sandbox-ws-abc.1900000005", {**ws, "mounter": "s3fs"}, rng).mounter == "s3fs"
    for retired in ("goofys", "rclone"):
        with pytest.raises(ValidationError, match="mounter"):
            volumes.parse_options("sandbox-ws-abc.1900000005", {**ws, "mounter": retired}, rng)


def test_local_command_keeps_secrets_out_of_argv_and_keeps_its_tree_on_the_session_area(tmp_path: Path) -> None:
    from provisioning.config import Credentials
    from provisioning.volumed.mounters import LocalMounter, MountTarget
    from provisioning.volumed.staging import Staging

    staging = Staging(tmp_path / "s.img", tmp_path / "s")
    target = MountTarget(session_id("abc"), tmp_path / "ws", 1900000005, 1900000005, staging, 1 << 30)
    creds = Credentials("ASIAKEY", "secret-key", "token-xyz")
    command = LocalMounter().command(SETTINGS.validated(), target, creds)
    for secret in ("ASIAKEY", "secret-key", "token-xyz"):
        assert secret not in " ".join(command.argv) and secret not in command.control and secret not in repr(command)
    assert command.env["AWS_SESSION_TOKEN"] == "token-xyz" and command.env["AWS_ACCESS_KEY_ID"] == "ASIAKEY"
    flags = dict(itertools.pairwise(command.argv[command.argv.index("--endpoint"):]))
    assert flags["--bucket"] == "fake-bucket" and flags["--prefix"] == "sessions/abc"
    assert flags["--uid"] == flags["--gid"] == "1900000005"
    assert flags["--source"] == json.loads(command.control)["source"] == str(staging.mountpoint / "ws")
    assert flags["--control"] == json.loads(command.control)["socket"] == str(staging.mountpoint / "sync.sock")


def test_the_plugin_protocol_answers_docker(tmp_path: Path) -> None:
    """Docker's side of the protocol against a fake manager: every endpoint, and errors as Err."""

    class FakeManager:
        def __init__(self) -> None:
            self.calls: list[tuple[str, ...]] = []

        def create(self, name: str, opts: dict[str, Any]) -> None:
            self.calls.append(("create", name))
            if name == "bad":
                raise ValidationError("volume name", name, "no")

        def mount(self, name: str, caller: str) -> Path:
            self.calls.append(("mount", name, caller))
            return tmp_path / name

        def unmount(self, name: str, caller: str) -> None:
            self.calls.append(("unmount", name, caller))

        def remove(self, name: str) -> None:
            self.calls.append(("remove", name))

        def list(self) -> list[Any]:
            return []

    manager = FakeManager()
    server = PluginServer(tmp_path / "p.sock", manager)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def call(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(tmp_path / "p.sock"))
            sock.sendall(f"POST /{endpoint} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + data)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        return json.loads(raw.partition(b"\r\n\r\n")[2])

    try:
        assert call("Plugin.Activate", {}) == {"Implements": ["VolumeDriver"]}
        assert call("VolumeDriver.Capabilities", {})["Capabilities"] == {"Scope": "local"}
        assert call("VolumeDriver.Create", {"Name": "v", "Opts": {}}) == {"Err": ""}
        assert "invalid volume name" in call("VolumeDriver.Create", {"Name": "bad"})["Err"]
        assert call("VolumeDriver.Mount", {"Name": "v", "ID": "c1"})["Mountpoint"] == str(tmp_path / "v")
        assert call("VolumeDriver.Unmount", {"Name": "v", "ID": "c1"}) == {"Err": ""}
        assert call("VolumeDriver.Remove", {"Name": "v"}) == {"Err": ""}
        assert "names no volume" in call("VolumeDriver.Mount", {})["Err"]
        assert manager.calls == [("create", "v"), ("create", "bad"), ("mount", "v", "c1"), ("unmount", "v", "c1"),
                                 ("remove", "v")]
    finally:
        server.shutdown()
        server.server_close()


def test_swarm_places_one_task_never_restarted_with_its_whole_memory_reserved() -> None:
    """What a swarm session adds to the shared description (tests/unit/test_hardening.py): the
    control volume, ephemeral volumes, placement and reservations."""
    from provisioning.backends.swarm import SwarmBackend

    settings = dataclasses.replace(SETTINGS, backend="swarm").validated()
    sid = session_id("abc")
    plan = HostMount().plan(sid, settings, 1900000009)
    task, labels = SwarmBackend(settings)._spec(SessionSpec(sid, 1900000009, "host", plan, settings))
    container = task["ContainerSpec"]
    assert [m["Target"] for m in container["Mounts"]] == ["/workspace", facts.CONTROL_MOUNT, "/tmp"]
    assert all(m["VolumeOptions"]["DriverConfig"]["Options"]["ephemeral"] == "true"
               for m in container["Mounts"] if m["Type"] == "volume")
    assert task["RestartPolicy"]["Condition"] == "none"
    assert task["Resources"]["Reservations"]["MemoryBytes"] == task["Resources"]["Limits"]["MemoryBytes"]
    assert task["Placement"]["Constraints"] == ["node.labels.io.sandbox-host.sandbox == true"]
    assert labels[facts.LABEL_UID] == "1900000009"
    with pytest.raises(SessionError, match="mount = host"):
        plan2 = dataclasses.replace(plan, devices=["/dev/fuse"], cap_add=["SYS_ADMIN"])
        SwarmBackend(settings)._spec(SessionSpec(sid, 1, "in-container", plan2, settings))


def test_a_volume_saved_from_two_threads_at_once_is_saved(tmp_path: Path) -> None:
    """The mount's own thread and a Docker call (Mount) save one volume's state at once: both
    writes land, neither fails (they once raced on one temporary file: FileNotFoundError)."""
    settings = dataclasses.replace(SETTINGS, state_dir="/run/sandbox-host-unit").validated()
    manager = volumes.VolumeManager(settings, data_dir=tmp_path / "data", state_dir=tmp_path / "state")
    state = volumes.VolumeState("sandbox-ws-abc.1900000001", "abc", 1900000001, 1900000001)
    errors: list[BaseException] = []

    def save_many() -> None:
        try:
            for _ in range(300):
                manager.files.save(state)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=save_many) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert errors == []
    assert json.loads((tmp_path / "state" / f"{state.name}.json").read_text())["session_id"] == "abc"
