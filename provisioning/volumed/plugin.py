"""Docker's volume plugin protocol (HTTP + JSON on a unix socket in /run/docker/plugins/),
served for a :class:`VolumeManager`. Docker calls ``/VolumeDriver.*`` (Create, Mount, Unmount,
Remove, Get...); `sandbox-host` on this host calls ``/SandboxHost.*`` (Settings, Egress, Network,
Released, Sync; Wait and Volumes have no caller in the runtime).

Every call, who calls it, its answer, what it writes, how long it blocks and how it fails:
docs/volume-service-protocol.md."""

from __future__ import annotations

import json
import os
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from .. import facts
from ..config import SERVICE_SETTINGS
from ..errors import SandboxHostError
from ..validation import session_id
from .netguard import NetworkGuard
from .volumes import VolumeManager

CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
MAX_BODY = 1 << 20


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: PluginServer
    timeout = 60  # a client that sends half a request does not hold a thread forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(400, {"Err": "bad Content-Length"})
            return
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):
            self._reply(400, {"Err": "the request body is not a JSON object"})
            return
        route = self.server.routes.get(self.path)
        if route is None:
            self._reply(404, {"Err": f"unknown endpoint {self.path}"})
            return
        try:
            answer = route(body)
        except SandboxHostError as exc:
            answer = {"Err": str(exc)}
        except Exception as exc:  # noqa: BLE001 - Docker shows Err to the user; the service lives on
            self.server.log(f"{self.path}: {type(exc).__name__}: {exc}")
            answer = {"Err": f"internal error in {self.path}: {type(exc).__name__}"}
        self._reply(200, answer)

    do_GET = do_POST  # noqa: N815

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class PluginServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: Path, manager: VolumeManager, log: Callable[[str], None] = lambda _m: None,
                 guard: NetworkGuard | None = None) -> None:
        self.manager = manager
        self.log = log
        self.guard = guard
        self.routes: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "/Plugin.Activate": lambda _b: {"Implements": ["VolumeDriver"]},
            "/VolumeDriver.Capabilities": lambda _b: {"Capabilities": {"Scope": "local"}},
            "/VolumeDriver.Create": self._create,
            "/VolumeDriver.Remove": self._remove,
            "/VolumeDriver.Mount": self._mount,
            "/VolumeDriver.Unmount": self._unmount,
            "/VolumeDriver.Path": self._path,
            "/VolumeDriver.Get": self._get,
            "/VolumeDriver.List": self._list,
            "/SandboxHost.Volumes": lambda _b: {"Volumes": [v.to_json() for v in manager.list()], "Err": ""},
            "/SandboxHost.Released": self._released,
            "/SandboxHost.Sync": self._sync,
            "/SandboxHost.Settings": self._settings,
            "/SandboxHost.Egress": self._egress,
            "/SandboxHost.Network": lambda _b: {**(guard.status() if guard else {"Network": manager.settings.network,
                                                                                  "Ready": False,
                                                                                  "Problem": "guards no network"}),
                                                "Err": ""},
            "/SandboxHost.Wait": lambda b: {
                "Volume": manager.wait(self._name(b), float(b.get("Timeout", 30))).to_json(), "Err": ""},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        old = os.umask(0o177)  # root only: Docker (and sandbox-host, as root) are the clients
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        self.path = path

    @staticmethod
    def _name(body: dict[str, Any]) -> str:
        name = body.get("Name")
        if not isinstance(name, str) or not name:
            raise SandboxHostError("the request names no volume")
        return name

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("Name") == "sandbox-host-engine-probe":
            return {"Err": "the engine's lookup of this driver (not a volume)"}
        opts = body.get("Opts") or {}
        if not isinstance(opts, dict):
            raise SandboxHostError("Opts must be an object")
        self.manager.create(self._name(body), opts)
        return {"Err": ""}

    def _remove(self, body: dict[str, Any]) -> dict[str, Any]:
        self.manager.remove(self._name(body))
        return {"Err": ""}

    def _mount(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Mountpoint": str(self.manager.mount(self._name(body), str(body.get("ID", "")))), "Err": ""}

    def _unmount(self, body: dict[str, Any]) -> dict[str, Any]:
        self.manager.unmount(self._name(body), str(body.get("ID", "")))
        return {"Err": ""}

    def _path(self, body: dict[str, Any]) -> dict[str, Any]:
        state = self.manager.get(self._name(body))
        mounted = state.status == "mounted"
        return {"Mountpoint": str(self.manager.mountpoint(state.name)) if mounted else "", "Err": ""}

    def _describe(self, name: str) -> dict[str, Any]:
        state = self.manager.get(name)
        volume: dict[str, Any] = {"Name": name, "Status": {"status": state.status, "session": state.session_id}}
        if state.error:
            volume["Status"]["error"] = state.error
        if state.status == "mounted":
            volume["Mountpoint"] = str(self.manager.mountpoint(name))
        return volume

    def _released(self, body: dict[str, Any]) -> dict[str, Any]:
        """Once the session's workspaces are drained and unmounted here: which did not drain."""
        released, undrained = self.manager.wait_released(str(body.get("Session", "")),
                                                         min(float(body.get("Timeout", 30)), facts.DRAIN_TIMEOUT + 60))
        return {"Released": released, "Undrained": undrained, "Err": ""}

    def _sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """Once every write the session made before the call is in S3 (the session runs on)."""
        timeout = min(float(body.get("Timeout", facts.DRAIN_TIMEOUT)), facts.DRAIN_TIMEOUT)
        self.manager.sync(session_id(str(body.get("Session", ""))), timeout)
        return {"Err": ""}

    def _settings(self, _body: dict[str, Any]) -> dict[str, Any]:
        """What this service decides for the sessions it mounts (no secret): where their data
        lives, how it is mounted, the network it guards. Launchers refuse to differ."""
        settings = self.manager.settings
        return {"Settings": {name: getattr(settings, name) for name in SERVICE_SETTINGS}, "Err": ""}

    def _egress(self, body: dict[str, Any]) -> dict[str, Any]:
        """Once the session container's egress rule is in the kernel: its address and policy."""
        container = body.get("Container")
        if not isinstance(container, str) or not container:
            raise SandboxHostError("the request names no container")
        if self.guard is None:
            raise SandboxHostError(f"this volume service guards no network (network = "
                                   f"{self.manager.settings.network}); sessions cannot join one")
        rule = self.guard.admit(container_id=container)
        return {"Address": str(rule.address), "Policy": str(rule.policy), "Err": ""}

    def _get(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"Volume": self._describe(self._name(body)), "Err": ""}

    def _list(self, _body: dict[str, Any]) -> dict[str, Any]:
        return {"Volumes": [self._describe(v.name) for v in self.manager.list()], "Err": ""}


def serve(manager: VolumeManager, socket_path: Path, log: Callable[[str], None],
          stop: threading.Event | None = None, guard: NetworkGuard | None = None) -> None:
    """Serve until ``stop`` is set (or forever). Stopping leaves every mount in place: a new
    instance adopts them (:meth:`VolumeManager.adopt`)."""
    server = PluginServer(socket_path, manager, log, guard)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    log(f"volume driver listening on {socket_path}")
    try:
        (stop or threading.Event()).wait()
    finally:
        server.shutdown()
        server.server_close()
        socket_path.unlink(missing_ok=True)
