"""Render container entrypoints from templates/ with every value shell-quoted by a filter.

The environment enforces the rule: a ``{{ value }}`` that did not pass through ``shquote``
fails to render, so an unquoted interpolation cannot slip into a script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from .config import Settings
from .resources import data_dir
from . import validation

TEMPLATES_DIR = data_dir("templates")

# Paths inside the session container (fixed by executor/Dockerfile).
MOUNTPOINT = "/workspace"
BOOT_DIR = "/etc/sandbox-host"  # bound from a root-only host directory; holds what the entrypoint reads
SECRETS_FILE = BOOT_DIR + "/credentials"
ENTRYPOINT_FILE = BOOT_DIR + "/entrypoint.sh"
CONTAINER_STATE_DIR = "/run/sandbox-host"
CONTROL_DIR = "/run/sandbox-executor"
EXECUTOR_SOCKET = CONTROL_DIR + "/executor.sock"
EXECUTOR_APP = "/opt/sandbox/executor.py"
MOUNT_TIMEOUT_SECONDS = 20


class ShellQuoted(str):
    """A string already quoted for POSIX sh."""


class UnquotedValueError(jinja2.TemplateError):
    pass


def shquote(value: object) -> ShellQuoted:
    """Quote one value as a single POSIX sh word."""
    if value is None or isinstance(value, (bool, dict, list, tuple, set)):
        raise TypeError(f"refusing to shell-quote {type(value).__name__} value {value!r}")
    text = str(value)
    if "\0" in text:
        raise ValueError("a shell word cannot contain a NUL byte")
    return ShellQuoted("'" + text.replace("'", "'\"'\"'") + "'")


def _finalize(value: Any) -> Any:
    if isinstance(value, ShellQuoted):
        return value
    raise UnquotedValueError(
        f"template printed {value!r} without the shquote filter; every value must be quoted by it"
    )


def environment(templates_dir: Path = TEMPLATES_DIR) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
    )
    env.filters["shquote"] = shquote
    return env


def session_prefix(session_id: str) -> str:
    return f"sessions/{validation.session_id(session_id)}"


def s3fs_mount_options(settings: Settings) -> list[str]:
    """The s3fs ``-o`` options for a session: fixed security choices first, then the allow-listed extras."""
    fixed = [
        f"url={settings.s3_endpoint}",
        "use_path_request_style",
        "sigv4",  # never fall back to the weaker signature version 2
        f"endpoint={settings.region}",
        "allow_other",
        f"uid={settings.uid}",
        f"gid={settings.gid}",
        "umask=0077",
        "mp_umask=0077",
        "tmpdir=/tmp",
        # s3fs stages data in tmpdir; keep headroom on the small /tmp tmpfs instead of failing writes.
        "ensure_diskfree=10",
    ]
    extras = dict(settings.s3fs_options)
    if "endpoint" in extras:
        fixed = [o for o in fixed if not o.startswith("endpoint=")]
    if "ensure_diskfree" in extras:
        fixed = [o for o in fixed if not o.startswith("ensure_diskfree=")]
    for name, value in sorted(extras.items()):
        fixed.append(name if value is True else f"{name}={value}")
    return fixed


@dataclass(frozen=True)
class RenderedEntrypoint:
    script: str
    session_id: str


def render_entrypoint(session_id: str, settings: Settings, env: jinja2.Environment | None = None) -> RenderedEntrypoint:
    """Validate every input, then render the in-container FUSE entrypoint.

    Pass a long-lived ``env`` to reuse its compiled template (compiling costs ~12 ms a launch)."""
    sid = validation.session_id(session_id)
    settings = settings.validated()
    script = (env or environment()).get_template("entrypoint.sh.j2").render(
        session_id=sid,
        bucket=settings.bucket,
        prefix=session_prefix(sid),
        mountpoint=MOUNTPOINT,
        uid=settings.uid,
        gid=settings.gid,
        secrets_file=SECRETS_FILE,
        state_dir=CONTAINER_STATE_DIR,
        executor_socket=EXECUTOR_SOCKET,
        executor_app=EXECUTOR_APP,
        mount_timeout_ticks=MOUNT_TIMEOUT_SECONDS * 100,
        s3fs_options=s3fs_mount_options(settings),
    )
    return RenderedEntrypoint(script=script, session_id=sid)
