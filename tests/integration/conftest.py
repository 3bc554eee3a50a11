"""End-to-end fixtures: a real dockerd, real s3fs, an S3 server on 127.0.0.1, and a volume
service of the tests' own. Every session test runs once per mount strategy."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from provisioning import facts
from provisioning.config import Settings
from provisioning.hostinfo import docker_client
from provisioning.image import ImageBuilder
from provisioning.launcher import SessionManager

from ..conftest import Store
from ..servers.volumed import VolumeService

STRATEGIES = ("host", "in-container")
STAGING_SIZE = "1500m"  # above the 1 GB file test, below the 2 GB fill test
# A fixed driver name: Docker keeps asking every volume driver it ever met about names it does
# not know, and one random name per test run would leave it a growing list of dead ones. Another
# checkout's suite running on the same host at the same time sets a name of its own.
TEST_DRIVER = os.environ.get("SANDBOX_TEST_VOLUME_DRIVER", "sandbox-host-test")


@pytest.fixture(scope="session")
def docker_engine() -> docker.DockerClient:
    # No skip: these tests are the proof that sessions work. .ci/run starts dockerd.
    return docker_client()


@pytest.fixture(scope="session")
def executor_image(docker_engine: docker.DockerClient) -> str:
    """Build (or confirm up to date) the executor image with the project's own builder, offline:
    tests reach no registry (nor any address but loopback)."""
    result = ImageBuilder(docker_engine, log=lambda m: print(f"image: {m}", file=sys.stderr)).build(
        "sandbox-executor:latest", offline=True
    )
    return result.image


@pytest.fixture(scope="session")
def volume_service(s3_store: Store, session_bucket: str,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[VolumeService]:
    """The host strategy's volume driver, serving the tests' S3 server and bucket."""
    settings = {"s3_endpoint": s3_store.endpoint, "bucket": session_bucket, "sts_role_arn": s3_store.role_arn,
                "access_key": s3_store.access_key, "secret_key": s3_store.secret_key,
                "staging_size": STAGING_SIZE}
    with VolumeService(settings, tmp_path_factory.mktemp("volumed"), driver=TEST_DRIVER) as service:
        yield service


def containers_for(client: docker.DockerClient, bucket: str) -> list[docker.models.containers.Container]:
    return client.containers.list(all=True, filters={"label": f"{facts.LABEL_BUCKET}={bucket}"})


@pytest.fixture(params=STRATEGIES)
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def mounter() -> str:
    """The host strategy's mounter: s3fs unless a test parametrizes ``mounter`` itself."""
    return "s3fs"


@pytest.fixture
def settings(base_settings: Settings, executor_image: str, strategy: str, mounter: str,
             volume_service: VolumeService) -> Settings:
    # The host strategy's sessions need no network (the egress tests give them one); s3fs in the
    # container must reach the S3 server on 127.0.0.1.
    base = dataclasses.replace(base_settings, mount=strategy, mounter=mounter, volume_driver=volume_service.driver,
                               staging_size=STAGING_SIZE)
    if strategy == "host":
        return dataclasses.replace(base, network=volume_service.network, egress="none")
    return dataclasses.replace(base, network="host")


@pytest.fixture
def manager(settings: Settings, docker_engine: docker.DockerClient, storage) -> Iterator[SessionManager]:
    mgr = SessionManager(settings, client=docker_engine)
    yield mgr
    for container in containers_for(docker_engine, settings.bucket):
        container.remove(force=True)
    # Named with their driver: a lookup by name alone asks every driver Docker ever met (see
    # DockerBackend._remove_volume).
    for volume in docker_engine.api.volumes(filters={"driver": settings.volume_driver}).get("Volumes") or []:
        with contextlib.suppress(docker.errors.APIError):
            docker_engine.api.remove_volume(volume["Name"], force=True)


def state_dirs(settings: Settings) -> dict[str, list[Path]]:
    """What the launcher keeps per session on the host (control and boot directories, uid leases)."""
    state = Path(settings.state_dir)
    found = {d: sorted((state / d).iterdir()) for d in ("sessions", "boot", "uids") if (state / d).exists()}
    return {d: entries for d, entries in found.items() if entries}


def host_s3fs_pids(bucket: str, sid: str) -> list[int]:
    """Host PIDs of the s3fs processes serving a session (either strategy: in the container's or
    the host's PID namespace, run directly or through the private runtime's loader)."""
    needle = f"{bucket}:/sessions/{sid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in argv and any(a == b"s3fs" or a.endswith(b"/s3fs") for a in argv[:argv.index(needle)]):
            found.append(int(proc.name))
    return found


CHECKOUT = Path(__file__).resolve().parents[2]


def cli(settings: Settings, *argv: str, check: bool = True,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The `sandbox-host` command as a user runs it, configured by the environment: this
    checkout's, whatever ``cwd`` (a virtualenv may hold another checkout as the package)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")])),
               SANDBOX_S3_ENDPOINT=settings.s3_endpoint, SANDBOX_S3_BUCKET=settings.bucket,
               AWS_ACCESS_KEY_ID=settings.access_key, AWS_SECRET_ACCESS_KEY=settings.secret_key,
               SANDBOX_IMAGE=settings.image, SANDBOX_NETWORK=settings.network, SANDBOX_STATE_DIR=settings.state_dir,
               SANDBOX_MOUNT=settings.mount, SANDBOX_VOLUME_DRIVER=settings.volume_driver,
               SANDBOX_STS_ROLE_ARN=settings.sts_role_arn, SANDBOX_CONFIG="/dev/null")
    out = subprocess.run([sys.executable, "-m", "provisioning.cli", *argv], env=env, capture_output=True, text=True,
                         cwd=cwd)
    if check:
        assert out.returncode == 0, out.stderr
    return out
