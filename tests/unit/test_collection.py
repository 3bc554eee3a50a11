"""The Ansible collection's metadata and the roles' conventions, checked without running Ansible."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())


def load(path: Path):
    return yaml.safe_load(path.read_text())


def test_collection_and_wheel_share_one_version() -> None:
    galaxy = load(ROOT / "galaxy.yml")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert galaxy["version"] == project["version"]
    assert f"## {galaxy['version']}" in (ROOT / "CHANGELOG.md").read_text()


def test_pinned_collections_satisfy_the_declared_dependencies() -> None:
    from packaging.specifiers import SpecifierSet

    pins = {c["name"]: c["version"] for c in load(ROOT / "collections" / "requirements.yml")["collections"]}
    for name, spec in load(ROOT / "galaxy.yml")["dependencies"].items():
        assert name in pins, f"{name} is a dependency but not pinned in collections/requirements.yml"
        assert pins[name] in SpecifierSet(spec), (name, pins[name], spec)


def test_ansible_core_not_the_bundle() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name, requirements in extras.items():
        assert not any(re.match(r"ansible(\s|[<>=]|$)", r) for r in requirements), (name, requirements)


def test_playbooks_name_roles_by_fqcn() -> None:
    for playbook in (ROOT / "playbooks").glob("*.yml"):
        for play in load(playbook):
            for role in play.get("roles", []):
                name = role["role"] if isinstance(role, dict) else role
                assert name.startswith("sandbox_host.platform."), (playbook.name, name)


@pytest.mark.parametrize("role", ROLES)
def test_role_variables_are_prefixed_typed_and_documented(role: str) -> None:
    prefix = role if role.startswith("sandbox_") or role in ("object_store", "executor_image") else f"sandbox_{role}"
    defaults = load(ROOT / "roles" / role / "defaults" / "main.yml") or {}
    options = load(ROOT / "roles" / role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    readme = (ROOT / "roles" / role / "README.md").read_text()
    for name in defaults:
        assert name.startswith(prefix + "_"), f"{role}: {name} lacks the prefix {prefix}_"
        assert name in options, f"{role}: {name} has no entry in meta/argument_specs.yml"
        assert f"`{name}`" in readme, f"{role}: {name} is not in the README's table"
    for name in options:
        assert name in defaults or options[name].get("required"), f"{role}: {name} is specified but has no default"


def included_file(task: dict) -> str | None:
    include = task.get("ansible.builtin.include_tasks")
    return include.get("file") if isinstance(include, dict) else include


@pytest.mark.parametrize("role", ROLES)
def test_role_asserts_its_inputs_before_it_changes_anything(role: str) -> None:
    tasks = load(ROOT / "roles" / role / "tasks" / "main.yml")
    first = tasks[0]
    assert included_file(first) == "preflight.yml", f"{role}: the first task is not the preflight"
    preflight = load(ROOT / "roles" / role / "tasks" / "preflight.yml")
    assert any("ansible.builtin.assert" in task for task in preflight), f"{role}: preflight asserts nothing"
    changing = ("ansible.builtin.apt", "ansible.builtin.copy", "ansible.builtin.file", "ansible.builtin.template",
                "ansible.builtin.command", "ansible.builtin.shell", "ansible.builtin.lineinfile")
    for task in preflight:
        module = next(k for k in task if "." in k)
        if module in changing:
            assert task.get("changed_when") is False or task.get("check_mode") is False, (role, task["name"])


@pytest.mark.parametrize("role", ROLES)
def test_role_tasks_are_tagged_by_role_and_concern(role: str) -> None:
    """Every task of tasks/main.yml carries the role's name and <role>_<concern> tags (an include
    applies its tags to the tasks it includes), the preflight every concern's; the README lists them."""
    tasks = load(ROOT / "roles" / role / "tasks" / "main.yml")
    readme = (ROOT / "roles" / role / "README.md").read_text()
    concerns: set[str] = set()
    for task in tasks:
        tags = task.get("tags", [])
        if tags == ["always"]:
            continue
        assert role in tags, f"{role}: {task['name']} lacks the tag {role}"
        assert all(tag.startswith(role + "_") for tag in tags if tag != role), (role, task["name"], tags)
        concerns |= set(tags) - {role}
        include = task.get("ansible.builtin.include_tasks")
        if include is not None:
            assert isinstance(include, dict) and include["apply"]["tags"] == tags, (role, task["name"])
    assert concerns and set(tasks[0]["tags"]) == concerns | {role}, f"{role}: the preflight runs under every tag"
    for tag in concerns | {role}:
        assert f"`{tag}`" in readme, f"{role}: the tag {tag} is not in the README"


def test_every_role_has_a_molecule_scenario() -> None:
    """One way to test a role: its scenario in extensions/molecule (tests/ansible/test_molecule.py runs them)."""
    roles = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks/main.yml").is_file())
    scenarios = sorted(p.name for p in (ROOT / "extensions/molecule").iterdir() if (p / "molecule.yml").is_file())
    assert roles == scenarios
    for scenario in scenarios:
        assert list((ROOT / "extensions/molecule" / scenario / "tests").glob("test_*.py")), f"{scenario}: no testinfra"


def test_the_wheel_lists_every_runtime_package() -> None:
    """setuptools takes the packages listed in pyproject.toml only: a new subpackage left out
    would be missing from the wheel the roles install (and the volume service would not start)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(root).parts) for init in (root / "provisioning").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)


def test_only_the_devstore_imports_moto() -> None:
    """Production hosts install no moto (the ``server`` extra): an import of it anywhere else in
    the runtime would break them."""
    import ast

    root = Path(__file__).resolve().parents[2] / "provisioning"
    found = []
    for source in root.rglob("*.py"):
        if source.relative_to(root).parts[0] == "devstore":
            continue
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{source.relative_to(root)}:{node.lineno}" for n in names if n.split(".")[0] == "moto"]
    assert not found, found
