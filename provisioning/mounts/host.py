"""The host strategy (the default): the workspace's mounter (``mounter``: local or s3fs) runs on
the host, started by the sandbox-host volume driver (provisioning.volumed) with credentials
scoped to the session's prefix, and Docker binds the mount into a container that holds no
capability and no device."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .. import facts
from ..config import SERVICE_LOCATION, SERVICE_SETTINGS, Settings, ValidSettings
from ..validation import SessionId
from .base import StrategyError, VolumeSpec, WorkspacePlan


def executor_command() -> list[str]:
    # -I: no PYTHON* variables, no user site, no script directory on the path; -S: no site at
    # all. The executor needs the standard library only, and starts faster without them.
    return ["python3", "-I", "-S", facts.EXECUTOR_APP,
            "--socket", f"{facts.CONTROL_DIR}/{facts.SOCKET_NAME}", "--workspace", facts.MOUNTPOINT]


class HostMount:
    name = "host"

    def __init__(self, service_settings: Callable[[ValidSettings], dict[str, Any]] | None = None) -> None:
        self._service_settings = service_settings or _ask_service
        self._agreed: ValidSettings | None = None

    def check(self, settings: ValidSettings) -> None:
        """The volume service mounts the workspace, from its own settings: where the session's
        data lives (endpoint, bucket) and the network it guards, which settings here must match
        (else uploads would land where the workspace never looks), and how it mounts, which
        settings here may leave at their defaults but not set otherwise. Refused naming both."""
        if self._agreed == settings:
            return
        if settings.network == "host":
            raise StrategyError("network 'host' would give the session the host's own network (every service of "
                                "the host, a cloud's metadata service): host-mounted sessions join the sandbox network "
                                "(the default), or have none (egress = none)")
        if settings.backend == "swarm":
            return  # the nodes' services take the same role variables; the gateway checks the network
        theirs = self._service_settings(settings)
        defaults = Settings()
        differ = [name for name in SERVICE_SETTINGS
                  if _plain(getattr(settings, name)) != _plain(theirs.get(name))
                  and (name in SERVICE_LOCATION or getattr(settings, name) != getattr(defaults, name))]
        if differ:
            both = "; ".join(f"{name} {_plain(getattr(settings, name))!r} here, {_plain(theirs.get(name))!r} in the "
                             "service" for name in differ)
            raise StrategyError(
                f"the volume service {settings.volume_driver!r} mounts workspaces with other settings than this "
                f"command's ({both}): a session's files live where the service says. Use the service's values "
                "(unset what the environment or flags override), or change the service's (/etc/sandbox-host/"
                "config.toml, then restart sandbox-host-volumes)")
        self._agreed = settings

    def plan(self, session_id: SessionId, settings: ValidSettings, uid: int) -> WorkspacePlan:
        volume = VolumeSpec(
            name=facts.volume_name(session_id, uid),
            driver=settings.volume_driver,
            options={"session": session_id, "uid": str(uid), "gid": str(uid), "mounter": settings.mounter},
            target=facts.MOUNTPOINT,
        )
        return WorkspacePlan(user=f"{uid}:{uid}", entrypoint=executor_command(), volume=volume)


def _plain(value: object) -> object:
    """A setting as JSON has it (tuples as lists): how the service's answer carries it."""
    return json.loads(json.dumps(value))


def _ask_service(settings: ValidSettings) -> dict[str, Any]:
    from ..volumed.client import call

    answer = call(settings.volume_driver, "SandboxHost.Settings", timeout=5)
    if not isinstance(answer.get("Settings"), dict):
        raise StrategyError(f"the volume service {settings.volume_driver!r} does not say which settings it mounts "
                            f"with ({answer.get('Err') or 'no answer'}): it is older than this command; restart it")
    return dict(answer["Settings"])
