"""Facts every side of the runtime shares: paths inside a session container, the control
socket's name, the sandbox uid range, the S3 layout, the host service's names and the labels
that mark what sandbox-host made. One place, so the launcher, the mount strategies, the
host service and the executor's client cannot drift apart."""

from __future__ import annotations

# -- S3 layout ---------------------------------------------------------------------------------
SESSIONS_PREFIX = "sessions"  # a session's files are s3://BUCKET/sessions/<id>/
AREAS = ("uploads", "artifacts")


def session_prefix(session_id: str) -> str:
    """``sessions/<id>`` (no trailing slash): what s3fs mounts as ``BUCKET:/sessions/<id>``."""
    return f"{SESSIONS_PREFIX}/{session_id}"


# -- inside a session container ----------------------------------------------------------------
MOUNTPOINT = "/workspace"
CONTROL_DIR = "/run/sandbox-executor"  # bound from a per-session host directory; holds the socket only
SOCKET_NAME = "executor.sock"
EXECUTOR_DIR = "/opt/sandbox-host/executor"  # the executor app, bound read-only from the host's package
EXECUTOR_APP = EXECUTOR_DIR + "/executor.py"
BOOT_DIR = "/etc/sandbox-host"  # in-container strategy: the rendered entrypoint and credentials (root only)
CONTAINER_STATE_DIR = "/run/sandbox-host"  # in-container strategy: the entrypoint's own scratch (tmpfs)
EXECUTOR_PATH = "/usr/local/bin:/usr/bin:/bin"

# -- the sandbox user --------------------------------------------------------------------------
# Each session runs as its own uid (gid = uid) from this range, which no host account may use:
# above systemd's container range (up to 0x6FFFFFFF), below its foreign range (0x7FFE0000) and
# below 2**31 (tools that read ids as signed ints). getent is asked about each id before use.
UID_RANGE = (1_900_000_000, 1_999_999_999)

# -- the host service (Docker volume plugin) ---------------------------------------------------
# What mounts a workspace on the host (the host strategy). "local" (the files on the session's own
# host filesystem, S3 synced behind them) unless a setting asks for another; the in-container
# strategy runs the image's s3fs.
MOUNTERS = ("s3fs", "local")
DEFAULT_MOUNTER = "local"
IN_CONTAINER_MOUNTER = "s3fs"
# How long a stop (or a sync) waits for a mounter that keeps writes back (local) to get them all into S3.
DRAIN_TIMEOUT = 300.0
VOLUME_DRIVER = "sandbox-host"  # Docker finds it as /run/docker/plugins/<name>.sock
PLUGIN_DIR = "/run/docker/plugins"
VOLUME_PREFIX = "sandbox-ws-"  # Docker volume name: sandbox-ws-<session id>.<uid>
CONTROL_VOLUME_PREFIX = "sandbox-ctl-"  # swarm: the executor's app and socket, from the node's driver
CONTROL_MOUNT = "/run/sandbox-control"  # where a control volume is mounted in a swarm session
GATEWAY_PORT = 7443  # each node's executor gateway (mutual TLS): the control plane's way to a session
TLS_DIR = "/etc/sandbox-host/tls"

# Per driver name (<dir>/<driver>/), so a second instance (tests) never touches the host's own.
SERVICE_STATE_DIR = "/run/sandbox-host/volumes"  # live mounts (gone with a reboot, like the mounts)
SERVICE_DATA_DIR = "/var/lib/sandbox-host/volumes"  # mount points and per-session staging images

# s3fs for host mounts: the private runtime the s3fs role installs where the distribution's s3fs
# is older than S3FS_MIN_SCOPED (it lists the bucket root at mount time: s3fs-fuse#2063), else PATH's.
S3FS_RUNTIME = "/opt/sandbox-host/s3fs/bin/s3fs"
S3FS_MIN_SCOPED = (1, 92)

# -- labels on what sandbox-host made ----------------------------------------------------------
LABEL_MANAGED = "io.sandbox-host.managed"
LABEL_SESSION = "io.sandbox-host.session"
LABEL_BUCKET = "io.sandbox-host.bucket"
LABEL_STRATEGY = "io.sandbox-host.mount-strategy"
LABEL_CONTROL = "io.sandbox-host.control-dir"
LABEL_BOOT = "io.sandbox-host.boot-dir"
LABEL_UID = "io.sandbox-host.uid"
LABEL_VOLUME = "io.sandbox-host.volume"
LABEL_DRIVER = "io.sandbox-host.volume-driver"
LABEL_EGRESS = "io.sandbox-host.egress"  # the session's egress policy (provisioning.egress), read by the guard

# -- the sessions' network ---------------------------------------------------------------------
# The Docker bridge network sessions join (made and guarded by the volume service: inter-container
# traffic off, its bridge device named as the network, an nftables table per bridge).
SESSION_NETWORK = "sandbox-host"


def config_network_name(network: str) -> str:
    """On swarm nodes: the config-only network each node keeps for the swarm's sessions' network."""
    return f"{network}-config"

# Exit status of an executor whose workspace died under it: the session ended as failed.
EXIT_WORKSPACE_LOST = 75


def volume_name(session_id: str, uid: int) -> str:
    """``sandbox-ws-<id>.<uid>``: one per launch (each launch leases its own uid), so a volume
    left by a crashed launch is never mistaken for a new session's."""
    return f"{VOLUME_PREFIX}{session_id}.{uid}"


def control_volume_name(session_id: str, uid: int) -> str:
    return f"{CONTROL_VOLUME_PREFIX}{session_id}.{uid}"


def container_name(session_id: str) -> str:
    return f"sandbox-{session_id}"

# The Debian suite of the executor image's offline base (debootstrap).
DEFAULT_SUITE = "trixie"
