#!/usr/bin/env bash
# The whole test suite: sets up the host (packages, .venv, dockerd), then unit and
# end-to-end tests against the real Docker engine and an S3 server on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh --test
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
