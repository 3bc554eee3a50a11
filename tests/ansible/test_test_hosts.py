"""site.yml on real test hosts (Debian 12 bookworm and 13 trixie, systemd as PID 1), three of them
forming a Docker Swarm: converged twice (the second run must change nothing) and in check mode,
verified with testinfra through `docker exec`; each host runs a session of its own, and the fleet
places sessions across its nodes, survives a drained and a lost node, and refuses what no node
can take. Traffic stays between the test hosts (the outer engine's bridge) and loopback."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import testinfra

from provisioning import facts
from provisioning.hostinfo import docker_client

from ..netprobe import LISTENER, PROBE, blocked
from . import testhosts
from .conftest import ROOT, Controller, run_playbook

# Three fresh hosts converged twice and checked: more than the suite's default per-test timeout.
pytestmark = pytest.mark.timeout(3600)

MANAGER = "sbx-test-bookworm"
HOSTS = {MANAGER: "bookworm", "sbx-test-trixie": "trixie", "sbx-test-bookworm-2": "bookworm"}
LOST = "sbx-test-bookworm-2"  # the node whose engine the fleet tests stop (last)
TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="module")
def inventory(tmp_path_factory) -> Path:
    client = docker_client(timeout=900)
    for name, suite in HOSTS.items():
        started = time.monotonic()
        testhosts.build_image(client, suite)
        testhosts.start(client, suite, name)
        TIMINGS[f"{name} image and boot"] = round(time.monotonic() - started, 1)
    path = tmp_path_factory.mktemp("inventory") / "hosts.ini"
    testhosts.write_inventory(path, HOSTS, client, swarm_manager=MANAGER)
    yield path
    if not os.environ.get("SANDBOX_KEEP_TEST_HOSTS"):  # keep them for debugging
        for name in HOSTS:
            testhosts.remove(client, name)
    print(f"\ntest-host timings (s): {json.dumps(TIMINGS)}", file=sys.stderr)


@pytest.fixture(scope="module")
def adopter(tmp_path_factory) -> Controller:
    """The collection as an adopter installs it: built to a tarball, installed in a fresh
    virtualenv with ansible-core and the pinned collections, run from outside this checkout."""
    started = time.monotonic()
    controller = testhosts.adopter_controller(ROOT, tmp_path_factory.mktemp("adopter"))
    TIMINGS["collection built and installed"] = round(time.monotonic() - started, 1)
    return controller


SITE = "sandbox_host.platform.site"


@pytest.fixture(scope="module")
def converged(inventory: Path, adopter: Controller) -> Path:
    first = run_playbook(inventory, SITE, timeout=2700, controller=adopter)
    TIMINGS["fresh converge (three hosts in parallel)"] = first.seconds
    assert first.returncode == 0, first.output[-6000:]
    second = run_playbook(inventory, SITE, timeout=1200, controller=adopter)
    TIMINGS["re-run"] = second.seconds
    assert second.returncode == 0, second.output[-6000:]
    recap = second.recap()
    for name in HOSTS:
        assert recap[name]["changed"] == 0, f"{name} not idempotent: {recap[name]}\n{second.output[-6000:]}"
        assert recap[name]["failed"] == 0
    check = run_playbook(inventory, SITE, "--check", "--diff", timeout=1200, controller=adopter)
    assert check.returncode == 0, check.output[-6000:]
    assert all(check.recap()[name]["changed"] == 0 for name in HOSTS), check.output[-6000:]
    # The secrets of the fleet never reach a log: no join token, no key in any of the runs.
    for run in (first, second, check):
        assert "SWMTKN-" not in run.output and "PRIVATE KEY" not in run.output
    return inventory


@pytest.fixture(params=list(HOSTS))
def host(request, converged):
    return testinfra.get_host(f"docker://{request.param}")


@pytest.fixture(scope="module")
def manager(converged):
    return testinfra.get_host(f"docker://{MANAGER}")


# Each role on its own is tested by its Molecule scenario (test_molecule.py); here, what the roles
# make together.

def test_volume_service_serves_the_gateway_on_the_swarm_address(host) -> None:
    assert host.socket("unix:///run/docker/plugins/sandbox-host.sock").is_listening
    address = host.check_output("docker info --format '{{.Swarm.NodeAddr}}'").strip()
    assert host.socket(f"tcp://{address}:7443").is_listening, "the executor gateway is not listening"


def test_object_store_serves_the_fleet_on_the_managers_address(manager) -> None:
    address = manager.check_output("docker info --format '{{.Swarm.NodeAddr}}'").strip()
    assert manager.socket(f"tcp://{address}:9000").is_listening


def test_doctor_passes_bucket_and_image(host) -> None:
    report = json.loads(host.check_output("sandbox-host doctor --json"))
    checks = {c["name"]: c for c in report["checks"]}
    assert report["ok"] is True, report
    assert checks["s3 bucket"]["ok"] and checks["executor image"]["ok"] and checks["volume driver"]["ok"]


# What /workspace is in the container, per mounter: s3fs's FUSE mount, or the session's own
# filesystem (the local-first default).
WORKSPACE_FSTYPE = {"local": "ext4", "s3fs": "fuse.s3fs"}


@pytest.mark.parametrize("mounter", ["", "s3fs"])
def test_session_mounts_its_prefix_and_round_trips(host, mounter: str) -> None:
    """A session of this host's own engine (the docker backend), host strategy: the default
    mounter (local), and s3fs one setting away."""
    sid = "th" + secrets.token_hex(4)
    choice = f" --mounter {mounter}" if mounter else ""
    created = json.loads(host.check_output(f"sandbox-host session create {sid}{choice} --egress none --json"))
    try:
        mounts = host.check_output(f"docker exec {created['container_name']} cat /proc/mounts")
        fstype = WORKSPACE_FSTYPE[mounter or facts.DEFAULT_MOUNTER]
        assert any(line.split()[1:3] == ["/workspace", fstype] for line in mounts.splitlines()), mounts
        host.check_output(f"sh -c 'echo round-trip > /tmp/{sid}.txt'")
        host.check_output(f"sandbox-host session upload {sid} /tmp/{sid}.txt --name in.txt")
        host.check_output(f"sandbox-host session exec {sid} -- sh -c 'tr a-z A-Z < uploads/in.txt > artifacts/out.txt'")
        assert host.check_output(f"sandbox-host session download {sid} out.txt -o -") == "ROUND-TRIP"
    finally:
        host.run(f"sandbox-host session stop {sid}")


# -- the fleet ------------------------------------------------------------------------------------

def fleet(manager, *args: str, check: bool = True) -> str:
    run = manager.run("sandbox-host --backend swarm " + " ".join(args))
    if check:
        assert run.rc == 0, f"{args}: {run.stderr}"
    return run.stdout if check else run.stderr + run.stdout


def fleet_sessions(manager) -> dict[str, dict]:
    return {s["session_id"]: s for s in json.loads(fleet(manager, "session", "list", "--json"))}


def test_production_hosts_carry_no_dev_endpoint(host) -> None:
    """moto (the embedded S3 endpoint) only where the dev object store runs: the manager here."""
    has_moto = host.run("/opt/sandbox-host/venv/bin/python -c 'import moto'").rc == 0
    assert has_moto == (host.backend.name == MANAGER)


def test_swarm_formed_and_labelled(manager) -> None:
    nodes = json.loads(fleet(manager, "fleet", "nodes", "--json"))
    assert len(nodes) == 3 and all(n["state"] == "ready" and n["sandbox"] for n in nodes), nodes
    assert [n["role"] for n in nodes].count("manager") == 1
    key = manager.file("/etc/sandbox-host/tls/control-plane.key")
    assert (key.mode, key.user) == (0o600, "root")


def test_fleet_places_sessions_across_nodes(manager) -> None:
    ids = [f"f{i:02d}{secrets.token_hex(3)}" for i in range(12)]
    for n, sid in enumerate(ids):  # the default mounter (local), and s3fs
        created = json.loads(fleet(manager, "session", "create", sid, *(["--mounter", "s3fs"] if n % 2 else []),
                                   "--json"))
        assert created["status"] == "running" and created["node"], created
    sessions = fleet_sessions(manager)
    nodes = Counter(sessions[sid]["node"] for sid in ids)
    assert len(nodes) >= 2, nodes
    for sid in ids:
        fleet(manager, "session", "exec", sid, "--", "sh", "-c", f"'echo {sid} > artifacts/me.txt'")
        seen = fleet(manager, "session", "exec", sid, "--", "sh", "-c", "'find /workspace -type f | sort'").split()
        assert seen == ["/workspace/artifacts/me.txt"], (sid, seen)
        assert fleet(manager, "session", "download", sid, "me.txt", "-o", "-") == f"{sid}\n"
    for sid in ids[:8]:
        fleet(manager, "session", "stop", sid)
    assert set(ids[8:]) <= set(fleet_sessions(manager))


# The scripts travel as base64, which no shell between here and the session mangles.


def in_session(manager, sid: str, script: str, *args: str) -> str:
    code = base64.b64encode(script.encode()).decode()
    return fleet(manager, "session", "exec", sid, "--", "python3", "-c",
                 f"'import base64;exec(base64.b64decode(\"{code}\"))'", *args)


def session_address(node: str, sid: str) -> str:
    host = testinfra.get_host(f"docker://{node}")
    container = host.check_output(f"docker ps -q --filter label=io.sandbox-host.session={sid}").strip()
    return host.check_output("docker inspect --format "
                             "'{{(index .NetworkSettings.Networks \"sandbox-host\").IPAddress}}' "
                             f"{container}").strip()


def test_a_fleet_session_reaches_neither_a_node_nor_a_gateway_nor_another_session(manager) -> None:
    """Swarm cannot attach a service to none: a fleet session joins the swarm's sandbox network,
    which is a bridge of each node's own (no inter-container traffic), guarded by the node's volume
    service like a local one. From a session: every node's gateway and object store, and other
    sessions' listeners (on its node and on others), stay shut."""
    ids = [f"n{i}{secrets.token_hex(3)}" for i in range(4)]  # four on three nodes: two share one
    for sid in ids:
        created = json.loads(fleet(manager, "session", "create", sid, "--memory", "256m", "--json"))
        assert created["egress"] == "internet", created
    try:
        sessions = fleet_sessions(manager)
        addresses = {sid: session_address(sessions[sid]["node"], sid) for sid in ids}
        for sid in ids:
            in_session(manager, sid, LISTENER, f"0.0.0.0,18082,{sid}")
            # Each listener answers its own session (the door exists).
            assert json.loads(in_session(manager, sid, PROBE, f"{addresses[sid]}:18082")) == {
                f"{addresses[sid]}:18082": sid}
        nodes = json.loads(fleet(manager, "fleet", "nodes", "--json"))
        gateways = [f"{n['address']}:7443" for n in nodes] + [f"{n['address']}:9000" for n in nodes]
        by_node = Counter(sessions[sid]["node"] for sid in ids)
        shared = next(node for node, count in by_node.items() if count > 1)
        first, neighbour = [sid for sid in ids if sessions[sid]["node"] == shared][:2]
        # Each node gives addresses from its own pool: another node's session may have this one's
        # own address, which only ever reaches this session itself (and proves nothing).
        others = [f"{addresses[sid]}:18082" for sid in ids if addresses[sid] != addresses[first]]
        seen = json.loads(in_session(manager, first, PROBE, *gateways, *others))
        assert all(blocked(answer) for answer in seen.values()), seen
        assert f"{addresses[neighbour]}:18082" in seen  # the neighbour on the same node was tried
        # From the node itself, the gateway answers (the door exists).
        node = testinfra.get_host(f"docker://{shared}")
        address = next(n["address"] for n in nodes if n["node"] == shared)
        assert node.socket(f"tcp://{address}:7443").is_listening
    finally:
        for sid in ids:
            fleet(manager, "session", "stop", sid, check=False)


def test_a_drained_node_keeps_its_sessions_and_takes_no_new_ones(manager) -> None:
    sessions = fleet_sessions(manager)
    busy = Counter(s["node"] for s in sessions.values() if s["status"] == "running").most_common(1)[0][0]
    kept = [sid for sid, s in sessions.items() if s["node"] == busy]
    fleet(manager, "fleet", "drain", busy)
    try:
        new = [f"d{i}{secrets.token_hex(3)}" for i in range(4)]
        for sid in new:
            created = json.loads(fleet(manager, "session", "create", sid, "--json"))
            assert created["node"] != busy, created
        for sid in kept:
            assert fleet(manager, "session", "exec", sid, "--", "cat", "artifacts/me.txt") == f"{sid}\n"
        for sid in new:
            fleet(manager, "session", "stop", sid)
    finally:
        fleet(manager, "fleet", "resume", busy)


MOVED = """
import json, os, stat
os.chdir("/workspace")
if not os.path.exists("artifacts/tool.sh"):
    os.makedirs("artifacts/empty")
    os.makedirs("artifacts/private")
    open("artifacts/tool.sh", "w").write("#!/bin/sh\\necho tool\\n")
    open("artifacts/private/notes.txt", "w").write("notes")
    os.symlink("tool.sh", "artifacts/link")
    os.chmod("artifacts/tool.sh", 0o755)
    os.chmod("artifacts/private", 0o700)
    os.utime("artifacts/tool.sh", (1000000000, 1000000000))
    os.utime("artifacts/private/notes.txt", (1100000000, 1100000000))
out = {}
for path in ("artifacts/tool.sh", "artifacts/private", "artifacts/private/notes.txt", "artifacts/empty",
             "artifacts/link"):
    st = os.lstat(path)
    out[path] = [oct(stat.S_IMODE(st.st_mode)), stat.S_ISLNK(st.st_mode), int(st.st_mtime)
                 if not stat.S_ISDIR(st.st_mode) else 0]
out["link ->"] = os.readlink("artifacts/link")
out["notes"] = open("artifacts/private/notes.txt").read()
print(json.dumps(out, sort_keys=True))
"""


def test_a_local_first_session_moves_to_another_node_with_its_files_modes_and_mtimes(manager) -> None:
    """Stopped on one node (everything sent to S3, with s3fs's mode and mtime headers), created
    again on another (its node drained meanwhile): the same files, modes, mtimes and links."""
    sid = "mv" + secrets.token_hex(4)
    first = json.loads(fleet(manager, "session", "create", sid, "--mounter", "local", "--json"))["node"]
    before = in_session(manager, sid, MOVED)
    fleet(manager, "session", "stop", sid)
    fleet(manager, "fleet", "drain", first)
    try:
        second = json.loads(fleet(manager, "session", "create", sid, "--mounter", "local", "--json"))["node"]
        assert second != first
        after = in_session(manager, sid, MOVED)
        fleet(manager, "session", "stop", sid)
    finally:
        fleet(manager, "fleet", "resume", first)
    assert after == before, (before, after)
    seen = json.loads(after)
    assert seen["artifacts/tool.sh"] == ["0o755", False, 1000000000] and seen["artifacts/private"][0] == "0o700"
    assert seen["link ->"] == "tool.sh" and seen["notes"] == "notes"


def test_no_room_fails_clearly_and_leaves_nothing(manager) -> None:
    sid = "huge" + secrets.token_hex(3)
    started = time.monotonic()
    error = fleet(manager, "session", "create", sid, "--memory", "4000g", check=False)
    assert "no sandbox node could take the session" in error, error
    assert time.monotonic() - started < 60
    assert sid not in fleet_sessions(manager)


def test_a_lost_node_shows_lost_and_the_others_keep_working(manager) -> None:
    """The engine of one node stops: its sessions show as lost within 30 s; the others keep
    working; what was written and closed before is in S3."""
    sessions = fleet_sessions(manager)
    on_lost = [sid for sid, s in sessions.items() if s["node"] == LOST]
    if not on_lost:  # make sure the node has one
        sid = "l" + secrets.token_hex(4)
        for _ in range(6):
            created = json.loads(fleet(manager, "session", "create", sid, "--json"))
            if created["node"] == LOST:
                break
            fleet(manager, "session", "stop", sid)
        on_lost = [sid]
        fleet(manager, "session", "exec", sid, "--", "sh", "-c", f"'echo {sid} > artifacts/me.txt'")
    for sid in on_lost:  # what a lost node's sessions keep is what reached S3 (local-first: sync)
        fleet(manager, "session", "sync", sid)
    others = [sid for sid, s in fleet_sessions(manager).items() if s["node"] != LOST and s["status"] == "running"]
    lost_host = testinfra.get_host(f"docker://{LOST}")
    lost_host.run("systemctl stop docker.socket docker")
    try:
        deadline = time.monotonic() + 30
        while any(fleet_sessions(manager)[sid]["status"] != "lost" for sid in on_lost):
            assert time.monotonic() < deadline, fleet_sessions(manager)
            time.sleep(1)
        for sid in others:
            assert fleet(manager, "session", "exec", sid, "--", "cat", "artifacts/me.txt") == f"{sid}\n"
        for sid in on_lost:
            assert fleet(manager, "session", "download", sid, "me.txt", "-o", "-") == f"{sid}\n"
    finally:
        lost_host.run("systemctl start docker")
    for sid in others:
        fleet(manager, "session", "stop", sid)
