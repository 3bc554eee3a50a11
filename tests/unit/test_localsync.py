"""The local-first workspace's mirror against the embedded S3 endpoint (a real S3 server on
loopback): hydration with s3fs's metadata, every kind of change reaching S3 as the plain object
under the same key, never following a link the session made, and failures kept for the next
round. The whole mounter, in a session, is in tests/integration (test_local_workspace.py)."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from provisioning.config import Credentials
from provisioning.devstore.server import EmbeddedS3Server
from provisioning.volumed.localsync import Mirror, Tree

UID = GID = 1900000007
PREFIX = "sessions/local-unit"


@pytest.fixture
def s3(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> Iterator[tuple[Any, str]]:
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                          aws_access_key_id=s3_credentials.access_key,
                          aws_secret_access_key=s3_credentials.secret_key)
    bucket = f"local-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket


def objects(client: Any, bucket: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/").get("Contents", [])
    return {o["Key"][len(PREFIX) + 1:]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


def meta(client: Any, bucket: str, rel: str) -> dict[str, str]:
    return dict(client.head_object(Bucket=bucket, Key=f"{PREFIX}/{rel}")["Metadata"])


def test_hydration_brings_every_object_with_the_mode_and_mtime_s3fs_recorded(s3: tuple[Any, str],
                                                                            tmp_path: Path) -> None:
    client, bucket = s3
    put = lambda key, body, **m: client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=body,  # noqa: E731
                                                     Metadata={k: str(v) for k, v in m.items()})
    put("", b"")
    put("uploads/", b"")
    put("uploads/data.csv", b"a,b\n")  # from the platform: no metadata
    put("artifacts/run.sh", b"#!/bin/sh\n", mode=stat.S_IFREG | 0o755, mtime=1_000_000_000)
    put("artifacts/link", b"run.sh", mode=stat.S_IFLNK | 0o777, mtime=1_000_000_000)
    put("deep/er/x.txt", b"x")  # no directory markers above it
    put("private/", b"", mode=stat.S_IFDIR | 0o700, mtime=1_100_000_000)
    put("bad//name", b"?")  # cannot be a path
    put("plain", b"a file")
    put("plain/below", b"cannot be below a file")
    mirror = Mirror(client, bucket, PREFIX, Tree(tmp_path / "ws"), UID, GID)
    assert mirror.hydrate() == 5  # files and links
    root = tmp_path / "ws"
    assert (root / "uploads" / "data.csv").read_bytes() == b"a,b\n"
    assert stat.S_IMODE((root / "uploads" / "data.csv").stat().st_mode) == 0o640
    run = (root / "artifacts" / "run.sh").stat()
    assert (stat.S_IMODE(run.st_mode), run.st_mtime, run.st_uid, run.st_gid) == (0o755, 1_000_000_000, UID, GID)
    assert os.readlink(root / "artifacts" / "link") == "run.sh"
    assert (root / "deep" / "er" / "x.txt").read_bytes() == b"x"
    private = (root / "private").stat()
    assert (stat.S_IMODE(private.st_mode), private.st_mtime) == (0o700, 1_100_000_000)
    assert (root / "plain").read_bytes() == b"a file" and not (root / "bad").exists()
    assert (root.stat().st_uid, stat.S_IMODE(root.stat().st_mode)) == (UID, 0o750)
    # A round adds the markers of the directories only implied by keys (as s3fs would), no more.
    before = objects(client, bucket)
    assert mirror.sync() == [] and mirror.verify() == []
    assert objects(client, bucket) == {**before, "artifacts/": b"", "deep/": b"", "deep/er/": b""}


def test_every_change_reaches_s3_as_the_plain_object(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    (root / "artifacts").mkdir()
    (root / "artifacts" / "a.txt").write_text("one")
    (root / "old").mkdir()
    for i in range(3):
        (root / "old" / f"{i}.txt").write_text(str(i))
    (root / "empty").mkdir()
    (root / "gone.txt").write_text("soon gone")
    assert mirror.sync() == []
    assert objects(client, bucket) == {"artifacts/": b"", "artifacts/a.txt": b"one", "old/": b"", "old/0.txt": b"0",
                                       "old/1.txt": b"1", "old/2.txt": b"2", "empty/": b"",
                                       "gone.txt": b"soon gone"}
    # Write, rename a directory, delete, chmod, utime, link, a file that becomes a directory.
    (root / "artifacts" / "a.txt").write_text("one, then two")
    (root / "old").rename(root / "new")
    (root / "gone.txt").unlink()
    os.chmod(root / "artifacts" / "a.txt", 0o600)
    os.utime(root / "artifacts" / "a.txt", (1_200_000_000, 1_200_000_000))
    os.symlink("artifacts/a.txt", root / "link")
    (root / "empty").rmdir()
    (root / "empty").write_text("now a file")
    assert mirror.sync() == [] and mirror.verify() == []
    assert objects(client, bucket) == {"artifacts/": b"", "artifacts/a.txt": b"one, then two", "new/": b"",
                                       "new/0.txt": b"0", "new/1.txt": b"1", "new/2.txt": b"2",
                                       "link": b"artifacts/a.txt", "empty": b"now a file"}
    assert meta(client, bucket, "artifacts/a.txt") == {"mode": str(stat.S_IFREG | 0o600), "mtime": "1200000000",
                                                       "uid": str(UID), "gid": str(GID)}
    assert meta(client, bucket, "link")["mode"] == str(stat.S_IFLNK | 0o777)
    # And back: a fresh hydration elsewhere gives the same tree (what a resume on another node sees).
    again = tmp_path / "again"
    Mirror(client, bucket, PREFIX, Tree(again), UID, GID).hydrate()
    assert (again / "artifacts" / "a.txt").read_text() == "one, then two"
    assert stat.S_IMODE((again / "artifacts" / "a.txt").stat().st_mode) == 0o600
    assert (again / "artifacts" / "a.txt").stat().st_mtime == 1_200_000_000
    assert os.readlink(again / "link") == "artifacts/a.txt" and (again / "empty").read_text() == "now a file"


def test_a_link_the_session_made_is_never_followed(s3: tuple[Any, str], tmp_path: Path) -> None:
    """The sync process is root: a link to a host file is stored as a link, never as the file,
    and a directory swapped for a link to / is not walked."""
    client, bucket = s3
    root = tmp_path / "ws"
    secret = tmp_path / "host-secret"
    secret.write_text("root's only")
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    os.symlink(secret, root / "steal")
    (root / "dir").mkdir()
    (root / "dir" / "f").write_text("mine")
    assert mirror.sync() == []
    os.rename(root / "dir", root / "was-dir")
    os.symlink(tmp_path, root / "dir")  # where "dir/f" was: now "host-secret" would be reachable below
    assert mirror.sync() == []
    stored = objects(client, bucket)
    assert stored["steal"] == str(secret).encode() and b"root's only" not in stored.values()
    assert "dir/host-secret" not in stored and stored["dir"] == str(tmp_path).encode()
    assert mirror.tree.scan().keys() == {"steal", "dir", "was-dir", "was-dir/f"}


def test_what_s3_refuses_is_named_and_tried_again(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, "no-such-bucket-" + uuid.uuid4().hex[:8], PREFIX, Tree(root), UID, GID)
    root.mkdir()
    (root / "kept.txt").write_text("kept")
    failures = mirror.sync()
    assert len(failures) == 1 and failures[0].path == "kept.txt" and failures[0].held
    assert str(failures[0]).startswith("'kept.txt': S3 refused it:") and "NoSuchBucket" in str(failures[0])
    assert [f.path for f in mirror.verify()] == [""]  # the listing itself fails: nothing can be shown held
    assert mirror.synced == {}  # not recorded: the next round puts it again
    mirror.bucket = bucket
    assert mirror.sync() == [] and mirror.verify() == []
    assert objects(client, bucket) == {"kept.txt": b"kept"}


def test_what_others_put_or_delete_comes_in_and_a_conflict_keeps_both(s3: tuple[Any, str], tmp_path: Path) -> None:
    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    for name in ("mine.txt", "theirs.txt", "both.txt", "deleted.txt", "kept.txt"):
        (root / name).write_text(f"{name} v1")
    assert mirror.sync() == []
    outside = lambda key, body: client.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=body)  # noqa: E731
    outside("uploads/new/data.csv", b"a,b")  # new, in a directory the tree does not have
    outside("theirs.txt", b"theirs v2")  # changed there only
    outside("both.txt", b"both v2 there")  # changed on both sides
    (root / "both.txt").write_text("both v2 here")
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}/deleted.txt")  # deleted there, unchanged here
    client.delete_object(Bucket=bucket, Key=f"{PREFIX}/kept.txt")  # deleted there, changed here
    (root / "kept.txt").write_text("kept v2 here")
    assert mirror.pull() == []
    assert (root / "uploads" / "new" / "data.csv").read_bytes() == b"a,b"
    assert (root / "uploads" / "new" / "data.csv").stat().st_uid == UID
    assert (root / "theirs.txt").read_text() == "theirs v2" and not (root / "deleted.txt").exists()
    assert (root / "both.txt").read_text() == "both v2 here" and (root / "kept.txt").read_text() == "kept v2 here"
    [conflict] = [p for p in root.iterdir() if p.name.startswith("both.txt.conflict-")]
    assert conflict.read_text() == "both v2 there"
    assert not [p for p in root.iterdir() if p.name.startswith(".sandbox-pull-")]
    # The next round puts this side's versions and the conflict copy; what came in is not put back.
    assert mirror.sync() == [] and mirror.verify() == []
    stored = objects(client, bucket)
    assert {k: v for k, v in stored.items() if not k.startswith("both.txt.conflict-")} == {
        "mine.txt": b"mine.txt v1", "theirs.txt": b"theirs v2", "both.txt": b"both v2 here",
        "kept.txt": b"kept v2 here", "uploads/": b"", "uploads/new/": b"", "uploads/new/data.csv": b"a,b"}
    assert stored[f"{conflict.name}"] == b"both v2 there"
    assert mirror.pull() == [] and mirror.sync() == []  # settled: nothing comes or goes again


def test_a_new_process_resumes_from_the_index_exactly(s3: tuple[Any, str], tmp_path: Path) -> None:
    """The sync process killed after the tree changed: the next one, from the index the last
    round left, puts the changes and deletes what went, as if nothing had happened."""
    client, bucket = s3
    root, index = tmp_path / "ws", tmp_path / "index.json"
    first = Mirror(client, bucket, PREFIX, Tree(root), UID, GID, index=index)
    first.hydrate()
    (root / "a.txt").write_text("a")
    (root / "b.txt").write_text("b")
    assert first.sync() == [] and stat.S_IMODE(index.stat().st_mode) == 0o600
    (root / "a.txt").write_text("a, changed")  # then the process dies, before a round
    (root / "b.txt").unlink()
    second = Mirror(client, bucket, PREFIX, Tree(root), UID, GID, index=index)
    assert second.resume() and second.pull() == [] and second.flush() == []
    assert objects(client, bucket) == {"a.txt": b"a, changed"}


def test_without_an_index_a_resume_loses_nothing_and_copies_nothing_alike(s3: tuple[Any, str],
                                                                          tmp_path: Path) -> None:
    client, bucket = s3
    root = tmp_path / "ws"
    first = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    first.hydrate()
    for name in ("same.txt", "changed.txt", "deleted.txt"):
        (root / name).write_text(name)
    assert first.sync() == []
    (root / "changed.txt").write_text("changed here")
    (root / "deleted.txt").unlink()
    second = Mirror(client, bucket, PREFIX, Tree(root), UID, GID, index=tmp_path / "none.json")
    assert not second.resume()
    assert second.pull() == [] and second.flush() == []
    names = sorted(p.name for p in root.iterdir())
    # Alike: left alone. Changed: both kept. Deleted here: it comes back (not knowing is not deleting).
    assert names[:2] == ["changed.txt", "changed.txt.conflict-" + names[1].rsplit("-", 1)[1]]
    assert names[2:] == ["deleted.txt", "same.txt"]
    assert (root / "changed.txt").read_text() == "changed here" and (root / names[1]).read_text() == "changed.txt"
    assert objects(client, bucket)["changed.txt"] == b"changed here"


def test_a_round_on_a_budget_leaves_the_rest_for_the_next_and_a_flush_does_all(s3: tuple[Any, str],
                                                                             tmp_path: Path) -> None:
    """A background round stops after its budget (outside writes get their turn); a flush does
    not claim success while paths are left."""
    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    for i in range(600):
        (root / f"{i}.txt").write_text(str(i))
    assert mirror.sync(budget=0) == []
    assert mirror.pending == 600 - 256 and len(objects(client, bucket)) == 256  # one batch
    assert mirror.flush() == [] and mirror.pending == 0
    assert len(objects(client, bucket)) == 600


def test_a_file_still_being_written_waits_for_a_quiet_moment_but_not_for_a_flush(s3: tuple[Any, str],
                                                                                tmp_path: Path) -> None:
    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    (root / "old.txt").write_text("settled")
    os.utime(root / "old.txt", (1_000_000_000, 1_000_000_000))
    (root / "growing.log").write_text("being written")
    assert mirror.sync(quiet=60) == [] and mirror.pending == 1
    assert objects(client, bucket) == {"old.txt": b"settled"}
    assert mirror.flush() == [] and objects(client, bucket)["growing.log"] == b"being written"


def test_fresh_credentials_on_the_control_socket_sign_the_next_requests(s3: tuple[Any, str], tmp_path: Path,
                                                                       s3_server: EmbeddedS3Server,
                                                                       s3_credentials: Credentials) -> None:
    """What the volume service does at half-life (LocalMounter.renew): the sync process's next
    requests sign with the keys it was handed. Keys the store does not know prove it: the round
    fails with the store's answer, and the next keys put it through."""
    import json
    import threading

    from provisioning.volumed.localsync import Syncer
    from provisioning.volumed.mounters import LocalMounter

    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()

    def client_for(keys: dict[str, str]) -> Any:
        return boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                            aws_access_key_id=keys["AccessKeyId"], aws_secret_access_key=keys["SecretAccessKey"],
                            aws_session_token=keys["SessionToken"] or None)

    socket_path = tmp_path / "sync.sock"
    syncer = Syncer(mirror, socket_path, lambda _m: None, client_for)
    threading.Thread(target=syncer.serve_control, daemon=True).start()
    control = json.dumps({"socket": str(socket_path), "source": str(root)})
    LocalMounter().verify(control, 5)
    LocalMounter().renew(control, Credentials("AKIAUNKNOWN", "not-the-secret"), 5)
    (root / "a.txt").write_text("a")
    [failure] = mirror.sync()
    assert failure.path == "a.txt" and "InvalidAccessKeyId" in failure.reason
    LocalMounter().renew(control, s3_credentials, 5)
    assert mirror.sync() == [] and objects(client, bucket) == {"a.txt": b"a"}
    syncer.stop.set()


def test_an_unreachable_store_ends_the_round_and_everything_goes_once_it_is_back(s3: tuple[Any, str],
                                                                                  tmp_path: Path) -> None:
    """The first put that cannot reach the store ends the round: the others of it are not
    tried (a black-holed store would otherwise cost every put its connect timeouts), nothing
    is deleted, and the tree keeps every byte for the next round."""
    import time

    import botocore.config

    from provisioning.volumed.localsync import UNREACHABLE

    client, bucket = s3
    root = tmp_path / "ws"
    mirror = Mirror(client, bucket, PREFIX, Tree(root), UID, GID)
    mirror.hydrate()
    (root / "old.txt").write_text("old")
    assert mirror.sync() == []
    (root / "old.txt").unlink()
    for i in range(600):
        (root / f"{i}.txt").write_text(str(i))
    mirror.s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                             aws_access_key_id="AKIAUNIT", aws_secret_access_key="unit",
                             config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1))
    started = time.monotonic()
    failures = mirror.sync()
    assert time.monotonic() - started < 10
    assert len(failures) == 256 and all(f.reason.startswith(UNREACHABLE) for f in failures)  # one batch
    assert mirror.pending == 600 - 256 + 1  # the rest, and the deletion, wait
    mirror.s3 = client
    assert mirror.flush() == []
    stored = objects(client, bucket)
    assert "old.txt" not in stored and all(stored[f"{i}.txt"] == str(i).encode() for i in range(600))
