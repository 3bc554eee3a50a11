"""The volumes the host service manages: one per session, each a FUSE mount (s3fs, or rclone:
``mounters``) of ``BUCKET:/sessions/<id>`` with its own scoped credentials and staging area.

Lifecycle, as Docker drives it through the plugin protocol:
  Create  -> the mount starts in the background (credentials, markers, staging, s3fs, probe);
  Mount   -> counts the caller and returns the mount point at once, mounted or not yet: the
             directory lies in a shared mount, so an s3fs mount made there after Docker bound
             it propagates into the container (a slave). The mount thus overlaps the
             container's creation and start, and the executor's own start; the executor serves
             nothing until /workspace is a live FUSE mount, and the launcher asks Get for a
             failure while it waits;
  Unmount -> when the last caller left: drain (every write in S3: s3fs has nothing pending,
             rclone is asked until its uploads are done), unmount, wait for the mounter to
             exit, remove the staging area. A drain that fails keeps the staging area and
             marks the volume failed: nothing is deleted that did not reach S3 (files the
             store refuses for good are copied to the service's quarantine first);
  Remove  -> forgets the volume.
State is written to ``SERVICE_STATE_DIR`` so that a restarted service adopts the mounts that
outlived it (the mounter runs in a session of its own and is not stopped with the service).
"""

from __future__ import annotations

import builtins  # list[...] in VolumeManager, whose own list() shadows it there
import concurrent.futures
import contextlib
import dataclasses
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import boto3
import botocore.config
import botocore.exceptions

from .. import credentials as creds_mod
from .. import facts, hostinfo, mountinfo, validation
from ..config import Credentials, ValidSettings
from ..errors import SandboxHostError
from ..escape import printable
from ..polling import poll_until
from ..procs import ProcessRef
from ..resources import executor_app_dir
from ..validation import SessionId
from . import fuseproc, mounters
from .fuseproc import MountError
from .staging import Staging, StagingPool, is_mounted, size_bytes

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 120.0  # s3fs uploads what is pending before it exits: allow for a large last file
# Files the store refuses for good (rclone holds them back) are kept here, under the service's data
# directory (root's, 0700, on disk: they outlive the volume and a reboot); at most this much in all.
QUARANTINE = "quarantine"
QUARANTINE_MAX_BYTES = 256 << 20


class VolumeError(SandboxHostError):
    kind = "volume"


class VolumeNotFound(VolumeError):
    kind = "not-found"


class SealConflict(VolumeError):
    kind = "sealed"


@dataclass
class VolumeState:
    name: str
    session_id: str
    uid: int
    gid: int
    status: str = "mounting"  # mounting | mounted | failed | unmounted
    error: str = ""
    refs: list[str] = field(default_factory=list)
    pid: int = 0
    start_time: int = 0
    staging: str = ""  # the staging image's path
    kind: str = "workspace"  # or "control": the executor's app and socket (swarm sessions)
    executor: str = ""  # control: "pid start_time" of the executor, once sealed
    ephemeral: bool = False  # removed from Docker once unmounted (a swarm task's volumes)
    created: float = field(default_factory=time.time)
    mounter: str = "s3fs"  # one of facts.MOUNTERS
    control: str = ""  # what the mounter's drain needs (rclone: its remote control's address and login)
    undrained: str = ""  # why writes of this volume did not all reach S3 (a failed drain, files kept aside)

    @property
    def process(self) -> ProcessRef | None:
        return ProcessRef(self.pid, self.start_time) if self.pid else None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class VolumeOptions:
    session_id: SessionId
    uid: int
    gid: int
    ephemeral: bool = False
    mounter: str = "s3fs"


def parse_options(name: str, opts: dict[str, Any] | None, uid_range: tuple[int, int]) -> VolumeOptions:
    """``session=<id>,uid=<n>,gid=<n>[,mounter=s3fs|rclone]``; the name must be ``sandbox-ws-<id>.<uid>``; the ids must
    lie in the sandbox range and belong to no host account."""
    opts = dict(opts or {})
    unknown = sorted(set(opts) - {"session", "uid", "gid", "ephemeral", "mounter"})
    if unknown:
        raise validation.ValidationError("volume option", ",".join(unknown),
                                         "known options: session, uid, gid, ephemeral, mounter")
    sid = validation.session_id(str(opts.get("session", "")))
    ids = []
    for key in ("uid", "gid"):
        try:
            value = int(str(opts.get(key, "")), 10)
        except ValueError:
            raise validation.ValidationError(f"volume option {key}", opts.get(key), "give a number") from None
        if not uid_range[0] <= value <= uid_range[1]:
            raise validation.ValidationError(f"volume option {key}", value,
                                             f"must lie in the sandbox range {uid_range[0]}-{uid_range[1]}")
        ids.append(value)
    check_not_an_account(*ids)
    allowed = (facts.volume_name(sid, ids[0]), facts.control_volume_name(sid, ids[0]))
    if name not in allowed:
        raise validation.ValidationError("volume name", name,
                                         f"must be {' or '.join(allowed)} for session {sid}, uid {ids[0]}")
    ephemeral = str(opts.get("ephemeral", "false")).lower()
    if ephemeral not in ("true", "false"):
        raise validation.ValidationError("volume option ephemeral", opts.get("ephemeral"), "true or false")
    mounter = validation.choice("volume option mounter", str(opts.get("mounter", "s3fs")), facts.MOUNTERS)
    return VolumeOptions(sid, ids[0], ids[1], ephemeral == "true", mounter)


def check_not_an_account(uid: int, gid: int) -> None:
    for lookup, kind, value in ((pwd.getpwuid, "user", uid), (grp.getgrgid, "group", gid)):
        try:
            lookup(value)
        except KeyError:
            continue
        raise validation.ValidationError(
            "sandbox id", value, f"is a host {kind} account; sandbox ids must be unknown to getent"
        )


class VolumeManager:
    def __init__(self, settings: ValidSettings, *, data_dir: Path, state_dir: Path, s3fs_binary: str | None = None,
                 mint: Callable[[ValidSettings, SessionId], Credentials] | None = None,
                 docker_remove: Callable[[str], None] | None = None,
                 log: Callable[[str], None] = lambda _m: None,
                 quarantine_max_bytes: int = QUARANTINE_MAX_BYTES) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.state_dir = state_dir
        self.s3fs_binary = s3fs_binary or hostinfo.s3fs_binary() or "s3fs"
        self._mounters: dict[str, mounters.Mounter] = {}
        self._docker_remove = docker_remove
        self._log = log
        self._quarantine_max = quarantine_max_bytes
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()
        self._quarantine_lock = threading.Lock()  # teardowns run side by side: one measures the room at a time
        self._volumes: dict[str, VolumeState] = {}
        self._ready: dict[str, threading.Event] = {}
        self._vol_locks: dict[str, threading.Lock] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}  # mounter children of this instance
        self._sts = creds_mod.sts_client(settings) if settings.scoped_credentials else None
        self._mint = mint or (lambda s, sid: creds_mod.mint(s, sid, self._sts))
        self._s3 = _s3_client(settings, settings.credentials)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="volumes")
        for path in (data_dir, data_dir / "volumes", state_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)  # host users may not even traverse to a workspace
        self.watcher = fuseproc.Watcher(self._on_exit)
        self.staging_pool: StagingPool | None = None

    def start(self) -> None:
        """Share the mount points' parent, adopt what a previous instance left, then start
        making spare staging areas."""
        share(self.data_dir / "volumes")
        self.adopt()
        in_use = {Path(v.staging) for v in self.list() if v.staging}
        self.staging_pool = StagingPool(self.data_dir / "staging", self.settings.staging_size,
                                        keep=in_use, log=self._log)

    # -- paths --------------------------------------------------------------------------------
    def mountpoint(self, name: str) -> Path:
        return self.data_dir / "volumes" / name / "workspace"

    @staticmethod
    def staging(state: VolumeState) -> Staging | None:
        if not state.staging:
            return None
        image = Path(state.staging)
        return Staging(image, image.with_suffix(""))

    def mounter(self, name: str) -> mounters.Mounter:
        with self._lock:
            if name not in self._mounters:
                self._mounters[name] = mounters.make(name, self.s3fs_binary)
            return self._mounters[name]

    def _log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    def _save(self, state: VolumeState) -> None:
        """Write the volume's state file atomically. Serialised: the mount's own thread and a
        Docker call may save one volume at once, and two writers of one temporary file made the
        second rename fail (FileNotFoundError in Mount, seen with sessions created at once)."""
        path = self.state_dir / f"{state.name}.json"
        tmp = path.with_suffix(".json.tmp")
        with self._save_lock:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(state.to_json(), out)
            os.replace(tmp, path)

    def _lock_for(self, name: str) -> threading.Lock:
        with self._lock:
            return self._vol_locks.setdefault(name, threading.Lock())

    # -- queries ------------------------------------------------------------------------------
    def get(self, name: str) -> VolumeState:
        with self._lock:
            state = self._volumes.get(name)
        if state is None:
            raise VolumeNotFound(f"no volume {name}")
        return state

    def list(self) -> list[VolumeState]:
        with self._lock:
            return sorted(self._volumes.values(), key=lambda v: v.name)

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self, name: str, opts: dict[str, Any] | None) -> None:
        options = parse_options(name, opts, self.settings.uid_range)
        with self._lock:
            existing = self._volumes.get(name)
            if existing is not None:
                if ((existing.session_id, existing.uid, existing.gid) != (options.session_id, options.uid, options.gid)
                        or (existing.kind == "workspace" and existing.mounter != options.mounter)):
                    raise VolumeError(f"volume {name} exists with other options")
                return
            kind = "control" if name.startswith(facts.CONTROL_VOLUME_PREFIX) else "workspace"
            state = VolumeState(name, options.session_id, options.uid, options.gid, kind=kind,
                                ephemeral=options.ephemeral, mounter=options.mounter)
            self._volumes[name] = state
            if kind == "workspace":
                self._ready[name] = threading.Event()
        if state.kind == "control":
            self._make_control(state)
            state.status = "mounted"
            self._save(state)
            return
        try:
            self.mounter(state.mounter).check()
        except MountError:
            with self._lock:
                self._volumes.pop(name, None)
                self._ready.pop(name, None)
            raise
        self._prepare_mountpoint(state)
        self._save(state)
        threading.Thread(target=self._mount_now, args=(state,), name=f"mount-{name}", daemon=True).start()

    def mount(self, name: str, caller: str) -> Path:
        state = self.get(name)
        if state.kind == "control":
            with self._lock_for(name):
                if caller not in state.refs:
                    state.refs.append(caller)
                self._save(state)
            return self.control_dir(name)
        with self._lock_for(name):
            if state.status == "unmounted":  # mounted again after an unmount (a restarted container)
                self._prepare_mountpoint(state)
                state.status, state.error = "mounting", ""
                self._ready[name] = threading.Event()
                threading.Thread(target=self._mount_now, args=(state,), daemon=True).start()
            if state.status == "failed":
                raise VolumeError(f"volume {name} cannot be mounted: {state.error}")
            if caller not in state.refs:
                state.refs.append(caller)
            self._save(state)
        return self.mountpoint(name)

    # -- control volumes (swarm sessions) ----------------------------------------------------
    def control_dir(self, name: str) -> Path:
        return self.data_dir / "control" / name

    def _make_control(self, state: VolumeState) -> None:
        """app/: the executor, root's and read-only to the session; sock/: the session's uid may
        create the socket there until the volume is sealed (before any user code runs)."""
        root = self.control_dir(state.name)
        shutil.rmtree(root, ignore_errors=True)
        (root / "app").mkdir(parents=True, mode=0o755)
        os.chmod(root.parent, 0o711)
        os.chmod(root, 0o755)
        for source in sorted(executor_app_dir().glob("*.py")):
            target = root / "app" / source.name
            shutil.copyfile(source, target)
            os.chmod(target, 0o644)
        (root / "sock").mkdir(mode=0o700)
        os.chown(root / "sock", state.uid, state.gid)

    def session_control(self, session_id: str) -> VolumeState:
        """The live control volume of a session on this node."""
        found = [v for v in self.list() if v.kind == "control" and v.session_id == session_id and v.refs]
        if not found:
            raise VolumeNotFound(f"no session {session_id} runs on this node")
        return found[-1]

    def seal(self, state: VolumeState, executor: ProcessRef) -> bool:
        """Record which process is the executor and close its socket's directory (root, 0755):
        from now on nothing in the session can replace or front the socket. Idempotent: sealing
        again to the same process changes nothing (False); to another, it is refused."""
        sock = self.control_dir(state.name) / "sock"
        with self._lock_for(state.name):
            if state.executor:
                if state.executor != executor.dump():
                    raise SealConflict(f"session {state.session_id}'s executor is sealed to process "
                                       f"{state.executor.split()[0]}, not {executor.pid}")
                return False
            os.chown(sock, 0, 0)
            os.chmod(sock, 0o755)
            state.executor = executor.dump()
            self._save(state)
        return True

    def wait_released(self, session_id: str, timeout: float) -> tuple[bool, builtins.list[str]]:
        """(released, undrained): released once no workspace of the session is mounted here
        (drained and unmounted); undrained names each of its workspaces whose writes did not all
        reach S3 (their staging areas are kept)."""
        def released() -> tuple[bool, list[str]] | None:
            mine = [v for v in self.list() if v.kind == "workspace" and v.session_id == session_id]
            if any(v.status in ("mounting", "mounted") for v in mine):
                return None
            return True, [f"{v.name}: {v.undrained}" for v in mine if v.undrained]

        try:
            return poll_until(released, timeout, TimeoutError, every=0.05)
        except TimeoutError:
            return False, []

    def collect_ephemeral(self, after: float = 120.0) -> None:
        """A swarm task that never ran (its mount failed, the node lost it) leaves volumes no
        Unmount will ever release: remove unused ephemeral ones after a while (Docker refuses
        to remove one still in use)."""
        now = time.time()
        for state in self.list():
            if state.ephemeral and not state.refs and state.status != "mounting" and now - state.created > after:
                self._forget_if_ephemeral(state)

    def _forget_if_ephemeral(self, state: VolumeState) -> None:
        """A swarm task's volumes stay in Docker's list when the task ends: remove them once
        nothing uses them (after Unmount returned: Docker calls Remove)."""
        if not state.ephemeral or state.refs or self._docker_remove is None:
            return
        threading.Thread(target=self._docker_remove, args=(state.name,), daemon=True).start()

    def wait(self, name: str, timeout: float = MOUNT_TIMEOUT + 30) -> VolumeState:
        """The volume once its mount finished (or failed)."""
        ready = self._ready.get(name)
        if ready is not None:
            ready.wait(timeout)
        return self.get(name)

    def _prepare_mountpoint(self, state: VolumeState) -> None:
        """Owned by the session's uid: the container may see it before the mounter mounts over it."""
        mountpoint = self.mountpoint(state.name)
        mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(mountpoint, state.uid, state.gid)

    def unmount(self, name: str, caller: str) -> None:
        state = self.get(name)
        if state.kind == "control":
            with self._lock_for(name):
                if caller in state.refs:
                    state.refs.remove(caller)
                self._save(state)
            self._forget_if_ephemeral(state)
            return
        if not [ref for ref in state.refs if ref != caller]:
            self.wait(name)  # a mount still in progress finishes before it is torn down
        with self._lock_for(name):
            if caller in state.refs:
                state.refs.remove(caller)
            if not state.refs and state.status in ("mounted", "failed"):
                self._teardown(state)
                if state.status == "mounted":
                    state.status = "unmounted"
            self._save(state)
        self._forget_if_ephemeral(state)

    def remove(self, name: str) -> None:
        state = self.get(name)
        with self._lock_for(name):
            if state.refs:
                raise VolumeError(f"volume {name} is in use by {len(state.refs)} container(s)")
            ready = self._ready.get(name)
            if ready is not None:
                ready.wait(MOUNT_TIMEOUT + 30)
            if state.kind == "control":
                shutil.rmtree(self.control_dir(name), ignore_errors=True)
            elif not self._teardown(state):
                self._save(state)
                raise VolumeError(f"volume {name} keeps its data on this host: {state.error}")
            with self._lock:
                self._volumes.pop(name, None)
                self._ready.pop(name, None)
            for path in (self.state_dir / f"{name}.json", self._log_path(name)):
                path.unlink(missing_ok=True)
            for path in (self.mountpoint(name), self.mountpoint(name).parent):
                with contextlib.suppress(OSError):
                    path.rmdir()

    # -- mounting -----------------------------------------------------------------------------
    def _mount_now(self, state: VolumeState) -> None:
        started = time.monotonic()
        name = state.name
        mountpoint = self.mountpoint(name)
        proc: subprocess.Popen[bytes] | None = None
        try:
            sid = validation.session_id(state.session_id)
            # In parallel: the credentials, and the prefix's markers (s3fs mounts
            # BUCKET:/sessions/<id> only when its marker exists; uploads/ and artifacts/ are
            # the layout user code finds). The staging area comes ready from the pool.
            prefix = facts.session_prefix(sid)
            minted = self._pool.submit(self._mint, self.settings, sid)
            markers = [self._pool.submit(self._put_marker, f"{prefix}/{area}")
                       for area in ("", *(f"{a}/" for a in facts.AREAS))]
            if self.staging_pool is None:
                raise VolumeError("the volume manager was not started")
            staging = self.staging_pool.take()
            state.staging = str(staging.image)
            credentials = minted.result()
            for marker in markers:
                marker.result()
            mounter = self.mounter(state.mounter)
            target = mounters.MountTarget(sid, mountpoint, state.uid, state.gid, staging,
                                          size_bytes(self.settings.staging_size))
            command = mounter.command(self.settings, target, credentials)
            proc = fuseproc.start(command.argv, command.env, self._log_path(name))
            fuseproc.wait_mounted(proc, mountpoint, self._log_path(name), MOUNT_TIMEOUT)
            mounter.verify(command.control, MOUNT_TIMEOUT)
            self._probe(mountpoint, proc, name)
            ref = ProcessRef.of(proc.pid)
            if ref is None:
                raise MountError(f"{state.mounter} exited right after mounting: "
                                 f"{fuseproc.log_tail(self._log_path(name))}")
            state.control = command.control
            with self._lock:
                self._procs[proc.pid] = proc
            state.pid, state.start_time = ref.pid, ref.start_time
            state.status, state.error = "mounted", ""
            self.watcher.watch(ref)
            self._log(f"{name}: mounted in {time.monotonic() - started:.3f}s ({state.mounter} pid {proc.pid})")
        except Exception as exc:  # noqa: BLE001 - every failure ends as a failed volume with its reason
            reason = str(exc) if isinstance(exc, SandboxHostError) else f"{type(exc).__name__}: {exc}"
            if proc is not None:
                fuseproc.unmount(mountpoint)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            leftover = self.staging(state)
            if leftover is not None:
                leftover.remove()
            state.staging = ""
            state.status, state.error = "failed", reason
            self._log(f"{name}: mount failed: {reason}")
        finally:
            self._save(state)
            ready = self._ready.get(name)
            if ready is not None:
                ready.set()

    def _put_marker(self, key: str) -> None:
        try:
            self._s3.put_object(Bucket=self.settings.bucket, Key=key, Body=b"")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise VolumeError(f"cannot write the session marker {key} at {self.settings.s3_endpoint}: {exc}") from None

    def _probe(self, mountpoint: Path, proc: subprocess.Popen[bytes], name: str) -> None:
        """Prove the mount with a real round trip (s3fs checks the store only after the mount
        appears): write, read back and remove a probe file."""
        token = secrets.token_hex(8)
        probe = mountpoint / f".sandbox-probe-{token}"
        try:
            probe.write_text(token)
            if probe.read_text() != token:
                raise OSError(0, "read back other bytes than written")
            probe.unlink()
        except OSError as exc:
            for _ in range(100):  # s3fs exits when its post-mount check fails: name that cause
                if proc.poll() is not None:
                    break
                time.sleep(0.01)
            if proc.poll() is not None:
                raise MountError(f"{fuseproc.program(proc)} exited (status {proc.returncode}) after mounting: "
                                 f"{fuseproc.log_tail(self._log_path(name))}") from None
            raise MountError(f"the workspace is mounted but not usable ({exc.strerror or exc}): "
                             f"{fuseproc.log_tail(self._log_path(name))}") from None

    def _reap(self, pid: int) -> None:
        with self._lock:
            proc = self._procs.get(pid)
        if proc is not None:
            proc.poll()

    def _teardown(self, state: VolumeState) -> bool:
        """Drain (every write in S3), unmount, wait for the mounter to exit (s3fs uploads what
        is pending first); then the staging area. A mounter that keeps writes back (rclone,
        which has a ``control``) and cannot show them drained keeps its mount, its process and
        the staging area as they are: the volume fails with the reason, and False is returned.
        Files the store refuses for good are the exception: their bytes go to the quarantine,
        the teardown completes, and ``undrained`` names them (a stop reports it)."""
        mountpoint = self.mountpoint(state.name)
        ref = state.process
        if state.control:
            try:
                refused = self.mounter(state.mounter).drain(state.control, facts.DRAIN_TIMEOUT,
                                                            lambda held: self._refuses(state, held))
                with self._quarantine_lock:
                    kept = self._quarantine(state, refused)
            except MountError as exc:
                state.status = "failed"
                state.error = state.undrained = (f"not every write reached S3: {exc} (staging area {state.staging}; "
                                                 f"last error: {fuseproc.log_tail(self._log_path(state.name))})")
                self._log(f"{state.name}: {state.error}")
                return False
            if kept:
                state.undrained = kept
                self._log(f"{state.name}: {kept}")
        if ref is not None:
            self.watcher.forget(ref)
        fuseproc.unmount(mountpoint)
        if ref is not None and not fuseproc.wait_exit(ref, EXIT_TIMEOUT, self._reap):
            self._log(f"{state.name}: {state.mounter} {ref.pid} still running {EXIT_TIMEOUT:g}s after unmount; "
                      "killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, 9)
        if ref is not None:
            with self._lock:
                proc = self._procs.pop(ref.pid, None)
            if proc is not None:
                proc.wait()
        state.pid = state.start_time = 0
        state.control = ""
        staging = self.staging(state)
        if staging is not None:
            staging.remove()
        state.staging = ""
        return True

    def _refuses(self, state: VolumeState, held: builtins.list[mounters.HeldFile]) -> bool:
        """Whether the store refuses every one of ``held`` for good: it answers a client error
        for each file's key while it takes a key of the same session right then. A store that
        does not answer or fails (connection errors, 5xx, throttling) refuses nothing: its files
        wait for it, as any write does. The service asks with its own key, not the session's: a
        session whose credentials expired is refused every key, and that is not the files' doing."""
        prefix = facts.session_prefix(state.session_id)
        if self._store_takes(f"{prefix}/.sandbox-probe-{secrets.token_hex(8)}") is not True:
            return False
        return all(self._store_takes(f"{prefix}/{item.path}") is False for item in held)

    def _store_takes(self, key: str) -> bool | None:
        """Ask the store whether it takes an object at ``key``, without writing one: start a
        multipart upload there, and abort it. True: it does; False: a client error (4xx, but
        not a timeout or throttling); None: no verdict (unreachable, a server error)."""
        try:
            upload = self._s3.create_multipart_upload(Bucket=self.settings.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            return False if 400 <= status < 500 and status not in (408, 429) else None
        except (botocore.exceptions.BotoCoreError, UnicodeError):
            return None  # unreachable; or a name that is not UTF-8 (rclone encodes those: never held)
        try:
            self._s3.abort_multipart_upload(Bucket=self.settings.bucket, Key=key, UploadId=upload["UploadId"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            self._log(f"cannot abort the probe upload at {printable(key)}: {exc}")
        return True

    def _quarantine(self, state: VolumeState, files: builtins.list[mounters.HeldFile]) -> str:
        """Copy the bytes of files the store refuses for good out of the staging area, into the
        quarantine (``<data dir>/quarantine/<volume>.<random>/<n>``, with ``index.json`` giving
        each file's name); the message that names each (escaped) and where its bytes are.
        MountError when they are not all on this host, do not fit or cannot be copied: the
        volume then keeps everything."""
        if not files:
            return ""
        names = ", ".join(f"'{printable(item.path)}'" for item in files)
        if not all(item.complete for item in files):
            raise MountError(f"the store refuses {names} for good, and the staging area holds only part of it")
        root = self.data_dir / QUARANTINE
        root.mkdir(mode=0o700, exist_ok=True)
        try:
            used, size = _tree_bytes(root), sum(item.data.stat().st_size for item in files)
        except OSError as exc:
            raise MountError(f"the store refuses {names} for good, and they cannot be measured: {exc}") from None
        if used + size > self._quarantine_max:
            raise MountError(f"the store refuses {names} for good, and their {size} bytes do not fit in {root} "
                             f"({used} of {self._quarantine_max} bytes used): make room there, then remove the volume")
        target = Path(tempfile.mkdtemp(prefix=f"{state.name}.", dir=root))  # 0700, and never one that exists
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

    def _on_exit(self, ref: ProcessRef) -> None:
        """The mounter ended on its own: the volume (and so its session) has failed."""
        with self._lock:
            match = [v for v in self._volumes.values() if v.pid == ref.pid and v.start_time == ref.start_time]
            proc = self._procs.pop(ref.pid, None)
        status = proc.wait() if proc is not None else None
        for state in match:
            if state.status == "mounted":
                state.status = "failed"
                state.error = (f"{state.mounter} exited (status {status}) while mounted: "
                               f"{fuseproc.log_tail(self._log_path(state.name)) or 'no message'}")
                self._log(f"{state.name}: {state.error}")
                self._save(state)

    # -- restart ------------------------------------------------------------------------------
    def adopt(self) -> None:
        """Take over the volumes a previous instance of the service left: live mounts keep
        serving; a mount whose mounter died meanwhile is marked failed."""
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                state = VolumeState(**data)
            except (OSError, ValueError, TypeError):
                self._log(f"ignoring unreadable state file {path}")
                continue
            ref = state.process
            if state.kind == "control":
                pass  # a directory: nothing to check
            elif state.status == "mounted" and not (ref and ref.alive() and is_mounted(self.mountpoint(state.name))):
                state.status, state.error = "failed", f"{state.mounter} ended while the volume service was not running"
            elif state.status == "mounting":
                fuseproc.unmount(self.mountpoint(state.name))
                staging = self.staging(state)
                if staging is not None:
                    staging.remove()
                state.staging = ""
                state.status, state.error = "failed", "the volume service stopped while mounting"
            with self._lock:
                self._volumes[state.name] = state
            if state.status == "mounted" and ref is not None:
                self.watcher.watch(ref)
            self._save(state)
            self._log(f"adopted {state.name} ({state.status})")


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


def share(path: Path) -> None:
    """Make ``path`` a shared mount (a bind onto itself where it is not a mount point yet), so
    that a mount made below it later reaches the containers that bound a directory there. The
    host's / may be private (no systemd), so this is never left to chance."""
    target = str(path)
    top = mountinfo.at(target)
    if top is None:
        subprocess.run(["mount", "--bind", target, target], check=True, capture_output=True)
    elif top.shared:
        return
    subprocess.run(["mount", "--make-shared", target], check=True, capture_output=True)


def _s3_client(settings: ValidSettings, credentials: Credentials) -> Any:
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint, region_name=settings.region,
        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.session_token or None,
        config=botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                                      retries={"max_attempts": 2, "mode": "standard"}),
    )
