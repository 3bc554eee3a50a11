"""Each role's Molecule scenario (extensions/molecule/<role>): create the Debian 12 and 13 systemd
test hosts, converge, converge again (nothing may change), check mode, verify with testinfra,
destroy. This is the one test of each role on its own; test_test_hosts.py tests them together
(the whole site.yml, a fleet)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from provisioning.hostinfo import docker_client

from . import testhosts
from .conftest import BIN, ROOT

SCENARIOS = sorted(p.name for p in (ROOT / "extensions/molecule").iterdir() if (p / "molecule.yml").is_file())
TIMINGS: dict[str, float] = {}

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def molecule_env() -> dict[str, str]:
    """The test-host images, the role's wheel, and the archives the scenarios install offline from."""
    client = docker_client(timeout=900)
    for suite in testhosts.PYTHON:
        testhosts.build_image(client, suite)
    subprocess.run([str(BIN / "python"), "scripts/build-wheel.py", "roles/sandbox_host/files/dist"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_FORCE_COLOR="0", NO_COLOR="1", PY_COLORS="0",
               SANDBOX_MOLECULE_BASE_TARBALL=str(testhosts.offline_base_tarball(client)))
    for suite, python in testhosts.PYTHON.items():
        archive = testhosts.wheelhouse_archive(ROOT, BIN / "pip", python)
        env[f"SANDBOX_MOLECULE_WHEELHOUSE_{suite.upper()}"] = str(archive)
    yield env
    print(f"\nmolecule timings (s): {json.dumps(TIMINGS)}", file=sys.stderr)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_role_scenario(scenario: str, molecule_env: dict[str, str]) -> None:
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "molecule"), "test", "-s", scenario], cwd=ROOT, env=molecule_env,
                          capture_output=True, text=True, timeout=1100)
    TIMINGS[scenario] = round(time.monotonic() - started, 1)
    output = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"molecule test -s {scenario} failed:\n{output[-8000:]}"
    # Every step ran and succeeded: converge, converge again changing nothing, check mode, testinfra.
    for step in ("converge", "idempotence", "check", "verify"):
        assert re.search(rf"\b{scenario} (?:>|➜) {step}(?:\]|:) Executed: Successful", output), \
            f"{step} did not run:\n{output[-4000:]}"
