"""The local-first mounter: the session's files on its own capped host filesystem (its staging
area), S3 kept up to date behind them by a sync process of its own (``volumed.localsync``)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ... import facts
from ...config import Credentials, ValidSettings
from ...escape import printable
from ..fuseproc import MountError
from .base import HeldFile, MountCommand, MountTarget, Refuses, aws_env

PROGRAM = [sys.executable, "-m", "provisioning.volumed.localsync"]  # the volume service keeps a spare ready
WORKSPACE_DIR = "ws"  # the tree, in the staging area (also holding the control socket); the executor knows
# the tree by it (executor/app/executor.py, LOCAL_TREE), when it was mounted before Docker bound the volume
STALLED_AFTER, ASK_EVERY = 2.0, 5.0  # when to ask the store whether it refuses the files left, and again


class LocalMounter:
    name = "local"
    renews = True  # on the sync process's control socket: its next request signs with them

    def command(self, settings: ValidSettings, target: MountTarget, credentials: Credentials) -> MountCommand:
        control = target.staging.mountpoint / "sync.sock"
        source = str(target.staging.mountpoint / WORKSPACE_DIR)
        argv = [*PROGRAM,
                "--endpoint", settings.s3_endpoint, "--region", settings.region, "--bucket", settings.bucket,
                "--prefix", facts.session_prefix(target.session_id),
                "--source", source, "--mountpoint", str(target.mountpoint),
                "--control", str(control), "--uid", str(target.uid), "--gid", str(target.gid),
                "--index", str(target.staging.index)]
        return MountCommand(argv, aws_env(credentials), json.dumps({"socket": str(control), "source": source}))

    def verify(self, control: str, timeout: float) -> None:
        """The sync process answers on its control socket (it listens before it mounts)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ask(control, "ping", 5).get("ok"):
                    return
                raise MountError("the workspace's sync process does not answer ping")
            except MountError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def drain(self, control: str, timeout: float, refuses: Refuses) -> list[HeldFile]:
        """A last round, checked against the server's listing: [] once everything is in S3. Files
        the store keeps refusing while it takes others are returned (``refuses`` judges; their
        bytes then go to the quarantine); otherwise MountError naming what is not in S3 after
        ``timeout`` (the volume then keeps the staging area: the files themselves)."""
        source = Path(json.loads(control)["source"])
        deadline = time.monotonic() + timeout
        next_question = time.monotonic() + STALLED_AFTER
        while True:
            answer = ask(control, "flush", max(deadline - time.monotonic(), 5))
            if answer.get("ok"):
                return []
            failures = list(answer.get("failures", []))
            now = time.monotonic()
            if (now >= next_question and failures and not answer.get("more")
                    and all(f.get("path") and f.get("held") for f in failures)):
                held = [HeldFile(str(f["path"]), source / str(f["path"]), True) for f in failures]
                if refuses(held):
                    return held
                next_question = now + ASK_EVERY
            if now > deadline:
                raise MountError(f"not in S3 after {timeout:g}s: {_named(answer)}; the files stay on this host")
            time.sleep(0.5)

    def sync(self, control: str, timeout: float) -> None:
        """A round now, checked against the server's listing."""
        answer = ask(control, "flush", timeout)
        if not answer.get("ok"):
            raise MountError(f"not in S3: {_named(answer)}")

    def renew(self, control: str, credentials: Credentials, timeout: float) -> None:
        keys = {"AccessKeyId": credentials.access_key, "SecretAccessKey": credentials.secret_key,
                "SessionToken": credentials.session_token}
        if not ask(control, "renew " + json.dumps(keys), timeout).get("ok"):
            raise MountError("the workspace's sync process did not take the fresh credentials")

    def recover(self, settings: ValidSettings, target: MountTarget, credentials: Credentials,
                timeout: float) -> None:
        """A new sync process, once, from the index the dead one left: what others put comes in
        (both sides kept where both changed), then everything in the tree goes to S3."""
        argv = [*self.command(settings, target, credentials).argv, "--resume", "--once", str(timeout)]
        try:
            done = subprocess.run(argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **aws_env(credentials)},
                                  capture_output=True, timeout=timeout + 30, start_new_session=True)
        except subprocess.TimeoutExpired:
            raise MountError(f"the recovery of the workspace's files did not end in {timeout + 30:g}s") from None
        if done.returncode != 0:
            last = [line for line in done.stderr.decode(errors="replace").splitlines() if line.strip()][-3:]
            raise MountError(f"the workspace's files could not all be sent to S3: {printable(' | '.join(last))}")

    def check(self) -> None:
        """Nothing to install: the sync process is this package's own."""


def _named(answer: dict[str, Any]) -> str:
    """The first failures of a flush, escaped (the paths are the session's names), and the count."""
    failures = list(answer.get("failures", []))
    named = "; ".join(f"'{printable(str(f.get('path')))}': {printable(str(f.get('reason')))}"
                      if f.get("path") else printable(str(f.get("reason"))) for f in failures[:5])
    total = len(failures) + int(answer.get("more", 0))
    return f"{total} path(s): {named}" + (" ..." if total > 5 else "")


def ask(control: str, request: str, timeout: float) -> dict[str, Any]:
    """One request on the sync process's control socket; its JSON answer."""
    path = json.loads(control)["socket"]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout)
            conn.connect(path)
            conn.sendall(request.encode() + b"\n")
            line = conn.makefile("rb").readline(1 << 20)
    except OSError as exc:
        raise MountError(f"the workspace's sync process does not answer at {path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(line)
    except ValueError:
        raise MountError(f"the workspace's sync process at {path} gave no answer to {request}") from None
    return dict(answer) if isinstance(answer, dict) else {}
