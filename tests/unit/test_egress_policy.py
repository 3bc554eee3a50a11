"""Egress policies: what a setting may say, and the nftables table the guard writes for them (the
table's effect on real traffic is tests/integration/test_egress.py's)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

import pytest

from provisioning import egress
from provisioning.validation import ValidationError


@pytest.mark.parametrize(("text", "canonical"), [
    ("internet", "internet"),
    ("none", "none"),
    ("allow=203.0.113.0/24", "allow=203.0.113.0/24"),
    ("allow=203.0.113.7, 198.51.100.0/24 ,203.0.113.7", "allow=198.51.100.0/24,203.0.113.7/32"),
    ("allow=10.1.2.3/8", "allow=10.0.0.0/8"),  # host bits dropped
    ("allow=0.0.0.0/0", "allow=0.0.0.0/0"),  # everything but what no policy reaches
])
def test_policies_parse_to_one_spelling(text: str, canonical: str) -> None:
    policy = egress.parse(text)
    assert str(policy) == canonical and egress.parse(str(policy)) == policy


@pytest.mark.parametrize(("text", "says"), [
    ("everything", "internet, none, or allow="),
    ("allow", "internet, none, or allow="),
    ("allow=", "lists no network; to reach nothing, use none"),
    ("allow=example.com", "is not an IPv4 network"),
    ("allow=2001:db8::/32", "is IPv6"),
    ("allow=169.254.169.254", "link-local (cloud metadata)"),
    ("allow=127.0.0.1", "loopback"),
    ("allow=" + ",".join(f"203.0.113.{i}" for i in range(65)), "at most 64"),
])
def test_what_no_policy_can_say_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValidationError, match="egress") as refused:
        egress.parse(text)
    assert says in str(refused.value)


def rules() -> list[egress.SessionRule]:
    return [
        egress.SessionRule(ipaddress.IPv4Address("172.30.0.2"), "a" * 64, "open", egress.parse("internet")),
        egress.SessionRule(ipaddress.IPv4Address("172.30.0.3"), "b" * 64, "listed",
                           egress.parse("allow=203.0.113.0/24")),
        egress.SessionRule(ipaddress.IPv4Address("172.30.0.4"), "c" * 64, "shut", egress.parse("none")),
    ]


def table() -> str:
    return egress.ruleset("sbx-unit", ipaddress.IPv4Network("172.30.0.0/16"), rules(),
                          [ipaddress.IPv4Network("192.0.2.0/24"), ipaddress.IPv4Network("172.17.0.0/16")],
                          [ipaddress.IPv4Address("10.255.255.53")])


def chain(text: str, name: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"  chain {name} {{")
    end = lines.index("  }", start)
    return [line.strip() for line in lines[start + 1:end]]


def test_the_table_replaces_itself_whole_and_hooks_input_and_forward() -> None:
    text = table()
    assert text.startswith("table inet sbx_unit {}\ndelete table inet sbx_unit\ntable inet sbx_unit {\n")
    assert 'iifname "sbx-unit" drop comment "sessions never reach the host"' in chain(text, "input")
    assert 'iifname "sbx-unit" jump from_session' in chain(text, "forward")
    floor = chain(text, "from_session")
    assert floor[:5] == ['meta nfproto != ipv4 drop comment "no IPv6"',
                         'ct status dnat drop comment "the host\'s published ports"',
                         'ip daddr 169.254.0.0/16 drop comment "link-local: cloud metadata"',
                         'ip daddr 172.30.0.0/16 drop comment "other sessions"',
                         "ip saddr vmap @sessions"]
    assert floor[-1].startswith("drop")  # no rule of its own: nothing


def test_each_policy_is_a_chain_of_its_own_session() -> None:
    text = table()
    assert ("172.30.0.2 : jump session_aaaaaaaaaaaa, 172.30.0.3 : jump session_bbbbbbbbbbbb, "
            "172.30.0.4 : jump session_cccccccccccc") in text
    dns = "ip daddr @resolvers meta l4proto { tcp, udp } th dport 53 accept"
    assert chain(text, "session_aaaaaaaaaaaa")[1:] == [dns, "ip daddr @private drop", "accept"]
    assert chain(text, "session_bbbbbbbbbbbb")[1:] == [dns, "ip daddr { 203.0.113.0/24 } accept", "drop"]
    assert chain(text, "session_cccccccccccc")[1:] == ["drop"]
    # The host's own networks join the special-purpose ranges (merged where they overlap).
    private = next(line for line in text.splitlines() if line.strip().startswith("set private"))
    assert "192.0.2.0/24" in private and "172.16.0.0/12" in private and "172.17.0.0/16" not in private
    assert "elements = { 10.255.255.53 }" in text


def test_resolvers_are_read_from_resolv_conf_without_loopback() -> None:
    found = egress.resolvers(["nameserver 127.0.0.53\nnameserver 10.0.0.2\n# nameserver 9.9.9.9\n",
                              "nameserver 10.0.0.2\nnameserver 2001:db8::1\nsearch example\n"])
    assert found == [ipaddress.IPv4Address("10.0.0.2")]


@pytest.mark.skipif(shutil.which("nft") is None or os.geteuid() != 0, reason="needs nft and root")
def test_nft_accepts_the_table() -> None:
    """`nft -c` parses and checks the table against the kernel without applying it."""
    check = subprocess.run(["nft", "-c", "-f", "-"], input=table(), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
