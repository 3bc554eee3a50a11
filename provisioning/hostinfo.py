"""Facts about the host that the launcher and `doctor` both need."""

from __future__ import annotations

import os
from pathlib import Path

import docker
import docker.errors


class DockerUnavailable(RuntimeError):
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
