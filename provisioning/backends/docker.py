"""Sessions on this host's Docker engine: one container per session, its executor reached on a
unix socket in a per-session host directory."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path

from typing import TYPE_CHECKING, Any

from .. import engine, facts
from ..config import ValidSettings
from ..errors import ImageMissing, SandboxHostError, SessionError, SessionExists, SessionNotFound
from ..executor_client import ExecutorClient, ExecutorError
from ..hostinfo import docker_client
from ..lazy import lazy_import
from ..mounts import BootFile, VolumeSpec
from ..procs import ProcessRef, in_container
from ..resources import executor_app_dir
from ..uids import UidLeases
from ..validation import SessionId
from .base import SessionInfo, SessionSpec
from .container import SessionContainer, describe

if TYPE_CHECKING:
    import docker
    from docker.models.containers import Container
else:
    docker = lazy_import("docker")  # exec and health never load the SDK (see engine.py)

ENTRYPOINT_ERROR_MARK = "]: error: "
PEER_FILE = "executor.peer"  # in the session's root-only boot directory: which process is its executor


def _docker_error(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc).strip()


class DockerBackend:
    name = "docker"

    def __init__(self, settings: ValidSettings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self.state = Path(settings.state_dir)
        self.uids = UidLeases(self.state, settings.uid_range)
        self.node = socket.gethostname()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    # -- sandbox uids ---------------------------------------------------------------------------
    def lease_uid(self, session_id: SessionId) -> int:
        return self.uids.allocate(session_id)

    def release_uid(self, uid: int) -> None:
        self.uids.release(uid)

    # -- lookup ---------------------------------------------------------------------------------
    def _container(self, session_id: SessionId) -> Container | None:
        try:
            container = self.client.containers.get(facts.container_name(session_id))
        except docker.errors.NotFound:
            return None
        if container.labels.get(facts.LABEL_SESSION) != session_id:
            raise SessionError(
                f"container {container.name} exists but is not a sandbox-host session; remove or rename it"
            )
        return container

    def _get(self, session_id: SessionId) -> Container:
        container = self._container(session_id)
        if container is None:
            raise SessionNotFound(f"no session {session_id}; list sessions with 'sandbox-host session list'")
        return container

    def _info(self, container: Container, launch_seconds: float | None = None) -> SessionInfo:
        return self._info_from(container.attrs, launch_seconds)

    def _info_from(self, attrs: dict[str, Any], launch_seconds: float | None = None) -> SessionInfo:
        """A session's state from its container's inspect data."""
        labels = attrs.get("Config", {}).get("Labels") or {}
        sid = labels[facts.LABEL_SESSION]
        state = attrs.get("State", {})
        status, detail = str(state.get("Status", "")), ""
        if status in ("exited", "dead"):
            code = int(state.get("ExitCode", -1))
            if code == facts.EXIT_WORKSPACE_LOST:
                status, detail = "failed", "the workspace mount died (its s3fs ended); the session was ended"
            else:
                detail = f"exit status {code}"
        return SessionInfo(
            session_id=sid,
            container_id=str(attrs.get("Id", "")),
            container_name=str(attrs.get("Name", "")).lstrip("/"),
            status=status,
            image=str(attrs.get("Config", {}).get("Image", "")),
            network=str(attrs.get("HostConfig", {}).get("NetworkMode", "")),
            bucket=labels.get(facts.LABEL_BUCKET, ""),
            prefix=f"{facts.session_prefix(sid)}/",
            mount=labels.get(facts.LABEL_STRATEGY, ""),
            uid=int(labels.get(facts.LABEL_UID, "0") or 0),
            node=self.node,
            detail=detail,
            launch_seconds=launch_seconds,
            egress=labels.get(facts.LABEL_EGRESS, ""),
        )

    def find(self, session_id: SessionId) -> SessionInfo | None:
        container = self._container(session_id)
        return None if container is None else self._info(container)

    def list(self) -> list[SessionInfo]:
        containers = self.client.containers.list(all=True, filters={"label": f"{facts.LABEL_MANAGED}=true"})
        # A fleet node's engine also runs Swarm's tasks: those are the swarm backend's sessions.
        own = [c for c in containers if "com.docker.swarm.task.id" not in c.labels]
        return sorted((self._info(c) for c in own), key=lambda s: s.session_id)

    def executor(self, session_id: SessionId) -> ExecutorClient:
        attrs = self._inspect(session_id)
        info = self._info_from(attrs)
        info.require_running()
        return self._client_for(attrs["Config"]["Labels"], info.container_id)

    def _inspect(self, session_id: SessionId) -> dict[str, Any]:
        """The session's container's inspect data: read over the local engine's socket directly
        when no client was given (exec and health, the hot path), else through the SDK."""
        socket_path = engine.local_socket() if self._client is None else None
        if socket_path is None:
            inspected: dict[str, Any] = self._get(session_id).attrs
            return inspected
        attrs = engine.inspect_container(facts.container_name(session_id), socket_path)
        if attrs is None:
            raise SessionNotFound(f"no session {session_id}; list sessions with 'sandbox-host session list'")
        labels = attrs.get("Config", {}).get("Labels") or {}
        if labels.get(facts.LABEL_SESSION) != session_id:
            raise SessionError(f"container {facts.container_name(session_id)} exists but is not a sandbox-host "
                               "session; remove or rename it")
        return attrs

    @staticmethod
    def _client_for(labels: dict[str, str], container_id: str) -> ExecutorClient:
        boot = labels.get(facts.LABEL_BOOT, "")
        expected = None
        if boot:
            try:
                expected = ProcessRef.load((Path(boot) / PEER_FILE).read_text())
            except OSError:
                expected = None
        if expected is None:
            raise SessionError(f"session {labels.get(facts.LABEL_SESSION)} has no recorded executor; "
                               "it did not finish starting: stop it and create it again")
        return ExecutorClient(Path(labels[facts.LABEL_CONTROL]), container_id, expected)

    # -- launch ---------------------------------------------------------------------------------
    def _prepare_dirs(self, spec: SessionSpec) -> tuple[Path, Path]:
        """This launch's host directories, named per attempt so that a create that loses a race
        for the id never touches a live session's directories.

        - control (bound at facts.CONTROL_DIR): the executor's socket. Owned by the session's
          uid until the executor bound it, then closed (root, 0755) before any user code runs;
        - boot (root only): the in-container entrypoint and credentials (bound at facts.BOOT_DIR
          for that strategy), and which process is the executor."""
        attempt = f"{spec.session_id}.{secrets.token_hex(4)}"  # '.' never occurs in a session id
        control, boot = self.state / "sessions" / attempt, self.state / "boot" / attempt
        self.state.mkdir(parents=True, exist_ok=True, mode=0o711)
        control.parent.mkdir(exist_ok=True, mode=0o711)
        boot.parent.mkdir(exist_ok=True, mode=0o700)
        os.chmod(boot.parent, 0o700)
        control.mkdir(mode=0o700)
        os.chown(control, spec.uid, spec.uid)
        boot.mkdir(mode=0o700)
        for item in spec.plan.boot_files:
            _write_private(boot / item.name, item)
        return control, boot

    @staticmethod
    def _check_driver(driver: str) -> None:
        """A stat, not a round trip: Docker itself would retry a missing driver for half a minute."""
        if not (Path(facts.PLUGIN_DIR) / f"{driver}.sock").exists():
            raise SessionError(
                f"the volume driver {driver!r} is not running on this host (no {facts.PLUGIN_DIR}/{driver}.sock); "
                "start it: systemctl start sandbox-host-volumes (or /etc/init.d/sandbox-host-volumes start)"
            )

    def _remove_volume(self, name: str, driver: str) -> None:
        """Looked up with its driver named: Docker resolves a name it does not know by asking every
        volume driver it ever met, and one gone since (a stopped service) makes that wait a minute."""
        try:
            found = self.client.api.volumes(filters={"driver": driver, "name": name}).get("Volumes") or []
            if any(v["Name"] == name for v in found):
                self.client.api.remove_volume(name, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            pass  # still in use by a container being removed; `stop` removes it again

    def _create_container(self, spec: SessionSpec, control: Path, boot: Path) -> Container:
        from docker.types import Mount

        # How the executor reaches the host here: its socket in a per-session directory, its code
        # bound read-only from the host's package (and the in-container entrypoint's boot files).
        mounts = [Mount(facts.CONTROL_DIR, str(control), type="bind"),
                  Mount(facts.EXECUTOR_DIR, str(executor_app_dir()), type="bind", read_only=True)]
        if spec.plan.boot_files:  # rw: the entrypoint deletes the credentials once read
            mounts.append(Mount(facts.BOOT_DIR, str(boot), type="bind"))
        container = describe(spec, spec.plan.entrypoint,
                             {facts.LABEL_CONTROL: str(control), facts.LABEL_BOOT: str(boot)})
        return self.client.containers.create(**create_arguments(container, mounts), detach=True)

    def launch(self, spec: SessionSpec) -> SessionInfo:
        started = time.monotonic()
        sid, plan = spec.session_id, spec.plan
        if plan.volume is not None:
            self._check_driver(plan.volume.driver)
        control, boot = self._prepare_dirs(spec)
        container: Container | None = None
        volume_made = False
        try:
            # Docker creates the workspace volume with the container (after reserving the name,
            # so a live session's id is refused before its volume is touched); the driver starts
            # mounting at once, overlapping the rest of the creation, and Mount waits for it.
            volume_made = plan.volume is not None  # from here on Docker may have made it (see _discard)
            container = self._create_or_replace(spec, control, boot)
            container.start()
            # The session's network rule goes in while the executor starts; user code runs only
            # after both (and until its rule is in, the session reaches nothing: fail-closed).
            guarded = _Guarded(spec.settings, container.id)
            peer = self._wait_ready(container, spec.settings.ready_timeout)
            guarded.result()
        except BaseException as exc:
            reason = None
            if (container is not None and isinstance(exc, SessionError | ExecutorError | docker.errors.APIError)
                    and not isinstance(exc, NetworkRuleError)):
                reason = self._failure_reason(container, exc)
            # Refused before any volume was made (a live session's id, a missing image): Docker
            # reserves the name and finds the image before it creates volumes.
            if isinstance(exc, SessionExists | ImageMissing):
                volume_made = False
            self._discard(container, control, boot, plan.volume if plan.volume and volume_made else None)
            if reason:
                raise SessionError(f"session {sid} failed to start: {reason}") from None
            raise
        # No user code has run yet: this process is the executor, and the socket's directory
        # closes so that nothing in the session can replace the socket.
        _write_private(boot / PEER_FILE, BootFile(PEER_FILE, peer.dump().encode(), 0o600))
        os.chown(control, 0, 0)
        os.chmod(control, 0o755)
        (boot / "credentials").unlink(missing_ok=True)  # the entrypoint removed it; make sure
        container.reload()
        return self._info(container, launch_seconds=round(time.monotonic() - started, 4))

    def _create_or_replace(self, spec: SessionSpec, control: Path, boot: Path) -> Container:
        """Docker says whether the image exists and the name is taken: no lookups before."""
        sid = spec.session_id
        for _attempt in range(2):
            try:
                return self._create_container(spec, control, boot)
            except docker.errors.ImageNotFound:
                raise ImageMissing(
                    f"image {spec.settings.image} not found; build it with 'sandbox-host image build'"
                ) from None
            except docker.errors.APIError as exc:
                if exc.status_code == 404 and "network" in _docker_error(exc):
                    raise SessionError(f"the sessions' network {spec.settings.network} does not exist on this host: "
                                       "the volume service makes it at start; start it (systemctl start "
                                       "sandbox-host-volumes, or /etc/init.d/sandbox-host-volumes start)") from None
                if exc.status_code != 409:
                    raise SessionError(f"cannot create the container for session {sid}: {_docker_error(exc)}") from None
                existing = self._container(sid)
                if existing is not None and existing.status in ("exited", "dead"):
                    self._remove_session(existing)  # an ended session's leftover
                    continue
                state = f"container {existing.short_id}, {existing.status}" if existing else "being created"
                raise SessionExists(f"session {sid} already exists ({state}); "
                                    "stop it first or use another id") from None
        raise SessionExists(f"session {sid} already exists (a concurrent create won)")

    def _wait_ready(self, container: Container, timeout: float) -> ProcessRef:
        """Poll the executor's health: cheap local checks, Docker asked only until it names the
        container's init PID (then /proc says whether it lives)."""
        client = ExecutorClient(Path(container.labels[facts.LABEL_CONTROL]), container.id, None)
        socket_path = client.socket_path
        deadline = time.monotonic() + timeout
        delay, next_liveness_check = 0.002, time.monotonic() + 0.25
        init: ProcessRef | None = None
        last = "the executor did not start"
        volume = container.labels.get(facts.LABEL_VOLUME)
        next_volume_check = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            if socket_path.exists():
                try:
                    health, peer = client.identify(timeout=5)
                except ExecutorError as exc:
                    last = str(exc)
                else:
                    if health.get("ok"):
                        return peer
                    last = f"executor reports: {health.get('detail')}"
            if volume and time.monotonic() >= next_volume_check:
                # The volume driver mounts while the container starts: ask it for a failure.
                failure = _volume_failure(container.labels.get(facts.LABEL_DRIVER, ""), volume)
                if failure:
                    raise SessionError(f"the workspace could not be mounted: {failure}")
                next_volume_check = time.monotonic() + 0.05
            if time.monotonic() >= next_liveness_check:
                if init is not None:
                    alive = init.alive()
                else:
                    container.reload()
                    alive = container.status not in ("exited", "dead")
                    pid = int(container.attrs.get("State", {}).get("Pid") or 0)
                    # Another PID namespace (a launcher in a container) cannot see it: keep asking Docker.
                    if alive and pid and in_container(pid, container.id):
                        init = ProcessRef.of(pid)
                if not alive:
                    raise SessionError("the entrypoint exited before the workspace was ready")
                next_liveness_check = time.monotonic() + (0.02 if init else 0.25)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.01)
        raise SessionError(f"not ready after {timeout:g}s: {last}")

    def _failure_reason(self, container: Container, exc: BaseException) -> str:
        try:
            container.reload()
            if container.status == "running":
                container.stop(timeout=5)
            logs: str = container.logs(stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.APIError as api:
            return f"{exc} ({_docker_error(api)})"
        errors = [line for line in logs.splitlines() if ENTRYPOINT_ERROR_MARK in line]
        if errors:
            return errors[-1].split(ENTRYPOINT_ERROR_MARK, 1)[1]
        tail = [line for line in logs.splitlines() if line.strip()][-3:]
        return " | ".join(tail) or str(exc) or "the entrypoint printed nothing"

    def _discard(self, container: Container | None, control: Path, boot: Path, volume: VolumeSpec | None) -> None:
        if container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        if volume is not None:
            self._remove_volume(volume.name, volume.driver)  # this launch's own (named by its uid)
        for path in (control, boot):
            shutil.rmtree(path, ignore_errors=True)

    def _remove_session(self, container: Container) -> None:
        labels = container.labels
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)
        if labels.get(facts.LABEL_VOLUME):
            self._remove_volume(labels[facts.LABEL_VOLUME], labels.get(facts.LABEL_DRIVER, self.settings.volume_driver))
        for label in (facts.LABEL_CONTROL, facts.LABEL_BOOT):
            if labels.get(label):
                shutil.rmtree(labels[label], ignore_errors=True)
        if labels.get(facts.LABEL_UID, "").isdigit():
            self.release_uid(int(labels[facts.LABEL_UID]))

    # -- stop -----------------------------------------------------------------------------------
    def sync(self, session_id: SessionId, timeout: float) -> None:
        """Host strategy: the volume driver syncs the workspace. In-container, s3fs has uploaded
        each file when it was closed: nothing to wait for."""
        container = self._get(session_id)
        self._info(container).require_running()
        if not container.labels.get(facts.LABEL_VOLUME):
            return
        from ..volumed.client import call

        answer = call(container.labels.get(facts.LABEL_DRIVER, ""), "SandboxHost.Sync",
                      {"Session": session_id, "Timeout": timeout}, timeout=timeout + 30)
        if answer.get("Err"):
            raise SessionError(f"session {session_id}: {answer['Err']}")

    def stop(self, session_id: SessionId, timeout: int) -> int:
        """SIGTERM: the executor ends user code, the workspace is flushed and unmounted (by the
        entrypoint, or by the volume driver once the container exited); then remove."""
        container = self._get(session_id)
        if container.status == "running":
            container.stop(timeout=timeout)
        result = container.wait(timeout=timeout + 30)
        code = int(result.get("StatusCode", -1))
        undrained = _undrained(session_id, container.labels)
        self._remove_session(container)
        if undrained:
            raise SessionError(f"session {session_id} stopped, but not all of its writes reached S3: {undrained}")
        return code


def _undrained(session_id: SessionId, labels: dict[str, str]) -> str:
    """Host strategy: wait until the volume driver has drained and unmounted the workspace (a
    mounter that writes back, local, uploads what is pending first); what did not reach S3."""
    if not labels.get(facts.LABEL_VOLUME):
        return ""
    from ..volumed.client import call

    try:
        answer = call(labels.get(facts.LABEL_DRIVER, ""), "SandboxHost.Released",
                      {"Session": session_id, "Timeout": facts.DRAIN_TIMEOUT + 30}, timeout=facts.DRAIN_TIMEOUT + 60)
    except SandboxHostError as exc:
        return str(exc)
    if not answer.get("Released"):
        return f"the volume driver did not release the workspace in {facts.DRAIN_TIMEOUT + 30:g}s"
    return "; ".join(map(str, answer.get("Undrained") or []))


class NetworkRuleError(SessionError):
    kind = "network"


class _Guarded:
    """Asks the volume service, in the background, to put the container's egress rule in place
    (sessions on the sandbox network; one with no network needs none)."""

    def __init__(self, settings: ValidSettings, container_id: str) -> None:
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        if settings.egress_policy.networked and settings.network != "host":
            self._thread = threading.Thread(target=self._admit, args=(settings.volume_driver, container_id),
                                            name="egress-admit", daemon=True)
            self._thread.start()

    def _admit(self, driver: str, container_id: str) -> None:
        from ..volumed.client import call

        try:
            answer = call(driver, "SandboxHost.Egress", {"Container": container_id}, timeout=20)
        except SandboxHostError as exc:
            self._error = str(exc)
            return
        if answer.get("Err"):
            self._error = str(answer["Err"])

    def result(self) -> None:
        if self._thread is None:
            return
        self._thread.join(30)
        if self._thread.is_alive() or self._error is not None:
            raise NetworkRuleError(f"the session's network rule could not be put in place: "
                               f"{self._error or 'the volume service did not answer in 30s'}")


def _volume_failure(driver: str, volume: str) -> str:
    from ..volumed.client import call

    try:
        status = call(driver, "VolumeDriver.Get", {"Name": volume}, timeout=2).get("Volume", {}).get("Status", {})
    except SandboxHostError as exc:
        return str(exc)
    return str(status.get("error", "")) if status.get("status") == "failed" else ""


def _write_private(path: Path, item: BootFile) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, item.mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(item.data)


def create_arguments(container: SessionContainer, mounts: list[Any]) -> dict[str, Any]:
    """The session's container as the Docker SDK's ``containers.create`` takes it: every part of
    the description (tests/unit/test_hardening.py checks none is dropped), plus ``mounts``."""
    from docker.types import DriverConfig, LogConfig, Mount

    workspace = container.workspace
    if workspace is not None:
        mounts = [*mounts, Mount(workspace.target, workspace.name, type="volume", no_copy=True,
                                 driver_config=DriverConfig(workspace.driver, workspace.options))]
    return {
        "image": container.image,
        "name": container.name,
        "labels": container.labels,
        "entrypoint": list(container.command),
        "command": [],  # the image's own ENTRYPOINT/CMD never run
        "environment": container.env,
        "working_dir": container.workdir,
        "user": container.user,
        "cap_drop": list(container.cap_drop),
        "cap_add": list(container.cap_add),
        "devices": list(container.devices),
        "security_opt": [*(["no-new-privileges"] if container.no_new_privileges else []), *container.security_opt],
        "read_only": container.read_only_root,
        "tmpfs": {t.target: f"rw,nosuid,nodev{',noexec' if t.noexec else ''},size={t.size_bytes},mode={t.mode:o}"
                  for t in container.tmpfs},
        "mounts": mounts,
        "mem_limit": container.memory_bytes,
        "memswap_limit": container.memory_bytes,  # no swap beyond the memory limit
        "nano_cpus": container.nano_cpus,
        "pids_limit": container.pids_limit,
        "log_config": LogConfig(type="json-file", config={"max-size": container.log_max_size,
                                                         "max-file": str(container.log_files)}),
        "network_mode": container.network if container.egress.networked else "none",
        "init": container.init,
    }
