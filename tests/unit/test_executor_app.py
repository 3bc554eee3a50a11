"""The executor app outside a container: it must refuse to run until /workspace is the session's
mount (FUSE, or a mount made over the volume Docker bound there)."""

import importlib.util
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provisioning.executor_client import ExecutorClient, ExecutorError, WorkspaceUnavailable
from provisioning.procs import ProcessRef

APP = Path(__file__).resolve().parents[2] / "executor" / "app" / "executor.py"


def load_app():
    spec = importlib.util.spec_from_file_location("executor_app", APP)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_health_says_plain_directory_is_not_a_mount(tmp_path: Path) -> None:
    health = load_app().workspace_health(str(tmp_path))
    assert health["ok"] is False and health["workspace_mounted"] is False
    assert "is not mounted yet" in health["detail"]


def test_health_takes_a_mount_over_the_volumes_bind_and_not_the_bind_alone(tmp_path: Path) -> None:
    """The local-first workspace: Docker binds the volume's directory at /workspace, then the
    session's filesystem is mounted over it on the host and propagates in. Only the second counts."""
    import subprocess

    workspace, volume, files = tmp_path / "ws", tmp_path / "volume", tmp_path / "files"
    for path in (workspace, volume, files):
        path.mkdir()
    subprocess.run(["mount", "--bind", str(volume), str(workspace)], check=True)
    try:
        assert load_app().workspace_health(str(workspace))["ok"] is False  # the volume, not mounted over
        subprocess.run(["mount", "--bind", str(files), str(workspace)], check=True)
        try:
            health = load_app().workspace_health(str(workspace))
            assert health["ok"] is True and health["workspace_mounted"] is True
        finally:
            subprocess.run(["umount", str(workspace)], check=True)
    finally:
        subprocess.run(["umount", str(workspace)], check=True)


def test_health_takes_the_local_tree_bound_before_docker_bound_the_volume(tmp_path: Path) -> None:
    """The host mounted the session's tree (its filesystem's /ws) before Docker bound the volume
    (a fast mount): one mount at /workspace, and its root says it is the tree."""
    import subprocess

    workspace, fs = tmp_path / "workspace", tmp_path / "fs"
    for path in (workspace, fs):
        path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(fs)], check=True)
    try:
        (fs / "ws").mkdir()
        (fs / "other").mkdir()
        subprocess.run(["mount", "--bind", str(fs / "other"), str(workspace)], check=True)
        try:
            assert load_app().workspace_health(str(workspace))["ok"] is False  # not the tree
        finally:
            subprocess.run(["umount", str(workspace)], check=True)
        subprocess.run(["mount", "--bind", str(fs / "ws"), str(workspace)], check=True)
        try:
            assert load_app().workspace_health(str(workspace))["ok"] is True
        finally:
            subprocess.run(["umount", str(workspace)], check=True)
    finally:
        subprocess.run(["umount", str(fs)], check=True)


def test_runner_returns_when_command_exits_even_if_children_hold_pipes(tmp_path: Path) -> None:
    runner = load_app().Runner(str(tmp_path))
    started = time.monotonic()
    result = runner.run(["sh", "-c", "sleep 30 & echo hi"], timeout=20, stdin=b"")
    assert time.monotonic() - started < 5
    assert result["exit_code"] == 0 and result["timed_out"] is False


def test_a_command_that_exits_at_once_keeps_its_exit_status_while_orphans_are_reaped(tmp_path: Path) -> None:
    """As PID 1 the executor reaps orphans whenever a child exits; a command that exited before
    run() registered it was once reaped as an orphan, and its failure read as exit status 0."""
    runner = load_app().Runner(str(tmp_path))
    stop = threading.Event()

    def reaper() -> None:
        while not stop.wait(0.0005):  # as often as SIGCHLDs arrive when commands run back to back
            runner.reap_orphans()

    thread = threading.Thread(target=reaper, daemon=True)
    thread.start()
    try:
        codes = [runner.run(["false"], timeout=10, stdin=b"")["exit_code"] for _ in range(200)]
    finally:
        stop.set()
        thread.join()
    assert set(codes) == {1}, codes


def test_runner_times_out_and_kills(tmp_path: Path) -> None:
    result = load_app().Runner(str(tmp_path)).run(["sleep", "30"], timeout=0.3, stdin=b"")
    assert result["timed_out"] is True and result["exit_code"] == 124 and result["duration"] < 5


def start_executor(control: Path, workspace: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The executor outside any container: its peers are local processes, so the tests allow them."""
    proc = subprocess.Popen([sys.executable, str(APP), "--socket", str(control / "executor.sock"),
                             "--workspace", str(workspace), "--outside-container", *extra])
    deadline = time.monotonic() + 10
    while not (control / "executor.sock").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "executor did not start"
        time.sleep(0.02)
    return proc


def test_served_exec_is_refused_without_mount(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    control = tmp_path / "ctl"
    control.mkdir()
    proc = start_executor(control, workspace)
    try:
        client = ExecutorClient(control, "", ProcessRef.of(proc.pid))
        assert client.health()["ok"] is False
        with pytest.raises(WorkspaceUnavailable, match="is not mounted yet"):
            client.exec(argv=["touch", "lost"])
        assert list(workspace.iterdir()) == []
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_executor_refuses_peers_inside_its_pid_namespace(tmp_path: Path) -> None:
    """Without --outside-container (as in a session), a peer with a pid in the executor's own PID
    namespace (user code) is not served, nor its signals obeyed: only the host's, which shows as
    pid 0 there."""
    proc = subprocess.Popen([sys.executable, str(APP), "--socket", str(tmp_path / "executor.sock"),
                             "--workspace", str(tmp_path)])
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "executor.sock").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        client = ExecutorClient(tmp_path, "", ProcessRef.of(proc.pid))
        status, body, _peer = client.request("GET", "/health")
        assert status == 403 and "only the host" in body["error"]
        # Nor does it obey a signal sent from its own PID namespace (user code's SIGTERM).
        proc.terminate()
        time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait(10)


GUARD_PROBE = """
import ctypes, errno, json, platform, subprocess
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": {"bpf": 321, "perf_event_open": 298, "io_uring_setup": 425, "unshare": 272},
      "aarch64": {"bpf": 280, "perf_event_open": 241, "io_uring_setup": 425, "unshare": 97}}[platform.machine()]
args = {"bpf": (0, 0, 0), "perf_event_open": (0, 0, -1, -1, 0), "io_uring_setup": (1, 0), "unshare": (0x10000000,)}
out = {}
for name, number in nr.items():
    ret = libc.syscall(number, *args[name])
    out[name] = "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
out["unshare -Urm"] = subprocess.run(["unshare", "-Urm", "true"], capture_output=True).returncode
print(json.dumps(out))
"""


def test_guard_refuses_namespaces_and_kernel_surface() -> None:
    """What the executor puts on itself (and so on user code): no user namespace, no bpf, perf or
    io_uring, whatever the container's capabilities (here: the test runner's, root's)."""
    import json

    code = f"import sys; sys.path.insert(0, {str(APP.parent)!r}); import guard; guard.apply(); exec(sys.stdin.read())"
    guarded = subprocess.run([sys.executable, "-c", code], input=GUARD_PROBE, capture_output=True, text=True,
                             timeout=30)
    assert guarded.returncode == 0, guarded.stderr
    out = json.loads(guarded.stdout)
    assert out["unshare -Urm"] != 0
    del out["unshare -Urm"]
    assert out == {"bpf": "EPERM", "perf_event_open": "EPERM", "io_uring_setup": "EPERM", "unshare": "EPERM"}
    status = subprocess.run([sys.executable, "-c", code], input="print(open('/proc/self/status').read())",
                            capture_output=True, text=True, timeout=30).stdout
    assert "Seccomp:\t2" in status


TRUNCATE_CHOWN_PROBE = """
import json, os, tempfile
out = {}
path = tempfile.mktemp()
open(path, "w").write("hello world")
def attempt(name, call):
    try:
        call()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode[exc.errno]
import errno
attempt("truncate by path", lambda: os.truncate(path, 4))
with open(path, "r+") as f:
    attempt("truncate by fd", lambda: f.truncate(4))
attempt("chown to another uid", lambda: os.chown(path, 12345, -1))
attempt("chown to another gid", lambda: os.chown(path, -1, 12345))
attempt("fchown to another uid", lambda: os.fchown(os.open(path, os.O_RDONLY), 12345, -1))
attempt("lchown to another uid", lambda: os.lchown(path, 12345, -1))
attempt("chown unchanged", lambda: os.chown(path, -1, -1))
attempt("chown to its own ids", lambda: os.chown(path, os.getuid(), os.getgid()))
out["content"] = open(path).read()
os.remove(path)
print(json.dumps(out))
"""


def test_guard_refuses_truncate_by_path_and_chown_to_others() -> None:
    """Where s3fs would silently not do what was asked (truncate by path) or pretend (chown to
    someone else), user code gets the error instead, everywhere: here as root, whose chown the
    kernel alone would allow."""
    import json

    code = f"import sys; sys.path.insert(0, {str(APP.parent)!r}); import guard; guard.apply(); exec(sys.stdin.read())"
    guarded = subprocess.run([sys.executable, "-c", code], input=TRUNCATE_CHOWN_PROBE, capture_output=True, text=True,
                             timeout=30)
    assert guarded.returncode == 0, guarded.stderr
    assert json.loads(guarded.stdout) == {
        "truncate by path": "ENOTSUP", "truncate by fd": "ok", "chown to another uid": "EPERM",
        "chown to another gid": "EPERM", "fchown to another uid": "EPERM", "lchown to another uid": "EPERM",
        "chown unchanged": "ok", "chown to its own ids": "ok", "content": "hell"}


def test_client_refuses_a_socket_outside_the_container(tmp_path: Path) -> None:
    """A socket swapped in by user code (e.g. a link to the Docker socket) is refused before any byte is sent."""
    received: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            received.append(self.request.recv(100))

    server = socketserver.UnixStreamServer(str(tmp_path / "executor.sock"), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for expected in (None, ProcessRef(1, 1)):
            client = ExecutorClient(tmp_path, "0123456789abcdef" * 4, expected)
            with pytest.raises(ExecutorError, match="is not this session's executor"):
                client.health()
    finally:
        server.shutdown()
        server.server_close()
    assert received in ([], [b""], [b"", b""])


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
def test_http_subset_rejects_what_it_does_not_speak(served: Path, raw: bytes, status: int, error: str) -> None:
    """The executor parses HTTP itself: every malformed or unsupported request gets a clear status."""
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(served / "executor.sock"))
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == str(status).encode()
    assert b"Connection: close" in head and f"Content-Length: {len(body)}".encode() in head
    assert error in json.loads(body)["error"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One executor for every request of the HTTP tests: each is a connection of its own."""
    path = tmp_path_factory.mktemp("served")
    proc = start_executor(path, path)
    yield path
    proc.terminate()
    assert proc.wait(10) == 0


def test_executor_arguments_are_checked() -> None:
    app = load_app()
    options = app.parse_args(["--socket", "/s", "--wait-for-go"])
    assert (options.socket_path, options.workspace, options.gated, options.guard) == ("/s", "/workspace", True, True)
    for bad, message in ((["--socket"], "needs a value"), ([], "--socket is required"),
                         (["--socket", "/s", "--bogus"], "unknown argument")):
        with pytest.raises(SystemExit, match=message):
            app.parse_args(bad)
