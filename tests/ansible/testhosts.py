"""Test hosts: containers running systemd as PID 1, built here from Debian's archive.

Each host gets its own Docker storage on a volume (so the engine the playbook installs inside
works), /dev/fuse, and explicit capabilities (--privileged is refused on these machines).
Ansible and testinfra reach them with `docker exec`, never over IP.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import docker
import docker.errors

from provisioning.aptmirror import debian_mirror

if TYPE_CHECKING:
    from .conftest import Controller  # imported where used, at run time

CACHE = Path(os.environ.get("SANDBOX_TEST_CACHE", "/var/cache/sandbox-host/test-hosts"))
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-apt", "ca-certificates", "procps", "iproute2")
PYTHON = {"bookworm": "3.11", "trixie": "3.13"}


def host_spec() -> dict:
    """The test hosts' container definition, shared with the Molecule scenarios: the platform in
    extensions/molecule/config.yml (capabilities, security options, tmpfs, stop signal)."""
    import yaml

    from .conftest import ROOT

    return yaml.safe_load((ROOT / "extensions/molecule/config.yml").read_text())["platforms"][0]


def log(message: str) -> None:
    print(f"test-hosts: {message}", file=sys.stderr, flush=True)


def image_tag(suite: str) -> str:
    return f"sandbox-host-testhost:{suite}"


def build_image(client: docker.DockerClient, suite: str) -> str:
    """debootstrap SUITE with systemd, cached as a tarball and as an image."""
    tag = image_tag(suite)
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    CACHE.mkdir(parents=True, exist_ok=True)
    tarball = CACHE / f"{suite}.tar"
    if not tarball.exists():
        rootfs = CACHE / f"rootfs-{suite}"
        subprocess.run(["rm", "-rf", str(rootfs)], check=True)
        log(f"debootstrap {suite} (about a minute)")
        started = time.monotonic()
        subprocess.run(["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), suite, str(rootfs),
                        debian_mirror(suite)],
                       check=True, stdout=subprocess.DEVNULL)
        # Units that cannot work in a container, and a machine id made at boot.
        for unit in ("getty@tty1.service", "systemd-remount-fs.service", "systemd-udevd.service",
                     "systemd-modules-load.service", "sys-kernel-config.mount", "sys-kernel-debug.mount"):
            (rootfs / "etc/systemd/system" / unit).unlink(missing_ok=True)
            (rootfs / "etc/systemd/system" / unit).symlink_to("/dev/null")
        (rootfs / "etc/machine-id").write_text("")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tarball) + ".partial", "."], check=True)
        os.rename(str(tarball) + ".partial", tarball)
        subprocess.run(["rm", "-rf", str(rootfs)], check=True)
        log(f"debootstrap {suite}: {time.monotonic() - started:.0f}s")
    repository, _, version = tag.partition(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=version,
                                      changes=['CMD ["/sbin/init"]', "ENV container=docker"])
    return tag


def start(client: docker.DockerClient, suite: str, name: str) -> docker.models.containers.Container:
    remove(client, name)
    spec = host_spec()
    # /proc/sys writable, as on a real host (docker run's --security-opt systempaths=unconfined,
    # which the API spells as empty masked and read-only path lists): an engine inside sets
    # sysctls in each of its containers' network namespaces (Docker 26 turns IPv6 off on IPv4-only
    # interfaces, and fails the container where it cannot).
    host_config = client.api.create_host_config(
        cgroupns=spec["cgroupns_mode"],
        binds={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
               f"{name}-docker": {"bind": "/var/lib/docker", "mode": "rw"}},
        tmpfs=dict(entry.split(":", 1) for entry in spec["tmpfs"]),
        cap_drop=["ALL"],
        cap_add=spec["capabilities"],
        security_opt=spec["security_opts"],
        # /dev/fuse for s3fs; loop devices for the volume service's staging areas (the kernel hands
        # out the lowest free loop device machine-wide, so the host's own nodes are passed).
        devices=["/dev/fuse:/dev/fuse:rwm", *loop_devices()],
        device_cgroup_rules=["b 7:* rmw", "c 10:237 rmw"],
    )
    host_config.update(MaskedPaths=[], ReadonlyPaths=[])
    created = client.api.create_container(image_tag(suite), name=name, hostname=name, host_config=host_config,
                                          stop_signal=spec["stop_signal"], labels={"io.sandbox-host.test-host": suite},
                                          volumes=["/sys/fs/cgroup", "/var/lib/docker"])
    client.api.start(created["Id"])
    container = client.containers.get(created["Id"])
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        state = container.exec_run(["systemctl", "is-system-running"]).output.decode().strip()
        if state in ("running", "degraded"):
            return container
        time.sleep(0.5)
    raise RuntimeError(f"{name}: systemd did not finish booting (state {state!r})")


LOOP_DEVICES = 32


def loop_devices() -> list[str]:
    """/dev/loop-control and /dev/loop0..31, made on this host where missing."""
    for number in range(LOOP_DEVICES):
        node = Path(f"/dev/loop{number}")
        if not node.exists():
            os.mknod(node, 0o660 | stat.S_IFBLK, os.makedev(7, number))
    return ["/dev/loop-control:/dev/loop-control:rwm",
            *(f"/dev/loop{n}:/dev/loop{n}:rwm" for n in range(LOOP_DEVICES))]


def remove(client: docker.DockerClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.containers.get(name).remove(force=True, v=False)
    # Looked up with the driver named: Docker asks every volume driver it ever met about a name it
    # does not know, and a driver gone since (the tests' own) makes that wait for a minute.
    for volume in client.api.volumes(filters={"driver": "local", "name": f"{name}-docker"}).get("Volumes") or []:
        if volume["Name"] == f"{name}-docker":
            client.api.remove_volume(volume["Name"], force=True)


def runtime_requirements(root: Path) -> list[str]:
    """The runtime's dependencies and its server extra, as pyproject.toml states them."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["server"]]


def wheelhouse(root: Path, pip: Path, python_version: str) -> Path:
    """Wheels of the runtime's dependencies for the test host's Python: the air-gapped install path.
    Cached per set of requirements."""
    import hashlib

    requirements = runtime_requirements(root)
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:10]
    target = CACHE / f"wheels-py{python_version}-{key}"
    stamp = target / ".complete"
    if stamp.exists():
        return target
    target.mkdir(parents=True, exist_ok=True)
    log(f"downloading wheels for Python {python_version}")
    subprocess.run(
        [str(pip), "download", "-q", "--disable-pip-version-check", "--dest", str(target), "--only-binary=:all:",
         "--python-version", python_version, "--implementation", "cp",
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
         "--platform", "manylinux2014_x86_64", "--platform", "any", *requirements],
        check=True,
    )
    stamp.write_text("")
    return target


def wheelhouse_archive(root: Path, pip: Path, python_version: str) -> Path:
    """The wheelhouse as one tar archive (what the sandbox_host role ships to air-gapped hosts)."""
    wheels = wheelhouse(root, pip, python_version)
    archive = wheels.parent / f"{wheels.name}.tar"
    if not archive.exists():
        names = sorted(p.name for p in wheels.glob("*.whl"))
        subprocess.run(["tar", "-C", str(wheels), "-cf", str(archive) + ".partial", *names], check=True)
        os.rename(str(archive) + ".partial", archive)
    return archive


def offline_base_tarball(client: docker.DockerClient) -> Path:
    """The executor image's offline base, as `sandbox-host image build` caches it on the controller."""
    from provisioning.image import DEFAULT_SUITE, ImageBuilder, debian_base_tarball, default_cache_dir

    tarball = debian_base_tarball(default_cache_dir(), DEFAULT_SUITE)
    if not tarball.exists():
        log("debootstrap of the executor image's offline base (about two minutes)")
        ImageBuilder(client, log=log)._debootstrap(DEFAULT_SUITE, debian_mirror(DEFAULT_SUITE), tarball)
    return tarball


def address(client: docker.DockerClient, name: str) -> str:
    """A test host's address on the outer engine's bridge: where the other test hosts reach it."""
    container = client.containers.get(name)
    return str(container.attrs["NetworkSettings"]["IPAddress"])


def write_inventory(path: Path, hosts: dict[str, str], client: docker.DockerClient, *,
                    swarm_manager: str | None = None) -> None:
    """An inventory for test hosts {container name: suite}: dev object store, offline installs, docker exec.

    With ``swarm_manager``, the hosts form a swarm: that host is its manager and serves the one
    object store the fleet shares, on its bridge address (the others reach it there); without,
    each host serves its own on 127.0.0.1."""
    from .conftest import BIN, ROOT

    user, password = "test" + secrets.token_hex(4), secrets.token_urlsafe(24)
    lines = ["[sandbox_hosts]"]
    for name, suite in hosts.items():
        wheels = wheelhouse_archive(ROOT, BIN / "pip", PYTHON[suite])
        lines.append(f"{name} ansible_connection=community.docker.docker ansible_python_interpreter=/usr/bin/python3 "
                     f"ansible_user=root ansible_become=false sandbox_host_wheelhouse_archive={wheels}")
    if swarm_manager:
        store = address(client, swarm_manager)
        lines += ["", "[swarm_managers]", swarm_manager, "", "[object_store]", swarm_manager]
        lines += ["", "[object_store:vars]", f"object_store_address={store}"]
    else:
        store = "127.0.0.1"
        lines += ["", "[object_store]", *hosts]
    lines += ["", "[all:vars]",
              "object_store_backend=dev",
              f"object_store_root_user={user}",
              f"object_store_root_password={password}",
              "sandbox_host_config=" + json.dumps({"s3_endpoint": f"http://{store}:9000", "bucket": "sandbox-sessions",
                                                   "access_key": user, "secret_key": password}),
              # The engine inside a test host: no default bridge (its subnet would be the outer one's);
              # the sessions' network is the volume service's (or the swarm's) own.
              "sandbox_docker_daemon_options={'bridge': 'none'}",
              "executor_image_offline=true",
              f"executor_image_base_tarball={offline_base_tarball(client)}"]
    if swarm_manager:
        # The fleet's CA for this run only, next to the inventory (never in the repository).
        lines.append(f"sandbox_swarm_ca_dir={path.parent / 'ca'}")
    path.write_text("\n".join(lines) + "\n")


# What an adopter's ansible.cfg needs for site.yml (its own, not this checkout's): facts gathered
# once per host across the imported playbooks, pipelining.
ADOPTER_ANSIBLE_CFG = """[defaults]
host_key_checking = False
gathering = smart
fact_caching = memory
callback_result_format = yaml
display_skipped_hosts = False
retry_files_enabled = False

[connection]
pipelining = True
"""


def adopter_controller(root: Path, workdir: Path) -> Controller:
    """A controller as someone adopting the collection has it, outside this checkout: a fresh
    virtualenv with ansible-core and the pinned collections, and sandbox_host.platform installed
    from the tarball `ansible-galaxy collection build` makes (scripts/build-collection.sh)."""
    import tomllib

    from .conftest import BIN, Controller

    started = time.monotonic()
    build = subprocess.run(["bash", "scripts/build-collection.sh", str(workdir / "dist")], cwd=root, check=True,
                           capture_output=True, text=True)
    tarball = build.stdout.strip().splitlines()[-1]
    venv = workdir / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    core = [r for r in tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
            if r.startswith("ansible-core")]
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", *core], check=True)
    subprocess.run([str(BIN / "python"), "scripts/install-collections.py", str(venv / "bin/python")], cwd=root,
                   check=True)
    site = subprocess.run([str(venv / "bin/python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([str(venv / "bin/ansible-galaxy"), "collection", "install", "--offline", "--no-deps", "-p", site,
                    tarball], check=True, cwd=workdir, stdout=subprocess.DEVNULL)
    config = workdir / "ansible.cfg"
    config.write_text(ADOPTER_ANSIBLE_CFG)
    log(f"collection {Path(tarball).name} installed in a fresh virtualenv: {time.monotonic() - started:.0f}s")
    return Controller(venv / "bin", workdir, config)
