"""sandbox_fuse: FUSE usable on every host, including the one that started without /dev/fuse."""


def test_the_package_and_allow_other(host) -> None:
    assert host.package("fuse3").is_installed
    assert host.file("/etc/fuse.conf").contains("^user_allow_other$")


def test_dev_fuse_is_the_fuse_device_and_opens(host) -> None:
    # Character device 10:229 (major and minor in hex); the node the role made has udev's mode.
    kind, numbers, mode = host.check_output("stat -c '%F|%t:%T|%a' /dev/fuse").split("|")
    assert (kind, numbers) == ("character special file", "a:e5")
    if host.backend.get_hostname() == "sbx-mol-bookworm":
        assert mode == "666"
    # Opening it is what s3fs does first; a device cgroup that denies it gives EPERM here.
    assert host.run("python3 -c \"import os; os.close(os.open('/dev/fuse', os.O_RDWR))\"").rc == 0
