#!/usr/bin/env bash
# Build the Ansible collection sandbox_host.platform: the runtime's wheel first (the sandbox_host
# role carries it in files/dist/), then ansible-galaxy collection build. Prints the tarball's path.
# Usage: scripts/build-collection.sh [OUTDIR]     (default dist/; needs .venv: scripts/setup-host.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath -m "${1:-dist}")"
mkdir -p "$out"
.venv/bin/python scripts/build-wheel.py roles/sandbox_host/files/dist >/dev/null
.venv/bin/ansible-galaxy collection build --force --output-path "$out" . >/dev/null
version="$(.venv/bin/python -c 'import yaml; print(yaml.safe_load(open("galaxy.yml"))["version"])')"
echo "$out/sandbox_host-platform-$version.tar.gz"
