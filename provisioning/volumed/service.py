"""`sandbox-host volumes serve`: the long-running host service (installed by the sandbox_host
role as a systemd unit, or an init script where systemd is not PID 1)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from .. import facts
from ..config import ValidSettings
from .plugin import serve
from .volumes import VolumeManager


def _log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sandbox-host-volumes: {message}", file=sys.stderr, flush=True)


def socket_path(driver: str, plugin_dir: str = facts.PLUGIN_DIR) -> Path:
    return Path(plugin_dir) / f"{driver}.sock"


def run(settings: ValidSettings, *, data_dir: Path | None = None, state_dir: Path | None = None,
        plugin_dir: str = facts.PLUGIN_DIR) -> int:
    """Adopt what a previous instance left, then serve Docker until SIGTERM/SIGINT. Stopping
    leaves the mounts (and their s3fs processes) running for the next instance. Each driver
    name keeps its own directories, so a test instance never touches the host's."""
    driver = settings.volume_driver
    manager = VolumeManager(settings, data_dir=data_dir or Path(facts.SERVICE_DATA_DIR) / driver,
                            state_dir=state_dir or Path(facts.SERVICE_STATE_DIR) / driver, log=_log)
    manager.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: stop.set())
    serve(manager, socket_path(driver, plugin_dir), _log, stop)
    _log("stopped; mounts left in place for the next start")
    return 0


def purge(driver: str, *, data_dir: Path | None = None, state_dir: Path | None = None) -> list[str]:
    """Remove everything a *stopped* service of this driver name left: unmount its workspaces
    (s3fs then exits) and staging areas, delete its directories. For tests and decommissioning;
    live sessions of that driver lose their workspace. Returns what was unmounted."""
    import shutil
    import subprocess

    data = data_dir or Path(facts.SERVICE_DATA_DIR) / driver
    state = state_dir or Path(facts.SERVICE_STATE_DIR) / driver
    prefix = f"{data}/"
    with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
        targets = [line.split()[4] for line in mounts if line.split()[4].startswith(prefix)]
    # Deepest first: workspaces (FUSE) and staging areas (loop), then the shared parent.
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    return targets
