"""The stdlib read of a container's inspect data (exec's and health's path), against a fake
engine on a unix socket; and the docker backend's executor lookup through it."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning import engine, facts
from provisioning.backends.docker import PEER_FILE, DockerBackend
from provisioning.config import Settings
from provisioning.errors import SessionError, SessionNotFound
from provisioning.validation import session_id


class FakeEngine:
    """Answers every request with one canned HTTP response; keeps the requests."""

    def __init__(self, path: Path, status: int, body: bytes) -> None:
        self.path, self.status, self.body, self.requests = path, status, body, []
        self.server = socket.socket(socket.AF_UNIX)
        self.server.bind(str(path))
        self.server.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.requests.append(conn.recv(4096))
                conn.sendall(f"HTTP/1.0 {self.status} X\r\nContent-Type: application/json\r\n\r\n".encode() + self.body)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[callable]:
    made: list[FakeEngine] = []

    def make(status: int, body: object) -> FakeEngine:
        server = FakeEngine(tmp_path / f"docker{len(made)}.sock", status,
                            body if isinstance(body, bytes) else json.dumps(body).encode())
        made.append(server)
        return server

    yield make
    for server in made:
        server.server.close()


def test_local_socket_follows_docker_host() -> None:
    assert engine.local_socket({}) == "/var/run/docker.sock"
    assert engine.local_socket({"DOCKER_HOST": "unix:///run/d.sock"}) == "/run/d.sock"
    assert engine.local_socket({"DOCKER_HOST": "tcp://127.0.0.1:2376"}) is None  # the SDK's job


def test_inspect_answers(fake) -> None:
    ok = fake(200, {"Id": "abc", "Name": "/sandbox-x"})
    assert engine.inspect_container("sandbox-x", str(ok.path)) == {"Id": "abc", "Name": "/sandbox-x"}
    assert ok.requests[0].startswith(b"GET /containers/sandbox-x/json HTTP/1.0\r\n")
    assert engine.inspect_container("sandbox-x", str(fake(404, {"message": "No such container"}).path)) is None
    with pytest.raises(engine.EngineError, match="Docker engine: boom"):
        engine.inspect_container("sandbox-x", str(fake(500, {"message": "boom"}).path))
    with pytest.raises(engine.EngineError, match="no JSON"):
        engine.inspect_container("sandbox-x", str(fake(200, b"<html>").path))


def test_inspect_of_an_absent_engine_says_how_to_start_it(tmp_path: Path) -> None:
    with pytest.raises(engine.EngineUnavailable, match="start it"):
        engine.inspect_container("sandbox-x", str(tmp_path / "none.sock"))


def container(sid: str, boot: Path, status: str = "running", exit_code: int = 0) -> dict[str, object]:
    return {"Id": "c0ffee", "Name": f"/sandbox-{sid}", "State": {"Status": status, "ExitCode": exit_code},
            "Config": {"Image": "img", "Labels": {facts.LABEL_SESSION: sid, facts.LABEL_CONTROL: "/run/ctl",
                                                  facts.LABEL_BOOT: str(boot)}},
            "HostConfig": {"NetworkMode": "none"}}


def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: FakeEngine) -> DockerBackend:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{server.path}")
    settings = Settings(s3_endpoint="http://127.0.0.1:9", state_dir="/run/sandbox-host-unit").validated()
    return DockerBackend(settings)  # no client: exec's path, which never loads the SDK


def test_executor_found_through_the_engine_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake) -> None:
    sid = session_id("abc123")
    (tmp_path / PEER_FILE).write_text("4242 99")
    client = backend(tmp_path, monkeypatch, fake(200, container(sid, tmp_path))).executor(sid)
    assert (client.control_dir, client.container_id, client.executor.pid) == (Path("/run/ctl"), "c0ffee", 4242)


@pytest.mark.parametrize(("status", "body", "error", "match"), [
    (404, {"message": "No such container"}, SessionNotFound, "no session abc123"),
    (200, "other", SessionError, "not a sandbox-host session"),
    (200, "exited", SessionError, r"not running \(failed: the workspace mount died"),
    (200, "unrecorded", SessionError, "no recorded executor"),
])
def test_executor_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake, status: int, body: object,
                           error: type[Exception], match: str) -> None:
    sid = session_id("abc123")
    if body == "other":
        body = container("zzz999", tmp_path)
    elif body == "exited":
        body = container(sid, tmp_path, "exited", facts.EXIT_WORKSPACE_LOST)
    elif body == "unrecorded":
        body = container(sid, tmp_path / "no-such-dir")
    with pytest.raises(error, match=match):
        backend(tmp_path, monkeypatch, fake(status, body)).executor(sid)
