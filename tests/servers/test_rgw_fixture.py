"""The Ceph RGW fixture: a real S3 server on loopback, and proof that it enforces STS session policies.

The session policy is the one a sandbox session gets: object actions under sessions/ID, listing only with a
sessions/ID prefix. Each refusal below is asserted, so a change in RGW's behaviour shows up here.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import docker
import pytest

from .rgw import RGWServer, build_image, compact_json
from provisioning.credentials import session_policy as runtime_policy
from provisioning.validation import session_id

pytestmark = pytest.mark.docker

MiB = 1024 * 1024
TWELVE_HOURS = 43200


def reporter(config: pytest.Config) -> Callable[[str], None]:
    """Log lines that show even under -q and output capture (the build and start timings)."""
    capture = config.pluginmanager.get_plugin("capturemanager")

    def log(message: str) -> None:
        if capture is None:
            print(message, file=sys.stderr, flush=True)
            return
        with capture.global_and_fixture_disabled():
            print(message, file=sys.stderr, flush=True)

    return log


@pytest.fixture(scope="module")
def rgw(pytestconfig: pytest.Config) -> Iterator[RGWServer]:
    log = reporter(pytestconfig)
    client = docker.from_env()
    started = time.monotonic()
    image = build_image(client, log=log)
    log(f"rgw: image {image} ready in {time.monotonic() - started:.1f}s")
    with RGWServer(client, image, log=log) as server:
        yield server


@pytest.fixture(scope="module")
def admin(rgw: RGWServer) -> Any:
    return rgw.s3_client()


@pytest.fixture(scope="module")
def bucket(admin: Any) -> str:
    name = f"rgw-fixture-{secrets.token_hex(4)}"
    admin.create_bucket(Bucket=name)
    return name


def session_policy(bucket: str, sid: str) -> dict[str, Any]:
    """What a sandbox session may do: the launcher's own policy."""
    return runtime_policy(bucket, session_id(sid))


@dataclass(frozen=True)
class Session:
    session_id: str
    other_id: str
    s3: Any
    expiration: datetime

    @property
    def prefix(self) -> str:
        return f"sessions/{self.session_id}/"

    @property
    def other(self) -> str:
        return f"sessions/{self.other_id}/"


def assume(rgw: RGWServer, policy: dict[str, Any] | None) -> tuple[Any, datetime]:
    """An S3 client with a role session's temporary credentials (scoped by POLICY when given)."""
    params: dict[str, Any] = {"RoleArn": rgw.role_arn, "RoleSessionName": "rgw-fixture-test",
                              "DurationSeconds": TWELVE_HOURS}
    if policy is not None:
        params["Policy"] = compact_json(policy)
    credentials = rgw.sts_client().assume_role(**params)["Credentials"]
    s3 = rgw.s3_client(credentials["AccessKeyId"], credentials["SecretAccessKey"], credentials["SessionToken"])
    return s3, credentials["Expiration"]


@pytest.fixture(scope="module")
def session(rgw: RGWServer, admin: Any, bucket: str) -> Session:
    session_id, other_id = "s" + secrets.token_hex(6), "s" + secrets.token_hex(6)
    for key in (f"sessions/{other_id}/x", f"sessions/{other_id}/secret.txt", f"sessions/{session_id}x/sibling"):
        admin.put_object(Bucket=bucket, Key=key, Body=b"not yours")
    s3, expiration = assume(rgw, session_policy(bucket, session_id))
    return Session(session_id, other_id, s3, expiration)


def error_code(call: Callable[[], Any]) -> str:
    """The S3 error code CALL fails with (the test fails if it succeeds)."""
    try:
        call()
    except botocore.exceptions.ClientError as exc:
        return str(exc.response.get("Error", {}).get("Code", ""))
    pytest.fail("the call succeeded; expected it to be refused")


def denied(call: Callable[[], Any]) -> bool:
    # HeadBucket/HeadObject have no body: their refusal's code is the bare status.
    return error_code(call) in ("AccessDenied", "403")


def keys(listing: dict[str, Any]) -> list[str]:
    return sorted(item["Key"] for item in listing.get("Contents", []))


def multipart(s3: Any, bucket: str, key: str, sizes: list[int]) -> bytes:
    """Upload parts of SIZES bytes to KEY; the whole body."""
    parts_data = [os.urandom(size) for size in sizes]
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for number, data in enumerate(parts_data, start=1):
        etag = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=data)["ETag"]
        parts.append({"PartNumber": number, "ETag": etag})
    listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=upload)["Parts"]
    assert [p["PartNumber"] for p in listed] == list(range(1, len(sizes) + 1))
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
    return b"".join(parts_data)


# -- the server, with the long-term keys -------------------------------------------------------------------------


def test_endpoint_is_loopback(rgw: RGWServer) -> None:
    assert rgw.endpoint.startswith("http://127.0.0.1:")
    assert rgw.region == "us-east-1"
    assert rgw.role_arn == "arn:aws:iam:::role/sandbox-session"


def test_bucket_and_objects(admin: Any) -> None:
    name = f"rgw-crud-{secrets.token_hex(4)}"
    admin.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in admin.list_buckets()["Buckets"]]
    admin.put_object(Bucket=name, Key="dir/a.txt", Body=b"alpha")
    admin.put_object(Bucket=name, Key="dir/b.txt", Body=b"beta")
    admin.put_object(Bucket=name, Key="top.txt", Body=b"top")
    assert admin.get_object(Bucket=name, Key="dir/a.txt")["Body"].read() == b"alpha"
    assert admin.head_object(Bucket=name, Key="dir/b.txt")["ContentLength"] == 4
    assert keys(admin.list_objects_v2(Bucket=name, Prefix="dir/")) == ["dir/a.txt", "dir/b.txt"]
    listing = admin.list_objects_v2(Bucket=name, Delimiter="/")
    assert keys(listing) == ["top.txt"]
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == ["dir/"]
    for key in ("dir/a.txt", "dir/b.txt", "top.txt"):
        admin.delete_object(Bucket=name, Key=key)
    assert keys(admin.list_objects_v2(Bucket=name)) == []
    admin.delete_bucket(Bucket=name)
    assert error_code(lambda: admin.head_bucket(Bucket=name)) in ("404", "NoSuchBucket")


def test_multipart_upload(admin: Any, bucket: str) -> None:
    body = multipart(admin, bucket, "big/twenty.bin", [8 * MiB, 8 * MiB, 4 * MiB])
    head = admin.head_object(Bucket=bucket, Key="big/twenty.bin")
    assert head["ContentLength"] == 20 * MiB
    assert head["ETag"].strip('"').endswith("-3")
    got = admin.get_object(Bucket=bucket, Key="big/twenty.bin")["Body"].read()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()


def test_copy_object(admin: Any, bucket: str) -> None:
    admin.put_object(Bucket=bucket, Key="copy/source", Body=b"copy me")
    admin.copy_object(Bucket=bucket, Key="copy/target", CopySource={"Bucket": bucket, "Key": "copy/source"})
    assert admin.get_object(Bucket=bucket, Key="copy/target")["Body"].read() == b"copy me"


# -- a role session scoped to sessions/ID -------------------------------------------------------------------------


def test_session_lasts_twelve_hours(session: Session) -> None:
    left = session.expiration - datetime.now(UTC)
    assert timedelta(hours=11, minutes=55) < left <= timedelta(hours=12, minutes=1)


def test_session_reads_and_writes_its_prefix(session: Session, bucket: str) -> None:
    s3, prefix = session.s3, session.prefix
    s3.put_object(Bucket=bucket, Key=prefix + "notes/a.txt", Body=b"mine")
    assert s3.get_object(Bucket=bucket, Key=prefix + "notes/a.txt")["Body"].read() == b"mine"
    assert s3.head_object(Bucket=bucket, Key=prefix + "notes/a.txt")["ContentLength"] == 4
    assert keys(s3.list_objects_v2(Bucket=bucket, Prefix=prefix)) == [prefix + "notes/a.txt"]
    assert keys(s3.list_objects(Bucket=bucket, Prefix=prefix + "notes/")) == [prefix + "notes/a.txt"]
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, Delimiter="/")
    assert [p["Prefix"] for p in listing["CommonPrefixes"]] == [prefix + "notes/"]
    s3.delete_object(Bucket=bucket, Key=prefix + "notes/a.txt")
    assert keys(s3.list_objects_v2(Bucket=bucket, Prefix=prefix)) == []


def test_session_copies_within_its_prefix(session: Session, bucket: str) -> None:
    s3, prefix = session.s3, session.prefix
    s3.put_object(Bucket=bucket, Key=prefix + "c/source", Body=b"own")
    s3.copy_object(Bucket=bucket, Key=prefix + "c/target", CopySource={"Bucket": bucket, "Key": prefix + "c/source"})
    assert s3.get_object(Bucket=bucket, Key=prefix + "c/target")["Body"].read() == b"own"


def test_session_key_without_trailing_slash(session: Session, bucket: str, admin: Any) -> None:
    """The policy's first resource, sessions/ID itself, is an object key the session may write."""
    key = f"sessions/{session.session_id}"
    session.s3.put_object(Bucket=bucket, Key=key, Body=b"bare")
    assert session.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == b"bare"
    session.s3.delete_object(Bucket=bucket, Key=key)
    assert keys(admin.list_objects_v2(Bucket=bucket, Prefix=key, Delimiter="/")) == []


def test_session_listing_needs_the_trailing_slash(session: Session, bucket: str) -> None:
    """A listing prefix of sessions/ID (no '/') would also match sessions/IDx/...: on RGW it shows
    their key names. The policy allows only prefixes ending in sessions/ID/, so it is refused."""
    s3, sibling = session.s3, f"sessions/{session.session_id}x/sibling"
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"sessions/{session.session_id}"))
    assert sibling not in keys(s3.list_objects_v2(Bucket=bucket, Prefix=session.prefix))
    assert denied(lambda: s3.get_object(Bucket=bucket, Key=sibling))
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"sessions/{session.session_id}x/"))


def test_session_refused_another_sessions_prefix(session: Session, bucket: str) -> None:
    s3, other = session.s3, session.other
    assert denied(lambda: s3.get_object(Bucket=bucket, Key=other + "x"))
    assert denied(lambda: s3.head_object(Bucket=bucket, Key=other + "x"))
    assert denied(lambda: s3.put_object(Bucket=bucket, Key=other + "planted", Body=b"no"))
    assert denied(lambda: s3.delete_object(Bucket=bucket, Key=other + "x"))
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=other))
    assert denied(lambda: s3.list_objects(Bucket=bucket, Prefix=other))
    assert denied(lambda: s3.create_multipart_upload(Bucket=bucket, Key=other + "mp"))


def test_session_refused_wider_listings(session: Session, bucket: str) -> None:
    s3 = session.s3
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket))
    assert denied(lambda: s3.list_objects(Bucket=bucket))
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix="sessions/"))
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Prefix=""))
    assert denied(lambda: s3.list_objects_v2(Bucket=bucket, Delimiter="/"))
    # HeadBucket is authorised as s3:ListBucket with no prefix (as on AWS): refused too.
    assert denied(lambda: s3.head_bucket(Bucket=bucket))


def test_session_refused_copy_from_another_session(session: Session, bucket: str, admin: Any) -> None:
    s3 = session.s3
    target = session.prefix + "y"
    assert denied(lambda: s3.copy_object(Bucket=bucket, Key=target,
                                         CopySource={"Bucket": bucket, "Key": session.other + "x"}))
    assert error_code(lambda: admin.head_object(Bucket=bucket, Key=target)) == "404"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=target)["UploadId"]
    assert denied(lambda: s3.upload_part_copy(Bucket=bucket, Key=target, UploadId=upload, PartNumber=1,
                                              CopySource={"Bucket": bucket, "Key": session.other + "x"}))
    s3.abort_multipart_upload(Bucket=bucket, Key=target, UploadId=upload)


def test_session_refused_copy_into_another_session(session: Session, bucket: str, admin: Any) -> None:
    s3 = session.s3
    s3.put_object(Bucket=bucket, Key=session.prefix + "out", Body=b"mine")
    assert denied(lambda: s3.copy_object(Bucket=bucket, Key=session.other + "in",
                                         CopySource={"Bucket": bucket, "Key": session.prefix + "out"}))
    assert error_code(lambda: admin.head_object(Bucket=bucket, Key=session.other + "in")) == "404"


def test_session_tells_absent_keys_from_refused_ones(session: Session, bucket: str) -> None:
    """Unlike AWS (403 for any key without s3:ListBucket), RGW 16.2 answers 404 for an absent key anywhere in the
    bucket and 403 only for a present one: a session can probe whether a key outside its prefix exists."""
    s3, other = session.s3, session.other
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key=other + "absent")) == "404"
    assert error_code(lambda: s3.get_object(Bucket=bucket, Key=other + "absent")) == "NoSuchKey"
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key=other + "x")) == "403"
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key=session.prefix + "absent")) == "404"


def test_session_cannot_delete_objects_in_bulk(session: Session, bucket: str, admin: Any) -> None:
    """DeleteObjects is authorised against the bucket's ARN in RGW 16.2: refused even for the session's own keys,
    so clients must delete one key at a time (s3fs does)."""
    key = session.prefix + "bulk"
    session.s3.put_object(Bucket=bucket, Key=key, Body=b"1")
    assert denied(lambda: session.s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": key}]}))
    assert admin.head_object(Bucket=bucket, Key=key)["ContentLength"] == 1
    session.s3.delete_object(Bucket=bucket, Key=key)


def test_session_refused_bucket_operations(session: Session, bucket: str) -> None:
    s3 = session.s3
    assert denied(lambda: s3.list_buckets())
    assert denied(lambda: s3.create_bucket(Bucket=f"rgw-escape-{secrets.token_hex(4)}"))
    assert denied(lambda: s3.delete_bucket(Bucket=bucket))
    policy = compact_json({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": "*", "Action": "s3:*", "Resource": f"arn:aws:s3:::{bucket}/*"}]})
    assert denied(lambda: s3.put_bucket_policy(Bucket=bucket, Policy=policy))
    assert denied(lambda: s3.get_bucket_acl(Bucket=bucket))
    assert denied(lambda: s3.put_object_acl(Bucket=bucket, Key=session.other + "x", ACL="public-read"))
    # Not in the session policy, so refused even with the session's own prefix.
    assert denied(lambda: s3.list_multipart_uploads(Bucket=bucket, Prefix=session.prefix))
    assert denied(lambda: s3.list_object_versions(Bucket=bucket, Prefix=session.prefix))


def test_session_multipart_upload(session: Session, bucket: str, admin: Any) -> None:
    key = session.prefix + "mp/six.bin"
    body = multipart(session.s3, bucket, key, [5 * MiB, 1 * MiB])
    assert session.s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    assert admin.head_object(Bucket=bucket, Key=key)["ContentLength"] == 6 * MiB


def test_session_aborts_its_multipart_upload(session: Session, bucket: str) -> None:
    s3, key = session.s3, session.prefix + "mp/aborted.bin"
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"part")
    s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)
    # AWS answers NoSuchUpload; RGW 16.2 answers NoSuchKey.
    assert error_code(lambda: s3.list_parts(Bucket=bucket, Key=key, UploadId=upload)) in ("NoSuchUpload", "NoSuchKey")


def test_the_session_policy_is_what_scopes(rgw: RGWServer, session: Session, bucket: str) -> None:
    """Control: the same role without the session policy reads another session's objects and lists the bucket."""
    unscoped, _ = assume(rgw, None)
    assert unscoped.get_object(Bucket=bucket, Key=session.other + "x")["Body"].read() == b"not yours"
    assert session.other + "x" in keys(unscoped.list_objects_v2(Bucket=bucket))
