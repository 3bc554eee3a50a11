"""The host's Debian mirror, as apt reads its sources (apt-get indextargets): what is taken, what is
skipped, and what a host without apt is told."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from provisioning import aptmirror
from provisioning.aptmirror import AptSource, MirrorError, apt_sources, debian_mirror

needs_apt = pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is not installed (not Debian/Ubuntu)")

ONE_LINE = """\
# deb http://commented.example/debian bookworm main
deb-src http://sources.example/debian trixie main
deb cdrom:[Debian GNU/Linux 12]/ bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example/debian/ trixie main contrib
"""  # noqa: E501 - a sources.list line as Debian writes it
DEB822 = """\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no

Types: deb deb-src
URIs: https://one.example/debian
 https://two.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://security.example/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.fixture(autouse=True)
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(aptmirror.OVERRIDE_ENV, raising=False)


@pytest.fixture
def apt_dir(tmp_path: Path) -> Path:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(ONE_LINE)
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    return tmp_path


@needs_apt
def test_apt_reads_both_formats_in_its_own_order(apt_dir: Path) -> None:
    sources = apt_sources(apt_dir)
    assert sources[0] == AptSource("deb-src", "http://sources.example/debian", "trixie")
    assert AptSource("deb", "http://mirror.example/debian", "trixie") in sources  # options and trailing slash
    assert AptSource("deb", "https://two.example/debian", "bookworm-updates") in sources  # a continued URIs line
    assert not any("disabled" in s.uri or "commented" in s.uri for s in sources)  # Enabled: no; a comment
    assert len(sources) == len(set(sources))  # one per source, not per component or architecture


@needs_apt
def test_the_suites_own_archive_first(apt_dir: Path) -> None:
    assert debian_mirror("trixie", apt_dir, codename="bookworm") == "http://mirror.example/debian"
    assert debian_mirror("bookworm", apt_dir, codename="bookworm") == "https://one.example/debian"
    assert debian_mirror("bookworm-security", apt_dir, codename="bookworm") == "http://security.example/debian-security"


@needs_apt
def test_else_the_archive_of_the_hosts_own_release(apt_dir: Path) -> None:
    # No sid source: the archive serving bookworm has sid too. deb-src and cdrom: are never taken.
    assert debian_mirror("sid", apt_dir, codename="bookworm") == "https://one.example/debian"
    (apt_dir / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(MirrorError, match=r"'sid' nor 'bookworm'.*--mirror.*SANDBOX_DEBIAN_MIRROR"):
        debian_mirror("sid", apt_dir, codename="bookworm")


@needs_apt
def test_a_source_apt_cannot_read_is_named(apt_dir: Path) -> None:
    (apt_dir / "sources.list").write_text("deb http://mirror.example/debian trixie\n")  # no component
    with pytest.raises(MirrorError, match=r"indextargets failed \(.*sources.list.*SANDBOX_DEBIAN_MIRROR"):
        apt_sources(apt_dir)


def test_a_host_without_apt_is_told_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MirrorError, match=r"apt-get is not installed.*--mirror.*SANDBOX_DEBIAN_MIRROR"):
        debian_mirror("trixie")


def test_the_override_needs_no_apt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv(aptmirror.OVERRIDE_ENV, " http://local.example/debian/ ")
    assert debian_mirror("trixie") == "http://local.example/debian"


def test_targets_are_read_from_apts_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever the host's apt: one source per type, archive and suite, in apt's order."""
    fake = tmp_path / "apt-get"
    lines = ["deb bookworm http://a.example/debian", "deb bookworm http://a.example/debian",
             "deb bookworm tor+http://b.example/debian", "deb trixie file:/srv/mirror"]
    fake.write_text("#!/bin/sh\nprintf '%s\\n' " + " ".join(f"'{line}'" for line in lines) + "\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert [s.uri for s in apt_sources()] == ["http://a.example/debian", "tor+http://b.example/debian",
                                              "file:/srv/mirror"]
    assert debian_mirror("trixie", codename="bookworm") == "file:/srv/mirror"
    assert debian_mirror("sid", codename="bookworm") == "http://a.example/debian"


def test_host_codename(tmp_path: Path) -> None:
    (tmp_path / "os-release").write_text('NAME="Debian GNU/Linux"\nVERSION_CODENAME="trixie"\n')
    assert aptmirror.host_codename(tmp_path / "os-release") == "trixie"
    assert aptmirror.host_codename(tmp_path / "missing") == ""
