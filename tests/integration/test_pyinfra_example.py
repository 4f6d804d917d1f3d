"""examples/pyinfra_deploy.py: restobot's operations in someone else's pyinfra deploy, run for real on @local."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from restobot.operations.provision import default_compose_binary
from restobot.settings import REPO_ROOT

pytestmark = pytest.mark.integration
PYINFRA = Path(sys.executable).with_name("pyinfra")


def run_example(plugin_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PYINFRA), "@local", "examples/pyinfra_deploy.py", "--data", "firewall=off",
         "--data", f"compose_dir={plugin_dir}", *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )


def test_example_installs_the_pinned_plugin_then_changes_nothing(tmp_path):
    first = run_example(tmp_path, "-y")
    assert first.returncode == 0, first.stderr[-2000:] + first.stdout[-2000:]
    installed = tmp_path / "docker-compose"
    assert hashlib.sha256(installed.read_bytes()).digest() == hashlib.sha256(
        default_compose_binary().read_bytes()).digest()
    second = run_example(tmp_path, "-y", "--json")
    assert second.returncode == 0, second.stderr[-2000:]
    totals = json.loads(second.stdout[second.stdout.index('{"plan"'):])["results"]["totals"]
    assert (totals["success"], totals["no_change"]) == (0, 1), second.stdout[-2000:]
