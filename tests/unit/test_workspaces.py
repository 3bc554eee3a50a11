"""A workspace volume's life in the volume service, driven through Docker's calls (create,
mount, unmount, remove) and a restart (adopt), with the host-facing seams injected: the runner
(here, mounter processes are plain sleepers and a mount is a set entry), the staging areas, the
store and the credentials. What FUSE, loop devices and S3 do is the docker tier's
(tests/integration/test_sessions.py); this is the service's own logic: what each outcome leaves."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from provisioning import facts
from provisioning.config import Credentials, Settings, ValidSettings
from provisioning.polling import poll_until
from provisioning.procs import ProcessRef
from provisioning.validation import SessionId
from provisioning.volumed.fuseproc import MountError
from provisioning.volumed.mounters import HeldFile, MountCommand, MountTarget, Refuses
from provisioning.volumed.staging import Staging
from provisioning.volumed.volumes import VolumeError, VolumeManager, VolumeNotFound

SID = "abc"
UID = 1900000005
NAME = facts.volume_name(SID, UID)
OPTIONS = {"session": SID, "uid": str(UID), "gid": str(UID)}
SETTINGS = Settings(s3_endpoint="http://127.0.0.1:9", bucket="unit-bucket", access_key="AKIAUNIT",
                    secret_key="unit-secret", scoped_credentials=False).validated()
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


class FakeRunner:
    """Mounter processes are real processes; their "mount" is an entry that appears once the
    process runs and goes with ``unmount``, which ends the process (as a FUSE daemon ends when
    its mount is taken down)."""

    def __init__(self) -> None:
        self.mounted: set[Path] = set()
        self.procs: dict[Path, subprocess.Popen[bytes]] = {}
        self.shared: list[Path] = []

    def start(self, argv: list[str], secrets_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        self.last_env = secrets_env
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_mounted(self, proc: subprocess.Popen[bytes], mountpoint: Path, log: Path, timeout: float) -> None:
        try:
            status = proc.wait(0.5)
        except subprocess.TimeoutExpired:
            self.mounted.add(mountpoint)
            self.procs[mountpoint] = proc
            return
        raise MountError(f"mounter exited (status {status}) before mounting")

    def unmount(self, mountpoint: Path) -> None:
        if mountpoint in self.mounted:
            self.mounted.discard(mountpoint)
            self.procs.pop(mountpoint).terminate()

    def is_mounted(self, path: Path) -> bool:
        return path in self.mounted

    def share(self, path: Path) -> None:
        self.shared.append(path)


class FakeStaging:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.taken: list[Path] = []
        self.released: list[Path] = []
        self.kept: set[Path] | None = None
        self.attached: list[Path] = []

    def start(self, keep: set[Path]) -> list[Path]:
        self.kept = keep
        return [image for image in sorted(self.root.glob("orphan*.img")) if image not in keep]

    def attach(self, image: Path) -> Staging:
        self.attached.append(image)
        return Staging(image, image.with_suffix(""))

    def take(self) -> Staging:
        image = self.root / f"{len(self.taken)}.img"
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"")
        image.with_suffix("").mkdir()
        self.taken.append(image)
        return Staging(image, image.with_suffix(""))

    def release(self, image: Path) -> None:
        self.released.append(image)


@dataclass
class FakeStore:
    markers: list[str] = field(default_factory=list)
    refused: list[tuple[str, list[HeldFile]]] = field(default_factory=list)
    refuses_all: bool = False

    def put_marker(self, key: str) -> None:
        self.markers.append(key)

    def refuses(self, session_id: str, held: list[HeldFile]) -> bool:
        self.refused.append((session_id, held))
        return self.refuses_all


@dataclass
class FakeMounter:
    """A mounter whose process is ``argv``; with ``control``, it keeps writes back until drained
    (as the local sync process does), and ``drain`` does what ``drains`` says."""

    argv: list[str] = field(default_factory=lambda: list(SLEEPER))
    control: str = ""
    drains: str = "ok"  # ok | fail | held
    name: str = "local"
    targets: list[tuple[MountTarget, Credentials]] = field(default_factory=list)
    drained: int = 0
    synced: int = 0
    recovered: list[tuple[MountTarget, Credentials]] = field(default_factory=list)
    renews: bool = False
    renewed: list[Credentials] = field(default_factory=list)
    renew_error: str = ""

    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        self.targets.append((target, credentials))
        return MountCommand(self.argv, {"AWS_ACCESS_KEY_ID": credentials.access_key}, self.control)

    def verify(self, control: str, timeout: float) -> None:
        pass

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        self.drained += 1
        if self.drains == "fail":
            raise MountError("2 uploads still pending")
        if self.drains == "held":
            held = [HeldFile("odd\nname", Path("/nonexistent"), True)]
            if not refuses(held):
                raise MountError("1 upload still pending")
        return []

    def sync(self, control: str, timeout: float) -> None:
        self.synced += 1
        if self.drains == "fail":
            raise MountError("2 uploads still pending")

    def renew(self, control: str, credentials: Credentials, timeout: float) -> None:
        if self.renew_error:
            raise MountError(self.renew_error)
        self.renewed.append(credentials)

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        self.recovered.append((target, credentials))
        if self.drains == "fail":
            raise MountError("the recovery could not send 2 files")

    def check(self) -> None:
        pass


@dataclass
class Host:
    root: Path
    runner: FakeRunner = field(default_factory=FakeRunner)
    store: FakeStore = field(default_factory=FakeStore)
    mounter: FakeMounter = field(default_factory=FakeMounter)
    minted: list[SessionId] = field(default_factory=list)
    mint_error: Exception | None = None
    settings: ValidSettings = SETTINGS
    staging: FakeStaging = field(init=False)

    def __post_init__(self) -> None:
        self.staging = FakeStaging(self.root / "staging")

    def mint(self, settings: ValidSettings, session_id: SessionId) -> Credentials:
        if self.mint_error is not None:
            raise self.mint_error
        self.minted.append(session_id)
        return Credentials(f"ASIA{session_id.upper()}{len(self.minted)}", "scoped-secret", "token")

    def service(self) -> VolumeManager:
        """A (new) instance of the service on this host: it adopts what the last one left."""
        manager = VolumeManager(self.settings, data_dir=self.root / "data", state_dir=self.root / "state",
                                mint=self.mint,
                                store=self.store, runner=self.runner, staging=self.staging,  # type: ignore[arg-type]
                                mounter_for=lambda _name: self.mounter)
        manager.start()
        return manager


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    host = Host(tmp_path)
    yield host
    for proc in host.runner.procs.values():
        proc.kill()
        proc.wait()


def mounted(host: Host) -> tuple[VolumeManager, ProcessRef]:
    manager = host.service()
    manager.create(NAME, OPTIONS)
    assert manager.wait(NAME).status == "mounted", manager.get(NAME).error
    assert manager.mount(NAME, "container-1") == manager.mountpoint(NAME)
    ref = manager.get(NAME).process
    assert ref is not None and ref.alive()
    return manager, ref


def saved_status(host: Host) -> str:
    import json

    return str(json.loads((host.root / "state" / f"{NAME}.json").read_text())["status"])


def test_a_workspace_mounts_with_its_sessions_credentials_markers_and_staging(host: Host) -> None:
    manager, ref = mounted(host)
    assert host.runner.shared == [host.root / "data" / "volumes"]
    assert host.minted == [SID]
    assert sorted(host.store.markers) == [f"sessions/{SID}/", f"sessions/{SID}/artifacts/", f"sessions/{SID}/uploads/"]
    [(target, credentials)] = host.mounter.targets
    assert (target.mountpoint, target.uid, target.gid) == (manager.mountpoint(NAME), UID, UID)
    assert target.staging.image == host.staging.taken[0] and credentials.access_key == "ASIAABC1"
    assert host.runner.last_env == {"AWS_ACCESS_KEY_ID": "ASIAABC1"}  # the session's key, in the environment only
    assert manager.mountpoint(NAME).stat().st_uid == UID  # the container may see it before the mount
    assert saved_status(host) == "mounted"
    # The last caller leaves: the mount comes down, the mounter ends, the staging area goes.
    manager.unmount(NAME, "container-1")
    state = manager.get(NAME)
    assert (state.status, state.pid, state.staging) == ("unmounted", 0, "")
    assert not ref.alive() and host.staging.released == host.staging.taken
    manager.remove(NAME)
    assert not (host.root / "state" / f"{NAME}.json").exists() and not manager.mountpoint(NAME).parent.exists()


def test_a_workspace_mounted_twice_is_torn_down_only_when_the_last_caller_leaves(host: Host) -> None:
    manager, ref = mounted(host)
    manager.mount(NAME, "container-2")
    manager.unmount(NAME, "container-1")
    assert manager.get(NAME).status == "mounted" and ref.alive()
    manager.unmount(NAME, "container-2")
    assert manager.get(NAME).status == "unmounted" and not ref.alive()


@pytest.mark.parametrize("failure", ["mounter exits", "credentials refused"])
def test_a_failed_mount_says_why_and_leaves_nothing(host: Host, failure: str) -> None:
    if failure == "mounter exits":
        host.mounter.argv = [sys.executable, "-c", "raise SystemExit(3)"]
        reason = "mounter exited (status 3) before mounting"
    else:
        host.mint_error = VolumeError("cannot mint credentials for session abc: AccessDenied")
        reason = "cannot mint credentials for session abc: AccessDenied"
    manager = host.service()
    manager.create(NAME, OPTIONS)
    state = manager.wait(NAME)
    assert (state.status, state.error, state.staging, state.pid) == ("failed", reason, "", 0)
    assert host.staging.released == host.staging.taken and saved_status(host) == "failed"
    with pytest.raises(VolumeError, match=re.escape(f"cannot be mounted: {reason}")):
        manager.mount(NAME, "container-1")
    manager.remove(NAME)


def test_a_mounter_that_dies_while_mounted_fails_its_volume(host: Host) -> None:
    manager, ref = mounted(host)
    host.runner.procs[manager.mountpoint(NAME)].kill()
    poll_until(lambda: manager.get(NAME).status == "failed" or None, 5, AssertionError)
    assert manager.get(NAME).error.startswith("local exited (status -9) while mounted")
    assert saved_status(host) == "failed"


def test_a_drain_that_fails_keeps_the_mount_the_mounter_and_the_staging_area(host: Host) -> None:
    host.mounter.control, host.mounter.drains = "127.0.0.1:1 login", "fail"
    manager, ref = mounted(host)
    manager.unmount(NAME, "container-1")
    state = manager.get(NAME)
    assert state.status == "failed"
    assert state.undrained.startswith("not every write reached S3: 2 uploads still pending")
    assert ref.alive() and host.runner.is_mounted(manager.mountpoint(NAME)) and host.staging.released == []
    ok, undrained = manager.wait_released(SID, 1)
    assert ok and undrained == [f"{NAME}: {state.undrained}"]  # a stop reports it
    with pytest.raises(VolumeError, match="keeps its data on this host: not every write reached S3"):
        manager.remove(NAME)
    # Once the store takes the writes, the volume goes like any other.
    host.mounter.drains = "ok"
    manager.remove(NAME)
    assert not ref.alive() and host.staging.released == host.staging.taken


def test_files_the_store_refuses_are_judged_by_the_services_own_view_of_the_store(host: Host) -> None:
    host.mounter.control, host.mounter.drains = "127.0.0.1:1 login", "held"
    manager, _ref = mounted(host)
    manager.unmount(NAME, "container-1")
    assert manager.get(NAME).status == "failed"  # the store takes the key: the file waits, kept
    [(session, [held])] = host.store.refused
    assert (session, held.path) == (SID, "odd\nname")


def test_a_restarted_service_adopts_live_mounts_and_fails_the_rest(host: Host) -> None:
    first, ref = mounted(host)
    second = host.service()
    state = second.get(NAME)
    assert (state.status, state.process, state.refs) == ("mounted", ref, ["container-1"])
    assert host.staging.kept == {host.staging.taken[0]}  # the live area is kept, spares go
    # The new instance watches the adopted mounter, and tears it down as its own.
    second.unmount(NAME, "container-1")
    assert second.get(NAME).status == "unmounted" and not ref.alive()


def test_an_adopted_mounter_is_watched_by_the_new_instance(host: Host) -> None:
    first, ref = mounted(host)
    first.workspaces.watcher.forget(ref)  # the first instance is gone
    second = host.service()
    host.runner.procs[second.mountpoint(NAME)].kill()
    poll_until(lambda: second.get(NAME).status == "failed" or None, 5, AssertionError)
    assert second.get(NAME).error.startswith(
        "local exited (status unknown: a previous instance started it) while mounted")


def test_a_mounter_that_died_while_the_service_was_down_fails_its_volume(host: Host) -> None:
    first, ref = mounted(host)
    first.workspaces.watcher.forget(ref)  # the service is down: nobody sees the mounter end
    proc = host.runner.procs.pop(first.mountpoint(NAME))
    proc.kill()
    proc.wait()
    second = host.service()
    assert second.get(NAME).status == "failed"
    assert second.get(NAME).error == "local ended while the volume service was not running"


def test_a_volume_left_mounting_fails_and_gives_its_staging_area_back(host: Host) -> None:
    gate = threading.Event()
    first = host.service()
    host.mounter.verify = lambda control, timeout: gate.wait(5) and None  # type: ignore[method-assign]
    first.create(NAME, OPTIONS)
    poll_until(lambda: saved_status(host) == "mounting" and bool(host.staging.taken) or None, 5, AssertionError)
    time.sleep(0.2)
    second = host.service()  # the first "stopped" while mounting
    gate.set()
    state = second.get(NAME)
    assert (state.status, state.error) == ("failed", "the volume service stopped while mounting")
    assert host.staging.kept == set()  # its area is not kept: the pool discards it as a spare
    first.wait(NAME)


def test_a_sync_asks_the_mounter_of_each_live_workspace_of_the_session(host: Host) -> None:
    with pytest.raises(VolumeNotFound, match="no workspace of session abc is mounted on this node"):
        host.service().sync(SID, 5)
    manager, _ref = mounted(host)
    manager.sync(SID, 5)
    assert host.mounter.synced == 1
    host.mounter.drains = "fail"
    with pytest.raises(MountError, match="2 uploads still pending"):
        manager.sync(SID, 5)
    host.runner.procs[manager.mountpoint(NAME)].kill()
    poll_until(lambda: manager.get(NAME).status == "failed" or None, 5, AssertionError)
    with pytest.raises(VolumeError, match=f"the workspace {NAME} is failed: local exited"):
        manager.sync(SID, 5)


@pytest.mark.parametrize("recovery", ["works", "fails"])
def test_what_a_dead_mounter_left_is_recovered_before_its_staging_area_goes(host: Host, recovery: str) -> None:
    host.mounter.control = "127.0.0.1:1 login"
    manager, ref = mounted(host)
    host.runner.procs[manager.mountpoint(NAME)].kill()
    poll_until(lambda: manager.get(NAME).status == "failed" or None, 5, AssertionError)
    host.mounter.drains = "fail" if recovery == "fails" else "held"  # the drain cannot reach a dead process
    host.store.refuses_all = False
    manager.unmount(NAME, "container-1")
    [(target, credentials)] = host.mounter.recovered
    assert target.staging.image == host.staging.taken[0] and credentials.access_key == "ASIAABC2"
    assert host.minted == [SID, SID]  # fresh credentials: the dead process's may have expired
    state = manager.get(NAME)
    if recovery == "works":
        assert host.staging.released == host.staging.taken and state.undrained == ""
    else:
        assert host.staging.released == [] and "the recovery could not send 2 files" in state.undrained


def test_a_leftover_staging_area_with_a_sync_index_is_never_removed_at_start(tmp_path: Path) -> None:
    """After a host restart no live volume claims a local-first workspace's image; its files may
    not all be in S3, so the pool keeps it and names it (the service sends it to S3 first), and
    discards only plain spares."""
    from provisioning.volumed.staging import StagingPool

    root = tmp_path / "staging"
    root.mkdir()
    for name in ("spare", "workspace", "live"):
        (root / f"{name}.img").write_bytes(b"")
    (root / "workspace.index.json").write_text("{}")
    orphans = StagingPool(root, "1g", spares=0).start({root / "live.img"})
    assert sorted(p.name for p in root.iterdir()) == ["live.img", "workspace.img", "workspace.index.json"]
    assert orphans == [root / "workspace.img"]


SCOPED = dataclasses.replace(SETTINGS, scoped_credentials=True, session_lifetime=3600,
                             sts_role_arn="arn:aws:iam::000000000000:role/unit").validated()


def test_credentials_are_renewed_at_half_life_for_a_mounter_that_takes_them(host: Host) -> None:
    host.settings, host.mounter.renews = SCOPED, True
    manager, _ref = mounted(host)
    assert manager.workspaces.renew_due() == [] and host.minted == [SID]  # fresh: not due for 30 minutes
    assert manager.workspaces.renew_due(force=True) == [NAME]  # SIGHUP: every one, now
    assert [c.access_key for c in host.mounter.renewed] == ["ASIAABC2"] and host.minted == [SID, SID]
    assert manager.workspaces.renew_due() == []  # just renewed
    # A restarted service cannot know when the live mounter's credentials were minted: at once.
    second = host.service()
    assert second.workspaces.renew_due() == [NAME]
    assert second.workspaces.renew_due() == []
    second.unmount(NAME, "container-1")
    assert second.workspaces.renew_due(force=True) == []  # gone with its mount


def test_a_failed_renewal_is_logged_with_the_reason_and_tried_again(host: Host) -> None:
    host.settings, host.mounter.renews = SCOPED, True
    manager, _ref = mounted(host)
    logged: list[str] = []
    manager.workspaces._log = logged.append
    host.mint_error = VolumeError("cannot mint credentials for session abc: InvalidArgument: duration too long")
    assert manager.workspaces.renew_due(force=True) == []
    assert logged == [f"{NAME}: credentials not renewed (tried again shortly): cannot mint credentials for "
                      "session abc: InvalidArgument: duration too long"]
    host.mint_error = None
    host.mounter.renew_error = "the workspace's sync process did not take the fresh credentials"
    assert manager.workspaces.renew_due(force=True) == []
    host.mounter.renew_error = ""
    assert manager.workspaces.renew_due(force=True) == [NAME]


def test_nothing_is_renewed_for_a_mounter_that_reads_its_keys_once_or_for_the_parent_key(host: Host) -> None:
    host.settings = SCOPED
    manager, _ref = mounted(host)  # the fake mounter as s3fs: renews is False
    assert manager.workspaces.renew_due(force=True) == [] and host.minted == [SID]
    host.settings, host.mounter.renews = SETTINGS, True
    unscoped = host.service()
    assert unscoped.workspaces.renew_due(force=True) == []  # the parent key does not expire


def orphan(host: Host, name: str, **index: object) -> Path:
    """A staging image and its sync index, as a host restart leaves them (no volume claims it)."""
    import json

    image = host.staging.root / f"{name}.img"
    image.parent.mkdir(parents=True, exist_ok=True)
    image.write_bytes(b"")
    described = {"bucket": SETTINGS.bucket, "prefix": f"sessions/{SID}", "uid": UID, "gid": UID, "synced": {},
                 "remote": {}, **index}
    image.with_suffix(".index.json").write_text(json.dumps(described))
    return image


def test_an_orphaned_local_workspace_goes_to_s3_at_start_then_is_removed(host: Host) -> None:
    image = orphan(host, "orphan-a")
    logged: list[str] = []
    manager = VolumeManager(SETTINGS, data_dir=host.root / "data", state_dir=host.root / "state", mint=host.mint,
                            store=host.store, runner=host.runner, staging=host.staging,  # type: ignore[arg-type]
                            mounter_for=lambda _name: host.mounter, log=logged.append)
    manager.start()
    poll_until(lambda: host.staging.released or None, 5, AssertionError)
    [(target, credentials)] = host.mounter.recovered
    assert (target.session_id, target.uid, target.staging.image) == (SID, UID, image)
    assert credentials.access_key == "ASIAABC1" and host.staging.attached == [image]
    assert host.staging.released == [image]
    assert any("are in S3; removed" in line for line in logged), logged


@pytest.mark.parametrize(("index", "failure", "reason"), [
    ({"bucket": "another-bucket"}, "", "its index names the bucket 'another-bucket'"),
    ({"prefix": "elsewhere/abc"}, "", "which is no session's"),
    ({}, "fail", "the recovery could not send 2 files"),
])
def test_an_orphan_that_cannot_be_sent_is_kept_and_the_reason_logged(host: Host, index: dict[str, object],
                                                                     failure: str, reason: str) -> None:
    orphan(host, "orphan-b", **index)
    host.mounter.drains = failure
    logged: list[str] = []
    manager = VolumeManager(SETTINGS, data_dir=host.root / "data", state_dir=host.root / "state", mint=host.mint,
                            store=host.store, runner=host.runner, staging=host.staging,  # type: ignore[arg-type]
                            mounter_for=lambda _name: host.mounter, log=logged.append)
    manager.start()
    poll_until(lambda: [line for line in logged if "kept" in line] or None, 5, AssertionError)
    assert host.staging.released == [] and reason in " ".join(logged), logged
