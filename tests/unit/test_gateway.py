"""The node's executor gateway, served in-process on loopback with a throwaway CA: mutual TLS
(only the control plane's certificate is served), and what a peer can hold of it (a flood of
unfinished handshakes is capped per peer and cut at the handshake's deadline)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
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

from provisioning.config import Settings
from provisioning.executor_client import ExecutorError, RemoteExecutor, client_context
from provisioning.volumed.gateway import CONTROL_PLANE_CN, GatewayLimits, GatewayServer, TLSFiles
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
    now = dt.datetime.now(dt.timezone.utc)
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
def serving(manager: VolumeManager, fleet: Fleet, limits: GatewayLimits = GatewayLimits()) -> Iterator[GatewayServer]:
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
    limits = GatewayLimits(handshake_timeout=1.5)
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

            peer.wait_for("status", within=limits.handshake_timeout + 1.5, accept=lambda e: e["open"] == 0)
            lifetimes = sorted(peer.stop()["lifetimes"])
        assert len(lifetimes) == 1000
        refused, cut = lifetimes[:-limits.max_per_peer], lifetimes[-limits.max_per_peer:]
        assert refused[-1] < 1.0
        assert limits.handshake_timeout - 0.1 <= cut[0] and cut[-1] < limits.handshake_timeout + 1.0
        assert server.guard.caps.held(f"uid {NOBODY}") == 0
