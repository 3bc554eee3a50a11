"""The embedded S3 endpoint checks SigV4 for real (the tests' proof that bad credentials are refused),
serves STS AssumeRole, holds temporary credentials to their session policy, and bounds what a
client can hold of it."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import json
import os
import select
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from provisioning.credentials import policy_json
from provisioning.credentials import session_policy as runtime_policy
from provisioning.validation import session_id
from provisioning.config import Credentials
from provisioning.devstore.server import (
    AuthError,
    EmbeddedS3Server,
    ServerLimits,
    SigV4Verifier,
    canonical_request,
)

from .local_peer import LocalPeer, Spec

ROLE_ARN = "arn:aws:iam:::role/sandbox-session"


def client(server: EmbeddedS3Server, key: str, secret: str, token: str | None = None, **s3: Any) -> Any:
    config = botocore.config.Config(s3={"addressing_style": "path", **s3}, retries={"max_attempts": 1})
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, aws_session_token=token, config=config)


def sts_client(server: EmbeddedS3Server, creds: Credentials, validate: bool = True) -> Any:
    config = botocore.config.Config(retries={"max_attempts": 1}, parameter_validation=validate)
    return boto3.client("sts", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                        aws_session_token=creds.session_token or None, config=config)


def error_code(call: Callable[[], object]) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    return str(err.value.response["Error"]["Code"])


def error_of(call: Callable[[], object]) -> dict[str, str]:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    return dict(err.value.response["Error"])


def session_policy(bucket: str, session: str) -> str:
    """The policy the runtime sends with AssumeRole for one session."""
    return policy_json(runtime_policy(bucket, session_id(session)))


def assume(server: EmbeddedS3Server, root: Credentials, bucket: str, session: str = "A",
           duration: int = 3600) -> Credentials:
    answer = sts_client(server, root).assume_role(RoleArn=ROLE_ARN, RoleSessionName=f"sandbox-{session}",
                                                  DurationSeconds=duration, Policy=session_policy(bucket, session))
    issued = answer["Credentials"]
    return Credentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])


def scoped_client(server: EmbeddedS3Server, creds: Credentials) -> Any:
    return client(server, creds.access_key, creds.secret_key, creds.session_token)


@pytest.fixture
def root_s3(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> Any:
    return client(s3_server, s3_credentials.access_key, s3_credentials.secret_key)


@pytest.fixture
def session_a(s3_server: EmbeddedS3Server, s3_credentials: Credentials, bucket: str, root_s3: Any) -> Credentials:
    """A bucket with another session's object in it, and credentials for session A."""
    root_s3.create_bucket(Bucket=bucket)
    root_s3.put_object(Bucket=bucket, Key="sessions/B/x", Body=b"session B's")
    return assume(s3_server, s3_credentials, bucket, "A")


@dataclass
class FakeClock:
    offset: dt.timedelta = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC) + self.offset


# -- raw requests --------------------------------------------------------------------------
def signed_request(server: EmbeddedS3Server, creds: Credentials, method: str, path: str, body: bytes = b"", *,
                   query: str = "", headers: dict[str, str] | None = None, payload_hash: str | None = "auto",
                   unsigned: tuple[str, ...] = (), content_length: int | None = None, service: str = "s3") -> bytes:
    """An HTTP/1.1 request signed with SigV4 by hand, for the cases no SDK sends."""
    now = dt.datetime.now(dt.UTC)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    all_headers = {"host": f"127.0.0.1:{server.port}", "x-amz-date": amz_date}
    body_hash = hashlib.sha256(body).hexdigest()
    if payload_hash is not None:
        all_headers["x-amz-content-sha256"] = body_hash if payload_hash == "auto" else payload_hash
    if creds.session_token:
        all_headers["x-amz-security-token"] = creds.session_token
    all_headers.update(headers or {})
    signed = sorted(h for h in all_headers if h not in unsigned)
    canonical = canonical_request(method, path, query, all_headers, signed,
                                  all_headers.get("x-amz-content-sha256", body_hash))
    scope = f"{date}/us-east-1/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + creds.secret_key).encode()
    for part in (date, "us-east-1", service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    lines = [f"{method} {path}{'?' + query if query else ''} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in all_headers.items()]
    lines.append(f"Authorization: AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                 f"SignedHeaders={';'.join(signed)}, Signature={signature}")
    if "transfer-encoding" not in all_headers:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass
class RawResponse:
    status: int
    body: bytes

    @property
    def code(self) -> str:
        return self.body.split(b"<Code>")[1].split(b"</Code>")[0].decode() if b"<Code>" in self.body else ""


def send_raw(server: EmbeddedS3Server, data: bytes, close_write: bool = False, timeout: float = 10) -> RawResponse:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return RawResponse(int(head.split(b" ", 2)[1]), body)


# -- the SigV4 check with the root key pair --------------------------------------------------
def test_signed_requests_pass(s3_server: EmbeddedS3Server, s3_credentials: Credentials, bucket: str) -> None:
    s3 = client(s3_server, s3_credentials.access_key, s3_credentials.secret_key)
    s3.create_bucket(Bucket=bucket)
    for key in ["plain.txt", "with space.txt", "dollar$folder$", "ünïcode/ключ", "a+b=c&d"]:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="ünïcode/", Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["ünïcode/ключ"]


def test_wrong_secret_is_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    s3 = client(s3_server, s3_credentials.access_key, "wrong")
    assert error_code(s3.list_buckets) == "SignatureDoesNotMatch"


def test_unknown_key_is_refused(s3_server: EmbeddedS3Server) -> None:
    assert error_code(client(s3_server, "AKIDUNKNOWN", "x").list_buckets) == "InvalidAccessKeyId"


def test_anonymous_and_admin_api_are_refused(s3_server: EmbeddedS3Server) -> None:
    for path in ("/", "/moto-api/reset"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(s3_server.endpoint + path, timeout=5)
        assert err.value.code == 403


def test_stale_requests_are_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    later = SigV4Verifier(lambda e, s: [], s3_credentials,
                          now=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
    s3 = client(s3_server, s3_credentials.access_key, s3_credentials.secret_key)
    seen = {}

    def capture(request, **_kwargs):
        seen["headers"] = dict(request.headers)
        seen["url"] = request.url

    s3.meta.events.register("before-send.s3.ListBuckets", capture)
    s3.list_buckets()
    from urllib.parse import urlsplit

    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/", "PATH_INFO": "/", "HTTP_HOST": urlsplit(seen["url"]).netloc}
    for name, value in seen["headers"].items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value.decode() if isinstance(value, bytes) else value

    SigV4Verifier(lambda e, s: [], s3_credentials).verify(dict(environ))  # fresh: accepted
    with pytest.raises(AuthError, match="too large"):
        later.verify(dict(environ))


def test_health_endpoint_is_open(s3_server: EmbeddedS3Server) -> None:
    with urllib.request.urlopen(s3_server.endpoint + "/minio/health/live", timeout=5) as response:
        assert response.status == 200


def test_root_key_pair_may_do_everything(root_s3: Any, bucket: str, tmp_path: Any) -> None:
    root_s3.create_bucket(Bucket=bucket)
    big = tmp_path / "big"
    big.write_bytes(b"0123456789abcdef" * (12 * 1024 * 1024 // 16))  # multipart with boto3's 8 MiB threshold
    root_s3.upload_file(str(big), bucket, "any/where")
    root_s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "any/where"})
    assert root_s3.head_object(Bucket=bucket, Key="copy")["ContentLength"] == big.stat().st_size
    assert bucket in [b["Name"] for b in root_s3.list_buckets()["Buckets"]]
    root_s3.head_bucket(Bucket=bucket)
    deleted = root_s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "copy"}, {"Key": "any/where"}]})
    assert len(deleted["Deleted"]) == 2


# -- STS -----------------------------------------------------------------------------------
def test_assume_role_answers_like_sts(s3_server: EmbeddedS3Server, s3_credentials: Credentials, bucket: str) -> None:
    before = dt.datetime.now(dt.UTC)
    answer = sts_client(s3_server, s3_credentials).assume_role(
        RoleArn=ROLE_ARN, RoleSessionName="sandbox-A", DurationSeconds=43200, Policy=session_policy(bucket, "A"))
    issued = answer["Credentials"]
    assert issued["AccessKeyId"].startswith("ASIA") and issued["SecretAccessKey"] and issued["SessionToken"]
    expected = before + dt.timedelta(seconds=43200)
    assert abs(issued["Expiration"] - expected) < dt.timedelta(seconds=5)
    assert answer["AssumedRoleUser"]["Arn"].endswith(":assumed-role/sandbox-session/sandbox-A")
    assert answer["AssumedRoleUser"]["AssumedRoleId"].endswith(":sandbox-A")
    assert 0 < answer["PackedPolicySize"] < 100


def test_sts_floor_is_900_seconds_unless_the_test_switch_lowers_it() -> None:
    from provisioning.devstore.server import AuthError, parse_assume_role

    form = {"RoleArn": ROLE_ARN, "RoleSessionName": "sandbox-A", "DurationSeconds": "899"}
    with pytest.raises(AuthError, match="greater than or equal to 900"):
        parse_assume_role(form)
    assert parse_assume_role(form, min_seconds=10).duration.total_seconds() == 899


@pytest.mark.parametrize(("params", "code", "cause"), [
    ({"DurationSeconds": 9}, "ValidationError", "greater than or equal to 10"),  # the tests' server: its switch
    ({"DurationSeconds": 604801}, "ValidationError", "less than or equal to 604800"),
    ({"RoleSessionName": "x"}, "ValidationError", "roleSessionName"),
    ({"RoleSessionName": "bad name!"}, "ValidationError", "roleSessionName"),
    ({"RoleArn": "not-an-arn-but-long-enough"}, "ValidationError", "roleArn"),
    ({"Policy": "{not json"}, "MalformedPolicyDocument", "not valid JSON"),
    ({"Policy": json.dumps({"Version": "2012-10-17", "Statement": [], "Id": "x" * 2048})},
     "MalformedPolicyDocument", "at most 2048"),
    ({"Policy": '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*"}]}'},
     "MalformedPolicyDocument", "Resource"),
    ({"PolicyArns": [{"arn": "arn:aws:iam::aws:policy/AmazonS3FullAccess"}]}, "ValidationError", "PolicyArns"),
])
def test_assume_role_validates_like_sts(s3_server: EmbeddedS3Server, s3_credentials: Credentials,
                                        params: dict[str, Any], code: str, cause: str) -> None:
    call = {"RoleArn": ROLE_ARN, "RoleSessionName": "sandbox-A", "DurationSeconds": 3600, **params}
    error = error_of(lambda: sts_client(s3_server, s3_credentials, validate=False).assume_role(**call))
    assert error["Code"] == code and cause in error["Message"]


def test_assume_role_accepts_the_longest_duration(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    answer = sts_client(s3_server, s3_credentials, validate=False).assume_role(
        RoleArn=ROLE_ARN, RoleSessionName="long", DurationSeconds=604800)
    assert answer["Credentials"]["Expiration"] > dt.datetime.now(dt.UTC) + dt.timedelta(days=6)


def test_temporary_credentials_cannot_assume_a_role(s3_server: EmbeddedS3Server, s3_credentials: Credentials,
                                                     bucket: str) -> None:
    temporary = assume(s3_server, s3_credentials, bucket)
    error = error_of(lambda: sts_client(s3_server, temporary).assume_role(RoleArn=ROLE_ARN, RoleSessionName="again"))
    assert error["Code"] == "AccessDenied" and "temporary credentials" in error["Message"]


def test_sts_refuses_unknown_actions_and_bad_signatures(s3_server: EmbeddedS3Server,
                                                        s3_credentials: Credentials) -> None:
    assert error_code(sts_client(s3_server, s3_credentials).get_caller_identity) == "InvalidAction"
    wrong = Credentials(s3_credentials.access_key, "wrong")
    assert error_code(lambda: sts_client(s3_server, wrong).assume_role(RoleArn=ROLE_ARN, RoleSessionName="xx")) \
        == "SignatureDoesNotMatch"
    unknown = Credentials("AKIDUNKNOWN", "x")
    assert error_code(lambda: sts_client(s3_server, unknown).assume_role(RoleArn=ROLE_ARN, RoleSessionName="xx")) \
        == "InvalidClientTokenId"
    body = b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A%3Arole%2Fx&RoleSessionName=xx"
    form = {"content-type": "application/x-www-form-urlencoded"}
    tampered = signed_request(s3_server, s3_credentials, "POST", "/", body, payload_hash=None, headers=form,
                              service="sts").replace(b"RoleSessionName=xx", b"RoleSessionName=yy")
    assert send_raw(s3_server, tampered).code == "SignatureDoesNotMatch"
    other_version = body.replace(b"2011-06-15", b"2099-01-01")
    response = send_raw(s3_server, signed_request(s3_server, s3_credentials, "POST", "/", other_version,
                                                  payload_hash=None, headers=form, service="sts"))
    assert (response.status, response.code) == (400, "InvalidAction")


# -- session credentials, end to end with boto3 ----------------------------------------------
def test_session_credentials_work_inside_their_prefix(s3_server: EmbeddedS3Server, session_a: Credentials,
                                                      bucket: str, root_s3: Any, tmp_path: Any) -> None:
    s3 = scoped_client(s3_server, session_a)
    s3.put_object(Bucket=bucket, Key="sessions/A/", Body=b"")
    s3.put_object(Bucket=bucket, Key="sessions/A/notes.txt", Body=b"hello")
    assert s3.get_object(Bucket=bucket, Key="sessions/A/notes.txt")["Body"].read() == b"hello"
    assert s3.head_object(Bucket=bucket, Key="sessions/A/notes.txt")["ContentLength"] == 5
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="sessions/A/", Delimiter="/")
    assert [o["Key"] for o in listed["Contents"]] == ["sessions/A/", "sessions/A/notes.txt"]
    assert s3.list_objects(Bucket=bucket, Prefix="sessions/A/")["Contents"]  # v1, as s3fs lists
    notes = {"Bucket": bucket, "Key": "sessions/A/notes.txt"}
    s3.copy_object(Bucket=bucket, Key="sessions/A/copy.txt", CopySource=notes)
    assert s3.get_object(Bucket=bucket, Key="sessions/A/copy.txt")["Body"].read() == b"hello"

    upload = s3.create_multipart_upload(Bucket=bucket, Key="sessions/A/parts")["UploadId"]
    etag = s3.upload_part(Bucket=bucket, Key="sessions/A/parts", UploadId=upload, PartNumber=1,
                          Body=b"p" * (5 << 20))["ETag"]
    copied = s3.upload_part_copy(Bucket=bucket, Key="sessions/A/parts", UploadId=upload, PartNumber=2,
                                 CopySource=notes)["CopyPartResult"]["ETag"]
    assert len(s3.list_parts(Bucket=bucket, Key="sessions/A/parts", UploadId=upload)["Parts"]) == 2
    s3.complete_multipart_upload(Bucket=bucket, Key="sessions/A/parts", UploadId=upload, MultipartUpload={
        "Parts": [{"ETag": etag, "PartNumber": 1}, {"ETag": copied, "PartNumber": 2}]})
    assert s3.head_object(Bucket=bucket, Key="sessions/A/parts")["ContentLength"] == (5 << 20) + 5
    aborted = s3.create_multipart_upload(Bucket=bucket, Key="sessions/A/aborted")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key="sessions/A/aborted", UploadId=aborted)

    big = tmp_path / "big"
    big.write_bytes(bytes(range(256)) * (12 * 1024 * 1024 // 256))
    s3.upload_file(str(big), bucket, "sessions/A/big")  # multipart, parts in parallel
    s3.download_file(bucket, "sessions/A/big", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == big.read_bytes()

    s3.delete_object(Bucket=bucket, Key="sessions/A/copy.txt")
    deleted = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "sessions/A/notes.txt"},
                                                                   {"Key": "sessions/A/big"}]})
    assert sorted(d["Key"] for d in deleted["Deleted"]) == ["sessions/A/big", "sessions/A/notes.txt"]
    remaining = root_s3.list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in remaining) == ["sessions/A/", "sessions/A/parts", "sessions/B/x"]


def test_session_credentials_are_refused_outside_their_prefix(s3_server: EmbeddedS3Server, session_a: Credentials,
                                                              bucket: str, root_s3: Any) -> None:
    s3 = scoped_client(s3_server, session_a)
    s3.put_object(Bucket=bucket, Key="sessions/A/mine", Body=b"a")
    refused: dict[str, Callable[[], object]] = {
        "get B": lambda: s3.get_object(Bucket=bucket, Key="sessions/B/x"),
        "put B": lambda: s3.put_object(Bucket=bucket, Key="sessions/B/y", Body=b"intruder"),
        "delete B": lambda: s3.delete_object(Bucket=bucket, Key="sessions/B/x"),
        "list B": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="sessions/B/"),
        "list sessions/": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="sessions/"),
        "list sessions/AB": lambda: s3.list_objects_v2(Bucket=bucket, Prefix="sessions/AB/"),
        "list root": lambda: s3.list_objects_v2(Bucket=bucket),
        "list root v1": lambda: s3.list_objects(Bucket=bucket),
        "copy B into A": lambda: s3.copy_object(Bucket=bucket, Key="sessions/A/y",
                                                CopySource={"Bucket": bucket, "Key": "sessions/B/x"}),
        "copy A into B": lambda: s3.copy_object(Bucket=bucket, Key="sessions/B/y",
                                                CopySource={"Bucket": bucket, "Key": "sessions/A/mine"}),
        "delete A and B": lambda: s3.delete_objects(Bucket=bucket, Delete={"Objects": [
            {"Key": "sessions/A/mine"}, {"Key": "sessions/B/x"}]}),
        "list buckets": s3.list_buckets,
        "create bucket": lambda: s3.create_bucket(Bucket=bucket + "-new"),
        "delete bucket": lambda: s3.delete_bucket(Bucket=bucket),
        "bucket location": lambda: s3.get_bucket_location(Bucket=bucket),
        "list uploads": lambda: s3.list_multipart_uploads(Bucket=bucket),
        "object acl": lambda: s3.get_object_acl(Bucket=bucket, Key="sessions/A/mine"),
        "object tagging": lambda: s3.put_object_tagging(Bucket=bucket, Key="sessions/A/mine",
                                                        Tagging={"TagSet": [{"Key": "k", "Value": "v"}]}),
        "bucket policy": lambda: s3.put_bucket_policy(Bucket=bucket, Policy="{}"),
        "other bucket": lambda: s3.get_object(Bucket=bucket + "-other", Key="sessions/A/mine"),
    }
    for name, call in refused.items():
        error = error_of(call)
        assert error["Code"] == "AccessDenied", (name, error)
    assert error_code(lambda: s3.head_bucket(Bucket=bucket)) == "403"  # HEAD: no body, the status says it
    assert error_code(lambda: s3.head_object(Bucket=bucket, Key="sessions/B/x")) == "403"
    message = error_of(lambda: s3.get_object(Bucket=bucket, Key="sessions/B/x"))["Message"]
    assert f"s3:GetObject on resource arn:aws:s3:::{bucket}/sessions/B/x" in message
    # nothing changed
    assert root_s3.get_object(Bucket=bucket, Key="sessions/B/x")["Body"].read() == b"session B's"
    keys = sorted(o["Key"] for o in root_s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["sessions/A/mine", "sessions/B/x"]
    assert bucket + "-new" not in [b["Name"] for b in root_s3.list_buckets()["Buckets"]]


def test_another_sessions_upload_cannot_be_reached_by_its_id(s3_server: EmbeddedS3Server,
                                                              s3_credentials: Credentials, session_a: Credentials,
                                                              bucket: str, root_s3: Any) -> None:
    """Moto finds an upload by its id alone; the endpoint checks that the id belongs to the URL's key."""
    s3 = scoped_client(s3_server, session_a)
    session_b = scoped_client(s3_server, assume(s3_server, s3_credentials, bucket, "B"))
    theirs = session_b.create_multipart_upload(Bucket=bucket, Key="sessions/B/upload")["UploadId"]
    session_b.upload_part(Bucket=bucket, Key="sessions/B/upload", UploadId=theirs, PartNumber=1, Body=b"b" * 10)
    assert error_code(lambda: s3.upload_part(Bucket=bucket, Key="sessions/A/x", UploadId=theirs, PartNumber=1,
                                             Body=b"a" * 10)) == "NoSuchUpload"
    assert error_code(lambda: s3.list_parts(Bucket=bucket, Key="sessions/A/x", UploadId=theirs)) == "NoSuchUpload"
    assert error_code(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="sessions/A/x", UploadId=theirs)) \
        == "NoSuchUpload"
    assert error_code(lambda: s3.complete_multipart_upload(
        Bucket=bucket, Key="sessions/A/x", UploadId=theirs,
        MultipartUpload={"Parts": [{"ETag": "x", "PartNumber": 1}]})) == "NoSuchUpload"
    parts = root_s3.list_parts(Bucket=bucket, Key="sessions/B/upload", UploadId=theirs)["Parts"]
    assert [p["Size"] for p in parts] == [10]


def test_expired_temporary_credentials_are_refused(s3_credentials: Credentials, bucket: str) -> None:
    clock = FakeClock()
    with EmbeddedS3Server(s3_credentials, clock=clock) as server:
        client(server, s3_credentials.access_key, s3_credentials.secret_key).create_bucket(Bucket=bucket)
        temporary = assume(server, s3_credentials, bucket, duration=900)
        s3 = scoped_client(server, temporary)
        s3.put_object(Bucket=bucket, Key="sessions/A/f", Body=b"x")
        clock.offset = dt.timedelta(seconds=880)  # Expiration is whole seconds
        s3.get_object(Bucket=bucket, Key="sessions/A/f")
        clock.offset = dt.timedelta(seconds=901)
        error = error_of(lambda: s3.get_object(Bucket=bucket, Key="sessions/A/f"))
        assert error["Code"] == "ExpiredToken"


def test_a_replayed_put_with_another_body_is_refused(s3_server: EmbeddedS3Server, session_a: Credentials,
                                                     bucket: str, root_s3: Any) -> None:
    s3 = scoped_client(s3_server, session_a)
    seen: dict[str, Any] = {}

    def capture(request: Any, **_kwargs: Any) -> None:
        seen["headers"] = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        seen["path"] = request.url.split(str(s3_server.port), 1)[1]

    s3.meta.events.register("before-send.s3.PutObject", capture)
    s3.put_object(Bucket=bucket, Key="sessions/A/f", Body=b"original")
    lines = [f"PUT {seen['path']} HTTP/1.1", f"Host: 127.0.0.1:{s3_server.port}"]  # urllib3 adds Host after the hook
    lines += [f"{k}: {v}" for k, v in seen["headers"].items() if k.lower() != "expect"]
    head = ("\r\n".join(lines + ["Connection: close"]) + "\r\n\r\n").encode()
    response = send_raw(s3_server, head + b"tampered")  # same length: Content-Length still fits
    assert (response.status, response.code) == (400, "XAmzContentSHA256Mismatch")
    assert root_s3.get_object(Bucket=bucket, Key="sessions/A/f")["Body"].read() == b"original"
    assert send_raw(s3_server, head + b"original").status == 200  # the same request, as signed: accepted


def test_an_unsigned_amz_header_is_refused(s3_server: EmbeddedS3Server, session_a: Credentials, bucket: str) -> None:
    s3 = scoped_client(s3_server, session_a)

    def add_header(request: Any, **_kwargs: Any) -> None:
        request.headers["x-amz-meta-foo"] = "added after signing"

    s3.meta.events.register("before-send.s3.PutObject", add_header)
    error = error_of(lambda: s3.put_object(Bucket=bucket, Key="sessions/A/f", Body=b"x"))
    assert error["Code"] == "AccessDenied" and "x-amz-meta-foo" in error["Message"]


# -- hardening of the SigV4 check: each rejection -------------------------------------------
def test_unsigned_payload_is_accepted_with_signed_headers(s3_server: EmbeddedS3Server, s3_credentials: Credentials,
                                                          bucket: str, root_s3: Any) -> None:
    """As S3 does (some clients upload so): the signature covers the headers and the literal
    UNSIGNED-PAYLOAD; a header changed after signing is still refused."""
    root_s3.create_bucket(Bucket=bucket)
    unsigned = client(s3_server, s3_credentials.access_key, s3_credentials.secret_key, payload_signing_enabled=False)
    unsigned.put_object(Bucket=bucket, Key="k", Body=b"x")
    assert root_s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"x"
    response = send_raw(s3_server, signed_request(s3_server, s3_credentials, "GET", f"/{bucket}/k",
                                                  payload_hash="UNSIGNED-PAYLOAD"))
    assert response.status == 200 and response.body == b"x"

    def add_header(request: Any, **_kwargs: Any) -> None:
        request.headers["x-amz-meta-foo"] = "added after signing"

    unsigned.meta.events.register("before-send.s3.PutObject", add_header)
    error = error_of(lambda: unsigned.put_object(Bucket=bucket, Key="k2", Body=b"x"))
    assert error["Code"] == "AccessDenied" and "x-amz-meta-foo" in error["Message"]


def test_streaming_payload_forms_are_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    for form in ("STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"):
        data = signed_request(s3_server, s3_credentials, "PUT", "/b/k", b"5;chunk-signature=x\r\nhello\r\n0\r\n\r\n",
                              payload_hash=form, headers={"x-amz-decoded-content-length": "5"})
        response = send_raw(s3_server, data)
        assert (response.status, response.code) == (400, "InvalidRequest")
        assert b"aws-chunked" in response.body


def test_missing_or_malformed_payload_hash_is_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    missing = send_raw(s3_server, signed_request(s3_server, s3_credentials, "GET", "/", payload_hash=None))
    assert (missing.status, missing.code) == (400, "InvalidRequest")
    assert b"x-amz-content-sha256" in missing.body
    malformed = send_raw(s3_server, signed_request(s3_server, s3_credentials, "GET", "/", payload_hash="abc"))
    assert (malformed.status, malformed.code) == (400, "InvalidArgument")


def test_a_body_that_does_not_match_its_hash_is_refused(s3_server: EmbeddedS3Server,
                                                        s3_credentials: Credentials) -> None:
    claimed = hashlib.sha256(b"what was signed").hexdigest()
    response = send_raw(s3_server, signed_request(s3_server, s3_credentials, "PUT", "/b/k", b"what was sent",
                                                  payload_hash=claimed))
    assert (response.status, response.code) == (400, "XAmzContentSHA256Mismatch")


def test_a_body_shorter_than_content_length_is_refused(s3_server: EmbeddedS3Server,
                                                       s3_credentials: Credentials) -> None:
    body = b"0123456789"
    data = signed_request(s3_server, s3_credentials, "PUT", "/b/k", body)[:-5]  # half the body, then EOF
    response = send_raw(s3_server, data, close_write=True)
    assert (response.status, response.code) == (400, "IncompleteBody")


def test_a_body_longer_than_content_length_is_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    data = signed_request(s3_server, s3_credentials, "PUT", "/b/k", b"0123456789") + b"extra bytes"
    response = send_raw(s3_server, data)
    assert (response.status, response.code) == (400, "IncompleteBody")
    assert b"more bytes than its Content-Length" in response.body


def test_a_body_over_the_limit_is_refused_unread(s3_credentials: Credentials) -> None:
    with EmbeddedS3Server(s3_credentials, limits=ServerLimits(max_body_bytes=1024)) as server:
        head = signed_request(server, s3_credentials, "PUT", "/b/k", b"x" * 2048)[:-2048]
        response = send_raw(server, head)  # the body is never sent: refused on its declared size
        assert (response.status, response.code) == (400, "EntityTooLarge")


def test_chunked_transfer_encoding_is_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    data = signed_request(s3_server, s3_credentials, "PUT", "/b/k", b"5\r\nhello\r\n0\r\n\r\n",
                          payload_hash=hashlib.sha256(b"hello").hexdigest(), headers={"transfer-encoding": "chunked"},
                          unsigned=("transfer-encoding",))
    response = send_raw(s3_server, data)
    assert (response.status, response.code) == (411, "MissingContentLength")


def test_host_must_be_signed(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    response = send_raw(s3_server, signed_request(s3_server, s3_credentials, "GET", "/", unsigned=("host",)))
    assert (response.status, response.code) == (403, "AccessDenied")
    assert b"Host header" in response.body


def test_every_amz_header_must_be_signed(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    for header in ("x-amz-content-sha256", "x-amz-date", "x-amz-meta-foo", "x-amz-copy-source"):
        data = signed_request(s3_server, s3_credentials, "GET", "/",
                              headers={"x-amz-meta-foo": "1", "x-amz-copy-source": "b/k"}, unsigned=(header,))
        response = send_raw(s3_server, data)
        assert (response.status, response.code) == (403, "AccessDenied"), header
        assert header.encode() in response.body


def test_temporary_credentials_need_their_signed_token(s3_server: EmbeddedS3Server, s3_credentials: Credentials,
                                                        bucket: str) -> None:
    temporary = assume(s3_server, s3_credentials, bucket)
    tokenless = Credentials(temporary.access_key, temporary.secret_key)
    missing = send_raw(s3_server, signed_request(s3_server, tokenless, "GET", f"/{bucket}/sessions/A/f"))
    assert (missing.status, missing.code) == (400, "InvalidToken")
    wrong = Credentials(temporary.access_key, temporary.secret_key, "not-the-token")
    assert send_raw(s3_server, signed_request(s3_server, wrong, "GET", f"/{bucket}/sessions/A/f")).code \
        == "InvalidToken"
    unsigned_token = send_raw(s3_server, signed_request(s3_server, temporary, "GET", f"/{bucket}/sessions/A/f",
                                                        unsigned=("x-amz-security-token",)))
    assert (unsigned_token.status, unsigned_token.code) == (403, "AccessDenied")
    assert b"x-amz-security-token" in unsigned_token.body
    root_with_token = Credentials(s3_credentials.access_key, s3_credentials.secret_key, temporary.session_token)
    assert send_raw(s3_server, signed_request(s3_server, root_with_token, "GET", "/")).code == "InvalidToken"
    other = assume(s3_server, s3_credentials, bucket, "B")  # another session's token with A's key
    swapped = Credentials(temporary.access_key, temporary.secret_key, other.session_token)
    assert send_raw(s3_server, signed_request(s3_server, swapped, "GET", f"/{bucket}/sessions/A/f")).code \
        == "InvalidToken"


def test_malformed_authorization_is_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    good = signed_request(s3_server, s3_credentials, "GET", "/")
    head, _, auth_rest = good.partition(b"Authorization: ")
    auth, _, tail = auth_rest.partition(b"\r\n")
    cases = {
        b"AWS " + s3_credentials.access_key.encode() + b":c2lnbmF0dXJl": ("AccessDenied", b"Signature Version 4"),
        auth.split(b", Signature=")[0]: ("AuthorizationHeaderMalformed", b"Malformed"),
        auth.replace(b"/s3/aws4_request", b"/iam/aws4_request"): ("AuthorizationHeaderMalformed", b"'iam'"),
        auth.replace(b"/aws4_request", b"/aws5_request"): ("AuthorizationHeaderMalformed", b"scope"),
    }
    for bad, (code, cause) in cases.items():
        response = send_raw(s3_server, head + b"Authorization: " + bad + b"\r\n" + tail)
        assert response.code == code and cause in response.body, bad
    unsigned_date = signed_request(s3_server, s3_credentials, "GET", "/", headers={"x-amz-date": "yesterday"})
    response = send_raw(s3_server, unsigned_date)
    assert (response.status, response.code) == (403, "AccessDenied") and b"X-Amz-Date" in response.body


def test_content_length_must_be_a_number(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    data = signed_request(s3_server, s3_credentials, "PUT", "/b/k", b"")
    data = data.replace(b"Content-Length: 0", b"Content-Length: x")
    assert send_raw(s3_server, data).code == "InvalidArgument"


def test_sts_request_shape_is_checked(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    body = b"Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A%3Arole%2Fx&RoleSessionName=xx"

    def sts(method: str, path: str, payload: bytes, headers: dict[str, str]) -> RawResponse:
        return send_raw(s3_server, signed_request(s3_server, s3_credentials, method, path, payload, payload_hash=None,
                                                  headers=headers, service="sts"))

    assert sts("POST", "/", body, form).status == 200
    assert sts("GET", "/", b"", {}).code == "InvalidAction"
    assert sts("POST", "/bucket/key", body, form).code == "InvalidAction"
    assert sts("POST", "/", body, {"content-type": "application/json"}).code == "ValidationError"
    assert sts("POST", "/", body + b"&RoleSessionName=yy", form).code == "ValidationError"
    too_big = sts("POST", "/", body + b"&Pad=" + b"x" * (70 * 1024), form)
    assert (too_big.status, too_big.code) == (400, "EntityTooLarge")
    assert b"<ErrorResponse" in too_big.body  # STS errors in STS's own format


def test_a_large_delete_list_is_refused_before_it_is_read(s3_server: EmbeddedS3Server, session_a: Credentials,
                                                          bucket: str) -> None:
    head = signed_request(s3_server, session_a, "POST", f"/{bucket}", b"", query="delete",
                          payload_hash=hashlib.sha256(b"x").hexdigest(), content_length=5 * 1024 * 1024)
    response = send_raw(s3_server, head)
    assert (response.status, response.code) == (400, "MalformedXML")


def test_presigned_urls_are_refused(s3_server: EmbeddedS3Server, root_s3: Any, bucket: str) -> None:
    """Nothing in the project uses query-string authentication, so the endpoint does not accept it."""
    root_s3.create_bucket(Bucket=bucket)
    root_s3.put_object(Bucket=bucket, Key="k", Body=b"x")
    url = root_s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "k"}, ExpiresIn=60)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url, timeout=5)
    assert err.value.code == 403 and b"presigned" in err.value.read()


def test_form_bodies_are_refused_for_session_credentials(s3_server: EmbeddedS3Server, session_a: Credentials,
                                                         bucket: str) -> None:
    """Moto would read a form body as request parameters (an upload id, a delete list)."""
    s3 = scoped_client(s3_server, session_a)
    error = error_of(lambda: s3.put_object(Bucket=bucket, Key="sessions/A/f", Body=b"uploadId=x",
                                           ContentType="application/x-www-form-urlencoded"))
    assert error["Code"] == "InvalidRequest" and "Content-Type" in error["Message"]


def test_moto_control_headers_and_odd_targets_are_refused(s3_server: EmbeddedS3Server,
                                                          s3_credentials: Credentials) -> None:
    account = send_raw(s3_server, signed_request(s3_server, s3_credentials, "GET", "/",
                                                 headers={"x-moto-account-id": "111111111111"}))
    assert (account.status, account.code) == (400, "InvalidRequest")
    absolute = signed_request(s3_server, s3_credentials, "GET", "/").replace(
        b"GET / HTTP/1.1", f"GET http://127.0.0.1:{s3_server.port}/ HTTP/1.1".encode())
    assert send_raw(s3_server, absolute).code == "InvalidURI"


# -- connection limits ---------------------------------------------------------------------
def wait_until_served(server: EmbeddedS3Server, within: float) -> float:
    deadline = time.monotonic() + within
    while True:
        try:
            with urllib.request.urlopen(server.endpoint + "/minio/health/live", timeout=2) as response:
                assert response.status == 200
                return time.monotonic()
        except (OSError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def small_server(s3_credentials: Credentials) -> Iterator[EmbeddedS3Server]:
    limits = ServerLimits(read_timeout=1.0, max_connections=8, connection_wait=0.5)
    with EmbeddedS3Server(s3_credentials, limits=limits) as server:
        yield server


def closed_within(sock: socket.socket, seconds: float) -> bool:
    readable, _, _ = select.select([sock], [], [], seconds)
    try:
        return bool(readable) and sock.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_a_half_sent_request_is_cut_after_the_read_timeout(small_server: EmbeddedS3Server) -> None:
    with socket.create_connection(("127.0.0.1", small_server.port)) as sock:
        sock.sendall(b"GET /minio/health/live HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert closed_within(sock, 5)
        assert time.monotonic() - started < 2.5


def test_a_trickled_request_head_is_cut_at_its_deadline(small_server: EmbeddedS3Server) -> None:
    """Each byte comes well within the read timeout; the whole head still has to arrive in time."""
    with socket.create_connection(("127.0.0.1", small_server.port)) as sock:
        started = time.monotonic()
        for byte in b"GET /minio/health/live HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            if closed_within(sock, 0.2):
                break
        assert time.monotonic() - started < 3.0


def test_a_stalled_body_is_answered_request_timeout(small_server: EmbeddedS3Server,
                                                    s3_credentials: Credentials) -> None:
    data = signed_request(small_server, s3_credentials, "PUT", "/b/k", b"0123456789")
    with socket.create_connection(("127.0.0.1", small_server.port), timeout=10) as sock:
        sock.sendall(data[:-5])
        started = time.monotonic()
        response = sock.recv(65536)
        assert time.monotonic() - started < 3.0
        while chunk := sock.recv(65536):
            response += chunk
    assert b" 400 " in response.split(b"\r\n")[0] and b"<Code>RequestTimeout</Code>" in response


def test_half_sent_requests_do_not_hold_a_thread_each(small_server: EmbeddedS3Server) -> None:
    before = threading.active_count()
    sockets = []
    try:
        for _ in range(300):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", small_server.port))
            sockets.append(sock)
        pending, deadline = set(sockets), time.monotonic() + 1.5
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.1)
            for sock in writable:
                with contextlib.suppress(OSError):
                    sock.send(b"PUT /b/k HTTP/1.1\r\nHost: x\r\n")
                pending.discard(sock)
        assert len(pending) < 300
        time.sleep(0.3)
        assert threading.active_count() - before <= 8  # max_connections handler threads, no more
    finally:
        for sock in sockets:
            sock.close()
    wait_until_served(small_server, within=10)
    assert threading.active_count() - before <= 8


def test_connections_beyond_the_cap_wait_then_get_slow_down(s3_credentials: Credentials) -> None:
    limits = ServerLimits(read_timeout=5.0, max_connections=1, connection_wait=0.3)
    with EmbeddedS3Server(s3_credentials, limits=limits) as server:
        holder = socket.create_connection(("127.0.0.1", server.port))
        holder.sendall(b"GET /minio/health/live HTTP/1.1\r\n")  # holds the only slot
        time.sleep(0.2)
        started = time.monotonic()
        response = send_raw(server, b"GET /minio/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (response.status, response.code) == (503, "SlowDown")
        assert time.monotonic() - started >= 0.25
        holder.close()
        wait_until_served(server, within=5)


@pytest.mark.skipif(os.geteuid() != 0, reason="attacks as another uid: needs root")
def test_a_local_users_slowloris_does_not_starve_roots_clients(s3_credentials: Credentials) -> None:
    """Another local user (every local user is 127.0.0.1) holds 200 half-sent requests, trickling
    a byte to each every second: it holds its own share of the endpoint, the rest are answered
    503 SlowDown at once, and root's signed 64 KiB upload goes through at once meanwhile."""
    with EmbeddedS3Server(s3_credentials) as server:
        limits = server.limits
        root = client(server, s3_credentials.access_key, s3_credentials.secret_key)
        root.create_bucket(Bucket="mine")
        before = threading.active_count()
        half_head = "PUT /mine/k HTTP/1.1\r\nHost: x\r\nContent-Len"
        half_body = "PUT /mine/k HTTP/1.1\r\nHost: x\r\nContent-Length: 65536\r\n\r\n" + "a" * 32768
        attack = Spec(target=("127.0.0.1", server.port), count=200, openings=[half_head, half_body], trickle="a",
                      every=1.0)
        with LocalPeer(attack) as peer:
            peer.wait_for("connected", within=10, accept=lambda e: e["count"] == 200)
            held = peer.wait_for("status", within=2, accept=lambda e: e["closed"] >= 200 - limits.max_per_peer)
            assert held["open"] == limits.max_per_peer

            data = os.urandom(64 * 1024)
            started = time.monotonic()
            root.put_object(Bucket="mine", Key="upload", Body=data)
            assert time.monotonic() - started < 1.0
            assert threading.active_count() - before <= limits.max_per_peer + 1  # and root's, finishing
            report = peer.stop()
        assert report["answers"].get("HTTP/1.1 503 Service Unavailable", 0) >= 200 - limits.max_per_peer
        assert root.get_object(Bucket="mine", Key="upload")["Body"].read() == data


@pytest.fixture(scope="module")
def paced_server(s3_credentials: Credentials) -> Iterator[EmbeddedS3Server]:
    """Short body and answer deadlines; a per-read timeout well past them."""
    limits = ServerLimits(read_timeout=5.0, body_timeout=0.5, answer_timeout=0.5, min_rate=1 << 30)
    with EmbeddedS3Server(s3_credentials, limits=limits) as server:
        yield server


def test_a_trickled_body_is_cut_at_its_deadline(paced_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    """Each byte of the body comes well within the read timeout; the body still has its total:
    the base time plus its length at the minimum rate."""
    body = b"0" * 1000
    head = signed_request(paced_server, s3_credentials, "PUT", "/b/k", body)[:-len(body)]
    with socket.create_connection(("127.0.0.1", paced_server.port), timeout=5) as sock:
        sock.sendall(head)
        started = time.monotonic()
        for byte in body:
            try:
                sock.send(bytes([byte]))
            except OSError:
                break
            if closed_within(sock, 0.1):
                break
        elapsed = time.monotonic() - started
    assert paced_server.limits.body_timeout - 0.1 <= elapsed < paced_server.limits.body_timeout + 1.0


def test_an_answer_the_client_does_not_read_is_cut_at_its_deadline(paced_server: EmbeddedS3Server,
                                                                   s3_credentials: Credentials) -> None:
    """The answer's deadline is the base time plus its size at the minimum rate, however slowly
    the client reads (a per-write timeout is reset by each byte the client takes)."""
    size = 8 << 20  # more than the two sockets buffer between them
    root = client(paced_server, s3_credentials.access_key, s3_credentials.secret_key)
    root.create_bucket(Bucket="big")
    root.put_object(Bucket="big", Key="k", Body=b"x" * size)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", paced_server.port))
        sock.sendall(signed_request(paced_server, s3_credentials, "GET", "/big/k"))
        time.sleep(0.8)  # past the deadline: 0.5 s + 8 MiB at 1 GiB/s, at most a quarter late
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
    assert 0 < received < size


def test_the_slowdown_switch_throttles_that_share_of_requests(s3_server: EmbeddedS3Server,
                                                              s3_credentials: Credentials, bucket: str) -> None:
    import botocore.config

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                      aws_access_key_id=s3_credentials.access_key, aws_secret_access_key=s3_credentials.secret_key,
                      config=botocore.config.Config(retries={"max_attempts": 1}))
    s3.create_bucket(Bucket=bucket)
    s3_server.verifier.slowdown = 1.0
    try:
        assert error_of(lambda: s3.put_object(Bucket=bucket, Key="k", Body=b"x"))["Code"] == "SlowDown"
    finally:
        s3_server.verifier.slowdown = 0.0
    s3.put_object(Bucket=bucket, Key="k", Body=b"x")
