"""Input validation: every value that reaches a script, a container or S3 passes here first.

Each check raises :class:`ValidationError` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from .errors import InputError


class ValidationError(InputError, ValueError):
    """A user-supplied value is not acceptable. The message names the field and the fix."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {field} {value!r}: {rule}")


SESSION_ID_MAX = 63
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class SessionId(str):
    """A session id that passed :func:`session_id`: the only way to make one, so code that takes
    a SessionId never checks it again."""

    __slots__ = ()


def session_id(value: str) -> SessionId:
    """Letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters."""
    if isinstance(value, SessionId):
        return value
    if not isinstance(value, str) or not value:
        raise ValidationError("session id", value, "must be a non-empty string")
    if len(value) > SESSION_ID_MAX:
        raise ValidationError(
            "session id", value, f"must be at most {SESSION_ID_MAX} characters (got {len(value)})"
        )
    if not _SESSION_ID_RE.fullmatch(value):
        raise ValidationError(
            "session id",
            value,
            "use only letters, digits, '-' and '_', starting with a letter or digit "
            "(no '/', '..', whitespace or control characters)",
        )
    return SessionId(value)


_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def bucket(value: str) -> str:
    """S3 bucket naming rules (general purpose buckets)."""
    rule = (
        "S3 bucket names are 3-63 characters of lowercase letters, digits, '.' and '-', "
        "start and end with a letter or digit, have no '..', and are not IP addresses"
    )
    if not isinstance(value, str) or not _BUCKET_RE.fullmatch(value):
        raise ValidationError("bucket", value, rule)
    if ".." in value or ".-" in value or "-." in value:
        raise ValidationError("bucket", value, rule)
    if value.startswith(("xn--", "sthree-")) or value.endswith(("-s3alias", "--ol-s3")):
        raise ValidationError("bucket", value, "uses a prefix or suffix that S3 reserves")
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return value
    raise ValidationError("bucket", value, rule)


_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _endpoint_host(host: str) -> bool:
    """A DNS name, an IPv4 address or a bracketed IPv6 address: nothing else may reach s3fs's
    comma-separated option list or a URL (no ',', '=', '%', '@', '\\' ...)."""
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    if len(host) > 253:
        return False
    return all(_HOST_LABEL_RE.fullmatch(label) for label in host.split("."))


def endpoint(value: str) -> str:
    """An http(s) URL: scheme, host (DNS name or IP) and optional port, nothing else.
    Returns ``scheme://host[:port]``."""
    field = "S3 endpoint"
    if not isinstance(value, str) or not value:
        raise ValidationError(field, value, "set it, e.g. http://127.0.0.1:9000")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError(field, value, "must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValidationError(field, value, "must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            field, "<redacted>",
            "must not carry credentials; pass them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        )
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValidationError(field, value, "must not have a query or fragment")
    if parts.path not in ("", "/"):
        raise ValidationError(field, value, "must not have a path (use the bucket setting)")
    host, sep, port = parts.netloc.rpartition(":") if not parts.netloc.endswith("]") else (parts.netloc, "", "")
    if not sep:
        host, port = parts.netloc, ""
    if not host:
        raise ValidationError(field, value, "has no host")
    if not _endpoint_host(host):
        raise ValidationError(
            field, value, "the host must be a DNS name or an IP address ([v6] bracketed), without ',', "
            "'=' or other punctuation"
        )
    if sep and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise ValidationError(field, value, "has an invalid port (1-65535)")
    return f"{parts.scheme}://{parts.netloc}"


_REGION_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?")


def region(value: str) -> str:
    """An S3 signing region such as us-east-1: lowercase letters, digits and '-'."""
    if not isinstance(value, str) or not _REGION_RE.fullmatch(value):
        raise ValidationError("region", value, "must be a region name such as us-east-1 (a-z, 0-9, '-')")
    return value


def unix_id(field: str, value: int) -> int:
    """A uid or gid for the sandbox user: an unprivileged id."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "must be an integer")
    if not 1 <= value <= 2**31 - 2:
        raise ValidationError(field, value, "must be between 1 and 2147483646 (never 0: root)")
    return value


def uid_range(value: object) -> tuple[int, int]:
    """``[first, last]`` sandbox uids (gid = uid), at least 1,024 of them, none below 65536
    (where distributions put their accounts)."""
    rule = "give [first, last] with 65536 <= first, last - first >= 1023, last <= 2147483646"
    if isinstance(value, str):
        first_s, sep, last_s = value.partition("-")
        if not sep:
            raise ValidationError("uid range", value, rule)
        try:
            value = [int(first_s), int(last_s)]
        except ValueError:
            raise ValidationError("uid range", value, rule) from None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValidationError("uid range", value, rule)
    first, last = value
    if not (65536 <= first and last - first >= 1023 and last <= 2**31 - 2):
        raise ValidationError("uid range", value, rule)
    return first, last


# Host directories the state directory must never be: sandbox-host chmods and removes below it.
_SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/media", "/mnt",
                          "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
                          "/var/lib", "/var/run", "/var/tmp", "/var/cache", "/var/log", "/run/user"})


def state_dir(value: str) -> str:
    """An absolute path, not a system directory, in which every existing component is a real
    directory (no symlink) owned by root and writable by nobody else: sessions' control
    sockets and boot files live below it, so nobody but root may swap any part of it."""
    import os
    import stat as stat_mod

    field = "state dir"
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValidationError(field, value, "must be an absolute path, e.g. /run/sandbox-host")
    path = os.path.normpath(value)
    if path in _SYSTEM_DIRS:
        raise ValidationError(field, value, "must be a directory of its own, not a system directory")
    if path != value.rstrip("/") or "/." in path:
        raise ValidationError(field, value, "must be a normalised path (no '.', '..' or '//')")
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = os.path.join(current, part)
        try:
            info = os.lstat(current)
        except FileNotFoundError:
            break  # created below by sandbox-host, as root, mode 0711
        except OSError as exc:
            raise ValidationError(field, value, f"cannot inspect {current}: {exc.strerror}") from None
        if stat_mod.S_ISLNK(info.st_mode) or not stat_mod.S_ISDIR(info.st_mode):
            raise ValidationError(field, value, f"{current} is a symlink or not a directory; use a real path")
        if info.st_uid != 0 or info.st_mode & (stat_mod.S_IWGRP | stat_mod.S_IWOTH):
            raise ValidationError(
                field, value, f"{current} must be owned by root and writable by root only (chown root; chmod go-w)"
            )
    return path


# s3fs options a caller may set. Values are checked by type; anything else is refused,
# because options such as passwd_file, url, allow_other or uid would undo the launcher's choices.
_INT_OPTS = {
    "parallel_count": (1, 64),
    "multipart_size": (5, 5120),
    "multipart_copy_size": (5, 5120),
    "max_stat_cache_size": (0, 10_000_000),
    "stat_cache_expire": (0, 86_400),
    "stat_cache_interval_expire": (0, 86_400),
    "readwrite_timeout": (1, 3600),
    "connect_timeout": (1, 3600),
    "retries": (0, 100),
    "ensure_diskfree": (0, 1_048_576),
    "max_dirty_data": (-1, 1_048_576),
    "multireq_max": (1, 500),
    "singlepart_copy_limit": (0, 5120),
}
_FLAG_OPTS = {
    "streamupload",  # s3fs >= 1.93: parts go up while the file is written
    "enable_noobj_cache",
    "nomultipart",
    "enable_content_md5",
    "notsup_compat_dir",
    "complement_stat",
    "nosscache",
    "noxmlns",
    "nocopyapi",
    "norenameapi",
}
_STR_OPTS = {"endpoint": re.compile(r"[a-z0-9-]{1,32}")}  # the signing region
ALLOWED_S3FS_OPTIONS = frozenset(_INT_OPTS) | _FLAG_OPTS | frozenset(_STR_OPTS)


def s3fs_options(options: dict[str, object]) -> dict[str, object]:
    """Validate extra s3fs options against the allow-list. Flags take ``True``."""
    clean: dict[str, object] = {}
    for name, value in options.items():
        if name not in ALLOWED_S3FS_OPTIONS:
            raise ValidationError(
                "s3fs option",
                name,
                "not in the allow-list; allowed: " + ", ".join(sorted(ALLOWED_S3FS_OPTIONS)),
            )
        if name in _FLAG_OPTS:
            if value is not True:
                raise ValidationError(f"s3fs option {name}", value, "is a flag: give it without a value")
            clean[name] = True
        elif name in _INT_OPTS:
            low, high = _INT_OPTS[name]
            try:
                number = int(str(value), 10)
            except ValueError:
                raise ValidationError(f"s3fs option {name}", value, "must be an integer") from None
            if not low <= number <= high:
                raise ValidationError(f"s3fs option {name}", value, f"must be between {low} and {high}")
            clean[name] = number
        else:
            if not isinstance(value, str) or not _STR_OPTS[name].fullmatch(value):
                raise ValidationError(f"s3fs option {name}", value, "must be a region name such as us-east-1")
            clean[name] = value
    return clean


def parse_s3fs_option_list(items: list[str]) -> dict[str, object]:
    """Parse ``name=value`` / ``name`` strings (as given on a command line) and validate them."""
    parsed: dict[str, object] = {}
    for item in items:
        for part in item.split(","):
            if not part:
                continue
            name, sep, value = part.partition("=")
            parsed[name.strip()] = value if sep else True
    return s3fs_options(parsed)


_SIZE_RE = re.compile(r"[1-9][0-9]*[kmg]?", re.IGNORECASE)


def memory_size(field: str, value: str) -> str:
    if not isinstance(value, str) or not _SIZE_RE.fullmatch(value):
        raise ValidationError(field, value, "use a size such as 512m or 2g")
    return value.lower()


def positive_number(field: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValidationError(field, value, "must be a positive number")
    return value


def choice(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValidationError(field, value, "must be one of " + ", ".join(allowed))
    return value


_PLUGIN_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def plugin_name(value: str) -> str:
    """A Docker volume driver name (its socket is /run/docker/plugins/<name>.sock)."""
    if not isinstance(value, str) or not _PLUGIN_RE.fullmatch(value):
        raise ValidationError("volume driver", value, "use lowercase letters, digits, '.', '_' and '-'")
    return value


_ARN_RE = re.compile(r"arn:aws[a-z-]*:iam::[0-9A-Za-z_-]*:role/[A-Za-z0-9+=,.@_/-]{1,128}")


def role_arn(value: str) -> str:
    if not isinstance(value, str) or not _ARN_RE.fullmatch(value):
        raise ValidationError("STS role ARN", value, "must look like arn:aws:iam::ACCOUNT:role/NAME")
    return value


def session_lifetime(value: int) -> int:
    """Seconds that each of a session's temporary credentials lasts. STS's bounds are 900 s to
    the role's maximum (1 h unless the role says more; 12 h at most): the store judges and its
    answer is shown. Below 900 s only a store in a test mode takes it (the dev endpoint's switch)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 10 <= value <= 604800:
        raise ValidationError("session lifetime", value,
                              "must be whole seconds from 10 to 604800 (stores take 900 up to the role's maximum)")
    return value


def port(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValidationError(field, value, "must be a port number, 1-65535")
    return value


def listen_address(value: str) -> str:
    """``HOST:PORT`` (an IP address, or [v6]) to listen on, or empty for none."""
    if value == "":
        return value
    host, sep, port_text = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    try:
        ipaddress.ip_address(host.strip("[]"))
        port("listen port", int(port_text))
    except ValueError:
        raise ValidationError("listen address", value, "give IP:PORT, e.g. 10.0.0.5:7443") from None
    if not sep:
        raise ValidationError("listen address", value, "give IP:PORT, e.g. 10.0.0.5:7443")
    return value


def absolute_path(field: str, value: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValidationError(field, value, "must be an absolute path")
    return value


_NETWORK_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,14}")


def network(value: str) -> str:
    """The Docker network sessions join: a sandbox network's name (its bridge device takes the
    name, hence at most 15 characters), or ``host`` (the in-container mount only)."""
    if value == "none":
        raise ValidationError("network", value, "to give a session no network, set egress = none")
    if value == "bridge":
        raise ValidationError("network", value, "Docker's default bridge lets sessions reach each other and the "
                              "host; sessions join the sandbox network (the default, sandbox-host)")
    if not isinstance(value, str) or not _NETWORK_RE.fullmatch(value):
        raise ValidationError("network", value, "give a network name of at most 15 characters (a-z, 0-9, '-'), "
                              "e.g. sandbox-host, or host")
    return value


def credential(field: str, value: str, *, required: bool = True) -> str:
    """Credentials are written line by line into the container: no newlines, no control characters."""
    if not value:
        if required:
            raise ValidationError(
                field, "<empty>", f"set {field} (environment, config file or flag)"
            )
        return ""
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        raise ValidationError(field, "<redacted>", "must not contain whitespace or control characters")
    return value
