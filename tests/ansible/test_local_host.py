"""The machine itself, converged with connection local (no systemd here): the README's main-job path.

scripts/setup-host.sh (run by the README's commands before these tests) made the first converge;
these tests re-run it and verify the result for real with testinfra's local backend.
"""

from __future__ import annotations

import json

import pytest
import testinfra

from .conftest import LOCAL_SECRETS, ROOT, run_playbook

INVENTORY = ROOT / "scripts" / "local.inventory"


@pytest.fixture(scope="module")
def host():
    if not LOCAL_SECRETS.exists():
        pytest.fail("this machine was not converged: run scripts/setup-host.sh (the README's commands do)")
    return testinfra.get_host("local://")


def test_second_converge_changes_nothing() -> None:
    run = run_playbook(INVENTORY, "-e", f"@{LOCAL_SECRETS}", "playbooks/site.yml")
    assert run.returncode == 0, run.output[-3000:]
    recap = run.recap()["localhost"]
    assert recap["changed"] == 0 and recap["failed"] == 0, run.output[-3000:]
    print(f"re-run of site.yml: {run.seconds}s, {recap}")


def test_check_mode_changes_and_fails_nothing() -> None:
    run = run_playbook(INVENTORY, "-e", f"@{LOCAL_SECRETS}", "playbooks/site.yml", "--check", "--diff")
    assert run.returncode == 0, run.output[-3000:]
    recap = run.recap()["localhost"]
    assert recap["changed"] == 0 and recap["failed"] == 0, run.output[-3000:]


def test_packages_and_fuse(host) -> None:
    for package in ("s3fs", "fuse3", "docker.io", "debootstrap", "python3-venv"):
        assert host.package(package).is_installed, package
    assert host.run("test -c /dev/fuse").rc == 0  # a character device (testinfra's File has no such test)
    assert host.file("/etc/fuse.conf").contains("^user_allow_other$")
    assert host.run("s3fs --version").stdout.startswith("Amazon Simple Storage Service File System V1.")


def test_docker_engine_answers(host) -> None:
    assert host.run("docker info --format '{{.ServerVersion}}'").rc == 0
    assert host.process.filter(comm="dockerd")


def test_object_store_service_and_bucket(host) -> None:
    assert host.run("/etc/init.d/sandbox-host-s3 status").rc == 0
    assert host.socket("tcp://127.0.0.1:9000").is_listening
    env = host.file("/etc/default/sandbox-host-s3")
    assert env.mode == 0o640 and env.user == "root" and env.group == "sandbox-s3"
    assert host.user("sandbox-s3").shell == "/usr/sbin/nologin"
    assert host.file("/etc/sandbox-host/config.toml").mode == 0o600
    doctor = json.loads(host.check_output("/usr/local/bin/sandbox-host doctor --json"))
    assert doctor["ok"] is True, doctor
    assert {c["name"]: c["ok"] for c in doctor["checks"]}["s3 bucket"] is True


def test_executor_image_has_s3fs(host) -> None:
    out = host.check_output("docker run --rm --network none --entrypoint s3fs sandbox-executor:latest --version")
    assert "V1." in out
