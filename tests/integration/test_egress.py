"""What a session reaches on the network, tried from inside it (the host strategy, the docker
backend; the fleet's own test is in tests/ansible/test_test_hosts.py).

The test stands in everything a session could be after, and makes each of it itself: a listener
of the host's on 0.0.0.0; a metadata service on 169.254.169.254 (an empty bridge device holds the
address: the kernel here has no dummy driver); another session's listener; and "the internet": a
network namespace whose addresses (203.0.113.0/24, a documentation range on no interface of the
host) are routed through the host. Traffic goes nowhere else. Each listener is first shown to
answer a container that no policy holds (Docker's default bridge), so a closed door here is the
policy's doing."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import docker
import pytest

from provisioning import egress
from provisioning.config import Settings
from provisioning.launcher import SessionManager

from ..conftest import session_id
from ..netprobe import LISTENER, PROBE, SERVER, blocked
from ..servers.volumed import VolumeService

pytestmark = [pytest.mark.parametrize("s3_store", ["moto"], indirect=True),
              pytest.mark.parametrize("strategy", ["host"])]

NETNS, VETH_HOST, VETH_NS, METADATA_DEV = "sbxtest-inet", "sbxt-inet-h", "sbxt-inet-n", "sbxt-md"
INTERNET, ELSEWHERE = "203.0.113.10", "203.0.113.11"  # two "internet" hosts, in the namespace
LINK = ("198.51.100.1", "198.51.100.2")  # the host's side and the namespace's side of the veth
METADATA = "169.254.169.254"
PORT, HOST_PORT, SESSION_PORT = 18080, 18081, 18082



def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check)


def start_server(argv_prefix: list[str], specs: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*argv_prefix, sys.executable, "-c", SERVER, *specs], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


@pytest.fixture(scope="module")
def internet() -> Iterator[None]:
    """A namespace serving on INTERNET and ELSEWHERE, routed from the host over a veth pair."""
    cleanup()
    sh("ip", "netns", "add", NETNS)
    sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS)
    sh("ip", "link", "set", VETH_NS, "netns", NETNS)
    sh("ip", "addr", "add", f"{LINK[0]}/30", "dev", VETH_HOST)
    sh("ip", "link", "set", VETH_HOST, "up")
    for command in (["addr", "add", f"{LINK[1]}/30", "dev", VETH_NS], ["link", "set", VETH_NS, "up"],
                    ["link", "set", "lo", "up"], ["addr", "add", f"{INTERNET}/32", "dev", "lo"],
                    ["addr", "add", f"{ELSEWHERE}/32", "dev", "lo"], ["route", "add", "default", "via", LINK[0]]):
        sh("ip", "-n", NETNS, *command)
    for address in (INTERNET, ELSEWHERE):
        sh("ip", "route", "add", f"{address}/32", "via", LINK[1])
    server = start_server(["ip", "netns", "exec", NETNS],
                          [f"{INTERNET},{PORT},internet", f"{ELSEWHERE},{PORT},elsewhere"])
    try:
        yield
    finally:
        server.kill()
        server.wait()
        cleanup()


def cleanup() -> None:
    for address in (INTERNET, ELSEWHERE):
        sh("ip", "route", "del", f"{address}/32", check=False)
    sh("ip", "link", "del", VETH_HOST, check=False)
    sh("ip", "netns", "del", NETNS, check=False)
    sh("ip", "link", "del", METADATA_DEV, check=False)


@pytest.fixture(scope="module")
def host_listeners() -> Iterator[None]:
    """The host's own listener on 0.0.0.0, and a metadata service on 169.254.169.254 (an empty
    bridge device holds the address)."""
    sh("ip", "link", "del", METADATA_DEV, check=False)
    sh("ip", "link", "add", METADATA_DEV, "type", "bridge")
    sh("ip", "addr", "add", f"{METADATA}/32", "dev", METADATA_DEV)
    sh("ip", "link", "set", METADATA_DEV, "up")
    server = start_server([], [f"0.0.0.0,{HOST_PORT},host", f"{METADATA},80,metadata"])
    try:
        yield
    finally:
        server.kill()
        server.wait()
        sh("ip", "link", "del", METADATA_DEV, check=False)


def host_addresses(gateway: str) -> list[str]:
    """The host's addresses a session could aim at: its sandbox network's gateway, Docker's
    default bridge, and every other IPv4 address of its own (but loopback)."""
    found = [gateway]
    for link in json.loads(sh("ip", "-j", "-4", "addr", "show").stdout):
        for address in link.get("addr_info", []):
            ip = ipaddress.IPv4Address(address["local"])
            if not ip.is_loopback and str(ip) not in found and str(ip) != METADATA:
                found.append(str(ip))
    return found


def probe_session(manager: SessionManager, sid: str, targets: list[str]) -> dict[str, str]:
    result = manager.exec(sid, argv=["python3", "-c", PROBE, *targets], timeout=30)
    assert result.exit_code == 0, result.stderr.decode()
    return dict(json.loads(result.stdout))


def probe_unguarded(client: docker.DockerClient, image: str, targets: list[str]) -> dict[str, str]:
    """The same probe from a container on Docker's default bridge: no sandbox network, no policy."""
    out = client.containers.run(image, ["python3", "-c", PROBE, *targets], entrypoint=[], remove=True,
                                network_mode="bridge", user="65534:65534")
    return dict(json.loads(out))


def address_of(client: docker.DockerClient, sid: str, network: str) -> str:
    attrs = client.api.inspect_container(f"sandbox-{sid}")
    return str(attrs["NetworkSettings"]["Networks"][network]["IPAddress"])


def gateway_of(client: docker.DockerClient, network: str) -> str:
    return str(client.api.inspect_network(network)["IPAM"]["Config"][0]["Gateway"])


@pytest.fixture
def open_manager(settings: Settings, manager: SessionManager, docker_engine: docker.DockerClient) -> SessionManager:
    """Sessions with the default policy (the suite's other tests run theirs with none); the
    ``manager`` fixture removes them after each test."""
    return SessionManager(dataclasses.replace(settings, egress="internet"), client=docker_engine)


def test_default_policy_reaches_the_internet_and_nothing_of_the_host_the_metadata_or_other_sessions(
        open_manager: SessionManager, docker_engine: docker.DockerClient, internet: None, host_listeners: None,
        volume_service: VolumeService, executor_image: str) -> None:
    network = volume_service.network
    other = session_id()
    open_manager.create(other)
    serve = open_manager.exec(other, argv=["python3", "-c", LISTENER, f"0.0.0.0,{SESSION_PORT},other session"])
    assert serve.exit_code == 0, serve.stderr
    other_address = address_of(docker_engine, other, network)
    deadline = time.monotonic() + 10  # the other session's listener answers the session itself
    while probe_session(open_manager, other, [f"{other_address}:{SESSION_PORT}"])[
            f"{other_address}:{SESSION_PORT}"] != "other session":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    sid = session_id()
    info = open_manager.create(sid)
    assert info.egress == "internet"
    host = [f"{a}:{HOST_PORT}" for a in host_addresses(gateway_of(docker_engine, network))]
    targets = [*host, f"{METADATA}:80", f"{other_address}:{SESSION_PORT}", f"{INTERNET}:{PORT}"]

    control = probe_unguarded(docker_engine, executor_image,
                              [t for t in targets if t != f"{other_address}:{SESSION_PORT}"])
    assert all(control[t] == "host" for t in host if t in control), control  # the doors exist and are open
    assert control[f"{METADATA}:80"] == "metadata" and control[f"{INTERNET}:{PORT}"] == "internet", control

    seen = probe_session(open_manager, sid, targets)
    assert seen[f"{INTERNET}:{PORT}"] == "internet", seen
    assert all(blocked(seen[t]) for t in targets if t != f"{INTERNET}:{PORT}"), seen


def test_allow_reaches_exactly_what_it_lists_and_none_has_no_network(
        open_manager: SessionManager, docker_engine: docker.DockerClient, internet: None, host_listeners: None,
        volume_service: VolumeService) -> None:
    listed = SessionManager(dataclasses.replace(open_manager.settings, egress=f"allow={INTERNET}"),
                            client=docker_engine)
    sid = session_id()
    assert listed.create(sid).egress == f"allow={INTERNET}/32"
    host = [f"{a}:{HOST_PORT}" for a in host_addresses(gateway_of(docker_engine, volume_service.network))]
    seen = probe_session(listed, sid, [f"{INTERNET}:{PORT}", f"{ELSEWHERE}:{PORT}", f"{METADATA}:80", *host])
    assert seen.pop(f"{INTERNET}:{PORT}") == "internet", seen
    assert all(blocked(answer) for answer in seen.values()), seen

    nothing = SessionManager(dataclasses.replace(open_manager.settings, egress="none"), client=docker_engine)
    sid = session_id()
    nothing.create(sid)
    links = nothing.exec(sid, argv=["ls", "/sys/class/net"])
    assert links.stdout.split() == [b"lo"]
    seen = probe_session(nothing, sid, [f"{INTERNET}:{PORT}", f"{METADATA}:80"])
    assert all(blocked(answer) for answer in seen.values()), seen


def test_rules_survive_a_firewall_reload_a_removed_table_and_a_service_restart(
        open_manager: SessionManager, docker_engine: docker.DockerClient, internet: None, host_listeners: None,
        volume_service: VolumeService) -> None:
    network = volume_service.network
    table = egress.table_name(network)
    sid = session_id()
    open_manager.create(sid)
    gateway = f"{gateway_of(docker_engine, network)}:{HOST_PORT}"

    def holds() -> None:
        seen = probe_session(open_manager, sid, [gateway, f"{METADATA}:80", f"{INTERNET}:{PORT}"])
        assert blocked(seen[gateway]) and blocked(seen[f"{METADATA}:80"]), seen
        assert seen[f"{INTERNET}:{PORT}"] == "internet", seen

    listing = sh("nft", "list", "table", "inet", table).stdout
    # A reload of iptables' rules (what iptables-persistent or a firewall manager does) leaves
    # the table alone: it is not iptables'.
    saved = sh("iptables-save").stdout
    subprocess.run(["iptables-restore"], input=saved, text=True, check=True)
    assert sh("nft", "list", "table", "inet", table).stdout == listing
    holds()
    # A table removed from outside comes back within the guard's round.
    sh("nft", "delete", "table", "inet", table)
    deadline = time.monotonic() + 5
    while sh("nft", "list", "table", "inet", table, check=False).stdout != listing:
        assert time.monotonic() < deadline, "the guard did not restore its table"
        time.sleep(0.1)
    holds()
    # The service stopped: the table stays in the kernel and keeps holding the session.
    volume_service.stop()
    try:
        assert sh("nft", "list", "table", "inet", table).stdout == listing
        holds()
    finally:
        volume_service.start()
    assert sh("nft", "list", "table", "inet", table).stdout == listing
    holds()
    # After the session, its rule goes with it.
    open_manager.stop(sid)
    deadline = time.monotonic() + 5
    while address_rule_count(table) != 0:
        assert time.monotonic() < deadline, sh("nft", "list", "table", "inet", table).stdout
        time.sleep(0.1)


def address_rule_count(table: str) -> int:
    listing = sh("nft", "-j", "list", "map", "inet", table, "sessions").stdout
    for item in json.loads(listing)["nftables"]:
        if "map" in item:
            return len(item["map"].get("elem", []))
    return 0
