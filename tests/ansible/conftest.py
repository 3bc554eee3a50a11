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


def run_playbook(inventory: str | Path, *args: str, timeout: int = 1800) -> PlaybookRun:
    import time

    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0", ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, round(time.monotonic() - started, 1))
