"""HTTP over a unix socket (the engine's, the volume service's and the executor's clients share
it), against real listeners in this process: each call ends within its deadline, in bounded
memory, with a typed failure for each way an answer can be wrong."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning import unixhttp

Behaviour = Callable[[socket.socket], None]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., tuple[str, list[bytes]]]]:
    """A listener answering each connection as ``behaviour`` does, after one read of the request
    (kept; ``read=False``: none)."""
    listeners: list[socket.socket] = []

    def start(behaviour: Behaviour, read: bool = True) -> tuple[str, list[bytes]]:
        path = str(tmp_path / f"s{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        listeners.append(listener)
        received: list[bytes] = []

        def serve() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    try:
                        if read:
                            conn.settimeout(5)
                            received.append(conn.recv(65536))
                        behaviour(conn)
                    except OSError:
                        pass

        threading.Thread(target=serve, daemon=True).start()
        return path, received

    yield start
    for listener in listeners:
        listener.close()


def answer(raw: bytes) -> Behaviour:
    return lambda conn: conn.sendall(raw)


def ok(body: bytes, status: str = "200 OK", length: int | None = None) -> Behaviour:
    size = len(body) if length is None else length
    return answer(f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n".encode()
                  + body)


GET = unixhttp.Request("GET", "/thing?x=1", host="unit")


def test_one_request_one_answer(server) -> None:
    path, received = server(ok(b'{"a": 1}'))
    request = unixhttp.Request.json("POST", "/Plugin.Activate", "plugin", {"b": 2})
    response = unixhttp.call(path, request, timeout=5, max_answer=1 << 20, require_length=True)
    assert (response.status, response.headers["content-type"], response.json()) == (200, "application/json",
                                                                                    {"a": 1})
    assert received == [b"POST /Plugin.Activate HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n"
                        b"Content-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"b\": 2}"]


def test_an_answer_without_a_length_is_read_to_the_close_unless_one_is_required(server) -> None:
    """As the Docker engine answers an HTTP/1.0 request; a server that always sends a length and
    did not was cut short."""
    path, received = server(answer(b"HTTP/1.0 404 Not Found\r\n\r\n{\"message\": \"no\"}"))
    request = unixhttp.Request("GET", "/containers/x/json", "docker", version="HTTP/1.0")
    response = unixhttp.call(path, request, timeout=5, max_answer=1 << 20)
    assert (response.status, response.json()) == (404, {"message": "no"})
    assert received[0] == b"GET /containers/x/json HTTP/1.0\r\nHost: docker\r\nConnection: close\r\n\r\n"
    with pytest.raises(unixhttp.Malformed) as caught:
        unixhttp.call(path, request, timeout=5, max_answer=1 << 20, require_length=True)
    assert (caught.value.part, caught.value.status) == ("length", 404)


def test_a_trickle_ends_at_the_deadline_of_the_whole_call(server) -> None:
    """A byte every 0.1 s never trips a per-read timeout; the call's deadline still holds."""
    def trickle(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(200):
            conn.sendall(b" ")
            time.sleep(0.1)

    path, _ = server(trickle)
    started = time.monotonic()
    with pytest.raises(unixhttp.TimedOut, match="within 0.6s"):
        unixhttp.call(path, GET, timeout=0.6, max_answer=1 << 20)
    assert time.monotonic() - started < 1.5


def test_a_silent_server_ends_at_the_deadline(server) -> None:
    path, _ = server(lambda _conn: time.sleep(3))
    started = time.monotonic()
    with pytest.raises(unixhttp.TimedOut):
        unixhttp.call(path, GET, timeout=0.3, max_answer=1 << 20)
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_no_time_left_is_timed_out_before_connecting(server, seconds: float) -> None:
    path, received = server(ok(b"{}"))
    with pytest.raises(unixhttp.TimedOut):
        unixhttp.call(path, GET, timeout=seconds, max_answer=1 << 20)
    assert received == []


def test_an_endless_answer_is_cut_at_the_cap(server) -> None:
    chunk = b"x" * (1 << 16)

    def flood(conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n")
        while True:
            conn.sendall(chunk)

    path, _ = server(flood)
    with pytest.raises(unixhttp.TooLarge, match="exceeds 1048576 bytes"):
        unixhttp.call(path, GET, timeout=30, max_answer=1 << 20)


@pytest.mark.parametrize(("raw", "part"), [
    (b"\x00\x01garbage without a head", "head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n", "head"),             # the head never ends
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (17 << 10) + b"\r\n\r\n", "head"),  # beyond MAX_HEAD
    (b"SPDY 200 OK\r\n\r\n", "status-line"),
    (b"HTTP/1.1 OK\r\n\r\n", "status-line"),
    (b"HTTP/1.1 \xb2\xb2\xb2 OK\r\n\r\n", "status-line"),                # digits to str.isdigit, not to int()
    (b"HTTP/1.1 2000 OK\r\n\r\n", "status-line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n{}", "length"),      # cut short
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n{}", "length"),       # more than announced
    (b"HTTP/1.1 200 OK\r\nContent-Length: \xb2\r\n\r\n{}", "length"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{\"a", "json"),
])
def test_malformed_answers_are_named_by_what_is_wrong(server, raw: bytes, part: str) -> None:
    path, _ = server(answer(raw))
    with pytest.raises(unixhttp.Malformed) as caught:
        unixhttp.call(path, GET, timeout=5, max_answer=1 << 20).json()
    assert caught.value.part == part


def test_json_nested_past_the_parsers_depth_is_malformed_not_a_crash() -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(deep) + deep
    with pytest.raises(unixhttp.Malformed) as caught:
        unixhttp.parse(raw).json()
    assert (caught.value.part, caught.value.status) == ("json", 200)


def test_no_listener_is_unreachable_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(unixhttp.Unreachable) as caught:
        unixhttp.call(str(tmp_path / "none.sock"), GET, timeout=5, max_answer=1 << 20)
    assert caught.value.connected is False and isinstance(caught.value.error, FileNotFoundError)


def test_a_reset_after_connecting_is_unreachable_connected(server) -> None:
    """The server closes without reading the request: the kernel resets the connection."""
    path, _ = server(lambda _conn: time.sleep(0.2), read=False)  # the request is queued, unread, at the close
    with pytest.raises(unixhttp.Unreachable) as caught:
        unixhttp.call(path, GET, timeout=5, max_answer=1 << 20)
    assert caught.value.connected is True and isinstance(caught.value.error, ConnectionResetError)


def test_the_peer_is_known_before_a_byte_is_sent(server) -> None:
    path, received = server(ok(b"{}"))
    with unixhttp.Connection.unix(path, unixhttp.Deadline(5)) as conn:
        assert conn.peer() == unixhttp.Peer(os.getpid(), os.geteuid(), os.getegid())
        assert received == []  # nothing sent yet
        assert conn.exchange(GET, 1 << 20, require_length=True).status == 200


@pytest.mark.parametrize("target", ["/a\r\nX-Forged: 1", "/a\nb", "/a\0"])
def test_a_request_head_cannot_be_split(target: str) -> None:
    with pytest.raises(ValueError, match="line break or NUL"):
        unixhttp.Request("GET", target).encode()
