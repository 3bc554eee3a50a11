"""The executor image: what users of a code sandbox reach for first is there (and works as the
sandbox user, with no network and a read-only root), and `--minimal` keeps the lean image."""

from __future__ import annotations

import sys

import docker
import pytest

from provisioning.image import ImageBuilder

TOOLS = {
    "venv and pip": "python3 -m venv /tmp/v && /tmp/v/bin/python -m pip --version",
    "git": "git init -q /tmp/r && git -C /tmp/r -c user.name=u -c user.email=u@x commit -q --allow-empty -m m",
    "curl": "curl --version",
    "sqlite3": "sqlite3 /tmp/db 'create table t(x); insert into t values (1); select count(*) from t;'",
    "procps": "ps -o pid= -p 1",
    "xz": "echo x | xz | xz -d",
    "zip": "cd /tmp && echo x > f && zip -q a.zip f && unzip -q -o a.zip -d out",
    "tar and gzip": "cd /tmp && tar -czf a.tgz /etc/hostname 2>/dev/null && tar -tzf a.tgz",
}


def run_as_sandbox_user(client: docker.DockerClient, image: str, script: str) -> tuple[int, str]:
    container = client.containers.run(
        image, ["sh", "-c", script], user="1000:1000", network_mode="none", read_only=True,
        tmpfs={"/tmp": "size=200m,exec"}, cap_drop=["ALL"], security_opt=["no-new-privileges"],
        environment={"HOME": "/tmp"}, detach=True)
    try:
        code = container.wait(timeout=120)["StatusCode"]
        return code, container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)


@pytest.mark.parametrize("tool", list(TOOLS))
def test_default_image_carries_the_tools(tool: str, executor_image: str, docker_engine: docker.DockerClient) -> None:
    code, output = run_as_sandbox_user(docker_engine, executor_image, TOOLS[tool])
    assert code == 0, f"{tool}: {output}"


def test_minimal_image_is_the_lean_one(executor_image: str, docker_engine: docker.DockerClient) -> None:
    """`image build --minimal`: python3 and s3fs, none of the tools; the size of each is reported."""
    minimal = ImageBuilder(docker_engine, log=lambda m: print(f"image: {m}", file=sys.stderr)).build(
        "sandbox-executor:minimal", offline=True, minimal=True)
    code, output = run_as_sandbox_user(docker_engine, minimal.image,
                                       "python3 -c 'print(1)' && s3fs --version >/dev/null && "
                                       "! command -v git && ! command -v sqlite3 && ! python3 -m venv /tmp/v")
    assert code == 0, output
    full = docker_engine.images.get(executor_image).attrs["Size"]
    assert minimal.size_bytes < full
    print(f"\nexecutor image sizes (MB): default {full / 1e6:.0f}, minimal {minimal.size_bytes / 1e6:.0f}",
          file=sys.stderr)
