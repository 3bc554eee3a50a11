"""The embedded S3 endpoint checks SigV4 for real (the tests' proof that bad credentials are refused)."""

import datetime as dt

import boto3
import botocore.config
import botocore.exceptions
import pytest

from provisioning.config import Credentials
from provisioning.s3server import EmbeddedS3Server, SigV4Verifier


def client(server: EmbeddedS3Server, key: str, secret: str):
    return boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret,
                        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def error_code(call) -> str:
    with pytest.raises(botocore.exceptions.ClientError) as err:
        call()
    return err.value.response["Error"]["Code"]


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
    import urllib.error
    import urllib.request

    for path in ("/", "/moto-api/reset"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(s3_server.endpoint + path, timeout=5)
        assert err.value.code == 403


def test_stale_requests_are_refused(s3_server: EmbeddedS3Server, s3_credentials: Credentials) -> None:
    later = SigV4Verifier(lambda e, s: [], s3_credentials,
                          now=lambda: dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
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
    from provisioning.s3server import AuthError

    SigV4Verifier(lambda e, s: [], s3_credentials).verify(dict(environ))  # fresh: accepted
    with pytest.raises(AuthError, match="too large"):
        later.verify(dict(environ))


def test_health_endpoint_is_open(s3_server: EmbeddedS3Server) -> None:
    import urllib.request

    with urllib.request.urlopen(s3_server.endpoint + "/minio/health/live", timeout=5) as response:
        assert response.status == 200
