"""The user's CI pipelines (GitHub and GitLab) parse and call project scripts only."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RUNBOOK_JOBS = {"lint", "unit-tests", "integration-tests", "docker-build", "security-scan", "deploy-staging", "deploy-production"}


def github() -> dict:
    return yaml.safe_load((REPO / ".github/workflows/ci.yml").read_text())


def gitlab() -> dict:
    return {name: job for name, job in yaml.safe_load((REPO / ".gitlab-ci.yml").read_text()).items() if name != "stages"}


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
