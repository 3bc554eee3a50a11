"""The checks the code declares are run: its ``noqa`` codes mean something to ruff, and the
``py.typed`` it ships is held by mypy (strict on provisioning/ and executor/app/). Both are
configured in pyproject.toml and come with the ``test`` extra; this runs them as a developer
does, from the checkout, with the tools next to this interpreter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run(tool: str, *args: str) -> None:
    executable = BIN / tool
    if not executable.exists():
        pytest.fail(f"{tool} is not installed next to {sys.executable}: pip install -e '.[test]' "
                    "(scripts/setup-host.sh --test does)")
    out = subprocess.run([str(executable), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join([tool, *args])} (exit {out.returncode}):\n{out.stdout}{out.stderr}"


def test_ruff_is_clean() -> None:
    run("ruff", "check", "--no-cache", ".")


def test_mypy_is_clean() -> None:
    # The files and the strictness are pyproject.toml's; the cache is .mypy_cache (ignored by git),
    # so a run after the first checks only what changed.
    run("mypy")
