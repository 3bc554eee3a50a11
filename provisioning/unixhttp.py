"""HTTP over a unix socket with the standard library alone: what the runtime's three local
clients share (the Docker engine's container inspect, the volume service's plugin socket, a
session's executor). An HTTP library (the Docker SDK's requests and urllib3) costs more to import
than these calls take, and none of them bounds a whole call.

One request per connection (``Connection: close``), and every call is bounded:

- a deadline for the whole call, not per read: a peer that trickles a byte a second cannot
  stretch it;
- a cap on the answer's size, checked as it arrives: a flood is cut in bounded memory;
- a strict reading of the answer: a complete head of bounded size, an HTTP/1.x status line with
  a three-digit status, and a Content-Length that matches the body (required where the caller's
  server always sends one);
- the peer's credentials (SO_PEERCRED), for a caller that must know who serves the socket before
  it sends a byte (:meth:`Connection.peer`).

Failures are typed (:class:`Unreachable`, :class:`TimedOut`, :class:`TooLarge`,
:class:`Malformed`): each client says them in its own words, naming its service and the fix.
The exchange works on any connected socket (the executor's gateway is reached over TLS).
"""

from __future__ import annotations

import json
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from .errors import SandboxHostError

MAX_HEAD = 16 << 10  # status line and headers
_READ = 1 << 16


class HTTPFailure(SandboxHostError):
    """A call that got no usable answer. The clients catch these and raise their own errors."""

    kind = "http"


class Unreachable(HTTPFailure):
    """Connecting, sending or reading failed (``connected``: whether the connect had succeeded)."""

    def __init__(self, address: str, error: OSError, connected: bool) -> None:
        self.address, self.error, self.connected = address, error, connected
        super().__init__(f"{address}: {'connection failed' if connected else 'cannot connect'} "
                         f"({error.strerror or error})")


class TimedOut(HTTPFailure):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"no answer within {seconds:g}s")


class TooLarge(HTTPFailure):
    def __init__(self, address: str, limit: int) -> None:
        self.address, self.limit = address, limit
        super().__init__(f"{address}: the answer exceeds {limit} bytes")


MalformedPart = Literal["head", "status-line", "length", "json"]


class Malformed(HTTPFailure):
    """``part``: what was wrong (no complete head, the status line, the length, the JSON body);
    ``status``: the answer's status once it was read."""

    def __init__(self, part: MalformedPart, status: int | None = None) -> None:
        self.part, self.status = part, status
        super().__init__(f"malformed answer ({part}{'' if status is None else f', HTTP {status}'})")


class Deadline:
    """The end of a whole call (``seconds`` None: no end)."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self._end = None if seconds is None else time.monotonic() + seconds

    def remaining(self) -> float | None:
        """Seconds left, for the next socket operation's timeout; TimedOut once none are."""
        if self._end is None or self.seconds is None:
            return None
        left = self._end - time.monotonic()
        if not left > 0:  # a NaN timeout (from a request's JSON) ends too
            raise TimedOut(self.seconds)
        return left


@dataclass(frozen=True)
class Peer:
    """Who holds the other end of a unix socket (as of its connect or listen)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the path (and query), already quoted
    host: str = "localhost"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None  # None: no body and no Content-Length
    version: str = "HTTP/1.1"

    def encode(self) -> bytes:
        lines = [f"{self.method} {self.target} {self.version}", f"Host: {self.host}", "Connection: close",
                 *(f"{name}: {value}" for name, value in self.headers)]
        if self.body is not None:
            lines.append(f"Content-Length: {len(self.body)}")
        if any(c in line for line in lines for c in "\r\n\0"):  # would end the head early, or forge a line
            raise ValueError(f"a line break or NUL in the request's head: {lines!r:.300}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (self.body or b"")

    @classmethod
    def json(cls, method: str, target: str, host: str, data: object) -> Request:
        """A request whose body is ``data`` as JSON."""
        return cls(method, target, host, (("Content-Type", "application/json"),), json.dumps(data).encode())


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str] = field(repr=False)  # names in lower case
    body: bytes = field(repr=False)

    def json(self) -> object:
        """The body as JSON; Malformed when it is not (or nests past the parser's depth)."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise Malformed("json", self.status) from None


class Connection:
    """One connected socket and the deadline of the whole call; closes the socket on exit."""

    def __init__(self, sock: socket.socket, deadline: Deadline, address: str) -> None:
        self.sock, self.deadline, self.address = sock, deadline, address

    @classmethod
    def unix(cls, address: str, deadline: Deadline) -> Connection:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(deadline.remaining())
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise Unreachable(address, exc, connected=False) from None
        except BaseException:
            sock.close()
            raise
        return cls(sock, deadline, address)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def peer(self) -> Peer:
        """The peer's pid, uid and gid (SO_PEERCRED): check them before sending anything."""
        raw = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
        return Peer(*struct.unpack("iII", raw))

    def exchange(self, request: Request, max_answer: int, *, require_length: bool = False) -> Response:
        """Send ``request``, read the answer to its end (at most ``max_answer`` bytes, within
        the deadline), and parse it."""
        return parse(self._send_and_read(request.encode(), max_answer), require_length=require_length)

    def _send_and_read(self, data: bytes, max_answer: int) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            self.sock.settimeout(self.deadline.remaining())
            try:
                self.sock.sendall(data)
            except TimeoutError:
                raise TimedOut(self.deadline.seconds or 0.0) from None
            while True:
                self.sock.settimeout(self.deadline.remaining())
                try:
                    chunk = self.sock.recv(_READ)
                except TimeoutError:
                    continue  # the deadline, checked above, says whether time is up
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > max_answer:
                    raise TooLarge(self.address, max_answer)
                chunks.append(chunk)
        except OSError as exc:
            raise Unreachable(self.address, exc, connected=True) from None


def parse(raw: bytes, *, require_length: bool = False, max_head: int = MAX_HEAD) -> Response:
    """An answer read to its end: Malformed unless its head is complete and at most
    ``max_head`` bytes, its status line HTTP/1.x with three digits, and its Content-Length (if
    any; ``require_length``: there must be one) the body's length."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep or len(head) > max_head:
        raise Malformed("head")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not _digits(parts[1]) or len(parts[1]) != 3:
        raise Malformed("status-line")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon:
            headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if (length is None and require_length) or (length is not None and (not _digits(length) or
                                                                        int(length) != len(body))):
        raise Malformed("length", status)
    return Response(status, headers, body)


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()  # str.isdigit alone takes '²', which int() refuses


def call(address: str, request: Request, *, timeout: float | None, max_answer: int,
         require_length: bool = False) -> Response:
    """One request to the server on the unix socket ``address``, within ``timeout`` seconds in
    all (None: no bound). A caller that checks its peer uses :class:`Connection` itself."""
    deadline = Deadline(timeout)
    with Connection.unix(address, deadline) as conn:
        return conn.exchange(request, max_answer, require_length=require_length)
