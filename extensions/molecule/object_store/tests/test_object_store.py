"""object_store (dev backend): a service user, its keys readable by it alone, the endpoint on
loopback only, serving the sessions bucket to the root credentials and to nobody else."""

PYTHON = "/opt/sandbox-host/venv/bin/python"
ENV_FILE = "/etc/default/sandbox-host-s3"


def s3(host, code: str, secret: str = "molecule-password") -> str:
    """Run CODE with `s3`, a client of the endpoint with the scenario's root user and SECRET."""
    program = (
        "import boto3, botocore.config, botocore.exceptions\n"
        "s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:9000', region_name='us-east-1',\n"
        f"    aws_access_key_id='molecule', aws_secret_access_key={secret!r},\n"
        "    config=botocore.config.Config(retries={'max_attempts': 1}))\n"
        f"{code}\n"
    )
    return host.check_output(f"{PYTHON} -c {quote(program)}")


def quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def test_service_running_and_enabled(host) -> None:
    service = host.service("sandbox-host-s3")
    assert service.is_running and service.is_enabled
    assert host.user("sandbox-s3").exists


def test_keys_readable_by_the_service_alone(host) -> None:
    env = host.file(ENV_FILE)
    assert env.user == "root" and env.group == "sandbox-s3" and env.mode == 0o640


def test_listens_on_loopback_only(host) -> None:
    assert host.socket("tcp://127.0.0.1:9000").is_listening
    assert not host.socket("tcp://0.0.0.0:9000").is_listening


def test_bucket_served_to_the_root_credentials(host) -> None:
    s3(host, "s3.put_object(Bucket='molecule-sessions', Key='sessions/m1/uploads/a', Body=b'x')\n"
             "assert s3.get_object(Bucket='molecule-sessions', Key='sessions/m1/uploads/a')['Body'].read() == b'x'")


def test_refuses_a_wrong_secret(host) -> None:
    out = s3(host, "try:\n    s3.list_objects_v2(Bucket='molecule-sessions')\n"
                   "except botocore.exceptions.ClientError as e:\n    print(e.response['Error']['Code'])",
             secret="not-the-secret")
    assert out.strip() in ("SignatureDoesNotMatch", "AccessDenied", "InvalidAccessKeyId")


def test_minio_unit_verifies(host) -> None:
    """The MinIO backend's unit, rendered from the role's template by prepare, passes systemd-analyze
    verify. The MinIO binary cannot be had here and is never faked: the one complaint allowed is
    that /usr/local/bin/minio is missing."""
    verify = host.run("systemd-analyze verify /tmp/minio.service")
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if line.strip()]
    assert all("/usr/local/bin/minio" in line for line in complaints), complaints
    unit = host.file("/tmp/minio.service").content_string
    assert "EnvironmentFile=/etc/default/minio" in unit and "User=minio-user" in unit
    assert "ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES" in unit
