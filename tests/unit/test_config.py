import os
from pathlib import Path

import pytest

from provisioning import config
from provisioning.config import ConfigError


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
    assert settings.network == "bridge"


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
