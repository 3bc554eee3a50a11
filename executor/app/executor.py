#!/usr/bin/env python3
"""The session executor: runs user code as the sandbox user in /workspace.

Standard library only, and only its light modules: the executor starts in every session,
so it speaks a small HTTP/1.1 subset itself (one request per connection, Content-Length
bodies) instead of importing http.server, which costs more than half of its start-up. It
serves on a unix socket (so it works with every network mode, including none):

  GET  /health  -> {"ok", "workspace", "workspace_mounted", "fstype", "detail"}
  POST /exec    {"argv": [...]} or {"code": "..."}, optional "timeout" (s), "stdin" (base64)
                -> {"exit_code", "stdout", "stderr" (base64), "duration", "timed_out", "truncated"}

/exec refuses (503) unless /workspace is a live mount of the session's files (FUSE, or the
local-first workspace's host filesystem mounted over the volume): writing into an unmounted
workspace would land in the container layer, or the bare volume directory, and be lost.

Against the user code it runs (same uid): it is non-dumpable and filters system calls
(guard.py); it answers only peers outside its own PID namespace (the host), so user code
cannot drive it; as PID 1 it ignores signals sent from inside the container and reaps
orphans; it ends the session (exit 75) when the workspace mount dies under it.
"""

from __future__ import annotations

import binascii
import errno
import json
import os
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time

# Start-up time counts in every session: no typing (IO and the like are only annotations, and
# annotations are not evaluated), binascii rather than base64 (which brings re), subprocess on first use.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers take it as true)
if TYPE_CHECKING:
    import subprocess
    from io import BufferedIOBase
    from typing import IO

MAX_OUTPUT = 16 * 1024 * 1024
MAX_REQUEST = 32 * 1024 * 1024
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 24 * 3600.0
EXIT_GRACE = 0.25  # seconds of output still collected after the command exits
MAX_LINE = 8192  # request line and each header line
MAX_HEADERS = 64
MAX_CONNECTIONS = 32  # concurrent requests; more are answered 503 at once
REQUEST_READ_TIMEOUT = 30.0  # a peer that sends half a request does not hold a thread
WATCH_INTERVAL = 0.5  # how often the workspace mount is checked for death
EXIT_WORKSPACE_LOST = 75  # facts.EXIT_WORKSPACE_LOST: the session ended as failed
USER_OOM_SCORE_ADJ = "1000"  # the OOM killer takes user code before the executor (or s3fs)
REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


def _unescape_mountinfo(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


LOCAL_TREE = "/ws"  # the local-first workspace's tree, in its own filesystem (mounters/local.py)


def workspace_health(workspace: str) -> dict[str, object]:
    fstype = root = None
    stacked = 0
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                fields = line.split()
                if len(fields) > 5 and _unescape_mountinfo(fields[4]) == workspace:
                    fstype = fields[fields.index("-") + 1]  # the last mount on top wins
                    root = _unescape_mountinfo(fields[3])
                    stacked += 1
    except OSError as exc:
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": None,
                "detail": f"cannot read mountinfo: {exc}"}
    # A FUSE mount (s3fs); or the local-first workspace's tree: a mount that arrived over
    # the volume Docker bound there (the host mounted it after the start), or the tree itself
    # where the host mounted it before Docker bound the volume.
    if fstype is None or not (fstype.startswith("fuse") or stacked >= 2 or root == LOCAL_TREE):
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": fstype,
                "detail": f"{workspace} is not mounted yet"}
    try:
        os.stat(workspace)
        os.listdir(workspace)
    except OSError as exc:
        return {"ok": False, "workspace": workspace, "workspace_mounted": False, "fstype": fstype,
                "detail": f"{workspace} is mounted but not usable: {exc.strerror}",
                "lost": exc.errno == errno.ENOTCONN}
    return {"ok": True, "workspace": workspace, "workspace_mounted": True, "fstype": fstype, "detail": "ok"}


def workspace_lost(workspace: str) -> bool:
    """The FUSE process behind the workspace is gone (every access answers ENOTCONN)."""
    try:
        os.stat(workspace)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


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

    def reap_orphans(self) -> None:
        """Reap this process's zombie children that no run() waits for (orphans PID 1 inherited).
        Under the lock run() holds from fork to registering its child, so a child that exits at
        once is never reaped here: its exit status is run()'s (stolen, it would read as 0)."""
        with self._lock:
            managed = {proc.pid for proc in self._running}
            for entry in os.listdir("/proc"):
                if not entry.isdigit() or int(entry) in managed:
                    continue
                try:
                    with open(f"/proc/{entry}/stat", "rb") as handle:
                        stat = handle.read()
                except OSError:
                    continue
                fields = stat[stat.rindex(b")") + 2:].split()
                if fields[0] == b"Z" and int(fields[1]) == os.getpid():
                    try:
                        os.waitpid(int(entry), os.WNOHANG)
                    except ChildProcessError:
                        pass

    def run(self, argv: list[str], timeout: float, stdin: bytes) -> dict[str, object]:
        import subprocess  # here, not at start-up: see the imports

        started = time.monotonic()
        with self._lock:  # from fork to registration: the orphan reaper must not take this child
            try:
                proc = subprocess.Popen(
                    argv, cwd=self.workspace, env=self.environment(), stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                    preexec_fn=_prepare_user_process,
                )
            except OSError as exc:
                return {"exit_code": 127, "stdout": "", "stderr": _b64(f"{argv[0]}: {exc.strerror}\n".encode()),
                        "duration": time.monotonic() - started, "timed_out": False, "truncated": False}
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
        import subprocess

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


_PRE_EXEC: list[object] = []  # guard.child_setup once the guard is on (it needs ctypes)


def _prepare_user_process() -> None:
    """In the child, before exec: the signal mask the executor's threads run with is not user
    code's, and the OOM killer should pick user code first."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for setup in _PRE_EXEC:
        setup()  # type: ignore[operator]
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write(USER_OOM_SCORE_ADJ)
    except OSError:
        pass


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
    return binascii.b2a_base64(data, newline=False).decode("ascii")


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_request(rfile: BufferedIOBase) -> tuple[str, str, bytes] | None:
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


def peer_pid(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid: int = struct.unpack("3i", raw)[0]  # struct ucred: pid, uid, gid
    return pid


class Handler(socketserver.StreamRequestHandler):
    server: ExecutorServer
    timeout = REQUEST_READ_TIMEOUT

    def handle(self) -> None:
        try:
            request = read_request(self.rfile)  # bounded; read first so that a refusal is read, not reset
        except BadRequest as exc:
            self._reply(exc.status, {"error": str(exc)})
            return
        except (OSError, ValueError):
            return  # the peer went away or stalled; nothing to answer, nothing to log
        if request is None:
            return
        # The host connects from outside this PID namespace, so it shows as pid 0; anything
        # inside the container (user code) has a pid here and is not served.
        if not self.server.outside_container and peer_pid(self.request) != 0:
            self._reply(403, {"error": "only the host may talk to the executor"})
            return
        method, path, body = request
        try:
            status, answer = self.dispatch(method, path, body)
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the executor (or its log) down
            status, answer = 500, {"error": f"internal error: {type(exc).__name__}"}
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
        except (ValueError, TypeError, RecursionError) as exc:
            return 400, {"error": str(exc)[:200]}
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
    stdin = binascii.a2b_base64(request.get("stdin", "").encode("ascii"), strict_mode=True) \
        if sys.version_info >= (3, 11) else binascii.a2b_base64(request.get("stdin", "").encode("ascii"))
    return argv, float(timeout), stdin


class ExecutorServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, runner: Runner, outside_container: bool = False) -> None:
        self.runner = runner
        self.outside_container = outside_container
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(path, Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # never a traceback per bad connection (the container's log would grow with each)


class Supervisor:
    """What PID 1 and a careful daemon must do besides serving: take signals only from outside
    the container, reap orphans, and end the session when the workspace mount dies."""

    def __init__(self, server: ExecutorServer, runner: Runner, workspace: str, is_init: bool,
                 outside_container: bool = False) -> None:
        self.outside_container = outside_container
        self.server = server
        self.runner = runner
        self.workspace = workspace
        self.is_init = is_init
        self.exit_code = 0

    def start(self) -> None:
        threading.Thread(target=self._signals, name="signals", daemon=True).start()
        threading.Thread(target=self._watch, name="watch", daemon=True).start()

    def stop(self, code: int) -> None:
        self.exit_code = code
        self.runner.stopping = True
        threading.Thread(target=_shutdown, args=(self.server, self.runner), daemon=True).start()

    def _signals(self) -> None:
        wanted = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        while True:
            info = signal.sigwaitinfo(wanted)
            if info.si_signo == signal.SIGCHLD:
                if self.is_init:
                    self.runner.reap_orphans()
                continue
            # pid 0: sent from outside this PID namespace (docker stop); pid 1: the in-container
            # entrypoint forwarding it. Anything else is user code: ignored.
            if info.si_pid == 0 or (info.si_pid == 1 and not self.is_init) or self.outside_container:
                self.stop(0)

    def _watch(self) -> None:
        while not self.runner.stopping:
            time.sleep(WATCH_INTERVAL)
            if workspace_lost(self.workspace):
                print(f"executor: {self.workspace} lost its mount (the FUSE process ended): ending the session",
                      file=sys.stderr, flush=True)
                self.stop(EXIT_WORKSPACE_LOST)
                return


def serve(socket_path: str, workspace: str, outside_container: bool = False) -> int:
    runner = Runner(workspace)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    old_umask = os.umask(0o177)
    try:
        server = ExecutorServer(socket_path, runner, outside_container)
    finally:
        os.umask(old_umask)
    supervisor = Supervisor(server, runner, workspace, is_init=os.getpid() == 1, outside_container=outside_container)
    supervisor.start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        try:
            os.unlink(socket_path)
        except OSError:
            pass
    return supervisor.exit_code


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


USAGE = "usage: executor.py --socket PATH [--workspace DIR] [--wait-for-go] [--no-guard] [--outside-container]"


class Options:
    def __init__(self) -> None:
        self.socket_path = ""
        self.workspace = "/workspace"
        self.gated = False
        self.guard = True
        self.outside_container = False


def parse_args(argv: list[str]) -> Options:
    """--socket PATH, --workspace DIR (default /workspace), --wait-for-go: read "go" from stdin
    before serving; --no-guard, and --outside-container (serve and obey local processes, which
    in a session would be user code), are for tests that run the executor on a plain host.
    Parsed by hand: argparse alone costs a tenth of the start-up."""
    options = Options()
    args = iter(argv)
    for arg in args:
        if arg in ("--socket", "--workspace"):
            value = next(args, None)
            if value is None:
                raise SystemExit(f"{USAGE}\nexecutor.py: {arg} needs a value")
            if arg == "--socket":
                options.socket_path = value
            else:
                options.workspace = value
        elif arg == "--wait-for-go":
            options.gated = True
        elif arg == "--no-guard":
            options.guard = False
        elif arg == "--outside-container":
            options.outside_container = True
        else:
            raise SystemExit(f"{USAGE}\nexecutor.py: unknown argument {arg!r}")
    if not options.socket_path:
        raise SystemExit(f"{USAGE}\nexecutor.py: --socket is required")
    return options


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    # Before any thread: the mask is inherited by every thread, and the signal thread takes them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
    if options.guard:
        # Run with -I -S (no environment, no site: faster, and nothing from the image's Python
        # setup): the guard comes from this file's own directory.
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import guard

        try:
            guard.apply()
        except guard.GuardError as exc:
            print(f"executor: {exc}", file=sys.stderr)
            return 4
        _PRE_EXEC.append(guard.child_setup)
    if options.gated and not wait_for_go(sys.stdin.buffer):
        print("executor: no go-ahead from the entrypoint; not serving", file=sys.stderr)
        return 3
    os.chdir(options.workspace)  # only now: before the mount, this would be the empty directory under it
    return serve(options.socket_path, options.workspace, options.outside_container)


if __name__ == "__main__":
    sys.exit(main())
