"""The node's executor gateway: how the control plane reaches the executors of sessions that
Swarm placed on this node, without SSH and without any unauthenticated port.

HTTPS with mutual TLS: the node presents its certificate, and only a client certificate issued
by the fleet's CA to the control plane (its common name) is served; other nodes' certificates
and anything else are refused at once. A request names a session; the gateway finds its control
volume on this node and talks to the executor's unix socket with the same checks as a local
launcher (the peer must be the executor process, recorded when the volume was sealed), under a
total deadline and a size cap.

    GET  /v1/sessions/<id>/health
    POST /v1/sessions/<id>/exec      (the executor's own /exec body and answer)
    GET  /v1/sessions/<id>/released  (200 once the workspace is unmounted: every write in S3;
                                      202 after 30 s of waiting)
    POST /v1/sessions/<id>/egress    (200 once the session's egress rule is in this node's kernel)
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .. import facts
from ..errors import SandboxHostError
from ..executor_client import EXEC_MARGIN, ExecutorClient
from ..procs import ProcessRef
from ..validation import session_id
from .netguard import NetworkGuard
from .volumes import VolumeManager

CONTROL_PLANE_CN = "sandbox-host control plane"
MAX_BODY = 40 << 20  # an /exec request: its stdin (base64) and arguments
HANDSHAKE_TIMEOUT = 10.0
_PATH = re.compile(r"/v1/sessions/([^/]+)/(health|exec|released|egress)")


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def server_context(tls: TLSFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(tls.cert, tls.key)
    context.load_verify_locations(tls.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def common_name(cert: dict[str, Any]) -> str:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayServer
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def setup(self) -> None:
        conn: ssl.SSLSocket = self.request
        conn.settimeout(HANDSHAKE_TIMEOUT)
        conn.do_handshake()
        if common_name(conn.getpeercert() or {}) != CONTROL_PLANE_CN:
            raise ConnectionRefusedError("not the control plane")
        super().setup()

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802 - the base class's name
        self._serve("POST")

    def _serve(self, method: str) -> None:
        match = _PATH.fullmatch(self.path)
        if match is None:
            self._reply(404, {"error": f"no such endpoint {self.path[:100]}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._reply(413, {"error": f"request body must be at most {MAX_BODY} bytes"})
            return
        body = self.rfile.read(length) if length else b""
        try:
            sid = session_id(match.group(1))
            status, answer = self.server.forward(sid, match.group(2), method, body)
        except SandboxHostError as exc:
            status, answer = (404 if exc.kind == "not-found" else 502), {"error": str(exc), "kind": exc.kind}
        except Exception as exc:  # noqa: BLE001 - the control plane gets a reason, the gateway lives on
            self.server.log(f"{self.path}: {type(exc).__name__}: {exc}")
            status, answer = 500, {"error": f"internal error: {type(exc).__name__}"}
        self._reply(status, answer)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class GatewayServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], manager: VolumeManager, tls: TLSFiles,
                 log: Callable[[str], None] = lambda _m: None, guard: NetworkGuard | None = None) -> None:
        self.manager = manager
        self.log = log
        self.guard = guard
        self.context = server_context(tls)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # The handshake happens in the handler's thread (setup), never in the accept loop.
        return self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused or broken connection is not worth a traceback

    def forward(self, sid: str, what: str, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if what == "egress":
            if method != "POST":
                return 405, {"error": "use POST"}
            if self.guard is None:
                return 502, {"error": "this node's volume service guards no network", "kind": "network"}
            rule = self.guard.admit(session_id=sid)
            return 200, {"address": str(rule.address), "policy": str(rule.policy)}
        if what == "released":
            released, undrained = self.manager.wait_released(sid, timeout=30)
            return (200 if released else 202), {"released": released, "undrained": undrained}
        state = self.manager.session_control(sid)
        control = self.manager.control_dir(state.name) / "sock"
        executor = ProcessRef.load(state.executor) if state.executor else None
        client = ExecutorClient(control, "", executor)
        if what == "health":
            if method != "GET":
                return 405, {"error": "use GET"}
            status, answer, peer = client.request("GET", "/health", timeout=5)
            if executor is None:
                self.manager.seal(state, peer)  # the first answer: no user code has run yet
            return status, answer
        if method != "POST":
            return 405, {"error": "use POST"}
        if executor is None:
            return 409, {"error": f"session {sid} is not ready yet"}
        try:
            request = json.loads(body)
            timeout = float(request.get("timeout", 60)) if isinstance(request, dict) else 60.0
        except (ValueError, TypeError, RecursionError):
            return 400, {"error": "the request body is not a JSON object"}
        status, answer, _peer = client.request("POST", "/exec", request, timeout=timeout + EXEC_MARGIN)
        return status, answer


def serve(manager: VolumeManager, listen: str, tls: TLSFiles, log: Callable[[str], None],
          stop: threading.Event, guard: NetworkGuard | None = None) -> None:
    host, _, port = listen.rpartition(":")
    server = GatewayServer((host.strip("[]") or "0.0.0.0", int(port or facts.GATEWAY_PORT)), manager, tls, log, guard)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    log(f"executor gateway listening on {listen} (mutual TLS)")
    stop.wait()
    server.shutdown()
    server.server_close()
