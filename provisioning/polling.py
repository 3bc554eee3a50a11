"""Waiting for something the runtime cannot be told about (a mount appearing, a process ending,
a firewall rule in place): ask again, with a fixed or growing delay, until a deadline.

One helper so that every such wait has the same shape: the first try at once, one last try at
the deadline (never a sleep past it), and an error of the caller's that names what did not happen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(check: Callable[[], T | None], timeout: float, error: Callable[[], BaseException], *,
               every: float = 0.05, growth: float = 1.0, at_most: float = 1.0) -> T:
    """``check()``'s first truthy value, asked at once, then again after ``every`` seconds (each
    delay ``growth`` times the last, up to ``at_most``). Once ``timeout`` seconds have passed
    with none: ``raise error()`` (called then, so that it can name the latest state); a timeout
    of 0 or less asks once. An exception ``check`` raises ends the wait at once (a failure that
    waiting will not mend)."""
    if every <= 0 or growth < 1:
        raise ValueError(f"poll_until: every ({every}) must be > 0 and growth ({growth}) >= 1")
    deadline = time.monotonic() + timeout
    delay = every
    while True:
        value = check()
        if value:
            return value
        left = deadline - time.monotonic()
        if not left > 0:  # a NaN timeout (from a request's JSON) ends too
            raise error()
        time.sleep(min(delay, left))
        delay = min(delay * growth, max(at_most, every))
