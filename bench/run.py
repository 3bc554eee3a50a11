"""Benchmarks: what a session costs and what /workspace delivers, each next to its baseline in one run.

    .venv/bin/python -m bench.run                     # full run, results in docs/benchmarks/
    .venv/bin/python -m bench.run --smoke --out DIR   # tiny sizes: proves the benchmarks still work

For each S3 server (the embedded endpoint: moto behind our own checks, in its own process; and
Ceph RGW, a real S3 server) and each mount strategy (host: s3fs on the host through the volume
driver; in-container: s3fs inside the session), side by side: launch (session create against a
bare `docker run --rm IMAGE true` of the same image, interleaved round by round), concurrency
(a batch created at once, next to the same number of bare `docker run` at once), and workspace
I/O through s3fs against boto3 on the same server. Then the image's size against its base, and
(full runs) a fresh converge of a Debian 12 test host and its re-run.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import botocore.config

from provisioning.config import Settings
from provisioning.hostinfo import docker_client
from provisioning.image import ImageBuilder
from provisioning.launcher import SessionManager
from provisioning.storage import SessionStorage
from tests.servers.volumed import VolumeService

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("host", "in-container")
BENCH_DRIVER = "sandbox-host-bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 4), "p95": round(pct(values, 0.95), 4),
            "min": round(min(values), 4), "n": len(values)}


@dataclass(frozen=True)
class Store:
    name: str
    description: str
    endpoint: str
    access_key: str
    secret_key: str
    role_arn: str = "arn:aws:iam:::role/sandbox-session"


@contextmanager
def moto_store(work: Path) -> Iterator[Store]:
    """`sandbox-host s3 serve` in its own process, so the benchmark's client threads do not share its GIL."""
    config = work / "s3.toml"
    proc = subprocess.Popen([sys.executable, "-m", "provisioning.cli", "s3", "serve", "--port", "0",
                             "--write-config", str(config)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout
        line = proc.stdout.readline()
        if "embedded S3 endpoint" not in line:
            raise RuntimeError(f"embedded S3 endpoint did not start: {line!r}")
        values = tomllib.loads(config.read_text())
        yield Store("moto", "embedded endpoint (moto behind our SigV4, STS and policy checks), own process",
                    values["s3_endpoint"], values["access_key"], values["secret_key"])
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def rgw_store(client: Any) -> Iterator[Store]:
    from tests.servers import rgw

    rgw.build_image(client, log=lambda m: print(f"rgw: {m}", file=sys.stderr))
    with rgw.RGWServer(client, log=lambda m: print(m, file=sys.stderr)) as server:
        yield Store("rgw", "Ceph RGW 16 (one monitor, memstore OSD, radosgw), one container",
                    server.endpoint, server.access_key, server.secret_key, server.role_arn)


def bare_docker_run(image: str, network: str = "none") -> float:
    """The baseline: `docker run --rm --network NETWORK IMAGE true`; seconds."""
    t = time.perf_counter()
    subprocess.run(["docker", "run", "--rm", "--network", network, "--entrypoint", "true", image], check=True)
    return time.perf_counter() - t


def bench_launch(manager: SessionManager, image: str, runs: int, network: str = "none") -> dict[str, Any]:
    """Session create (until its executor reports a mounted workspace) and a bare `docker run` on
    the session's network, in turn, round by round, so that both see the same machine."""
    bare, session = [], []
    for i in range(runs + 1):  # round 0 warms caches and is dropped
        b = bare_docker_run(image, network)
        sid = f"launch{uuid.uuid4().hex[:8]}"
        t = time.perf_counter()
        manager.create(sid)
        s = time.perf_counter() - t
        manager.stop(sid)
        if i:
            bare.append(b)
            session.append(s)
    result = {"bare_docker_run": summary(bare), "session_create": summary(session)}
    result["ratio_to_bare"] = {q: round(result["session_create"][q] / result["bare_docker_run"][q], 2)
                               for q in ("p50", "p95")}
    return result


def bare_docker_batch(image: str, size: int) -> dict[str, Any]:
    """The concurrency baseline: `size` plain `docker run --rm IMAGE true` started at once."""
    t = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
        times = list(pool.map(bare_docker_run, [image] * size))
    return {"wall_s": round(time.perf_counter() - t, 3), "per_run": summary(times)}


def bench_concurrency(manager: SessionManager, size: int) -> dict[str, Any]:
    ids = [f"conc{uuid.uuid4().hex[:8]}" for _ in range(size)]

    def create(sid: str) -> float:
        t = time.perf_counter()
        manager.create(sid)
        return time.perf_counter() - t

    t = time.perf_counter()
    times, failures = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
        futures = {pool.submit(create, sid): sid for sid in ids}
        for future, sid in futures.items():
            try:
                times.append(future.result())
            except Exception as exc:  # noqa: BLE001 - counted
                failures.append(f"{sid}: {exc}")
    wall = time.perf_counter() - t
    started = [sid for sid in ids if not any(sid in f for f in failures)]
    isolated = 0
    for sid in started:
        manager.exec(sid, argv=["sh", "-c", f"echo {sid} > artifacts/me.txt"])
        seen = manager.exec(sid, argv=["sh", "-c", "find /workspace -type f | sort"]).stdout.decode().split()
        if (seen == ["/workspace/artifacts/me.txt"]
                and manager.read(sid, "me.txt") == f"{sid}\n".encode()):
            isolated += 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=size) as pool:
        list(pool.map(manager.stop, started))
    return {"wall_s": round(wall, 3), "per_session": summary(times) if times else None, "failures": failures,
            "isolated": isolated}


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


def boto3_io(settings: Settings, mb: int, files: int, reps: int) -> dict[str, float]:
    """The same work with boto3 from the host, the store's own client: what the workspace is measured against."""
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
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket,
                                                                            Prefix=prefix + "small/")
            for o in page.get("Contents", [])]
    raw["small_list_s"] = time.perf_counter() - t
    assert len(keys) == files
    t = time.perf_counter()
    for key in keys:
        s3.get_object(Bucket=settings.bucket, Key=key)["Body"].read()
    raw["small_read_s"] = time.perf_counter() - t
    for key in keys:
        s3.delete_object(Bucket=settings.bucket, Key=key)
    return io_rates(raw, mb, files)


def session_io(manager: SessionManager, mb: int, files: int, reps: int, baseline: dict[str, float]) -> dict[str, Any]:
    sid = f"io{uuid.uuid4().hex[:8]}"
    # In-container, s3fs stages whole files in the session's /tmp: give it room for the largest.
    sized = SessionManager(replace(manager.settings, memory="2g", tmp_size=f"{max(100, mb + 64)}m"),
                           client=manager.backend.client)  # type: ignore[attr-defined]
    sized.create(sid)
    try:
        result = sized.exec(sid, argv=["python3", "-c", IO_SCRIPT, str(mb), str(files), str(reps)], timeout=1800)
        if result.exit_code != 0:
            raise RuntimeError(f"I/O script failed in {sid}: {result.stderr.decode()[-500:]}")
        rates: dict[str, Any] = io_rates(json.loads(result.stdout), mb, files)
    finally:
        sized.stop(sid)
    rates["write_vs_boto3"] = round(rates["write_MBps"] / baseline["write_MBps"], 2)
    rates["read_vs_boto3"] = round(rates["read_MBps"] / baseline["read_MBps"], 2)
    return rates


def bench_store(store: Store, client: Any, image: str, work: Path, plan: dict[str, Any]) -> dict[str, Any]:
    print(f"[{store.name}] {store.description}", file=sys.stderr, flush=True)
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    base = Settings(s3_endpoint=store.endpoint, bucket=bucket, access_key=store.access_key,
                    secret_key=store.secret_key, sts_role_arn=store.role_arn, image=image,
                    state_dir="/run/sandbox-bench", volume_driver=BENCH_DRIVER)
    storage = SessionStorage(base.validated())
    storage.ensure_bucket()
    result: dict[str, Any] = {"s3_server": store.description, "strategies": {}}
    service_settings = {"s3_endpoint": store.endpoint, "bucket": bucket, "access_key": store.access_key,
                        "secret_key": store.secret_key, "sts_role_arn": store.role_arn}
    with VolumeService(service_settings, work, driver=BENCH_DRIVER) as service:
        result["boto3"] = {f"{mb}MB": boto3_io(base, mb, plan["files"], plan["reps"]) for mb in plan["sizes"]}
        result["bare_docker_batch"] = bare_docker_batch(image, plan["batch"])
        for strategy in STRATEGIES:
            # The host strategy needs no network; s3fs in the container reaches the loopback store.
            settings = (replace(base, mount=strategy, network=service.network, egress="none") if strategy == "host"
                        else replace(base, mount=strategy, network="host"))
            manager = SessionManager(settings, client=client, storage=storage)
            row: dict[str, Any] = {}
            print(f"[{store.name}/{strategy}] launch ...", file=sys.stderr, flush=True)
            row["launch"] = bench_launch(manager, image, plan["runs"])
            if strategy == "host":  # the default policy: the sandbox network and its egress rule
                print(f"[{store.name}/{strategy}] launch, egress internet ...", file=sys.stderr, flush=True)
                row["launch_internet"] = bench_launch(SessionManager(replace(settings, egress="internet"),
                                                                     client=client, storage=storage),
                                                      image, plan["runs"], network=service.network)
            print(f"[{store.name}/{strategy}] {plan['batch']} at once ...", file=sys.stderr, flush=True)
            row["concurrency"] = bench_concurrency(manager, plan["batch"])
            print(f"[{store.name}/{strategy}] workspace I/O ...", file=sys.stderr, flush=True)
            row["io"] = {f"{mb}MB": session_io(manager, mb, plan["files"], plan["reps"], result["boto3"][f"{mb}MB"])
                         for mb in plan["sizes"]}
            result["strategies"][strategy] = row
    return result


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
        testhosts.write_inventory(inventory, {name: "bookworm"}, client)
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
    m = results["machine"]
    lines = [f"# Benchmarks ({results['date']})", "",
             f"Machine: {m['cores']} cores, {m['memory_GiB']} GiB, kernel {m['kernel']}. Mode: {results['mode']}. "
             "Strategies: `host` (s3fs on the host through the volume driver, the default) and `in-container` "
             "(s3fs inside the session). Every figure is measured next to its baseline in the same run.", ""]
    for store, data in results["stores"].items():
        lines += [f"## {store}: {data['s3_server']}", "", "### Launch (seconds)", "",
                  "Library `SessionManager.create` until the executor reports a mounted workspace, against "
                  "`docker run --rm --network none IMAGE true` of the same image, in turn round by round.", "",
                  "| strategy | session p50 | session p95 | bare p50 | bare p95 | ratio p50 | ratio p95 |",
                  "|---|---|---|---|---|---|---|"]
        for strategy, row in data["strategies"].items():
            for key, label in (("launch", strategy), ("launch_internet", f"{strategy}, egress internet *")):
                if key not in row:
                    continue
                launch = row[key]
                lines.append(f"| {label} | {launch['session_create']['p50']} | {launch['session_create']['p95']} "
                             f"| {launch['bare_docker_run']['p50']} | {launch['bare_docker_run']['p95']} "
                             f"| {launch['ratio_to_bare']['p50']}x | {launch['ratio_to_bare']['p95']}x |")
        lines += ["", "\\* The default policy: the session joins the sandbox network and create waits for its egress "
                  "rule; its baseline is `docker run --rm --network SANDBOX-NETWORK IMAGE true`. The other rows run "
                  "with egress none (no network), against `--network none`."]
        bare = data["bare_docker_batch"]
        lines += ["", "### Created at once", "",
                  "| strategy | sessions | wall (s) | per-session p50 | per-session p95 | failures | isolated |",
                  "|---|---|---|---|---|---|---|",
                  f"| bare `docker run` | {bare['per_run']['n']} | {bare['wall_s']} | {bare['per_run']['p50']} "
                  f"| {bare['per_run']['p95']} | 0 | - |"]
        for strategy, row in data["strategies"].items():
            c = row["concurrency"]
            per = c["per_session"] or {"p50": "-", "p95": "-", "n": 0}
            lines.append(f"| {strategy} | {per['n'] + len(c['failures'])} | {c['wall_s']} | {per['p50']} "
                         f"| {per['p95']} | {len(c['failures'])} | {c['isolated']} |")
        lines += ["", "### Workspace I/O against boto3 on the same server", "",
                  f"Sequential write and read: the median of {results['io_repetitions']} runs; small files "
                  f"({results['io_files']} of 4 KB): one run.", "",
                  "| size | client | write MB/s | read MB/s | write vs boto3 | read vs boto3 | small create/s "
                  "| small list s | small read/s |", "|---|---|---|---|---|---|---|---|---|"]
        for size, b in data["boto3"].items():
            rows = [("boto3", b)] + [(s, r["io"][size]) for s, r in data["strategies"].items()]
            for name, r in rows:
                lines.append(f"| {size} | {name} | {r['write_MBps']} | {r['read_MBps']} "
                             f"| {r.get('write_vs_boto3', '')} "
                             f"| {r.get('read_vs_boto3', '')} | {r['small_create_fps']} | {r['small_list_s']} "
                             f"| {r['small_read_fps']} |")
        lines.append("")
    image = results["image"]
    lines += ["## Image", "", f"{image['image']}: {image['image_MB']} MB; its base {image['base']}: "
              f"{image['base_MB']} MB; the executor image adds {image['added_MB']} MB.", ""]
    if "provisioning" in results:
        p = results["provisioning"]
        lines += ["## Provisioning", "", f"{p['host']}: fresh converge of site.yml {p['fresh_converge_s']} s; "
                  f"re-run {p['rerun_s']} s with changed={p['rerun_changed']}, failed={p['rerun_failed']}.", ""]
    path.write_text("\n".join(lines))


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stores = list(results["stores"])
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.2))
    labels, p50, p95 = [], [], []
    for store in stores:
        data = results["stores"][store]
        first = next(iter(data["strategies"].values()))["launch"]["bare_docker_run"]
        labels.append(f"{store}\nbare run")
        p50.append(first["p50"])
        p95.append(first["p95"])
        for strategy, row in data["strategies"].items():
            labels.append(f"{store}\n{strategy}")
            p50.append(row["launch"]["session_create"]["p50"])
            p95.append(row["launch"]["session_create"]["p95"])
    x = list(range(len(labels)))
    axes[0].bar(x, p50, label="p50", color=["#999999" if "bare" in lab else "#4477aa" for lab in labels])
    axes[0].scatter(x, p95, color="black", label="p95", zorder=3)
    axes[0].set_xticks(x, labels, fontsize=7)
    axes[0].set_ylabel("seconds")
    axes[0].set_title("Launch (bare docker run in grey)")
    axes[0].legend(fontsize=8)

    labels, values, colors = [], [], []
    for store in stores:
        data = results["stores"][store]
        labels.append(f"{store}\nbare run")
        values.append(data["bare_docker_batch"]["per_run"]["p95"])
        colors.append("#999999")
        for strategy, row in data["strategies"].items():
            labels.append(f"{store}\n{strategy}")
            values.append((row["concurrency"]["per_session"] or {}).get("p95", 0))
            colors.append("#4477aa")
    x = list(range(len(labels)))
    axes[1].bar(x, values, color=colors)
    axes[1].set_xticks(x, labels, fontsize=7)
    axes[1].set_ylabel("per-session p95, seconds")
    batch = next(iter(results["stores"].values()))["bare_docker_batch"]["per_run"]["n"]
    axes[1].set_title(f"{batch} created at once (bare docker run in grey)")

    labels, writes, reads = [], [], []
    for store in stores:
        data = results["stores"][store]
        size = list(data["boto3"])[-1]
        rows = [("boto3", data["boto3"][size])] + [(s, row["io"][size]) for s, row in data["strategies"].items()]
        for name, r in rows:
            labels.append(f"{store}\n{name}")
            writes.append(r["write_MBps"])
            reads.append(r["read_MBps"])
    x = list(range(len(labels)))
    axes[2].bar([i - 0.2 for i in x], writes, width=0.4, label="write")
    axes[2].bar([i + 0.2 for i in x], reads, width=0.4, label="read")
    axes[2].set_xticks(x, labels, fontsize=7)
    axes[2].set_ylabel("MB/s")
    axes[2].set_title(f"Sequential I/O, {size}")
    axes[2].legend(fontsize=8)
    m = results["machine"]
    fig.suptitle(f"sandbox-host benchmarks, {results['date']}, {m['cores']} cores, {m['memory_GiB']} GiB", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to prove the benchmarks work")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    parser.add_argument("--stores", default="moto,rgw", help="comma-separated: moto, rgw")
    parser.add_argument("--no-provisioning", action="store_true", help="skip the converge of a fresh test host")
    args = parser.parse_args(argv)
    if args.smoke:
        plan = {"runs": 2, "batch": 2, "sizes": [2], "files": 20, "reps": 1}
    else:
        plan = {"runs": 20, "batch": 20, "sizes": [64, 256], "files": 500, "reps": 3}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    client = docker_client(timeout=900)
    build = ImageBuilder(client).build("sandbox-executor:latest", offline=True)
    work = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
                               "mode": "smoke" if args.smoke else "full", "io_repetitions": plan["reps"],
                               "io_files": plan["files"], "stores": {}}
    try:
        for name in args.stores.split(","):
            store_context = moto_store(work) if name == "moto" else rgw_store(client)
            with store_context as store:
                results["stores"][name] = bench_store(store, client, build.image, work, plan)
        results["image"] = image_sizes(build)
        if not args.smoke and not args.no_provisioning:
            print("provisioning ...", file=sys.stderr, flush=True)
            results["provisioning"] = bench_provisioning(client, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_markdown(results, out / "results.md")
    write_plot(results, out / "results.png")
    print(json.dumps({store: {s: r["launch"]["ratio_to_bare"] for s, r in d["strategies"].items()}
                      for store, d in results["stores"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
