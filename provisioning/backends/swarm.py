"""Sessions on a Docker Swarm: one service per session (one task, never restarted), placed by
Swarm on a node labelled as a sandbox host, with reservations and limits so that its spread
placement sees real load. The workspace and the executor's control directory come from the
sandbox-host volume driver on whichever node the task lands (Swarm gives services no devices,
so only the host strategy works here); the control plane reaches the executor through that
node's gateway, over mutual TLS.

Runs where the Docker client is a swarm manager (the playbook puts the control plane's
certificate on managers)."""

from __future__ import annotations

import builtins  # list[...] in SwarmBackend, whose own list() shadows it there
import contextlib
import secrets
import ssl
import time
from typing import Any

import docker
import docker.errors
from docker.models.services import Service
from docker.types import (ContainerSpec, DriverConfig, EndpointSpec, Mount, Placement, Resources, RestartPolicy,
                          ServiceMode, TaskTemplate)

from .. import facts
from ..config import ValidSettings
from ..errors import SessionError, SessionExists, SessionNotFound
from ..executor_client import ExecutorError, RemoteExecutor, client_context
from ..hostinfo import docker_client
from ..uids import known_to_host
from ..validation import SessionId
from .base import SessionInfo, SessionSpec
from .container import SessionContainer, describe

NODE_LABEL = "io.sandbox-host.sandbox"  # nodes that take sessions: node.labels.io.sandbox-host.sandbox == true
LABEL_NODE = "io.sandbox-host.node"
STOP_GRACE_SECONDS = 20
RUNNING, DONE = "running", ("complete", "failed", "shutdown", "rejected", "orphaned", "remove")


def _nanos(cpus: float) -> int:
    return int(cpus * 1e9)


def _tasks(service: Service, attempts: int = 5) -> list[dict[str, Any]]:
    """A service's tasks; a connection the engine dropped under load is tried again."""
    import requests

    for attempt in range(attempts):
        try:
            return list(service.tasks())
        except requests.exceptions.ConnectionError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return []


class SwarmBackend:
    name = "swarm"

    def __init__(self, settings: ValidSettings, client: docker.DockerClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._tls: ssl.SSLContext | None = None

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client()
        return self._client

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            s = self.settings
            self._tls = client_context(s.tls_ca, s.tls_client_cert, s.tls_client_key)
        return self._tls

    # -- sandbox uids: unique across the fleet ---------------------------------------------------
    def _services(self, session_id: str | None = None) -> list[Service]:
        labels = [f"{facts.LABEL_MANAGED}=true"]
        if session_id:
            labels.append(f"{facts.LABEL_SESSION}={session_id}")
        try:
            services: list[Service] = self.client.services.list(filters={"label": labels})
        except docker.errors.APIError as exc:
            raise SessionError(f"the swarm backend needs a swarm manager: {exc.explanation}; "
                               "run sandbox-host on a manager node (playbooks/swarm.yml forms the swarm)") from None
        return services

    def lease_uid(self, session_id: SessionId) -> int:
        used = {int(s.attrs["Spec"]["Labels"].get(facts.LABEL_UID, 0)) for s in self._services()}
        first, last = self.settings.uid_range
        for _ in range(64):
            uid = first + secrets.randbelow(last - first + 1)
            if uid not in used and not known_to_host(uid):
                return uid
        raise SessionError(f"no free sandbox uid in {first}-{last}; widen uid_range")

    def release_uid(self, uid: int) -> None:
        """Nothing to release: a uid is taken as long as a service carries it."""

    # -- launch -----------------------------------------------------------------------------------
    def _spec(self, spec: SessionSpec) -> tuple[TaskTemplate, dict[str, str]]:
        plan, sid, uid = spec.plan, spec.session_id, spec.uid
        if plan.volume is None or plan.devices or plan.cap_add:
            raise SessionError("the swarm backend runs host-mounted sessions only (Swarm gives services no "
                               "devices and no SYS_ADMIN): set mount = host")
        # How the executor reaches the node here: its code and its socket come from a control
        # volume of the node's driver (the workspace's driver), mounted at CONTROL_MOUNT.
        command = ["python3", "-I", "-S", f"{facts.CONTROL_MOUNT}/app/executor.py",
                   "--socket", f"{facts.CONTROL_MOUNT}/sock/{facts.SOCKET_NAME}", "--workspace", facts.MOUNTPOINT]
        container = describe(spec, command, {})
        control = Mount(facts.CONTROL_MOUNT, facts.control_volume_name(sid, uid), type="volume", no_copy=True,
                        driver_config=DriverConfig(plan.volume.driver, {**plan.volume.options, "ephemeral": "true"}))
        return task_template(container, [control], spec.settings.cpus_reserved), container.labels

    def launch(self, spec: SessionSpec) -> SessionInfo:
        started = time.monotonic()
        sid = spec.session_id
        task, labels = self._spec(spec)
        if self._services(sid):
            raise SessionExists(f"session {sid} already exists; stop it first or use another id")
        try:
            created = self.client.api.create_service(
                task, name=facts.container_name(sid), labels=labels, mode=ServiceMode("replicated", 1),
                endpoint_spec=EndpointSpec(mode="vip", ports={}),
            )
            service = self.client.services.get(created["ID"])
        except docker.errors.APIError as exc:
            if exc.status_code == 409:
                raise SessionExists(f"session {sid} already exists; stop it first or use another id") from None
            raise SessionError(f"cannot create the service for session {sid}: {exc.explanation}") from None
        try:
            node = self._wait_running(service, spec.settings.placement_timeout)
            self._wait_ready(sid, node, spec.settings.ready_timeout)
        except BaseException:
            self._remove(service)
            raise
        info = self._info(self._reload(service), launch_seconds=round(time.monotonic() - started, 4))
        return info

    def _wait_running(self, service: Service, placement_timeout: float) -> dict[str, Any]:
        """Until the task runs; a task Swarm cannot place within the timeout is a clear error."""
        deadline = time.monotonic() + placement_timeout
        last = "not scheduled yet"
        while True:
            tasks = _tasks(service)
            if tasks:
                task = tasks[0]
                status = task.get("Status", {})
                state = status.get("State", "")
                last = status.get("Err") or status.get("Message") or state
                if state == RUNNING:
                    node: dict[str, Any] = self.client.api.inspect_node(task["NodeID"])
                    return node
                if state in DONE:
                    raise SessionError(f"the session's task ended before it ran ({state}): {last}")
            if time.monotonic() > deadline:
                raise SessionError(f"no sandbox node could take the session within {placement_timeout:g}s ({last}); "
                                   "add nodes, stop sessions, or lower memory/cpus")
            time.sleep(0.05)

    def _wait_ready(self, sid: SessionId, node: dict[str, Any], timeout: float) -> None:
        """Until the executor reports a mounted workspace, the node has sealed it (recorded the
        executor's process, closed its socket's directory: the node runs no exec before) and
        holds the session to its egress policy (until then it reaches nothing). No user code
        runs before all three."""
        executor = self._remote(sid, node)
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            try:
                health = executor.health(timeout=5)
            except ExecutorError as exc:
                last = str(exc)
            else:
                if health.get("ok"):
                    waiting = _seal(sid, executor)
                    if waiting is None:
                        status, body, _peer = executor.request("POST", "/egress", {}, timeout=20)
                        if status != 200:
                            raise SessionError(f"session {sid}: the node could not put its network rule in place: "
                                               f"{str(body.get('error'))[:500]}")
                        return
                    last = waiting
                else:
                    last = f"executor reports: {health.get('detail')}"
            time.sleep(0.05)
        raise SessionError(f"session {sid} not ready after {timeout:g}s: {last}")

    def _remote(self, sid: str, node: dict[str, Any]) -> RemoteExecutor:
        address = node.get("Status", {}).get("Addr", "")
        if not address:
            raise SessionError(f"node {node.get('Description', {}).get('Hostname', '?')} reports no address")
        return RemoteExecutor(address, self.settings.gateway_port, sid, self._context())

    # -- lookup -----------------------------------------------------------------------------------
    def _reload(self, service: Service) -> Service:
        return self.client.services.get(service.id)

    def _service(self, session_id: SessionId) -> Service:
        found = self._services(session_id)
        if not found:
            raise SessionNotFound(f"no session {session_id}; list sessions with 'sandbox-host session list'")
        return found[0]

    def _task(self, service: Service) -> dict[str, Any] | None:
        tasks = sorted(_tasks(service), key=lambda t: t.get("CreatedAt", ""))
        return tasks[-1] if tasks else None

    def _info(self, service: Service, launch_seconds: float | None = None) -> SessionInfo:
        labels = service.attrs["Spec"]["Labels"]
        sid = labels[facts.LABEL_SESSION]
        task = self._task(service)
        status, detail, node_name = "starting", "", ""
        if task is not None:
            state = task.get("Status", {}).get("State", "")
            node = self._node(task.get("NodeID", ""))
            node_name = node.get("Description", {}).get("Hostname", "") if node else ""
            node_state = node.get("Status", {}).get("State", "") if node else "unknown"
            code = task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode")
            if state == RUNNING and node_state != "ready":
                status, detail = "lost", f"node {node_name or '?'} is {node_state}: its engine does not answer"
            elif state == RUNNING:
                status = "running"
            elif state in DONE:
                status = "failed" if code == facts.EXIT_WORKSPACE_LOST or state in ("failed", "rejected") else "exited"
                detail = task.get("Status", {}).get("Err") or (f"exit status {code}" if code is not None else state)
                if code == facts.EXIT_WORKSPACE_LOST:
                    detail = "the workspace mount died (its s3fs ended); the session was ended"
            else:
                detail = state
        return SessionInfo(
            session_id=sid, container_id=service.id, container_name=service.name, status=status,
            image=service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].split("@")[0],
            network=self.settings.network, bucket=labels.get(facts.LABEL_BUCKET, ""),
            prefix=f"{facts.session_prefix(sid)}/", mount=labels.get(facts.LABEL_STRATEGY, ""),
            uid=int(labels.get(facts.LABEL_UID, "0") or 0), node=node_name, detail=detail,
            launch_seconds=launch_seconds, egress=labels.get(facts.LABEL_EGRESS, ""),
        )

    def _node(self, node_id: str) -> dict[str, Any]:
        if not node_id:
            return {}
        try:
            node: dict[str, Any] = self.client.api.inspect_node(node_id)
        except docker.errors.APIError:
            return {}
        return node

    def find(self, session_id: SessionId) -> SessionInfo | None:
        found = self._services(session_id)
        return self._info(found[0]) if found else None

    def list(self) -> list[SessionInfo]:
        return sorted((self._info(s) for s in self._services()), key=lambda s: s.session_id)

    def executor(self, session_id: SessionId) -> RemoteExecutor:
        service = self._service(session_id)
        info = self._info(service)
        info.require_running()
        task = self._task(service)
        assert task is not None
        return self._remote(session_id, self.client.api.inspect_node(task["NodeID"]))

    def sync(self, session_id: SessionId, timeout: float) -> None:
        """The session's node syncs its workspace (POST /sync on its gateway)."""
        status, body, _peer = self.executor(session_id).request("POST", "/sync", {"timeout": timeout},
                                                                timeout=timeout + 30)
        if status != 200:
            raise SessionError(f"session {session_id}: {str(body.get('error'))[:1000]}")

    # -- stop -------------------------------------------------------------------------------------
    def stop(self, session_id: SessionId, timeout: int) -> int:
        """Scale to zero (SIGTERM: the executor ends user code), wait for the node to release the
        workspace (its driver unmounts and waits for s3fs, which uploads what is pending), then
        remove the service. The task's exit status."""
        service = self._service(session_id)
        task = self._task(service)
        node = self._node(task.get("NodeID", "")) if task else {}
        code = -1
        if task is not None and task.get("Status", {}).get("State") == RUNNING:
            service.scale(0)
            deadline = time.monotonic() + timeout + STOP_GRACE_SECONDS
            while time.monotonic() < deadline:
                current = next((t for t in _tasks(service) if t["ID"] == task["ID"]), None)
                state = (current or {}).get("Status", {}).get("State", "")
                if current is None or state in DONE:
                    code = int((current or {}).get("Status", {}).get("ContainerStatus", {}).get("ExitCode", -1))
                    break
                time.sleep(0.1)
            if node.get("Status", {}).get("State") == "ready":
                self._wait_released(session_id, node, timeout)
        elif task is not None:
            code = int(task.get("Status", {}).get("ContainerStatus", {}).get("ExitCode", -1))
        self._remove(service)
        return code

    def _wait_released(self, sid: SessionId, node: dict[str, Any], timeout: int) -> None:
        """Until the node's driver has unmounted the workspace (drained: every write is in S3)."""
        remote = self._remote(sid, node)
        deadline = time.monotonic() + timeout + 120
        while time.monotonic() < deadline:
            status, body, _peer = remote.request("GET", "/released", timeout=40)
            if status == 200:
                if body.get("undrained"):
                    raise SessionError(f"session {sid} stopped, but not all of its writes reached S3: "
                                       f"{'; '.join(map(str, body['undrained']))}")
                return
        raise SessionError(f"node {node.get('Description', {}).get('Hostname', '?')} did not release session "
                           f"{sid}'s workspace in time")

    def _remove(self, service: Service) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            service.remove()

    # -- nodes (fleet operations) -------------------------------------------------------------------
    def nodes(self) -> builtins.list[dict[str, Any]]:
        rows = []
        sessions = self.list()
        for node in self.client.nodes.list():
            attrs = node.attrs
            name = attrs["Description"]["Hostname"]
            rows.append({
                "node": name, "role": attrs["Spec"]["Role"], "availability": attrs["Spec"]["Availability"],
                "state": attrs["Status"]["State"], "address": attrs["Status"].get("Addr", ""),
                "sandbox": attrs["Spec"].get("Labels", {}).get(NODE_LABEL) == "true",
                "sessions": sum(1 for s in sessions if s.node == name and s.status == "running"),
            })
        return sorted(rows, key=lambda r: r["node"])

    def set_availability(self, node_name: str, availability: str) -> None:
        """pause: takes no new sessions and keeps the ones it has (Swarm's own "drain" would stop
        them and place new tasks elsewhere); active: takes sessions again."""
        for node in self.client.nodes.list():
            if node.attrs["Description"]["Hostname"] == node_name:
                spec = dict(node.attrs["Spec"])
                spec["Availability"] = availability
                node.update(spec)
                return
        raise SessionNotFound(f"no node {node_name} in this swarm")


def _seal(sid: SessionId, executor: RemoteExecutor) -> str | None:
    """Ask the node to seal the session's executor (POST /seal: idempotent). None once sealed;
    why not yet, while the executor is not healthy (its health changed since it was read)."""
    status, body, _peer = executor.request("POST", "/seal", {}, timeout=10)
    if status == 200 and body.get("sealed"):
        return None
    error = str(body.get("error"))[:500]
    if status == 409 and body.get("kind") == "not-ready":
        return error
    if status == 404 and "kind" not in body:
        raise SessionError(f"session {sid}: the node's gateway has no /seal ({error}): it runs an older sandbox-host "
                           "than this control plane; converge the fleet (playbooks/site.yml)")
    raise SessionError(f"session {sid}: the node could not seal the executor's socket (HTTP {status}): {error}")


def task_template(container: SessionContainer, mounts: list[Mount], cpus_reserved: float) -> TaskTemplate:
    """The session's container as a Swarm service's one task: every part of the description
    (tests/unit/test_hardening.py checks none is dropped), plus ``mounts``, placement and a
    reservation that makes Swarm's spread placement see real load. What Swarm (20.10) cannot
    express is refused here rather than dropped."""
    if container.devices or container.security_opt or any(t.noexec for t in container.tmpfs):
        raise SessionError("Swarm services take no devices, security options or noexec tmpfs: set mount = host")
    if container.no_new_privileges and not any(part.endswith("/executor.py") for part in container.command):
        # Swarm 20.10 has no no-new-privileges for services: the executor sets it on itself.
        raise SessionError("a swarm session must run the executor, which sets no-new-privileges on itself")
    workspace = container.workspace
    assert workspace is not None  # the swarm backend's _spec refuses a session without one
    mounts = [
        Mount(workspace.target, workspace.name, type="volume", no_copy=True,
              driver_config=DriverConfig(workspace.driver, {**workspace.options, "ephemeral": "true"})),
        *mounts,
        *(Mount(t.target, None, type="tmpfs", tmpfs_size=t.size_bytes, tmpfs_mode=t.mode) for t in container.tmpfs),
    ]
    spec = ContainerSpec(
        container.image, command=list(container.command), args=[], user=container.user, workdir=container.workdir,
        env=container.env, labels=container.labels, mounts=mounts, read_only=container.read_only_root,
        cap_drop=list(container.cap_drop), cap_add=list(container.cap_add), init=container.init,
        stop_grace_period=STOP_GRACE_SECONDS * 10**9, stop_signal="SIGTERM",
    )
    resources = Resources(cpu_limit=container.nano_cpus, mem_limit=container.memory_bytes,
                          cpu_reservation=min(_nanos(cpus_reserved), container.nano_cpus),
                          mem_reservation=container.memory_bytes)
    resources["Limits"]["Pids"] = container.pids_limit
    return TaskTemplate(
        spec, resources=resources, restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=[f"node.labels.{NODE_LABEL} == true"]),
        log_driver={"Name": "json-file", "Options": {"max-size": container.log_max_size,
                                                     "max-file": str(container.log_files)}},
        # Swarm cannot attach a service to "none": a session whose egress is none joins the
        # sandbox network too, where its rule drops everything it sends.
        networks=[container.network],
    )
