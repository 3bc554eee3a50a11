"""One root for every error sandbox-host reports: a message that names the cause and the fix,
a ``kind`` that callers decide by (never the English text), and the CLI's exit code."""

from __future__ import annotations


class SandboxHostError(Exception):
    kind = "error"
    exit_code = 1


class InputError(SandboxHostError):
    """A value the user gave (flag, environment, config file) is unusable."""

    kind = "input"
    exit_code = 2


class UnreachableError(SandboxHostError):
    """A service sandbox-host needs (Docker, S3, the volume driver) does not answer."""

    kind = "unreachable"
    exit_code = 1


class SessionError(SandboxHostError):
    """A session operation failed; the message says why and what to do."""

    kind = "session"


class SessionExists(SessionError):
    kind = "exists"


class SessionNotFound(SessionError):
    kind = "not-found"
    exit_code = 3


class ImageMissing(SessionError):
    kind = "image-missing"
