"""executor_image: built offline from the controller's base tarball; runs the executor as the
sandbox user with no capability, and carries s3fs for the in-container strategy."""

import json

IMAGE = "sandbox-executor:latest"


def test_image_built_with_its_labels(host) -> None:
    labels = json.loads(host.check_output(f"docker image inspect {IMAGE}"))[0]["Config"]["Labels"]
    assert labels["io.sandbox-host.role"] == "executor"
    assert len(labels["io.sandbox-host.inputs"]) == 64  # what a re-run compares to build only on change


def test_executor_runs_without_capabilities(host) -> None:
    out = host.check_output(
        f"docker run --rm --network none --cap-drop ALL --security-opt no-new-privileges --user 1000:1000 "
        f"--entrypoint python3 {IMAGE} -c 'import os; print(os.getuid(), open(\"/proc/self/status\").read()"
        f".split(\"CapEff:\")[1].split()[0])'")
    assert out.split() == ["1000", "0000000000000000"]


def test_image_has_s3fs_for_the_in_container_strategy(host) -> None:
    assert host.run(f"docker run --rm --network none --entrypoint s3fs {IMAGE} --version").rc == 0


def test_cache_holds_the_seeded_base(host) -> None:
    assert host.file("/var/cache/sandbox-host").is_directory
    assert any(name.startswith("debian-") and name.endswith(".tar")
               for name in host.file("/var/cache/sandbox-host").listdir())


def test_image_carries_the_user_tools(host) -> None:
    for tool in ("git --version", "sqlite3 --version", "curl --version", "ps --version"):
        assert host.run(f"docker run --rm --network none {IMAGE} {tool}").rc == 0, tool
