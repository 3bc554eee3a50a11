"""Launch time of a session (create -> executor reports a mounted workspace) against a bare
`docker run --rm IMAGE true` of the same image, interleaved in one run.

    .venv/bin/python bench/launch.py [--runs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import uuid
from pathlib import Path

from provisioning.config import Settings
from provisioning.hostinfo import docker_client
from provisioning.image import ImageBuilder
from provisioning.launcher import SessionManager
from provisioning.s3server import EmbeddedS3Server, generate_credentials


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    client = docker_client()
    image = ImageBuilder(client).build("sandbox-executor:latest").image
    creds = generate_credentials()
    bare, session = [], []
    with EmbeddedS3Server(creds) as s3:
        settings = Settings(s3_endpoint=s3.endpoint, bucket=f"bench-{uuid.uuid4().hex[:8]}", access_key=creds.access_key,
                            secret_key=creds.secret_key, image=image, network="host", state_dir="/run/sandbox-bench")
        manager = SessionManager(settings, client=client)
        for i in range(args.runs + 1):  # the first round warms caches and is dropped
            t = time.monotonic()
            subprocess.run(["docker", "run", "--rm", "--network", "host", "--entrypoint", "true", image], check=True)
            b = time.monotonic() - t
            sid = f"bench{i}"
            t = time.monotonic()
            manager.create(sid)
            s = time.monotonic() - t
            manager.stop(sid)
            if i:
                bare.append(b)
                session.append(s)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "kernel": platform.release()},
        "s3_server": "embedded (moto behind SigV4 check) on 127.0.0.1",
        "runs": args.runs,
        "bare_docker_run": {"p50": statistics.median(bare), "p95": pct(bare, 0.95)},
        "session_create": {"p50": statistics.median(session), "p95": pct(session, 0.95)},
    }
    result["ratio_p50"] = result["session_create"]["p50"] / result["bare_docker_run"]["p50"]
    result["ratio_p95"] = result["session_create"]["p95"] / result["bare_docker_run"]["p95"]
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
