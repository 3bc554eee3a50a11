import os
from pathlib import Path

import pytest

from provisioning import config
from provisioning.config import ConfigError
from provisioning.validation import ValidationError


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('s3_endpoint = "http://file:1"\nbucket = "from-file"\nimage = "img:file"\nmemory = "2g"\n')
    env = {"SANDBOX_S3_BUCKET": "from-env", "SANDBOX_IMAGE": "img:env", "AWS_ACCESS_KEY_ID": "AK"}
    settings = config.load({"image": "img:flag", "network": None}, environ=env, config_file=path)
    assert settings.s3_endpoint == "http://file:1"
    assert settings.bucket == "from-env"
    assert settings.image == "img:flag"
    assert settings.memory == "2g"
    assert settings.access_key == "AK"
    assert settings.network == "sandbox-host" and settings.egress == "internet"


def test_env_config_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('bucket = "from-file"\n')
    assert config.load({}, environ={"SANDBOX_CONFIG": str(path)}).bucket == "from-file"


def test_unknown_setting_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('buckett = "x"\n')
    with pytest.raises(ConfigError, match="unknown setting.*buckett"):
        config.load({}, environ={}, config_file=path)


def test_secrets_in_a_readable_file_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('secret_key = "s"\n')
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        config.load({}, environ={}, config_file=path)
    os.chmod(path, 0o600)
    assert config.load({}, environ={}, config_file=path).secret_key == "s"


def test_secrets_never_in_repr() -> None:
    settings = config.Settings(access_key="AK", secret_key="very-secret", session_token="tok")
    assert "very-secret" not in repr(settings) and "tok" not in repr(settings)
    assert "very-secret" not in repr(settings.credentials)


def test_bad_toml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("bucket = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.load({}, environ={}, config_file=path)


def test_every_setting_round_trips_through_the_config_file(tmp_path: Path) -> None:
    """Written by `config write` (a TOML library), read back by `load`: every setting, each of its
    type, with values a hand-made file would break on (quotes, backslashes, a table)."""
    import dataclasses

    values = {
        "s3_endpoint": "http://127.0.0.1:9000", "bucket": "b-1", "region": "eu-west-1",
        "access_key": 'AK"with\\quotes', "secret_key": 's"e\\c\\ret', "session_token": "tok",
        "image": "reg.example/img:1", "network": "sbx-net", "egress": "allow=203.0.113.0/24", "state_dir": "/run/x",
        "mount": "host", "mounter": "s3fs",
        "backend": "swarm", "volume_driver": "drv", "uid_range": (2_000_000, 2_100_000), "memory": "2g",
        "cpus": 1.5, "pids_limit": 99, "tmp_size": "50m", "staging_size": "3g", "log_max_size": "2m",
        "ready_timeout": 12.5, "scoped_credentials": False, "sts_role_arn": "arn:aws:iam::123:role/r",
        "session_lifetime": 3600, "s3fs_options": {"parallel_count": 8, "enable_noobj_cache": True},
        "gateway_listen": "10.0.0.5:7443", "gateway_port": 7444, "tls_ca": "/a/ca", "tls_node_cert": "/a/n.crt",
        "tls_node_key": "/a/n.key", "tls_client_cert": "/a/c.crt", "tls_client_key": "/a/c.key",
        "placement_timeout": 7.0, "cpus_reserved": 0.5,
    }
    assert set(values) == {f.name for f in dataclasses.fields(config.Settings)}, "a setting is missing here"
    path = tmp_path / "c.toml"
    assert config.write_config_file(path, values, "header") is True
    assert config.write_config_file(path, values, "header") is False  # nothing to change
    assert config.write_config_file(path, {**values, "bucket": "b-2"}, "header", check=True) is True
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    loaded = config.load({}, environ={}, config_file=path)
    assert {k: getattr(loaded, k) for k in values} == values


def test_config_write_refuses_what_is_no_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown setting buckett"):
        config.write_config_file(tmp_path / "c.toml", {"buckett": "x"})
    with pytest.raises(ConfigError, match="must be a int"):
        config.write_config_file(tmp_path / "c.toml", {"pids_limit": "many"})


def test_config_write_refuses_values_every_command_would_refuse(tmp_path: Path) -> None:
    """A file the runtime would refuse on every call (the volume service among them) is not written."""
    path = tmp_path / "c.toml"
    with pytest.raises(ValidationError, match="secret_key"):
        config.write_config_file(path, {"secret_key": "has a space"})
    with pytest.raises(ValidationError, match="memory"):
        config.write_config_file(path, {"memory": "lots"})
    with pytest.raises(ValidationError, match="s3fs option"):
        config.write_config_file(path, {"s3fs_options": {"allow_other": True}})
    assert not path.exists()
    # No endpoint in the file is fine: it may come from the environment.
    assert config.write_config_file(path, {"bucket": "b-1"}) is True
