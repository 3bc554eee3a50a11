"""The one reader of the mount table: mount points unescaped, the fs type, the propagation
fields, the mount on top; against tables written to files and this machine's own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning import mountinfo

ROOT = Path(__file__).resolve().parents[2]

TABLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
35 22 0:5 / /proc rw,nosuid - proc proc rw
40 22 0:50 / /srv/data rw - tmpfs tmpfs rw
41 40 0:51 / /srv/data/volumes rw shared:7 master:3 - tmpfs tmpfs rw
42 41 0:52 / /srv/data/volumes/a\\040b\\011c\\134d rw,nosuid,nodev shared:9 - fuse.s3fs s3fs rw
43 40 7:0 / /srv/data/volumes rw,noexec propagate_from:2 master:4 - ext4 /dev/loop0 rw
44 22 0:53 / /srv/database rw unbindable - tmpfs tmpfs rw
"""


@pytest.fixture
def table(tmp_path: Path) -> list[mountinfo.Mount]:
    path = tmp_path / "mountinfo"
    path.write_text(TABLE)
    return mountinfo.read(str(path))


def test_fields_as_the_kernel_writes_them(table: list[mountinfo.Mount]) -> None:
    assert table[0] == mountinfo.Mount("/", "ext4", ("shared:1",))
    assert table[1] == mountinfo.Mount("/proc", "proc", ())
    assert table[3].propagation == ("shared:7", "master:3") and table[3].shared
    assert not table[1].shared and not table[5].shared  # master of a shared one: a slave, not shared


def test_a_mount_point_is_unescaped(table: list[mountinfo.Mount]) -> None:
    assert table[4].mount_point == "/srv/data/volumes/a b\tc\\d" and table[4].fs_type == "fuse.s3fs"
    assert mountinfo.at("/srv/data/volumes/a b\tc\\d", table) == table[4]


def test_the_mount_on_top_is_the_later(table: list[mountinfo.Mount]) -> None:
    assert mountinfo.at("/srv/data/volumes", table) == table[5]
    assert mountinfo.at(Path("/srv/data"), table) == table[2]
    assert mountinfo.at("/srv/data/nothing", table) is None


def test_under_is_strictly_below_and_a_whole_name(table: list[mountinfo.Mount]) -> None:
    below = [m.mount_point for m in mountinfo.under("/srv/data", table)]
    assert below == ["/srv/data/volumes", "/srv/data/volumes/a b\tc\\d", "/srv/data/volumes"]
    assert "/srv/database" not in below and "/srv/data" not in below
    assert [m.mount_point for m in mountinfo.under("/srv/data/", table)] == below


def test_a_line_that_is_not_mountinfo_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mounts"
    path.write_text("/dev/sda1 / ext4 rw 0 0\n")  # /proc/mounts' format, not mountinfo's
    with pytest.raises(ValueError, match="not a mountinfo line.*/dev/sda1"):
        mountinfo.read(str(path))


def test_this_machines_table() -> None:
    mounts = mountinfo.read()
    assert mounts and mountinfo.at("/") is not None
    assert mountinfo.at("/proc") is not None and mountinfo.at("/proc").fs_type == "proc"


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="mounts need root and unshare")
def test_a_real_mount_with_a_space_in_its_name(tmp_path: Path) -> None:
    """In a mount namespace of its own (gone with the process): a bind mount made shared, read back."""
    target = tmp_path / "a dir\twith\\odd names"
    target.mkdir()
    probe = ("import json, sys; from provisioning import mountinfo; m = mountinfo.at(sys.argv[1]); "
             "print(json.dumps([m.fs_type, m.shared, [x.mount_point for x in mountinfo.under(sys.argv[2])]]))")
    script = (f'mount --bind "$1" "$1" && mount --make-shared "$1" && '
              f'{sys.executable} -c "$0" "$1" "$2"')
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, probe,
                          str(target), str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    fs_type, shared, below = json.loads(out.stdout)
    assert shared is True and fs_type and below == [str(target)]
