"""The executor app outside a container: it must refuse to run when /workspace is not a FUSE mount."""

import importlib.util
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioning.executor_client import ExecutorClient, ExecutorError, WorkspaceUnavailable

APP = Path(__file__).resolve().parents[2] / "executor" / "app" / "executor.py"


def load_app():
    spec = importlib.util.spec_from_file_location("executor_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_says_plain_directory_is_not_a_mount(tmp_path: Path) -> None:
    health = load_app().workspace_health(str(tmp_path))
    assert health["ok"] is False and health["workspace_mounted"] is False
    assert "not a FUSE mount" in health["detail"]


def test_runner_returns_when_command_exits_even_if_children_hold_pipes(tmp_path: Path) -> None:
    runner = load_app().Runner(str(tmp_path))
    started = time.monotonic()
    result = runner.run(["sh", "-c", "sleep 30 & echo hi"], timeout=20, stdin=b"")
    assert time.monotonic() - started < 5
    assert result["exit_code"] == 0 and result["timed_out"] is False


def test_runner_times_out_and_kills(tmp_path: Path) -> None:
    result = load_app().Runner(str(tmp_path)).run(["sleep", "30"], timeout=0.3, stdin=b"")
    assert result["timed_out"] is True and result["exit_code"] == 124 and result["duration"] < 5


def test_served_exec_is_refused_without_mount(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    control = tmp_path / "ctl"
    control.mkdir()
    proc = subprocess.Popen([sys.executable, str(APP), "--socket", str(control / "executor.sock"),
                             "--workspace", str(workspace)])
    try:
        deadline = time.monotonic() + 10
        while not (control / "executor.sock").exists():
            assert time.monotonic() < deadline, "executor did not start"
            time.sleep(0.02)
        client = _TrustingClient(control, "", 0)
        assert client.health()["ok"] is False
        with pytest.raises(WorkspaceUnavailable, match="not a FUSE mount"):
            client.exec(argv=["touch", "lost"])
        assert list(workspace.iterdir()) == []
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


class _TrustingClient(ExecutorClient):
    """The real client minus the container check (this executor runs outside any container)."""

    def connect(self, timeout):  # type: ignore[no-untyped-def]
        import socket

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        sock.connect(str(self.control_dir / "executor.sock"))
        return sock


def test_client_refuses_a_socket_outside_the_container(tmp_path: Path) -> None:
    """A socket swapped in by user code (e.g. a link to the Docker socket) is refused before any byte is sent."""
    received: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            received.append(self.request.recv(100))

    server = socketserver.UnixStreamServer(str(tmp_path / "executor.sock"), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = ExecutorClient(tmp_path, "0123456789abcdef" * 4, 1000)
        with pytest.raises(ExecutorError, match="refusing executor socket"):
            client.health()
    finally:
        server.shutdown()
        server.server_close()
    assert received in ([], [b""])


@pytest.mark.parametrize(("said", "serves"), [(b"go\n", True), (b"", False), (b"no\n", False), (b"go", False)])
def test_gated_executor_serves_only_after_go(tmp_path: Path, said: bytes, serves: bool) -> None:
    """Started early by the entrypoint, the executor binds no socket until it is told "go"."""
    sock = tmp_path / "executor.sock"
    proc = subprocess.Popen([sys.executable, str(APP), "--socket", str(sock), "--workspace", str(tmp_path),
                             "--wait-for-go"], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.3)
        assert proc.poll() is None and not sock.exists()  # loaded, waiting, serving nothing
        assert proc.stdin is not None
        proc.stdin.write(said)
        proc.stdin.close()
        if serves:
            deadline = time.monotonic() + 10
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert sock.exists() and proc.poll() is None
        else:
            assert proc.wait(10) == 3
            assert not sock.exists()
            assert b"no go-ahead" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("raw", "status", "error"), [
    (b"GET /health\r\n\r\n", 400, "malformed request line"),
    (b"GET /nowhere HTTP/1.1\r\n\r\n", 404, "no such endpoint /nowhere"),
    (b"POST /health HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405, "use GET /health"),
    (b"GET /exec HTTP/1.1\r\n\r\n", 405, "use POST /exec"),
    (b"POST /exec HTTP/1.1\r\n\r\n", 400, "request body must be"),
    (b"POST /exec HTTP/1.1\r\nContent-Length: 9999999999\r\n\r\n", 413, "at most"),
    (b"POST /exec HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "Content-Length bodies"),
    (b"POST /exec HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400, "not a number"),
    (b"POST /exec HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}", 400, "cut short"),
    (b"POST /exec HTTP/1.1\r\nContent-Length: 11\r\n\r\n{\"argv\": 5}", 400, "argv must be"),
    (b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 100 + b"\r\n", 431, "more than 64 headers"),
    (b"GET /health HTTP/1.1\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n", 431, "too long"),
])
def test_http_subset_rejects_what_it_does_not_speak(tmp_path: Path, raw: bytes, status: int, error: str) -> None:
    """The executor parses HTTP itself: every malformed or unsupported request gets a clear status."""
    import json
    import socket

    sock_path = tmp_path / "executor.sock"
    proc = subprocess.Popen([sys.executable, str(APP), "--socket", str(sock_path), "--workspace", str(tmp_path)])
    try:
        deadline = time.monotonic() + 10
        while not sock_path.exists():
            assert time.monotonic() < deadline, "executor did not start"
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(sock_path))
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode()
        assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
        assert error in json.loads(body)["error"]
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_executor_arguments_are_checked() -> None:
    app = load_app()
    assert app.parse_args(["--socket", "/s", "--wait-for-go"]) == ("/s", "/workspace", True)
    for bad, message in ((["--socket"], "needs a value"), ([], "--socket is required"),
                         (["--socket", "/s", "--bogus"], "unknown argument")):
        with pytest.raises(SystemExit, match=message):
            app.parse_args(bad)
