#!/usr/bin/env python3
"""The session executor: runs user code as the sandbox user in /workspace.

Standard library only. It serves HTTP on a unix socket (so it works with every network
mode, including none):

  GET  /health  -> {"ok", "workspace", "workspace_mounted", "fstype", "detail"}
  POST /exec    {"argv": [...]} or {"code": "..."}, optional "timeout" (s), "stdin" (base64)
                -> {"exit_code", "stdout", "stderr" (base64), "duration", "timed_out", "truncated"}

/exec refuses (503) unless /workspace is a live FUSE mount: writing into an unmounted
workspace would land in the container layer and be lost.
"""

from __future__ import annotations

import argparse
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
from http.server import BaseHTTPRequestHandler
from typing import IO

MAX_OUTPUT = 16 * 1024 * 1024
MAX_REQUEST = 32 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
EXIT_GRACE = 0.25  # seconds of output still collected after the command exits


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


class Handler(BaseHTTPRequestHandler):
    server: "ExecutorServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def address_string(self) -> str:
        return "unix"

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path == "/health":
            health = workspace_health(self.server.runner.workspace)
            self._reply(200 if health["ok"] else 503, health)
        else:
            self._reply(404, {"error": f"no such endpoint {self.path}"})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/exec":
            self._reply(404, {"error": f"no such endpoint {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_REQUEST:
            self._reply(400, {"error": f"request body must be 1..{MAX_REQUEST} bytes"})
            return
        try:
            request = json.loads(self.rfile.read(length))
            argv, timeout, stdin = _parse_exec(request)
        except (ValueError, TypeError) as exc:
            self._reply(400, {"error": str(exc)})
            return
        if self.server.runner.stopping:
            self._reply(503, {"error": "the session is stopping"})
            return
        health = workspace_health(self.server.runner.workspace)
        if not health["ok"]:
            self._reply(503, {"error": "refusing to run: " + str(health["detail"]), "health": health})
            return
        self._reply(200, self.server.runner.run(argv, timeout, stdin))


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--workspace", default="/workspace")
    parser.add_argument("--wait-for-go", action="store_true",
                        help='read "go" from stdin before serving (the entrypoint proves the workspace first)')
    args = parser.parse_args(argv)
    if args.wait_for_go and not wait_for_go(sys.stdin.buffer):
        print("executor: no go-ahead from the entrypoint; not serving", file=sys.stderr)
        return 3
    os.chdir(args.workspace)  # only now: before the mount, this would be the empty directory under it
    return serve(args.socket, args.workspace)


if __name__ == "__main__":
    sys.exit(main())

