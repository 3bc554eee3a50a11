"""An S3 server that can go away: a TCP relay on a loopback port of its own in front of a real
one, and the host's firewall to take that port down, as a stopped server (connections refused)
or as a black hole (packets dropped: connections hang). Only the relay's port is touched, so
the tests' other clients of the server go on."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
from types import TracebackType

TABLE = "sandbox_host_test_outage"


class Outage:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, name="outage-relay", daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://{self.target[0]}:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._conns += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def _nft(self, script: str) -> None:
        subprocess.run(["nft", "-f", "-"], input=script.encode(), check=True, capture_output=True)

    def down(self, how: str) -> None:
        """``refused`` (the server stopped: every packet to the port answered with a reset) or
        ``blackhole`` (every packet dropped: connections, new and open, hang)."""
        verdict = {"refused": "reject with tcp reset", "blackhole": "drop"}[how]
        self.up()
        self._nft(f"table inet {TABLE} {{\n chain out {{ type filter hook output priority 0; "
                  f"oifname \"lo\" tcp dport {self.port} {verdict}; }}\n}}\n")

    def up(self) -> None:
        subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True)

    def close(self) -> None:
        self.up()
        self._stop.set()
        self._listener.close()
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> Outage:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
