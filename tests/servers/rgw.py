"""Ceph RADOS Gateway (RGW) as a loopback S3 server for tests: a real S3 service that enforces STS session policies.

One container on the host network runs one monitor, one memstore OSD (objects in RAM) and radosgw, every daemon
bound to 127.0.0.1 on ports chosen free at start. The image is Debian 12 plus Ceph from Debian's archive, built with
debootstrap (no registry is needed) and cached as a rootfs tarball and as an image.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from provisioning import mountinfo
from provisioning.aptmirror import debian_mirror
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import docker
import docker.errors
import docker.models.containers

SUITE = "bookworm"
IMAGE_TAG = f"sandbox-host-rgw:{SUITE}"
PACKAGES = ("ceph-mon", "ceph-osd", "radosgw", "ceph-common")
LABEL = "io.sandbox-host.test-rgw"
DEFAULT_CACHE_PARENT = Path("/var/cache/sandbox-host")
APT_DIR = Path("/etc/apt")
REGION = "us-east-1"
ROLE_NAME = "sandbox-session"
USER_ID = "sandbox-admin"
# The longest session RGW allows (and the longest a sandbox session may last): AssumeRole with DurationSeconds
# above the role's max session duration is refused.
MAX_SESSION_SECONDS = 43200
MEMSTORE_BYTES = 6 * 1024**3  # in RAM, taken as used: the tests write files of up to 2 GB
SCRIPT_PATH = "/usr/local/sbin/sandbox-rgw-start"
LOG_DIR = "/var/log/ceph"

# Not needed at run time: removed from the rootfs to keep the image lean.
_SLIM_PATHS = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
               "var/cache/apt", "var/lib/apt/lists")
# Ceph tools the packages ship that the fixture never runs (about 110 MB of the image).
_UNUSED_TOOLS = ("ceph-objectstore-tool", "ceph-bluestore-tool", "ceph-kvstore-tool", "ceph-monstore-tool",
                 "ceph-osdomap-tool", "ceph-dencoder", "ceph-syn", "cephfs-data-scan", "cephfs-journal-tool",
                 "cephfs-table-tool", "radosgw-es", "radosgw-object-expirer", "rbd")

Log = Callable[[str], None]


class RGWError(RuntimeError):
    """The RGW fixture could not be built or started."""


# -- Debian archive ------------------------------------------------------------------------------------------------


# -- image ---------------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return Path(os.environ.get("SANDBOX_TEST_CACHE", str(DEFAULT_CACHE_PARENT))) / "rgw"


def _unmount_under(root: Path) -> None:
    """Unmount what a failed debootstrap may have left mounted (proc, sys) before its rootfs is removed."""
    targets = [m.mount_point for m in mountinfo.under(root.resolve())]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)


def _debootstrap(rootfs: Path, mirror: str) -> None:
    if shutil.which("debootstrap") is None:
        raise RGWError("debootstrap is not installed: apt-get install debootstrap (it builds the RGW image)")
    if os.geteuid() != 0:
        raise RGWError("building the RGW image needs root (debootstrap); or import a cached tarball as root once")
    cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), SUITE, str(rootfs), mirror]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise RGWError(f"debootstrap {SUITE} from {mirror} failed ({tail}); check the mirror "
                       "(SANDBOX_DEBIAN_MIRROR overrides the host's apt sources)")


def _slim(rootfs: Path) -> None:
    for rel in _SLIM_PATHS:
        target = rootfs / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
            target.mkdir()
    for tool in _UNUSED_TOOLS:
        (rootfs / "usr/bin" / tool).unlink(missing_ok=True)


def build_rootfs_tarball(tarball: Path, mirror: str, log: Log = print) -> None:
    """debootstrap Debian with Ceph, slim it and tar it to TARBALL (written whole or not at all)."""
    tarball.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tarball.parent, prefix="rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        started = time.monotonic()
        log(f"rgw: debootstrap {SUITE} + {' '.join(PACKAGES)} from {mirror} (about 90 s)")
        try:
            _debootstrap(rootfs, mirror)
            _slim(rootfs)
            partial = tarball.with_name(tarball.name + ".partial")
            subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(partial), "."], check=True)
            partial.rename(tarball)
        finally:
            _unmount_under(Path(tmp))
        size_mb = tarball.stat().st_size / 1e6
        log(f"rgw: rootfs tarball {tarball} ({size_mb:.0f} MB) in {time.monotonic() - started:.0f}s")


def build_image(client: docker.DockerClient, log: Log = print) -> str:
    """The RGW image's tag: the image if present, else imported from the cached tarball, else built from scratch."""
    try:
        client.images.get(IMAGE_TAG)
        return IMAGE_TAG
    except docker.errors.ImageNotFound:
        pass
    tarball = cache_dir() / f"rootfs-{SUITE}.tar"
    if not tarball.is_file():
        build_rootfs_tarball(tarball, debian_mirror(SUITE), log)
    started = time.monotonic()
    repository, _, tag = IMAGE_TAG.partition(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag,
                                      changes=["ENV LANG=C.UTF-8", 'CMD ["/bin/sh"]'])
    try:
        client.images.get(IMAGE_TAG)
    except docker.errors.ImageNotFound:
        raise RGWError(f"docker import of {tarball} did not produce {IMAGE_TAG}; "
                       "delete the tarball to rebuild it") from None
    log(f"rgw: imported {tarball} as {IMAGE_TAG} in {time.monotonic() - started:.0f}s")
    return IMAGE_TAG


# -- server --------------------------------------------------------------------------------------------------------

# PID 1 of the container. Any daemon that exits ends the container, so a failure shows at once.
START_SCRIPT = r"""#!/bin/sh
set -eu

step() { printf 'sandbox-rgw: %s\n' "$*"; }

# Non-interactive sh keeps its children in its process group: on TERM, end them all.
trap 'trap - TERM INT; kill -TERM 0 2>/dev/null || true; exit 143' TERM INT

daemon() {
    (
        if "$@"; then status=0; else status=$?; fi
        step "$1 exited with status $status"
        kill -TERM 1
    ) &
}

mkdir -p /run/ceph "$LOG_DIR" /var/lib/ceph/mon/ceph-a /var/lib/ceph/radosgw/ceph-rgw.gw

step "monitor on 127.0.0.1:$MON_PORT"
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" /run/ceph/monmap >/dev/null
ceph-mon --mkfs -i a --monmap /run/ceph/monmap
daemon ceph-mon -f -i a

step "osd (memstore, $MEMSTORE_BYTES bytes)"
osd_uuid=$(cat /proc/sys/kernel/random/uuid)
osd_id=$(ceph --connect-timeout 30 osd new "$osd_uuid")
mkdir -p "/var/lib/ceph/osd/ceph-$osd_id"
ceph-osd -i "$osd_id" --mkfs --osd-uuid "$osd_uuid"
daemon ceph-osd -f -i "$osd_id"

# The role is made over IAM once radosgw serves: radosgw-admin 16.2 cannot set its max session duration.
step "user $RGW_USER"
radosgw-admin user create --uid="$RGW_USER" --display-name="sandbox-host tests" \
    --access-key="$RGW_ACCESS_KEY" --secret-key="$RGW_SECRET_KEY" >/dev/null
radosgw-admin caps add --uid="$RGW_USER" --caps="roles=*" >/dev/null

step "radosgw on 127.0.0.1:$RGW_PORT"
daemon radosgw -f -n client.rgw.gw
step "started"
wait
"""


def _ceph_conf(fsid: str, mon_port: int, rgw_port: int, sts_key: str, memstore_bytes: int) -> str:
    return f"""[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
public network = 127.0.0.0/8
ms bind msgr1 = false
# No cephx: a throwaway single-node cluster. Without cephx, radosgw fails to reach the monitor (error -13)
# unless the monitor client mode is crc.
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
run dir = /run/ceph
log file = {LOG_DIR}/$cluster-$name.log
# One OSD: pools of size 1, few placement groups, no autoscaler.
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail crit = 1
# 13 s to start with the defaults, about 1.5 s with these.
paxos propose interval = 0.01
paxos min wait = 0.01

[osd]
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
# The weight would otherwise follow the 2 GB store and round to nothing: no placement groups would map.
osd crush initial weight = 1

[client.rgw.gw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
# The default, 512, is threads a test never uses.
rgw thread pool size = 64
rgw s3 auth use sts = true
rgw sts key = {sts_key}
# A deleted object's data stays in the store until garbage collection, by default 2 h later. In a memstore of a
# few GB, the suite's large files (deleted, overwritten) would fill it and the OSD would then hold every write:
# collect them at once.
rgw gc obj min wait = 0
rgw gc processor period = 5
"""


def compact_json(value: Any) -> str:
    """JSON without spaces: RGW 16.2 answers 400 "failed to parse policy" to policies with spaces in a form body."""
    return json.dumps(value, separators=(",", ":"))


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the daemon binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tar_files(files: dict[str, tuple[str, int]]) -> bytes:
    """A tar archive of {path: (text, mode)} for put_archive at /."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, (text, mode) in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def boto3_config(**overrides: Any) -> botocore.config.Config:
    """Path-style SigV4. Checksums only where an operation requires them: botocore >= 1.36 adds CRC32 checksums to
    every upload by default, a protocol extension Ceph 16.2 predates."""
    settings: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "connect_timeout": 5,
        "read_timeout": 120,
        "retries": {"max_attempts": 2, "mode": "standard"},
    }
    settings.update(overrides)
    return botocore.config.Config(**settings)


class RGWServer:
    """One RGW container: `with RGWServer(client) as rgw: boto3.client("s3", endpoint_url=rgw.endpoint, ...)`."""

    def __init__(self, client: docker.DockerClient, image: str = IMAGE_TAG, *,
                 memstore_bytes: int = MEMSTORE_BYTES, log: Log = print) -> None:
        self.client = client
        self.image = image
        self.memstore_bytes = memstore_bytes
        self.log = log
        self.region = REGION
        self.user_id = USER_ID
        self.role_name = ROLE_NAME
        self.access_key = "RGW" + secrets.token_hex(8).upper() + "X"
        self.secret_key = secrets.token_urlsafe(30)
        self.sts_key = secrets.token_hex(8)
        self.name = f"sandbox-rgw-{secrets.token_hex(4)}"
        self.rgw_port = 0
        self.mon_port = 0
        self.container: docker.models.containers.Container | None = None

    @property
    def endpoint(self) -> str:
        if not self.rgw_port:
            raise RGWError(f"{self.name} is not started: call start() or use it as a context manager")
        return f"http://127.0.0.1:{self.rgw_port}"

    @property
    def role_arn(self) -> str:
        return f"arn:aws:iam:::role/{self.role_name}"

    @property
    def user_arn(self) -> str:
        return f"arn:aws:iam:::user/{self.user_id}"

    # -- life cycle ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 90) -> RGWServer:
        if self.container is not None:
            raise RGWError(f"{self.name} is already started")
        started = time.monotonic()
        self.mon_port = free_port()
        self.rgw_port = free_port()
        while self.rgw_port == self.mon_port:
            self.rgw_port = free_port()
        fsid = str(uuid.uuid4())
        self.container = self.client.containers.create(
            self.image,
            command=["/bin/sh", SCRIPT_PATH],
            name=self.name,
            network_mode="host",
            labels={LABEL: "1"},
            environment=self._environment(fsid),
            # The monitor's store: RAM is faster than the overlay and goes with the container.
            tmpfs={"/var/lib/ceph": "rw,size=256m"},
        )
        try:
            conf = _ceph_conf(fsid, self.mon_port, self.rgw_port, self.sts_key, self.memstore_bytes)
            self.container.put_archive("/", _tar_files({"etc/ceph/ceph.conf": (conf, 0o644),
                                                        SCRIPT_PATH: (START_SCRIPT, 0o755)}))
            self.container.start()
            self.wait_ready(timeout)
            self._create_role()
        except BaseException:
            self.stop()
            raise
        self.log(f"rgw: {self.name} ready at {self.endpoint} in {time.monotonic() - started:.1f}s")
        return self

    def _environment(self, fsid: str) -> dict[str, str]:
        return {
            "MON_PORT": str(self.mon_port), "RGW_PORT": str(self.rgw_port), "LOG_DIR": LOG_DIR,
            "MEMSTORE_BYTES": str(self.memstore_bytes), "FSID": fsid,
            "RGW_USER": self.user_id, "RGW_ACCESS_KEY": self.access_key, "RGW_SECRET_KEY": self.secret_key,
        }

    def _create_role(self) -> None:
        """The role sessions assume: trusted by our user, s3:* on everything, sessions of up to 12 h.

        IAM CreateRole, not radosgw-admin: only the API takes MaxSessionDuration in Ceph 16.2 (radosgw-admin
        makes 3600 s roles, and AssumeRole with a longer DurationSeconds is refused).
        """
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": [self.user_arn]}, "Action": ["sts:AssumeRole"]}]}
        allow_s3 = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["s3:*"], "Resource": ["arn:aws:s3:::*"]}]}
        iam = self._client("iam", None, None, None, None)
        try:
            role = iam.create_role(RoleName=self.role_name, Path="/", AssumeRolePolicyDocument=compact_json(trust),
                                   MaxSessionDuration=MAX_SESSION_SECONDS)["Role"]
            iam.put_role_policy(RoleName=self.role_name, PolicyName="allow-s3", PolicyDocument=compact_json(allow_s3))
        except botocore.exceptions.ClientError as exc:
            raise RGWError(f"{self.name}: cannot create role {self.role_name}: {exc}\n{self.logs_tail()}") from None
        if role["Arn"] != self.role_arn:
            raise RGWError(f"{self.name}: role {self.role_name} has ARN {role['Arn']}, expected {self.role_arn}")

    def wait_ready(self, timeout: float = 60) -> float:
        """Poll a signed ListBuckets until it succeeds; the seconds it took. RGWError with the logs' tails if not."""
        if self.container is None:
            raise RGWError(f"{self.name} is not started: call start() first")
        s3 = self.s3_client(config=boto3_config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}))
        started = time.monotonic()
        last_error = "no answer yet"
        while time.monotonic() - started < timeout:
            self.container.reload()
            if self.container.status not in ("created", "running"):
                raise RGWError(f"{self.name} exited ({self.container.status}) before serving\n{self.logs_tail()}")
            try:
                s3.list_buckets()
                return time.monotonic() - started
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise RGWError(f"{self.name}: no signed ListBuckets answer at {self.endpoint} within {timeout:.0f}s "
                       f"(last: {last_error})\n{self.logs_tail()}")

    def stop(self) -> None:
        """Remove the container (its data lives in RAM and goes with it)."""
        container, self.container = self.container, None
        if container is None:
            return
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)

    def __enter__(self) -> RGWServer:
        if self.container is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- diagnostics --------------------------------------------------------------------------------------------

    def logs_tail(self, lines: int = 25) -> str:
        """The last LINES of the start script's output and of each daemon's log file."""
        if self.container is None:
            return "(no container)"
        parts = ["--- start script ---", self.container.logs(tail=lines).decode(errors="replace").rstrip()]
        try:
            chunks, _ = self.container.get_archive(LOG_DIR)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
                for member in sorted(archive.getmembers(), key=lambda m: m.name):
                    handle = archive.extractfile(member) if member.isfile() else None
                    if handle is not None:
                        text = handle.read().decode(errors="replace").splitlines()[-lines:]
                        parts += [f"--- {member.name} ---", *text]
        except docker.errors.APIError as exc:
            parts.append(f"(cannot read {LOG_DIR}: {exc})")
        return "\n".join(parts)

    # -- clients ------------------------------------------------------------------------------------------------

    def s3_client(self, access_key: str | None = None, secret_key: str | None = None,
                  session_token: str | None = None, config: botocore.config.Config | None = None) -> Any:
        return self._client("s3", access_key, secret_key, session_token, config)

    def sts_client(self, config: botocore.config.Config | None = None) -> Any:
        return self._client("sts", None, None, None, config)

    def _client(self, service: str, access_key: str | None, secret_key: str | None,
                session_token: str | None, config: botocore.config.Config | None) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            aws_session_token=session_token,
            config=config or boto3_config(),
        )
