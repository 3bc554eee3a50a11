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
    assert set(results["stores"]) == {"moto", "rgw"}
    for store in results["stores"].values():
        assert set(store["strategies"]) == {"host", "in-container"}
        assert store["bare_docker_batch"]["per_run"]["n"] == 2 and store["bare_docker_batch"]["wall_s"] > 0
        for row in store["strategies"].values():
            launch = row["launch"]
            for key in ("bare_docker_run", "session_create"):
                assert 0 < launch[key]["p50"] <= launch[key]["p95"] and launch[key]["n"] == 2
            assert row["concurrency"]["failures"] == [] and row["concurrency"]["isolated"] == 2
            for rates in row["io"].values():
                assert rates["write_MBps"] > 0 and rates["read_MBps"] > 0 and rates["small_read_fps"] > 0
                assert rates["write_vs_boto3"] > 0
        internet = store["strategies"]["host"]["launch_internet"]  # the default policy, on the sandbox network
        assert 0 < internet["session_create"]["p50"] and internet["bare_docker_run"]["n"] == 2
    assert results["image"]["image_MB"] >= results["image"]["base_MB"] > 0
    assert (tmp_path / "results.md").read_text().startswith("# Benchmarks")
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
