"""Control volumes, for swarm sessions: a directory per session on the node (no mount, no S3)
holding the executor's code (``app/``, root's, read-only to the session) and its socket's
directory (``sock/``: the session's uid may create the socket there until the volume is sealed,
before any user code runs; from then on nothing in the session can replace or front it)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..procs import ProcessRef
from ..resources import executor_app_dir
from .state import SealConflict, VolumeState


class ControlVolumes:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, name: str) -> Path:
        return self.root / name

    def make(self, state: VolumeState) -> None:
        root = self.path(state.name)
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

    def seal(self, state: VolumeState, executor: ProcessRef) -> bool:
        """Record which process is the executor and close its socket's directory (root, 0755).
        Idempotent: sealing again to the same process changes nothing (False); to another, it is
        refused. The caller holds the volume's lock and saves the state."""
        if state.executor:
            if state.executor != executor.dump():
                raise SealConflict(f"session {state.session_id}'s executor is sealed to process "
                                   f"{state.executor.split()[0]}, not {executor.pid}")
            return False
        sock = self.path(state.name) / "sock"
        os.chown(sock, 0, 0)
        os.chmod(sock, 0o755)
        state.executor = executor.dump()
        return True

    def remove(self, name: str) -> None:
        shutil.rmtree(self.path(name), ignore_errors=True)
