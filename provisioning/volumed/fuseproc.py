"""One mounter process (s3fs, or the local sync process) per session on the host: start it, see its mount
appear, unmount it, and watch it (also after the service restarted: by pidfd, not by being its
parent). What each mounter runs, and how it gets its writes to S3, is in ``mounters``."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .. import mountinfo
from ..errors import SandboxHostError
from ..escape import printable
from ..polling import poll_until
from ..procs import ProcessRef
from .staging import is_mounted


class MountError(SandboxHostError):
    kind = "mount"


def log_tail(log: Path, lines: int = 1) -> str:
    """The last lines of a mounter's log that say more than [INF], escaped: they quote the names
    of files user code made."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    useful = [line for line in text.splitlines() if line.strip() and "[INF]" not in line]
    return printable(" | ".join(useful[-lines:]))


def start(argv: list[str], secrets_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """The mounter in the foreground, in a session of its own (a restart of the service does not
    take it along), credentials in its environment only (a root process's environ is root's alone)."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **secrets_env}
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True, close_fds=True)
    except OSError as exc:
        raise MountError(f"cannot start {argv[0]}: {exc.strerror}; install it (playbooks/s3fs.yml installs "
                         "s3fs)") from None
    finally:
        os.close(fd)


def program(proc: subprocess.Popen[bytes]) -> str:
    """The program a mounter process runs, for messages (``start`` gives Popen an argv list)."""
    args = proc.args
    return os.fsdecode(args if isinstance(args, (str, bytes, os.PathLike)) else args[0])


def wait_mounted(proc: subprocess.Popen[bytes], mountpoint: Path, log: Path, timeout: float) -> None:
    def mounted() -> bool:
        if is_mounted(mountpoint):
            return True
        if proc.poll() is not None:
            raise MountError(f"{program(proc)} exited (status {proc.returncode}) before mounting: {log_tail(log)}")
        return False

    poll_until(mounted, timeout,
               lambda: MountError(f"{program(proc)} did not mount {mountpoint} in {timeout:g}s: {log_tail(log)}"),
               every=0.001, growth=1.5, at_most=0.01)


def unmount(mountpoint: Path) -> None:
    """Unmount; a busy mount (a process still inside) is detached lazily instead."""
    if not is_mounted(mountpoint):
        return
    proc = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True)
    if proc.returncode != 0 and is_mounted(mountpoint):
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, text=True)


def wait_exit(ref: ProcessRef, timeout: float, reap: Callable[[int], None] | None = None) -> bool:
    """Wait for the process to end. True if it ended in time."""
    def ended() -> bool:
        if not ref.alive():
            return True
        if reap is not None:
            reap(ref.pid)
        return False

    try:
        return poll_until(ended, timeout, TimeoutError, every=0.005)
    except TimeoutError:
        return False


def share(path: Path) -> None:
    """Make ``path`` a shared mount (a bind onto itself where it is not a mount point yet), so
    that a mount made below it later reaches the containers that bound a directory there. The
    host's / may be private (no systemd), so this is never left to chance."""
    target = str(path)
    top = mountinfo.at(target)
    if top is None:
        subprocess.run(["mount", "--bind", target, target], check=True, capture_output=True)
    elif top.shared:
        return
    subprocess.run(["mount", "--make-shared", target], check=True, capture_output=True)


SPARE_FLAG = "--spare"


class Spares:
    """Mounter processes started ahead of time, for programs that take a while to load and can
    take their job later (``PROGRAM --spare``: the local-first sync process loads Python and
    boto3, ~0.3 s, out of a mount's way). One is kept ready per program, each used once. A
    spare reads one line on stdin, ``{"argv", "env", "log"}``: the rest of its command line,
    the credentials for its environment, and the log to write; it holds no credentials before.
    When the service ends, its spares read end-of-file and exit."""

    def __init__(self, programs: list[list[str]]) -> None:
        self._programs = [tuple(p) for p in programs]
        self._ready: dict[tuple[str, ...], subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def _spawn(self, program: tuple[str, ...]) -> None:
        try:
            proc = subprocess.Popen([*program, SPARE_FLAG], env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
        except OSError:
            return  # a mount then starts its process the usual way
        with self._lock:
            self._ready[program] = proc

    def start(self) -> None:
        for program in self._programs:
            self._spawn(program)

    def take(self, argv: list[str], secrets_env: dict[str, str], log: Path) -> subprocess.Popen[bytes] | None:
        """A ready spare given ``argv``'s job (None if ``argv`` runs no such program, or none is
        ready); the next spare is started at once."""
        program = next((p for p in self._programs if tuple(argv[:len(p)]) == p), None)
        if program is None:
            return None
        with self._lock:
            proc = self._ready.pop(program, None)
        self._spawn(program)
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return None
        job = {"argv": argv[len(program):], "env": secrets_env, "log": str(log)}
        try:
            proc.stdin.write(json.dumps(job).encode() + b"\n")
            proc.stdin.close()
        except OSError:
            proc.kill()
            proc.wait()
            return None
        proc.args = argv  # what it runs now, for messages (``program``)
        return proc

    def close(self) -> None:
        with self._lock:
            ready, self._ready = list(self._ready.values()), {}
        for proc in ready:
            proc.kill()
            proc.wait()


def take_job(stdin: IO[bytes]) -> list[str]:
    """In a spare: wait for its job, then become it (credentials into the environment, stdout
    and stderr to the log, as ``start`` would have set them). Returns the job's argv."""
    line = stdin.readline()
    if not line:
        raise SystemExit(0)  # the service ended before handing out this spare
    job = json.loads(line)
    os.environ.clear()
    os.environ.update({"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **{str(k): str(v) for k, v in job["env"].items()}})
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    for target in (1, 2):
        os.dup2(fd, target)
    os.close(fd)
    return [str(arg) for arg in job["argv"]]


class HostRunner:
    """Mounter processes and their mounts on this host (``workspaces.Runner``); with ``spares``,
    the programs whose processes are started ahead of time."""

    def __init__(self, spares: list[list[str]] | None = None) -> None:
        self.spares = Spares(spares or [])
        self.spares.start()

    def start(self, argv: list[str], secrets_env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        return self.spares.take(argv, secrets_env, log) or start(argv, secrets_env, log)

    wait_mounted = staticmethod(wait_mounted)
    unmount = staticmethod(unmount)
    is_mounted = staticmethod(is_mounted)
    share = staticmethod(share)


class Watcher:
    """Calls ``on_exit(ref)`` when a watched process ends, whoever its parent is (pidfd)."""

    def __init__(self, on_exit: Callable[[ProcessRef], None]) -> None:
        self._on_exit = on_exit
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="mount-watcher", daemon=True)
        self._thread.start()

    def watch(self, ref: ProcessRef) -> None:
        try:
            fd = os.pidfd_open(ref.pid)
        except ProcessLookupError:
            self._on_exit(ref)
            return
        if not ref.alive():  # the pid was reused between the check and the pidfd
            os.close(fd)
            self._on_exit(ref)
            return
        with self._lock:
            self._selector.register(fd, selectors.EVENT_READ, ref)
        os.write(self._wake_w, b"x")

    def forget(self, ref: ProcessRef) -> None:
        with self._lock:
            for key in list(self._selector.get_map().values()):
                if key.data == ref:
                    self._selector.unregister(key.fileobj)
                    os.close(key.fd)

    def _run(self) -> None:
        while True:
            events = self._selector.select()
            for key, _mask in events:
                if key.data is None:
                    os.read(self._wake_r, 4096)
                    continue
                with self._lock:
                    try:
                        self._selector.unregister(key.fileobj)
                    except (KeyError, ValueError):
                        continue  # forgotten meanwhile
                    os.close(key.fd)
                self._on_exit(key.data)  # reaping (and the status) is the owner's: it may be a child
