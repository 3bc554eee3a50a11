"""The local-first workspace (mounter ``local``) against its targets, each next to its baseline in
the same run, on the host converged by the main job (its config and object store):

  create    session create with an empty prefix, against a bare ``docker run --rm IMAGE true``
            of the same image (interleaved, round by round);
  hydrate   a prefix of 1,000 files / 200 MB brought into the workspace at create (the sync
            process's own timing), against a parallel s3transfer download of the same objects
            (boto3's download_file, 16 at once, as many as the sync process uses);
  to S3     seconds from a file's close in the session until it is listed in S3 (p50, p95);
  burst     2,000 files of 4 KiB written at once, then ``session sync``: the drain's rate
            against a parallel s3transfer upload of the same files (boto3's upload_file, 16 at once).

    .venv/bin/python -m bench.localfirst [--out DIR] [--rounds N]

Writes localfirst.json and localfirst.md to docs/benchmarks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from provisioning import SessionManager, SessionStorage, config

from .run import pct

ROOT = Path(__file__).resolve().parents[1]
DRIVER = "sandbox-host-bench-lf"
WORKERS = 16
HYDRATE_FILES, HYDRATE_BYTES = 1000, 200 * 1000 * 1000
BURST_FILES, BURST_BYTES = 2000, 4096


def timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def stats(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 4), "p95": round(pct(values, 0.95), 4),
            "min": round(min(values), 4), "max": round(max(values), 4), "n": len(values)}


def bench_create(manager: SessionManager, image: str, rounds: int) -> dict[str, Any]:
    created, bare = [], []
    for _ in range(rounds):
        sid = "lfc" + uuid.uuid4().hex[:10]
        created.append(timed(lambda: manager.create(sid)))  # noqa: B023 - called at once
        manager.stop(sid)
        bare.append(timed(lambda: subprocess.run(["docker", "run", "--rm", "--network", "none", image, "true"],
                                                 check=True, capture_output=True)))
    return {"create_s": stats(created), "bare_docker_run_s": stats(bare),
            "ratio_p50": round(statistics.median(created) / statistics.median(bare), 2)}


def sync_log(volumes: Any, sid: str) -> str:
    """The session's volume log (the sync process's lines), read while the session runs."""
    for log in Path(volumes.state_dir()).glob("*.log"):
        if sid in log.name:
            return log.read_text()
    return ""


def bench_hydrate(manager: SessionManager, storage: SessionStorage, volumes: Any) -> dict[str, Any]:
    sid = "lfh" + uuid.uuid4().hex[:10]
    bucket, client = storage.settings.bucket, storage.client
    size = HYDRATE_BYTES // HYDRATE_FILES
    keys = [f"sessions/{sid}/uploads/h/{i:04}.bin" for i in range(HYDRATE_FILES)]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=bucket, Key=k, Body=os.urandom(size)), keys))
    with tempfile.TemporaryDirectory() as work:
        def download() -> None:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(lambda k: client.download_file(bucket, k, f"{work}/{k.rsplit('/', 1)[1]}"), keys))
        baseline = timed(download)
    created = timed(lambda: manager.create(sid))
    try:
        match = re.search(r"hydrated (\d+) file\(s\) in ([0-9.]+)s", sync_log(volumes, sid))
        if not match or int(match.group(1)) != HYDRATE_FILES:
            raise RuntimeError(f"no hydration line for {HYDRATE_FILES} files in the volume log")
        hydrate = float(match.group(2))
        check = manager.exec(sid, argv=["sh", "-c", "ls /workspace/uploads/h | wc -l"])
        assert check.stdout.decode().strip() == str(HYDRATE_FILES), check.stdout
    finally:
        manager.stop(sid)
    return {"files": HYDRATE_FILES, "bytes": HYDRATE_BYTES, "hydrate_s": hydrate, "create_s": round(created, 3),
            "s3transfer_download_s": round(baseline, 3), "speed_vs_s3transfer": round(baseline / hydrate, 2)}


def bench_to_s3(manager: SessionManager, storage: SessionStorage, rounds: int) -> dict[str, Any]:
    sid = "lfs" + uuid.uuid4().hex[:10]
    bucket, client = storage.settings.bucket, storage.client
    manager.create(sid)
    delays = []
    try:
        for i in range(rounds):
            key = f"sessions/{sid}/artifacts/close-{i}.txt"
            written = manager.exec(sid, argv=["python3", "-c", f"open('/workspace/artifacts/close-{i}.txt', 'w')"
                                              ".write('x'); import time; print(time.time())"])
            closed = float(written.stdout)
            while not client.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
                if time.time() - closed > 30:
                    raise RuntimeError(f"{key} not in S3 after 30 s")
                time.sleep(0.02)
            delays.append(time.time() - closed)
            time.sleep(0.3)  # not in step with the sync rounds
    finally:
        manager.stop(sid)
    return {"closed_to_listed_s": stats(delays)}


BURST = f"""
import os
os.makedirs("/workspace/artifacts/burst")
block = os.urandom({BURST_BYTES})
for i in range({BURST_FILES}):
    with open(f"/workspace/artifacts/burst/{{i:04}}.bin", "wb") as f:
        f.write(block)
"""


def bench_burst(manager: SessionManager, storage: SessionStorage) -> dict[str, Any]:
    sid = "lfb" + uuid.uuid4().hex[:10]
    bucket, client = storage.settings.bucket, storage.client
    with tempfile.TemporaryDirectory() as work:
        block = os.urandom(BURST_BYTES)
        for i in range(BURST_FILES):
            Path(work, f"{i:04}.bin").write_bytes(block)

        def upload() -> None:
            with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(lambda i: client.upload_file(f"{work}/{i:04}.bin", bucket,
                                                           f"bench-baseline/{sid}/{i:04}.bin"), range(BURST_FILES)))
        baseline = timed(upload)
    manager.create(sid)
    try:
        started = time.perf_counter()
        written = manager.exec(sid, argv=["python3", "-c", BURST], timeout=600)
        assert written.exit_code == 0, written.stderr
        wrote = time.perf_counter() - started
        manager.sync(sid)
        drained = time.perf_counter() - started
    finally:
        manager.stop(sid)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"sessions/{sid}/artifacts/burst/")
    landed = sum(len(page.get("Contents", [])) for page in pages)
    assert landed >= BURST_FILES, landed
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda i: client.delete_object(Bucket=bucket, Key=f"bench-baseline/{sid}/{i:04}.bin"),
                      range(BURST_FILES)))
    return {"files": BURST_FILES, "bytes_each": BURST_BYTES, "write_s": round(wrote, 3),
            "write_then_synced_s": round(drained, 3), "s3transfer_upload_s": round(baseline, 3),
            "rate_vs_s3transfer": round(baseline / drained, 2)}


def main(argv: list[str] | None = None) -> int:
    from tests.servers.volumed import VolumeService

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    host = config.load({})  # the main job's config: its object store and key
    service = {"s3_endpoint": host.s3_endpoint, "bucket": host.bucket, "access_key": host.access_key,
               "secret_key": host.secret_key, "scoped_credentials": host.scoped_credentials}
    with tempfile.TemporaryDirectory() as work, VolumeService(service, Path(work), driver=DRIVER) as volumes:
        settings = config.load({"volume_driver": DRIVER, "network": volumes.network, "egress": "none",
                                "mounter": "local"})
        manager, storage = SessionManager(settings), SessionStorage(settings.validated())
        with_s3fs = SessionManager(dataclasses.replace(settings, mounter="s3fs"))
        result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "endpoint": "the main job's (embedded)"}
        for name, run in (("create", lambda: bench_create(manager, settings.image, args.rounds)),
                          ("create_s3fs", lambda: bench_create(with_s3fs, settings.image, args.rounds)),
                          ("hydrate", lambda: bench_hydrate(manager, storage, volumes)),
                          ("to_s3", lambda: bench_to_s3(manager, storage, 2 * args.rounds)),
                          ("burst", lambda: bench_burst(manager, storage))):
            print(f"localfirst: {name} ...", file=sys.stderr, flush=True)
            result[name] = run()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "localfirst.json").write_text(json.dumps(result, indent=2) + "\n")
    c, c3, h, b = result["create"], result["create_s3fs"], result["hydrate"], result["burst"]
    s = result["to_s3"]["closed_to_listed_s"]
    lines = ["# The local-first workspace against its targets", "",
             f"Run {result['date']} on the main job's host (2 cores; the embedded endpoint on 127.0.0.1), host "
             "strategy, mounter `local`. Each measure beside its baseline, in the same run "
             "(`.venv/bin/python -m bench.localfirst`).", "",
             "| measure | local-first | baseline | ratio | target |", "|---|---|---|---|---|",
             f"| create, empty prefix (p50 of {c['create_s']['n']}) | {c['create_s']['p50']} s | "
             f"{c['bare_docker_run_s']['p50']} s (bare `docker run`) | {c['ratio_p50']}x | ≤ 1.1x |",
             f"| create, s3fs, for reference (p50 of {c3['create_s']['n']}) | {c3['create_s']['p50']} s | "
             f"{c3['bare_docker_run_s']['p50']} s (bare `docker run`) | {c3['ratio_p50']}x | |",
             f"| hydrate 1,000 files / 200 MB | {h['hydrate_s']} s | {h['s3transfer_download_s']} s "
             f"(s3transfer download, 16 at once) | {h['speed_vs_s3transfer']}x the speed | ≥ 0.8x |",
             f"| a closed file listed in S3 (p50 / p95 of {s['n']}) | {s['p50']} / {s['p95']} s | | | p95 ≤ 2 s |",
             f"| 2,000 files of 4 KiB written, then `session sync` | {b['write_then_synced_s']} s "
             f"(of which writing {b['write_s']} s) | {b['s3transfer_upload_s']} s (s3transfer upload, 16 at once) | "
             f"{b['rate_vs_s3transfer']}x the rate | ≥ 0.9x |", ""]
    (out / "localfirst.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
