"""What the volume service itself asks of the store, with its own credentials (never a
session's): the markers that make a session's prefix mountable, and whether the store refuses a
key for good (so that a mounter's held-back files can go to the quarantine rather than wait
forever)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from .. import facts
from ..config import Credentials, ValidSettings
from ..escape import printable
from .mounters import HeldFile
from .state import VolumeError


class ServiceStore:
    def __init__(self, settings: ValidSettings, client: Any = None,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.bucket = settings.bucket
        self.endpoint = settings.s3_endpoint
        self._log = log
        self._s3 = client if client is not None else s3_client(settings, settings.credentials)

    def put_marker(self, key: str) -> None:
        """An empty object at ``key``: s3fs mounts ``BUCKET:/sessions/<id>`` only when the
        prefix's marker exists; ``uploads/`` and ``artifacts/`` are the layout user code finds."""
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise VolumeError(f"cannot write the session marker {key} at {self.endpoint}: {exc}") from None

    def refuses(self, session_id: str, held: list[HeldFile]) -> bool:
        """Whether the store refuses every one of ``held`` for good: it answers a client error
        for each file's key while it takes a key of the same session right then. A store that
        does not answer or fails (connection errors, 5xx, throttling) refuses nothing: its files
        wait for it, as any write does. Asked with the service's key, not the session's: a
        session whose credentials expired is refused every key, and that is not the files' doing."""
        prefix = facts.session_prefix(session_id)
        if self.takes(f"{prefix}/.sandbox-probe-{secrets.token_hex(8)}") is not True:
            return False
        return all(self.takes(f"{prefix}/{item.path}") is False for item in held)

    def takes(self, key: str) -> bool | None:
        """Ask the store whether it takes an object at ``key``, without writing one: start a
        multipart upload there, and abort it. True: it does; False: a client error (4xx, but
        not a timeout or throttling); None: no verdict (unreachable, a server error)."""
        try:
            upload = self._s3.create_multipart_upload(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            return False if 400 <= status < 500 and status not in (408, 429) else None
        except (botocore.exceptions.BotoCoreError, UnicodeError):
            return None  # unreachable; or a name that is not UTF-8 (S3 takes none: never held)
        try:
            self._s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload["UploadId"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            self._log(f"cannot abort the probe upload at {printable(key)}: {exc}")
        return True


def s3_client(settings: ValidSettings, credentials: Credentials) -> Any:
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint, region_name=settings.region,
        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
        aws_session_token=credentials.session_token or None,
        config=botocore.config.Config(s3={"addressing_style": "path"}, connect_timeout=5, read_timeout=30,
                                      retries={"max_attempts": 2, "mode": "standard"}),
    )
