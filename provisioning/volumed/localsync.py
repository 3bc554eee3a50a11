"""The local-first workspace (mounter ``local``): a session's files live on its own capped host
filesystem (its staging area, an ext4 image) and S3 is kept up to date behind them, as the same
plain objects under ``sessions/<id>/`` that s3fs writes (with s3fs's ``x-amz-meta-mode``,
``-mtime``, ``-uid`` and ``-gid``, so a session moves between mounters without losing them).

One process per session (``python -m provisioning.volumed.localsync``), started by the volume
service like any mounter, in a session of its own (it outlives a restart of the service), with
the session's scoped credentials in its environment only:

  hydrate  every object under the prefix is downloaded (in parallel) before user code can see
           the tree; then the tree is bound onto the volume's mount point (the mount appearing
           is what the service and the executor wait for);
  sync     every second the tree is rescanned (the ground truth: no event is trusted to have
           been seen) and what changed since the last round is put, what went is deleted;
  flush    on the control socket: a round, then every synced entry checked against the
           server's listing; the answer says ``ok`` or why not (the volume's drain);
  end      when the mount is taken down (or on SIGTERM): a last round, then exit 0 if
           everything is in S3, 1 if not (the staging area, and so the data, is then kept).

The process runs as root and reads a tree the session writes: it never follows a link the
session made (every path is walked one directory at a time with O_NOFOLLOW from the root's
descriptor), and it reads nothing but regular files, directories and links.

Credentials: the process starts with the session's scoped keys in its environment; the volume
service hands it fresh ones at half-life on the control socket (``renew``). A store that cannot
be reached ends a round at its first put (the tree keeps every byte; the next round tries
again); one that throttles is retried with backoff, then at the next round. A crash of this
process leaves the tree and the index: the volume's removal sends what is left (``--resume
--once``); see docs/operations.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FILE, DIR, LINK = "file", "dir", "link"
ROUND_EVERY = 1.0
PULL_EVERY = 2.0  # outside writes (the platform's uploads) appear within this and a round
SINGLE_PUT_MAX = 64 << 20  # larger files go up in parts (s3transfer)
ROUND_BUDGET = 2.0  # a background round spends at most about this (then outside writes get their turn)
QUIET = 0.5  # a background round leaves a file written to within this (it is probably being written)
BATCH = 256  # paths put side by side before the budget is looked at again
FLUSH_ROUNDS = 10
WORKERS = 16
DEFAULT_DIR_MODE, DEFAULT_FILE_MODE = 0o750, 0o640  # objects s3fs did not describe (the platform's)
MAX_NAME = 255
MAX_REPORTED = 100  # failures a flush names (and how many more there are)
UNREACHABLE = "S3 is unreachable: "  # a failure of the connection, not the store's answer
BUSY = "S3 is busy: "  # a 5xx or 429 answer (SlowDown) after the client's own tries: a flush tries again
RENEW_MAX = 16 << 10  # a control request's longest line (a renewal carries a session token)


@dataclass(frozen=True)
class Failure:
    """A path the store does not hold as the tree does (``path`` empty: the whole prefix)."""

    path: str
    reason: str
    held: bool = True  # the path's bytes are in the tree and not in S3 (a put failed, or is missing)

    def __str__(self) -> str:
        return f"{self.path!r}: {self.reason}" if self.path else self.reason


@dataclass(frozen=True)
class Entry:
    kind: str
    size: int
    mtime_ns: int
    mode: int  # permission bits only

    def metadata(self, uid: int, gid: int) -> dict[str, str]:
        """s3fs's description of the object (``x-amz-meta-*``)."""
        kind = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, LINK: stat.S_IFLNK}[self.kind]
        return {"mode": str(kind | self.mode), "mtime": str(self.mtime_ns // 1_000_000_000),
                "uid": str(uid), "gid": str(gid)}


def entry_of(st: os.stat_result) -> Entry | None:
    if stat.S_ISREG(st.st_mode):
        kind = FILE
    elif stat.S_ISDIR(st.st_mode):
        kind = DIR
    elif stat.S_ISLNK(st.st_mode):
        kind = LINK
    else:
        return None  # a FIFO or a socket: nothing S3 can hold
    return Entry(kind, st.st_size if kind != DIR else 0, st.st_mtime_ns, stat.S_IMODE(st.st_mode))


def valid_name(rel: str) -> bool:
    """Whether a key's remainder below the prefix can be a path in the tree."""
    parts = rel.split("/")
    return all(p not in ("", ".", "..") and "\0" not in p and len(p.encode()) <= MAX_NAME for p in parts)


class Tree:
    """The workspace's files, as root, without ever following a link the session made."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @contextlib.contextmanager
    def _parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """A descriptor of ``rel``'s directory, reached one component at a time (no links)."""
        *dirs, name = rel.split("/")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in dirs:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
            yield fd, name
        finally:
            os.close(fd)

    def scan(self) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        root = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            self._scan(root, "", found)
        finally:
            os.close(root)
        return found

    def _scan(self, fd: int, prefix: str, found: dict[str, Entry]) -> None:
        with os.scandir(fd) as entries:
            listed = [(e.name, e.stat(follow_symlinks=False)) for e in entries]
        for name, st in listed:
            entry = entry_of(st)
            if entry is None:
                continue
            rel = prefix + name
            found[rel] = entry
            if entry.kind == DIR:
                try:
                    child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except OSError:
                    continue  # gone, or replaced by a link, since the listing: the next round sees it
                try:
                    self._scan(child, rel + "/", found)
                finally:
                    os.close(child)

    def scan_one(self, rel: str) -> Entry | None:
        with self._parent(rel) as (parent, name):
            return entry_of(os.stat(name, dir_fd=parent, follow_symlinks=False))

    def open(self, rel: str) -> int:
        """A regular file's descriptor, for reading (OSError if it is anything else now)."""
        with self._parent(rel) as (fd, name):
            file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
        if not stat.S_ISREG(os.fstat(file).st_mode):
            os.close(file)
            raise OSError(f"{rel} is no longer a regular file")
        return file

    def readlink(self, rel: str) -> str:
        with self._parent(rel) as (fd, name):
            return os.readlink(name, dir_fd=fd)

    # -- writes (hydration, and what others put): as safe as the reads ------------------------
    def make_dirs(self, rel: str, uid: int, gid: int) -> None:
        """``rel`` and its parents, each made where missing (the session's, DEFAULT_DIR_MODE)."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            for part in rel.split("/"):
                try:
                    os.mkdir(part, DEFAULT_DIR_MODE, dir_fd=fd)
                    os.chown(part, uid, gid, dir_fd=fd, follow_symlinks=False)
                except FileExistsError:
                    pass
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd = child
        finally:
            os.close(fd)

    def write(self, rel: str, chunks: Iterator[bytes] | None, link: str | None, mode: int, mtime: float,
              uid: int, gid: int) -> None:
        """Put a file (``chunks``) or a link (``link``) at ``rel``, whole or not at all: made
        beside it under a name of its own, then renamed over it."""
        if "/" in rel:
            self.make_dirs(rel.rsplit("/", 1)[0], uid, gid)
        with self._parent(rel) as (parent, name):
            tmp = f".sandbox-pull-{secrets.token_hex(6)}"
            try:
                if link is not None:
                    os.symlink(link, tmp, dir_fd=parent)
                else:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=parent)
                    try:
                        for chunk in chunks or ():
                            _write_all(fd, chunk)
                        os.fchmod(fd, mode)
                    finally:
                        os.close(fd)
                os.chown(tmp, uid, gid, dir_fd=parent, follow_symlinks=False)
                os.utime(tmp, (mtime, mtime), dir_fd=parent, follow_symlinks=False)
                os.rename(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=parent)
                raise

    def remove(self, rel: str) -> None:
        with self._parent(rel) as (parent, name):
            os.unlink(name, dir_fd=parent)


class Mirror:
    """The tree and the objects under ``prefix``, kept alike from the tree's side."""

    def __init__(self, s3: Any, bucket: str, prefix: str, tree: Tree, uid: int, gid: int,
                 log: Callable[[str], None] = lambda _m: None, index: Path | None = None) -> None:
        self.s3, self.bucket, self.prefix, self.tree = s3, bucket, prefix, tree
        self.uid, self.gid = uid, gid
        self._log = log
        self.index = index  # where synced and remote are kept across a crash (root's, beside the tree)
        self._saved: tuple[dict[str, Entry], dict[str, str]] | None = None
        self.synced: dict[str, Entry] = {}  # what S3 holds, as of the last round, for each path
        self.remote: dict[str, str] = {}  # each key's ETag as last seen (put by us, or pulled)
        self.pending = 0  # paths the last round left for the next one
        self._lock = threading.Lock()  # one round at a time
        self._away = threading.Event()  # this round met a store it cannot reach
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="sync")

    def key(self, rel: str, kind: str) -> str:
        return f"{self.prefix}/{rel}/" if kind == DIR else f"{self.prefix}/{rel}"

    # -- the index: what S3 holds, kept on disk so that a new process resumes exactly -------------
    def save(self) -> None:
        """Write the index if it changed (atomically, 0600, fsynced: after a crash it says what
        S3 held as of the last round)."""
        if self.index is None or self._saved == (self.synced, self.remote):
            return
        data = {"bucket": self.bucket, "prefix": self.prefix, "uid": self.uid, "gid": self.gid,
                "synced": {rel: [e.kind, e.size, e.mtime_ns, e.mode] for rel, e in self.synced.items()},
                "remote": self.remote}
        tmp = self.index.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.index)
        self._saved = (dict(self.synced), dict(self.remote))

    def resume(self) -> bool:
        """Take the index a previous process left: False if there is none (then this one knows
        nothing of S3: its rounds put every path and delete nothing, and a pull keeps both sides
        of every path that differs)."""
        if self.index is None or not self.index.exists():
            return False
        data = json.loads(self.index.read_text())
        with self._lock:
            self.synced = {rel: Entry(str(k), int(size), int(mtime), int(mode))
                           for rel, (k, size, mtime, mode) in data["synced"].items()}
            self.remote = {str(k): str(v) for k, v in data["remote"].items()}
            self._saved = (dict(self.synced), dict(self.remote))
        return True

    def listing(self) -> dict[str, dict[str, Any]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/")
        return {o["Key"]: o for page in pages for o in page.get("Contents", [])}

    # -- in -------------------------------------------------------------------------------------
    def hydrate(self) -> int:
        """Download every object under the prefix into the (empty) tree; returns how many."""
        self.tree.root.mkdir(mode=DEFAULT_DIR_MODE, exist_ok=True)
        os.chown(self.tree.root, self.uid, self.gid)
        os.chmod(self.tree.root, DEFAULT_DIR_MODE)
        objects = self.listing()
        rels: dict[str, tuple[str, str]] = {}  # rel -> (key, kind)
        for key in sorted(objects):
            rel = key[len(self.prefix) + 1:]
            kind = DIR if rel.endswith("/") else FILE
            rel = rel.rstrip("/")
            if not rel:
                continue  # the prefix's own marker
            if not valid_name(rel):
                self._log(f"not hydrated: {key!r} cannot be a path in the workspace")
                continue
            rels[rel] = (key, kind)
        # A key below another key's name (a file "a" and "a/b") cannot be both: the file is kept.
        dirs_needed = {"/".join(r.split("/")[:i]) for r in rels for i in range(1, r.count("/") + 1)}
        for rel in sorted(dirs_needed):
            if rels.get(rel, ("", DIR))[1] != DIR:
                self._log(f"not hydrated: the keys below {rel!r} (it is a file)")
        usable = {r: v for r, v in rels.items()
                  if not any(rels.get(p, ("", DIR))[1] != DIR for p in _parents(r))}
        for rel, (_key, kind) in sorted(usable.items()):
            if kind == DIR:
                self.tree.make_dirs(rel, self.uid, self.gid)
            elif "/" in rel:
                self.tree.make_dirs(rel.rsplit("/", 1)[0], self.uid, self.gid)
        files = [(rel, key) for rel, (key, kind) in usable.items() if kind == FILE]
        list(self._pool.map(lambda item: self._download(item[0], item[1], objects[item[1]]), files))
        # Directories last (deepest first): making their files changed their mtimes.
        dirs = sorted((rel for rel, (_k, kind) in usable.items() if kind == DIR), key=lambda r: -r.count("/"))
        list(self._pool.map(lambda rel: self._describe_dir(rel, usable[rel][0]), dirs))
        # What S3 holds now: the tree but the directories only implied by keys below them (the
        # first round puts their markers, as s3fs would have).
        with self._lock:
            self.synced = {rel: e for rel, e in self.tree.scan().items() if self.key(rel, e.kind) in objects}
            self.remote = {key: str(o["ETag"]) for key, o in objects.items()}
            self.save()
        return len(files)

    def _download(self, rel: str, key: str, listed: dict[str, Any]) -> None:
        """The object at ``key`` into the tree at ``rel``, with the mode and mtime s3fs recorded
        (the session's owner, whoever wrote it)."""
        answer = self.s3.get_object(Bucket=self.bucket, Key=key)
        meta = {k.lower(): v for k, v in answer.get("Metadata", {}).items()}
        mode = _int(meta.get("mode"))
        mtime = _float(meta.get("mtime")) or listed["LastModified"].timestamp()
        if mode is not None and stat.S_ISLNK(mode):
            link = answer["Body"].read().decode(errors="surrogateescape")
            self.tree.write(rel, None, link, 0, mtime, self.uid, self.gid)
        else:
            self.tree.write(rel, answer["Body"].iter_chunks(1 << 20), None,
                            stat.S_IMODE(mode) & 0o777 if mode is not None else DEFAULT_FILE_MODE,
                            mtime, self.uid, self.gid)

    def _describe_dir(self, rel: str, key: str) -> None:
        path = self.tree.root / rel
        try:
            meta = {k.lower(): v for k, v in self.s3.head_object(Bucket=self.bucket, Key=key)["Metadata"].items()}
        except Exception:  # noqa: BLE001 - an undescribed directory keeps the default
            meta = {}
        mode = _int(meta.get("mode"))
        if mode is not None:
            os.chmod(path, stat.S_IMODE(mode) & 0o777)
        mtime = _float(meta.get("mtime"))
        if mtime:
            os.utime(path, (mtime, mtime))

    # -- out ------------------------------------------------------------------------------------
    def sync(self, budget: float | None = None, quiet: float = 0.0) -> list[Failure]:
        """One round: put what changed since the last, delete what went. Returns the failures
        (each names the path and the store's answer); what failed is tried again next round.
        With ``budget`` (seconds), the round ends once it has spent that much, at the end of a
        batch (what is left waits for the next round, and outside writes get their turn). With
        ``quiet`` (seconds), a file modified more recently than that waits for the next round:
        one still being written is not sent whole again at every round. ``pending`` says how
        many paths are left, as it does for files that changed while they were read."""
        deadline = None if budget is None else time.monotonic() + budget
        settled_before = time.time_ns() - int(quiet * 1e9)
        with self._lock:
            current = self.tree.scan()
            changed = [(rel, e) for rel, e in current.items() if self.synced.get(rel) != e]
            waiting = [item for item in changed if item[1].kind == FILE and item[1].mtime_ns > settled_before]
            if waiting:
                changed = [item for item in changed if not (item[1].kind == FILE and item[1].mtime_ns > settled_before)]
            gone = [(rel, e) for rel, e in self.synced.items() if rel not in current or current[rel].kind != e.kind]
            failures: list[Failure] = []
            done = 0
            self._away.clear()
            for start in range(0, len(changed), BATCH):
                if start and deadline is not None and time.monotonic() > deadline:
                    break  # at least one batch a round
                batch = changed[start:start + BATCH]
                for (rel, _entry), outcome in zip(batch, self._pool.map(lambda item: self._put(*item), batch),
                                                  strict=True):
                    if isinstance(outcome, tuple):
                        self.synced[rel] = outcome[0]
                        self.remote[self.key(rel, outcome[0].kind)] = outcome[1]
                        done += 1
                    elif outcome:
                        failures.append(Failure(rel, outcome))
                if self._away.is_set():
                    break  # the store is away: the next round tries again, the tree keeps every byte
            away = any(f.reason.startswith(UNREACHABLE) for f in failures)
            if gone and not away and (deadline is None or time.monotonic() <= deadline):
                refused = self._delete(gone)
                failures += refused
                done += len(gone) - len(refused)
            self.pending = len(changed) + len(waiting) + len(gone) - done - len(failures)
            self.save()
            return failures

    def _put(self, rel: str, entry: Entry) -> tuple[Entry, str] | str:
        """Put one path: the entry as put (the next round compares with it) and the object's
        ETag; '' when it changed while being read (the next round puts it again); or the failure."""
        import botocore.exceptions

        key = self.key(rel, entry.kind)
        meta = entry.metadata(self.uid, self.gid)
        if self._away.is_set():
            return f"{UNREACHABLE}not tried (another put of this round could not reach it)"
        try:
            if entry.kind == DIR:
                return entry, self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"", Metadata=meta)["ETag"]
            if entry.kind == LINK:
                target = self.tree.readlink(rel).encode(errors="surrogateescape")
                return entry, self.s3.put_object(Bucket=self.bucket, Key=key, Body=target, Metadata=meta)["ETag"]
            fd = self.tree.open(rel)
            try:
                if entry_of(os.fstat(fd)) != entry:
                    return ""
                # The upload closes the file it is given (s3transfer): give it a copy of ours.
                with os.fdopen(os.dup(fd), "rb") as source:
                    if entry.size <= SINGLE_PUT_MAX:
                        etag = self.s3.put_object(Bucket=self.bucket, Key=key, Body=source, Metadata=meta)["ETag"]
                    else:
                        self.s3.upload_fileobj(source, self.bucket, key, ExtraArgs={"Metadata": meta})
                        etag = self.s3.head_object(Bucket=self.bucket, Key=key)["ETag"]
                return (entry, etag) if entry_of(os.fstat(fd)) == entry else ""
            finally:
                os.close(fd)
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            # First: some of these are OSErrors too (through urllib3's and requests' classes).
            self._away.set()  # the puts still queued in this round fail at once
            return f"{UNREACHABLE}{exc}"
        except FileNotFoundError:
            return ""  # removed meanwhile: the next round deletes it
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        except botocore.exceptions.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            return f"{BUSY if status >= 500 or status == 429 else 'S3 refused it: '}{exc}"
        except (botocore.exceptions.BotoCoreError, ValueError) as exc:
            return f"S3 refused it: {exc}"

    def _delete(self, gone: list[tuple[str, Entry]]) -> list[Failure]:
        """One DeleteObject per key, side by side: Ceph RGW refuses a multi-object delete
        (POST ?delete) to a session policy that allows s3:DeleteObject on its keys."""
        import botocore.exceptions

        def delete(item: tuple[str, Entry]) -> str:
            try:
                self.s3.delete_object(Bucket=self.bucket, Key=self.key(item[0], item[1].kind))
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                return str(exc)
            return ""

        failures = []
        for (rel, entry), error in zip(gone, self._pool.map(delete, gone), strict=True):
            if error:
                failures.append(Failure(rel, f"S3 refused its deletion: {error}", held=False))
                continue
            self.remote.pop(self.key(rel, entry.kind), None)
            if self.synced.get(rel) == entry:  # not if the path's new kind was put meanwhile
                del self.synced[rel]
        return failures

    # -- what others put ------------------------------------------------------------------------
    def pull(self) -> list[Failure]:
        """Bring into the tree what others put under the prefix since the last look (a key new
        or of another ETag), and remove what they deleted, where the tree kept the path as last
        synced. Where both sides changed a path, the workspace keeps its own (the next round
        puts it) and the store's comes in beside it as ``<name>.conflict-<etag>``: neither is
        lost silently. Directories others remove stay."""
        import botocore.exceptions

        try:
            objects = self.listing()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return [Failure("", f"cannot list the prefix: {exc}", held=False)]
        failures: list[Failure] = []
        with self._lock:
            current = self.tree.scan()
            for key, listed in sorted(objects.items()):
                etag = str(listed["ETag"])
                if self.remote.get(key) == etag:
                    continue
                rel = key[len(self.prefix) + 1:]
                kind = DIR if rel.endswith("/") else FILE
                rel = rel.rstrip("/")
                try:
                    if rel and valid_name(rel):
                        self._pull_one(rel, kind, key, etag, listed, current)
                except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                    failures.append(Failure(rel, f"cannot get it from S3: {exc}", held=False))
                    continue  # asked again next time
                except OSError as exc:
                    self._log(f"not pulled: {key!r} ({exc.strerror or exc})")
                self.remote[key] = etag
            for key in [k for k in self.remote if k not in objects]:
                del self.remote[key]
                rel = key[len(self.prefix) + 1:]
                old = self.synced.get(rel)
                if old is None or old.kind == DIR or current.get(rel) != old:
                    continue  # never here, a directory, or changed here since: the next round puts it
                with contextlib.suppress(FileNotFoundError):
                    self.tree.remove(rel)
                del self.synced[rel]
                self._log(f"removed {rel!r}: deleted from S3")
            self.save()
        return failures

    def _pull_one(self, rel: str, kind: str, key: str, etag: str, listed: dict[str, Any],
                  current: dict[str, Entry]) -> None:
        if kind == DIR:
            if rel not in current:
                self.tree.make_dirs(rel, self.uid, self.gid)
            return
        here, synced = current.get(rel), self.synced.get(rel)
        if here is not None and here != synced and self._same_bytes(rel, here, listed):
            self.synced[rel] = here  # already alike (a resume without an index): nothing to do
            return
        if here is not None and here != synced:
            beside = f"{rel}.conflict-{etag.strip(chr(34))[:12]}"
            self._download(beside, key, listed)
            self._log(f"conflict: {rel!r} changed here and in S3; S3's version is {beside!r}")
            return
        self._download(rel, key, listed)
        entry = self.tree.scan_one(rel)
        if entry is not None:
            self.synced[rel] = entry

    def _same_bytes(self, rel: str, here: Entry, listed: dict[str, Any]) -> bool:
        """Whether the tree's file holds the object's bytes (by the MD5 a single-part ETag is)."""
        import hashlib

        etag = str(listed["ETag"]).strip('"')
        if here.kind != FILE or here.size != int(listed["Size"]) or len(etag) != 32 or "-" in etag:
            return False
        digest = hashlib.md5(usedforsecurity=False)
        try:
            fd = self.tree.open(rel)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as source:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest() == etag

    def verify(self) -> list[Failure]:
        """What the server lacks of the last round's tree (each path, and why)."""
        import botocore.exceptions

        try:
            objects = self.listing()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            return [Failure("", f"cannot list the prefix to check it: {exc}", held=False)]
        missing = []
        for rel, entry in self.synced.items():
            found = objects.get(self.key(rel, entry.kind))
            if found is None:
                missing.append(Failure(rel, "not in S3"))
            elif entry.kind == FILE and int(found["Size"]) != entry.size:
                missing.append(Failure(rel, f"S3 holds {found['Size']} bytes, the workspace {entry.size}"))
        return missing

    def flush(self) -> list[Failure]:
        """What others put first (``pull``; a conflict keeps both sides), then rounds until one
        leaves nothing behind, then the server's listing checked against the tree as synced: []
        once everything is in S3. What could not be pulled is logged and asked again at the next
        look; it does not fail the flush, which is about the session's writes."""
        for failure in self.pull():
            self._log(f"not pulled yet: {failure}")
        for _ in range(FLUSH_ROUNDS):
            failures = self.sync()
            if failures and not all(f.reason.startswith(BUSY) for f in failures):
                return failures
            if failures:
                time.sleep(0.5)  # a store that throttles (past the client's own tries): another round
                continue
            if not self.pending:
                return self.verify()
        if failures:
            return failures
        return [Failure("", f"{self.pending} path(s) kept changing through {FLUSH_ROUNDS} rounds", held=False)]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


# -- the process ---------------------------------------------------------------------------------
class Syncer:
    """The mirror's rounds, its control socket, and its end."""

    def __init__(self, mirror: Mirror, control: Path, log: Callable[[str], None],
                 client_for: Callable[[dict[str, str]], Any] | None = None) -> None:
        self.mirror = mirror
        self.control = control
        self._log = log
        self._client_for = client_for  # a new S3 client signing with the keys it is given
        self.stop = threading.Event()
        self.failures: list[Failure] = []

    def serve_control(self) -> None:
        """``ping``; ``flush``; or ``renew {"AccessKeyId", "SecretAccessKey", "SessionToken"}``
        (requests after it sign with those keys; those under way finish with the old ones, still
        valid). One JSON line back, ``{"ok", "failures": [{"path", "reason", "held"}], "more"}``.
        Root only (0600): it carries credentials."""
        self.control.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            server.bind(str(self.control))
        finally:
            os.umask(old)
        server.listen(8)
        while not self.stop.is_set():
            conn, _ = server.accept()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                request = conn.makefile("rb").readline(RENEW_MAX).strip()
            except OSError:
                return
            if request.startswith(b"renew ") and self._client_for is not None:
                try:
                    keys = json.loads(request[len(b"renew "):])
                    self.mirror.s3 = self._client_for({k: str(keys[k]) for k in
                                                       ("AccessKeyId", "SecretAccessKey", "SessionToken")})
                    reply = {"ok": True, "failures": [], "more": 0}
                    self._log("credentials renewed")
                except (ValueError, KeyError, TypeError):
                    reply = {"ok": False, "failures": [], "more": 0}
            elif request == b"flush":
                failures = self.mirror.flush()
                reply = {"ok": not failures, "failures": [dataclasses.asdict(f) for f in failures[:MAX_REPORTED]],
                         "more": max(len(failures) - MAX_REPORTED, 0)}
            else:
                reply = {"ok": request == b"ping", "failures": [], "more": 0}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def run(self, mountpoint: Path) -> int:
        """Rounds every second until the mount is taken down (or SIGTERM); then the last one."""
        from .staging import is_mounted

        last = pulled = 0.0
        every, pull_every = ROUND_EVERY, PULL_EVERY
        while not self.stop.is_set() and is_mounted(mountpoint):
            if time.monotonic() - pulled >= pull_every:
                began = time.monotonic()
                for failure in self.mirror.pull():
                    self._log(f"not pulled yet: {failure}")
                pulled = time.monotonic()
                # A large prefix's listing costs the store too: at most a fifth of the time on it.
                pull_every = max(PULL_EVERY, 4 * (pulled - began))
            if time.monotonic() - last >= every:
                began = time.monotonic()
                self.failures = self.mirror.sync(ROUND_BUDGET, QUIET)
                for failure in self.failures:
                    self._log(f"not in S3 yet: {failure}")
                last = time.monotonic()
                # A large tree's rescan costs: spend at most a fifth of the time on rounds.
                every = max(ROUND_EVERY, 4 * (last - began))
            self.stop.wait(0.1)
        self.failures = self.mirror.flush()
        for failure in self.failures:
            self._log(f"not in S3 at the end: {failure}")
        return 1 if self.failures else 0


def flush_until(mirror: Mirror, deadline: float, log: Callable[[str], None]) -> int:
    """Flushes (what others put first: a conflict keeps both sides) until everything is in S3:
    0, or 1 once ``deadline`` passed (each failure logged)."""
    while True:
        failures = mirror.flush()
        if not failures:
            log("everything is in S3")
            return 0
        if time.monotonic() > deadline:
            for failure in failures:
                log(f"not in S3: {failure}")
            return 1
        time.sleep(1)


def bind(source: Path, mountpoint: Path) -> None:
    """The tree onto the volume's mount point (it propagates into the session's container):
    nosuid and nodev, as the staging area, but exec (a venv's scripts, a build's binaries)."""
    subprocess.run(["mount", "--bind", str(source), str(mountpoint)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "remount,bind,nosuid,nodev", str(mountpoint)], check=True, capture_output=True)


def warm_up() -> None:
    """What a spare does before its job: Python and boto3 loaded, S3's model cached in boto3's
    default session (the job's client is then made in milliseconds, not ~0.3 s)."""
    import boto3

    boto3.client("s3", region_name="us-east-1", aws_access_key_id="spare", aws_secret_access_key="spare")


def main(argv: list[str] | None = None) -> int:
    from .fuseproc import SPARE_FLAG, take_job

    argv = sys.argv[1:] if argv is None else argv
    if argv == [SPARE_FLAG]:  # started ahead of time by the volume service (fuseproc.Spares)
        warm_up()
        argv = take_job(sys.stdin.buffer)
    parser = argparse.ArgumentParser(prog="localsync")
    for name in ("endpoint", "region", "bucket", "prefix", "source", "mountpoint", "control"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--index", required=True)
    parser.add_argument("--resume", action="store_true",
                        help="the tree is there (a previous process died): take its index, do not hydrate")
    parser.add_argument("--once", type=float, metavar="TIMEOUT",
                        help="no mount, no control socket: pull, then flush until everything is in S3 "
                             "(exit 0) or TIMEOUT seconds passed (exit 1)")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        from ..escape import printable

        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [localsync] {printable(message, quote_backslashes=False)}",
              file=sys.stderr, flush=True)

    import boto3
    import botocore.config

    def client_for(keys: dict[str, str]) -> Any:
        """An S3 client signing with ``keys`` (the environment's, first: AWS_ACCESS_KEY_ID ...).
        A request is tried 4 times with backoff (throttling: 503 SlowDown; then the next round
        tries again); a store that does not answer a connection in 3 s counts as unreachable, and
        its first such put ends the round: a black-holed store costs a round about 20 s."""
        return boto3.client("s3", endpoint_url=args.endpoint, region_name=args.region,
                            aws_access_key_id=keys.get("AccessKeyId") or None,
                            aws_secret_access_key=keys.get("SecretAccessKey") or None,
                            aws_session_token=keys.get("SessionToken") or None,
                            config=botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=3,
                                                          read_timeout=60, max_pool_connections=WORKERS,
                                                          retries={"max_attempts": 4, "mode": "standard"}))

    s3 = client_for({})
    mirror = Mirror(s3, args.bucket, args.prefix, Tree(Path(args.source)), args.uid, args.gid, log,
                    index=Path(args.index))
    started = time.monotonic()
    if args.resume:
        log("resumed from the last index" if mirror.resume() else "no index left: every path is put, none deleted")
    else:
        log(f"hydrated {mirror.hydrate()} file(s) in {time.monotonic() - started:.3f}s")
    if args.once is not None:
        return flush_until(mirror, started + args.once, log)
    syncer = Syncer(mirror, Path(args.control), log, client_for)
    threading.Thread(target=syncer.serve_control, name="control", daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_a: syncer.stop.set())
    bind(Path(args.source), Path(args.mountpoint))
    return syncer.run(Path(args.mountpoint))


if __name__ == "__main__":
    sys.exit(main())
