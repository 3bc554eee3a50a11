#!/usr/bin/env python3
"""Build the runtime's wheel reproducibly: the same sources give the same bytes (so the
sandbox_host role's copy of it changes nothing on a re-run). The sources are copied to a fresh
directory first: an in-tree build would pick up files deleted since from an old build/.

    build-wheel.py OUTDIR        (prints the wheel's path)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("pyproject.toml", "README.md")
TREES = ("provisioning", "templates", "executor")
EPOCH = "946684800"  # 2000-01-01: fixed, and after 1980 (a wheel is a zip file)


def sources() -> list[Path]:
    found = [ROOT / name for name in FILES]
    for tree in TREES:
        found += [p for p in (ROOT / tree).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(found)


def main(argv: list[str]) -> int:
    out = Path(argv[0]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sandbox-host-wheel-") as tmp:
        tree = Path(tmp) / "src"
        for path in sources():
            target = tree / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            os.utime(target, (int(EPOCH), int(EPOCH)))
        built = Path(tmp) / "dist"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
                        "-w", str(built), str(tree)],
                       check=True, env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, "PYTHONHASHSEED": "0"})
        wheel = next(built.glob("*.whl"))
        for old in out.glob("sandbox_host-*.whl"):
            if old.name != wheel.name:
                old.unlink()
        target = out / wheel.name
        if not target.exists() or target.read_bytes() != wheel.read_bytes():
            shutil.copyfile(wheel, target)
    print(target)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
