"""`sandbox-host doctor`: is this host ready to run sessions, and what to fix if not."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass

import docker
import docker.errors

from . import hostinfo
from .config import Settings
from .storage import SessionStorage, StorageError, explain_error
from .validation import ValidationError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Doctor:
    def __init__(self, settings: Settings, docker_factory: Callable[[], docker.DockerClient] = hostinfo.docker_client) -> None:
        self.settings = settings
        self._docker_factory = docker_factory

    def run(self) -> list[Check]:
        checks = [self.s3fs(), self.fuse(), self.apparmor()]
        engine, client = self.engine()
        checks.append(engine)
        checks.append(self.image(client))
        checks.extend(self.s3())
        return checks

    def s3fs(self) -> Check:
        path = shutil.which("s3fs")
        if not path:
            return Check("s3fs", False, "s3fs not found on the host",
                         "apt-get install s3fs (or run playbooks/s3fs.yml)")
        out = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        version = out.splitlines()[0] if out else "unknown version"
        return Check("s3fs", True, f"{path}: {version}")

    def fuse(self) -> Check:
        ok, detail = hostinfo.fuse_device()
        return Check("fuse device", ok, detail, "" if ok else "modprobe fuse (or run playbooks/fuse.yml)")

    def apparmor(self) -> Check:
        if hostinfo.apparmor_enforced():
            return Check("apparmor", True, "enforced: session containers get apparmor=unconfined so s3fs can mount")
        return Check("apparmor", True, "not enforced: no AppArmor option needed")

    def engine(self) -> tuple[Check, docker.DockerClient | None]:
        try:
            client = self._docker_factory()
            version = client.version().get("Version", "?")
        except hostinfo.DockerUnavailable as exc:
            return Check("docker engine", False, str(exc), "apt-get install docker.io; start dockerd"), None
        return Check("docker engine", True, f"reachable, version {version}"), client

    def image(self, client: docker.DockerClient | None) -> Check:
        name = self.settings.image
        if client is None:
            return Check("executor image", False, f"cannot check {name}: no Docker engine", "start the Docker engine")
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            return Check("executor image", False, f"{name} not found", "sandbox-host image build")
        try:
            out = client.containers.run(name, entrypoint=["s3fs", "--version"], remove=True,
                                        network_mode="none", cap_drop=["ALL"])
        except docker.errors.ContainerError as exc:
            return Check("executor image", False, f"{name} has no working s3fs: {exc}", "sandbox-host image build --force")
        version = out.decode(errors="replace").splitlines()[0] if out else "?"
        return Check("executor image", True, f"{name} present, {version}")

    def s3(self) -> list[Check]:
        try:
            settings = self.settings.validated()
            storage = SessionStorage(settings)
        except ValidationError as exc:
            return [Check("s3 settings", False, str(exc), "fix the setting named above")]
        checks = []
        try:
            storage.client.list_buckets()  # reachability and credentials in one call
            checks.append(Check("s3 endpoint", True, f"{settings.s3_endpoint} reachable"))
            checks.append(Check("s3 credentials", True, f"accepted for access key {settings.access_key}"))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            message = str(explain_error(exc, settings, "list buckets"))
            unreachable = "unreachable" in message
            checks.append(Check("s3 endpoint", not unreachable, message if unreachable else f"{settings.s3_endpoint} reachable",
                                "start the object store or fix SANDBOX_S3_ENDPOINT" if unreachable else ""))
            if not unreachable:
                checks.append(Check("s3 credentials", False, message, "fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"))
            return checks
        try:
            storage.check_bucket()
            checks.append(Check("s3 bucket", True, f"{settings.bucket} present"))
        except StorageError as exc:
            checks.append(Check("s3 bucket", False, str(exc), "sandbox-host s3 ensure-bucket (or run playbooks/object_store.yml)"))
        return checks
