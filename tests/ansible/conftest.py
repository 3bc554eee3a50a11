"""Helpers for the host-bootstrap tests: run ansible-playbook from the project's .venv."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCAL_SECRETS = Path("/etc/sandbox-host/local-secrets.yml")


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    seconds: float

    def recap(self) -> dict[str, dict[str, int]]:
        hosts = {}
        for match in re.finditer(r"^(\S+)\s+:\s+((?:\w+=\d+\s*)+)$", self.output, re.MULTILINE):
            hosts[match.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))}
        return hosts


@dataclass(frozen=True)
class Controller:
    """Where ansible-playbook runs: its virtualenv's bin directory, working directory and config."""

    bin: Path
    cwd: Path
    config: Path


# This checkout, linked into .venv as the collection (what a developer runs).
CHECKOUT = Controller(BIN, ROOT, ROOT / "ansible.cfg")


def run_playbook(inventory: str | Path, *args: str, timeout: int = 1800,
                 controller: Controller = CHECKOUT) -> PlaybookRun:
    import time

    env = dict(os.environ, ANSIBLE_CONFIG=str(controller.config), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               PATH=f"{controller.bin}:{os.environ.get('PATH', '')}")
    started = time.monotonic()
    proc = subprocess.run([str(controller.bin / "ansible-playbook"), "-i", str(inventory), *args], cwd=controller.cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, round(time.monotonic() - started, 1))
