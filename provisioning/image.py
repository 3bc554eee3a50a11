"""Build the executor image, from a registry base or from an offline Debian base (debootstrap).

One builder for the CLI and the executor_image Ansible role. It rebuilds only when its
inputs (the executor/ context and the base image) changed: the inputs' digest is a label.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from . import facts
from .aptmirror import debian_mirror
from .errors import SandboxHostError
from .resources import data_dir

DEFAULT_BASE_IMAGE = "python:3.13-slim-trixie"
# Debian 13: its s3fs (1.95) mounts a prefix with credentials scoped to it (1.90, Debian 12's,
# lists the bucket root at mount time: s3fs-fuse#2063), for the in-container mount strategy.
DEFAULT_SUITE = facts.DEFAULT_SUITE
CONTEXT_DIR = data_dir("executor") / "image"
LABEL_INPUTS = "io.sandbox-host.inputs"
# What the offline base carries, so the Dockerfile installs nothing and needs no archive.
DEBIAN_BASE_PACKAGES = ("python3", "s3fs", "ca-certificates")
# What users of a code sandbox reach for first (Debian package names; tar and gzip are in every
# base). The default image carries them; `--minimal` builds without.
USER_TOOLS = ("python3-venv", "python3-pip", "git", "curl", "sqlite3", "procps", "xz-utils", "zip", "unzip")
# Not needed at run time; removed from the offline base to keep it lean.
_SLIM_PATHS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
               "usr/share/lintian", "var/cache/apt", "var/lib/apt/lists", "var/log")


class ImageError(SandboxHostError):
    kind = "image"


@dataclass(frozen=True)
class BuildResult:
    image: str
    image_id: str
    base_image: str
    built: bool  # False: the existing image already matched its inputs
    size_bytes: int
    base_size_bytes: int


def default_cache_dir() -> Path:
    env = os.environ.get("SANDBOX_CACHE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/cache/sandbox-host")
    return Path.home() / ".cache" / "sandbox-host"


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def flavour(minimal: bool) -> str:
    """The offline base's name suffix: the lean one keeps the name it always had."""
    return "" if minimal else "-tools"


def debian_base_tag(suite: str, minimal: bool = False) -> str:
    return f"sandbox-host/debian-base:{suite}-{_arch()}{flavour(minimal)}"


def debian_base_tarball(cache_dir: Path, suite: str, minimal: bool = False) -> Path:
    """Where `image build` caches the offline base (the executor_image role seeds this name)."""
    return cache_dir / f"debian-{suite}-{_arch()}{flavour(minimal)}.tar"


def context_digest(context: Path, base_id: str) -> str:
    digest = hashlib.sha256(base_id.encode())
    files = (p for p in context.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    for path in sorted(files):
        digest.update(str(path.relative_to(context)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class ImageBuilder:
    def __init__(self, client: docker.DockerClient, *, context: Path = CONTEXT_DIR,
                 cache_dir: Path | None = None, log: Callable[[str], None] = lambda _m: None,
                 progress: bool = False) -> None:
        self.client = client
        self.context = context
        self.cache_dir = cache_dir or default_cache_dir()
        self.log = log
        self.progress = progress  # pass on debootstrap's steps as they happen (a terminal watches)

    # -- base images --------------------------------------------------------------------
    def _local(self, ref: str) -> docker.models.images.Image | None:
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None

    def registry_base(self, ref: str) -> docker.models.images.Image | None:
        image = self._local(ref)
        if image is not None:
            return image
        self.log(f"pulling {ref}")
        try:
            return self.client.images.pull(ref)
        except docker.errors.APIError as exc:
            self.log(f"cannot pull {ref}: {exc.explanation or exc}")
            return None

    def debian_base(self, suite: str = DEFAULT_SUITE, mirror: str | None = None, *,
                    minimal: bool = False) -> docker.models.images.Image:
        """The offline base: debootstrap from a Debian archive (the host's own apt mirror unless
        given), cached as a tarball and an image; with the user tools unless ``minimal``."""
        tag = debian_base_tag(suite, minimal)
        image = self._local(tag)
        if image is not None:
            return image
        tarball = debian_base_tarball(self.cache_dir, suite, minimal)
        if not tarball.is_file():
            self._debootstrap(suite, mirror or debian_mirror(suite), tarball, minimal=minimal)
        self.log(f"importing {tarball} as {tag}")
        repository, _, version = tag.partition(":")
        self.client.api.import_image_from_file(str(tarball), repository=repository, tag=version)
        image = self._local(tag)
        if image is None:
            raise ImageError(f"docker import of {tarball} did not produce {tag}")
        return image

    def _debootstrap(self, suite: str, mirror: str, tarball: Path, *, minimal: bool = False) -> None:
        if shutil.which("debootstrap") is None:
            raise ImageError("debootstrap is not installed: apt-get install debootstrap (needed for the offline base)")
        if os.geteuid() != 0:
            raise ImageError("building the offline Debian base needs root (debootstrap)")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir, prefix="rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            self.log(f"debootstrap {suite} from {mirror} (about a minute)")
            packages = DEBIAN_BASE_PACKAGES if minimal else DEBIAN_BASE_PACKAGES + USER_TOOLS
            cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(packages),
                   suite, str(rootfs), mirror]
            lines: list[str] = []
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    lines.append(line.rstrip())
                    if self.progress and line.startswith(("I: Retrieving", "I: Extracting", "I: Installing",
                                                          "I: Configuring", "I: Base system")):
                        self.log(f"debootstrap: {line[3:].strip()}")
            if proc.returncode != 0:
                tail = lines[-3:]
                raise ImageError(f"debootstrap {suite} from {mirror} failed: {' | '.join(tail)}")
            for rel in _SLIM_PATHS:
                target = rootfs / rel
                if target.is_dir():
                    shutil.rmtree(target)
                    target.mkdir()
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
            partial.rename(tarball)

    # -- executor image -----------------------------------------------------------------
    def build(self, tag: str, *, base_image: str | None = None, offline: bool = False,
              suite: str = DEFAULT_SUITE, mirror: str | None = None, force: bool = False,
              minimal: bool = False) -> BuildResult:
        """Build ``tag``. Base: ``base_image`` (pulled if missing), else the offline Debian base.
        With the user tools (USER_TOOLS) unless ``minimal``."""
        tools = "" if minimal else " ".join(USER_TOOLS)
        if offline:
            base = self.debian_base(suite, mirror, minimal=minimal)
        else:
            ref = base_image or DEFAULT_BASE_IMAGE
            base = self.registry_base(ref)
            if base is None:
                if base_image:
                    raise ImageError(f"base image {ref} is not available locally and cannot be pulled")
                self.log(f"falling back to the offline Debian base ({suite})")
                base = self.debian_base(suite, mirror, minimal=minimal)
        base_ref = base.tags[0] if base.tags else base.id
        inputs = context_digest(self.context, base.id + "\0" + tools)
        existing = self._local(tag)
        if existing is not None and not force and existing.labels.get(LABEL_INPUTS) == inputs:
            self.log(f"{tag} is up to date")
            return BuildResult(tag, existing.id, base_ref, False, existing.attrs["Size"], base.attrs["Size"])
        self.log(f"building {tag} from {base_ref}")
        try:
            image, _logs = self.client.images.build(
                path=str(self.context), tag=tag, buildargs={"BASE_IMAGE": base_ref, "TOOLS": tools},
                labels={LABEL_INPUTS: inputs}, rm=True, forcerm=True, pull=False, network_mode="host",
            )
        except docker.errors.BuildError as exc:
            lines = [str(item.get("stream", item.get("error", ""))).strip() for item in exc.build_log]
            tail = " | ".join(line for line in lines if line)[-600:]
            raise ImageError(f"building {tag} failed: {exc.msg}: {tail}") from None
        return BuildResult(tag, image.id, base_ref, True, image.attrs["Size"], base.attrs["Size"])
