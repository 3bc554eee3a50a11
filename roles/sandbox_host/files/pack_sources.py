#!/usr/bin/env python3
"""Pack the runtime's sources into a deterministic .tar.gz: the same sources give the same bytes.

Run on the controller by the sandbox_host role: one archive crosses to the host instead of one
transfer per file, and because names are sorted and times, owners and modes fixed, an unchanged
checkout gives an identical archive (so a re-run changes nothing).

    pack_sources.py SOURCE_DIR DEST.tar.gz
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

FILES = ("pyproject.toml", "README.md")
MTIME = 946684800  # 2000-01-01: fixed, and after 1980 (wheels are zip files and cannot hold older dates)
TREES = ("provisioning", "templates", "executor")


def sources(root: Path) -> list[Path]:
    found = [root / name for name in FILES]
    for tree in TREES:
        found += [p for p in (root / tree).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def pack(root: Path, dest: Path) -> int:
    buffer = io.BytesIO()
    files = sources(root)
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.size, info.mode, info.mtime = len(data), 0o644, MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    with dest.open("wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as archive:
        archive.write(buffer.getvalue())
    return len(files)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    root, dest = Path(argv[0]), Path(argv[1])
    missing = [name for name in (*FILES, *TREES) if not (root / name).exists()]
    if missing:
        print(f"{root} is not a sandbox-host checkout: missing {', '.join(missing)}", file=sys.stderr)
        return 1
    print(f"packed {pack(root, dest)} files into {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
