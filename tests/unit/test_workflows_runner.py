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


class ProbeTarget:
    """A target whose n8n main answers each round of probes with the next scripted result."""

    def __init__(self, rounds: list[dict[str, int]]):
        self.rounds = rounds

    def exec(self, service, argv, timeout):
        import json
        return json.dumps(self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]) + "\n"


def test_a_route_still_executing_counts_as_registered():
    from restobot.remote.workflows import PENDING, wait_until_live
    codes = {"GET v1/inbound/whatsapp": 200, "POST v1/inbound/whatsapp": PENDING}
    assert wait_until_live(ProbeTarget([codes]), timeout=5) == codes


def test_a_route_n8n_does_not_know_is_waited_for_then_named():
    from restobot.remote.workflows import PENDING, wait_until_live
    target = ProbeTarget([{"GET a": 404, "POST a": PENDING}, {"GET a": 200, "POST a": 200}])
    assert wait_until_live(target, timeout=10) == {"GET a": 200, "POST a": 200}
    with pytest.raises(WorkflowError, match=r"webhooks not live after 1 s: \{'GET a': 404\}"):
        wait_until_live(ProbeTarget([{"GET a": 404, "POST a": PENDING}]), timeout=1)


FAKE_N8N_MAIN = r"""
const http = require('http');
const mode = process.argv[1];
http.createServer((req, res) => {
  if (req.url === '/healthz/readiness') { res.statusCode = mode === 'ready' ? 200 : 503; res.end(); return; }
  if (mode === 'starting') { res.end('n8n is starting up. Please wait'); return; }  // n8n 2.x, migrating
  if (req.url.includes('answers')) { res.end('ok'); return; }
  if (req.url.includes('queued')) return;  // its execution waits behind others: no answer yet
  res.statusCode = 404; res.end();
}).listen(0, '127.0.0.1', function () { console.log(this.address().port); });
"""


@pytest.mark.parametrize("mode, expected", [
    ("ready", {"GET answers": 200, "POST queued": 102, "POST unknown": 404}),
    ("starting", {"GET answers": 0, "POST queued": 0, "POST unknown": 0}),
    ("stuck", {"GET answers": 0, "POST queued": 0, "POST unknown": 0}),
])
def test_the_probe_counts_routes_only_while_n8n_says_it_is_ready(monkeypatch, mode, expected):
    """The probe script itself, under node, against a stand-in of n8n main on a free port. Starting,
    n8n answers every path 200 "starting up": that is not a workflow's answer."""
    import json
    import shutil

    from restobot.remote import workflows
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is needed to run the importer's probe script (scripts/setup-host installs it)")
    server = subprocess.Popen([node, "-e", FAKE_N8N_MAIN, mode], stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        monkeypatch.setattr(workflows, "PENDING_AFTER_MS", 500)
        argv = workflows.probe_argv([("GET", "answers"), ("POST", "queued"), ("POST", "unknown")],
                                    base=f"http://127.0.0.1:{port}")
        out = subprocess.run([node, *argv[1:]], capture_output=True, text=True, timeout=20, check=True).stdout
    finally:
        server.kill()
    assert json.loads(out) == expected
