"""The s3fs command line: fixed choices first, a caller's allow-listed extras after."""

from __future__ import annotations

import dataclasses

from provisioning.config import Settings
from provisioning.s3fsopts import s3fs_mount
from provisioning.validation import session_id

SID = session_id("s3fsopts-unit")


def mount_options(forget_misses: bool, **extras: object) -> tuple[str, ...]:
    settings = dataclasses.replace(Settings(s3_endpoint="http://127.0.0.1:9"), s3fs_options=extras).validated()
    return s3fs_mount(settings, SID, "/mnt/x", uid=1000, gid=1000, tmpdir="/tmp",
                      forget_misses=forget_misses).options


def test_an_s3fs_that_caches_misses_is_told_to_forget_them() -> None:
    assert "disable_noobj_cache" in mount_options(True)
    assert "disable_noobj_cache" not in mount_options(False)  # 1.90 has no such option (misses not cached)


def test_a_caller_who_asks_for_the_miss_cache_keeps_it() -> None:
    options = mount_options(True, enable_noobj_cache=True)
    assert "enable_noobj_cache" in options and "disable_noobj_cache" not in options
