"""Connection limits for the project's threaded HTTP servers (the embedded S3 endpoint, the
fleet's executor gateway): how much of a server one peer, and all peers together, may hold.

* **Caps, checked at accept before anything is read**: at most ``max_per_peer`` connections of
  one peer at once (a further one is refused at once: waiting for its own slot would stall the
  accept loop for everyone behind it), and at most ``max_connections`` in all (a further one
  waits up to ``connection_wait`` seconds for a free slot, then is refused). A refused connection
  is told so by the server (:meth:`GuardedServer.refuse`), then closed.
* **A peer** is the uid that owns the other end of a local connection (every local user comes
  from 127.0.0.1, so by address one user could take every other user's share), else the peer's
  IP address: :func:`peer_key`.
* **A deadline for each phase** of a connection, a total that a trickle of bytes cannot extend
  (a per-read timeout is reset by each byte): the TLS handshake, the request line and headers,
  the body (a base time plus Content-Length at a minimum rate), the answer (a base time plus its
  size at that rate). One watchdog thread per server shuts a late connection's socket down, so
  whatever its handler is blocked in returns at once. The server's own work between the body and
  the answer is the server's to bound (:meth:`GuardedHandler.body_done`).
* **A listen backlog** of ``backlog``: connections the kernel holds while the accept loop is busy
  (socketserver's default of 5 drops a burst of connects, which clients retry seconds later).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import ipaddress
import os
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler
from typing import Any, NamedTuple

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def require_positive(settings: Any) -> None:
    """Raise ValueError naming the first number in a settings dataclass that is not above 0."""
    for item in dataclasses.fields(settings):
        value = getattr(settings, item.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not value > 0:
            raise ValueError(f"{type(settings).__name__}.{item.name} is {value!r}: "
                             "it must be a number greater than 0 (seconds, bytes, bytes per second or a count)")


@dataclass(frozen=True)
class Limits:
    """What a :class:`Guard` enforces, built by each server from its settings (their defaults and
    the reasons for them: ``provisioning.devstore.server.ServerLimits``,
    ``provisioning.volumed.gateway.LIMITS``). Times in seconds, ``min_rate`` in bytes per
    second; ``handshake`` is None for a server without TLS."""

    max_per_peer: int
    max_connections: int
    connection_wait: float
    head: float
    body: float
    answer: float
    min_rate: float
    backlog: int
    handshake: float | None = None

    def __post_init__(self) -> None:
        require_positive(self)

    @property
    def first(self) -> float:
        """The deadline a connection starts with, at accept."""
        return self.handshake if self.handshake is not None else self.head

    @property
    def resolution(self) -> float:
        """How often the watchdog looks: a quarter of the shortest deadline, within 0.05-1 s, so a
        deadline is enforced at most a quarter late."""
        shortest = min(self.first, self.head, self.body, self.answer)
        return max(0.05, min(1.0, shortest / 4))


# -- who the peer is -----------------------------------------------------------------------
class Endpoint(NamedTuple):
    ip: IPAddress
    port: int


def endpoint(address: tuple[Any, ...]) -> Endpoint:
    """A socket address as an Endpoint; an IPv4-mapped IPv6 address (a dual-stack socket's view
    of an IPv4 peer) as the IPv4 address it is."""
    ip = ipaddress.ip_address(str(address[0]))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return Endpoint(ip, int(address[1]))


def peer_key(conn: socket.socket) -> str:
    """Whom a connection counts against: ``uid N`` when the peer is a process on this host, by the
    uid that owns its socket; else ``ip ADDRESS``. A process here connects from a loopback
    address, or from our own address when it dials that (the gateway listens on the node's). A
    local peer whose socket is not found (it closed already) counts by its address."""
    peer, ours = endpoint(conn.getpeername()), endpoint(conn.getsockname())
    if peer.ip.is_loopback or peer.ip == ours.ip:
        uid = socket_owner(peer, ours)
        if uid is not None:
            return f"uid {uid}"
    return f"ip {peer.ip}"


def socket_owner(local: Endpoint, remote: Endpoint) -> int | None:
    """The uid that owns this host's TCP socket bound to ``local`` and connected to ``remote``
    (in this network namespace), or None if there is none.

    Asks the kernel for that one socket (sock_diag, the interface ``ss`` uses): about 15 us
    whatever the number of sockets. Where netlink is not available, reads /proc/net/tcp and tcp6
    instead, which costs milliseconds per lookup (the kernel walks its whole connection table to
    print them) in the accept loop, where every connection waits for it."""
    try:
        return sock_diag_owner(local, remote)
    except OSError:
        return proc_net_owner(local, remote)


_NETLINK_SOCK_DIAG, _SOCK_DIAG_BY_FAMILY, _NLMSG_ERROR, _NLM_F_REQUEST = 4, 20, 2, 1
_NLMSG_HEADER = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_DIAG_REQUEST = struct.Struct("=BBBBI")  # inet_diag_req_v2: family, protocol, extensions, pad, states
_DIAG_UID_OFFSET = _NLMSG_HEADER.size + 4 + 48 + 12  # inet_diag_msg: 4 bytes, the socket id, 3 counters
_ANY = 0xFFFFFFFF  # every TCP state; no socket cookie to match


def sock_diag_owner(local: Endpoint, remote: Endpoint) -> int | None:
    """:func:`socket_owner` by netlink; raises OSError where the kernel cannot answer."""
    if local.ip.version == 4:
        # An IPv4 connection's socket may be IPv4, or IPv6 with mapped addresses: ask for either.
        uid = _diag_query(socket.AF_INET, local, remote)
        if uid is not None:
            return uid
        local, remote = _mapped(local), _mapped(remote)
    return _diag_query(socket.AF_INET6, local, remote)


def _mapped(address: Endpoint) -> Endpoint:
    return Endpoint(ipaddress.IPv6Address(f"::ffff:{address.ip}"), address.port)


def _diag_query(family: int, local: Endpoint, remote: Endpoint) -> int | None:
    socket_id = (struct.pack("!HH", local.port, remote.port) + local.ip.packed.ljust(16, b"\0")
                 + remote.ip.packed.ljust(16, b"\0") + struct.pack("=III", 0, _ANY, _ANY))
    body = _DIAG_REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, _ANY) + socket_id
    request = _NLMSG_HEADER.pack(_NLMSG_HEADER.size + len(body), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as netlink:
        netlink.settimeout(1.0)
        netlink.send(request)
        answer = netlink.recv(4096)
    kind = _NLMSG_HEADER.unpack_from(answer)[1]
    if kind == _NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, _NLMSG_HEADER.size)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, f"sock_diag: {os.strerror(code)}")
    if kind != _SOCK_DIAG_BY_FAMILY or len(answer) < _DIAG_UID_OFFSET + 4:
        raise OSError(errno.EPROTO, f"sock_diag: unexpected answer (type {kind}, {len(answer)} bytes)")
    return int(struct.unpack_from("=I", answer, _DIAG_UID_OFFSET)[0])


def proc_address(address: Endpoint) -> bytes:
    """An address as /proc/net/tcp and tcp6 print it: each 32-bit word of the address as the host
    stores it (so 127.0.0.1 is 0100007F on a little-endian host), in hex, then the port in hex."""
    packed = address.ip.packed
    words = "".join(f"{int.from_bytes(packed[i:i + 4], sys.byteorder):08X}" for i in range(0, len(packed), 4))
    return f"{words}:{address.port:04X}".encode()


def _proc_tables(local: Endpoint, remote: Endpoint) -> Iterator[tuple[str, bytes, bytes]]:
    if local.ip.version == 4:
        yield "/proc/net/tcp", proc_address(local), proc_address(remote)
        local, remote = _mapped(local), _mapped(remote)
    yield "/proc/net/tcp6", proc_address(local), proc_address(remote)


def proc_net_owner(local: Endpoint, remote: Endpoint) -> int | None:
    """:func:`socket_owner` from /proc/net/tcp{,6}: the row whose local address is ``local`` and
    remote address ``remote`` has the owner's uid in its eighth column."""
    for path, wanted_local, wanted_remote in _proc_tables(local, remote):
        try:
            table = open(path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError:
            continue
        with table:
            next(table, None)  # the column names
            for row in table:
                # sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid ...
                fields = row.split()
                if len(fields) > 7 and fields[1] == wanted_local and fields[2] == wanted_remote:
                    return int(fields[7])
    return None


# -- caps and deadlines --------------------------------------------------------------------
class PeerCaps:
    """Connection slots per peer and in total, that a stopping server can stop waiting for."""

    def __init__(self, per_peer: int, total: int, wait: float) -> None:
        self._per_peer = per_peer
        self._total = threading.BoundedSemaphore(total)
        self._wait = wait
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self._closing = threading.Event()

    def held(self, peer: str) -> int:
        with self._lock:
            return self._held.get(peer, 0)

    def acquire(self, peer: str) -> bool:
        """A slot for ``peer``: False at once if it holds its share, False after the wait if every
        slot stays taken."""
        with self._lock:
            if self._held.get(peer, 0) >= self._per_peer:
                return False
            self._held[peer] = self._held.get(peer, 0) + 1
        if self._acquire_total():
            return True
        self._drop(peer)
        return False

    def release(self, peer: str) -> None:
        self._total.release()
        self._drop(peer)

    def close(self) -> None:
        self._closing.set()

    def _acquire_total(self) -> bool:
        deadline = time.monotonic() + self._wait
        while not self._closing.is_set():
            if self._total.acquire(timeout=min(0.1, max(0.0, deadline - time.monotonic()))):
                return True
            if time.monotonic() >= deadline:
                return False
        return False

    def _drop(self, peer: str) -> None:
        with self._lock:
            left = self._held.get(peer, 0) - 1
            if left > 0:
                self._held[peer] = left
            else:
                self._held.pop(peer, None)


def cut(sock: socket.socket) -> None:
    """Shut a connection down both ways: its handler's blocked read or write returns at once.
    socket.socket's own shutdown, also for a TLS socket: ssl.SSLSocket's would drop its TLS state
    under the handler thread still using it."""
    with contextlib.suppress(OSError):  # closed or reset already
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Watchdog:
    """Cuts each armed socket whose deadline has passed."""

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._lock = threading.Lock()
        self._due: dict[socket.socket, float] = {}

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[sock] = time.monotonic() + seconds

    def extend(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            if sock in self._due:
                self._due[sock] += seconds

    def disarm(self, sock: socket.socket) -> None:
        """Once this returns, the watchdog no longer touches ``sock``: it may be closed (and its
        descriptor number reused) safely."""
        with self._lock:
            self._due.pop(sock, None)

    def reap(self) -> int:
        now = time.monotonic()
        with self._lock:  # held while cutting: see disarm
            expired = [sock for sock, due in self._due.items() if due <= now]
            for sock in expired:
                del self._due[sock]
                cut(sock)
        return len(expired)

    def watch(self, stop: threading.Event) -> None:
        while not stop.wait(self.resolution):
            self.reap()


class Guard:
    """One server's caps and deadlines: :class:`GuardedServer` admits and releases connections,
    :class:`GuardedHandler` moves each from phase to phase."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.caps = PeerCaps(limits.max_per_peer, limits.max_connections, limits.connection_wait)
        self.watchdog = Watchdog(limits.resolution)
        self._lock = threading.Lock()
        self._peers: dict[socket.socket, str] = {}

    def admit(self, conn: socket.socket) -> bool:
        """At accept, before anything is read: a slot for the connection's peer, and its first
        deadline (the TLS handshake's, or the request head's)."""
        try:
            peer = peer_key(conn)
        except OSError:
            return False  # reset before it was looked at
        if not self.caps.acquire(peer):
            return False
        with self._lock:
            self._peers[conn] = peer
        self.watchdog.arm(conn, self.limits.first)
        return True

    def release(self, conn: socket.socket) -> None:
        """Before the connection is closed; nothing for one that was never admitted."""
        self.watchdog.disarm(conn)
        with self._lock:
            peer = self._peers.pop(conn, None)
        if peer is not None:
            self.caps.release(peer)

    def head(self, conn: socket.socket) -> None:
        self.watchdog.arm(conn, self.limits.head)

    def body(self, conn: socket.socket, length: int) -> None:
        self.watchdog.arm(conn, self.limits.body + length / self.limits.min_rate)

    def working(self, conn: socket.socket) -> None:
        self.watchdog.disarm(conn)

    def answer(self, conn: socket.socket) -> None:
        self.watchdog.arm(conn, self.limits.answer)

    def sending(self, conn: socket.socket, size: int) -> None:
        """Time for ``size`` more bytes of the answer: the server's size, not the client's pace."""
        self.watchdog.extend(conn, size / self.limits.min_rate)

    def close(self) -> None:
        self.caps.close()


# -- the server and handler sides ----------------------------------------------------------
class GuardedServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """A threading TCP server whose connections its ``guard`` admits and times. Set ``guard``
    before the base class's __init__, which listens with the guard's backlog."""

    guard: Guard

    @property
    def request_queue_size(self) -> int:  # type: ignore[override]  # socketserver only reads it, for listen()
        return self.guard.limits.backlog

    def refuse(self, request: Any) -> None:
        """What a connection over a cap is told before it is closed: nothing, here."""

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.guard.admit(request):
            self.refuse(request)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)  # on failure, socketserver shuts it down

    def shutdown_request(self, request: Any) -> None:
        # socketserver's one way out for every accepted connection, whatever happened to it.
        self.guard.release(request)
        super().shutdown_request(request)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        stop = threading.Event()
        watchdog = threading.Thread(target=self.guard.watchdog.watch, args=(stop,), name="connection-deadlines",
                                    daemon=True)
        watchdog.start()
        try:
            super().serve_forever(poll_interval)
        finally:
            stop.set()
            watchdog.join()

    def shutdown(self) -> None:
        self.guard.close()  # the accept loop stops waiting for a free slot
        super().shutdown()


def declared_length(headers: Message) -> int:
    text = str(headers.get("Content-Length") or "0").strip()
    return int(text) if text.isdigit() else 0  # a bad one is the handler's to refuse


class GuardedHandler(BaseHTTPRequestHandler):
    """An HTTP handler whose connection's deadline follows its phases: the request line and
    headers, the body (by its Content-Length), the answer (by its size). A handler that reads the
    body itself, then works for longer than the body's deadline would allow (the gateway waiting
    for an executor), calls :meth:`body_done` first."""

    server: GuardedServer
    _answering = False

    def setup(self) -> None:
        super().setup()
        self.wfile = _PacedWriter(self.wfile, self._sending)

    def handle_one_request(self) -> None:
        self._answering = False
        self.server.guard.head(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.server.guard.body(self.connection, declared_length(self.headers))
        return parsed

    def send_response(self, code: int, message: str | None = None) -> None:
        if not self._answering:
            self._answering = True
            self.server.guard.answer(self.connection)
        super().send_response(code, message)

    def body_done(self) -> None:
        self.server.guard.working(self.connection)

    def _sending(self, size: int) -> None:
        if self._answering:  # an interim "100 Continue" is written within the body's time
            self.server.guard.sending(self.connection, size)


class _PacedWriter(io.BufferedIOBase):
    """A handler's output, announcing each write's size before the write can block."""

    def __init__(self, inner: io.BufferedIOBase, before_write: Callable[[int], None]) -> None:
        super().__init__()
        self._inner = inner
        self._before_write = before_write

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        with memoryview(data) as view:
            self._before_write(view.nbytes)
        return self._inner.write(data)

    def flush(self) -> None:
        self._inner.flush()

    def close(self) -> None:
        try:
            super().close()  # flushes through to the inner writer while it is open
        finally:
            self._inner.close()
