"""The connection limits both servers use: who a peer is (a local one by the uid owning its
socket, found by sock_diag or in /proc/net/tcp{,6}), per-peer and total caps, and the watchdog
that cuts a connection at its deadline whatever trickles in."""

from __future__ import annotations

import ipaddress
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from provisioning import connlimits
from provisioning.connlimits import Endpoint, PeerCaps, Watchdog

from .local_peer import NOBODY, LocalPeer, Spec


def listener(host: str, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind((host, 0))
    sock.listen(8)
    sock.settimeout(10)
    return sock


def ends(conn: socket.socket) -> tuple[Endpoint, Endpoint]:
    return connlimits.endpoint(conn.getpeername()), connlimits.endpoint(conn.getsockname())


@pytest.fixture
def ipv6_loopback() -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")


# -- the peer's uid --------------------------------------------------------------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="connects as another uid: needs root")
@pytest.mark.parametrize(("listen", "family", "target", "source"), [
    ("127.0.0.1", socket.AF_INET, "127.0.0.1", "127.0.0.2"),
    ("::1", socket.AF_INET6, "::1", "::1"),
    # A dual-stack listener sees an IPv4 peer as ::ffff:127.0.0.1; its socket is in /proc/net/tcp.
    ("::ffff:127.0.0.1", socket.AF_INET6, "127.0.0.1", "127.0.0.1"),
    # An IPv6 socket connected to an IPv4 address: its row is in /proc/net/tcp6, mapped.
    ("127.0.0.1", socket.AF_INET, "::ffff:127.0.0.1", "::ffff:127.0.0.2"),
], ids=["ipv4", "ipv6", "ipv4-mapped", "ipv6-socket-to-ipv4"])
def test_a_local_peer_is_the_uid_that_owns_its_socket(listen: str, family: int, target: str, source: str,
                                                     request: pytest.FixtureRequest) -> None:
    if ":" in listen + target:
        request.getfixturevalue("ipv6_loopback")
    with listener(listen, family) as server, \
            LocalPeer(Spec(target=(target, server.getsockname()[1]), source=source)) as peer:
        peer.wait_for("connected", within=10, accept=lambda e: e["count"] == 1)
        conn, _ = server.accept()
        with conn:
            remote, local = ends(conn)
            assert connlimits.sock_diag_owner(remote, local) == NOBODY
            assert connlimits.proc_net_owner(remote, local) == NOBODY
            assert connlimits.peer_key(conn) == f"uid {NOBODY}"


def test_roots_own_connection_is_uid_0_and_a_missing_socket_is_none() -> None:
    with listener("127.0.0.1") as server, socket.create_connection(server.getsockname()[:2]) as client:
        conn, _ = server.accept()
        with conn:
            assert connlimits.peer_key(conn) == f"uid {os.geteuid()}"
            remote, local = ends(conn)
            gone = Endpoint(remote.ip, client.getsockname()[1] ^ 1)  # a port no socket here has
            assert connlimits.sock_diag_owner(gone, local) is None
            assert connlimits.proc_net_owner(gone, local) is None
            assert connlimits.socket_owner(gone, local) is None


@pytest.mark.skipif(sys.byteorder != "little", reason="the expected text is a little-endian host's")
def test_addresses_are_written_as_proc_net_tcp_prints_them() -> None:
    v4 = Endpoint(ipaddress.ip_address("127.0.0.1"), 8080)
    v6 = Endpoint(ipaddress.ip_address("::1"), 80)
    mapped = Endpoint(ipaddress.ip_address("::ffff:127.0.0.2"), 443)
    assert connlimits.proc_address(v4) == b"0100007F:1F90"
    assert connlimits.proc_address(v6) == b"00000000000000000000000001000000:0050"
    assert connlimits.proc_address(mapped) == b"0000000000000000FFFF00000200007F:01BB"


def test_a_mapped_address_is_the_ipv4_address_it_is() -> None:
    assert connlimits.endpoint(("::ffff:10.0.0.9", 5, 0, 0)) == Endpoint(ipaddress.ip_address("10.0.0.9"), 5)


# -- caps ------------------------------------------------------------------------------------
def test_a_peer_at_its_cap_is_refused_at_once_and_others_are_not() -> None:
    caps = PeerCaps(per_peer=2, total=3, wait=5.0)
    assert caps.acquire("uid 65534") and caps.acquire("uid 65534")
    started = time.monotonic()
    assert not caps.acquire("uid 65534")
    assert time.monotonic() - started < 0.5  # not the 5 s wait
    assert caps.acquire("uid 0")
    assert caps.held("uid 65534") == 2
    caps.release("uid 65534")
    assert caps.held("uid 65534") == 1 and caps.acquire("uid 65534")


def test_past_the_total_cap_a_connection_waits_for_a_slot_then_is_refused() -> None:
    caps = PeerCaps(per_peer=5, total=1, wait=0.2)
    assert caps.acquire("ip 10.0.0.1")
    started = time.monotonic()
    assert not caps.acquire("ip 10.0.0.2")
    assert 0.19 <= time.monotonic() - started < 1.0
    assert caps.held("ip 10.0.0.2") == 0  # its reservation is given back
    threading.Timer(0.1, caps.release, args=("ip 10.0.0.1",)).start()
    assert caps.acquire("ip 10.0.0.2")


def test_a_closing_cap_stops_waiting() -> None:
    caps = PeerCaps(per_peer=5, total=1, wait=30.0)
    assert caps.acquire("a")
    threading.Timer(0.1, caps.close).start()
    started = time.monotonic()
    assert not caps.acquire("b")
    assert time.monotonic() - started < 1.0


def test_settings_must_be_positive_and_the_error_names_the_setting() -> None:
    with pytest.raises(ValueError, match=r"Limits.head is 0"):
        connlimits.Limits(max_per_peer=1, max_connections=1, connection_wait=1, head=0, body=1, answer=1,
                          min_rate=1, backlog=1)


# -- the watchdog ------------------------------------------------------------------------------
@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield ours, theirs


def closed_by_then(sock: socket.socket, within: float) -> float | None:
    """When the other side shut ``sock``'s connection down (seconds from now), or None."""
    started = time.monotonic()
    sock.settimeout(within)
    try:
        while sock.recv(1):
            pass
    except TimeoutError:
        return None
    return time.monotonic() - started


def test_the_watchdog_cuts_at_the_deadline_whatever_trickles_in(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    watchdog = Watchdog(resolution=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=watchdog.watch, args=(stop,))
    thread.start()
    try:
        watchdog.arm(ours, 0.3)
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # a byte every 0.05 s: a per-read timeout would never fire
            try:
                theirs.send(b"x")
            except OSError:
                break
            if not ours.recv(1):
                break
            time.sleep(0.05)
        assert 0.29 <= time.monotonic() - started < 1.0
    finally:
        stop.set()
        thread.join()


def test_extend_and_disarm(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    watchdog = Watchdog(resolution=0.05)
    watchdog.arm(ours, 0.05)
    watchdog.extend(ours, 60)  # e.g. the time for an answer's size at the minimum rate
    time.sleep(0.1)
    assert watchdog.reap() == 0
    watchdog.arm(ours, 0.05)  # the next phase's deadline replaces it
    time.sleep(0.1)
    assert watchdog.reap() == 1
    assert closed_by_then(theirs, within=1.0) is not None
    watchdog.arm(theirs, 0.01)
    watchdog.disarm(theirs)
    time.sleep(0.05)
    assert watchdog.reap() == 0
