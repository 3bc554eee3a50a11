"""sandbox-host runtime: launch session containers whose /workspace is the session's own S3 prefix.

Library use::

    from provisioning import load, SessionManager
    settings = load({"s3_endpoint": "http://127.0.0.1:9000"})
    manager = SessionManager(settings)
    info = manager.create("abc123")
    result = manager.exec("abc123", argv=["ls", "-la"])
    manager.stop("abc123")
"""

from typing import TYPE_CHECKING, Any

from .config import Settings, load
from .errors import SandboxHostError, SessionError, SessionExists, SessionNotFound
from .validation import ValidationError

if TYPE_CHECKING:
    from .launcher import SessionInfo, SessionManager
    from .storage import SessionStorage, StorageError

# Imported when first named (they bring in the Docker SDK and boto3): a command that needs
# neither starts without them.
_LAZY = {"SessionInfo": "launcher", "SessionManager": "launcher", "SessionStorage": "storage",
         "StorageError": "storage"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SandboxHostError",
    "Settings",
    "load",
    "SessionError",
    "SessionExists",
    "SessionInfo",
    "SessionManager",
    "SessionNotFound",
    "SessionStorage",
    "StorageError",
    "ValidationError",
]
