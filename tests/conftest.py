"""Shared fixtures. Integration tests talk to a real dockerd and a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from provisioning.config import Credentials, Settings
from provisioning.devstore.server import EmbeddedS3Server, generate_credentials
from provisioning.storage import SessionStorage


@pytest.fixture(scope="session")
def s3_credentials() -> Credentials:
    return generate_credentials()


@pytest.fixture(scope="session")
def s3_server(s3_credentials: Credentials) -> Iterator[EmbeddedS3Server]:
    """The embedded S3 endpoint (moto behind a SigV4 check) on a free loopback port."""
    # Credentials may last 10 s: the renewal tests outlive several lifetimes in well under a minute.
    with EmbeddedS3Server(s3_credentials, host="127.0.0.1", port=0, min_session_seconds=10) as server:
        yield server


# Tiers, by directory: `-m "not docker"` is the fast tier (no engine, no network, well under 30 s).
_TIERS = {"integration": ("docker",), "servers": ("docker",), "bench": ("docker",), "ansible": ("docker", "ansible")}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(__file__).parent
    for item in items:
        parts = Path(str(item.fspath)).relative_to(root).parts
        for marker in _TIERS.get(parts[0], ()):
            item.add_marker(getattr(pytest.mark, marker))


@dataclass(frozen=True)
class Store:
    """An S3 server the session tests run against, and the key sandbox-host uses there."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    role_arn: str = "arn:aws:iam:::role/sandbox-session"


STORES = ("moto", "rgw")


@pytest.fixture(scope="session", params=STORES)
def s3_store(request: pytest.FixtureRequest, s3_server: EmbeddedS3Server,
             s3_credentials: Credentials) -> Iterator[Store]:
    """Every end-to-end session test runs against the embedded endpoint (moto behind our own SigV4
    and policy checks) and against Ceph RGW (a real S3 server that enforces session policies)."""
    if request.param == "moto":
        yield Store("moto", s3_server.endpoint, s3_credentials.access_key, s3_credentials.secret_key)
        return
    from provisioning.hostinfo import docker_client

    from .servers import rgw

    client = docker_client(timeout=900)
    rgw.build_image(client, log=lambda m: print(f"rgw: {m}", file=sys.stderr))
    with rgw.RGWServer(client, log=lambda m: print(m, file=sys.stderr)) as server:
        yield Store("rgw", server.endpoint, server.access_key, server.secret_key, server.role_arn)


@pytest.fixture
def bucket() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def session_bucket() -> str:
    """One bucket for the session tests (the volume service serves one bucket); each test's
    sessions have ids of their own and are removed after it."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def base_settings(s3_store: Store, session_bucket: str, tmp_path: Path) -> Settings:
    state = Path("/run/sandbox-host-tests") / tmp_path.name
    return Settings(
        s3_endpoint=s3_store.endpoint,
        bucket=session_bucket,
        access_key=s3_store.access_key,
        secret_key=s3_store.secret_key,
        sts_role_arn=s3_store.role_arn,
        image=os.environ.get("SANDBOX_TEST_IMAGE", "sandbox-executor:latest"),
        state_dir=str(state),
        ready_timeout=30,
    )


@pytest.fixture
def storage(base_settings: Settings) -> SessionStorage:
    store = SessionStorage(base_settings.validated())
    store.ensure_bucket()
    return store


def session_id() -> str:
    return "t" + secrets.token_hex(6)
