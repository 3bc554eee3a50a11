"""CLI: bad input is rejected before Docker or S3 is touched (DOCKER_HOST points nowhere)."""

import os
import subprocess
import sys

import pytest

CASES = [
    (["session", "create", "../etc"], "session id"),
    (["session", "create", "ok1", "--bucket", "Bad_Bucket"], "bucket"),
    (["session", "create", "ok1", "--endpoint", "http://user:pw@h:1"], "S3 endpoint"),
    (["session", "create", "ok1", "--s3fs-option", "passwd_file=/etc/shadow"], "s3fs option"),
    (["session", "create", "ok1", "--network", "container:x"], "network"),
    (["session", "create", "ok1", "--memory", "lots"], "memory"),
    (["session", "create", "ok1", "--network", "none", "--mount", "in-container"], "network 'none'"),
    (["session", "create", "ok1", "--mount", "sideways"], "mount"),
    # A ',' in the endpoint would smuggle options into s3fs's -o list.
    (["session", "create", "ok1", "--endpoint", "http://127.0.0.1,no_check_certificate:9000"], "S3 endpoint"),
    # sandbox-host chmods and removes below its state directory: never a system directory.
    (["session", "create", "ok1", "--state-dir", "/"], "state dir"),
    (["session", "create", "ok1", "--state-dir", "/tmp/x"], "state dir"),
]


@pytest.mark.parametrize("argv, field", CASES)
def test_bad_input_is_named_before_anything_starts(argv: list[str], field: str, tmp_path) -> None:
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock", SANDBOX_S3_ENDPOINT="http://127.0.0.1:9",
               AWS_ACCESS_KEY_ID="AK", AWS_SECRET_ACCESS_KEY="SK", SANDBOX_CONFIG=str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    out = subprocess.run([sys.executable, "-m", "provisioning.cli", *argv], env=env, capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert field in out.stderr
    assert "Docker" not in out.stderr and "unreachable" not in out.stderr
    assert "pw" not in out.stderr


def test_exec_requires_a_command() -> None:
    out = subprocess.run([sys.executable, "-m", "provisioning.cli", "session", "exec", "abc", "--"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "give the command" in out.stderr


@pytest.mark.parametrize("argv, timeout, command", [
    (["session", "exec", "abc", "--timeout", "5", "--", "cmd", "--timeout", "9"], 5.0, ["cmd", "--timeout", "9"]),
    (["session", "exec", "--timeout", "5", "abc", "--", "sh", "-c", "echo -- x"], 5.0, ["sh", "-c", "echo -- x"]),
    (["session", "exec", "abc", "--", "--", "-x"], 60.0, ["--", "-x"]),
    (["--backend", "swarm", "session", "exec", "abc", "--stdin", "--", "python3"], 60.0, ["python3"]),
    (["session", "exec", "abc", "true"], 60.0, ["true"]),
])
def test_exec_options_anywhere_before_the_command(argv: list[str], timeout: float, command: list[str]) -> None:
    """Options after the session id are options; everything after the first -- is the command, untouched."""
    from provisioning.cli import parse

    args = parse(argv)
    assert (args.session_id, args.timeout, args.command) == ("abc", timeout, command)


def test_double_dash_elsewhere_means_what_argparse_says() -> None:
    from provisioning.cli import parse

    assert parse(["session", "stop", "--", "abc"]).session_id == "abc"


ODD_NAME = "a\n\x1b]0;pwned\x07\x1b[2Jstopped cleanly"


def test_printable_escapes_what_a_terminal_acts_on() -> None:
    from provisioning.escape import printable

    assert printable(ODD_NAME) == "a\\n\\x1b]0;pwned\\x07\\x1b[2Jstopped cleanly"
    assert printable("back\\slash \u202eevil \u2028 caf\u00e9") == "back\\\\slash \\u202eevil \\u2028 caf\u00e9"
    # A message that already holds an escaped name keeps it as it is; raw control characters go.
    message = f"kept {printable(ODD_NAME)}\r\x1b[1A"
    assert printable(message, quote_backslashes=False) == f"kept {printable(ODD_NAME)}\\r\\x1b[1A"


def test_an_error_naming_a_hostile_file_reaches_the_terminal_escaped(tmp_path) -> None:
    """The CLI's one error line carries a file name with a newline and terminal escapes: it stays
    one line, with no escape character, the name shown escaped."""
    # The in-container mount: no volume service to agree with (the fast tier reaches no service).
    env = dict(os.environ, SANDBOX_S3_ENDPOINT="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="AK",
               AWS_SECRET_ACCESS_KEY="SK", SANDBOX_CONFIG=str(tmp_path / "none.toml"), SANDBOX_MOUNT="in-container")
    (tmp_path / "none.toml").write_text("")
    out = subprocess.run([sys.executable, "-m", "provisioning.cli", "session", "upload", "abc1", ODD_NAME],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    assert "\x1b" not in out.stderr and "\x07" not in out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("sandbox-host: error: upload: "), out.stderr
    assert "a\\n\\x1b]0;pwned\\x07\\x1b[2Jstopped cleanly is not a readable file" in out.stderr


def test_a_bugs_traceback_reaches_the_terminal_escaped(monkeypatch, capsys) -> None:
    """An error the runtime does not know (a bug) is printed with its traceback, escaped too."""
    from provisioning import cli

    def broken(_args: object) -> int:
        raise RuntimeError("a\n\x1b]0;pwned\x07\x1b[2Jname")

    monkeypatch.setattr(cli, "cmd_session_list", broken)
    assert cli.main(["session", "list"]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert "RuntimeError: a\\n\\x1b]0;pwned\\x07\\x1b[2Jname" in err and "Traceback" in err


def test_s3_serve_without_the_server_extra_names_the_fix(tmp_path) -> None:
    """The dev endpoint is an opt-in part: without moto, `s3 serve` says how to install it (one
    line, no traceback) and writes nothing."""
    blocked = ("import sys; sys.modules['moto'] = None; from provisioning.cli import main; "
               "sys.exit(main(sys.argv[1:]))")
    config = tmp_path / "s3.toml"
    out = subprocess.run([sys.executable, "-c", blocked, "s3", "serve", "--port", "0", "--write-config", str(config)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "pip install 'sandbox-host[server]'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not config.exists()
