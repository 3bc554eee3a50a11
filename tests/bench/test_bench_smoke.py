"""The benchmarks in smoke mode (tiny sizes): they still run end to end and write their outputs.
Not a timed test: the numbers are only checked for sense, never against targets."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.docker
def test_benchmarks_smoke(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.run", "--smoke", "--out", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "smoke" and results["machine"]["cores"] >= 1
    launch = results["launch"]
    for key in ("bare_docker_run", "container_without_mount", "session_create"):
        assert 0 < launch[key]["p50"] <= launch[key]["p95"] and launch[key]["n"] == 2
    for size, row in results["concurrency"].items():
        assert row["failures"] == [] and row["isolated"] == int(size)
        assert row["bare_docker_run"]["per_run"]["n"] == int(size) and row["bare_docker_run"]["wall_s"] > 0
    for row in results["io"].values():
        assert {"boto3", "s3fs:defaults"} <= set(row)
        assert all(r["write_MBps"] > 0 and r["read_MBps"] > 0 and r["small_read_fps"] > 0 for r in row.values())
    assert results["image"]["image_MB"] >= results["image"]["base_MB"] > 0
    assert (tmp_path / "results.md").read_text().startswith("# Benchmarks")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
