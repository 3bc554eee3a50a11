"""Mounter processes started ahead of time (fuseproc.Spares): a spare holds no credentials until
it takes its job, runs exactly that job with its log, and is used once."""

from __future__ import annotations

import sys
from pathlib import Path

from provisioning.volumed.fuseproc import HostRunner, Spares

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = [sys.executable, "-c",
           "import os, sys\n"
           f"sys.path.insert(0, {str(ROOT)!r})\n"
           "from provisioning.volumed.fuseproc import take_job\n"
           "assert sys.argv[1:] == ['--spare'], sys.argv\n"
           "before = os.environ.get('AWS_SECRET_ACCESS_KEY')\n"
           "argv = take_job(sys.stdin.buffer)\n"
           "print(argv, before, os.environ['AWS_SECRET_ACCESS_KEY'], os.getpid())\n"]


def test_a_spare_takes_its_job_credentials_and_log_and_the_next_is_started(tmp_path: Path) -> None:
    spares = Spares([PROGRAM])
    spares.start()
    try:
        first = spares.take([*PROGRAM, "--bucket", "b"], {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}, tmp_path / "a.log")
        assert first is not None and first.wait(10) == 0
        assert first.args == [*PROGRAM, "--bucket", "b"]  # what it runs, for messages
        argv, before, secret, pid = (tmp_path / "a.log").read_text().rsplit(" ", 3)
        assert (argv, before, secret, int(pid)) == ("['--bucket', 'b']", "None", "s3cr3t", first.pid)
        second = spares.take([*PROGRAM, "x"], {"AWS_SECRET_ACCESS_KEY": "other"}, tmp_path / "b.log")
        assert second is not None and second.pid != first.pid and second.wait(10) == 0
        assert "['x'] None other" in (tmp_path / "b.log").read_text()
        assert spares.take(["/bin/true"], {}, tmp_path / "c.log") is None  # not a program with spares
    finally:
        spares.close()


def test_a_runner_without_a_ready_spare_starts_the_process_the_usual_way(tmp_path: Path) -> None:
    runner = HostRunner()
    proc = runner.start([sys.executable, "-c", "import os; print(os.environ['K'])"], {"K": "v"}, tmp_path / "l")
    assert proc.wait(10) == 0 and (tmp_path / "l").read_text() == "v\n"
