"""Where the package's data lives: templates/ and executor/ at the top of a checkout, or inside
the installed package (pyproject maps them to provisioning/templates and provisioning/executor)."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    for candidate in (_HERE / name, _HERE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"{name}/ not found next to {_HERE}: reinstall sandbox-host")


def executor_app_dir() -> Path:
    """The executor (standard library only), bound or copied read-only into every session."""
    return data_dir("executor") / "app"
