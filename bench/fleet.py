"""Fleet benchmark: a swarm of three Debian test hosts (systemd containers, as the tests build
them), formed by the playbook, then, on its manager and in the same run:

- create latency (p50, p95) through the swarm backend next to the local backend;
- sessions per second: a batch created at once through each backend;
- what one host holds: the host memory and CPU an idle session costs beyond its limits' own
  (s3fs, the executor, the engine's shim), from a batch of idle sessions on one node.

    .venv/bin/python -m bench.fleet [--smoke] [--out DIR]

Writes fleet.json and fleet.md next to the other results. Traffic stays between the test hosts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

from provisioning.hostinfo import docker_client

ROOT = Path(__file__).resolve().parents[1]
HOSTS = {"sbx-bench-m": "bookworm", "sbx-bench-w1": "trixie", "sbx-bench-w2": "bookworm"}
MANAGER = "sbx-bench-m"

# Runs on the manager, with the runtime's own Python and config.
PROBE = textwrap.dedent("""
    import concurrent.futures, json, statistics, sys, time, uuid
    from provisioning import config, SessionManager

    runs, batch, idle = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])

    def pct(values, q):
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    def summary(values):
        return {"p50": round(statistics.median(values), 4), "p95": round(pct(values, 0.95), 4), "n": len(values)}

    def memory_available():
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024

    def cpu_busy():
        fields = [int(x) for x in open("/proc/stat").readline().split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)

    out = {}
    for backend in ("docker", "swarm"):
        manager = SessionManager(config.load({"backend": backend, "egress": "none", "memory": "256m"}))
        times = []
        for _ in range(runs + 1):
            sid = "b" + uuid.uuid4().hex[:10]
            t = time.perf_counter()
            manager.create(sid)
            times.append(time.perf_counter() - t)
            manager.stop(sid)
        ids = ["c" + uuid.uuid4().hex[:10] for _ in range(batch)]
        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=batch) as pool:
            list(pool.map(manager.create, ids))
        wall = time.perf_counter() - t
        with concurrent.futures.ThreadPoolExecutor(max_workers=batch) as pool:
            list(pool.map(manager.stop, ids))
        out[backend] = {"create": summary(times[1:]), "batch": batch, "batch_wall_s": round(wall, 3),
                        "sessions_per_s": round(batch / wall, 2)}

    # What idle sessions cost this host: memory and CPU, beyond what their limits allow them.
    manager = SessionManager(config.load({"backend": "docker", "egress": "none", "memory": "256m"}))
    time.sleep(2)
    before, busy0 = memory_available(), cpu_busy()
    ids = ["i" + uuid.uuid4().hex[:10] for _ in range(idle)]
    for sid in ids:
        manager.create(sid)
    time.sleep(5)
    busy1 = cpu_busy()
    time.sleep(10)
    busy2, after = cpu_busy(), memory_available()
    for sid in ids:
        manager.stop(sid)
    out["idle"] = {"sessions": idle, "memory_per_session_MiB": round((before - after) / idle / 2**20, 1),
                   "cpu_share_idle_10s": round((busy2[0] - busy1[0]) / max(1, busy2[1] - busy1[1]), 4)}
    print(json.dumps(out))
""")


def main(argv: list[str] | None = None) -> int:
    from tests.ansible import testhosts
    from tests.ansible.conftest import run_playbook

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = parser.parse_args(argv)
    runs, batch, idle = (2, 2, 2) if args.smoke else (20, 12, 12)
    client = docker_client(timeout=900)
    work = Path(tempfile.mkdtemp(prefix="sandbox-fleet-"))
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "mode": "smoke" if args.smoke else "full",
                              "hosts": HOSTS}
    try:
        for name, suite in HOSTS.items():
            testhosts.build_image(client, suite)
            testhosts.start(client, suite, name)
        inventory = work / "hosts.ini"
        testhosts.write_inventory(inventory, HOSTS, client, swarm_manager=MANAGER)
        print("forming the fleet ...", file=sys.stderr, flush=True)
        first = run_playbook(inventory, "playbooks/site.yml", timeout=2700)
        if first.returncode != 0:
            raise RuntimeError(f"converge failed: {first.output[-3000:]}")
        second = run_playbook(inventory, "playbooks/site.yml", timeout=1200)
        result["provisioning"] = {"fresh_converge_s": first.seconds, "rerun_s": second.seconds,
                                  "rerun_changed": sum(r["changed"] for r in second.recap().values())}
        print("measuring on the manager ...", file=sys.stderr, flush=True)
        probe = subprocess.run(["docker", "exec", MANAGER, "/opt/sandbox-host/venv/bin/python", "-c", PROBE,
                                str(runs), str(batch), str(idle)], capture_output=True, text=True, timeout=3600)
        if probe.returncode != 0:
            raise RuntimeError(f"probe failed: {probe.stderr[-3000:]}")
        result.update(json.loads(probe.stdout))
        cores = subprocess.run(["docker", "exec", MANAGER, "nproc"], capture_output=True, text=True).stdout.strip()
        result["node_cores"] = int(cores or 0)
    finally:
        for name in HOSTS:
            testhosts.remove(client, name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, out / "fleet.md")
    print(json.dumps({k: result[k] for k in ("docker", "swarm", "idle")}))
    return 0


def write_markdown(r: dict[str, Any], path: Path) -> None:
    lines = [f"# Fleet benchmark ({r['date']}, {r['mode']})", "",
             "Three Debian test hosts (systemd containers on one 2-core machine: they share its cores), formed "
             "into a swarm by `playbooks/site.yml`; measured on the manager in one run.", "",
             f"Provisioning: fresh converge of the three hosts {r['provisioning']['fresh_converge_s']} s, re-run "
             f"{r['provisioning']['rerun_s']} s with changed={r['provisioning']['rerun_changed']}.", "",
             "| backend | create p50 (s) | create p95 (s) | batch at once | batch wall (s) | sessions/s |",
             "|---|---|---|---|---|---|"]
    for backend in ("docker", "swarm"):
        b = r[backend]
        lines.append(f"| {backend} | {b['create']['p50']} | {b['create']['p95']} | {b['batch']} | {b['batch_wall_s']} "
                     f"| {b['sessions_per_s']} |")
    idle = r["idle"]
    lines += ["", f"Idle sessions on one node ({idle['sessions']}): host memory per session beyond its limit's "
              f"own use: {idle['memory_per_session_MiB']} MiB (s3fs, the executor, the engine's shim, the staging "
              f"area's metadata); host CPU busy with them idle: {idle['cpu_share_idle_10s'] * 100:.2f}% of the "
              "node over 10 s.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
