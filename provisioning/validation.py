"""Input validation: every value that reaches a script, a container or S3 passes here first.

Each check raises :class:`ValidationError` naming the field, the bad value and what is allowed.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit


class ValidationError(ValueError):
    """A user-supplied value is not acceptable. The message names the field and the fix."""

    def __init__(self, field: str, value: object, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"invalid {field} {value!r}: {rule}")


SESSION_ID_MAX = 63
_SESSION_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def session_id(value: str) -> str:
    """Letters, digits, '-' and '_', starting with a letter or digit, at most 63 characters."""
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
    return value


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


def endpoint(value: str) -> str:
    """An http(s) URL with a host, no credentials, query or fragment. Returns it without a trailing '/'."""
    if not isinstance(value, str) or not value:
        raise ValidationError("S3 endpoint", value, "set it, e.g. http://127.0.0.1:9000")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValidationError("S3 endpoint", value, "must not contain whitespace or control characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValidationError("S3 endpoint", value, "must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValidationError(
            "S3 endpoint",
            "<redacted>",
            "must not carry credentials; pass them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        )
    if not parts.hostname:
        raise ValidationError("S3 endpoint", value, "has no host")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise ValidationError("S3 endpoint", value, "has an invalid port") from None
    if parts.query or parts.fragment:
        raise ValidationError("S3 endpoint", value, "must not have a query or fragment")
    if parts.path not in ("", "/"):
        raise ValidationError("S3 endpoint", value, "must not have a path (use the bucket setting)")
    return f"{parts.scheme}://{parts.netloc}"


def unix_id(field: str, value: int) -> int:
    """A uid or gid for the sandbox user: an unprivileged id."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, value, "must be an integer")
    if not 1 <= value <= 2**31 - 2:
        raise ValidationError(field, value, "must be between 1 and 2147483646 (never 0: root)")
    return value


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


NETWORK_MODES = ("bridge", "host", "none")


def network(value: str) -> str:
    if value not in NETWORK_MODES:
        raise ValidationError("network", value, "must be one of " + ", ".join(NETWORK_MODES))
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
