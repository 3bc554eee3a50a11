"""Launch, inspect and stop session containers (Docker SDK)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from . import render, validation
from .config import Settings
from .executor_client import ExecResult, ExecutorClient, ExecutorError
from .hostinfo import docker_client
from .mounts import ContainerFile, InContainerFuse, MountStrategy
from .storage import SessionStorage

LABEL_MANAGED = "io.sandbox-host.managed"
LABEL_SESSION = "io.sandbox-host.session"
LABEL_BUCKET = "io.sandbox-host.bucket"
LABEL_STRATEGY = "io.sandbox-host.mount-strategy"
LABEL_CONTROL = "io.sandbox-host.control-dir"
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


def _tar(files: list[ContainerFile]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for item in files:
            info = tarfile.TarInfo(item.path.lstrip("/"))
            info.size = len(item.data)
            info.mode = item.mode
            info.uid = info.gid = 0
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(item.data))
    return buffer.getvalue()


class SessionManager:
    def __init__(self, settings: Settings, *, client: docker.DockerClient | None = None,
                 strategy: MountStrategy | None = None, storage: SessionStorage | None = None) -> None:
        self.settings = settings
        self._client = client
        self.strategy = strategy or InContainerFuse()
        self._storage = storage

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
    def _control_dir(self, session_id: str) -> Path:
        return Path(self.settings.state_dir) / "sessions" / session_id

    def _prepare_control_dir(self, session_id: str, settings: Settings) -> Path:
        path = self._control_dir(session_id)
        if path.exists():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
        path.mkdir(mode=0o700)
        os.chown(path, settings.uid, settings.gid)
        return path

    def create(self, session_id: str) -> SessionInfo:
        """Start a session and wait until its executor reports a mounted workspace."""
        started = time.monotonic()
        sid = validation.session_id(session_id)
        settings = self.settings.validated()
        credentials = settings.credentials
        self.strategy.check(settings)
        plan = self.strategy.plan(sid, settings, credentials)  # renders: every input checked here

        existing = self._find(sid)
        if existing is not None:
            if existing.status in ("running", "created", "restarting", "paused"):
                raise SessionExists(
                    f"session {sid} already exists (container {existing.short_id}, {existing.status}); "
                    "stop it first or use another id"
                )
            existing.remove(force=True)  # an ended session's leftover container

        try:
            self.client.images.get(settings.image)
        except docker.errors.ImageNotFound:
            raise SessionError(f"image {settings.image} not found; build it with 'sandbox-host image build'") from None

        storage = self.storage
        storage.ensure_bucket()
        storage.ensure_layout(sid)

        control = self._prepare_control_dir(sid, settings)
        labels = {
            LABEL_MANAGED: "true",
            LABEL_SESSION: sid,
            LABEL_BUCKET: settings.bucket,
            LABEL_STRATEGY: self.strategy.name,
            LABEL_CONTROL: str(control),
            LABEL_UID: str(settings.uid),
        }
        try:
            container = self.client.containers.create(
                settings.image,
                name=container_name(sid),
                labels=labels,
                network_mode=settings.network,
                devices=plan.devices,
                cap_drop=["ALL"],
                cap_add=plan.cap_add,
                security_opt=plan.security_opt,
                tmpfs=plan.tmpfs,
                volumes={str(control): {"bind": render.CONTROL_DIR, "mode": "rw"}},
                mem_limit=settings.memory,
                memswap_limit=settings.memory,
                nano_cpus=int(settings.cpus * 1e9),
                pids_limit=settings.pids_limit,
                init=False,
                detach=True,
            )
        except docker.errors.APIError as exc:
            shutil.rmtree(control, ignore_errors=True)
            if exc.status_code == 409:
                raise SessionExists(f"session {sid} already exists (a concurrent create won)") from None
            raise SessionError(f"cannot create the container for session {sid}: {exc.explanation}") from None

        try:
            if plan.files and not container.put_archive("/", _tar(plan.files)):
                raise SessionError(f"could not place the entrypoint in the container for session {sid}")
            container.start()
            self._wait_ready(container, settings.ready_timeout)
        except BaseException as exc:
            reason = self._failure_reason(container) if isinstance(exc, SessionError | ExecutorError) else None
            self._discard(container, control)
            if reason:
                raise SessionError(f"session {sid} failed to start: {reason}") from None
            raise
        container.reload()
        return self.info(container, launch_seconds=round(time.monotonic() - started, 4))

    def _wait_ready(self, container: Container, timeout: float) -> None:
        """Poll the executor's health: cheap local socket checks, Docker asked only now and then."""
        client = self._executor_for(container)
        socket_path = client.control_dir / "executor.sock"
        deadline = time.monotonic() + timeout
        delay, next_docker_check = 0.005, time.monotonic() + 0.25
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
            if time.monotonic() >= next_docker_check:
                container.reload()
                if container.status in ("exited", "dead"):
                    raise SessionError("the entrypoint exited before the workspace was ready")
                next_docker_check = time.monotonic() + 0.25
            time.sleep(delay)
            delay = min(delay * 1.5, 0.05)
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
    def _discard(container: Container, control: Path) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        shutil.rmtree(control, ignore_errors=True)

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
        control = Path(container.labels.get(LABEL_CONTROL, self._control_dir(session_id)))
        if container.status == "running":
            container.stop(timeout=timeout)
        result = container.wait(timeout=timeout + 30)
        code = int(result.get("StatusCode", -1))
        self._discard(container, control)
        return code
