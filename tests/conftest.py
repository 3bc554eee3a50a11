"""Shared fixtures. Integration tests talk to a real dockerd and a real S3 server on 127.0.0.1."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning.config import Credentials, Settings
from provisioning.s3server import EmbeddedS3Server, generate_credentials
from provisioning.storage import SessionStorage


@pytest.fixture(scope="session")
def s3_credentials() -> Credentials:
    return generate_credentials()


@pytest.fixture(scope="session")
def s3_server(s3_credentials: Credentials) -> Iterator[EmbeddedS3Server]:
    """The embedded S3 endpoint (moto behind a SigV4 check) on a free loopback port."""
    with EmbeddedS3Server(s3_credentials, host="127.0.0.1", port=0) as server:
        yield server


@pytest.fixture
def bucket() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def base_settings(s3_server: EmbeddedS3Server, s3_credentials: Credentials, bucket: str, tmp_path: Path) -> Settings:
    state = Path("/run/sandbox-host-tests") / tmp_path.name
    return Settings(
        s3_endpoint=s3_server.endpoint,
        bucket=bucket,
        access_key=s3_credentials.access_key,
        secret_key=s3_credentials.secret_key,
        image=os.environ.get("SANDBOX_TEST_IMAGE", "sandbox-executor:latest"),
        network="host",
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
