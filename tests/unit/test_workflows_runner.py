"""The importer's executor: a command that hangs becomes a clear error, not a hang."""

import pytest

from restobot.remote.workflows import ComposeTarget, WorkflowError, run_local


def test_a_command_outliving_its_timeout_is_a_workflow_error():
    with pytest.raises(WorkflowError, match=r"command still running after 0 s: sleep 5"):
        run_local(["sleep", "5"], timeout=0.2)


def test_compose_target_passes_the_timeout_to_its_runner():
    seen = []
    target = ComposeTarget("/opt/resto/releases/v1", ("compose.yml",),
                           runner=lambda argv, stdin, timeout: seen.append(timeout) or run_local(["true"]))
    target.exec("n8n-main", ["true"], timeout=7)
    assert seen == [7]
