"""`sandbox-host doctor`: is this host ready to run sessions, and what to fix if not.
Every decision is by a value or an error's kind, never by an error message's text."""

from __future__ import annotations

import shutil
import stat
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import docker.errors

from . import credentials, facts, hostinfo
from .config import Settings, ValidSettings
from .errors import SandboxHostError
from .storage import SessionStorage, StorageError, explain_error
from .validation import ValidationError, session_id


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _version(numbers: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in numbers)


class Doctor:
    def __init__(self, settings: Settings,
                 docker_factory: Callable[[], docker.DockerClient] = hostinfo.docker_client) -> None:
        self.settings = settings
        self._docker_factory = docker_factory

    def run(self) -> list[Check]:
        try:
            settings = self.settings.validated()
        except ValidationError as exc:
            return [Check("settings", False, str(exc), "fix the setting named above")]
        host = settings.mount == "host"
        checks = [self.s3fs(settings), self.fuse(), self.apparmor(settings)]
        if host:
            checks += [self.loop(), self.volume_driver(settings), self.agreement(settings)]
        if settings.network != "host" and settings.backend == "docker":
            checks.append(self.network(settings))
        engine, client = self.engine()
        checks.append(engine)
        checks.append(self.image(client, settings))
        checks.extend(self.s3(settings))
        return checks

    def s3fs(self, settings: ValidSettings) -> Check:
        binary = hostinfo.s3fs_binary()
        if not binary:
            return Check("s3fs", False, "s3fs not found on the host",
                         "apt-get install s3fs (or run playbooks/s3fs.yml)")
        version = hostinfo.s3fs_version(binary)
        if version is None:
            return Check("s3fs", False, f"{binary} does not run", "run playbooks/s3fs.yml")
        if settings.mount == "host" and settings.scoped_credentials and version < facts.S3FS_MIN_SCOPED:
            return Check("s3fs", False,
                         f"{binary} is {_version(version)}: before {_version(facts.S3FS_MIN_SCOPED)} it lists the "
                         "bucket root at mount time, which scoped credentials refuse (s3fs-fuse#2063)",
                         f"run playbooks/s3fs.yml (installs s3fs 1.95 at {facts.S3FS_RUNTIME})")
        return Check("s3fs", True, f"{binary}: {_version(version)}")

    def fuse(self) -> Check:
        ok, detail = hostinfo.fuse_device()
        return Check("fuse device", ok, detail, "" if ok else "modprobe fuse (or run playbooks/fuse.yml)")

    def apparmor(self, settings: ValidSettings) -> Check:
        if not hostinfo.apparmor_enforced():
            return Check("apparmor", True, "not enforced: no AppArmor option needed")
        if settings.mount == "host":
            return Check("apparmor", True, "enforced: sessions keep docker-default (the host strategy mounts nothing)")
        return Check("apparmor", True, "enforced: in-container sessions get apparmor=unconfined so s3fs can mount")

    def loop(self) -> Check:
        path = Path("/dev/loop-control")
        try:
            ok = stat.S_ISCHR(path.stat().st_mode)
        except OSError:
            ok = False
        if ok and not shutil.which("mkfs.ext4"):
            return Check("loop devices", False, "mkfs.ext4 is missing: the host strategy makes staging areas with it",
                         "apt-get install e2fsprogs (or run playbooks/runtime.yml)")
        if ok:
            return Check("loop devices", True, "s3fs staging areas (loop-mounted, size-capped) can be made")
        return Check("loop devices", False, f"{path} is missing: the host strategy stages files in loop-mounted images",
                     "modprobe loop")

    def volume_driver(self, settings: ValidSettings) -> Check:
        from .volumed.client import call

        try:
            answer = call(settings.volume_driver, "Plugin.Activate")
        except SandboxHostError as exc:
            return Check("volume driver", False, str(exc),
                         "start the sandbox-host-volumes service (playbooks/runtime.yml)")
        if "VolumeDriver" not in answer.get("Implements", []):
            return Check("volume driver", False, f"{settings.volume_driver} answers but is not a volume driver",
                         "remove the stale socket and restart sandbox-host-volumes")
        return Check("volume driver", True, f"{settings.volume_driver} answers at {facts.PLUGIN_DIR}")

    def agreement(self, settings: ValidSettings) -> Check:
        from .mounts import HostMount

        try:
            HostMount().check(settings)
        except SandboxHostError as exc:
            return Check("volume service settings", False, str(exc),
                         "make this host's settings and the volume service's one (the same config file)")
        return Check("volume service settings", True, "this command's settings are the volume service's")

    def network(self, settings: ValidSettings) -> Check:
        from .volumed.client import call

        try:
            status = call(settings.volume_driver, "SandboxHost.Network", timeout=5)
        except SandboxHostError as exc:
            return Check("sessions' network", False, str(exc), "start the sandbox-host-volumes service")
        if not status.get("Ready"):
            problem = status.get("Problem") or status.get("Err") or "unknown"
            return Check("sessions' network", False, f"{settings.network} is not guarded: {problem}",
                         "see the volume service's log (journalctl -u sandbox-host-volumes, or "
                         "/var/log/sandbox-host-volumes.log)")
        return Check("sessions' network", True, f"{status['Network']}: guarded by the nftables table {status['Table']}")

    def engine(self) -> tuple[Check, docker.DockerClient | None]:
        try:
            client = self._docker_factory()
            version = client.version().get("Version", "?")
        except SandboxHostError as exc:
            return Check("docker engine", False, str(exc), "apt-get install docker.io; start dockerd"), None
        return Check("docker engine", True, f"reachable, version {version}"), client

    def image(self, client: docker.DockerClient | None, settings: ValidSettings) -> Check:
        name = settings.image
        if client is None:
            return Check("executor image", False, f"cannot check {name}: no Docker engine", "start the Docker engine")
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            return Check("executor image", False, f"{name} not found", "sandbox-host image build")
        # The host strategy needs python3 (with ctypes, for the executor's guards); the
        # in-container one s3fs as well.
        probe = ["python3", "-c", "import ctypes, sys; print(sys.version.split()[0])"]
        if settings.mount == "in-container":
            probe = ["sh", "-c", "s3fs --version | head -n 1 && python3 -c 'import ctypes'"]
        try:
            out = client.containers.run(name, entrypoint=probe, command=[], remove=True, network_mode="none",
                                        cap_drop=["ALL"], user="65534:65534")
        except docker.errors.ContainerError as exc:
            return Check("executor image", False, f"{name} cannot run sessions ({' '.join(probe)}): {exc}",
                         "sandbox-host image build --force")
        except docker.errors.APIError as exc:
            return Check("executor image", False, f"{name}: {exc.explanation}", "sandbox-host image build --force")
        version = out.decode(errors="replace").strip().splitlines()[0] if out else "?"
        return Check("executor image", True, f"{name} present, {version}")

    def s3(self, settings: ValidSettings) -> list[Check]:
        storage = SessionStorage(settings)
        checks = []
        try:
            storage.client.list_buckets()  # reachability and credentials in one call
            checks.append(Check("s3 endpoint", True, f"{settings.s3_endpoint} reachable"))
            checks.append(Check("s3 credentials", True, f"accepted for access key {settings.access_key}"))
        except Exception as exc:  # noqa: BLE001 - reported as a failed check
            error = explain_error(exc, settings, "list buckets")
            unreachable = error.kind == "unreachable"
            checks.append(Check("s3 endpoint", not unreachable, str(error) if unreachable else
                                f"{settings.s3_endpoint} reachable",
                                "start the object store or fix SANDBOX_S3_ENDPOINT" if unreachable else ""))
            if not unreachable:
                checks.append(Check("s3 credentials", False, str(error),
                                    "fix AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"))
            return checks
        try:
            storage.check_bucket()
            checks.append(Check("s3 bucket", True, f"{settings.bucket} present"))
        except StorageError as exc:
            checks.append(Check("s3 bucket", False, str(exc),
                                "sandbox-host s3 ensure-bucket (or run playbooks/object_store.yml)"))
        if settings.scoped_credentials:
            try:
                credentials.mint(settings, session_id("sandbox-host-doctor"))
                checks.append(Check("scoped credentials", True,
                                    f"STS AssumeRole ({settings.sts_role_arn}) mints per-session keys"))
            except SandboxHostError as exc:
                checks.append(Check("scoped credentials", False, str(exc),
                                    "set sts_role_arn to a role the key may assume (MinIO ignores it), "
                                    "or scoped_credentials = false"))
        return checks
