"""One volume service per driver name: the second refuses and names the first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning.errors import SandboxHostError
from provisioning.volumed.service import hold_driver_name


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    state = tmp_path / "state" / "drv"
    fd = hold_driver_name(state)
    try:
        with pytest.raises(SandboxHostError, match=rf"driver 'drv' \(pid {os.getpid()}, lock .*drv\.lock\)"):
            hold_driver_name(state)
    finally:
        os.close(fd)
    os.close(hold_driver_name(state))  # released with its descriptor


def test_the_name_is_free_again_when_its_holder_dies_however(tmp_path: Path) -> None:
    state = tmp_path / "drv"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from provisioning.volumed.service import hold_driver_name; "
        f"hold_driver_name(Path({str(state)!r})); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(SandboxHostError, match=rf"pid {holder.pid}"):
            hold_driver_name(state)
    finally:
        holder.kill()
        holder.wait()
    os.close(hold_driver_name(state))
    assert not state.exists()  # the lock lives beside the state directory, which purge may remove


def test_children_do_not_inherit_the_lock(tmp_path: Path) -> None:
    """s3fs and the sync process outlive the service by design: they must not keep its name."""
    fd = hold_driver_name(tmp_path / "drv")
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
