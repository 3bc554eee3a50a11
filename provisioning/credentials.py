"""Per-session credentials: temporary keys that can read, write and list only under the
session's own prefix, minted with STS AssumeRole and an inline session policy.

The effective permissions are the intersection of the parent key's (or role's) policy and the
session policy, so the S3 server itself refuses ``sessions/<other>/`` and the rest of the bucket.
Every store the project supports mints them at its own endpoint: MinIO and Ceph RGW (where
RoleArn names a real role), AWS, and the embedded dev endpoint.

Each lasts ``session_lifetime`` (1 h by default: what a store's role allows unless it says
more). The volume service renews them at half-life for a mounter that takes fresh ones while
mounted (``local``); s3fs reads its once, so its sessions last one lifetime.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from . import facts
from .config import Credentials, ValidSettings
from .errors import SandboxHostError
from .validation import SessionId

OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                  "s3:ListMultipartUploadParts")


class CredentialsError(SandboxHostError):
    kind = "credentials"


def session_policy(bucket: str, session_id: SessionId) -> dict[str, Any]:
    """Objects under ``sessions/<id>/`` (and the key ``sessions/<id>`` itself), and listings
    whose prefix lies there. Nothing else: not the bucket root, not another session. A listing
    prefix must include the trailing '/': ``sessions/ab`` would also list the key names of
    ``sessions/abc/`` (seen on Ceph RGW). An object may be written with the canned ACL
    ``private`` (what it has anyway; some clients always send it) and no other ACL or grant."""
    prefix = facts.session_prefix(session_id)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": list(OBJECT_ACTIONS),
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}", f"arn:aws:s3:::{bucket}/{prefix}/*"],
            },
            {
                "Effect": "Allow",
                "Action": ["s3:PutObjectAcl"],
                "Resource": [f"arn:aws:s3:::{bucket}/{prefix}/*"],
                "Condition": {"StringEquals": {"s3:x-amz-acl": "private"},
                              "Null": {f"s3:x-amz-grant-{grant}": "true"
                                       for grant in ("full-control", "read", "read-acp", "write", "write-acp")}},
            },
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [f"arn:aws:s3:::{bucket}"],
                "Condition": {"StringLike": {"s3:prefix": [f"{prefix}/", f"{prefix}/*"]}},
            },
        ],
    }


def policy_json(policy: dict[str, Any]) -> str:
    # Compact: Ceph RGW 16 refuses a policy with spaces in the form body.
    return json.dumps(policy, separators=(",", ":"))


def sts_client(settings: ValidSettings) -> Any:
    parent = settings.credentials
    return boto3.client(
        "sts",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.region,
        aws_access_key_id=parent.access_key,
        aws_secret_access_key=parent.secret_key,
        aws_session_token=parent.session_token or None,
        # The store judges DurationSeconds (and says why it refuses one), not the client: below
        # STS's 900 s only a store in a test mode takes it.
        config=botocore.config.Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2},
                                      parameter_validation=False),
    )


def mint(settings: ValidSettings, session_id: SessionId, client: Any | None = None) -> Credentials:
    """Temporary credentials for one session, valid for ``settings.session_lifetime`` seconds.
    With ``scoped_credentials`` off, the parent key itself (every session can reach the bucket)."""
    if not settings.scoped_credentials:
        return settings.credentials
    sts = client or sts_client(settings)
    try:
        answer = sts.assume_role(
            RoleArn=settings.sts_role_arn,
            RoleSessionName=f"sandbox-{session_id}"[:64],
            DurationSeconds=settings.session_lifetime,
            Policy=policy_json(session_policy(settings.bucket, session_id)),
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise CredentialsError(
            f"cannot mint credentials for session {session_id} at {settings.s3_endpoint}: {_reason(exc)}; "
            "the store must support STS AssumeRole with a session policy (MinIO, Ceph RGW, AWS, the dev "
            "endpoint) and sts_role_arn must name a role the key may assume, or set scoped_credentials = false"
        ) from None
    issued = answer["Credentials"]
    return Credentials(issued["AccessKeyId"], issued["SecretAccessKey"], issued["SessionToken"])


def _reason(exc: Exception) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".strip()
    return str(exc)
