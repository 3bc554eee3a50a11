#!/usr/bin/env bash
# Prepare this machine for sandbox-host (idempotent): Debian packages, the Python package in
# .venv, and a running Docker engine. Used by the README's two commands and by .ci/run.
# Usage: scripts/setup-host.sh [--test]   (--test also installs the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "run as root (it installs packages and starts dockerd)"; exit 1; }

packages=(docker.io s3fs debootstrap python3-venv ca-certificates)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

extras="server"
[ "${1:-}" = "--test" ] && extras="test"
if [ ! -x .venv/bin/python ]; then
    log "creating .venv"
    python3 -m venv .venv
fi
log "installing sandbox-host[$extras] into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"

# The Docker engine: systemd where it is PID 1, otherwise the daemon by hand.
if ! docker info >/dev/null 2>&1; then
    if [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; then
        log "starting docker.service"
        systemctl start docker
    else
        log "starting dockerd (no systemd here); log in /var/log/dockerd.log"
        nohup dockerd >/var/log/dockerd.log 2>&1 &
    fi
    for _ in $(seq 1 150); do
        docker info >/dev/null 2>&1 && break
        sleep 0.2
    done
    docker info >/dev/null 2>&1 || { log "dockerd did not come up; see /var/log/dockerd.log"; exit 1; }
fi
log "ready: $(docker version --format 'docker engine {{.Server.Version}}'), $(s3fs --version | head -n 1)"
