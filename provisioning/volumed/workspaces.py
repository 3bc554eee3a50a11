"""Workspace volumes: one mount per session (the local-first tree or s3fs: ``mounters``) of
``BUCKET:/sessions/<id>``, with the session's own scoped credentials and a capped staging area.

  mount     credentials and the prefix's markers (in parallel), a staging area from the pool,
            the mounter, its mount, and a real round trip through it (the probe);
  teardown  drain (every write in S3: s3fs has nothing pending, the local sync process is
            asked until its uploads are done), unmount, wait for the mounter to exit, remove the staging area.
            A drain that fails keeps the staging area and marks the volume failed: nothing is
            deleted that did not reach S3 (files the store refuses for good go to the
            quarantine first);
  exited    a mounter that ends on its own fails its volume (and so its session);
  recover   after a restart of the service: live mounts keep serving, the rest fail;
  renew     fresh credentials for a live mount whose mounter takes them (``local``), once half
            their lifetime has passed (at once for one a previous instance mounted).

Each host-facing part is a seam given to the constructor (the runner that starts and unmounts
mounter processes, the staging areas, the store, the credentials), so that all of this can be
driven without FUSE, loop devices or S3 (tests/unit/test_workspaces.py)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .. import facts, validation
from ..config import Credentials, ValidSettings
from ..errors import SandboxHostError
from ..procs import ProcessRef
from ..validation import SessionId
from . import fuseproc, mounters
from .fuseproc import MountError
from .quarantine import Quarantine
from .staging import Staging, size_bytes
from .state import StateFiles, VolumeError, VolumeState
from .store import ServiceStore

MOUNT_TIMEOUT = 30.0
EXIT_TIMEOUT = 120.0  # s3fs uploads what is pending before it exits: allow for a large last file


class Runner(Protocol):
    """Starts mounter processes and takes their mounts down (``fuseproc``, on a real host)."""

    def start(self, argv: list[str], secrets_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]: ...

    def wait_mounted(self, proc: subprocess.Popen[bytes], mountpoint: Path, log: Path, timeout: float) -> None: ...

    def unmount(self, mountpoint: Path) -> None: ...

    def is_mounted(self, path: Path) -> bool: ...

    def share(self, path: Path) -> None: ...


class StagingAreas(Protocol):
    """Capped host disk for a session's mounter (``staging.StagingPool``, on a real host)."""

    def start(self, keep: set[Path]) -> list[Path]: ...

    def take(self) -> Staging: ...

    def attach(self, image: Path) -> Staging: ...

    def release(self, image: Path) -> None: ...


Mint = Callable[[ValidSettings, SessionId], Credentials]


class Workspaces:
    def __init__(self, settings: ValidSettings, root: Path, files: StateFiles, *, store: ServiceStore,
                 staging: StagingAreas, quarantine: Quarantine, mint: Mint,
                 mounter_for: Callable[[str], mounters.Mounter], runner: Runner, log: Callable[[str], None]) -> None:
        self.settings = settings
        self.root = root
        self.files = files
        self.store = store
        self.quarantine = quarantine
        self.mint = mint
        self.mounter_for = mounter_for
        self.runner = runner
        self._log = log
        self.staging = staging
        self._lock = threading.Lock()
        self._live: dict[ProcessRef, tuple[VolumeState, subprocess.Popen[bytes] | None]] = {}
        self._minted: dict[str, float] = {}  # volume -> when its mounter's credentials were minted (monotonic)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="volumes")
        self.watcher = fuseproc.Watcher(self._exited)

    def mountpoint(self, name: str) -> Path:
        return self.root / name / "workspace"

    def prepare(self, state: VolumeState) -> None:
        """The mount point, owned by the session's uid: the container may see it before the
        mounter mounts over it."""
        mountpoint = self.mountpoint(state.name)
        mountpoint.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chown(mountpoint, state.uid, state.gid)

    def remove_dirs(self, name: str) -> None:
        for path in (self.mountpoint(name), self.mountpoint(name).parent):
            with contextlib.suppress(OSError):
                path.rmdir()

    # -- mount --------------------------------------------------------------------------------
    def mount(self, state: VolumeState) -> None:
        """Mount the volume; it ends ``mounted``, or ``failed`` with the reason and nothing left
        behind. The state is saved either way."""
        started = time.monotonic()
        name = state.name
        mountpoint = self.mountpoint(name)
        log = self.files.log_path(name)
        proc: subprocess.Popen[bytes] | None = None
        try:
            sid = validation.session_id(state.session_id)
            prefix = facts.session_prefix(sid)
            minted_at = time.monotonic()
            minted = self._pool.submit(self.mint, self.settings, sid)
            markers = [self._pool.submit(self.store.put_marker, f"{prefix}/{area}")
                       for area in ("", *(f"{a}/" for a in facts.AREAS))]
            staging = self.staging.take()
            state.staging = str(staging.image)
            credentials = minted.result()
            for marker in markers:
                marker.result()
            mounter = self.mounter_for(state.mounter)
            target = mounters.MountTarget(sid, mountpoint, state.uid, state.gid, staging,
                                          size_bytes(self.settings.staging_size))
            command = mounter.command(self.settings, target, credentials)
            proc = self.runner.start(command.argv, command.env, log)
            self.runner.wait_mounted(proc, mountpoint, log, MOUNT_TIMEOUT)
            mounter.verify(command.control, MOUNT_TIMEOUT)
            self._probe(mountpoint, proc, log)
            ref = ProcessRef.of(proc.pid)
            if ref is None:
                raise MountError(f"{state.mounter} exited right after mounting: {fuseproc.log_tail(log)}")
            state.control = command.control
            state.pid, state.start_time = ref.pid, ref.start_time
            state.status, state.error = "mounted", ""
            self._minted[name] = minted_at
            self._watch(ref, state, proc)
            self._log(f"{name}: mounted in {time.monotonic() - started:.3f}s ({state.mounter} pid {proc.pid})")
        except Exception as exc:  # noqa: BLE001 - every failure ends as a failed volume with its reason
            reason = str(exc) if isinstance(exc, SandboxHostError) else f"{type(exc).__name__}: {exc}"
            if proc is not None:
                self.runner.unmount(mountpoint)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._release_staging(state)
            state.status, state.error = "failed", reason
            self._log(f"{name}: mount failed: {reason}")
        finally:
            self.files.save(state)

    def _probe(self, mountpoint: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
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
                                 f"{fuseproc.log_tail(log)}") from None
            raise MountError(f"the workspace is mounted but not usable ({exc.strerror or exc}): "
                             f"{fuseproc.log_tail(log)}") from None

    def sync(self, state: VolumeState, timeout: float) -> None:
        """Every write made before the call in S3 (the mounter's ``sync``), the session running."""
        if state.status != "mounted":
            why = f": {state.error}" if state.error else ""
            raise VolumeError(f"the workspace {state.name} is {state.status}{why}")
        self.mounter_for(state.mounter).sync(state.control, timeout)

    # -- teardown -----------------------------------------------------------------------------
    def teardown(self, state: VolumeState) -> bool:
        """Drain (every write in S3), unmount, wait for the mounter to exit (s3fs uploads what
        is pending first); then the staging area. A mounter that keeps writes back (local,
        which has a ``control``) and cannot show them drained keeps its mount, its process and
        the staging area as they are: the volume fails with the reason, and False is returned.
        Files the store refuses for good are the exception: their bytes go to the quarantine,
        the teardown completes, and ``undrained`` names them (a stop reports it)."""
        log = self.files.log_path(state.name)
        ref = state.process
        if state.control:
            try:
                try:
                    refused = self.mounter_for(state.mounter).drain(
                        state.control, facts.DRAIN_TIMEOUT, lambda held: self.store.refuses(state.session_id, held))
                except MountError:
                    if ref is not None and ref.alive():
                        raise
                    self._recover(state)  # the mounter died: what it left goes to S3 without it
                    refused = []
                kept = self.quarantine.keep(state.name, refused)
            except MountError as exc:
                state.status = "failed"
                state.error = state.undrained = (f"not every write reached S3: {exc} (staging area {state.staging}; "
                                                 f"last error: {fuseproc.log_tail(log)})")
                self._log(f"{state.name}: {state.error}")
                return False
            if kept:
                state.undrained = kept
                self._log(f"{state.name}: {kept}")
        proc = None
        self._minted.pop(state.name, None)
        if ref is not None:
            self.watcher.forget(ref)
            with self._lock:
                proc = self._live.pop(ref, (state, None))[1]
        self.runner.unmount(self.mountpoint(state.name))

        def reap(_pid: int) -> None:  # a child of this instance stays a zombie, and alive, until waited for
            if proc is not None:
                proc.poll()

        if ref is not None and not fuseproc.wait_exit(ref, EXIT_TIMEOUT, reap):
            self._log(f"{state.name}: {state.mounter} {ref.pid} still running {EXIT_TIMEOUT:g}s after unmount; "
                      "killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(ref.pid, 9)
        if proc is not None:
            proc.wait()
        state.pid = state.start_time = 0
        state.control = ""
        self._release_staging(state)
        return True

    def _recover(self, state: VolumeState) -> None:
        """The mounter's ``recover``, with fresh credentials (the dead process's may have expired)."""
        if not state.staging:
            raise MountError("no staging area is left to recover from")
        sid = validation.session_id(state.session_id)
        image = Path(state.staging)
        target = mounters.MountTarget(sid, self.mountpoint(state.name), state.uid, state.gid,
                                      Staging(image, image.with_suffix("")), size_bytes(self.settings.staging_size))
        self._log(f"{state.name}: {state.mounter} is gone; recovering what it left")
        self.mounter_for(state.mounter).recover(self.settings, target, self.mint(self.settings, sid),
                                                facts.DRAIN_TIMEOUT)
        self._log(f"{state.name}: recovered: everything it held is in S3")

    def _release_staging(self, state: VolumeState) -> None:
        if state.staging:
            self.staging.release(Path(state.staging))
        state.staging = ""

    # -- the mounter's end --------------------------------------------------------------------
    def _watch(self, ref: ProcessRef, state: VolumeState, proc: subprocess.Popen[bytes] | None) -> None:
        with self._lock:
            self._live[ref] = (state, proc)
        self.watcher.watch(ref)

    def _exited(self, ref: ProcessRef) -> None:
        """The mounter ended on its own: the volume (and so its session) has failed."""
        with self._lock:
            state, proc = self._live.pop(ref, (None, None))
        status = proc.wait() if proc is not None else None
        if state is not None and state.status == "mounted":
            state.status = "failed"
            how = f"status {status}" if status is not None else "status unknown: a previous instance started it"
            state.error = (f"{state.mounter} exited ({how}) while mounted: "
                           f"{fuseproc.log_tail(self.files.log_path(state.name)) or 'no message'}")
            self._log(f"{state.name}: {state.error}")
            self.files.save(state)

    def recover_orphan(self, image: Path) -> bool:
        """A local-first workspace's filesystem that no volume claims (the host restarted, or the
        service's records were lost, with a session's files on it): its files go to S3 (a
        one-shot sync process from its index, with fresh credentials), then it is removed.
        Kept, and logged with the reason, if that cannot be done. True once it is in S3."""
        staging = Staging(image, image.with_suffix(""))
        try:
            described = json.loads(staging.index.read_text())
            if described.get("bucket") != self.settings.bucket:
                raise MountError(f"its index names the bucket {described.get('bucket')!r}, "
                                 f"not {self.settings.bucket!r}")
            area, _, sid_text = str(described.get("prefix", "")).partition("/")
            sid = validation.session_id(sid_text)
            if facts.session_prefix(sid) != f"{area}/{sid_text}":
                raise MountError(f"its index names the prefix {described.get('prefix')!r}, which is no session's")
            uid, gid = int(described["uid"]), int(described["gid"])
            staging = self.staging.attach(image)
            target = mounters.MountTarget(sid, self.root / f"orphan-{image.stem}" / "workspace", uid, gid, staging,
                                          size_bytes(self.settings.staging_size))
            self._log(f"{image.name}: session {sid}'s files, left by a restart; sending what S3 lacks")
            self.mounter_for("local").recover(self.settings, target, self.mint(self.settings, sid),
                                              facts.DRAIN_TIMEOUT)
        except (SandboxHostError, OSError, ValueError, KeyError, TypeError) as exc:
            self._log(f"{image.name}: kept (a session's files that may not all be in S3): {exc}")
            return False
        self.staging.release(image)
        self._log(f"{image.name}: session {sid}'s files are in S3; removed")
        return True

    # -- credentials --------------------------------------------------------------------------
    def renew_due(self, force: bool = False) -> list[str]:
        """Fresh credentials for every live workspace whose mounter takes them and whose own
        are half their lifetime old (every one, with ``force``). A failure is logged with the
        store's answer and tried again at the next look (the old ones still hold for the other
        half). Returns the volumes renewed."""
        if not self.settings.scoped_credentials:
            return []  # the parent key itself: nothing expires
        with self._lock:
            live = [state for state, _proc in self._live.values() if state.status == "mounted"]
        renewed = []
        for state in live:
            mounter = self.mounter_for(state.mounter)
            minted_at = self._minted.get(state.name)
            if not mounter.renews or minted_at is None:
                continue
            if not force and time.monotonic() - minted_at < self.settings.session_lifetime / 2:
                continue
            began = time.monotonic()
            try:
                credentials = self.mint(self.settings, validation.session_id(state.session_id))
                mounter.renew(state.control, credentials, timeout=10)
            except SandboxHostError as exc:
                self._log(f"{state.name}: credentials not renewed (tried again shortly): {exc}")
                continue
            if state.name in self._minted:  # not torn down meanwhile
                self._minted[state.name] = began
            renewed.append(state.name)
            self._log(f"{state.name}: credentials renewed in {time.monotonic() - began:.3f}s")
        return renewed

    # -- restart ------------------------------------------------------------------------------
    def recover(self, state: VolumeState) -> None:
        """A volume a previous instance of the service left: a live mount keeps serving (and is
        watched again); one whose mounter died meanwhile, or that was still mounting, fails."""
        ref = state.process
        if state.status == "mounted":
            if ref is not None and ref.alive() and self.runner.is_mounted(self.mountpoint(state.name)):
                self._minted[state.name] = -float("inf")  # when is unknown: renewed at the first look
                self._watch(ref, state, None)
            else:
                state.status, state.error = "failed", f"{state.mounter} ended while the volume service was not running"
        elif state.status == "mounting":
            self.runner.unmount(self.mountpoint(state.name))
            self._release_staging(state)
            state.status, state.error = "failed", "the volume service stopped while mounting"
