"""The s3fs command line for a session's workspace: one definition for both mount strategies
(on the host, by the volume service; in the container, by the rendered entrypoint)."""

from __future__ import annotations

from dataclasses import dataclass

from . import facts
from .config import ValidSettings
from .validation import SessionId


@dataclass(frozen=True)
class S3fsMount:
    """``s3fs BUCKET:/sessions/<id> MOUNTPOINT -f -o OPTION ...`` (credentials go in the environment)."""

    source: str
    mountpoint: str
    options: tuple[str, ...]

    def argv(self, binary: str = "s3fs") -> list[str]:
        args = [binary, self.source, self.mountpoint, "-f"]
        for option in self.options:
            args += ["-o", option]
        return args


def s3fs_mount(settings: ValidSettings, session_id: SessionId, mountpoint: str, *, uid: int, gid: int,
               tmpdir: str, ensure_diskfree_mb: int = 10, forget_misses: bool = False) -> S3fsMount:
    """Fixed security choices first (only validated values reach them: the endpoint and region
    cannot carry a ',' that would smuggle in an option), then the allow-listed extras.

    ``forget_misses`` (for an s3fs that caches misses by default, 1.91 and later): a name looked
    up before the platform uploaded it is not kept as missing until the stat cache expires
    (measured: invisible for 80 s and more after the upload), unless ``enable_noobj_cache`` is
    asked for."""
    fixed = [
        f"url={settings.s3_endpoint}",
        "use_path_request_style",
        "sigv4",  # never fall back to the weaker signature version 2
        f"endpoint={settings.region}",
        "allow_other",
        f"uid={uid}",
        f"gid={gid}",
        # Modes are the objects' own (chmod sticks; an object put from outside reads 0640, a
        # directory 0750); the mount point stays the session's alone.
        "mp_umask=0077",
        f"tmpdir={tmpdir}",
        # s3fs stages data in tmpdir; keep headroom there instead of failing writes.
        f"ensure_diskfree={ensure_diskfree_mb}",
    ]
    extras = dict(settings.s3fs_options)
    if forget_misses and "enable_noobj_cache" not in extras:
        fixed.append("disable_noobj_cache")
    overridable = {"endpoint", "ensure_diskfree"}
    fixed = [o for o in fixed if o.partition("=")[0] not in overridable or o.partition("=")[0] not in extras]
    for name, value in sorted(extras.items()):
        fixed.append(name if value is True else f"{name}={value}")
    return S3fsMount(f"{settings.bucket}:/{facts.session_prefix(session_id)}", mountpoint, tuple(fixed))
