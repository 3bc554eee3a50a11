"""Benchmarks: what a session costs and what /workspace delivers, each next to its baseline in one run.

    .venv/bin/python -m bench.run                 # full run, results in docs/benchmarks/
    .venv/bin/python -m bench.run --smoke --out DIR   # tiny sizes: proves the benchmarks still work

Sections: launch (session create against `docker run --rm IMAGE true` and against the same
container without the mount), concurrency (batches created at once), workspace I/O through s3fs
against boto3 on the same S3 server (with s3fs option variants), and the image's size against
its base. The S3 server is the embedded endpoint, run as its own process on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import tomllib
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from provisioning.config import Settings
from provisioning.executor_client import ExecutorClient
from provisioning.hostinfo import docker_client
from provisioning.image import ImageBuilder
from provisioning.launcher import SessionManager
from provisioning.storage import SessionStorage

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 4), "p95": round(pct(values, 0.95), 4),
            "min": round(min(values), 4), "n": len(values)}


class S3Process:
    """`sandbox-host s3 serve` in its own process, so the benchmark's client threads do not share its GIL."""

    def __init__(self, workdir: Path) -> None:
        self.config = workdir / "s3.toml"
        self.proc = subprocess.Popen([sys.executable, "-m", "provisioning.cli", "s3", "serve", "--port", "0",
                                      "--write-config", str(self.config)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout
        line = self.proc.stdout.readline()
        if "embedded S3 endpoint" not in line:
            raise RuntimeError(f"embedded S3 endpoint did not start: {line!r}")
        self.values = tomllib.loads(self.config.read_text())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def bare_docker_run(image: str) -> float:
    """The baseline: `docker run --rm IMAGE true`, host network like the sessions; seconds."""
    t = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "true", image], check=True)
    return time.perf_counter() - t


def bench_launch(manager: SessionManager, image: str, runs: int) -> dict[str, Any]:
    client = manager.client
    bare, unmounted, session = [], [], []
    for i in range(runs + 1):  # round 0 warms caches and is dropped
        b = bare_docker_run(image)

        control = Path(tempfile.mkdtemp(prefix="bench-nomount-", dir="/run"))
        os.chown(control, 1000, 1000)
        t = time.perf_counter()
        container = client.containers.run(
            image, entrypoint=["python3", "/opt/sandbox/executor.py", "--socket", "/run/sandbox-executor/executor.sock",
                               "--workspace", "/workspace"],
            user="1000:1000", detach=True, network_mode="host", cap_drop=["ALL"], security_opt=["no-new-privileges"],
            volumes={str(control): {"bind": "/run/sandbox-executor", "mode": "rw"}})
        executor = ExecutorClient(control, container.id, 1000)
        while True:  # ready = the executor answers its health check (it says: not mounted)
            if (control / "executor.sock").exists():
                try:
                    executor.health(timeout=2)
                    break
                except Exception:  # noqa: BLE001 - not up yet
                    pass
            time.sleep(0.002)
        u = time.perf_counter() - t
        container.remove(force=True)
        shutil.rmtree(control, ignore_errors=True)

        sid = f"launch{i}"
        t = time.perf_counter()
        manager.create(sid)
        s = time.perf_counter() - t
        manager.stop(sid)
        if i:
            bare.append(b)
            unmounted.append(u)
            session.append(s)
    result = {"bare_docker_run": summary(bare), "container_without_mount": summary(unmounted),
              "session_create": summary(session)}
    result["ratio_to_bare"] = {q: round(result["session_create"][q] / result["bare_docker_run"][q], 2) for q in ("p50", "p95")}
    result["mount_cost_p50_s"] = round(result["session_create"]["p50"] - result["container_without_mount"]["p50"], 4)
    return result


def bare_docker_batch(image: str, size: int) -> dict[str, Any]:
    """The concurrency baseline: `size` plain `docker run --rm IMAGE true` started at once."""
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
        times = list(pool.map(bare_docker_run, [image] * size))
    return {"wall_s": round(time.perf_counter() - t, 3), "per_run": summary(times)}


def bench_concurrency(manager: SessionManager, storage: SessionStorage, batches: list[int]) -> dict[str, Any]:
    results = {}
    for size in batches:
        bare = bare_docker_batch(manager.settings.image, size)
        ids = [f"conc{size}x{i}" for i in range(size)]

        def create(sid: str) -> float:
            t = time.perf_counter()
            manager.create(sid)
            return time.perf_counter() - t

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
            futures = {pool.submit(create, sid): sid for sid in ids}
            times, failures = [], []
            for future, sid in futures.items():
                try:
                    times.append(future.result())
                except Exception as exc:  # noqa: BLE001 - counted
                    failures.append(f"{sid}: {exc}")
        wall = time.perf_counter() - t
        isolated = 0
        for sid in ids:
            if any(sid in f for f in failures):
                continue
            manager.exec(sid, argv=["sh", "-c", f"echo {sid} > artifacts/me.txt"])
            seen = manager.exec(sid, argv=["sh", "-c", "find /workspace -type f | sort"]).stdout.decode().split()
            if seen == ["/workspace/artifacts/me.txt"] and storage.get_bytes(sid, "artifacts", "me.txt") == f"{sid}\n".encode():
                isolated += 1
        with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
            list(pool.map(lambda s: manager.stop(s), [s for s in ids if not any(s in f for f in failures)]))
        results[str(size)] = {"wall_s": round(wall, 3), "per_session": summary(times) if times else None,
                              "failures": failures, "isolated": isolated, "bare_docker_run": bare}
    return results


IO_SCRIPT = textwrap.dedent("""
    import json, os, statistics, sys, time
    mb, files, reps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    chunk = os.urandom(1 << 20)
    out = {}
    writes, reads = [], []
    for _ in range(reps):  # the medians go out: one run on a shared machine says little
        t = time.perf_counter()
        with open("artifacts/seq.bin", "wb") as f:
            for _ in range(mb):
                f.write(chunk)
        writes.append(time.perf_counter() - t)
        t = time.perf_counter()
        with open("artifacts/seq.bin", "rb") as f:
            while f.read(1 << 20):
                pass
        reads.append(time.perf_counter() - t)
        os.remove("artifacts/seq.bin")
    out["write_s"], out["read_s"] = statistics.median(writes), statistics.median(reads)
    os.mkdir("artifacts/small")
    data = os.urandom(4096)
    t = time.perf_counter()
    for i in range(files):
        with open(f"artifacts/small/{i:05d}", "wb") as f:
            f.write(data)
    out["small_create_s"] = time.perf_counter() - t
    t = time.perf_counter()
    names = os.listdir("artifacts/small")
    out["small_list_s"] = time.perf_counter() - t
    assert len(names) == files, len(names)
    t = time.perf_counter()
    for name in names:
        with open("artifacts/small/" + name, "rb") as f:
            f.read()
    out["small_read_s"] = time.perf_counter() - t
    print(json.dumps(out))
""")


def io_rates(raw: dict[str, float], mb: int, files: int) -> dict[str, float]:
    return {"write_MBps": round(mb / raw["write_s"], 1), "read_MBps": round(mb / raw["read_s"], 1),
            "small_create_fps": round(files / raw["small_create_s"], 1), "small_list_s": round(raw["small_list_s"], 3),
            "small_read_fps": round(files / raw["small_read_s"], 1)}


def boto3_io(settings: Settings, mb: int, files: int, reps: int = 1) -> dict[str, float]:
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name="us-east-1",
                      aws_access_key_id=settings.access_key, aws_secret_access_key=settings.secret_key,
                      config=botocore.config.Config(s3={"addressing_style": "path"}))
    prefix = f"sessions/boto3-{uuid.uuid4().hex[:8]}/artifacts/"
    payload = os.urandom(mb << 20)
    raw = {}
    writes, reads = [], []
    for _ in range(reps):
        with tempfile.TemporaryFile() as handle:
            handle.write(payload)
            handle.seek(0)
            t = time.perf_counter()
            s3.upload_fileobj(handle, settings.bucket, prefix + "seq.bin")
            writes.append(time.perf_counter() - t)
        with tempfile.TemporaryFile() as handle:
            t = time.perf_counter()
            s3.download_fileobj(settings.bucket, prefix + "seq.bin", handle)
            reads.append(time.perf_counter() - t)
        s3.delete_object(Bucket=settings.bucket, Key=prefix + "seq.bin")
    raw["write_s"], raw["read_s"] = statistics.median(writes), statistics.median(reads)
    data = os.urandom(4096)
    t = time.perf_counter()
    for i in range(files):
        s3.put_object(Bucket=settings.bucket, Key=f"{prefix}small/{i:05d}", Body=data)
    raw["small_create_s"] = time.perf_counter() - t
    t = time.perf_counter()
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket, Prefix=prefix + "small/")
            for o in page.get("Contents", [])]
    raw["small_list_s"] = time.perf_counter() - t
    assert len(keys) == files
    t = time.perf_counter()
    for key in keys:
        s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    raw["small_read_s"] = time.perf_counter() - t
    return io_rates(raw, mb, files)


def bench_io(manager: SessionManager, sizes: list[int], files: int, variants: dict[str, dict[str, object]],
             reps: int = 1) -> dict[str, Any]:
    """Sequential write/read: the median of `reps` runs; small files: one run."""
    results: dict[str, Any] = {}
    for mb in sizes:
        row: dict[str, Any] = {"boto3": boto3_io(manager.settings, mb, files, reps)}
        for number, (name, options) in enumerate(variants.items()):
            sid = f"io{mb}v{number}"
            variant = SessionManager(replace(manager.settings, s3fs_options=options, memory="2g", tmp_size="600m"),
                                     client=manager.client)
            variant.create(sid)
            try:
                result = variant.exec(sid, argv=["python3", "-c", IO_SCRIPT, str(mb), str(files), str(reps)], timeout=1800)
                if result.exit_code != 0:
                    raise RuntimeError(f"I/O script failed in {sid}: {result.stderr.decode()[-500:]}")
                rates = io_rates(json.loads(result.stdout), mb, files)
            finally:
                variant.stop(sid)
            rates["write_vs_boto3"] = round(rates["write_MBps"] / row["boto3"]["write_MBps"], 2)
            rates["read_vs_boto3"] = round(rates["read_MBps"] / row["boto3"]["read_MBps"], 2)
            row[f"s3fs:{name}"] = rates
        results[f"{mb}MB"] = row
    return results


def image_sizes(build: Any) -> dict[str, Any]:
    return {"image": build.image, "image_MB": round(build.size_bytes / 1e6, 1), "base": build.base_image,
            "base_MB": round(build.base_size_bytes / 1e6, 1),
            "added_MB": round((build.size_bytes - build.base_size_bytes) / 1e6, 2)}


def bench_provisioning(client: Any, work: Path) -> dict[str, Any]:
    """site.yml on a fresh Debian 12 test host (systemd container), then the re-run."""
    from tests.ansible import testhosts
    from tests.ansible.conftest import run_playbook

    name = "sbx-bench-bookworm"
    testhosts.build_image(client, "bookworm")
    testhosts.start(client, "bookworm", name)
    try:
        inventory = work / "hosts.ini"
        testhosts.write_inventory(inventory, {"bookworm": name}, client)
        first = run_playbook(inventory, "playbooks/site.yml", timeout=2400)
        if first.returncode != 0:
            raise RuntimeError(f"converge failed: {first.output[-2000:]}")
        second = run_playbook(inventory, "playbooks/site.yml", timeout=1200)
        recap = second.recap()[name]
        return {"host": "Debian 12 test host (systemd container, docker exec)", "fresh_converge_s": first.seconds,
                "rerun_s": second.seconds, "rerun_changed": recap["changed"], "rerun_failed": recap["failed"]}
    finally:
        testhosts.remove(client, name)


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(),
            "memory_GiB": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version()}


def write_markdown(results: dict[str, Any], path: Path) -> None:
    launch = results["launch"]
    lines = [f"# Benchmarks ({results['date']})", "",
             f"Machine: {results['machine']['cores']} cores, {results['machine']['memory_GiB']} GiB, kernel "
             f"{results['machine']['kernel']}. S3 server: {results['s3_server']}. Mode: {results['mode']}.", "",
             "## Launch (seconds; create until the executor reports a mounted workspace)", "",
             "| what | p50 | p95 |", "|---|---|---|"]
    for key in ("bare_docker_run", "container_without_mount", "session_create"):
        lines.append(f"| {key.replace('_', ' ')} | {launch[key]['p50']} | {launch[key]['p95']} |")
    lines += ["", f"Session create / bare `docker run`: p50 {launch['ratio_to_bare']['p50']}x, "
              f"p95 {launch['ratio_to_bare']['p95']}x; the mount's own cost (p50): {launch['mount_cost_p50_s']} s.", "",
              "## Concurrency", "",
              "Each batch of sessions next to the same number of bare `docker run --rm IMAGE true` started at once.", "",
              "| sessions at once | wall (s) | per-session p50 | per-session p95 | failures | isolated "
              "| bare docker run: wall (s) | bare per-run p95 |",
              "|---|---|---|---|---|---|---|---|"]
    for size, row in results["concurrency"].items():
        per = row["per_session"] or {"p50": "-", "p95": "-"}
        bare = row["bare_docker_run"]
        lines.append(f"| {size} | {row['wall_s']} | {per['p50']} | {per['p95']} | {len(row['failures'])} | {row['isolated']} "
                     f"| {bare['wall_s']} | {bare['per_run']['p95']} |")
    largest = results["concurrency"][max(results["concurrency"], key=int)]
    if largest["per_session"]:
        lines += ["", f"Largest batch: per-session p95 is {round(largest['per_session']['p95'] / launch['session_create']['p50'], 1)}x "
                  f"a single launch (p50); the bare `docker run` batch's p95 is "
                  f"{round(largest['bare_docker_run']['per_run']['p95'] / launch['bare_docker_run']['p50'], 1)}x a single bare run."]
    lines += ["", "## Workspace I/O (s3fs in the session against boto3 from the host, same S3 server)", "",
              f"Sequential write and read: the median of {results.get('io_repetitions', 1)} runs each; small files: one run. "
              "The I/O sessions get a 600 MB `/tmp` (s3fs stages whole files there; see the README on large files).", "",
              "| size | client | write MB/s | read MB/s | write vs boto3 | read vs boto3 "
              "| small create files/s | small list s | small read files/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for size, row in results["io"].items():
        for client_name, r in row.items():
            lines.append(f"| {size} | {client_name} | {r['write_MBps']} | {r['read_MBps']} | {r.get('write_vs_boto3', '')} | "
                         f"{r.get('read_vs_boto3', '')} | {r['small_create_fps']} | {r['small_list_s']} | {r['small_read_fps']} |")
    image = results["image"]
    lines += ["", "## Image", "", f"{image['image']}: {image['image_MB']} MB; its base {image['base']}: "
              f"{image['base_MB']} MB; the executor adds {image['added_MB']} MB.", ""]
    if "provisioning" in results:
        p = results["provisioning"]
        lines += ["## Provisioning", "", f"{p['host']}: fresh converge of site.yml {p['fresh_converge_s']} s; "
                  f"re-run {p['rerun_s']} s with changed={p['rerun_changed']}, failed={p['rerun_failed']}.", ""]
    path.write_text("\n".join(lines))


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    launch = results["launch"]
    keys = ["bare_docker_run", "container_without_mount", "session_create"]
    axes[0].bar([k.replace("_", "\n") for k in keys], [launch[k]["p50"] for k in keys], label="p50")
    axes[0].scatter([k.replace("_", "\n") for k in keys], [launch[k]["p95"] for k in keys], color="black", label="p95", zorder=3)
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Launch")
    axes[0].legend()
    sizes = list(results["concurrency"])
    axes[1].plot(sizes, [results["concurrency"][s]["wall_s"] for s in sizes], marker="o", label="batch wall")
    axes[1].plot(sizes, [(results["concurrency"][s]["per_session"] or {}).get("p95", 0) for s in sizes], marker="s",
                 label="per-session p95")
    axes[1].set_xlabel("sessions created at once")
    axes[1].set_ylabel("seconds")
    axes[1].set_title("Concurrency")
    axes[1].legend()
    labels, writes, reads = [], [], []
    for size, row in results["io"].items():
        for client_name, r in row.items():
            labels.append(f"{size}\n{client_name.replace('s3fs:', '')}")
            writes.append(r["write_MBps"])
            reads.append(r["read_MBps"])
    x = range(len(labels))
    axes[2].bar([i - 0.2 for i in x], writes, width=0.4, label="write")
    axes[2].bar([i + 0.2 for i in x], reads, width=0.4, label="read")
    axes[2].set_xticks(list(x), labels, fontsize=7, rotation=30)
    axes[2].set_ylabel("MB/s")
    axes[2].set_title("Sequential I/O")
    axes[2].legend()
    fig.suptitle(f"sandbox-host benchmarks, {results['date']}, {results['machine']['cores']} cores, "
                 f"{results['machine']['memory_GiB']} GiB, {results['s3_server']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


VARIANTS_FULL: dict[str, dict[str, object]] = {
    "defaults": {},
    "parallel_count=10,multipart_size=32": {"parallel_count": 10, "multipart_size": 32},
    "max_stat_cache_size=0": {"max_stat_cache_size": 0},
    "enable_noobj_cache": {"enable_noobj_cache": True},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove the benchmarks work")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--no-provisioning", action="store_true", help="skip the converge of a fresh test host")
    args = parser.parse_args(argv)
    if args.smoke:
        runs, batches, sizes, files, variants, reps = 2, [1, 2], [2], 20, {"defaults": {}, "enable_noobj_cache": {"enable_noobj_cache": True}}, 1
    else:
        runs, batches, sizes, files, variants, reps = 20, [1, 5, 10, 20], [64, 256], 1000, VARIANTS_FULL, 3
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = docker_client(timeout=900)
    build = ImageBuilder(client).build("sandbox-executor:latest")
    image = build.image
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    server = S3Process(work)
    try:
        cfg = server.values
        settings = Settings(s3_endpoint=cfg["s3_endpoint"], bucket=cfg["bucket"], access_key=cfg["access_key"],
                            secret_key=cfg["secret_key"], image=image, network="host", state_dir="/run/sandbox-bench")
        manager = SessionManager(settings, client=client)
        storage = SessionStorage(settings.validated())
        results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                                   "s3_server": "embedded endpoint (moto behind a SigV4 check), own process on 127.0.0.1",
                                   "mode": "smoke" if args.smoke else "full"}
        print("launch ...", file=sys.stderr, flush=True)
        results["launch"] = bench_launch(manager, image, runs)
        print("concurrency ...", file=sys.stderr, flush=True)
        results["concurrency"] = bench_concurrency(manager, storage, batches)
        print("workspace I/O ...", file=sys.stderr, flush=True)
        results["io"] = bench_io(manager, sizes, files, variants, reps)
        results["io_repetitions"] = reps
        results["image"] = image_sizes(build)
        if not args.smoke and not args.no_provisioning:
            print("provisioning ...", file=sys.stderr, flush=True)
            results["provisioning"] = bench_provisioning(client, work)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "results.md")
    write_plot(results, out / "results.png")
    print(json.dumps({"launch": results["launch"]["ratio_to_bare"], "out": str(out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
