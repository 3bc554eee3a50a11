"""A local peer of another uid, for the connection-limit tests: a child process that drops from
root to that uid before it opens a socket, then opens connections to a loopback server, sends
each its opening bytes, and trickles one more byte to each open one every ``every`` seconds, as a
slowloris does. It reports on stdout, one JSON object a line:

    {"event": "connected", "count": N, "seconds": S}  every connect finished (N succeeded, in S s)
    {"event": "status", "open": N, "closed": M}  every 0.05 s
    {"event": "done", "lifetimes": [...], "answers": {...}, "still_open": N}
        seconds from connect to the server's close, for each closed connection; how many got each
        status line ("" for none); how many were still open

and stops when its stdin closes. Run as a script it needs the standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

NOBODY = 65534


@dataclass
class Spec:
    target: tuple[str, int]
    source: str = "127.0.0.1"
    count: int = 1
    openings: list[str] = field(default_factory=lambda: [""])  # latin-1 text; connection i sends openings[i % n]
    trickle: str = "x"
    every: float = 1.0
    uid: int = NOBODY
    gid: int = NOBODY


class LocalPeer:
    """The child, seen from the test. Use as a context manager: leaving it closes the child's
    stdin (it closes every socket and exits) and reaps it, killing it if it does not go."""

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self._buffer = b""
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(asdict(spec))],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def __enter__(self) -> LocalPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for(self, event: str, within: float, accept: Callable[[dict[str, Any]], bool] = lambda _e: True,
                 ) -> dict[str, Any]:
        """The first report of ``event`` that ``accept`` takes, within ``within`` seconds."""
        deadline = time.monotonic() + within
        while True:
            report = self._next(deadline - time.monotonic())
            if report is None:
                raise AssertionError(f"local peer: no {event} report as expected within {within} s")
            if report["event"] == event and accept(report):
                return report

    def stop(self) -> dict[str, Any]:
        """Close every connection; the final report."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.wait_for("done", within=10)

    def close(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout:
            self.proc.stdout.close()

    def _next(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return dict(json.loads(line))


# -- the child -----------------------------------------------------------------------------
def _report(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _connect_all(spec: Spec) -> dict[socket.socket, float]:
    pending: dict[socket.socket, float] = {}
    for _ in range(spec.count):
        sock = socket.socket(socket.AF_INET6 if ":" in spec.target[0] else socket.AF_INET)
        sock.bind((spec.source, 0))
        sock.setblocking(False)
        sock.connect_ex(tuple(spec.target))
        pending[sock] = time.monotonic()
    connected: dict[socket.socket, float] = {}
    with selectors.DefaultSelector() as selector:
        for sock in pending:
            selector.register(sock, selectors.EVENT_WRITE)
        deadline = time.monotonic() + 10
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(0.1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                selector.unregister(sock)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected[sock] = pending[sock]
                else:
                    sock.close()
                del pending[sock]
    for sock in pending:
        sock.close()
    return connected


def _run(spec: Spec) -> None:
    os.setgroups([])
    os.setgid(spec.gid)
    os.setuid(spec.uid)  # every socket from here on is this uid's
    started = time.monotonic()
    opened = _connect_all(spec)
    connecting = time.monotonic() - started
    lifetimes: list[float] = []
    answers: Counter[str] = Counter()
    first_bytes: dict[socket.socket, bytes] = {}
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(opened):
        with contextlib.suppress(OSError):
            sock.send(spec.openings[index % len(spec.openings)].encode("latin-1"))
        selector.register(sock, selectors.EVENT_READ)
    selector.register(sys.stdin, selectors.EVENT_READ)
    _report(event="connected", count=len(opened), seconds=connecting)
    next_trickle = next_status = time.monotonic()
    position = 0
    while True:
        for key, _ in selector.select(0.05):
            if key.fileobj is sys.stdin:
                _finish(selector, opened, lifetimes, answers)
                return
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if data:
                first_bytes[sock] = first_bytes.get(sock, b"") + data
                continue
            lifetimes.append(time.monotonic() - opened.pop(sock))
            answers[first_bytes.pop(sock, b"").split(b"\r\n")[0].decode("latin-1")] += 1
            selector.unregister(sock)
            sock.close()
        now = time.monotonic()
        if now >= next_trickle:
            byte = spec.trickle[position % len(spec.trickle)].encode("latin-1")
            position += 1
            for sock in opened:
                with contextlib.suppress(OSError):  # its close is read above
                    sock.send(byte)
            next_trickle = now + spec.every
        if now >= next_status:
            _report(event="status", open=len(opened), closed=len(lifetimes))
            next_status = now + 0.05


def _finish(selector: selectors.BaseSelector, opened: dict[socket.socket, float], lifetimes: list[float],
            answers: Counter[str]) -> None:
    for sock in opened:
        sock.close()
    selector.close()
    _report(event="done", lifetimes=lifetimes, answers=dict(answers), still_open=len(opened))


if __name__ == "__main__":
    raw = json.loads(sys.argv[1])
    _run(Spec(**{**raw, "target": tuple(raw["target"])}))
