"""Small-file and metadata-heavy work in /workspace against a local directory of the same session
(its /tmp), for each mounter and s3fs option set, on the host converged by the main job (its
config and object store). For each set: each workload's seconds in the workspace and locally, the
ratio, how soon a file put into S3 from outside shows in a listed directory, how long the stop
took, and durability (a `stop` right after the writes: every file is in S3).

    .venv/bin/python -m bench.smallfiles [--out DIR] [--mounter NAME ...]

Writes smallfiles.json and smallfiles.md to docs/benchmarks; with --mounter, only the sets of
those mounters run, and the other sets' last results (each dated) are kept.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from provisioning import SessionManager, SessionStorage, config

ROOT = Path(__file__).resolve().parents[1]

# name: (mounter, s3fs options)
OPTION_SETS: dict[str, tuple[str, dict[str, object]]] = {
    "s3fs, default": ("s3fs", {}),
    "s3fs, stat cache 15 min + noobj cache": ("s3fs", {"stat_cache_expire": 900, "max_stat_cache_size": 100000,
                                                       "enable_noobj_cache": True}),
    "s3fs, caches + multireq_max 64 + parallel_count 16": ("s3fs", {
        "stat_cache_expire": 900, "max_stat_cache_size": 100000, "enable_noobj_cache": True,
        "multireq_max": 64, "parallel_count": 16}),
    "local-first (files on the session's disk, S3 synced behind)": ("local", {}),
}

# Run in the session after the workloads: seconds until a key put from outside shows in uploads/.
VISIBLE = r'''
import os, sys, time
start = time.monotonic()
while sys.argv[1] not in os.listdir("/workspace/uploads"):
    if time.monotonic() - start > 60:
        print("nan"); raise SystemExit
    time.sleep(0.02)
print(round(time.monotonic() - start, 3))
'''

# Run in the session, once in /workspace/run and once in /tmp/run; prints {workload: seconds}.
PROBE = r'''
import json, os, sqlite3, subprocess, sys, tarfile, time
base = sys.argv[1]
os.makedirs(base, exist_ok=True)
out = {}
def timed(name, fn):
    t = time.perf_counter(); fn(); out[name] = round(time.perf_counter() - t, 4)
if not os.path.exists("/tmp/files.tar"):
    with tarfile.open("/tmp/files.tar", "w") as tar:
        os.makedirs("/tmp/src/d", exist_ok=True)
        for i in range(2000):
            p = f"/tmp/src/d/f{i:04}.txt"
            open(p, "w").write("x" * 140)
        tar.add("/tmp/src/d", arcname="d")
timed("tar -xf 2,000 files of 140 B", lambda: subprocess.run(["tar", "-xf", "/tmp/files.tar", "-C", base], check=True))
def create():
    os.makedirs(f"{base}/c")
    for i in range(500):
        with open(f"{base}/c/{i}", "w") as f:
            f.write("y")
timed("create 500 files", create)
def append():
    for i in range(500):
        with open(f"{base}/log", "a") as f:
            f.write(f"line {i}\n")
timed("500 open-append-close", append)
timed("rename a directory of 500 files", lambda: os.rename(f"{base}/c", f"{base}/c2"))
def sql():
    db = sqlite3.connect(f"{base}/db.sqlite")
    db.execute("create table t (x)")
    for i in range(200):
        db.execute("insert into t values (?)", (i,)); db.commit()
    db.close()
timed("200 SQLite autocommits", sql)
def git():
    env = dict(os.environ, HOME="/tmp", GIT_AUTHOR_NAME="u", GIT_AUTHOR_EMAIL="u@x", GIT_COMMITTER_NAME="u",
               GIT_COMMITTER_EMAIL="u@x")
    os.makedirs(f"{base}/repo")
    run = lambda *a: subprocess.run(["git", *a], cwd=f"{base}/repo", env=env, check=True, capture_output=True)
    run("init", "-q")
    for i in range(20):
        open(f"{base}/repo/f{i}", "w").write(str(i))
    run("add", "."); run("commit", "-qm", "1")
    for i in range(20):
        open(f"{base}/repo/f{i}", "a").write("!")
    run("commit", "-qam", "2")
timed("git init + 2 commits of 20 files", git)
block = os.urandom(1 << 20)
def write50():
    with open(f"{base}/big", "wb") as f:
        for _ in range(50):
            f.write(block)
timed("write 50 MB", write50)
timed("read 50 MB", lambda: open(f"{base}/big", "rb").read())
print(json.dumps(out))
'''


# A volume service of the benchmark's own per option set (the host strategy's s3fs options are the
# service's settings), under one fixed driver name (Docker asks every driver it ever met about unknown
# volume names, and waits long for one that is gone).
DRIVER = "sandbox-host-bench-sf"


def run_set(name: str, mounter: str, options: dict[str, object]) -> dict[str, Any]:
    from tests.servers.volumed import VolumeService

    host = config.load({})  # the main job's config: its object store and key
    service = {"s3_endpoint": host.s3_endpoint, "bucket": host.bucket, "access_key": host.access_key,
               "secret_key": host.secret_key, "scoped_credentials": host.scoped_credentials,
               "s3fs_options": options}
    sid = "sf" + uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory() as work, VolumeService(service, Path(work), driver=DRIVER) as volumes:
        settings = config.load({"volume_driver": DRIVER, "network": volumes.network, "egress": "none",
                                "memory": "1g", "tmp_size": "300m", "mounter": mounter, "s3fs_options": options})
        manager, storage = SessionManager(settings), SessionStorage(settings.validated())
        return measure(name, mounter, options, manager, storage, sid)


def measure(name: str, mounter: str, options: dict[str, object], manager: SessionManager,
            storage: SessionStorage, sid: str) -> dict[str, Any]:
    settings = manager.settings
    manager.create(sid)
    stop_s = None
    try:
        results = {}
        for where, path in (("workspace", "/workspace/run"), ("local", "/tmp/run")):
            r = manager.exec(sid, argv=["python3", "-c", PROBE, path], timeout=1800)
            if r.exit_code != 0:
                raise RuntimeError(f"{name} {where}: {r.stderr.decode()[-2000:]}")
            results[where] = json.loads(r.stdout)
        manager.exec(sid, argv=["ls", "/workspace/uploads"])  # listed once: a cache may hold it now
        storage.client.put_object(Bucket=settings.bucket, Key=f"sessions/{sid}/uploads/late.txt", Body=b"late")
        r = manager.exec(sid, argv=["python3", "-c", VISIBLE, "late.txt"], timeout=120)
        visible_s = float(r.stdout)
        # The writes again, then a stop at once: how long it takes, and whether everything landed.
        r = manager.exec(sid, argv=["tar", "-xf", "/tmp/files.tar", "-C", "/workspace/run", "--transform",
                                    "s,^d,again,"], timeout=1800)
        if r.exit_code != 0:
            raise RuntimeError(f"{name} tar before stop: {r.stderr.decode()[-2000:]}")
        started = time.perf_counter()
        manager.stop(sid)
        stop_s = round(time.perf_counter() - started, 2)
    finally:
        if stop_s is None:
            manager.stop(sid)
    # Durability: stopped right after the writes, every file is in S3.
    def landed(prefix: str) -> int:
        pages = storage.client.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix)
        return sum(1 for page in pages for item in page.get("Contents", []) if not item["Key"].endswith("/"))
    rows = {w: {"workspace_s": results["workspace"][w], "local_s": results["local"][w],
                "ratio": round(results["workspace"][w] / max(results["local"][w], 0.001), 1)}
            for w in results["workspace"]}
    return {"mounter": mounter, "options": options, "workloads": rows,
            "tar_files_in_s3_after_stop": landed(f"sessions/{sid}/run/d/"),
            "files_written_right_before_stop_in_s3": landed(f"sessions/{sid}/run/again/"),
            "stop_s": stop_s, "outside_upload_visible_s": visible_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--mounter", action="append", help="run only this mounter's sets (repeatable)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    previous = out / "smallfiles.json"
    last = json.loads(previous.read_text()) if args.mounter and previous.exists() else {}
    kept = {n: {"date": last.get("date", "unknown"), **d} for n, d in last.get("sets", {}).items()}
    result: dict[str, Any] = {"sets": {}}
    for name, (mounter, options) in OPTION_SETS.items():
        if args.mounter and mounter not in args.mounter:
            if name in kept:
                result["sets"][name] = kept[name]
            continue
        print(f"smallfiles: {name} ...", file=sys.stderr, flush=True)
        result["sets"][name] = {"date": time.strftime("%Y-%m-%d"), **run_set(name, mounter, options)}
    (out / "smallfiles.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Small files in /workspace", "",
             "Host strategy on the main job's host (2 cores; the embedded endpoint on 127.0.0.1). Each "
             "workload runs in /workspace and in the same session's /tmp (tmpfs, the local baseline); one run "
             "each; a local time under 1 ms counts as 1 ms in the ratio. Visibility: seconds until a key put "
             "into S3 from outside shows in a directory the session listed just before. Durability: 2,000 more "
             "files are extracted and the session is stopped at once (the stop's time is given); then both sets "
             "of 2,000 files are counted in S3.", ""]
    for name, data in result["sets"].items():
        lines += [f"## {name}", "", f"Run {data['date']}; "
                  f"mounter `{data['mounter']}`, s3fs options `{json.dumps(data['options'])}`. "
                  f"After the stop ({data['stop_s']} s): {data['tar_files_in_s3_after_stop']} of 2,000 and "
                  f"{data['files_written_right_before_stop_in_s3']} of 2,000 files in S3. An outside upload showed "
                  f"after {data['outside_upload_visible_s']} s.", "",
                  "| workload | /workspace (s) | local (s) | ratio |", "|---|---|---|---|"]
        for workload, row in data["workloads"].items():
            lines.append(f"| {workload} | {row['workspace_s']} | {row['local_s']} | {row['ratio']}x |")
        lines.append("")
    (out / "smallfiles.md").write_text("\n".join(lines))
    print(json.dumps({n: {w: r["ratio"] for w, r in d["workloads"].items()} for n, d in result["sets"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
