"""ansible-lint (production profile) and yamllint over playbooks/ and roles/."""

import subprocess

from .conftest import BIN, ROOT


def test_yamllint_clean() -> None:
    out = subprocess.run([str(BIN / "yamllint"), "--strict", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_ansible_lint_production_profile() -> None:
    out = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Profile 'production' was required, and it passed" in out.stdout + out.stderr
