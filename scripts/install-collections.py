#!/usr/bin/env python3
"""Install the pinned collections (collections/requirements.yml) into a virtualenv's site-packages,
from the `ansible` release on PyPI that ships exactly those versions: one wheel (cached) instead of
Galaxy, which these machines cannot reach. Only the pinned collections are unpacked (not the 48
namespaces of the bundle). Idempotent. With --link-checkout, this checkout also becomes the
collection sandbox_host.platform in that virtualenv (a symlink: an editable install), so the
playbooks' FQCN role names resolve to the roles being edited.

    install-collections.py VENV_PYTHON [--link-checkout] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# The ansible release (PyPI) that ships exactly the versions pinned in collections/requirements.yml.
ANSIBLE_RELEASE = "12.3.0"


def site_packages(python: str) -> Path:
    out = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def installed_version(target: Path, name: str) -> str | None:
    namespace, collection = name.split(".")
    manifest = target / "ansible_collections" / namespace / collection / "MANIFEST.json"
    try:
        return json.loads(manifest.read_text())["collection_info"]["version"]
    except (OSError, ValueError, KeyError):
        return None


def link_checkout(target: Path) -> None:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    link = target / "ansible_collections" / galaxy["namespace"] / galaxy["name"]
    if link.is_symlink() and link.resolve() == ROOT:
        return
    if link.exists() and not link.is_symlink():
        raise SystemExit(f"collections: {link} is an installed collection, not this checkout: remove it first")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(ROOT, target_is_directory=True)
    print(f"collections: {galaxy['namespace']}.{galaxy['name']} -> {ROOT}", file=sys.stderr)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("python", help="the virtualenv's interpreter")
    parser.add_argument("--link-checkout", action="store_true", help="make this checkout sandbox_host.platform")
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/sandbox-host/collections"))
    args = parser.parse_args(argv)
    python, cache = args.python, args.cache
    spec = yaml.safe_load((ROOT / "collections" / "requirements.yml").read_text())
    target = site_packages(python)
    if args.link_checkout:
        link_checkout(target)
    wanted = {c["name"]: str(c["version"]) for c in spec["collections"]}
    missing = {n: v for n, v in wanted.items() if installed_version(target, n) != v}
    if not missing:
        return 0
    release = ANSIBLE_RELEASE
    cache.mkdir(parents=True, exist_ok=True)
    wheels = sorted(cache.glob(f"ansible-{release}-*.whl"))
    if not wheels:
        print(f"collections: fetching ansible {release} from the package index (once)", file=sys.stderr)
        subprocess.run([python, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "--dest", str(cache), f"ansible=={release}"], check=True)
        wheels = sorted(cache.glob(f"ansible-{release}-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        for name, version in missing.items():
            prefix = "ansible_collections/{}/{}/".format(*name.split("."))
            members = [m for m in wheel.namelist() if m.startswith(prefix)]
            if not members:
                raise SystemExit(f"collections: ansible {release} does not ship {name}")
            wheel.extractall(target, members)
            got = installed_version(target, name)
            if got != version:
                raise SystemExit(f"collections: ansible {release} ships {name} {got}, not {version}: fix the pins")
            print(f"collections: {name} {version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
