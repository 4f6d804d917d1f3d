"""restobot/remote/ holds the programs that run on the VPS: they import only the standard
library, psycopg and restobot.remote, and the release archive, their one route to the
host, ships every file of them and nothing else of restobot but what imports them."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from restobot.release_archive import build_release
from restobot.secrets import generate_secrets
from restobot.settings import REPO_ROOT
from tests.conftest import settings_for_stage

REMOTE = REPO_ROOT / "restobot" / "remote"
PACKAGE_INIT = "restobot/__init__.py"
# Run on the host as a lone file (python3 FILE, or copied to bin/): nothing of restobot at all.
LONE_FILES = ("restobot/remote/workflows.py", "restobot/remote/backup.py", "restobot/remote/container_states.py")
THIRD_PARTY = {"psycopg"}


def remote_modules() -> list[str]:
    return sorted(path.relative_to(REPO_ROOT).as_posix() for path in REMOTE.rglob("*.py")
                  if "__pycache__" not in path.parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, absolute (``from . import x`` inside restobot.remote: restobot.remote.x)."""
    package = path.relative_to(REPO_ROOT).with_suffix("").parts
    package = package if path.name == "__init__.py" else package[:-1]
    package = package[:-1] if package[-1:] == ("__init__",) else package
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] if node.level else ())
            module = ".".join(part for part in (base, node.module or "") if part)
            # `from restobot import remote` imports restobot.remote; `from x import name` imports x.
            found += [(node.lineno, f"{module}.{alias.name}" if module == "restobot" else module)
                      for alias in node.names]
    return found


def allowed(module: str) -> bool:
    top = module.split(".")[0]
    return (top in sys.stdlib_module_names or top in THIRD_PARTY
            or module == "restobot.remote" or module.startswith("restobot.remote."))


def test_there_are_remote_modules():
    assert {"restobot/remote/__init__.py", "restobot/remote/migrate/__main__.py", *LONE_FILES} <= set(
        remote_modules())


@pytest.mark.parametrize("module", remote_modules())
def test_a_remote_module_imports_only_the_standard_library_psycopg_and_restobot_remote(module):
    wrong = [f"{module}:{line}: import {name}" for line, name in imported_modules(REPO_ROOT / module)
             if not allowed(name)]
    assert not wrong, "restobot/remote/ runs on the VPS (standard library and psycopg only):\n" + "\n".join(wrong)


@pytest.mark.parametrize("module", LONE_FILES)
def test_a_program_run_as_a_lone_file_imports_nothing_of_restobot(module):
    wrong = [f"{module}:{line}: import {name}" for line, name in imported_modules(REPO_ROOT / module)
             if name.split(".")[0] == "restobot"]
    assert not wrong, "run on the host as a lone file, it cannot import its package:\n" + "\n".join(wrong)


def test_the_package_file_shipped_with_them_imports_nothing():
    assert imported_modules(REPO_ROOT / PACKAGE_INIT) == []


def test_the_checker_sees_what_is_not_allowed():
    assert allowed("json") and allowed("psycopg.conninfo") and allowed("restobot.remote.migrate.lexer")
    assert not allowed("restobot.settings") and not allowed("restobot") and not allowed("pydantic")
    assert not allowed("harness.poll") and not allowed("yaml")


@pytest.fixture(scope="module")
def archive_members() -> dict[str, bytes]:
    built = build_release(settings_for_stage("production", generate_secrets()), "v1.0.0")
    with tarfile.open(fileobj=io.BytesIO(built.archive)) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive.getmembers() if member.isfile()}


def test_the_release_ships_every_remote_file_byte_for_byte(archive_members):
    missing = [m for m in remote_modules() if archive_members.get(m) != (REPO_ROOT / m).read_bytes()]
    assert not missing, f"restobot/remote/ files the release does not ship as they are: {missing}"


def test_the_release_ships_nothing_else_of_restobot(archive_members):
    shipped = sorted(name for name in archive_members if name.startswith("restobot/"))
    assert shipped == sorted([PACKAGE_INIT, *remote_modules()])


def test_the_unpacked_release_runs_its_own_copy(archive_members, tmp_path):
    for name, content in archive_members.items():
        if name.startswith("restobot/"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(content)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import restobot.remote.migrate.runner as r; "
             "import restobot.remote.workflows, restobot.remote.backup; print(r.__file__)")
    imported = subprocess.run([sys.executable, "-I", "-c", probe, str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(tmp_path / "restobot/remote/migrate/runner.py")
    usage = subprocess.run([sys.executable, "-m", "restobot.remote.migrate", "--help"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0, usage.stderr
    assert usage.stdout.startswith("usage: python -m restobot.remote.migrate")
