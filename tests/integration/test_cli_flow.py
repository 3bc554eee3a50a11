"""The README's commands, run as a user would run them (the `sandbox-host` entry point, env config)."""

from __future__ import annotations

import json
from pathlib import Path

from provisioning.config import Settings

from ..conftest import session_id
from .conftest import cli


def test_readme_session_flow(settings: Settings, manager, tmp_path: Path) -> None:
    sid = session_id()
    created = json.loads(cli(settings, "session", "create", sid, "--json").stdout)
    assert created["session_id"] == sid and len(created["container_id"]) == 64
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    cli(settings, "session", "upload", sid, str(tmp_path / "data.csv"))
    ran = cli(settings, "session", "exec", sid, "--", "python3", "-c",
              "open('artifacts/out.txt','w').write(open('uploads/data.csv').read().upper())")
    assert ran.stdout == "" and ran.stderr == ""
    failing = cli(settings, "session", "exec", sid, "--", "sh", "-c", "echo out; echo err >&2; exit 5", check=False)
    assert (failing.returncode, failing.stdout, failing.stderr) == (5, "out\n", "err\n")
    listed = cli(settings, "session", "artifacts", sid).stdout
    assert "out.txt" in listed
    cli(settings, "session", "download", sid, "out.txt", cwd=tmp_path)
    assert (tmp_path / "out.txt").read_text() == "A,B\n1,2\n"
    sessions = json.loads(cli(settings, "session", "list", "--json").stdout)
    assert sid in [s["session_id"] for s in sessions]
    again = cli(settings, "session", "create", sid, check=False)
    assert again.returncode == 1 and "already exists" in again.stderr
    cli(settings, "session", "stop", sid)
    assert sid not in [s["session_id"] for s in json.loads(cli(settings, "session", "list", "--json").stdout)]


def test_doctor_passes_and_names_failures(settings: Settings, storage) -> None:
    report = json.loads(cli(settings, "doctor", "--json").stdout)
    assert report["ok"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"s3fs", "fuse device", "docker engine", "executor image", "apparmor", "s3 endpoint",
            "s3 credentials", "s3 bucket"} <= names
    bad = settings.__class__(**{**settings.__dict__, "secret_key": "wrong"})
    failed = cli(bad, "doctor", "--json", check=False)
    assert failed.returncode == 1
    checks = {c["name"]: c for c in json.loads(failed.stdout)["checks"]}
    assert checks["s3 credentials"]["ok"] is False and "AWS_SECRET_ACCESS_KEY" in checks["s3 credentials"]["fix"]
    missing_image = cli(settings.__class__(**{**settings.__dict__, "image": "no-such-image:1"}), "doctor", "--json",
                        check=False)
    image_check = {c["name"]: c for c in json.loads(missing_image.stdout)["checks"]}["executor image"]
    assert image_check["ok"] is False and image_check["fix"] == "sandbox-host image build"
