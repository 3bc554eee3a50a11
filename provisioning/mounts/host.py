"""The host strategy (the default): s3fs (or rclone, ``mounter``) runs on the host, started by the sandbox-host volume
driver (provisioning.volumed) with credentials scoped to the session's prefix, and Docker
binds the mount into a container that holds no capability and no device."""

from __future__ import annotations

from .. import facts
from ..config import ValidSettings
from ..validation import SessionId
from .base import VolumeSpec, WorkspacePlan


def executor_command() -> list[str]:
    # -I: no PYTHON* variables, no user site, no script directory on the path; -S: no site at
    # all. The executor needs the standard library only, and starts faster without them.
    return ["python3", "-I", "-S", facts.EXECUTOR_APP,
            "--socket", f"{facts.CONTROL_DIR}/{facts.SOCKET_NAME}", "--workspace", facts.MOUNTPOINT]


class HostMount:
    name = "host"

    def check(self, settings: ValidSettings) -> None:
        """Any network mode works: the container never talks to S3."""

    def plan(self, session_id: SessionId, settings: ValidSettings, uid: int) -> WorkspacePlan:
        volume = VolumeSpec(
            name=facts.volume_name(session_id, uid),
            driver=settings.volume_driver,
            options={"session": session_id, "uid": str(uid), "gid": str(uid), "mounter": settings.mounter},
            target=facts.MOUNTPOINT,
        )
        return WorkspacePlan(user=f"{uid}:{uid}", entrypoint=executor_command(), volume=volume)
