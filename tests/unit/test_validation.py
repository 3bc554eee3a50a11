import pytest

from provisioning import validation
from provisioning.validation import ValidationError


@pytest.mark.parametrize("good", ["abc123", "A-b_c", "0", "x" * 63])
def test_session_id_accepts(good: str) -> None:
    assert validation.session_id(good) == good


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "a b", "a\tb", "a\nb", "x" * 64, "-lead", "_lead",
                                 "é", "a.b", "a\x00b", "$(id)"])
def test_session_id_rejects(bad: str) -> None:
    with pytest.raises(ValidationError, match="session id"):
        validation.session_id(bad)


@pytest.mark.parametrize("good", ["abc", "sandbox-sessions", "a.b-c", "x" * 63])
def test_bucket_accepts(good: str) -> None:
    assert validation.bucket(good) == good


@pytest.mark.parametrize("bad", ["ab", "Upper", "under_score", "a..b", "-abc", "abc-", "192.168.1.1",
                                 "x" * 64, "a.-b", "xn--abc", "abc-s3alias", "a b"])
def test_bucket_rejects(bad: str) -> None:
    with pytest.raises(ValidationError, match="bucket"):
        validation.bucket(bad)


def test_endpoint_normalises() -> None:
    assert validation.endpoint("http://127.0.0.1:9000/") == "http://127.0.0.1:9000"
    assert validation.endpoint("https://s3.example.com") == "https://s3.example.com"


@pytest.mark.parametrize("bad, why", [
    ("", "set it"),
    ("ftp://host", "http"),
    ("127.0.0.1:9000", "http"),
    ("http://user:pw@host:9000", "credentials"),
    ("http://:9000", "no host"),
    ("http://host:99999", "port"),
    ("http://host/path", "path"),
    ("http://host?x=1", "query"),
    ("http://ho st", "whitespace"),
])
def test_endpoint_rejects(bad: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as err:
        validation.endpoint(bad)
    assert "S3 endpoint" in str(err.value)
    assert "pw" not in str(err.value)  # credentials never echoed


@pytest.mark.parametrize("bad", [0, -1, True, "1000", 2**31])
def test_uid_rejects(bad: object) -> None:
    with pytest.raises(ValidationError, match="uid"):
        validation.unix_id("uid", bad)  # type: ignore[arg-type]


def test_s3fs_options_allow_list() -> None:
    assert validation.parse_s3fs_option_list(["parallel_count=10,enable_noobj_cache", "multipart_size=64"]) == {
        "parallel_count": 10, "enable_noobj_cache": True, "multipart_size": 64}


@pytest.mark.parametrize("bad, why", [
    ("passwd_file=/tmp/x", "allow-list"),
    ("allow_other", "allow-list"),
    ("url=http://evil", "allow-list"),
    ("uid=0", "allow-list"),
    ("parallel_count=abc", "integer"),
    ("parallel_count=0", "between"),
    ("enable_noobj_cache=yes", "flag"),
    ("endpoint=us-east-1;reboot", "region"),
])
def test_s3fs_options_rejects(bad: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why):
        validation.parse_s3fs_option_list([bad])


def test_credentials_reject_control_characters() -> None:
    with pytest.raises(ValidationError, match="AWS_SECRET_ACCESS_KEY"):
        validation.credential("AWS_SECRET_ACCESS_KEY", "abc\ndef")
    with pytest.raises(ValidationError, match="set AWS_ACCESS_KEY_ID"):
        validation.credential("AWS_ACCESS_KEY_ID", "")
