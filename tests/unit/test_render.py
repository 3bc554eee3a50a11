import dataclasses
import shutil
import subprocess

import jinja2
import pytest

from provisioning import render
from provisioning.config import Settings
from provisioning.validation import ValidationError, session_id

SETTINGS = Settings(s3_endpoint="http://127.0.0.1:9000", bucket="sandbox-sessions",
                    access_key="AKIDEXAMPLEKEY", secret_key="secret-example-value")
UID = 1900000123


def render_for(sid: str, settings: Settings = SETTINGS) -> str:
    """The edge checks (session id, settings), then the render: as the launcher does it."""
    return render.render_entrypoint(session_id(sid), settings.validated(), UID)


@pytest.mark.parametrize("value", ["plain", "it's", "$(rm -rf /)", "`id`", "a b\tc", "\\n", "'", "", "--x"])
def test_shquote_round_trips_through_sh(value: str) -> None:
    out = subprocess.run(["sh", "-c", f"printf %s {render.shquote(value)}"], capture_output=True, text=True, check=True)
    assert out.stdout == value


@pytest.mark.parametrize("value", [None, True, [1], {"a": 1}])
def test_shquote_refuses_non_scalars(value: object) -> None:
    with pytest.raises(TypeError):
        render.shquote(value)


def test_unquoted_interpolation_cannot_render() -> None:
    env = render.environment()
    with pytest.raises(render.UnquotedValueError, match="without the shquote filter"):
        env.from_string("X={{ value }}").render(value="1")
    assert env.from_string("X={{ value | shquote }}").render(value="a'b") == "X='a'\"'\"'b'"


def test_missing_variable_is_an_error() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render.environment().from_string("X={{ missing | shquote }}").render()


def test_entrypoint_mounts_only_the_session_prefix() -> None:
    script = render_for("abc123")
    assert "PREFIX='sessions/abc123'" in script
    assert 'exec s3fs "$BUCKET:/$PREFIX" "$MOUNTPOINT" -f' in script
    for option in ("url=http://127.0.0.1:9000", "use_path_request_style", "allow_other", f"uid={UID}", f"gid={UID}",
                   "mp_umask=0077", "tmpdir=/tmp", "sigv4", "endpoint=us-east-1"):
        assert f"-o '{option}'" in script
    assert "-o 'umask=" not in script  # modes are the files' own: chmod sticks
    # Credentials are never part of the script.
    assert "AKIDEXAMPLEKEY" not in script and "secret-example-value" not in script


def test_entrypoint_is_valid_posix_sh() -> None:
    script = render_for("abc123", dataclasses.replace(SETTINGS, s3fs_options={"parallel_count": 8}))
    for shell in ("sh", "dash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n"], input=script, text=True, check=True)
    assert "-o 'parallel_count=8'" in script


@pytest.mark.parametrize("change, field", [
    ({"bucket": "Bad_Bucket"}, "bucket"),
    ({"s3_endpoint": "http://u:p@host"}, "S3 endpoint"),
    # Values that would reach s3fs's comma-separated option list as extra options.
    ({"s3_endpoint": "http://127.0.0.1,no_check_certificate,x=y:9000"}, "S3 endpoint"),
    ({"region": "us-east-1,url=http://evil"}, "region"),
    ({"uid_range": (0, 5000)}, "uid range"),
    ({"s3fs_options": {"passwd_file": "/x"}}, "s3fs option"),
    ({"network": "container:other"}, "network"),
])
def test_bad_settings_fail_before_rendering(change: dict, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        render_for("abc123", dataclasses.replace(SETTINGS, **change))


def test_bad_session_id_fails_before_rendering() -> None:
    with pytest.raises(ValidationError, match="session id"):
        render_for("../etc")
