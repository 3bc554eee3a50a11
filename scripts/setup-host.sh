#!/usr/bin/env bash
# Converge this machine into a sandbox host with the project's own playbook (connection local):
# FUSE, s3fs, the Docker engine (started with or without systemd), the runtime in
# /opt/sandbox-host, the dev object store on 127.0.0.1:9000 with the sessions bucket, and the
# executor image; then `sandbox-host doctor`. Idempotent.
# Usage: scripts/setup-host.sh [--test]   (--test also installs the test and lint tools in .venv)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "run as root (it installs packages and starts services)"; exit 1; }

# The controller: Python's venv support, then Ansible and the project in .venv.
if ! dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed"; then
    log "installing python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
extras="ansible"
[ "${1:-}" = "--test" ] && extras="test"
[ -x .venv/bin/python ] || { log "creating .venv"; python3 -m venv .venv; }
log "installing sandbox-host[$extras] into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e ".[$extras]"
# The roles' collections (pinned), and this checkout as the collection sandbox_host.platform.
.venv/bin/python scripts/install-collections.py .venv/bin/python --link-checkout
# The runtime's wheel, which the sandbox_host role installs on the hosts (reproducible: unchanged
# sources give the same bytes, so a re-run copies nothing).
.venv/bin/python scripts/build-wheel.py roles/sandbox_host/files/dist >/dev/null

# The dev object store's key pair for this machine, generated once.
secrets=/etc/sandbox-host/local-secrets.yml
if [ ! -s "$secrets" ]; then
    log "generating $secrets"
    install -d -m 0755 /etc/sandbox-host
    ( umask 077
      .venv/bin/python - "$secrets" <<'PY'
import secrets, sys
with open(sys.argv[1], "w") as out:
    out.write(f"object_store_root_user: local{secrets.token_hex(6)}\n")
    out.write(f"object_store_root_password: {secrets.token_urlsafe(30)}\n")
PY
    )
fi

log "converging this machine: ansible-playbook -i scripts/local.inventory playbooks/site.yml"
converge() {
    ANSIBLE_CONFIG="$PWD/ansible.cfg" .venv/bin/ansible-playbook -i scripts/local.inventory \
        -e "@$secrets" playbooks/site.yml
}
if [ -t 2 ]; then
    converge    # on a terminal: every task as it runs
else
    # CI and logs: the recap only (the whole run in a file; its end on failure).
    converge_log=/var/log/sandbox-host-setup.log
    started=$(date +%s)
    if ! converge >"$converge_log" 2>&1; then
        tail -n 80 "$converge_log" >&2
        log "the converge failed; the whole run is in $converge_log"
        exit 1
    fi
    log "converged in $(( $(date +%s) - started ))s: $(grep -A1 '^PLAY RECAP' "$converge_log" | tail -n 1 | tr -s ' ')"
fi
