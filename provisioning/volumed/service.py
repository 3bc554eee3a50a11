"""`sandbox-host volumes serve`: the long-running host service (installed by the sandbox_host
role as a systemd unit, or an init script where systemd is not PID 1)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .. import facts, mountinfo
from ..config import ValidSettings
from ..errors import SandboxHostError
from ..escape import printable
from .netguard import NetworkGuard, docker
from .plugin import serve
from .volumes import VolumeManager


def _log(message: str) -> None:
    # One line per message, whatever names (of files, volumes) it carries: escaped, never raw.
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} sandbox-host-volumes: {printable(message, quote_backslashes=False)}",
          file=sys.stderr, flush=True)


def _docker_remove(name: str) -> None:
    """Remove an ephemeral volume from this node's engine (it calls the driver's Remove)."""
    import time

    import docker
    import docker.errors

    time.sleep(0.5)  # Docker still holds the volume while our Unmount answer travels back
    try:
        docker.from_env(timeout=30).api.remove_volume(name, force=True)
    except (docker.errors.DockerException, OSError) as exc:
        _log(f"{name}: cannot remove the ephemeral volume from Docker: {exc}")


def _docker() -> Any:
    import docker

    return docker.from_env(timeout=30)


PROBE_VOLUME = "sandbox-host-engine-probe"


def announce(driver: str, stop: threading.Event, manager: VolumeManager | None = None, every: float = 15.0) -> None:
    """Make this node's engine look the driver up, and again after the engine restarts: Docker
    lists a socket-file (v1) plugin among the node's volume plugins only once it has looked it
    up, and Swarm places a task that mounts a volume of that driver only on nodes that list it.
    The lookup is a create the driver refuses (the probe's name is no session's)."""
    import docker
    import docker.errors

    while not stop.is_set():
        try:
            client = docker.from_env(timeout=10)
            if driver not in client.info().get("Plugins", {}).get("Volume", []):
                with contextlib.suppress(docker.errors.APIError):  # refused, as meant: the engine knows the driver now
                    client.api.create_volume(PROBE_VOLUME, driver=driver)
        except (docker.errors.DockerException, OSError):
            pass  # no engine (yet): try again
        if manager is not None:
            manager.collect_ephemeral()
        stop.wait(every)


def renew_credentials(manager: VolumeManager, stop: threading.Event, now: threading.Event) -> None:
    """Keep every live workspace's credentials fresh (``Workspaces.renew_due``): a look every
    tenth of their lifetime (at most 10 s); ``now`` set (SIGHUP) renews every one at once."""
    every = min(10.0, manager.settings.session_lifetime / 10)
    while not stop.is_set():
        forced = now.wait(every)
        now.clear()
        if not stop.is_set():
            manager.workspaces.renew_due(force=forced)


def socket_path(driver: str, plugin_dir: str = facts.PLUGIN_DIR) -> Path:
    return Path(plugin_dir) / f"{driver}.sock"


def hold_driver_name(state_dir: Path) -> int:
    """Claim the service's driver name for this process: a lock beside its state directory
    (which ``purge`` may remove), held as long as the returned descriptor is open, so the kernel
    lets it go with the process, however it ends. Two services of one name would each take the
    other's staging areas and socket: the second refuses, naming the first."""
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    path = state_dir.parent / f"{state_dir.name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited: s3fs outliving us holds nothing
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SandboxHostError(
            f"another volume service already serves the driver {state_dir.name!r} (pid {holder}, lock {path}); "
            "stop it first, or give this one another volume_driver"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def run(settings: ValidSettings, *, data_dir: Path | None = None, state_dir: Path | None = None,
        plugin_dir: str = facts.PLUGIN_DIR) -> int:
    """Adopt what a previous instance left, then serve Docker until SIGTERM/SIGINT. Stopping
    leaves the mounts (and their s3fs processes) running for the next instance. Each driver
    name keeps its own directories, so a test instance never touches the host's."""
    driver = settings.volume_driver
    state_dir = state_dir or Path(facts.SERVICE_STATE_DIR) / driver
    _lock = hold_driver_name(state_dir)  # held until the process ends
    # The name is ours: a socket there is one a killed instance left. It would stand for a live
    # service until this one binds its own, after adopting; whoever waits for it waits for us.
    socket_path(driver, plugin_dir).unlink(missing_ok=True)
    manager = VolumeManager(settings, data_dir=data_dir or Path(facts.SERVICE_DATA_DIR) / driver,
                            state_dir=state_dir, docker_remove=_docker_remove, log=_log)
    manager.start()
    stop = threading.Event()
    renew_now = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_a: stop.set())
    signal.signal(signal.SIGHUP, lambda *_a: renew_now.set())  # every workspace's credentials renewed now
    # The Docker SDK is loaded here, in this thread, before any other thread touches it (the
    # runtime imports it lazily, and a lazy module is not safe to load from two threads at once).
    _ = docker.errors
    guard = None
    if settings.network != "host":
        guard = NetworkGuard(settings.network, _docker, _log, fleet=bool(settings.gateway_listen))
        threading.Thread(target=guard.run, args=(stop,), name="network-guard", daemon=True).start()
    threading.Thread(target=announce, args=(driver, stop, manager), name="announce", daemon=True).start()
    threading.Thread(target=renew_credentials, args=(manager, stop, renew_now), name="renew", daemon=True).start()
    if settings.gateway_listen:
        from .gateway import TLSFiles
        from .gateway import serve as serve_gateway

        tls = TLSFiles(Path(settings.tls_ca), Path(settings.tls_node_cert), Path(settings.tls_node_key))
        threading.Thread(target=serve_gateway, args=(manager, settings.gateway_listen, tls, _log, stop, guard),
                         name="gateway", daemon=True).start()
    serve(manager, socket_path(driver, plugin_dir), _log, stop, guard)
    _log("stopped; mounts left in place for the next start")
    return 0


def purge(driver: str, *, data_dir: Path | None = None, state_dir: Path | None = None,
          network: str | None = None) -> list[str]:
    """Remove everything a *stopped* service of this driver name left: unmount its workspaces
    (s3fs then exits) and staging areas, delete its directories; with ``network``, the sessions'
    network it guarded and its firewall table. For tests and decommissioning; live sessions of
    that driver lose their workspace (and their network). Returns what was unmounted."""
    import shutil
    import subprocess

    data = data_dir or Path(facts.SERVICE_DATA_DIR) / driver
    state = state_dir or Path(facts.SERVICE_STATE_DIR) / driver
    targets = [mount.mount_point for mount in mountinfo.under(data)]
    # Deepest first: workspaces (FUSE) and staging areas (loop), then the shared parent.
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)
    shutil.rmtree(state, ignore_errors=True)
    if network and network != "host":
        client = _docker()
        with contextlib.suppress(docker.errors.NotFound):
            client.networks.get(network).remove()
        NetworkGuard(network, lambda: client).remove()
    return targets
