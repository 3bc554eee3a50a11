"""What a session's container is, whatever runs it: its identity and its confinement, described
once (:class:`SessionContainer`, made by :func:`describe`). Each backend translates all of it into
its engine's terms (``docker.py``: a container; ``swarm.py``: a service's one task) and adds only
how the executor reaches the host (a bound directory here, a control volume there);
``tests/unit/test_hardening.py`` fails if a backend drops any part.

The confinement, each part once:

- **user**: the session's own uid:gid from the first instruction (the in-container strategy's
  entrypoint starts as root and drops to it; ``executor`` below);
- **capabilities**: all dropped; added back only what the mount strategy needs (none for the host
  strategy); **devices**: none (``/dev/fuse`` for the in-container strategy);
- **no new privileges** (setuid binaries gain nothing), Docker's default seccomp profile, and the
  executor's own syscall filter on user code (``executor/app/guard.py``);
- **read-only root filesystem**; writable only ``/workspace`` and capped tmpfs (``/tmp``);
- **limits**: memory (no swap beyond it), CPU, pids; json-file logs capped;
- **network**: the sandbox network (no inter-container traffic) under the session's **egress
  policy**, enforced on the host (``provisioning.egress``), or no network at all;
- **the image's own ENTRYPOINT and CMD never run**: the command is the executor (or the
  in-container strategy's entrypoint), set explicitly, without Docker's init.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import facts
from ..egress import EgressPolicy
from ..mounts import VolumeSpec
from ..volumed.staging import size_bytes
from .base import SessionSpec

LOG_FILES = 2


@dataclass(frozen=True)
class Tmpfs:
    """A tmpfs mount: nosuid and nodev always, of this size and mode."""

    target: str
    size_bytes: int
    mode: int
    noexec: bool = False


@dataclass(frozen=True)
class SessionContainer:
    # identity
    name: str
    image: str
    labels: dict[str, str]
    command: tuple[str, ...]
    env: dict[str, str]
    workdir: str
    workspace: VolumeSpec | None
    # confinement
    user: str
    cap_drop: tuple[str, ...]
    cap_add: tuple[str, ...]
    devices: tuple[str, ...]
    no_new_privileges: bool
    security_opt: tuple[str, ...]
    read_only_root: bool
    tmpfs: tuple[Tmpfs, ...]
    memory_bytes: int
    nano_cpus: int
    pids_limit: int
    log_max_size: str
    log_files: int
    network: str  # the sandbox network (or "host"); with egress "none" the session gets no interface on it
    egress: EgressPolicy
    init: bool


def _tmpfs(target: str, options: str) -> Tmpfs:
    """A strategy's tmpfs, given as mount options ("rw,nosuid,nodev,noexec,size=1m,mode=0700")."""
    opts = dict(part.partition("=")[::2] for part in options.split(","))
    return Tmpfs(target, size_bytes(opts["size"]), int(opts.get("mode", "1777"), 8), "noexec" in opts)


def describe(spec: SessionSpec, command: list[str], labels: dict[str, str]) -> SessionContainer:
    """The session's container. ``command``: how this backend starts the executor (or the
    strategy's entrypoint); ``labels``: the backend's own, on top of the common ones."""
    settings, plan, sid = spec.settings, spec.plan, spec.session_id
    policy = settings.egress_policy
    common = {
        facts.LABEL_MANAGED: "true",
        facts.LABEL_SESSION: sid,
        facts.LABEL_BUCKET: settings.bucket,
        facts.LABEL_STRATEGY: spec.strategy,
        facts.LABEL_UID: str(spec.uid),
        facts.LABEL_EGRESS: str(policy),
    }
    if plan.volume is not None:
        common[facts.LABEL_VOLUME] = plan.volume.name
        common[facts.LABEL_DRIVER] = plan.volume.driver
    tmpfs = [Tmpfs("/tmp", size_bytes(settings.tmp_size), 0o1777),
             *(_tmpfs(target, options) for target, options in plan.tmpfs.items())]
    return SessionContainer(
        name=facts.container_name(sid),
        image=settings.image,
        labels={**common, **labels},
        command=tuple(command),
        env={"PATH": facts.EXECUTOR_PATH, "HOME": "/tmp", "LANG": "C.UTF-8", "SANDBOX_SESSION_ID": sid},
        workdir="/",
        workspace=plan.volume,
        user=plan.user or "0:0",
        cap_drop=("ALL",),
        cap_add=tuple(plan.cap_add),
        devices=tuple(plan.devices),
        no_new_privileges=True,
        security_opt=tuple(plan.security_opt),
        read_only_root=True,
        tmpfs=tuple(tmpfs),
        memory_bytes=size_bytes(settings.memory),
        nano_cpus=int(settings.cpus * 1e9),
        pids_limit=settings.pids_limit,
        log_max_size=settings.log_max_size,
        log_files=LOG_FILES,
        network=settings.network,
        egress=policy,
        init=False,
    )
