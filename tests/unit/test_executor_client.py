"""The host's executor client against answers an attacker in a session could send if it ever
fronted the socket: every call ends within its deadline, in bounded memory, with one clear
error (never a traceback or a forged success)."""

from __future__ import annotations

import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning.executor_client import MAX_RESPONSE, ExecutorClient, ExecutorError
from provisioning.procs import ProcessRef

Behaviour = Callable[[socket.socket], None]


@pytest.fixture
def fake_executor(tmp_path: Path) -> Iterator[Callable[[Behaviour], ExecutorClient]]:
    """A listener in this process answering as ``behaviour`` does; the client trusts this process."""
    servers: list[socket.socket] = []
    stop = threading.Event()

    def start(behaviour: Behaviour) -> ExecutorClient:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(tmp_path / "executor.sock"))
        server.listen(4)
        servers.append(server)

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    with contextlib.suppress(OSError):
                        behaviour(conn)

        threading.Thread(target=serve, daemon=True).start()
        return ExecutorClient(tmp_path, "", ProcessRef.of(os.getpid()))

    yield start
    stop.set()
    for server in servers:
        server.close()


def answer(body: bytes, status: int = 200, length: int | None = None) -> Behaviour:
    def send(conn: socket.socket) -> None:
        size = len(body) if length is None else length
        conn.sendall(f"HTTP/1.1 {status} OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n".encode() + body)
    return send


def test_a_well_formed_answer_passes(fake_executor) -> None:
    client = fake_executor(answer(b'{"ok": true, "detail": "ok"}'))
    assert client.health()["ok"] is True


def test_a_slow_answer_ends_at_the_total_deadline(fake_executor) -> None:
    """One byte every 0.2 s never trips a per-read timeout; the total deadline still holds."""
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(1000):
            conn.sendall(b" ")
            time.sleep(0.2)

    client = fake_executor(trickle)
    started = time.monotonic()
    with pytest.raises(ExecutorError, match="did not answer within 1s"):
        client.health(timeout=1)
    assert time.monotonic() - started < 2


def test_an_endless_answer_is_cut_at_the_cap_in_bounded_memory(fake_executor) -> None:
    chunk = b"x" * (1 << 20)

    def flood(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n")
        while True:
            conn.sendall(chunk)

    client = fake_executor(flood)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ExecutorError, match="exceeds"):
        client.health(timeout=30)
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kb < 3 * MAX_RESPONSE // 1024


@pytest.mark.parametrize("body, status, length, error", [
    (b"[" * 200_000 + b"]" * 200_000, 200, None, "unreadable"),  # nesting beyond the parser's recursion
    (b'{"ok": tr', 200, None, "unreadable"),
    (b'{"ok": true}', 200, 40, "cut short"),
    (b"[1, 2]", 200, None, "not a JSON object"),
    (b'{"exit_code": 0}', 200, None, "malformed"),
])
def test_malformed_answers_are_one_clear_error(fake_executor, body: bytes, status: int, length: int | None,
                                               error: str) -> None:
    client = fake_executor(answer(body, status, length))
    with pytest.raises(ExecutorError, match=error):
        if error == "malformed":
            client.exec(argv=["true"], timeout=5)
        else:
            client.health(timeout=5)


def test_garbage_instead_of_http_is_refused(fake_executor) -> None:
    client = fake_executor(lambda conn: conn.sendall(b"\x00\x01garbage without a head"))
    with pytest.raises(ExecutorError, match="malformed"):
        client.health(timeout=5)


def test_a_socket_served_by_another_process_is_refused(tmp_path: Path) -> None:
    """A listener that is not the recorded executor (user code's own, relaying or forging)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "executor.sock"))
    server.listen(1)
    try:
        someone_else = ProcessRef(os.getpid(), 1)  # this pid, another start time: a reused pid
        with pytest.raises(ExecutorError, match="not this session's executor"):
            ExecutorClient(tmp_path, "", someone_else).health(timeout=2)
    finally:
        server.close()


@pytest.mark.parametrize("raw, error", [
    (b"HTTP/1.1 \xb2\xb2\xb2 OK\r\nContent-Length: 2\r\n\r\n{}", "malformed status line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}", "cut short or has a wrong length"),
])
def test_digits_only_unicode_calls_digits_are_refused(fake_executor, raw: bytes, error: str) -> None:
    """'²' is a digit to str.isdigit but not to int(): once a ValueError traceback, now refused."""
    client = fake_executor(lambda conn: conn.sendall(raw))
    with pytest.raises(ExecutorError, match=error):
        client.health(timeout=5)
