"""sandbox-host runtime: render session entrypoints and launch FUSE-enabled session containers.

Library use::

    from provisioning import config, SessionManager, SessionStorage
    settings = config.load({"s3_endpoint": "http://127.0.0.1:9000"})
    manager = SessionManager(settings)
    info = manager.create("abc123")
    result = manager.exec("abc123", argv=["ls", "-la"])
    manager.stop("abc123")
"""

from .config import Settings, load
from .launcher import SessionError, SessionExists, SessionInfo, SessionManager, SessionNotFound
from .storage import SessionStorage, StorageError
from .validation import ValidationError

__all__ = [
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
