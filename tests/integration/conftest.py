from __future__ import annotations

import sys
from collections.abc import Iterator

import docker
import pytest

from provisioning.config import Settings
from provisioning.hostinfo import docker_client
from provisioning.image import ImageBuilder
from provisioning.launcher import LABEL_BUCKET, SessionManager

pytestmark = pytest.mark.docker


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    # No skip: these tests are the proof that sessions work. .ci/run starts dockerd.
    return docker_client()


@pytest.fixture(scope="session")
def executor_image(docker_engine: docker.DockerClient) -> str:
    """Build (or confirm up to date) the executor image with the project's own builder."""
    result = ImageBuilder(docker_engine, log=lambda m: print(f"image: {m}", file=sys.stderr)).build(
        "sandbox-executor:latest"
    )
    return result.image


def containers_for(client: docker.DockerClient, bucket: str) -> list[docker.models.containers.Container]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_BUCKET}={bucket}"})


@pytest.fixture
def settings(base_settings: Settings, executor_image: str) -> Settings:
    return base_settings


@pytest.fixture
def manager(settings: Settings, docker_engine: docker.DockerClient, storage) -> Iterator[SessionManager]:
    mgr = SessionManager(settings, client=docker_engine)
    yield mgr
    for container in containers_for(docker_engine, settings.bucket):
        container.remove(force=True)
