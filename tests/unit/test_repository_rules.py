"""Rules of the house that a refactor could silently break: the product never imports the
harness, the wheel ships the product only, and on a set-up machine a skipped test fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from restobot.settings import REPO_ROOT

RUFF = Path(sys.executable).with_name("ruff")


def ruff_on(source: str, filename: str) -> subprocess.CompletedProcess[str]:
    """ruff with the repository's config and the rule scripts/lint selects, on ``source`` as ``filename``."""
    return subprocess.run(
        [str(RUFF), "check", "--select", "TID251", "--stdin-filename", filename, "-"],
        input=source, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("line", ["from harness import vps", "import harness.stage", "from harness.poll import poll"])
def test_the_product_may_not_import_the_harness(line):
    result = ruff_on(line + "\n", "restobot/operations/probe.py")
    assert result.returncode == 1
    assert "TID251" in result.stdout and "harness" in result.stdout


@pytest.mark.parametrize("filename", ["harness/probe.py", "tests/unit/probe.py", "bench/probe.py", "inventory/probe.py"])
def test_everything_outside_the_product_may_import_the_harness(filename):
    assert ruff_on("from harness import vps\n", filename).returncode == 0


def test_the_product_imports_no_harness_today():
    result = subprocess.run([str(RUFF), "check", "--select", "TID251", "restobot"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


def shipped_packages() -> set[str]:
    """The packages setuptools puts in the wheel, found with pyproject.toml's own settings."""
    from setuptools import find_packages

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    return set(find_packages(where=REPO_ROOT, include=config["include"], exclude=config.get("exclude", ())))


def test_the_wheel_does_not_ship_the_harness():
    shipped = shipped_packages()
    assert "restobot" in shipped
    assert not {name for name in shipped if name.split(".")[0] != "restobot"}


def test_the_wheel_ships_every_package_of_the_product():
    packages = {path.parent.relative_to(REPO_ROOT).as_posix().replace("/", ".")
                for path in (REPO_ROOT / "restobot").rglob("*.py") if "__pycache__" not in path.parts}
    assert packages <= shipped_packages()


SKIPPING_MODULE = """
import pytest

def test_needs_docker():
    pytest.skip("the docker daemon does not answer")

@pytest.mark.xfail(reason="known: this sandbox lacks CAP_SYS_RESOURCE")
def test_known_gap():
    assert False
"""


def run_with_the_repository_conftest(tmp_path: Path, no_skip: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text((REPO_ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_skipping.py").write_text(SKIPPING_MODULE)
    env = {key: value for key, value in os.environ.items() if key != "RESTOBOT_NO_SKIP"}
    if no_skip is not None:
        env["RESTOBOT_NO_SKIP"] = no_skip
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "--rootdir", str(tmp_path),
         str(tmp_path)],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120,
    )


def test_a_skip_fails_on_a_machine_scripts_test_set_up(tmp_path):
    result = run_with_the_repository_conftest(tmp_path, "1")
    assert result.returncode == 1
    assert "1 failed, 1 xfailed" in result.stdout
    assert "skipped under RESTOBOT_NO_SKIP=1 (scripts/test): Skipped: the docker daemon does not answer" in result.stdout


def test_a_skip_stays_a_skip_elsewhere(tmp_path):
    result = run_with_the_repository_conftest(tmp_path, None)
    assert result.returncode == 0
    assert "1 skipped, 1 xfailed" in result.stdout


def test_scripts_test_sets_the_no_skip_rule_and_runs_the_lint():
    script = (REPO_ROOT / "scripts" / "test").read_text()
    assert "export RESTOBOT_NO_SKIP=1" in script
    assert script.count("scripts/lint") >= 2  # the unit tier and `all`


def readme_layout() -> dict[str, str]:
    """README's layout table: each backticked path of the first column -> the row's description."""
    text = (REPO_ROOT / "README.md").read_text()
    table = text[text.index("## Layout"):].split("\n\n## ", 1)[0]
    rows = {}
    for line in table.splitlines()[3:]:
        if line.startswith("| `"):
            first, what = line.split(" | ", 2)[:2]
            for path in re.findall(r"`([^`]+)`", first):
                rows[path] = what
    return rows


def tracked_top_level() -> set[str]:
    names = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    return {name.split("/")[0] + ("/" if "/" in name else "") for name in names.splitlines()}


def test_every_path_of_the_readme_layout_exists():
    assert [path for path in readme_layout() if not (REPO_ROOT / path).exists()] == []


def test_the_readme_layout_names_every_top_level_entry():
    named = {path.split("/")[0] + ("/" if "/" in path else "") for path in readme_layout()}
    untabled = {"README.md", "pyproject.toml"}
    missing = {entry for entry in tracked_top_level() - named - untabled if not entry.startswith(".")}
    assert missing == set()


def test_the_readme_layout_names_every_module_of_the_product():
    restobot_row = readme_layout()["restobot/"]
    modules = {path.stem for path in (REPO_ROOT / "restobot").glob("*.py") if path.stem != "__init__"}
    modules |= {f"{path.name}/" for path in (REPO_ROOT / "restobot").iterdir()
                if path.is_dir() and (path / "__init__.py").exists() and path.name != "remote"}
    assert {module for module in modules if f"`{module}`" not in restobot_row} == set()
