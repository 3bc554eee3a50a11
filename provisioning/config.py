"""Settings: defaults < config file < environment < flags."""

from __future__ import annotations

import dataclasses
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import egress, facts, validation
from .errors import InputError

DEFAULT_CONFIG_FILE = Path("/etc/sandbox-host/config.toml")
DEFAULT_IMAGE = "sandbox-executor:latest"
DEFAULT_BUCKET = "sandbox-sessions"


class ConfigError(InputError, ValueError):
    """The configuration file or a setting in it is unusable."""


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str = field(repr=False)
    session_token: str = field(default="", repr=False)

    def __repr__(self) -> str:  # never print secrets, even in tracebacks
        return f"Credentials(access_key={self.access_key!r}, secret_key=<redacted>)"


MOUNT_STRATEGIES = ("host", "in-container")
# What the volume service decides for the workspaces it mounts (host strategy), from its own
# settings (one truth, never silently overridden):
# - where a session's data lives, and the network it guards: a launcher must agree;
SERVICE_LOCATION = ("s3_endpoint", "bucket", "region", "network")
# - how it mounts and credentials them: a launcher that asks for other values is refused (its
#   defaults ask for nothing).
SERVICE_CHOICES = ("s3fs_options", "staging_size", "scoped_credentials", "sts_role_arn", "session_lifetime")
SERVICE_SETTINGS = SERVICE_LOCATION + SERVICE_CHOICES
BACKENDS = ("docker", "swarm")


def default_mounter(mount: str) -> str:
    """The mounter a strategy uses when no setting names one."""
    return facts.IN_CONTAINER_MOUNTER if mount == "in-container" else facts.DEFAULT_MOUNTER


@dataclass(frozen=True)
class Settings:
    s3_endpoint: str = ""
    bucket: str = DEFAULT_BUCKET
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    image: str = DEFAULT_IMAGE
    # The Docker network sessions join: the sandbox network (made and guarded by the volume
    # service), or "host" (the in-container mount only, for an S3 server on loopback: no boundary).
    network: str = facts.SESSION_NETWORK
    # What a session may reach: "internet", "none" or "allow=CIDR,..." (provisioning.egress).
    egress: str = "internet"
    state_dir: str = "/run/sandbox-host"
    # How /workspace is mounted: "host" (s3fs on the host, through the sandbox-host volume
    # driver; the container holds no capability) or "in-container" (s3fs inside the container).
    mount: str = "host"
    # What mounts it on the host (host strategy): "local" (the files on the session's own host
    # filesystem, S3 synced behind them: local-disk speed) or "s3fs" (every close uploads); see
    # the README's table. Empty: the strategy's default (local for host; s3fs for in-container,
    # which runs the image's s3fs).
    mounter: str = ""
    backend: str = "docker"
    volume_driver: str = facts.VOLUME_DRIVER
    uid_range: tuple[int, int] = facts.UID_RANGE
    memory: str = "1g"
    cpus: float = 1.0
    pids_limit: int = 256
    tmp_size: str = "100m"
    # s3fs's per-session staging area on host disk (host strategy), removed when the session ends.
    staging_size: str = "10g"
    log_max_size: str = "1m"
    ready_timeout: float = 30.0
    # Per-session credentials: STS AssumeRole with a policy for sessions/<id>/ only, valid this long.
    scoped_credentials: bool = True
    sts_role_arn: str = "arn:aws:iam:::role/sandbox-session"
    session_lifetime: int = 3600  # what a real store's role allows unless it says otherwise (and AWS role chaining)
    s3fs_options: Mapping[str, object] = field(default_factory=dict)
    # A fleet (backend "swarm"): each node's executor gateway, and the fleet's mutual TLS.
    gateway_listen: str = ""  # on a node, e.g. "10.0.0.5:7443"; empty: no gateway
    gateway_port: int = facts.GATEWAY_PORT
    tls_ca: str = f"{facts.TLS_DIR}/ca.crt"
    tls_node_cert: str = f"{facts.TLS_DIR}/node.crt"
    tls_node_key: str = f"{facts.TLS_DIR}/node.key"
    tls_client_cert: str = f"{facts.TLS_DIR}/control-plane.crt"
    tls_client_key: str = f"{facts.TLS_DIR}/control-plane.key"
    placement_timeout: float = 20.0
    # Swarm reserves each session's whole memory limit (never overcommitted) and this much CPU
    # (CPU is shared: sessions mostly wait on their users).
    cpus_reserved: float = 0.25

    @property
    def credentials(self) -> Credentials:
        return Credentials(
            validation.credential("AWS_ACCESS_KEY_ID", self.access_key),
            validation.credential("AWS_SECRET_ACCESS_KEY", self.secret_key),
            validation.credential("AWS_SESSION_TOKEN", self.session_token, required=False),
        )

    def validated(self) -> ValidSettings:
        """Check every field; returns a normalised copy. Raises ValidationError naming the field."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(
            s3_endpoint=validation.endpoint(self.s3_endpoint),
            bucket=validation.bucket(self.bucket),
            region=validation.region(self.region),
            network=validation.network(self.network),
            egress=str(egress.parse(self.egress)),
            state_dir=validation.state_dir(self.state_dir),
            mount=validation.choice("mount", self.mount, MOUNT_STRATEGIES),
            mounter=validation.choice("mounter", self.mounter or default_mounter(self.mount), facts.MOUNTERS),
            backend=validation.choice("backend", self.backend, BACKENDS),
            volume_driver=validation.plugin_name(self.volume_driver),
            uid_range=validation.uid_range(self.uid_range),
            memory=validation.memory_size("memory", self.memory),
            tmp_size=validation.memory_size("tmp size", self.tmp_size),
            staging_size=validation.memory_size("staging size", self.staging_size),
            log_max_size=validation.memory_size("log max size", self.log_max_size),
            cpus=validation.positive_number("cpus", self.cpus),
            pids_limit=int(validation.positive_number("pids limit", self.pids_limit)),
            ready_timeout=validation.positive_number("ready timeout", self.ready_timeout),
            sts_role_arn=validation.role_arn(self.sts_role_arn),
            session_lifetime=validation.session_lifetime(self.session_lifetime),
            s3fs_options=validation.s3fs_options(dict(self.s3fs_options)),
            gateway_listen=validation.listen_address(self.gateway_listen),
            gateway_port=validation.port("gateway port", self.gateway_port),
            placement_timeout=validation.positive_number("placement timeout", self.placement_timeout),
            cpus_reserved=validation.positive_number("cpus reserved", self.cpus_reserved),
            **{name: validation.absolute_path(name.replace("_", " "), getattr(self, name))
               for name in ("tls_ca", "tls_node_cert", "tls_node_key", "tls_client_cert", "tls_client_key")},
        )
        return ValidSettings(**values)


@dataclass(frozen=True)
class ValidSettings(Settings):
    """Settings that passed :meth:`Settings.validated`: code that takes these checks nothing again."""

    egress_policy: egress.EgressPolicy = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "egress_policy", egress.parse(self.egress))
        if self.network == "host" and self.egress != egress.INTERNET:
            raise validation.ValidationError(
                "egress", self.egress, "needs the sandbox network: network 'host' gives a session the host's "
                "own network, where no egress rule applies")

    def validated(self) -> ValidSettings:
        return self


ENV_NAMES = {
    "SANDBOX_S3_ENDPOINT": "s3_endpoint",
    "SANDBOX_S3_BUCKET": "bucket",
    "SANDBOX_S3_REGION": "region",
    "AWS_ACCESS_KEY_ID": "access_key",
    "AWS_SECRET_ACCESS_KEY": "secret_key",
    "AWS_SESSION_TOKEN": "session_token",
    "SANDBOX_IMAGE": "image",
    "SANDBOX_NETWORK": "network",
    "SANDBOX_EGRESS": "egress",
    "SANDBOX_STATE_DIR": "state_dir",
    "SANDBOX_MOUNT": "mount",
    "SANDBOX_MOUNTER": "mounter",
    "SANDBOX_BACKEND": "backend",
    "SANDBOX_VOLUME_DRIVER": "volume_driver",
    "SANDBOX_STS_ROLE_ARN": "sts_role_arn",
    "SANDBOX_GATEWAY_LISTEN": "gateway_listen",
}
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECRET_FIELDS = {"secret_key", "session_token"}


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _coerce(name: str, value: Any) -> Any:
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name}; known: {', '.join(sorted(_FIELDS))}")
    kind: type[Any] = type(_FIELDS[name].default) if name != "s3fs_options" else dict
    if name == "uid_range":
        return validation.uid_range(value)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.lower()]
        raise ConfigError(f"setting {name} must be true or false, got {value!r}")
    if kind is dict:
        if isinstance(value, list):
            return validation.parse_s3fs_option_list([str(v) for v in value])
        if not isinstance(value, dict):
            raise ConfigError(f"setting {name} must be a table of s3fs options")
        return value
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} must be a {kind.__name__}, got {value!r}") from None


def read_config_file(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}"
        )
    if _SECRET_FIELDS & set(data) and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"config file {path} holds secrets but is readable by others: chmod 600 {path}"
        )
    return {k: _coerce(k, v) for k, v in data.items()}


def load(
    flags: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> Settings:
    """Build Settings. ``flags`` holds only the values the user gave (None means not given)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get("SANDBOX_CONFIG")
    if path:
        values.update(read_config_file(Path(path)))
    elif DEFAULT_CONFIG_FILE.is_file():
        values.update(read_config_file(DEFAULT_CONFIG_FILE))
    for env_name, name in ENV_NAMES.items():
        if environ.get(env_name):
            values[name] = environ[env_name]
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = value
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})


def render_config(values: Mapping[str, Any], header: str = "") -> str:
    """Settings as a config file: every key known, every value of its setting's type, written by a
    TOML library (a hand-made file breaks on a key with a quote or a table of s3fs options)."""
    import tomli_w

    checked: dict[str, Any] = {}
    for name, value in sorted(values.items()):
        coerced = _coerce(name, value)
        checked[name] = list(coerced) if isinstance(coerced, tuple) else coerced
    check_values(values)
    text = tomli_w.dumps(checked)
    return (f"# {header}\n" if header else "") + text


def check_values(values: Mapping[str, Any]) -> None:
    """Validate the settings a config file gives, as every command will read them: a file that
    would make each command (and the volume service) fail is refused before it is written. The
    endpoint may come from the environment instead, so a file without one is not checked for it."""
    given = {name: _coerce(name, value) for name, value in values.items()}
    Settings(**{"s3_endpoint": "http://127.0.0.1:9000", **given}).validated()
    for name in ("access_key", "secret_key", "session_token"):
        if given.get(name):
            validation.credential(name, given[name])


def write_config_file(path: Path, values: Mapping[str, Any], header: str = "", check: bool = False) -> bool:
    """Write the config file (0600, atomically) unless it already says exactly this; True when it
    changed (or, with ``check``, would)."""
    text = render_config(values, header)
    try:
        current = path.read_text()
    except OSError:
        current = None
    if current == text and (path.stat().st_mode & 0o777) == 0o600:
        return False
    if check:
        return True
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(tmp, path)
    return True
