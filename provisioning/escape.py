"""Text chosen by user code (file names, a mounter's log about them) on its way to a terminal or
a log: one escaping function for every message that can carry it."""

from __future__ import annotations


def printable(text: str, *, quote_backslashes: bool = True) -> str:
    """``text`` with every control and other non-printable character escaped (``\\n``,
    ``\\x1b``, ``\\u2028``...), so a name made by user code cannot move the cursor, clear the
    screen, set the title or forge a line. Backslashes are doubled too, so a name shows
    unambiguously (a backslash then ``n`` is not a newline). A whole message on its way out
    (the CLI's error line, the service's log) may already hold names escaped that way:
    ``quote_backslashes=False`` escapes only what a terminal would act on, and leaves those
    names as they are instead of doubling their backslashes."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\" if quote_backslashes else char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(char.encode("unicode_escape").decode("ascii"))
    return "".join(out)
