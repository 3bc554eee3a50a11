"""The node's executor gateway, served in-process on loopback with a throwaway CA: mutual TLS
(only the control plane's certificate is served), what a peer can hold of it (a flood of
unfinished handshakes is capped per peer and cut at the handshake's deadline), and the seal
(an explicit POST, idempotent, bound to the executor; health writes nothing; exec waits for it),
with the control plane's side of it."""

from __future__ import annotations

import dataclasses

import datetime as dt
import ipaddress
import json
import os
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from provisioning import connlimits, facts, validation
from provisioning.backends.swarm import SwarmBackend
from provisioning.config import Settings
from provisioning.errors import SessionError
from provisioning.executor_client import ExecutorError, RemoteExecutor, client_context
from provisioning.procs import ProcessRef, namespace_init
from provisioning.volumed.gateway import CONTROL_PLANE_CN, LIMITS, GatewayServer, TLSFiles
from provisioning.volumed.state import SealConflict, VolumeState
from provisioning.volumed.volumes import VolumeManager

from .local_peer import NOBODY, LocalPeer, Spec

UNKNOWN_SESSION = "t0123456789ab"


# -- a throwaway fleet CA ------------------------------------------------------------------
@dataclass(frozen=True)
class Fleet:
    ca: Path
    node: TLSFiles
    control_plane: tuple[str, str, str]  # ca, cert, key: what client_context takes
    other_node: tuple[str, str, str]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(directory: Path, name: str, common_name: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           usage: x509.ObjectIdentifier | None) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer_cert, issuer_key = ca if ca else (None, key)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(issuer_cert.subject if issuer_cert else _name(common_name))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True))
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (directory / f"{name}.key").write_bytes(pem)
    return cert, key


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    """What roles/sandbox_swarm issues: a CA, the node's server certificate, the control plane's
    client certificate (its common name is what the gateway serves), another node's."""
    directory = tmp_path_factory.mktemp("fleet-tls")
    ca = _issue(directory, "ca", "sandbox-host fleet CA", None, None)
    _issue(directory, "node", "node-1", ca, ExtendedKeyUsageOID.SERVER_AUTH)
    _issue(directory, "control", CONTROL_PLANE_CN, ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    _issue(directory, "other", "node-2", ca, ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {name: (str(directory / "ca.crt"), str(directory / f"{name}.crt"), str(directory / f"{name}.key"))
             for name in ("control", "other")}
    return Fleet(directory / "ca.crt", TLSFiles(directory / "ca.crt", directory / "node.crt", directory / "node.key"),
                 files["control"], files["other"])


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> VolumeManager:
    """A volume service with no session on this node (its S3 endpoint is never reached)."""
    directory = tmp_path_factory.mktemp("gateway-node")
    settings = Settings(s3_endpoint="http://127.0.0.1:9", bucket="gateway-test", access_key="AKIAGATEWAYTEST",
                        secret_key="gateway-test-secret-0123456789").validated()
    return VolumeManager(settings, data_dir=directory / "data", state_dir=directory / "state")


@contextmanager
def serving(manager: VolumeManager, fleet: Fleet, limits: connlimits.Limits = LIMITS) -> Iterator[GatewayServer]:
    server = GatewayServer(("127.0.0.1", 0), manager, fleet.node, limits=limits)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def health(server: GatewayServer, files: tuple[str, str, str], timeout: float = 5) -> tuple[int, dict[str, object]]:
    remote = RemoteExecutor("127.0.0.1", server.server_port, UNKNOWN_SESSION, client_context(*files))
    status, body, _peer = remote.request("GET", "/health", timeout=timeout)
    return status, body


# -- mutual TLS ------------------------------------------------------------------------------
def test_only_the_control_planes_certificate_is_served(manager: VolumeManager, fleet: Fleet) -> None:
    with serving(manager, fleet) as server:
        status, body = health(server, fleet.control_plane)
        assert (status, body["kind"]) == (404, "not-found")
        with pytest.raises(ExecutorError):
            health(server, fleet.other_node)
        anonymous = ssl.create_default_context(cafile=str(fleet.ca))
        with pytest.raises(ExecutorError):
            RemoteExecutor("127.0.0.1", server.server_port, UNKNOWN_SESSION, anonymous).request("GET", "/health")


# -- what a peer can hold --------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="floods as another uid: needs root")
def test_a_handshake_flood_is_capped_and_cut_while_the_control_plane_is_served(manager: VolumeManager,
                                                                               fleet: Fleet) -> None:
    """1,000 connections from another local user, each trickling a TLS record a byte a second
    (within the per-read timeout, which is the handshake's deadline too): the user holds its
    share of the gateway (the rest are closed at once), the control plane is answered at once
    meanwhile, and the share is cut at the handshake's deadline.

    The flood comes from 127.0.0.2, and as another uid than the control plane's client here
    (root): a local peer is the uid owning its socket, whatever loopback address it binds, or a
    user could take a share per address of 127.0.0.0/8."""
    limits = dataclasses.replace(LIMITS, handshake=1.5)
    before = threading.active_count()
    with serving(manager, fleet, limits) as server:
        flood = Spec(target=("127.0.0.1", server.server_port), source="127.0.0.2", count=1000,
                     openings=["\x16\x03\x01\x02\x00"], trickle="\x00", every=1.0)
        with LocalPeer(flood) as peer:
            connected = peer.wait_for("connected", within=10, accept=lambda e: e["count"] == 1000)
            assert connected["seconds"] < 0.9  # the backlog held the burst: no SYN dropped, retried 1 s later
            held = peer.wait_for("status", within=1.5, accept=lambda e: e["closed"] >= 1000 - limits.max_per_peer)
            assert held["open"] == limits.max_per_peer
            assert server.guard.caps.held(f"uid {NOBODY}") == limits.max_per_peer

            started = time.monotonic()
            status, body = health(server, fleet.control_plane)
            assert (status, body["kind"]) == (404, "not-found")
            assert time.monotonic() - started < 1.0
            # The flood's handlers; besides, the accept loop, the watchdog and the control plane's finishing one.
            assert threading.active_count() - before <= limits.max_per_peer + 3

            peer.wait_for("status", within=limits.handshake + 1.5, accept=lambda e: e["open"] == 0)
            lifetimes = sorted(peer.stop()["lifetimes"])
        assert len(lifetimes) == 1000
        refused, cut = lifetimes[:-limits.max_per_peer], lifetimes[-limits.max_per_peer:]
        assert refused[-1] < 1.0
        assert limits.handshake - 0.1 <= cut[0] and cut[-1] < limits.handshake + 1.0
        assert server.guard.caps.held(f"uid {NOBODY}") == 0


# -- the seal: an explicit write, before any user code -----------------------------------------
# A stand-in for the executor (standard library only): answers GET /health (ok while a file
# exists) and echoes POST /exec. Run by `unshare --pid --fork` it is PID 1 of a PID namespace of
# its own, as the executor is in a session's container; run plainly it is any local process.
FAKE_EXECUTOR = r"""
import json, os, socketserver, sys
directory, ok_file = sys.argv[1], sys.argv[2]
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        method, path, _version = self.rfile.readline().decode().split(" ", 2)
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = self.rfile.read(length)
        if path == "/health":
            ok = os.path.exists(ok_file)
            status, answer = (200 if ok else 503), {"ok": ok, "detail": "mounted" if ok else "not mounted yet"}
        else:
            status, answer = 200, {"ran": json.loads(body)}
        data = json.dumps(answer).encode()
        self.wfile.write(f"HTTP/1.1 {status} X\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                         + data)
os.chdir(directory)  # a relative address: a unix socket's path is capped at 108 bytes
socketserver.UnixStreamServer("executor.sock", Handler).serve_forever()
"""

SESSION = "seal-test"
SESSION_UID = 1900000007

def _pid_namespaces() -> bool:
    """Root (control volumes are chowned to the session's uid) with PID namespaces to make."""
    if os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--pid", "--fork", "true"], check=False, capture_output=True).returncode == 0


needs_root = pytest.mark.skipif(not _pid_namespaces(), reason="needs root and unshare --pid")


@dataclass
class Node:
    """A node's volume service with one session's control volume (as Swarm's task mounts it)."""

    manager: VolumeManager
    state: VolumeState
    sock: Path  # the executor's socket directory
    ok_file: Path

    def start_executor(self, own_namespace: bool = True) -> subprocess.Popen[bytes]:
        (self.sock / "executor.sock").unlink(missing_ok=True)
        prefix = ["unshare", "--pid", "--fork", "--kill-child"] if own_namespace else []
        proc = subprocess.Popen([*prefix, sys.executable, "-c", FAKE_EXECUTOR, str(self.sock), str(self.ok_file)])
        deadline = time.monotonic() + 10
        while not (self.sock / "executor.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the stand-in executor did not start"
            time.sleep(0.02)
        return proc

    def saved(self) -> str:
        return (self.manager.state_dir / f"{self.state.name}.json").read_text()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    settings = Settings(s3_endpoint="http://127.0.0.1:9", bucket="gateway-test", access_key="AKIAGATEWAYTEST",
                        secret_key="gateway-test-secret-0123456789").validated()
    manager = VolumeManager(settings, data_dir=tmp_path / "data", state_dir=tmp_path / "state")
    name = facts.control_volume_name(SESSION, SESSION_UID)
    manager.create(name, {"session": SESSION, "uid": str(SESSION_UID), "gid": str(SESSION_UID), "ephemeral": "true"})
    manager.mount(name, "task-1")
    ok_file = tmp_path / "healthy"
    ok_file.touch()
    yield Node(manager, manager.get(name), manager.control_dir(name) / "sock", ok_file)


def call(server: GatewayServer, fleet: Fleet, method: str, what: str,
         body: dict[str, object] | None = None) -> tuple[int, dict[str, object]]:
    remote = RemoteExecutor("127.0.0.1", server.server_port, SESSION, client_context(*fleet.control_plane))
    status, answer, _peer = remote.request(method, f"/{what}", body, timeout=10)
    return status, answer


def owner_and_mode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_uid, stat.S_IMODE(info.st_mode)


def stopped(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()  # unshare ignores SIGTERM; --kill-child takes its child down with it
    proc.wait(10)


@needs_root
def test_health_writes_nothing_and_exec_waits_for_the_seal(node: Node, fleet: Fleet) -> None:
    executor = node.start_executor()
    before = node.saved()
    try:
        with serving(node.manager, fleet) as server:
            for _ in range(3):
                assert call(server, fleet, "GET", "health") == (200, {"ok": True, "detail": "mounted"})
            status, answer = call(server, fleet, "POST", "exec", {"argv": ["true"]})
            assert status == 409 and "not sealed yet" in str(answer["error"])
    finally:
        stopped(executor)
    assert node.state.executor == "" and node.saved() == before
    assert owner_and_mode(node.sock) == (SESSION_UID, 0o700)


@needs_root
def test_seal_records_the_executor_closes_its_directory_and_is_idempotent(node: Node, fleet: Fleet) -> None:
    executor = node.start_executor()
    try:
        with serving(node.manager, fleet) as server:
            status, answer = call(server, fleet, "POST", "seal")
            assert (status, answer["sealed"]) == (200, True)
            assert owner_and_mode(node.sock) == (0, 0o755)
            sealed = ProcessRef.load(node.state.executor)
            assert sealed is not None and namespace_init(sealed.pid)  # the stand-in, PID 1 of its namespace
            assert f"PPid:\t{executor.pid}\n" in Path(f"/proc/{sealed.pid}/status").read_text()
            saved = node.saved()
            assert json.loads(saved)["executor"] == sealed.dump()

            assert call(server, fleet, "POST", "seal")[0] == 200  # again: nothing changes
            assert node.saved() == saved
            assert call(server, fleet, "POST", "exec", {"argv": ["true"]}) == (200, {"ran": {"argv": ["true"]}})
            assert call(server, fleet, "GET", "seal")[0] == 405
            assert call(server, fleet, "POST", "health")[0] == 405
            assert call(server, fleet, "GET", "exec")[0] == 405
    finally:
        stopped(executor)


@needs_root
def test_seal_waits_for_a_healthy_executor(node: Node, fleet: Fleet) -> None:
    node.ok_file.unlink()
    executor = node.start_executor()
    try:
        with serving(node.manager, fleet) as server:
            status, answer = call(server, fleet, "POST", "seal")
            assert (status, answer["kind"]) == (409, "not-ready") and "not mounted yet" in str(answer["error"])
            assert node.state.executor == "" and owner_and_mode(node.sock) == (SESSION_UID, 0o700)
            node.ok_file.touch()
            assert call(server, fleet, "POST", "seal")[0] == 200
    finally:
        stopped(executor)


@needs_root
def test_seal_refuses_a_peer_that_is_not_a_containers_first_process(node: Node, fleet: Fleet) -> None:
    """What user code would be, had it run before the seal (it never does: exec waits for it)."""
    impostor = node.start_executor(own_namespace=False)
    try:
        with serving(node.manager, fleet) as server:
            for method, what in (("POST", "seal"), ("GET", "health")):
                status, answer = call(server, fleet, method, what)
                assert (status, answer["kind"]) == (502, "executor") and "is not this session's executor" in str(
                    answer["error"])
    finally:
        stopped(impostor)
    assert node.state.executor == "" and owner_and_mode(node.sock) == (SESSION_UID, 0o700)


@needs_root
def test_a_sealed_session_is_served_only_through_its_executor(node: Node, fleet: Fleet) -> None:
    """Once sealed, a socket put in place by another process (only root can, now) is refused,
    even one from a container's first process; and the seal is not moved to it."""
    first = node.start_executor()
    with serving(node.manager, fleet) as server:
        try:
            assert call(server, fleet, "POST", "seal")[0] == 200
        finally:
            stopped(first)
        sealed = node.state.executor
        second = node.start_executor()
        try:
            for method, what, body in (("GET", "health", None), ("POST", "seal", None),
                                       ("POST", "exec", {"argv": ["true"]})):
                status, answer = call(server, fleet, method, what, body)
                assert (status, answer["kind"]) == (502, "executor")
        finally:
            stopped(second)
    assert node.state.executor == sealed


@needs_root
def test_the_seal_moves_to_no_other_process(node: Node) -> None:
    first, second = ProcessRef(os.getpid(), 1), ProcessRef(os.getpid(), 2)
    assert node.manager.seal(node.state, first) is True
    assert node.manager.seal(node.state, first) is False
    with pytest.raises(SealConflict, match="sealed to process"):
        node.manager.seal(node.state, second)
    assert node.state.executor == first.dump()


def test_seal_of_a_session_not_on_this_node_is_not_found(manager: VolumeManager, fleet: Fleet) -> None:
    with serving(manager, fleet) as server:
        remote = RemoteExecutor("127.0.0.1", server.server_port, UNKNOWN_SESSION, client_context(*fleet.control_plane))
        status, answer, _peer = remote.request("POST", "/seal", {}, timeout=5)
        assert (status, answer["kind"]) == (404, "not-found")


def test_sync_of_a_session_not_on_this_node_is_not_found_and_a_bad_body_is_refused(manager: VolumeManager,
                                                                                   fleet: Fleet) -> None:
    with serving(manager, fleet) as server:
        remote = RemoteExecutor("127.0.0.1", server.server_port, UNKNOWN_SESSION, client_context(*fleet.control_plane))
        status, answer, _peer = remote.request("POST", "/sync", {"timeout": 5}, timeout=5)
        assert (status, answer["kind"]) == (404, "not-found")
        assert "is mounted on this node" in answer["error"]
        status, answer, _peer = remote.request("POST", "/sync", {"timeout": "soon"}, timeout=5)
        assert status == 400 and "numeric timeout" in answer["error"]
        status, answer, _peer = remote.request("GET", "/sync", timeout=5)
        assert status == 405


# -- the control plane's side (SwarmBackend._wait_ready) ---------------------------------------
class FakeNode:
    """A node's gateway as the control plane sees it: scripted answers, each call recorded."""

    def __init__(self, seals: list[tuple[int, dict[str, object]]]) -> None:
        self.seals = seals
        self.calls: list[str] = []

    def health(self, timeout: float = 5) -> dict[str, object]:
        self.calls.append("GET /health")
        return {"ok": True}

    def request(self, method: str, path: str, body: dict[str, object] | None = None,
                timeout: float | None = 30) -> tuple[int, dict[str, object], None]:
        self.calls.append(f"{method} {path}")
        if path == "/seal":
            status, answer = self.seals.pop(0)
            return status, answer, None
        return 200, {"address": "10.0.0.2", "policy": "internet"}, None


def ready(manager: VolumeManager, fake: FakeNode, timeout: float = 5) -> None:
    backend = SwarmBackend(manager.settings)
    backend._remote = lambda _sid, _node: fake  # type: ignore[method-assign,assignment,return-value]
    backend._wait_ready(validation.session_id(SESSION), {}, timeout)


def test_the_control_plane_seals_once_healthy_then_asks_for_the_network_rule(manager: VolumeManager) -> None:
    fake = FakeNode([(409, {"error": "not mounted yet", "kind": "not-ready"}), (200, {"sealed": True})])
    ready(manager, fake)
    assert fake.calls == ["GET /health", "POST /seal", "GET /health", "POST /seal", "POST /egress"]


def test_the_control_plane_says_when_a_node_cannot_seal(manager: VolumeManager) -> None:
    with pytest.raises(SessionError, match="older sandbox-host"):
        ready(manager, FakeNode([(404, {"error": "no such endpoint /v1/sessions/seal-test/seal"})]))
    with pytest.raises(SessionError, match="could not seal the executor's socket.*HTTP 502.*not this session's"):
        ready(manager, FakeNode([(502, {"error": "its peer is not this session's executor", "kind": "executor"})]))
    fake = FakeNode([(409, {"error": "not mounted yet", "kind": "not-ready"})] * 1000)
    with pytest.raises(SessionError, match="not ready after 0.3s: not mounted yet"):
        ready(manager, fake, timeout=0.3)
    assert "POST /egress" not in fake.calls
