"""The Debian archive this host's apt uses, as apt itself reads its sources (`apt-get indextargets`:
one-line and deb822 files, options, Enabled: no, apt's own configuration of where they are):
debootstrap and the s3fs runtime fetch from it, so a host with a local mirror needs no setting and
no archive host name is written anywhere in the code."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

OVERRIDE_ENV = "SANDBOX_DEBIAN_MIRROR"
# One line per index file `apt-get update` would fetch: deb or deb-src, the suite as the source
# names it, the archive's URI. --no-release-info: also on a host whose lists were never fetched.
_INDEXTARGETS = ["indextargets", "--no-release-info", "--format", "$(TARGET_OF) $(RELEASE) $(SITE)"]
_FIX = "pass --mirror (sandbox-host image build) or set SANDBOX_DEBIAN_MIRROR to the Debian archive's URL"
# What debootstrap and a plain apt source can fetch from (not cdrom:, mirror+, tor+ and the like).
_SCHEMES = ("http://", "https://", "file:")


class MirrorError(InputError):
    kind = "mirror"


@dataclass(frozen=True)
class AptSource:
    type: str  # deb or deb-src
    uri: str
    suite: str


def apt_sources(apt_dir: Path | None = None) -> list[AptSource]:
    """The host's apt sources as apt reads them, one per type, archive and suite, in apt's order.

    ``apt_dir``: read ``apt_dir/sources.list`` and ``apt_dir/sources.list.d`` instead of the
    files apt's configuration names (tests)."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise MirrorError(f"apt-get is not installed (not a Debian/Ubuntu host), so there are no apt sources to "
                          f"take a Debian mirror from: {_FIX}")
    options = [] if apt_dir is None else ["-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
                                          "-o", f"Dir::Etc::SourceParts={apt_dir / 'sources.list.d'}"]
    proc = subprocess.run([apt_get, *options, *_INDEXTARGETS], check=False, capture_output=True, text=True,
                          errors="replace", env=dict(os.environ, LC_ALL="C"))
    if proc.returncode != 0:
        detail = " | ".join(dict.fromkeys(proc.stderr.strip().splitlines()))  # apt repeats some errors
        raise MirrorError(f"apt-get indextargets failed ({detail}): fix the apt sources, or {_FIX}")
    found: dict[AptSource, None] = {}  # an ordered set: a source has one target per component and architecture
    for line in proc.stdout.splitlines():
        words = line.split()
        if len(words) == 3:
            found[AptSource(type=words[0], suite=words[1], uri=words[2])] = None
    return list(found)


def host_codename(os_release: Path = Path("/etc/os-release")) -> str:
    try:
        for line in os_release.read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""


def debian_mirror(suite: str, apt_dir: Path | None = None, codename: str | None = None) -> str:
    """The Debian archive this host's apt uses for SUITE (else the one serving the host's own release), for debootstrap.

    SANDBOX_DEBIAN_MIRROR overrides it (and then apt is not asked).
    """
    override = os.environ.get(OVERRIDE_ENV, "").strip()
    if override:
        return override.rstrip("/")
    usable = [s for s in apt_sources(apt_dir) if s.type == "deb" and s.uri.startswith(_SCHEMES)]
    own = codename if codename is not None else host_codename()
    # SUITE's source; else another suite of the same archive: the source that serves this host's own
    # release (a suite with a dash, bookworm-security, -updates, -backports, is a partial archive's).
    for wanted in filter(None, (suite, own)):
        for source in usable:
            if source.suite == wanted:
                return source.uri.rstrip("/")
    raise MirrorError(f"no Debian archive for {suite!r}{f' nor {own!r}' if own and own != suite else ''} "
                      f"in this host's apt sources (apt-get indextargets): add one there, or {_FIX}")
