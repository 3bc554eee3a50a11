"""The volume service's guard of the sessions' network: the Docker bridge sessions join, and the
nftables table that holds each session to its egress policy (the rules themselves are
``provisioning.egress``).

The guard is the one writer of its table. It renders the whole table from what Docker says runs
on the network (each container's address and its ``io.sandbox-host.egress`` label) and the
host's facts (its interfaces' networks, its DNS servers), and replaces it in one transaction:

- when a launcher asks (``admit``: a session's container has started; the launcher waits for
  its rule before any user code runs);
- every ``INTERVAL`` seconds, and whenever the table in the kernel is not the one it wrote (a
  firewall reload, ``nft flush ruleset``): the table is put back within that time;
- at start, after a restart of the service (the table lives in the kernel meanwhile, and keeps
  holding every session).
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import egress, facts
from ..errors import SandboxHostError
from ..lazy import lazy_import
from ..polling import poll_until
from ..validation import ValidationError

docker = lazy_import("docker")  # the same module object as the clients' (lazy elsewhere in the runtime)

INTERVAL = 1.0
RESOLV_CONF = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))
ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_OPTION = "com.docker.network.bridge.name"


class NetworkGuardError(SandboxHostError):
    kind = "network"


def network_options(name: str) -> dict[str, str]:
    """A sandbox network: a bridge named as the network, containers on it cannot talk to each other."""
    return {BRIDGE_OPTION: name, ICC_OPTION: "false", "com.docker.network.bridge.enable_ip_masquerade": "true"}


def host_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks of this host's interfaces (``ip -j addr``)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = []
    for link in json.loads(out or "[]"):
        for address in link.get("addr_info", []):
            try:
                found.append(ipaddress.IPv4Network(f"{address['local']}/{address['prefixlen']}", strict=False))
            except (KeyError, ValueError):
                continue
    return found


def host_resolvers() -> list[ipaddress.IPv4Address]:
    texts = []
    for path in RESOLV_CONF:
        try:
            texts.append(path.read_text())
        except OSError:
            continue
    return egress.resolvers(texts)


class NetworkGuard:
    def __init__(self, network: str, client: Callable[[], Any], log: Callable[[str], None] = lambda _m: None,
                 nft: str = "nft", fleet: bool = False) -> None:
        self.network = network
        self.fleet = fleet  # a swarm node: the network is the swarm's, made by the sandbox_swarm role
        self.bridge = network  # the network's bridge device has its name (network_options)
        self.table = egress.table_name(self.bridge)
        self._make_client = client
        self._cached: Any = None
        self._log = log
        self._nft = nft
        self._lock = threading.Lock()
        self._written = ""  # the table as `nft list` showed it after our last write
        self._rendered = ""  # the text of that write
        self._ready = threading.Event()  # the network is right and the table written once
        self._problem = ""  # why not, while it is not

    def _client(self) -> Any:
        if self._cached is None:
            self._cached = self._make_client()
        return self._cached

    # -- the network --------------------------------------------------------------------------
    def ensure_network(self) -> None:
        """Make the sandbox network, or check the one there is: inter-container traffic off and
        the bridge named as the network (the table matches the bridge by that name). On a swarm
        node, check the node's configuration of the swarm's network instead (Swarm cannot attach
        a service to a local network: the sandbox_swarm role makes a swarm-scoped bridge network
        from a config-only network on each node)."""
        client = self._client()
        if self.fleet:
            name = facts.config_network_name(self.network)
            try:
                network = client.networks.get(name)
            except docker.errors.NotFound:
                raise NetworkGuardError(f"this swarm node has no {name} network (the configuration of the sessions' "
                                        f"network {self.network}): run playbooks/swarm.yml") from None
            self._check_options(name, network.attrs.get("Options") or {})
            return
        try:
            network = client.networks.get(self.network)
        except docker.errors.NotFound:
            client.networks.create(self.network, driver="bridge", options=network_options(self.network),
                                   labels={facts.LABEL_MANAGED: "true"}, check_duplicate=True)
            self._log(f"made the sessions' network {self.network} (bridge {self.bridge}, no inter-container traffic)")
            return
        self._check_options(self.network, network.attrs.get("Options") or {})

    def _check_options(self, name: str, options: dict[str, str]) -> None:
        if options.get(ICC_OPTION) != "false" or options.get(BRIDGE_OPTION) != self.bridge:
            made_by = "playbooks/swarm.yml" if self.fleet else "the volume service (restart it)"
            raise NetworkGuardError(
                f"the Docker network {name} exists but is not a sandbox network's (it needs {ICC_OPTION}=false and "
                f"{BRIDGE_OPTION}={self.bridge}); remove it (docker network rm {name}), then {made_by} makes it")

    def _subnet(self, client: Any) -> ipaddress.IPv4Network | None:
        try:
            attrs = client.api.inspect_network(self.network)
        except docker.errors.NotFound:
            return None  # a swarm node shows the swarm's network once a session of it runs here
        for config in (attrs.get("IPAM") or {}).get("Config") or []:
            try:
                subnet = ipaddress.ip_network(config.get("Subnet", ""))
            except ValueError:
                continue
            if isinstance(subnet, ipaddress.IPv4Network):
                return subnet
        return None

    # -- the rules ----------------------------------------------------------------------------
    def sessions(self, client: Any) -> list[egress.SessionRule]:
        """Every running container on the network that carries a session's policy. Others get
        no rule, and so reach nothing."""
        rules = []
        for container in client.api.containers(filters={"network": [self.network]}):
            labels = container.get("Labels") or {}
            if labels.get(facts.LABEL_MANAGED) != "true" or facts.LABEL_EGRESS not in labels:
                continue
            address = ((container.get("NetworkSettings") or {}).get("Networks") or {}).get(self.network, {})
            try:
                policy = egress.parse(labels[facts.LABEL_EGRESS])
                ip = ipaddress.IPv4Address(address.get("IPAddress", ""))
            except (ValidationError, ValueError):
                continue
            rules.append(egress.SessionRule(ip, str(container["Id"]), labels.get(facts.LABEL_SESSION, "?"), policy))
        return rules

    def reconcile(self, force: bool = False) -> list[egress.SessionRule]:
        """Write the table when what it should say, or what the kernel holds, changed."""
        with self._lock:
            client = self._client()
            rules = self.sessions(client)
            text = egress.ruleset(self.bridge, self._subnet(client), rules, host_networks(), host_resolvers())
            current = self._listing()
            if force or current != self._written or text != self._rendered:
                if current != self._written and self._written:
                    self._log(f"the firewall table {self.table} was changed or removed outside the service: restored")
                self._apply(text)
                self._rendered = text
                self._written = self._listing()
            return rules

    def admit(self, container_id: str = "", session_id: str = "", timeout: float = 10.0) -> egress.SessionRule:
        """Once the rule of a session's container (named by its id, or, in a fleet, by its
        session's) is in the kernel: its address and policy."""
        if not self._ready.wait(timeout):
            raise NetworkGuardError(f"the sessions' network {self.network} is not ready: {self._problem or 'starting'}")

        def admitted() -> egress.SessionRule | None:
            return next((rule for rule in self.reconcile() if rule.container_id == container_id
                         or (session_id and rule.session_id == session_id)), None)

        which = f"container {container_id[:12]}" if container_id else f"session {session_id}"
        missing = NetworkGuardError(f"{which} is not running on the network {self.network} here (no address, "
                                    f"or no {facts.LABEL_EGRESS} label)")
        return poll_until(admitted, timeout, lambda: missing, every=0.02)

    def status(self) -> dict[str, Any]:
        """For doctor: whether the network is right and the table written, or why not."""
        return {"Network": self.network, "Table": f"inet {self.table}", "Ready": self._ready.is_set(),
                "Problem": self._problem}

    def run(self, stop: threading.Event) -> None:
        """Make (or check) the network, until the engine answers and it is right; then write the
        table, and keep it as it should be, every INTERVAL."""
        while not self._ready.is_set():
            try:
                self.ensure_network()
                self.reconcile(force=True)
            except Exception as exc:  # noqa: BLE001 - no engine yet, or a wrong network: say so, try again
                problem = f"{type(exc).__name__}: {exc}" if not isinstance(exc, SandboxHostError) else str(exc)
                if problem != self._problem:
                    self._log(f"network guard: {problem}")
                self._problem = problem
                self._cached = None
                if stop.wait(INTERVAL):
                    return
            else:
                self._problem = ""
                self._ready.set()
        failing = ""
        while not stop.wait(INTERVAL):
            try:
                self.reconcile()
            except Exception as exc:  # noqa: BLE001 - keep guarding; the next round tries again
                self._cached = None  # a new engine connection next round (the engine may have restarted)
                if f"{exc}" != failing:  # once per kind of failure, not once a second
                    self._log(f"network guard: {type(exc).__name__}: {exc}")
                failing = f"{exc}"
            else:
                if failing:
                    self._log("network guard: guarding again")
                failing = ""

    def remove(self) -> None:
        """Drop the table (decommissioning and tests: sessions on the network lose their guard)."""
        subprocess.run([self._nft, "delete", "table", "inet", self.table], capture_output=True)

    # -- nft ----------------------------------------------------------------------------------
    def _apply(self, text: str) -> None:
        proc = subprocess.run([self._nft, "-f", "-"], input=text, capture_output=True, text=True)
        if proc.returncode != 0:
            raise NetworkGuardError(f"nft refused the sessions' firewall table: {proc.stderr.strip()[:500]}")

    def _listing(self) -> str:
        proc = subprocess.run([self._nft, "list", "table", "inet", self.table], capture_output=True, text=True)
        return proc.stdout if proc.returncode == 0 else ""
