"""The pipelines' deploy job, run as its hosted runner runs it: an ordinary user without sudo, a clean
clone, the CI secrets in the environment, Python and SSH only. Its target is the local VPS instead of
production: the clone's inventory/production.py points at the deployed stack; every step of the
GitHub job (and the GitLab job's script) runs as written.
"""

from __future__ import annotations

import copy
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.deploys import write_inventory
from restobot.settings import REPO_ROOT, secrets_file

pytestmark = pytest.mark.e2e

OPERATOR = "restobot-ci"
# What the runner's network setup gives every process here (the machine's CA bundle for pip).
RUNNER_ENV_PREFIXES = ("PIP_", "SSL_CERT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


def github_deploy_steps(job: str) -> list[tuple[str, dict]]:
    """The `run` steps of a GitHub job, each with the names of its env."""
    definition = yaml.safe_load((REPO_ROOT / ".github/workflows/ci.yml").read_text())["jobs"][job]
    return [(step["run"], step.get("env", {})) for step in definition["steps"] if "run" in step]


def gitlab_deploy_script(job: str) -> list[str]:
    return yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())[job]["script"]


def ensure_operator() -> pwd.struct_passwd:
    """An ordinary user with a home and no sudo (created once on this machine)."""
    try:
        return pwd.getpwnam(OPERATOR)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", OPERATOR], check=True)
        return pwd.getpwnam(OPERATOR)


def as_operator(user: pwd.struct_passwd, command: str, cwd: Path, env: dict[str, str],
                timeout: float = 1200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                           "bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def fresh_clone(user: pwd.struct_passwd, name: str) -> Path:
    """A clone of this repository's HEAD in the operator's home, owned by the operator."""
    target = Path(user.pw_dir) / name
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(target)], check=True)
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(target)], check=True)
    return target


def target_the_local_vps(stack, clone: Path) -> None:
    """inventory/production.py of the clone: the deployed stack, pinned and keyed only by the CI secrets."""
    settings = copy.deepcopy(stack.settings)
    settings["stage"] = "production"
    settings["ssh"] = {"host": stack.endpoint.host, "port": stack.endpoint.ssh_port, "user": stack.endpoint.user}
    settings.pop("checks", None)
    write_inventory(clone / "inventory" / "production.py", settings, group="production", name="e2e-vps")


def job_environment(stack, user: pwd.struct_passwd, step_env: dict) -> dict[str, str]:
    secrets_by_name = {
        "SSH_PRIVATE_KEY": Path(stack.endpoint.key_path).read_text(),
        "SSH_KNOWN_HOSTS": f"[{stack.endpoint.host}]:{stack.endpoint.ssh_port} {stack.settings['ssh']['host_key']}",
        "SECRETS_ENV": secrets_file("local").read_text(),
    }
    runner = {name: value for name, value in os.environ.items() if name.startswith(RUNNER_ENV_PREFIXES)}
    return {
        **runner,
        "PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": user.pw_dir, "USER": OPERATOR, "LOGNAME": OPERATOR,
        "CI": "true", **{name: secrets_by_name[name] for name in step_env},
    }


@pytest.fixture(scope="module")
def operator() -> pwd.struct_passwd:
    user = ensure_operator()
    sudo = subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                           "sh", "-c", "command -v sudo >/dev/null && sudo -n true"], capture_output=True)
    assert sudo.returncode != 0, f"{OPERATOR} can use sudo: the test must run the job without root"
    return user


def test_github_deploy_job_deploys_as_an_ordinary_user(deployed_stack, operator):
    clone = fresh_clone(operator, "github-deploy")
    target_the_local_vps(deployed_stack, clone)
    for command, env in github_deploy_steps("deploy-production"):
        run = as_operator(operator, command, clone, job_environment(deployed_stack, operator, env))
        assert run.returncode == 0, (f"step `{command}` failed as {OPERATOR} ({run.returncode})\n"
                                     f"{run.stderr[-4000:]}\n{run.stdout[-3000:]}")
    audit = deployed_stack.ssh("tail", "-n", "2", "/opt/resto/audit.log").stdout
    assert OPERATOR in audit and "success" in audit, audit
    assert not [path for path in clone.rglob("*") if path.lstat().st_uid != operator.pw_uid][:5], (
        "the job left files owned by another user in its clone")


def test_gitlab_deploy_job_script_matches_the_github_steps():
    """Both pipelines run the same project script, so the GitHub run above covers GitLab's job too."""
    assert gitlab_deploy_script("deploy-production") == [cmd for cmd, _ in github_deploy_steps("deploy-production")]
