"""Facts about the host that the launcher and `doctor` both need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from typing import TYPE_CHECKING

from . import facts
from .errors import UnreachableError
from .lazy import lazy_import

if TYPE_CHECKING:
    import docker
else:
    docker = lazy_import("docker")  # loaded when a client is made, not by exec's path


class DockerUnavailable(UnreachableError):
    pass


def docker_client(timeout: int = 60) -> docker.DockerClient:
    """A client for the local engine, or a one-line error saying how to start it."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise DockerUnavailable(
            f"Docker engine not reachable at {host} ({exc.__class__.__name__}); "
            "start it (systemctl start docker, or 'dockerd &' where there is no systemd)"
        ) from None
    return client


def s3fs_binary() -> str | None:
    """The s3fs that host mounts use: the private runtime where installed, else PATH's."""
    if os.access(facts.S3FS_RUNTIME, os.X_OK):
        return facts.S3FS_RUNTIME
    return shutil.which("s3fs")


def s3fs_version(binary: str) -> tuple[int, ...] | None:
    """(1, 95) from "Amazon Simple Storage Service File System V1.95 ..."; None if it does not run."""
    import re
    import subprocess

    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"V(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def apparmor_enforced(sysfs: Path = Path("/sys/module/apparmor/parameters/enabled")) -> bool:
    """True when the kernel enforces AppArmor (Docker then applies docker-default, which denies mount)."""
    try:
        return sysfs.read_text().strip().upper().startswith("Y")
    except OSError:
        return False


def fuse_device(path: Path = Path("/dev/fuse")) -> tuple[bool, str]:
    import stat

    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return False, f"{path} is missing ({exc.strerror}); load the module: modprobe fuse"
    if not stat.S_ISCHR(mode):
        return False, f"{path} is not a character device; recreate it: mknod -m 0666 {path} c 10 229"
    return True, f"{path} is a character device"
