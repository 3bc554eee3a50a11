"""What a session may reach on the network, and the host firewall that holds it to that.

A session's **egress policy** is one of:

- ``internet`` (the default): public addresses only;
- ``none``: nothing at all (the container has no network interface);
- ``allow=CIDR[,CIDR...]``: exactly the listed IPv4 networks.

Whatever the policy, a session never reaches the host (any of its addresses, any port, its
published container ports included), link-local addresses (169.254.0.0/16: cloud metadata
services), another session, or anything over IPv6. ``internet`` also keeps it off the host's
private networks: the special-purpose ranges of RFC 6890 (10/8, 172.16/12, 192.168/16, 100.64/10,
loopback, multicast...) and every network a host interface is on. DNS (port 53) to the host's own
resolvers is allowed under ``internet`` and ``allow=`` (names must resolve), never under ``none``.

Enforcement is on the host, outside the container: sessions join a Docker bridge network of
their own with inter-container traffic off, and one nftables table per such network
(:func:`ruleset`) drops what a policy does not allow. Packets from a container to a host address
go through the host's *input* hook, which Docker's ``DOCKER-USER`` chain never sees: the table
hooks input and forward itself. It is fail-closed: a container on the network without a rule of
its own (one that has just started, or one sandbox-host did not make) reaches nothing. A table
of its own also survives what rewrites iptables' tables (``iptables -F``, a Docker restart, a
firewall manager's reload); the volume service puts it back if it goes anyway
(``volumed/netguard.py``)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .validation import ValidationError

INTERNET, NONE, ALLOW = "internet", "none", "allow"
MAX_ALLOWED = 64

# Never reachable, whatever the policy says.
LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
# RFC 6890's special-purpose IPv4 ranges that are not the internet: what ``internet`` keeps a
# session off, besides the host's own networks. (The documentation ranges 192.0.2.0/24,
# 198.51.100.0/24 and 203.0.113.0/24 are not here: nothing routes them, and tests stand the
# internet in with them.)
PRIVATE_RANGES = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
))


@dataclass(frozen=True)
class EgressPolicy:
    """A checked policy: made by :func:`parse` only, so nothing checks it again."""

    kind: str
    allowed: tuple[ipaddress.IPv4Network, ...] = ()

    def __str__(self) -> str:
        if self.kind == ALLOW:
            return "allow=" + ",".join(str(n) for n in self.allowed)
        return self.kind

    @property
    def networked(self) -> bool:
        """False for ``none``: the container gets no network interface at all."""
        return self.kind != NONE


_RULE = ("internet, none, or allow=CIDR[,CIDR...] (IPv4 networks or addresses, e.g. "
         "allow=203.0.113.0/24,198.51.100.7)")


def parse(value: object) -> EgressPolicy:
    """``internet`` | ``none`` | ``allow=CIDR,...``; raises ValidationError naming what is wrong."""
    if isinstance(value, EgressPolicy):
        return value
    if not isinstance(value, str):
        raise ValidationError("egress", value, f"must be {_RULE}")
    text = value.strip()
    if text in (INTERNET, NONE):
        return EgressPolicy(text)
    kind, sep, rest = text.partition("=")
    if kind != ALLOW or not sep:
        raise ValidationError("egress", value, f"must be {_RULE}")
    items = [item.strip() for item in rest.split(",") if item.strip()]
    if not items:
        raise ValidationError("egress", value, "allow= lists no network; to reach nothing, use none")
    if len(items) > MAX_ALLOWED:
        raise ValidationError("egress", value, f"allow= lists at most {MAX_ALLOWED} networks")
    networks = set()
    for item in items:
        try:
            network = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValidationError("egress", item, f"is not an IPv4 network or address; {_RULE}") from None
        if not isinstance(network, ipaddress.IPv4Network):
            raise ValidationError("egress", item, "is IPv6: sessions have no IPv6 route; list IPv4 networks")
        for never, what in ((LINK_LOCAL, "link-local (cloud metadata)"), (LOOPBACK, "loopback")):
            if network.subnet_of(never):
                raise ValidationError("egress", item, f"is {what}: a session never reaches it, whatever it allows")
        networks.add(network)
    return EgressPolicy(ALLOW, tuple(sorted(networks)))


# -- the firewall ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionRule:
    """One session container on a guarded network: its address there and its policy."""

    address: ipaddress.IPv4Address
    container_id: str
    session_id: str
    policy: EgressPolicy

    @property
    def chain(self) -> str:
        return f"session_{self.container_id[:12]}"


def table_name(bridge: str) -> str:
    """The nftables table guarding one bridge (``sandbox-host`` -> ``sandbox_host``)."""
    return "".join(c if c.isalnum() else "_" for c in bridge)


def _elements(networks: Iterable[ipaddress.IPv4Network]) -> str:
    merged = list(ipaddress.collapse_addresses(networks))
    return ", ".join(str(n) for n in merged)


def ruleset(bridge: str, subnet: ipaddress.IPv4Network | None, sessions: Iterable[SessionRule],
            host_networks: Iterable[ipaddress.IPv4Network], resolvers: Iterable[ipaddress.IPv4Address]) -> str:
    """The whole table for ``bridge``, as one ``nft -f`` transaction that replaces it atomically
    (no moment without rules). ``subnet``: the bridge's own (other sessions); ``host_networks``:
    the networks of the host's interfaces; ``resolvers``: the host's DNS servers."""
    table = table_name(bridge)
    private = _elements([*PRIVATE_RANGES, *host_networks])
    dns = ", ".join(sorted({str(r) for r in resolvers}))
    rules = sorted(sessions, key=lambda r: r.address)
    lines = [
        f"table inet {table} {{}}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        f"  set private {{ type ipv4_addr; flags interval; elements = {{ {private} }} }}",
        f"  set resolvers {{ type ipv4_addr; {f'elements = {{ {dns} }} ' if dns else ''}}}",
        "  map sessions { type ipv4_addr : verdict; "
        + (f"elements = {{ {', '.join(f'{r.address} : jump {r.chain}' for r in rules)} }} " if rules else "")
        + "}",
        # Before the distribution's and Docker's own filter chains; a drop anywhere is final.
        "  chain input {",
        "    type filter hook input priority filter - 10; policy accept;",
        f'    iifname "{bridge}" drop comment "sessions never reach the host"',
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter - 10; policy accept;",
        f'    iifname "{bridge}" jump from_session',
        "  }",
        "  chain from_session {",
        '    meta nfproto != ipv4 drop comment "no IPv6"',
        '    ct status dnat drop comment "the host\'s published ports"',
        f'    ip daddr {LINK_LOCAL} drop comment "link-local: cloud metadata"',
        *([f'    ip daddr {subnet} drop comment "other sessions"'] if subnet else []),
        "    ip saddr vmap @sessions",
        '    drop comment "no rule of its own: nothing"',
        "  }",
    ]
    for rule in rules:
        lines.append(f"  chain {rule.chain} {{")
        lines.append(f'    comment "session {rule.session_id}: {rule.policy}"')
        if rule.policy.kind != NONE:
            lines.append("    ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 accept")
        if rule.policy.kind == INTERNET:
            lines.append("    ip daddr @private drop")
            lines.append("    accept")
        elif rule.policy.kind == ALLOW:
            lines.append(f"    ip daddr {{ {_elements(rule.policy.allowed)} }} accept")
            lines.append("    drop")
        else:
            lines.append("    drop")
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def resolvers(texts: Iterable[str]) -> list[ipaddress.IPv4Address]:
    """IPv4 ``nameserver`` lines of resolv.conf texts, loopback ones left out (Docker does not
    hand those to containers)."""
    found: list[ipaddress.IPv4Address] = []
    for text in texts:
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                try:
                    address = ipaddress.ip_address(parts[1])
                except ValueError:
                    continue
                if isinstance(address, ipaddress.IPv4Address) and not address.is_loopback and address not in found:
                    found.append(address)
    return found
