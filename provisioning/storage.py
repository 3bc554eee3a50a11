"""Session storage in S3: the bucket, the layout sessions/<id>/{uploads,artifacts}/, and file transfer."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from . import facts, validation
from .config import Settings
from .errors import SandboxHostError

AREAS = facts.AREAS


class StorageError(SandboxHostError):
    """An S3 operation failed; the message is one line naming the cause and the fix. ``kind``:
    unreachable, no-bucket, credentials, not-found or storage."""

    kind = "storage"

    def __init__(self, message: str, kind: str = "storage") -> None:
        super().__init__(message)
        self.kind = kind


def explain_error(exc: Exception, settings: Settings, action: str) -> StorageError:
    where = f"{settings.s3_endpoint} (bucket {settings.bucket})"
    if isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        return StorageError(
            f"{action}: S3 endpoint {settings.s3_endpoint} is unreachable; "
            "check SANDBOX_S3_ENDPOINT and that the server runs",
            "unreachable",
        )
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",) or (code == "404" and action.startswith("check bucket")):
            return StorageError(
                f"{action}: bucket {settings.bucket} does not exist at {settings.s3_endpoint}; "
                "create it (sandbox-host creates it on session create) or fix SANDBOX_S3_BUCKET",
                "no-bucket",
            )
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidClientTokenId", "ExpiredToken",
                    "InvalidToken", "AccessDenied", "403") or status == 403:
            return StorageError(
                f"{action}: S3 refused the credentials at {where} ({code or status}); "
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)",
                "credentials",
            )
        if code in ("NoSuchKey", "404"):
            return StorageError(f"{action}: no such object at {where}", "not-found")
        return StorageError(f"{action}: S3 error {code or status} at {where}: {exc}")
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return StorageError(f"{action}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                            "credentials")
    if isinstance(exc, botocore.exceptions.BotoCoreError):
        return StorageError(f"{action}: {exc}")
    return StorageError(f"{action}: {exc}")


@contextmanager
def _translated(settings: Settings, action: str) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise explain_error(exc, settings, action) from None


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    name: str
    size: int


class SessionStorage:
    """The session layout in one bucket. One client per instance; no global state."""

    def __init__(self, settings: Settings, client: Any | None = None) -> None:
        self.settings = settings
        creds = settings.credentials
        self.client = client or boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint,
            region_name=settings.region,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.session_token or None,
            config=botocore.config.Config(
                s3={"addressing_style": "path"},
                connect_timeout=5,
                read_timeout=60,
                retries={"max_attempts": 2, "mode": "standard"},
            ),
        )

    # -- bucket -------------------------------------------------------------------------
    def ensure_bucket(self) -> bool:
        """Create the bucket if it is missing. Returns True when it was created."""
        try:
            self.client.head_bucket(Bucket=self.settings.bucket)
            return False
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket"):
                raise explain_error(exc, self.settings, f"check bucket {self.settings.bucket}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise explain_error(exc, self.settings, f"check bucket {self.settings.bucket}") from None
        with _translated(self.settings, f"create bucket {self.settings.bucket}"):
            try:
                self.client.create_bucket(Bucket=self.settings.bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                    raise
        return True

    def check_bucket(self) -> None:
        with _translated(self.settings, f"check bucket {self.settings.bucket}"):
            self.client.head_bucket(Bucket=self.settings.bucket)

    # -- layout -------------------------------------------------------------------------
    @staticmethod
    def prefix(session_id: str) -> str:
        return f"{facts.session_prefix(validation.session_id(session_id))}/"

    def ensure_root(self, session_id: str) -> None:
        """The session prefix's own marker: s3fs mounts ``BUCKET:/sessions/<id>`` only when it exists."""
        self._put_markers(session_id, [self.prefix(session_id)])

    def ensure_areas(self, session_id: str) -> None:
        """Directory markers for uploads/ and artifacts/, so s3fs shows them as directories."""
        prefix = self.prefix(session_id)
        self._put_markers(session_id, [f"{prefix}{area}/" for area in AREAS])

    def _put_markers(self, session_id: str, keys: list[str]) -> None:
        with _translated(self.settings, f"create layout for session {session_id}"):
            for key in keys:
                self.client.put_object(Bucket=self.settings.bucket, Key=key, Body=b"")

    def _key(self, session_id: str, area: str, name: str) -> str:
        if area not in AREAS:
            raise validation.ValidationError("area", area, "must be uploads or artifacts")
        path = PurePosixPath(name)
        if not name or path.is_absolute() or any(p in ("", ".", "..") for p in name.split("/")) or "\0" in name:
            raise validation.ValidationError(
                "file name", name, "must be a relative path without '.', '..' or empty parts"
            )
        return f"{self.prefix(session_id)}{area}/{name}"

    # -- files --------------------------------------------------------------------------
    def upload(self, session_id: str, source: Path, name: str | None = None) -> str:
        key = self._key(session_id, "uploads", name or source.name)
        if not source.is_file():
            raise StorageError(f"upload: {source} is not a readable file")
        with _translated(self.settings, f"upload {source} to session {session_id}"):
            self.client.upload_file(str(source), self.settings.bucket, key)
        return key

    def put_bytes(self, session_id: str, area: str, name: str, data: bytes) -> str:
        key = self._key(session_id, area, name)
        with _translated(self.settings, f"write {name} to session {session_id}"):
            self.client.put_object(Bucket=self.settings.bucket, Key=key, Body=data)
        return key

    def list(self, session_id: str, area: str = "artifacts") -> list[ObjectInfo]:
        base = self._key(session_id, area, "x")[:-1]
        found: list[ObjectInfo] = []
        with _translated(self.settings, f"list {area} of session {session_id}"):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.settings.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    if item["Key"].endswith("/"):
                        continue  # directory markers
                    found.append(ObjectInfo(item["Key"], item["Key"][len(base):], int(item["Size"])))
        return found

    def get_bytes(self, session_id: str, area: str, name: str) -> bytes:
        key = self._key(session_id, area, name)
        with _translated(self.settings, f"read {area}/{name} of session {session_id}"):
            return bytes(self.client.get_object(Bucket=self.settings.bucket, Key=key)["Body"].read())

    def download(self, session_id: str, name: str, dest: Path, area: str = "artifacts") -> Path:
        key = self._key(session_id, area, name)
        if dest.is_dir():
            dest = dest / PurePosixPath(name).name
        with _translated(self.settings, f"download {area}/{name} of session {session_id}"):
            self.client.download_file(self.settings.bucket, key, str(dest))
        return dest
