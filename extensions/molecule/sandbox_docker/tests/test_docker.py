"""sandbox_docker: the engine installed, running under systemd, every container's log capped."""

import json


def test_engine_installed_running_and_enabled(host) -> None:
    assert host.package("docker.io").is_installed
    service = host.service("docker")
    assert service.is_running and service.is_enabled


def test_daemon_json_caps_logs_and_keeps_the_options(host) -> None:
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "10m", "max-file": "3"}
    assert daemon["iptables"] is False and daemon["bridge"] == "none"


def test_engine_answers_with_the_cap(host) -> None:
    info = json.loads(host.check_output("docker info --format '{{json .}}'"))
    assert info["LoggingDriver"] == "json-file" and info["Driver"] == "overlay2"
