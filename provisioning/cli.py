"""The `sandbox-host` command line: a thin layer over the provisioning modules."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import config as config_mod
from .config import ConfigError, Credentials, Settings
from .errors import SandboxHostError
from .escape import printable
from .facts import DEFAULT_SUITE, DRAIN_TIMEOUT
from .validation import parse_s3fs_option_list

if TYPE_CHECKING:
    from .launcher import SessionManager

# Modules a command needs are imported by that command: `--help` and `session exec` start without
# boto3, the image builder or the Swarm backend.

EXIT_USAGE = 2
# The embedded endpoint's own key pair (like MinIO's MINIO_ROOT_USER / MINIO_ROOT_PASSWORD).
SERVER_KEY_ENV = "SANDBOX_S3_SERVER_ACCESS_KEY"
SERVER_SECRET_ENV = "SANDBOX_S3_SERVER_SECRET_KEY"


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {
        "s3_endpoint": args.endpoint,
        "bucket": args.bucket,
        "image": args.image,
        "network": getattr(args, "network", None),
        "egress": getattr(args, "egress", None),
        "mount": getattr(args, "mount", None),
        "mounter": getattr(args, "mounter", None),
        "state_dir": args.state_dir,
        "memory": getattr(args, "memory", None),
        "cpus": getattr(args, "cpus", None),
        "pids_limit": getattr(args, "pids_limit", None),
        "volume_driver": getattr(args, "volume_driver", None),
        "backend": getattr(args, "backend", None),
    }
    if getattr(args, "s3fs_option", None):
        flags["s3fs_options"] = parse_s3fs_option_list(args.s3fs_option)
    return config_mod.load(flags, config_file=args.config)


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _manager(args: argparse.Namespace) -> SessionManager:
    from .launcher import SessionManager

    return SessionManager(_settings(args))


# -- doctor --------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import Doctor

    checks = Doctor(_settings(args)).run()
    if args.json:
        _print_json({"ok": all(c.ok for c in checks), "checks": [c.to_json() for c in checks]})
    else:
        for check in checks:
            mark = "ok  " if check.ok else "FAIL"
            print(f"[{mark}] {check.name}: {printable(check.detail, quote_backslashes=False)}")
            if not check.ok and check.fix:
                print(f"       fix: {printable(check.fix, quote_backslashes=False)}")
    return 0 if all(c.ok for c in checks) else 1


# -- image ---------------------------------------------------------------------------------
def cmd_image_build(args: argparse.Namespace) -> int:
    settings = _settings(args)
    log = (lambda m: None) if args.json else (lambda m: print(f"image: {m}", file=sys.stderr))
    from .hostinfo import docker_client
    from .image import ImageBuilder

    builder = ImageBuilder(docker_client(timeout=1800), log=log, progress=not args.json and sys.stderr.isatty())
    result = builder.build(
        settings.image, base_image=args.base_image, offline=args.offline,
        suite=args.suite, mirror=args.mirror, force=args.force, minimal=args.minimal,
    )
    if args.json:
        _print_json(result.__dict__)
    else:
        state = "built" if result.built else "up to date"
        print(f"{result.image} {state} ({result.image_id[:19]}) from {result.base_image}; "
              f"{result.size_bytes / 1e6:.0f} MB (base {result.base_size_bytes / 1e6:.0f} MB)")
    return 0


# -- sessions ------------------------------------------------------------------------------
def cmd_session_create(args: argparse.Namespace) -> int:
    info = _manager(args).create(args.session_id)
    if args.json:
        print(json.dumps(info.to_json(), sort_keys=True))
    else:
        print(f"session {info.session_id} ready in {info.launch_seconds:.2f}s (container {info.container_id[:12]})")
    return 0


def cmd_session_exec(args: argparse.Namespace) -> int:
    command = list(args.command)
    if not command:
        print("sandbox-host: error: give the command after --, e.g. session exec ID -- python3 -V", file=sys.stderr)
        return EXIT_USAGE
    stdin = sys.stdin.buffer.read() if args.stdin else b""
    result = _manager(args).exec(args.session_id, argv=command, timeout=args.timeout, stdin=stdin)
    sys.stdout.buffer.write(result.stdout)
    sys.stdout.buffer.flush()
    sys.stderr.buffer.write(result.stderr)
    if result.timed_out:
        print(f"sandbox-host: command timed out after {args.timeout:g}s", file=sys.stderr)
    if result.truncated:
        print("sandbox-host: output truncated", file=sys.stderr)
    sys.stderr.flush()
    return result.exit_code


def cmd_session_upload(args: argparse.Namespace) -> int:
    manager = _manager(args)
    key = manager.upload(args.session_id, Path(args.file), args.name)
    print(f"uploaded {args.file} to s3://{manager.settings.bucket}/{key}")
    return 0


def cmd_session_artifacts(args: argparse.Namespace) -> int:
    items = _manager(args).files(args.session_id, "uploads" if args.uploads else "artifacts")
    if args.json:
        _print_json([{"name": i.name, "key": i.key, "size": i.size} for i in items])
    else:
        for item in items:
            print(f"{item.size:>12}  {printable(item.name)}")
    return 0


def cmd_session_download(args: argparse.Namespace) -> int:
    manager = _manager(args)
    if args.output == "-":
        sys.stdout.buffer.write(manager.read(args.session_id, args.name))
        return 0
    dest = manager.download(args.session_id, args.name, Path(args.output or "."))
    print(f"downloaded {args.name} to {dest}", file=sys.stderr)
    return 0


def cmd_session_sync(args: argparse.Namespace) -> int:
    _manager(args).sync(args.session_id, timeout=args.timeout)
    print(f"session {args.session_id}: every write made before this command is in S3, and what was put "
          "into S3 before it is in the workspace")
    return 0


def cmd_session_stop(args: argparse.Namespace) -> int:
    code = _manager(args).stop(args.session_id, timeout=args.timeout)
    print(f"session {args.session_id} stopped (entrypoint exit status {code})")
    return 0 if code in (0, 143) else 1


def cmd_session_list(args: argparse.Namespace) -> int:
    sessions = _manager(args).list()
    if args.json:
        _print_json([s.to_json() for s in sessions])
    else:
        for s in sessions:
            detail = f"  ({printable(s.detail, quote_backslashes=False)})" if s.detail else ""
            print(f"{s.session_id:<32} {s.status:<8} {s.node:<16} {s.container_id[:12]}  {s.mount:<12} "
                  f"{s.egress or '-':<9} s3://{s.bucket}/{s.prefix}{detail}")
    return 0


def cmd_session_health(args: argparse.Namespace) -> int:
    health = _manager(args).health(args.session_id)
    _print_json(health)
    return 0 if health.get("ok") else 1


# -- embedded S3 ---------------------------------------------------------------------------
def cmd_s3_serve(args: argparse.Namespace) -> int:
    from .devstore.server import EmbeddedS3Server, generate_credentials

    key, secret = os.environ.get(SERVER_KEY_ENV, ""), os.environ.get(SERVER_SECRET_ENV, "")
    if bool(key) != bool(secret):
        raise ConfigError(f"set both {SERVER_KEY_ENV} and {SERVER_SECRET_ENV}, or neither (to generate a pair)")
    credentials = Credentials(key, secret) if key else generate_credentials()
    server = EmbeddedS3Server(credentials, host=args.host, port=args.port)
    settings = Settings(s3_endpoint=server.endpoint, bucket=args.bucket or config_mod.DEFAULT_BUCKET,
                        access_key=credentials.access_key, secret_key=credentials.secret_key)
    if args.write_config:
        config_mod.write_config_file(
            Path(args.write_config),
            {"s3_endpoint": settings.s3_endpoint, "bucket": settings.bucket, "access_key": settings.access_key,
             "secret_key": settings.secret_key},
            "Written by 'sandbox-host s3 serve'; valid while that server runs.")
    server.start()
    from .storage import SessionStorage

    SessionStorage(settings).ensure_bucket()
    print(f"embedded S3 endpoint on {server.endpoint} (bucket {settings.bucket}); "
          f"config {'in ' + args.write_config if args.write_config else 'not written'}", flush=True)

    stopping = {"flag": False}

    def on_signal(_signum: int, _frame: object) -> None:
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping["flag"]:
        signal.pause()
    server.stop()
    return 0


def _fleet(args: argparse.Namespace) -> Any:
    from .backends.swarm import SwarmBackend

    settings = _settings(args).validated()
    return SwarmBackend(settings)


def cmd_fleet_nodes(args: argparse.Namespace) -> int:
    rows = _fleet(args).nodes()
    if args.json:
        _print_json(rows)
    else:
        for r in rows:
            sandbox = "sandbox" if r["sandbox"] else "-"
            print(f"{r['node']:<24} {r['role']:<8} {r['state']:<8} {r['availability']:<7} {sandbox:<8} "
                  f"{r['sessions']:>4} sessions  {r['address']}")
    return 0


def cmd_fleet_availability(args: argparse.Namespace) -> int:
    availability = {"drain": "pause", "resume": "active"}[args.fleet_command]
    _fleet(args).set_availability(args.node, availability)
    what = "takes no new sessions, keeps its own" if availability == "pause" else "takes sessions"
    print(f"node {args.node}: {what}")
    return 0


def cmd_config_write(args: argparse.Namespace) -> int:
    """A JSON object of settings on stdin, written as the TOML config file; prints changed or unchanged."""
    try:
        values = json.loads(sys.stdin.read())
    except ValueError as exc:
        raise ConfigError(f"config write reads a JSON object of settings on stdin: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError("config write reads a JSON object of settings on stdin")
    changed = config_mod.write_config_file(Path(args.path), values, args.header or "", check=args.check)
    print("changed" if changed else "unchanged")
    return 0


def cmd_volumes_serve(args: argparse.Namespace) -> int:
    from .volumed import service

    return service.run(_settings(args).validated())


def cmd_s3_ensure_bucket(args: argparse.Namespace) -> int:
    from .storage import SessionStorage

    storage = SessionStorage(_settings(args).validated())  # the object store's own step: no volume service yet
    created = storage.ensure_bucket()
    print(f"bucket {storage.settings.bucket} {'created' if created else 'present'}")
    return 0


# -- parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (default: $SANDBOX_CONFIG or /etc/sandbox-host/config.toml)")
    common.add_argument("--endpoint", help="S3 endpoint URL (env SANDBOX_S3_ENDPOINT)")
    common.add_argument("--bucket", help="bucket for sessions (env SANDBOX_S3_BUCKET)")
    common.add_argument("--image", help="executor image (env SANDBOX_IMAGE)")
    common.add_argument("--state-dir", help="host directory for session control sockets (env SANDBOX_STATE_DIR)")

    parser = argparse.ArgumentParser(prog="sandbox-host",
                                     description="Sandbox sessions whose /workspace is their own S3 prefix.")
    parser.add_argument("--backend", help="where sessions run: docker (this host, default) or swarm "
                        "(a fleet, from a manager node) (env SANDBOX_BACKEND)")
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)

    doctor = sub.add_parser("doctor", parents=[common], help="check that this host is ready")
    doctor.add_argument("--json", action="store_true")
    doctor.set_defaults(func=cmd_doctor)

    image = sub.add_parser("image", help="the executor image").add_subparsers(dest="image_command", required=True)
    build = image.add_parser("build", parents=[common], help="build the executor image")
    build.add_argument("--base-image",
                       help="base image (default python:3.13-slim-trixie, the offline Debian base where it cannot be "
                       "pulled)")
    build.add_argument("--offline", action="store_true",
                       help="use the offline Debian base (debootstrap + docker import)")
    build.add_argument("--suite", default=DEFAULT_SUITE, help="Debian suite for the offline base")
    build.add_argument("--mirror", default=os.environ.get("SANDBOX_DEBIAN_MIRROR") or None,
                       help="Debian mirror for the offline base (env SANDBOX_DEBIAN_MIRROR; default: this host's "
                       "own apt source)")
    build.add_argument("--force", action="store_true", help="rebuild even if the inputs did not change")
    build.add_argument("--minimal", action="store_true",
                       help="python3 and s3fs only: no venv/pip, git, curl, sqlite3, procps, xz, zip")
    build.add_argument("--json", action="store_true")
    build.set_defaults(func=cmd_image_build)

    session = sub.add_parser("session", help="session containers").add_subparsers(dest="session_command", required=True)
    create = session.add_parser("create", parents=[common], help="start a session and wait for its workspace")
    create.add_argument("session_id")
    create.add_argument("--json", action="store_true")
    create.add_argument("--egress", help="what the session may reach: internet (default: public addresses, not the "
                        "host, link-local or private networks, nor other sessions), none, or allow=CIDR[,CIDR...] "
                        "(env SANDBOX_EGRESS)")
    create.add_argument("--network", help="the Docker network sessions join: the sandbox network (default "
                        "sandbox-host, made and guarded by the volume service), or host (--mount in-container only; "
                        "no network boundary) (env SANDBOX_NETWORK)")
    create.add_argument("--mount", help="host (default: s3fs on the host, no capability in the container) "
                        "or in-container (env SANDBOX_MOUNT)")
    create.add_argument("--mounter", help="with --mount host: local (default: the files on the session's own "
                        "host disk, S3 synced behind them) or s3fs (every close in S3 at once, outside writes "
                        "seen at once) (env SANDBOX_MOUNTER)")
    create.add_argument("--memory", help="memory limit, e.g. 1g")
    create.add_argument("--cpus", type=float, help="CPU limit, e.g. 1.5")
    create.add_argument("--pids-limit", type=int, help="process limit")
    create.add_argument("--s3fs-option", action="append", metavar="NAME[=VALUE]",
                        help="extra s3fs option from the allow-list (repeatable; with --mount host the volume "
                        "service's s3fs_options apply, and other values are refused)")
    create.set_defaults(func=cmd_session_create)

    run = session.add_parser("exec", parents=[common], help="run a command in the session as the sandbox user")
    run.add_argument("session_id")
    run.add_argument("--timeout", type=float, default=60.0)
    run.add_argument("--stdin", action="store_true", help="pass this process's standard input to the command")
    run.add_argument("command", nargs="*", help="the command, after -- (everything after it is passed untouched)")
    run.set_defaults(func=cmd_session_exec)

    upload = session.add_parser("upload", parents=[common], help="upload a file to the session's uploads/")
    upload.add_argument("session_id")
    upload.add_argument("file")
    upload.add_argument("--name", help="name under uploads/ (default: the file's name)")
    upload.set_defaults(func=cmd_session_upload)

    artifacts = session.add_parser("artifacts", parents=[common], help="list the session's artifacts/")
    artifacts.add_argument("session_id")
    artifacts.add_argument("--uploads", action="store_true", help="list uploads/ instead")
    artifacts.add_argument("--json", action="store_true")
    artifacts.set_defaults(func=cmd_session_artifacts)

    download = session.add_parser("download", parents=[common], help="download an artifact")
    download.add_argument("session_id")
    download.add_argument("name")
    download.add_argument("-o", "--output", help="file or directory (default: .); - for standard output")
    download.set_defaults(func=cmd_session_download)

    sync = session.add_parser("sync", parents=[common], help="return once every write made so far is in S3 "
                              "(the session runs on)")
    sync.add_argument("session_id")
    sync.add_argument("--timeout", type=float, default=DRAIN_TIMEOUT)
    sync.set_defaults(func=cmd_session_sync)

    stop = session.add_parser("stop", parents=[common], help="stop gracefully (flush, unmount), then remove")
    stop.add_argument("session_id")
    stop.add_argument("--timeout", type=int, default=30)
    stop.set_defaults(func=cmd_session_stop)

    listing = session.add_parser("list", parents=[common], help="list sessions")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_session_list)

    health = session.add_parser("health", parents=[common], help="the executor's health answer")
    health.add_argument("session_id")
    health.set_defaults(func=cmd_session_health)

    cfg = sub.add_parser("config", help="the config file").add_subparsers(dest="config_command", required=True)
    write = cfg.add_parser("write", help="write settings (a JSON object on stdin) as a TOML config file (0600)")
    write.add_argument("path")
    write.add_argument("--header", help="a comment line at the top")
    write.add_argument("--check", action="store_true", help="only say whether it would change")
    write.set_defaults(func=cmd_config_write)

    fleet = sub.add_parser("fleet", help="the swarm's nodes").add_subparsers(dest="fleet_command", required=True)
    nodes = fleet.add_parser("nodes", parents=[common], help="nodes, their state and their sessions")
    nodes.add_argument("--json", action="store_true")
    nodes.set_defaults(func=cmd_fleet_nodes)
    for verb, text in (("drain", "take no new sessions, keep the running ones"), ("resume", "take sessions again")):
        node_cmd = fleet.add_parser(verb, parents=[common], help=text)
        node_cmd.add_argument("node")
        node_cmd.set_defaults(func=cmd_fleet_availability)

    volumes = sub.add_parser("volumes", help="the host service").add_subparsers(dest="volumes_command", required=True)
    vserve = volumes.add_parser("serve", parents=[common],
                                help="run the volume driver (mounts workspaces on this host)",
                                description="The Docker volume plugin that mounts each session's prefix with s3fs on "
                                "this host; installed as the sandbox-host-volumes service by the sandbox_host role.")
    vserve.add_argument("--volume-driver", dest="volume_driver", help="driver name (default sandbox-host)")
    vserve.set_defaults(func=cmd_volumes_serve)

    s3 = sub.add_parser("s3", help="object storage").add_subparsers(dest="s3_command", required=True)
    serve = s3.add_parser("serve", help="run the embedded S3 endpoint (development and tests; data in memory)",
                          description="Keys from $SANDBOX_S3_SERVER_ACCESS_KEY / $SANDBOX_S3_SERVER_SECRET_KEY, "
                          "or a generated pair.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9000)
    serve.add_argument("--bucket")
    serve.add_argument("--write-config", metavar="PATH", help="write a config file (0600) for the other commands")
    serve.set_defaults(func=cmd_s3_serve)
    ensure = s3.add_parser("ensure-bucket", parents=[common], help="create the sessions bucket if missing")
    ensure.set_defaults(func=cmd_s3_ensure_bucket)
    return parser


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata is not free at start-up)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"sandbox-host {version('sandbox-host')}")
        except PackageNotFoundError:
            print("sandbox-host (not installed: running from a checkout)")
        parser.exit()


def explain(exc: BaseException) -> tuple[str, int]:
    """One line for what escaped the runtime's own errors: Docker's API, the operating system."""
    if isinstance(exc, SandboxHostError):
        return str(exc), exc.exit_code
    if type(exc).__module__.startswith("docker"):  # docker's exceptions, without importing docker here
        detail = getattr(exc, "explanation", None) or str(exc)
        return (f"the Docker engine refused: {detail}; check the engine (sandbox-host doctor) and retry", 1)
    if isinstance(exc, PermissionError):
        return f"{exc.strerror}: {exc.filename or ''}; sandbox-host manages sessions as root (sudo)".strip(), 1
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", 1
    raise exc


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Options go anywhere before ``--`` (``session exec ID --timeout 5 -- cmd``); everything
    after the first ``--`` is the command of ``session exec``, passed on untouched."""
    parser = build_parser()
    argv = list(argv)
    split = argv.index("--") if "--" in argv else -1
    head = argv[:split]
    if split < 0 or not any(head[i:i + 2] == ["session", "exec"] for i in range(len(head))):
        return parser.parse_args(argv)  # no command to take: "--" means what argparse says
    args = parser.parse_args(head)
    args.command = [*args.command, *argv[split + 1:]]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for what is known, a traceback for a bug
        try:
            message, code = explain(exc)
        except Exception as bug:  # noqa: BLE001 - a bug: its traceback, and its message escaped as one line
            import traceback

            print("Traceback (most recent call last):", file=sys.stderr)
            print("".join(traceback.format_tb(bug.__traceback__)), end="", file=sys.stderr)
            print(printable(f"{type(bug).__qualname__}: {bug}", quote_backslashes=False), file=sys.stderr)
            return 1
        # Messages name files, keys and Docker's or S3's own words: none may reach the terminal raw.
        print(f"sandbox-host: error: {printable(message, quote_backslashes=False)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
