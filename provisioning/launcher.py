"""Launch, inspect and stop session containers (Docker SDK)."""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from . import render, validation
from .config import Settings
from .executor_client import ExecResult, ExecutorClient, ExecutorError, process_in_container
from .hostinfo import docker_client
from .mounts import BootFile, ContainerPlan, InContainerFuse, MountStrategy
from .storage import SessionStorage

LABEL_MANAGED = "io.sandbox-host.managed"
LABEL_SESSION = "io.sandbox-host.session"
LABEL_BUCKET = "io.sandbox-host.bucket"
LABEL_STRATEGY = "io.sandbox-host.mount-strategy"
LABEL_CONTROL = "io.sandbox-host.control-dir"
LABEL_BOOT = "io.sandbox-host.boot-dir"
LABEL_UID = "io.sandbox-host.uid"
ENTRYPOINT_ERROR_MARK = "]: error: "


class SessionError(RuntimeError):
    """A session operation failed; the message says why and what to do."""


class SessionExists(SessionError):
    pass


class SessionNotFound(SessionError):
    pass


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    container_id: str
    container_name: str
    status: str
    image: str
    network: str
    bucket: str
    prefix: str
    control_dir: str
    launch_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def container_name(session_id: str) -> str:
    return f"sandbox-{validation.session_id(session_id)}"


class SessionManager:
    def __init__(self, settings: Settings, *, client: docker.DockerClient | None = None,
                 strategy: MountStrategy | None = None, storage: SessionStorage | None = None) -> None:
        self.settings = settings
        self._client = client
        self.strategy = strategy or InContainerFuse()
        self._storage = storage
        self._bucket_checked = False  # the bucket is checked (and made) once per manager

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    @property
    def storage(self) -> SessionStorage:
        if self._storage is None:
            self._storage = SessionStorage(self.settings.validated())
        return self._storage

    # -- lookup -------------------------------------------------------------------------
    def _find(self, session_id: str) -> Container | None:
        try:
            container = self.client.containers.get(container_name(session_id))
        except docker.errors.NotFound:
            return None
        if container.labels.get(LABEL_SESSION) != session_id:
            raise SessionError(
                f"container {container.name} exists but is not a sandbox-host session; remove or rename it"
            )
        return container

    def get(self, session_id: str) -> Container:
        container = self._find(validation.session_id(session_id))
        if container is None:
            raise SessionNotFound(f"no session {session_id}; list sessions with 'sandbox-host session list'")
        return container

    def info(self, container: Container, launch_seconds: float | None = None) -> SessionInfo:
        labels = container.labels
        sid = labels[LABEL_SESSION]
        return SessionInfo(
            session_id=sid,
            container_id=container.id,
            container_name=container.name,
            status=container.status,
            image=str(container.attrs.get("Config", {}).get("Image", "")),
            network=str(container.attrs.get("HostConfig", {}).get("NetworkMode", "")),
            bucket=labels.get(LABEL_BUCKET, ""),
            prefix=f"sessions/{sid}/",
            control_dir=labels.get(LABEL_CONTROL, ""),
            launch_seconds=launch_seconds,
        )

    def list(self) -> list[SessionInfo]:
        containers = self.client.containers.list(all=True, filters={"label": f"{LABEL_MANAGED}=true"})
        return sorted((self.info(c) for c in containers), key=lambda s: s.session_id)

    def executor(self, session_id: str) -> ExecutorClient:
        container = self.get(session_id)
        if container.status != "running":
            raise SessionError(f"session {session_id} is not running (status {container.status})")
        return self._executor_for(container)

    @staticmethod
    def _executor_for(container: Container) -> ExecutorClient:
        return ExecutorClient(
            Path(container.labels[LABEL_CONTROL]), container.id, int(container.labels.get(LABEL_UID, "1000"))
        )

    # -- create -------------------------------------------------------------------------
    def _prepare_dirs(self, session_id: str, settings: Settings, files: list[BootFile]) -> tuple[Path, Path]:
        """This launch's host directories, named uniquely so that a create that loses a race for
        the id (or finds it taken) never touches a live session's directories.

        - control (bound at render.CONTROL_DIR, owned by the sandbox user): the executor's socket;
        - boot (bound at render.BOOT_DIR, root only): the entrypoint and the credentials. Binding
          it costs nothing at start, where copying files in through the Docker API costs a mount
          of the container's filesystem (about 65 ms a launch, measured)."""
        attempt = f"{session_id}.{secrets.token_hex(4)}"  # '.' never occurs in a session id
        state = Path(settings.state_dir)
        control, boot = state / "sessions" / attempt, state / "boot" / attempt
        control.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        boot.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(boot.parent, 0o700)
        control.mkdir(mode=0o700)
        os.chown(control, settings.uid, settings.gid)
        boot.mkdir(mode=0o700)
        for item in files:
            fd = os.open(boot / item.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, item.mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(item.data)
        return control, boot

    @staticmethod
    def _session_dirs(container: Container) -> list[Path]:
        return [Path(container.labels[label]) for label in (LABEL_CONTROL, LABEL_BOOT) if container.labels.get(label)]

    def _create_container(self, sid: str, settings: Settings, plan: ContainerPlan, control: Path,
                          boot: Path) -> Container:
        labels = {
            LABEL_MANAGED: "true",
            LABEL_SESSION: sid,
            LABEL_BUCKET: settings.bucket,
            LABEL_STRATEGY: self.strategy.name,
            LABEL_CONTROL: str(control),
            LABEL_BOOT: str(boot),
            LABEL_UID: str(settings.uid),
        }
        return self.client.containers.create(
            settings.image,
            name=container_name(sid),
            labels=labels,
            network_mode=settings.network,
            devices=plan.devices,
            cap_drop=["ALL"],
            cap_add=plan.cap_add,
            security_opt=plan.security_opt,
            tmpfs=plan.tmpfs,
            volumes={
                str(control): {"bind": render.CONTROL_DIR, "mode": "rw"},
                # rw: the entrypoint deletes the credentials once read.
                str(boot): {"bind": render.BOOT_DIR, "mode": "rw"},
            },
            mem_limit=settings.memory,
            memswap_limit=settings.memory,
            nano_cpus=int(settings.cpus * 1e9),
            pids_limit=settings.pids_limit,
            init=False,
            detach=True,
        )

    def create(self, session_id: str) -> SessionInfo:
        """Start a session and wait until its executor reports a mounted workspace."""
        started = time.monotonic()
        sid = validation.session_id(session_id)
        settings = self.settings.validated()
        credentials = settings.credentials
        self.strategy.check(settings)
        plan = self.strategy.plan(sid, settings, credentials)  # renders: every input checked here

        storage = self.storage
        if not self._bucket_checked:
            storage.ensure_bucket()  # also proves the endpoint and credentials before any container
            self._bucket_checked = True
        storage.ensure_root(sid)

        control, boot = self._prepare_dirs(sid, settings, plan.boot_files)
        # Docker itself says whether the image exists and whether the name is taken: no lookups
        # before the create (each a round trip on every launch).
        container = None
        try:
            for _attempt in range(2):
                try:
                    container = self._create_container(sid, settings, plan, control, boot)
                    break
                except docker.errors.ImageNotFound:
                    raise SessionError(
                        f"image {settings.image} not found; build it with 'sandbox-host image build'"
                    ) from None
                except docker.errors.APIError as exc:
                    if exc.status_code != 409:
                        raise SessionError(
                            f"cannot create the container for session {sid}: {exc.explanation}"
                        ) from None
                    existing = self._find(sid)
                    if existing is not None and existing.status in ("exited", "dead"):
                        self._discard(existing, *self._session_dirs(existing))  # an ended session's leftover
                        continue
                    state = f"container {existing.short_id}, {existing.status}" if existing else "being created"
                    raise SessionExists(
                        f"session {sid} already exists ({state}); stop it first or use another id"
                    ) from None
            if container is None:
                raise SessionExists(f"session {sid} already exists (a concurrent create won)")
        except BaseException:
            for path in (control, boot):
                shutil.rmtree(path, ignore_errors=True)
            raise

        # The area markers go up while the container starts; s3fs needs only the root marker.
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-host-areas")
        areas = pool.submit(storage.ensure_areas, sid)
        pool.shutdown(wait=False)  # the one task still runs; result() below waits for it
        try:
            container.start()
            self._wait_ready(container, settings.ready_timeout)
            areas.result()
        except BaseException as exc:
            reason = self._failure_reason(container) if isinstance(exc, SessionError | ExecutorError) else None
            self._discard(container, control, boot)
            concurrent.futures.wait([areas])
            if reason:
                raise SessionError(f"session {sid} failed to start: {reason}") from None
            raise
        # The entrypoint removed the credentials when it read them; make sure, without trusting it.
        (boot / Path(render.SECRETS_FILE).name).unlink(missing_ok=True)
        container.reload()
        return self.info(container, launch_seconds=round(time.monotonic() - started, 4))

    def _wait_ready(self, container: Container, timeout: float) -> None:
        """Poll the executor's health: cheap local checks, Docker asked only until it names the
        entrypoint's host PID (then /proc says whether it lives: under 20 concurrent launches the
        repeated inspections were ~110 Docker round trips per batch)."""
        client = self._executor_for(container)
        socket_path = client.control_dir / "executor.sock"
        deadline = time.monotonic() + timeout
        # A stat of the socket path is cheap: poll it often so readiness is seen within milliseconds.
        delay, next_liveness_check = 0.002, time.monotonic() + 0.25
        entrypoint_pid = 0  # known once Docker reported it and this host's /proc shows it
        last = "the executor did not start"
        while time.monotonic() < deadline:
            if socket_path.exists():
                try:
                    health = client.health(timeout=5)
                except ExecutorError as exc:
                    last = str(exc)
                else:
                    if health.get("ok"):
                        return
                    last = f"executor reports: {health.get('detail')}"
            if time.monotonic() >= next_liveness_check:
                if entrypoint_pid:
                    alive = process_in_container(entrypoint_pid, container.id)
                else:
                    container.reload()
                    alive = container.status not in ("exited", "dead")
                    pid = int(container.attrs.get("State", {}).get("Pid") or 0)
                    # Another PID namespace (a launcher in a container) cannot see it: keep asking Docker.
                    if alive and pid and process_in_container(pid, container.id):
                        entrypoint_pid = pid
                if not alive:
                    raise SessionError("the entrypoint exited before the workspace was ready")
                next_liveness_check = time.monotonic() + (0.02 if entrypoint_pid else 0.25)
            time.sleep(delay)
            delay = min(delay * 1.5, 0.01)
        raise SessionError(f"not ready after {timeout:g}s: {last}")

    @staticmethod
    def _failure_reason(container: Container) -> str:
        try:
            container.reload()
            if container.status == "running":
                container.stop(timeout=5)
            logs = container.logs(stdout=True, stderr=True).decode(errors="replace")
        except docker.errors.APIError:
            return "the container vanished"
        errors = [line for line in logs.splitlines() if ENTRYPOINT_ERROR_MARK in line]
        if errors:
            return errors[-1].split(ENTRYPOINT_ERROR_MARK, 1)[1]
        tail = [line for line in logs.splitlines() if line.strip()][-3:]
        return " | ".join(tail) or "the entrypoint printed nothing"

    @staticmethod
    def _discard(container: Container, *dirs: Path) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)

    # -- use ----------------------------------------------------------------------------
    def exec(self, session_id: str, argv: list[str] | None = None, code: str | None = None,
             timeout: float = 60.0, stdin: bytes = b"") -> ExecResult:
        return self.executor(session_id).exec(argv=argv, code=code, timeout=timeout, stdin=stdin)

    def health(self, session_id: str) -> dict[str, Any]:
        return self.executor(session_id).health()

    # -- stop ---------------------------------------------------------------------------
    def stop(self, session_id: str, timeout: int = 30) -> int:
        """Graceful stop (SIGTERM: the entrypoint flushes and unmounts), then remove. Returns the exit code."""
        container = self.get(session_id)
        if container.status == "running":
            container.stop(timeout=timeout)
        result = container.wait(timeout=timeout + 30)
        code = int(result.get("StatusCode", -1))
        self._discard(container, *self._session_dirs(container))
        return code
