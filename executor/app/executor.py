#!/usr/bin/env python3
"""The session executor: runs user code as the sandbox user in /workspace.

Standard library only, and only its light modules: the executor starts in every session,
so it speaks a small HTTP/1.1 subset itself (one request per connection, Content-Length
bodies) instead of importing http.server, which costs more than half of its start-up. It
serves on a unix socket (so it works with every network mode, including none):

  GET  /health  -> {"ok", "workspace", "workspace_mounted", "fstype", "detail"}
  POST /exec    {"argv": [...]} or {"code": "..."}, optional "timeout" (s), "stdin" (base64)
                -> {"exit_code", "stdout", "stderr" (base64), "duration", "timed_out", "truncated"}

/exec refuses (503) unless /workspace is a live FUSE mount: writing into an unmounted
workspace would land in the container layer and be lost.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import socketserver
import subprocess
import sys
import threading
import time
from typing import IO

MAX_OUTPUT = 16 * 1024 * 1024
MAX_REQUEST = 32 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
EXIT_GRACE = 0.25  # seconds of output still collected after the command exits
MAX_LINE = 8192  # request line and each header line
MAX_HEADERS = 64
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}


def _unescape_mountinfo(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def workspace_health(workspace: str) -> dict[str, object]:
    fstype = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 5 and _unescape_mountinfo(fields[4]) == workspace:
                    fstype = fields[fields.index("-") + 1]  # the last mount on top wins
    except OSError as exc:
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": None,
                "detail": f"cannot read mountinfo: {exc}"}
    if fstype is None or not fstype.startswith("fuse"):
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": fstype,
                "detail": f"{workspace} is not a FUSE mount"}
    try:
        os.stat(workspace)
        os.listdir(workspace)
    except OSError as exc:
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": fstype,
                "detail": f"{workspace} is mounted but not usable: {exc.strerror}"}
    return {"ok": True, "workspace": workspace, "workspace_mounted": True, "fstype": fstype, "detail": "ok"}


class Runner:
    """Runs commands in their own process groups and can end them all."""

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self.stopping = False

    def environment(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",  # dotfiles and caches stay off the workspace (and out of S3)
            "LANG": "C.UTF-8",
            "PWD": self.workspace,
        }

    def run(self, argv: list[str], timeout: float, stdin: bytes) -> dict[str, object]:
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, cwd=self.workspace, env=self.environment(), stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as exc:
            return {"exit_code": 127, "stdout": "", "stderr": _b64(f"{argv[0]}: {exc.strerror}\n".encode()),
                    "duration": time.monotonic() - started, "timed_out": False, "truncated": False}
        with self._lock:
            self._running.add(proc)
        try:
            out, err, timed_out, truncated = _collect(proc, stdin, started + timeout)
        finally:
            with self._lock:
                self._running.discard(proc)
        return {
            "exit_code": proc.returncode if not timed_out else 124,
            "stdout": _b64(bytes(out)),
            "stderr": _b64(bytes(err)),
            "duration": round(time.monotonic() - started, 6),
            "timed_out": timed_out,
            "truncated": truncated,
        }

    def stop_all(self, grace: float = 5.0) -> None:
        with self._lock:
            procs = list(self._running)
        for proc in procs:
            _kill_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(proc, signal.SIGKILL)


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
    except OSError:
        pass
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _collect(proc: subprocess.Popen[bytes], stdin: bytes, deadline: float) -> tuple[bytearray, bytearray, bool, bool]:
    """Read stdout and stderr until the command ends (or the deadline passes).

    A command may leave descendants holding its pipes open; once the command itself has
    exited, output is collected for a short grace period only, instead of waiting for EOF.
    """
    assert proc.stdin and proc.stdout and proc.stderr
    if stdin:
        threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
    else:
        proc.stdin.close()
    out, err = bytearray(), bytearray()
    truncated = timed_out = False
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, out)
    selector.register(proc.stderr, selectors.EVENT_READ, err)
    exited_at: float | None = None
    while selector.get_map():
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at > EXIT_GRACE:
            break
        if now >= deadline:
            timed_out = True
            _kill_group(proc, signal.SIGKILL)
            break
        for key, _events in selector.select(min(deadline - now, 0.1)):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fileobj)
                continue
            buffer: bytearray = key.data
            room = MAX_OUTPUT - len(buffer)
            if len(chunk) > room:
                truncated = True
            buffer.extend(chunk[:max(room, 0)])
    selector.close()
    proc.stdout.close()
    proc.stderr.close()
    proc.wait()
    return out, err, timed_out, truncated


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_request(rfile: IO[bytes]) -> tuple[str, str, bytes] | None:
    """One HTTP/1.x request: (method, path, body); None when the client sent nothing."""
    line = rfile.readline(MAX_LINE + 1)
    if not line:
        return None
    if len(line) > MAX_LINE or not line.endswith(b"\n"):
        raise BadRequest(400, "request line too long or cut short")
    parts = line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, path, _version = parts
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS):
        line = rfile.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE or not line.endswith(b"\n"):
            raise BadRequest(431 if len(line) > MAX_LINE else 400, "header line too long or cut short")
        if line in (b"\r\n", b"\n"):
            break
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name.strip():
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    else:
        raise BadRequest(431, f"more than {MAX_HEADERS} headers")
    if "transfer-encoding" in headers:
        raise BadRequest(400, "only Content-Length bodies are accepted")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "Content-Length is not a number") from None
    if not 0 <= length <= MAX_REQUEST:
        raise BadRequest(413, f"request body must be at most {MAX_REQUEST} bytes")
    body = rfile.read(length) if length else b""
    if len(body) != length:
        raise BadRequest(400, "request body cut short")
    return method, path, body


class Handler(socketserver.StreamRequestHandler):
    server: "ExecutorServer"

    def handle(self) -> None:
        try:
            request = read_request(self.rfile)
        except BadRequest as exc:
            self._reply(exc.status, {"error": str(exc)})
            return
        if request is None:
            return
        method, path, body = request
        status, answer = self.dispatch(method, path, body)
        self._reply(status, answer)

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n")
        try:
            self.wfile.write(head.encode("latin-1") + data)
        except OSError:
            pass  # the client went away; nothing to tell it

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, object]]:
        runner = self.server.runner
        if path == "/health":
            if method != "GET":
                return 405, {"error": "use GET /health"}
            health = workspace_health(runner.workspace)
            return (200 if health["ok"] else 503), health
        if path != "/exec":
            return 404, {"error": f"no such endpoint {path}"}
        if method != "POST":
            return 405, {"error": "use POST /exec"}
        if not body:
            return 400, {"error": f"request body must be 1..{MAX_REQUEST} bytes"}
        try:
            argv, timeout, stdin = _parse_exec(json.loads(body))
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        if runner.stopping:
            return 503, {"error": "the session is stopping"}
        health = workspace_health(runner.workspace)
        if not health["ok"]:
            return 503, {"error": "refusing to run: " + str(health["detail"]), "health": health}
        return 200, runner.run(argv, timeout, stdin)


def _parse_exec(request: object) -> tuple[list[str], float, bytes]:
    if not isinstance(request, dict):
        raise ValueError("request must be a JSON object")
    if "argv" in request:
        argv = request["argv"]
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a non-empty list of strings")
    elif "code" in request:
        if not isinstance(request["code"], str):
            raise ValueError("code must be a string")
        argv = [sys.executable, "-c", request["code"]]
    else:
        raise ValueError("give argv or code")
    timeout = request.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}]")
    stdin = base64.b64decode(request.get("stdin", ""), validate=True)
    return argv, float(timeout), stdin


class ExecutorServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, runner: Runner) -> None:
        self.runner = runner
        super().__init__(path, Handler)


def serve(socket_path: str, workspace: str) -> int:
    runner = Runner(workspace)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        server = ExecutorServer(socket_path, runner)
    finally:
        os.umask(old_umask)

    def on_signal(signum: int, _frame: object) -> None:
        runner.stopping = True
        threading.Thread(target=_shutdown, args=(server, runner), daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            os.unlink(socket_path)
        except OSError:
            pass
    return 0


def _shutdown(server: ExecutorServer, runner: Runner) -> None:
    runner.stop_all()
    server.shutdown()


def wait_for_go(stream: IO[bytes]) -> bool:
    """Block until the entrypoint says the workspace is proven ("go"); EOF or anything else is a no.

    The entrypoint starts the executor while it mounts and probes the workspace, so that loading
    Python overlaps that work; nothing is served (no socket, no chdir) before the go-ahead."""
    line = stream.readline(16)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, stream.fileno())
    os.close(devnull)
    return line == b"go\n"


USAGE = "usage: executor.py --socket PATH [--workspace DIR] [--wait-for-go]"


def parse_args(argv: list[str]) -> tuple[str, str, bool]:
    """--socket PATH, --workspace DIR (default /workspace), --wait-for-go: read "go" from stdin
    before serving. Parsed by hand: argparse alone costs a tenth of the start-up."""
    socket_path, workspace, gated = None, "/workspace", False
    args = iter(argv)
    for arg in args:
        if arg in ("--socket", "--workspace"):
            value = next(args, None)
            if value is None:
                raise SystemExit(f"{USAGE}\nexecutor.py: {arg} needs a value")
            if arg == "--socket":
                socket_path = value
            else:
                workspace = value
        elif arg == "--wait-for-go":
            gated = True
        else:
            raise SystemExit(f"{USAGE}\nexecutor.py: unknown argument {arg!r}")
    if socket_path is None:
        raise SystemExit(f"{USAGE}\nexecutor.py: --socket is required")
    return socket_path, workspace, gated


def main(argv: list[str] | None = None) -> int:
    socket_path, workspace, gated = parse_args(sys.argv[1:] if argv is None else argv)
    if gated and not wait_for_go(sys.stdin.buffer):
        print("executor: no go-ahead from the entrypoint; not serving", file=sys.stderr)
        return 3
    os.chdir(workspace)  # only now: before the mount, this would be the empty directory under it
    return serve(socket_path, workspace)


if __name__ == "__main__":
    sys.exit(main())

