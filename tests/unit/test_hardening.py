"""A session's container is described once (provisioning/backends/container.py) and each backend
translates all of it. For every part of the description, this reads the part back out of what
each backend hands its engine; a backend that dropped or changed a part, or a part added to the
description that a backend does not carry, fails here."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from provisioning import egress, facts
from provisioning.backends.base import SessionSpec
from provisioning.backends.container import SessionContainer, Tmpfs, describe
from provisioning.backends.docker import create_arguments
from provisioning.backends.swarm import task_template
from provisioning.config import Settings
from provisioning.errors import SessionError
from provisioning.mounts import HostMount, VolumeSpec
from provisioning.validation import session_id

SETTINGS = Settings(s3_endpoint="http://127.0.0.1:9", bucket="hard-bucket", access_key="AK", secret_key="SK",
                    memory="768m", cpus=1.5, pids_limit=77, tmp_size="64m", log_max_size="3m",
                    egress="allow=203.0.113.0/24,198.51.100.7")
SID, UID = session_id("hard1"), 1900000042
EXECUTOR = ["python3", "-I", "-S", "/x/executor.py", "--socket", "/x/sock", "--workspace", "/workspace"]


def docker_form(container: SessionContainer) -> dict[str, Any]:
    return create_arguments(container, [])


def swarm_form(container: SessionContainer) -> dict[str, Any]:
    return dict(task_template(container, [], cpus_reserved=0.25))


def _docker_tmpfs(kwargs: dict[str, Any]) -> tuple[Tmpfs, ...]:
    found = []
    for target, options in kwargs["tmpfs"].items():
        opts = dict(part.partition("=")[::2] for part in options.split(","))
        assert "nosuid" in opts and "nodev" in opts
        found.append(Tmpfs(target, int(opts["size"]), int(opts["mode"], 8), "noexec" in opts))
    return tuple(found)


def _swarm_mounts(task: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [m for m in task["ContainerSpec"]["Mounts"] if m["Type"] == kind]


def _swarm_workspace(task: dict[str, Any]) -> VolumeSpec | None:
    for mount in _swarm_mounts(task, "volume"):
        if mount["Target"] == facts.MOUNTPOINT:
            config = mount["VolumeOptions"]["DriverConfig"]
            options = {k: v for k, v in config["Options"].items() if k != "ephemeral"}  # Swarm's own addition
            return VolumeSpec(mount["Source"], config["Name"], options, mount["Target"])
    return None


def _docker_workspace(kwargs: dict[str, Any]) -> VolumeSpec | None:
    for mount in kwargs["mounts"]:
        if mount["Type"] == "volume" and mount["Target"] == facts.MOUNTPOINT:
            config = mount["VolumeOptions"]["DriverConfig"]
            return VolumeSpec(mount["Source"], config["Name"], config["Options"], mount["Target"])
    return None


def _docker_network(kwargs: dict[str, Any]) -> tuple[str, egress.EgressPolicy]:
    policy = egress.parse(kwargs["labels"][facts.LABEL_EGRESS])
    mode = kwargs["network_mode"]
    assert (mode == "none") == (not policy.networked)  # "none": no interface at all
    return kwargs["network_mode"] if policy.networked else SETTINGS.network, policy


# Each part of the description as each backend's engine would receive it: (docker, swarm).
Extract = Callable[[dict[str, Any]], Any]
READ_BACK: dict[str, tuple[Extract, Extract]] = {
    "name": (lambda d: d["name"], lambda s: None),  # swarm: the service's name (SwarmBackend.launch)
    "image": (lambda d: d["image"], lambda s: s["ContainerSpec"]["Image"]),
    "labels": (lambda d: d["labels"], lambda s: s["ContainerSpec"]["Labels"]),
    "command": (lambda d: tuple(d["entrypoint"]) if d["command"] == [] else None,
                lambda s: tuple(s["ContainerSpec"]["Command"]) if s["ContainerSpec"]["Args"] == [] else None),
    "env": (lambda d: d["environment"],
            lambda s: dict(item.split("=", 1) for item in s["ContainerSpec"]["Env"])),
    "workdir": (lambda d: d["working_dir"], lambda s: s["ContainerSpec"]["Dir"]),
    "workspace": (_docker_workspace, _swarm_workspace),
    "user": (lambda d: d["user"], lambda s: s["ContainerSpec"]["User"]),
    "cap_drop": (lambda d: tuple(d["cap_drop"]), lambda s: tuple(s["ContainerSpec"]["CapabilityDrop"])),
    "cap_add": (lambda d: tuple(d["cap_add"]), lambda s: tuple(s["ContainerSpec"].get("CapabilityAdd") or ())),
    "devices": (lambda d: tuple(d["devices"]), lambda s: ()),  # swarm refuses any (tested below)
    "no_new_privileges": (lambda d: "no-new-privileges" in d["security_opt"],
                          # Swarm 20.10 has no field: the executor sets it on itself, so the task must run it.
                          lambda s: s["ContainerSpec"]["Command"][3].endswith("/executor.py")),
    "security_opt": (lambda d: tuple(o for o in d["security_opt"] if o != "no-new-privileges"), lambda s: ()),
    "read_only_root": (lambda d: d["read_only"], lambda s: s["ContainerSpec"]["ReadOnly"]),
    "tmpfs": (_docker_tmpfs,
              lambda s: tuple(Tmpfs(m["Target"], m["TmpfsOptions"]["SizeBytes"], m["TmpfsOptions"]["Mode"])
                              for m in _swarm_mounts(s, "tmpfs"))),
    "memory_bytes": (lambda d: d["mem_limit"] if d["memswap_limit"] == d["mem_limit"] else None,
                     lambda s: s["Resources"]["Limits"]["MemoryBytes"]),
    "nano_cpus": (lambda d: d["nano_cpus"], lambda s: s["Resources"]["Limits"]["NanoCPUs"]),
    "pids_limit": (lambda d: d["pids_limit"], lambda s: s["Resources"]["Limits"]["Pids"]),
    "log_max_size": (lambda d: (d["log_config"]["Config"]["max-size"] if d["log_config"]["Type"] == "json-file"
                                else None),
                     lambda s: (s["LogDriver"]["Options"]["max-size"] if s["LogDriver"]["Name"] == "json-file"
                                else None)),
    "log_files": (lambda d: int(d["log_config"]["Config"]["max-file"]),
                  lambda s: int(s["LogDriver"]["Options"]["max-file"])),
    "network": (lambda d: _docker_network(d)[0], lambda s: s["Networks"][0]["Target"]),
    "egress": (lambda d: _docker_network(d)[1],
               lambda s: egress.parse(s["ContainerSpec"]["Labels"][facts.LABEL_EGRESS])),
    "init": (lambda d: d["init"], lambda s: s["ContainerSpec"]["Init"]),
}


def host_session(**changes: Any) -> SessionContainer:
    settings = dataclasses.replace(SETTINGS, **changes).validated()
    plan = HostMount().plan(SID, settings, UID)
    return describe(SessionSpec(SID, UID, "host", plan, settings), EXECUTOR, {"io.example.own": "x"})


def test_every_part_of_the_description_is_read_back() -> None:
    assert set(READ_BACK) == {f.name for f in dataclasses.fields(SessionContainer)}, (
        "a part of SessionContainer has no read-back here: teach both backends to carry it, then add it")


@pytest.mark.parametrize("backend", ["docker", "swarm"])
@pytest.mark.parametrize("part", sorted(READ_BACK))
def test_each_backend_carries_each_part(backend: str, part: str) -> None:
    container = host_session()
    extract_docker, extract_swarm = READ_BACK[part]
    if backend == "docker":
        got = extract_docker(docker_form(container))
    else:
        if part == "name":
            pytest.skip("a swarm session's name is its service's (SwarmBackend.launch), not the task's")
        got = extract_swarm(swarm_form(container))
    want = getattr(container, part)
    assert got == want, f"{backend} dropped or changed {part}: {got!r} != {want!r}"


def test_the_description_is_confined() -> None:
    """The confinement itself, once: what every session gets."""
    container = host_session()
    assert container.user == f"{UID}:{UID}" and container.cap_drop == ("ALL",) and container.cap_add == ()
    assert container.devices == () and container.no_new_privileges and container.read_only_root
    assert container.init is False and container.network == facts.SESSION_NETWORK
    assert str(container.egress) == "allow=198.51.100.7/32,203.0.113.0/24"
    assert container.labels[facts.LABEL_EGRESS] == str(container.egress)
    assert container.tmpfs == (Tmpfs("/tmp", 64 << 20, 0o1777),)


def test_no_network_at_all_is_no_interface_here_and_a_drop_all_rule_in_a_fleet() -> None:
    container = host_session(egress="none")
    assert docker_form(container)["network_mode"] == "none"
    task = swarm_form(container)  # Swarm cannot attach a service to "none": the guard drops everything
    assert task["Networks"] == [{"Target": facts.SESSION_NETWORK}]
    assert task["ContainerSpec"]["Labels"][facts.LABEL_EGRESS] == "none"


def test_swarm_refuses_what_it_cannot_carry_rather_than_dropping_it() -> None:
    container = host_session()
    for change in ({"devices": ("/dev/fuse:/dev/fuse:rwm",)}, {"security_opt": ("apparmor=unconfined",)},
                   {"tmpfs": (Tmpfs("/run/x", 1 << 20, 0o700, noexec=True),)},
                   {"command": ("/bin/sh", "/etc/sandbox-host/entrypoint.sh")}):
        with pytest.raises(SessionError):
            task_template(dataclasses.replace(container, **change), [], cpus_reserved=0.25)
