"""A volume service of the tests' own (the real `sandbox-host volumes serve`, as a subprocess),
pointed at the tests' S3 server under a driver name of its own, so it never touches the host's
installed service. Shared by the tests and the benchmarks."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomli_w

from provisioning import facts
from provisioning.volumed.service import purge, socket_path

ROOT = Path(__file__).resolve().parents[2]


def network_for(driver: str) -> str:
    """The sessions' network a test service makes and guards: its own (two guards of one network
    would undo each other), never the host's; at most 15 characters, as its bridge takes the name."""
    import hashlib

    return "sbxt-" + hashlib.sha256(driver.encode()).hexdigest()[:10]


class VolumeService:
    def __init__(self, settings: Mapping[str, Any], workdir: Path, driver: str | None = None) -> None:
        self.driver = driver or f"sbx-test-{secrets.token_hex(4)}"
        self.config = workdir / f"{self.driver}.toml"
        self.log = workdir / f"{self.driver}.log"
        values = {k: v for k, v in settings.items() if v not in (None, "")}
        values["volume_driver"] = self.driver
        values.setdefault("network", network_for(self.driver))
        self.network = str(values["network"])
        fd = os.open(self.config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            tomli_w.dump(values, out)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return socket_path(self.driver)

    def start(self, timeout: float = 20) -> VolumeService:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "provisioning.cli", "volumes", "serve",
                                          "--config", str(self.config)], cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"volume service {self.driver} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """Whether the service accepts a connection: a socket file alone may be one a killed
        instance left."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
        return True

    def stop(self) -> None:
        """Stop the process (mounts stay, as with the real service)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def kill(self) -> None:
        """Kill the process as a crash or an OOM kill would: no clean-up, its socket stays."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)

    def close(self) -> None:
        self.stop()
        purge(self.driver, network=self.network)

    def __enter__(self) -> VolumeService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_dir(self) -> Path:
        return Path(facts.SERVICE_STATE_DIR) / self.driver
