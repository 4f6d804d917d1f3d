"""The importer on a real n8n main + worker: created, then unchanged, then one
workflow updated in place; never a duplicate; webhooks live after each run."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from harness.workflows_stack import Stack, http, missing_images
from restobot.commands import workflow_import
from restobot.release_archive import REMOTE_GLOBS, source_files
from restobot.remote import workflows
from restobot.settings import REPO_ROOT

pytestmark = pytest.mark.integration
N_WORKFLOWS = len(list(workflows.WORKFLOWS_DIR.glob("*.json")))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    missing = missing_images()
    if missing:
        pytest.skip(f"local images not built ({', '.join(missing)}): run python -m harness.images build")
    running = Stack()
    try:
        yield running.start(tmp_path_factory.mktemp("wfimport"))
    finally:
        running.close()


def n8n_rows(stack: Stack) -> list[tuple]:
    return stack.query('select id, name, "activeVersionId" is not null from workflow_entity order by id')


def verify(stack: Stack) -> tuple[int, str]:
    answer = http("GET", f"{stack.gateway_url}/v1/inbound/whatsapp?hub.mode=subscribe"
                         f"&hub.verify_token={stack.verify_token}&hub.challenge=ch42")
    return answer.status, answer.text


def test_import_creates_everything_and_webhooks_are_live(stack):
    plan = workflows.import_workflows(stack.target)
    assert len(plan.created) == N_WORKFLOWS and not plan.updated and not plan.unchanged
    rows = n8n_rows(stack)
    assert len(rows) == N_WORKFLOWS and all(published for _, _, published in rows)
    assert verify(stack) == (200, "ch42")


def test_second_import_changes_nothing(stack):
    before = stack.query("select id, \"versionId\" from workflow_entity order by id")
    plan = workflows.import_workflows(stack.target)
    assert len(plan.unchanged) == N_WORKFLOWS and not plan.changed
    assert stack.query("select id, \"versionId\" from workflow_entity order by id") == before
    rows = n8n_rows(stack)
    assert len(rows) == N_WORKFLOWS and all(published for _, _, published in rows)
    assert verify(stack) == (200, "ch42")


def test_changed_workflow_is_updated_in_place(stack, tmp_path):
    for source in workflows.WORKFLOWS_DIR.glob("*.json"):
        data = json.loads(source.read_text())
        if data["name"] == "W0_META_VERIFY_UNIFIED":
            for node in data["nodes"]:
                if node["name"] == "Answer Meta":
                    node["parameters"]["options"]["responseHeaders"]["entries"].append(
                        {"name": "X-Release", "value": "two"})
        (tmp_path / source.name).write_text(json.dumps(data))
    plan = workflows.import_workflows(stack.target, tmp_path)
    assert plan.updated == ("W0_META_VERIFY_UNIFIED",) and len(plan.unchanged) == N_WORKFLOWS - 1
    rows = n8n_rows(stack)
    assert len(rows) == N_WORKFLOWS and all(published for _, _, published in rows)
    answer = http("GET", f"{stack.gateway_url}/v1/inbound/whatsapp?hub.mode=subscribe"
                         f"&hub.verify_token={stack.verify_token}&hub.challenge=ch43")
    assert (answer.status, answer.text, answer.headers.get("x-release")) == (200, "ch43", "two")
    # roll back: the release's own files restore the previous workflow
    plan = workflows.import_workflows(stack.target)
    assert plan.updated == ("W0_META_VERIFY_UNIFIED",)
    assert "x-release" not in http("GET", f"{stack.gateway_url}/v1/inbound/whatsapp?hub.mode=subscribe"
                                          f"&hub.verify_token={stack.verify_token}&hub.challenge=c").headers
    assert len(n8n_rows(stack)) == N_WORKFLOWS


def test_release_copy_of_the_importer_runs_standalone_with_the_system_python(stack, tmp_path):
    # As on the VPS: `python3 RELEASE/restobot/remote/workflows.py ...` (commands.workflow_import),
    # the release's copy of restobot/remote/ beside it, stdlib only.
    release = tmp_path / "release"
    for path, content in source_files(REPO_ROOT, REMOTE_GLOBS).items():
        (release / path).parent.mkdir(parents=True, exist_ok=True)
        (release / path).write_bytes(content)
    shutil.copytree(workflows.WORKFLOWS_DIR, release / "workflows")
    importer = workflow_import(str(release))[1]
    assert importer == str(release / "restobot/remote/workflows.py")
    result = subprocess.run(
        ["/usr/bin/python3", "-I", importer, "status", "--exit-code",
         "--dir", str(release / "workflows"), "--container", f"n8n-main={stack.name('main')}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert len(summary["unchanged"]) == N_WORKFLOWS
    assert summary["created"] == summary["updated"] == summary["deactivated"] == []


def test_compose_target_runs_exec_and_restart_in_the_release_project():
    target = workflows.ComposeTarget("/srv/resto/current", ("/srv/resto/current/compose.yml",))
    base = ["docker", "compose", "--project-directory", "/srv/resto/current", "-f", "/srv/resto/current/compose.yml"]
    assert target.exec_argv("n8n-main", ["n8n", "--version"]) == [*base, "exec", "-T", "n8n-main", "n8n", "--version"]
    assert target.restart_argv("n8n-main") == [*base, "restart", "n8n-main"]
