#!/usr/bin/env bash
# The main job on the embedded default, no outside services: converge this machine with the
# project's playbook (Docker engine, s3fs, the runtime, the dev object store on 127.0.0.1:9000,
# the executor image), then run one session from upload to artifact and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh

cli=/usr/local/bin/sandbox-host   # installed by the playbook; settings in /etc/sandbox-host/config.toml
work=$(mktemp -d)
session="demo-$(date +%s)"
cleanup() {
    [ -n "$session" ] && "$cli" session stop "$session" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== session $session"
"$cli" session create "$session" --json
printf 'city,temperature\noslo,-3\nlisbon,17\n' >"$work/data.csv"
"$cli" session upload "$session" "$work/data.csv"
"$cli" session exec "$session" -- python3 -c \
    "open('artifacts/out.txt','w').write(open('uploads/data.csv').read().upper())"
echo "== artifacts"
"$cli" session artifacts "$session"
echo "== out.txt (downloaded from S3)"
"$cli" session download "$session" out.txt -o "$work/out.txt"
cat "$work/out.txt"
"$cli" session stop "$session"
session=
