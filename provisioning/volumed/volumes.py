"""The volumes the host service manages, as Docker drives them through the plugin protocol. Two
kinds, each in a module of its own: a session's workspace (``workspaces``: a FUSE mount of its
prefix) and, for a swarm session, its control volume (``control``: the executor's code and
socket). This module keeps the register (names, callers, readiness, the state files) and hands
each kind's work to its module.

  Create  -> a workspace's mount starts in the background;
  Mount   -> counts the caller and returns the mount point at once, mounted or not yet: the
             directory lies in a shared mount, so a mount made there after Docker bound it
             propagates into the container (a slave). The mount thus overlaps the container's
             creation and start, and the executor's own start; the executor serves nothing
             until /workspace is a live FUSE mount, and the launcher asks Get for a failure
             while it waits;
  Unmount -> when the last caller left: the workspace is torn down (its writes in S3 first);
  Remove  -> forgets the volume.
State is written to ``SERVICE_STATE_DIR`` so that a restarted service adopts the mounts that
outlived it (the mounter runs in a session of its own and is not stopped with the service).
"""

from __future__ import annotations

import builtins  # list[...] in VolumeManager, whose own list() shadows it there
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import credentials as creds_mod
from .. import hostinfo
from ..config import Credentials, ValidSettings
from ..polling import poll_until
from ..procs import ProcessRef
from ..validation import SessionId
from . import fuseproc, mounters
from .control import ControlVolumes
from .fuseproc import MountError
from .quarantine import MAX_BYTES as QUARANTINE_MAX_BYTES
from .quarantine import Quarantine
from .staging import StagingPool
from .state import (CONTROL, WORKSPACE, SealConflict, StateFiles, VolumeError, VolumeNotFound, VolumeOptions,
                    VolumeState, check_not_an_account, parse_options)
from .store import ServiceStore
from .workspaces import MOUNT_TIMEOUT, Runner, StagingAreas, Workspaces

__all__ = ["QUARANTINE", "SealConflict", "VolumeError", "VolumeManager", "VolumeNotFound", "VolumeOptions",
           "VolumeState", "check_not_an_account", "parse_options"]

# Files the store refuses for good are kept under the service's data directory (``quarantine``).
QUARANTINE = "quarantine"


class VolumeManager:
    def __init__(self, settings: ValidSettings, *, data_dir: Path, state_dir: Path, s3fs_binary: str | None = None,
                 mint: Callable[[ValidSettings, SessionId], Credentials] | None = None,
                 docker_remove: Callable[[str], None] | None = None,
                 log: Callable[[str], None] = lambda _m: None,
                 quarantine_max_bytes: int = QUARANTINE_MAX_BYTES,
                 store: ServiceStore | None = None, runner: Runner | None = None,
                 staging: StagingAreas | None = None,
                 mounter_for: Callable[[str], mounters.Mounter] | None = None) -> None:
        """The seams (``mint``, ``store``, ``runner``, ``staging``, ``mounter_for``) default to
        the real host's: STS, the service's S3 client, FUSE mounter processes, loop-mounted
        staging images, the mounters of ``mounters.make``."""
        self.settings = settings
        self.data_dir = data_dir
        self.state_dir = state_dir
        self._docker_remove = docker_remove
        self._log = log
        self._lock = threading.Lock()
        self._volumes: dict[str, VolumeState] = {}
        self._ready: dict[str, threading.Event] = {}
        self._vol_locks: dict[str, threading.Lock] = {}
        for path in (data_dir, data_dir / "volumes", state_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)  # host users may not even traverse to a workspace
        self.files = StateFiles(state_dir)
        self.control = ControlVolumes(data_dir / "control")
        self.runner = runner or fuseproc.HostRunner(spares=[mounters.local.PROGRAM])
        sts = creds_mod.sts_client(settings) if settings.scoped_credentials and mint is None else None

        def mint_scoped(settings: ValidSettings, session_id: SessionId) -> Credentials:
            return creds_mod.mint(settings, session_id, sts)

        binary = s3fs_binary or hostinfo.s3fs_binary() or "s3fs"
        made: dict[str, mounters.Mounter] = {}

        def mounter(name: str) -> mounters.Mounter:
            with self._lock:
                if name not in made:
                    made[name] = mounters.make(name, binary)
                return made[name]

        self.workspaces = Workspaces(
            settings, data_dir / "volumes", self.files, store=store or ServiceStore(settings, log=log),
            staging=staging or StagingPool(data_dir / "staging", settings.staging_size, log=log),
            quarantine=Quarantine(data_dir / QUARANTINE, quarantine_max_bytes), mint=mint or mint_scoped,
            mounter_for=mounter_for or mounter, runner=self.runner, log=log)

    def start(self) -> None:
        """Share the mount points' parent, adopt what a previous instance left, start making
        spare staging areas, and send to S3 what local-first workspaces nobody claims hold."""
        self.runner.share(self.data_dir / "volumes")
        self.adopt()
        orphans = self.workspaces.staging.start({Path(v.staging) for v in self.list() if v.staging})
        if orphans:  # files a restart left on host disk: to S3 first, in the background
            threading.Thread(target=lambda: [self.workspaces.recover_orphan(image) for image in orphans],
                             name="orphans", daemon=True).start()

    # -- paths --------------------------------------------------------------------------------
    def mountpoint(self, name: str) -> Path:
        return self.workspaces.mountpoint(name)

    def control_dir(self, name: str) -> Path:
        return self.control.path(name)

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

    def session_control(self, session_id: str) -> VolumeState:
        """The live control volume of a session on this node."""
        found = [v for v in self.list() if v.kind == CONTROL and v.session_id == session_id and v.refs]
        if not found:
            raise VolumeNotFound(f"no session {session_id} runs on this node")
        return found[-1]

    # -- lifecycle ----------------------------------------------------------------------------
    def create(self, name: str, opts: dict[str, Any] | None) -> None:
        options = parse_options(name, opts, self.settings.uid_range)
        with self._lock:
            existing = self._volumes.get(name)
            if existing is not None:
                if ((existing.session_id, existing.uid, existing.gid) != (options.session_id, options.uid, options.gid)
                        or (existing.kind == WORKSPACE and existing.mounter != options.mounter)):
                    raise VolumeError(f"volume {name} exists with other options")
                return
            state = self._volumes[name] = options.state(name)
            if state.kind == WORKSPACE:
                self._ready[name] = threading.Event()
        if state.kind == CONTROL:
            self.control.make(state)
            state.status = "mounted"
            self.files.save(state)
            return
        try:
            self.workspaces.mounter_for(state.mounter).check()
        except MountError:
            with self._lock:
                self._volumes.pop(name, None)
                self._ready.pop(name, None)
            raise
        self.workspaces.prepare(state)
        self.files.save(state)
        self._mount_in_background(state)

    def _mount_in_background(self, state: VolumeState) -> None:
        ready = self._ready[state.name]

        def mount() -> None:
            try:
                self.workspaces.mount(state)
            finally:
                ready.set()

        threading.Thread(target=mount, name=f"mount-{state.name}", daemon=True).start()

    def mount(self, name: str, caller: str) -> Path:
        state = self.get(name)
        with self._lock_for(name):
            if state.kind == WORKSPACE:
                if state.status == "unmounted":  # mounted again after an unmount (a restarted container)
                    self.workspaces.prepare(state)
                    state.status, state.error = "mounting", ""
                    self._ready[name] = threading.Event()
                    self._mount_in_background(state)
                if state.status == "failed":
                    raise VolumeError(f"volume {name} cannot be mounted: {state.error}")
            if caller not in state.refs:
                state.refs.append(caller)
            self.files.save(state)
        return self.control_dir(name) if state.kind == CONTROL else self.mountpoint(name)

    def seal(self, state: VolumeState, executor: ProcessRef) -> bool:
        """Close a swarm session's control volume to all but its executor (``ControlVolumes.seal``)."""
        with self._lock_for(state.name):
            sealed = self.control.seal(state, executor)
            if sealed:
                self.files.save(state)
        return sealed

    def wait(self, name: str, timeout: float = MOUNT_TIMEOUT + 30) -> VolumeState:
        """The volume once its mount finished (or failed)."""
        ready = self._ready.get(name)
        if ready is not None:
            ready.wait(timeout)
        return self.get(name)

    def unmount(self, name: str, caller: str) -> None:
        state = self.get(name)
        if state.kind == WORKSPACE and not [ref for ref in state.refs if ref != caller]:
            self.wait(name)  # a mount still in progress finishes before it is torn down
        with self._lock_for(name):
            if caller in state.refs:
                state.refs.remove(caller)
            if state.kind == WORKSPACE and not state.refs and state.status in ("mounted", "failed"):
                self.workspaces.teardown(state)
                if state.status == "mounted":
                    state.status = "unmounted"
            self.files.save(state)
        self._forget_if_ephemeral(state)

    def remove(self, name: str) -> None:
        state = self.get(name)
        with self._lock_for(name):
            if state.refs:
                raise VolumeError(f"volume {name} is in use by {len(state.refs)} container(s)")
            ready = self._ready.get(name)
            if ready is not None:
                ready.wait(MOUNT_TIMEOUT + 30)
            if state.kind == CONTROL:
                self.control.remove(name)
            elif not self.workspaces.teardown(state):
                self.files.save(state)
                raise VolumeError(f"volume {name} keeps its data on this host: {state.error}")
            with self._lock:
                self._volumes.pop(name, None)
                self._ready.pop(name, None)
            self.files.forget(name)
            self.workspaces.remove_dirs(name)

    def sync(self, session_id: str, timeout: float) -> None:
        """Return once every write the session made before the call is in S3 (``session sync``)."""
        mine = [v for v in self.list() if v.kind == WORKSPACE and v.session_id == session_id and v.refs]
        if not mine:
            raise VolumeNotFound(f"no workspace of session {session_id} is mounted on this node")
        for state in mine:
            self.workspaces.sync(state, timeout)

    def wait_released(self, session_id: str, timeout: float) -> tuple[bool, builtins.list[str]]:
        """(released, undrained): released once no workspace of the session is mounted here
        (drained and unmounted); undrained names each of its workspaces whose writes did not all
        reach S3 (their staging areas are kept)."""
        def released() -> tuple[bool, list[str]] | None:
            mine = [v for v in self.list() if v.kind == WORKSPACE and v.session_id == session_id]
            if any(v.status in ("mounting", "mounted") for v in mine):
                return None
            return True, [f"{v.name}: {v.undrained}" for v in mine if v.undrained]

        try:
            return poll_until(released, timeout, TimeoutError, every=0.05)
        except TimeoutError:
            return False, []

    # -- swarm tasks' volumes -----------------------------------------------------------------
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

    # -- restart ------------------------------------------------------------------------------
    def adopt(self) -> None:
        """Take over the volumes a previous instance of the service left: live mounts keep
        serving; a mount whose mounter died meanwhile is marked failed."""
        for state in self.files.load(self._log):
            if state.kind == WORKSPACE:
                self.workspaces.recover(state)
            with self._lock:
                self._volumes[state.name] = state
            self.files.save(state)
            self._log(f"adopted {state.name} ({state.status})")
