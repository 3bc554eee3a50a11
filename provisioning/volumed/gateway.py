"""The node's executor gateway: how the control plane reaches the executors of sessions that
Swarm placed on this node, without SSH and without any unauthenticated port.

HTTPS with mutual TLS: the node presents its certificate, and only a client certificate issued
by the fleet's CA to the control plane (its common name) is served; other nodes' certificates
and anything else are refused at once. A request names a session; the gateway finds its control
volume on this node and talks to the executor's unix socket with the same checks as a local
launcher (the peer must be the executor process, recorded when the control plane sealed the
volume), under a total deadline and a size cap.

Connections are limited before anything is read (:data:`LIMITS`,
:mod:`provisioning.connlimits`): per peer and in total, with total deadlines for the TLS handshake,
the request head, its body and the answer, so a trickle of unfinished handshakes cannot pin the
gateway's threads.

    GET  /v1/sessions/<id>/health    (the executor's own /health answer; writes nothing)
    POST /v1/sessions/<id>/seal      (records the executor and closes its socket's directory;
                                      idempotent; the control plane's one write before user code)
    POST /v1/sessions/<id>/exec      (the executor's own /exec body and answer; only once sealed)
    GET  /v1/sessions/<id>/released  (200 once the workspace is unmounted: every write in S3;
                                      202 after 30 s of waiting)
    POST /v1/sessions/<id>/egress    (200 once the session's egress rule is in this node's kernel)
    POST /v1/sessions/<id>/sync      (200 once every write the session made before is in S3)

The contract of each (callers, answers, errors): docs/volume-service-protocol.md.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from .. import connlimits, facts
from ..errors import SandboxHostError
from ..executor_client import EXEC_MARGIN, ExecutorClient
from ..procs import ProcessRef
from ..validation import session_id
from .netguard import NetworkGuard
from .state import SealConflict, VolumeState
from .volumes import VolumeManager

CONTROL_PLANE_CN = "sandbox-host control plane"
MAX_BODY = 40 << 20  # an /exec request: its stdin (base64) and arguments
_PATH = re.compile(r"/v1/sessions/([^/]+)/(health|seal|exec|released|egress|sync)")
METHODS = {"health": "GET", "seal": "POST", "exec": "POST", "released": "GET", "egress": "POST", "sync": "POST"}


# How much a peer may hold of the gateway (connlimits.Limits):
# - max_per_peer: connections one peer holds at once (its address; a process on this node, by
#   the uid that owns its socket); a further one is closed at once. The control plane is one
#   peer, holding a connection per request in flight to this node's sessions (tens of them): 64
#   leaves it room, and is all one address can pin, each for at most the handshake's deadline
#   unless it has the control plane's certificate.
# - max_connections: all peers together; a further connection waits up to connection_wait
#   seconds for a free slot, then is closed. Each holds one thread.
# - handshake, head: the most time for the TLS handshake, and for a request's line and headers,
#   in total (a byte trickled now and then does not extend them).
# - body + Content-Length / min_rate: for a request's body: an /exec body of at most 40 MiB gets
#   70 s at 1 MiB/s, a rate any fleet network beats. The wait for the executor that follows has
#   its own bound (the request's timeout).
# - answer + answer size / min_rate: for writing the answer.
# - backlog: connections the kernel queues for the accept loop (socketserver's default of 5
#   drops a burst of connects).
LIMITS = connlimits.Limits(max_per_peer=64, max_connections=512, connection_wait=10.0, handshake=10.0, head=10.0,
                           body=30.0, answer=30.0, min_rate=1 << 20, backlog=1024)


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


class _Handler(connlimits.GuardedHandler):
    protocol_version = "HTTP/1.1"
    server: GatewayServer
    timeout = 60  # per read, once the handshake is done; each phase has its total deadline

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def setup(self) -> None:
        conn: ssl.SSLSocket = self.request
        conn.settimeout(self.server.guard.limits.handshake)  # per read; the guard's deadline is the total
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
        if len(body) < length:  # the client went away, or its body's deadline cut it: act on nothing
            self.close_connection = True
            return
        self.body_done()  # what follows waits for the executor, under its own timeouts
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


class GatewayServer(connlimits.GuardedServer, ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], manager: VolumeManager, tls: TLSFiles,
                 log: Callable[[str], None] = lambda _m: None, limits: connlimits.Limits = LIMITS,
                 netguard: NetworkGuard | None = None) -> None:
        self.manager = manager
        self.log = log
        self.netguard = netguard  # the sessions' network on this node (egress rules)
        self.context = server_context(tls)
        self.guard = connlimits.Guard(limits)
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        # The handshake happens in the handler's thread (setup), never in the accept loop.
        return self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a refused or broken connection is not worth a traceback

    def forward(self, sid: str, what: str, method: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if method != METHODS[what]:
            return 405, {"error": f"use {METHODS[what]}"}
        if what == "egress":
            if self.netguard is None:
                return 502, {"error": "this node's volume service guards no network", "kind": "network"}
            rule = self.netguard.admit(session_id=sid)
            return 200, {"address": str(rule.address), "policy": str(rule.policy)}
        if what == "sync":
            try:
                request = json.loads(body or b"{}")
                timeout = min(float(request.get("timeout", facts.DRAIN_TIMEOUT)), facts.DRAIN_TIMEOUT)
            except (ValueError, TypeError, AttributeError, RecursionError):
                return 400, {"error": "the request body is not a JSON object with a numeric timeout"}
            self.manager.sync(sid, timeout)
            return 200, {"synced": True}
        if what == "released":
            released, undrained = self.manager.wait_released(sid, timeout=30)
            return (200 if released else 202), {"released": released, "undrained": undrained}
        state = self.manager.session_control(sid)
        sealed = ProcessRef.load(state.executor) if state.executor else None
        # Until the seal, the peer must be the container's first process (the executor: user
        # code never is); from then on, the process the seal recorded.
        client = ExecutorClient(self.manager.control_dir(state.name) / "sock", "", sealed)
        if what == "health":
            status, answer, _peer = client.request("GET", "/health", timeout=5)
            return status, answer
        if what == "seal":
            return self._seal(state, client)
        if sealed is None:
            return 409, {"error": f"session {sid} is not sealed yet: its control plane seals it once the executor "
                                  "reports healthy"}
        try:
            request = json.loads(body)
            timeout = float(request.get("timeout", 60)) if isinstance(request, dict) else 60.0
        except (ValueError, TypeError, RecursionError):
            return 400, {"error": "the request body is not a JSON object"}
        status, answer, _peer = client.request("POST", "/exec", request, timeout=timeout + EXEC_MARGIN)
        return status, answer

    def _seal(self, state: VolumeState, client: ExecutorClient) -> tuple[int, dict[str, Any]]:
        """Record the process that answers as the executor and close its socket's directory, once
        it reports a mounted workspace (no user code runs before: exec waits for the seal). Sealed
        already: 200 if the recorded executor still answers, whatever its health."""
        status, health, peer = client.request("GET", "/health", timeout=5)
        assert peer is not None  # a unix socket's peer, checked before the request was sent
        if not state.executor and not (status == 200 and health.get("ok")):
            return 409, {"error": f"session {state.session_id}'s executor is not healthy yet: "
                                  f"{str(health.get('detail') or health.get('error'))[:500]}", "kind": "not-ready"}
        try:
            changed = self.manager.seal(state, peer)
        except SealConflict as exc:
            return 409, {"error": str(exc), "kind": exc.kind}
        if changed:
            self.log(f"session {state.session_id}: executor sealed (pid {peer.pid})")
        return 200, {"sealed": True, "health": health}


def serve(manager: VolumeManager, listen: str, tls: TLSFiles, log: Callable[[str], None],
          stop: threading.Event, guard: NetworkGuard | None = None) -> None:
    host, _, port = listen.rpartition(":")
    server = GatewayServer((host.strip("[]") or "0.0.0.0", int(port or facts.GATEWAY_PORT)), manager, tls, log,
                           netguard=guard)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    log(f"executor gateway listening on {listen} (mutual TLS)")
    stop.wait()
    server.shutdown()
    server.server_close()
