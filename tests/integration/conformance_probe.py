"""Run inside a session, in /workspace: the POSIX behaviours user code relies on, each reported as
what happened (not only pass/fail), as one JSON object on stdout. No third-party imports."""

import errno
import fcntl
import hashlib
import json
import mmap
import os

import sqlite3
import subprocess

ROOT = "/workspace/conformance"
RESULTS = {}


def check(name):
    def register(fn):
        try:
            RESULTS[name] = fn()
        except Exception as exc:  # noqa: BLE001 - what happened is the result
            RESULTS[name] = f"{type(exc).__name__}: {exc}"
        return fn
    return register


def write(path, data, mode="wb"):
    with open(path, mode) as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


os.makedirs(ROOT, exist_ok=True)
os.chdir(ROOT)


@check("truncate by path")
def _():
    write("t1", b"hello world")
    os.truncate("t1", 4)
    return read("t1").decode(errors="replace")


@check("truncate by fd")
def _():
    write("t2", b"hello world")
    with open("t2", "r+b") as f:
        f.truncate(4)
    return read("t2").decode()


@check("rename over an existing file")
def _():
    write("r1", b"new")
    write("r2", b"old")
    os.rename("r1", "r2")
    return [read("r2").decode(), os.path.exists("r1")]


@check("rename a directory")
def _():
    os.makedirs("d1/sub")
    for name in ("a", "b", "sub/c"):
        write(f"d1/{name}", name.encode())
    os.rename("d1", "d2")
    found = sorted(os.path.relpath(os.path.join(d, f), "d2") for d, _, fs in os.walk("d2") for f in fs)
    return [found, os.path.exists("d1"), read("d2/sub/c").decode()]


@check("append")
def _():
    for line in (b"1\n", b"2\n", b"3\n"):
        write("log", line, "ab")
    return read("log").decode()


@check("O_EXCL")
def _():
    fd = os.open("excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.close(fd)
    try:
        os.open("excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return "second open: EEXIST"
    return "second open succeeded"


@check("flock")
def _():
    write("lock", b"")
    with open("lock", "rb") as a, open("lock", "rb") as b:
        fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            fcntl.flock(b, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return "second lock granted"
        except BlockingIOError:
            return "second lock refused"


@check("fcntl lock")
def _():
    write("lockf", b"x")
    with open("lockf", "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        child = subprocess.run(["python3", "-c", "import fcntl; f = open('lockf', 'r+b'); "
                                "fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)"], capture_output=True)
        return "other process refused" if child.returncode != 0 else "other process granted"


@check("mmap write")
def _():
    write("mm", b"\0" * 4096)
    with open("mm", "r+b") as f:
        m = mmap.mmap(f.fileno(), 4096)
        m[0:5] = b"mmap!"
        m.flush()
        m.close()
    return read("mm")[:5].decode()


@check("sparse write")
def _():
    with open("sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"x")
    data = read("sparse")
    return [len(data), data[:4] == b"\0\0\0\0", data[-1:].decode()]


@check("fsync")
def _():
    with open("synced", "wb") as f:
        f.write(b"durable")
        f.flush()
        os.fsync(f.fileno())
    return "ok"


@check("symlink")
def _():
    write("target", b"via link")
    os.symlink("target", "link")
    return [os.readlink("link"), read("link").decode()]


@check("hard link")
def _():
    write("h1", b"one")
    os.link("h1", "h2")
    write("h2", b"two", "r+b")
    return [os.stat("h1").st_nlink, read("h1").decode()]


@check("user xattr")
def _():
    write("x1", b"")
    os.setxattr("x1", "user.tag", b"kept")
    return os.getxattr("x1", "user.tag").decode()


@check("utime")
def _():
    write("u", b"")
    os.utime("u", (1_000_000_000, 1_000_000_000))
    return int(os.stat("u").st_mtime)


@check("chmod and stat")
def _():
    write("m", b"")
    modes = []
    for mode in (0o640, 0o755, 0o600):
        os.chmod("m", mode)
        modes.append(oct(os.stat("m").st_mode & 0o777))
    os.mkdir("md")
    os.chmod("md", 0o750)
    modes.append(oct(os.stat("md").st_mode & 0o777))
    return modes


@check("workspace root mode")
def _():
    return oct(os.stat("/workspace").st_mode & 0o777)


@check("chown to root")
def _():
    write("o", b"")
    try:
        os.chown("o", 0, 0)
    except PermissionError:
        return "EPERM"
    return f"succeeded (owner now {os.stat('o').st_uid})"


@check("owner is the session's uid")
def _():
    write("own", b"")
    return os.stat("own").st_uid == os.getuid()


@check("large file")
def _():
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open("large", "wb") as f:
        for _ in range(64):
            f.write(block)
            digest.update(block)
    back = hashlib.sha256()
    with open("large", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            back.update(chunk)
    os.remove("large")
    return back.hexdigest() == digest.hexdigest()


@check("many small files")
def _():
    os.mkdir("many")
    for i in range(200):
        write(f"many/{i:03}", str(i).encode())
    names = sorted(os.listdir("many"))
    return [len(names), read("many/199").decode()]


@check("git repository")
def _():
    env = dict(os.environ, HOME="/tmp", GIT_AUTHOR_NAME="u", GIT_AUTHOR_EMAIL="u@x", GIT_COMMITTER_NAME="u",
               GIT_COMMITTER_EMAIL="u@x")
    run = lambda *a: subprocess.run(["git", *a], cwd="repo", env=env, capture_output=True, text=True, check=True)  # noqa: E731
    os.mkdir("repo")
    run("init", "-q")
    for i in range(5):
        write(f"repo/f{i}.txt", f"{i}\n".encode())
    run("add", ".")
    run("commit", "-q", "-m", "first")
    write("repo/f0.txt", b"changed\n")
    run("commit", "-q", "-am", "second")
    return [run("log", "--format=%s").stdout.split(), run("fsck", "--strict").returncode]


def sqlite_round_trip(path, mode):
    db = sqlite3.connect(path)
    got = db.execute(f"pragma journal_mode={mode}").fetchone()[0]
    db.execute("create table t (x integer)")
    for i in range(50):
        db.execute("insert into t values (?)", (i,))
        db.commit()
    db.close()
    db = sqlite3.connect(path)
    count = db.execute("select count(*), sum(x) from t").fetchone()
    check_ok = db.execute("pragma integrity_check").fetchone()[0]
    db.close()
    return [got, list(count), check_ok]


@check("sqlite rollback journal")
def _():
    return sqlite_round_trip("rollback.db", "delete")


@check("sqlite WAL")
def _():
    return sqlite_round_trip("wal.db", "wal")


@check("venv")
def _():
    subprocess.run(["python3", "-m", "venv", "--without-pip", "venv"], check=True, capture_output=True)
    out = subprocess.run(["venv/bin/python", "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@check("workspace root mtime")
def _():
    before = os.stat("/workspace").st_mtime
    try:
        os.utime("/workspace")
        touched = "ok"
    except OSError as exc:
        touched = errno.errorcode.get(exc.errno, str(exc.errno))
    return [before > 946684800, touched]


@check("directory made only by a key below it")
def _():
    # uploads/ holds a key put from outside (by the test) whose directory was never made here.
    return os.stat("/workspace/uploads/deep").st_mtime > 946684800 if os.path.exists("/workspace/uploads/deep") \
        else "absent"


@check("file name with a newline")
def _():
    try:
        write("a\nb", b"x")
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "stored"


print(json.dumps(RESULTS))
