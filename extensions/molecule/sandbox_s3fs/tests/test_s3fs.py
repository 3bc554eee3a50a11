"""sandbox_s3fs: the s3fs sessions use is 1.95 on both suites, without touching the host's libraries."""


def suite(host) -> str:
    return host.system_info.codename


def test_package_installed(host) -> None:
    assert host.package("s3fs").is_installed


def test_sessions_get_s3fs_1_95(host) -> None:
    if suite(host) == "bookworm":
        binary = "/opt/sandbox-host/s3fs/bin/s3fs"
        assert host.file(binary).is_file
        assert "V1.90" in host.check_output("/usr/bin/s3fs --version")  # the distribution's, untouched
    else:
        binary = "/usr/bin/s3fs"
        assert not host.file("/opt/sandbox-host/s3fs").exists
    assert "V1.95" in host.check_output(f"{binary} --version")


def test_private_runtime_brings_its_own_libraries(host) -> None:
    if suite(host) != "bookworm":
        return
    # Its loader and libraries: the host's libcurl/libxml2 of Debian 12 are not what it runs with.
    libs = host.check_output("ls /opt/sandbox-host/s3fs/root/usr/lib/x86_64-linux-gnu")
    assert "libcurl-gnutls.so.4" in libs.split() and "libxml2.so.2" in libs.split()
    assert "trixie" in host.file("/opt/sandbox-host/s3fs/release").content_string
