"""The importer's executor: a command that hangs becomes a clear error, not a hang; n8n's CLI
runs in a one-off container and is run again when a signal killed it."""

import subprocess

import pytest

from restobot.remote.workflows import CLI_ATTEMPTS, ComposeTarget, WorkflowError, killed_by_signal, run_local


def test_a_command_outliving_its_timeout_is_a_workflow_error():
    with pytest.raises(WorkflowError, match=r"command still running after 0 s: sleep 5"):
        run_local(["sleep", "5"], timeout=0.2)


def test_compose_target_passes_the_timeout_to_its_runner():
    seen = []
    target = ComposeTarget("/opt/resto/releases/v1", ("compose.yml",),
                           runner=lambda argv, stdin, timeout: seen.append(timeout) or run_local(["true"]))
    target.exec("n8n-main", ["true"], timeout=7)
    assert seen == [7]


def scripted_runner(returncodes: list[int], seen: list[list[str]]):
    """A runner answering each call with the next return code (what n8n's CLI exited with)."""
    def runner(argv, stdin, timeout):
        seen.append(list(argv))
        code = returncodes.pop(0)
        return subprocess.CompletedProcess(argv, code, stdout=b"out" if code == 0 else b"", stderr=b"Segmentation fault")
    return runner


def test_the_cli_runs_in_a_one_off_container_of_the_service_not_in_the_serving_one():
    target = ComposeTarget("/opt/resto/releases/v1", ("/opt/resto/releases/v1/compose.yml",))
    base = ["docker", "compose", "--project-directory", "/opt/resto/releases/v1", "-f", "/opt/resto/releases/v1/compose.yml"]
    assert target.cli_argv("n8n-main", ["sh", "-c", "n8n export:workflow --all"]) == [
        *base, "run", "--rm", "--no-deps", "-T", "--entrypoint", "sh", "n8n-main", "-c", "n8n export:workflow --all"]
    assert target.exec_argv("n8n-main", ["node", "-e", "1"]) == [*base, "exec", "-T", "n8n-main", "node", "-e", "1"]


def test_a_cli_killed_by_a_signal_is_run_again_and_says_so():
    seen, said = [], []
    target = ComposeTarget("/r", runner=scripted_runner([139, 137, 0], seen), say=said.append)
    assert target.cli("n8n-main", ["n8n", "import:workflow"]) == "out"
    assert len(seen) == 3 and seen[0] == seen[2]
    assert said == ["n8n's CLI was killed by a signal (exit 139); running it again (2/3)...",
                    "n8n's CLI was killed by a signal (exit 137); running it again (3/3)..."]


def test_a_cli_killed_every_time_fails_with_its_last_exit_code_after_three_attempts():
    seen = []
    target = ComposeTarget("/r", runner=scripted_runner([139, 139, 139], seen))
    with pytest.raises(WorkflowError, match=r"command failed \(139\).*\n.*Segmentation fault"):
        target.cli("n8n-main", ["n8n", "import:workflow"])
    assert len(seen) == CLI_ATTEMPTS == 3


def test_a_cli_that_fails_on_its_own_is_not_run_again():
    seen = []
    target = ComposeTarget("/r", runner=scripted_runner([1], seen))
    with pytest.raises(WorkflowError, match=r"command failed \(1\)"):
        target.cli("n8n-main", ["n8n", "import:workflow"])
    assert len(seen) == 1


def test_exec_is_never_retried():
    seen = []
    target = ComposeTarget("/r", runner=scripted_runner([139], seen))
    with pytest.raises(WorkflowError, match=r"command failed \(139\)"):
        target.exec("n8n-main", ["node", "-e", "1"])
    assert len(seen) == 1


@pytest.mark.parametrize(("code", "killed"), [(0, False), (1, False), (128, False), (130, True), (139, True), (-9, True)])
def test_killed_by_signal(code, killed):
    assert killed_by_signal(code) is killed
