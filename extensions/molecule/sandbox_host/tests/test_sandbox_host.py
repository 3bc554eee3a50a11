"""sandbox_host: the runtime installed from its wheel, the CLI on PATH, the config file written by
the runtime (every setting type survives the round trip), the volume service up with its socket."""

import json

VENV = "/opt/sandbox-host/venv"
CONFIG = "/etc/sandbox-host/config.toml"


def test_cli_installed_from_the_wheel(host) -> None:
    version = host.check_output(f"{VENV}/bin/sandbox-host --version")
    assert version.startswith("sandbox-host ")
    assert host.file("/usr/local/bin/sandbox-host").linked_to == f"{VENV}/bin/sandbox-host"
    # Installed as a wheel (not a path into some checkout).
    direct = host.run(f"{VENV}/bin/python -c 'import provisioning, sys; print(provisioning.__file__)'")
    assert direct.rc == 0 and "/site-packages/provisioning/" in direct.stdout


def test_config_file_is_private_and_round_trips(host) -> None:
    config = host.file(CONFIG)
    assert config.user == "root" and config.mode == 0o600
    settings = json.loads(host.check_output(
        f"{VENV}/bin/python -c 'import json, tomllib; print(json.dumps(tomllib.load(open(\"{CONFIG}\", \"rb\"))))'"))
    assert settings["secret_key"] == 'a"quoted\\secret'
    assert settings["memory"] == "512m" and settings["cpus"] == 1.5 and settings["pids_limit"] == 128
    assert settings["scoped_credentials"] is False
    assert settings["s3fs_options"] == {"stat_cache_expire": 5, "enable_noobj_cache": True, "endpoint": "eu-west-1"}
    # The runtime reads it back and validates every value (a bad file would fail every command).
    loaded = host.run(f"{VENV}/bin/python -c 'from provisioning import config; "
                      f"print(config.load(environ={{}}).validated().memory)'")
    assert loaded.rc == 0 and loaded.stdout.strip() == "512m", loaded.stderr


def test_volume_service_running_with_its_socket(host) -> None:
    service = host.service("sandbox-host-volumes")
    assert service.is_running and service.is_enabled
    socket = host.file("/run/docker/plugins/sandbox-host.sock")
    assert socket.is_socket and socket.user == "root"
