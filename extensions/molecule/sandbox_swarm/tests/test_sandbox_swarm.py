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


def test_the_sessions_network_is_a_bridge_of_each_nodes_own(host) -> None:
    """Each node configures the sessions' bridge (no inter-container traffic); the swarm's network is made from it."""
    options = json.loads(host.check_output("docker network inspect --format '{{json .Options}}' sandbox-host-config"))
    assert options["com.docker.network.bridge.name"] == "sandbox-host"
    assert options["com.docker.network.bridge.enable_icc"] == "false"
    if is_manager(host):
        scope = host.check_output("docker network inspect --format '{{.Scope}} {{.ConfigFrom.Network}}' sandbox-host")
        assert scope.strip() == "swarm sandbox-host-config"
