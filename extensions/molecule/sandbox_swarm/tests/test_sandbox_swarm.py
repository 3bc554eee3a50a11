"""sandbox_swarm: one manager and one worker, both labelled sandbox nodes; each node holds its TLS
key private, the manager alone the control plane's certificate."""

import json

MANAGER = "sbx-mol-bookworm"
TLS = "/etc/sandbox-host/tls"


def is_manager(host) -> bool:
    return host.backend.get_hostname() == MANAGER


def test_node_active_in_the_swarm(host) -> None:
    swarm = json.loads(host.check_output("docker info --format '{{json .Swarm}}'"))
    assert swarm["LocalNodeState"] == "active"
    assert swarm["ControlAvailable"] is is_manager(host)


def test_manager_sees_both_nodes_ready_and_labelled(host) -> None:
    if not is_manager(host):
        return
    ids = host.check_output("docker node ls -q").split()
    nodes = json.loads(host.check_output("docker node inspect " + " ".join(ids)))
    assert len(nodes) == 2
    for node in nodes:
        assert node["Status"]["State"] == "ready"
        assert node["Spec"]["Labels"].get("io.sandbox-host.sandbox") == "true"
    assert sorted(n["Spec"]["Role"] for n in nodes) == ["manager", "worker"]


def test_tls_keys_private_certificates_readable(host) -> None:
    assert host.file(TLS).mode == 0o700
    assert host.file(f"{TLS}/ca.crt").mode == 0o644
    assert host.file(f"{TLS}/node.key").mode == 0o600 and host.file(f"{TLS}/node.key").user == "root"
    assert host.file(f"{TLS}/node.crt").exists
    assert host.file(f"{TLS}/control-plane.key").exists is is_manager(host)
    assert not host.file(f"{TLS}/ca.key").exists  # the CA's key never leaves the controller
