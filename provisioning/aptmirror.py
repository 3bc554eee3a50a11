"""The Debian archive this host's apt uses, read from its own apt configuration (deb822 .sources
and one-line sources.list / .list files): debootstrap and the s3fs runtime fetch from it, so a host
with a local mirror needs no setting and no archive host name is written anywhere in the code."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

APT_DIR = Path("/etc/apt")
OVERRIDE_ENV = "SANDBOX_DEBIAN_MIRROR"


class MirrorError(InputError):
    kind = "mirror"


@dataclass(frozen=True)
class AptSource:
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    stanza: dict[str, str] = {}
    key = ""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, ""
        elif line[0] in " \t":
            if key:
                stanza[key] += " " + line.strip()
        else:
            name, sep, value = line.partition(":")
            if sep:
                key = name.strip().lower()
                stanza[key] = value.strip()
    if stanza:
        yield stanza


def _deb822_sources(text: str) -> Iterator[AptSource]:
    for stanza in _deb822_stanzas(text):
        if stanza.get("enabled", "yes").lower() == "no":
            continue
        yield AptSource(tuple(stanza.get("types", "").split()), tuple(stanza.get("uris", "").split()),
                        tuple(stanza.get("suites", "").split()))


def _one_line_sources(text: str) -> Iterator[AptSource]:
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        rest = words[1:]
        if rest[0].startswith("["):
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) >= 2:
            yield AptSource(("deb",), (rest[0],), (rest[1],))


def apt_sources(apt_dir: Path = APT_DIR) -> list[AptSource]:
    """The host's apt sources, deb822 (.sources) and one-line (sources.list, .list) alike."""
    found: list[AptSource] = []
    one_line = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if path.is_file():
            found += _one_line_sources(path.read_text(errors="replace"))
    for path in sorted((apt_dir / "sources.list.d").glob("*.sources")):
        found += _deb822_sources(path.read_text(errors="replace"))
    return found


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def debian_mirror(suite: str, apt_dir: Path = APT_DIR, codename: str | None = None) -> str:
    """The Debian archive this host's apt uses for SUITE (else its first main-archive source), for debootstrap.

    SANDBOX_DEBIAN_MIRROR overrides it.
    """
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override:
        return override.rstrip("/")
    usable = [s for s in apt_sources(apt_dir)
              if "deb" in s.types and any(u.startswith(("http://", "https://", "file:")) for u in s.uris)]
    # A suite with a dash (bookworm-security, -updates, -backports) is served by a partial archive.
    exact = [s for s in usable if suite in s.suites]
    own = codename if codename is not None else host_codename()
    # Another suite of the same archive: the source that serves this host's own release.
    same_archive = [s for s in usable if own and own in s.suites]
    for source in exact + same_archive:
        for uri in source.uris:
            if uri.startswith(("http://", "https://", "file:")):
                return uri.rstrip("/")
    raise MirrorError(f"no Debian archive for {suite!r} in the apt sources under {apt_dir} "
                   "(sources.list, sources.list.d/*.list, *.sources): "
                   "add one there or set SANDBOX_DEBIAN_MIRROR to the archive's URL")


