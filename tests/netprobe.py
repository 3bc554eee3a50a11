"""Scripts the network tests run inside sessions and on the host: a listener that answers its
name, and a probe that tries many addresses at once and says what each answered (the answer, or
why not: TimeoutError for a dropped packet, ConnectionRefusedError, OSError...). Standard library
only: they run in the executor image's python3."""

from __future__ import annotations

import textwrap

# In the foreground, one thread per "ADDRESS,PORT,NAME" argument; prints "ready" once listening.
SERVER = textwrap.dedent("""
    import socket, sys, threading
    def serve(address, port, name):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port)); s.listen(64)
        while True:
            c, _ = s.accept()
            try:
                c.settimeout(2); c.recv(4096)
                c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + name.encode())
            except OSError:
                pass
            c.close()
    for spec in sys.argv[1:]:
        address, port, name = spec.split(",")
        threading.Thread(target=serve, args=(address, int(port), name), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")

# The same as a daemon (the command returns at once, its output closed): for a session, whose
# exec waits for the command's output to end.
LISTENER = textwrap.dedent("""
    import os, socket, sys
    address, port, name = sys.argv[1].split(",")
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((address, int(port)))
    s.listen(16)
    if os.fork():
        os._exit(0)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    while True:
        c, _ = s.accept()
        try:
            c.settimeout(2); c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\\r\\n\\r\\n" + name.encode())
        except OSError:
            pass
        c.close()
""")

PROBE = textwrap.dedent("""
    import json, socket, sys, threading
    out = {}
    def probe(target):
        host, port = target.rsplit(":", 1)
        s = socket.socket(); s.settimeout(1.5)
        try:
            s.connect((host, int(port)))
            s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
            out[target] = s.recv(200).decode(errors="replace").split("\\r\\n\\r\\n", 1)[-1]
        except OSError as exc:
            out[target] = type(exc).__name__
        finally:
            s.close()
    threads = [threading.Thread(target=probe, args=(t,)) for t in sys.argv[1:]]
    [t.start() for t in threads]; [t.join() for t in threads]
    print(json.dumps(out))
""")


def blocked(answer: str) -> bool:
    """What a probe says of an address it could not reach."""
    return answer in ("TimeoutError", "ConnectionRefusedError", "OSError")
