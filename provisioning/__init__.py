"""sandbox-host runtime: launch session containers whose /workspace is the session's own S3 prefix.

Library use::

    from provisioning import load, SessionManager
    settings = load({"s3_endpoint": "http://127.0.0.1:9000"})
    manager = SessionManager(settings)
    info = manager.create("abc123")
    result = manager.exec("abc123", argv=["ls", "-la"])
    manager.stop("abc123")
"""

from .config import Settings, load
from .errors import SandboxHostError, SessionError, SessionExists, SessionNotFound
from .launcher import SessionInfo, SessionManager
from .storage import SessionStorage, StorageError
from .validation import ValidationError

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
