#!/usr/bin/env bash
# The main job on the embedded default: no outside services. Sets up the host, starts the
# embedded S3 endpoint on loopback, builds the executor image, then runs one session from
# upload to artifact and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh

export PATH="$PWD/.venv/bin:$PATH"
work=$(mktemp -d)
export SANDBOX_CONFIG="$work/s3.toml"
s3_pid=
cleanup() {
    [ -n "${session:-}" ] && sandbox-host session stop "$session" >/dev/null 2>&1 || true
    [ -n "$s3_pid" ] && kill "$s3_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== embedded S3 endpoint (in memory, loopback only)"
sandbox-host s3 serve --host 127.0.0.1 --port 0 --write-config "$SANDBOX_CONFIG" >"$work/s3.log" 2>&1 &
s3_pid=$!
for _ in $(seq 1 100); do grep -q "embedded S3 endpoint" "$work/s3.log" 2>/dev/null && break; sleep 0.1; done
cat "$work/s3.log"

echo "== executor image"
sandbox-host image build

echo "== doctor"
sandbox-host doctor

session="demo-$(date +%s)"
echo "== session $session (host network: the S3 endpoint is on this host's loopback)"
sandbox-host session create "$session" --network host --json
printf 'city,temperature\noslo,-3\nlisbon,17\n' >"$work/data.csv"
sandbox-host session upload "$session" "$work/data.csv"
sandbox-host session exec "$session" -- python3 -c \
    "open('artifacts/out.txt','w').write(open('uploads/data.csv').read().upper())"
echo "== artifacts"
sandbox-host session artifacts "$session"
echo "== out.txt (downloaded from S3)"
sandbox-host session download "$session" out.txt -o "$work/out.txt"
cat "$work/out.txt"
sandbox-host session stop "$session"
session=
