"""The go-live checklist against the deployed stack: all green (or manual), then each item broken on purpose fails.

Every breakage is undone by a finalizer, even when the test fails, so later
e2e modules still see a healthy stack.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.deploys import checklist_inventory
from harness.poll import poll
from restobot import golive
from restobot.commands import compose
from restobot.settings import REPO_ROOT

pytestmark = pytest.mark.e2e

CURRENT = "/opt/resto/current"


@pytest.fixture(scope="module")
def inventory(deployed_stack) -> Path:
    return checklist_inventory(deployed_stack, "checks")


def run_checklist(inventory: Path, select: str | None = None, *extra: str) -> tuple[int, list[golive.Row], str]:
    junit = inventory.with_suffix(f".{int(time.time() * 1000)}.xml")
    argv = [sys.executable, "-m", "restobot.golive", "--inventory", str(inventory), "--junit", str(junit)]
    if select:
        argv += ["-k", select]
    proc = subprocess.run([*argv, *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    rows = golive.rows_from_junit(junit) if junit.exists() else []
    return proc.returncode, rows, proc.stdout + proc.stderr


def outcome(rows: list[golive.Row], fragment: str) -> list[golive.Row]:
    found = [row for row in rows if fragment in row.item]
    assert found, f"no item matches {fragment!r} in {[row.item for row in rows]}"
    return found


def test_every_item_passes_or_is_manual_on_a_good_deploy(inventory):
    code, rows, output = run_checklist(inventory)
    bad = [row for row in rows if row.outcome not in ("pass", "manual")]
    assert not bad, "items not passing on a good deploy:\n" + "\n".join(
        f"  {row.item}: {row.outcome} {row.reason}" for row in bad) + f"\n{output[-3000:]}"
    assert code == 0
    assert any(row.outcome == "manual" for row in rows)  # the Meta dashboard: never a pass
    assert "NOT passes" in output


# --- breakages: (name, how to break, how to restore, -k selection, the item that must fail) -----------


def _compose_up(stack, *services: str) -> None:
    release = stack.ssh("readlink", "-f", CURRENT).stdout.strip()
    stack.ssh(*compose(release, "up", "--detach", "--wait", "--wait-timeout", "240", *services), timeout=300)


def _set_n8n_env(stack, name: str, value: str) -> None:
    """Change one variable of the current release's n8n env file and recreate n8n with it."""
    stack.ssh("sed", "-i", f"s/^{name}=.*/{name}='{value}'/", f"{CURRENT}/env/n8n.env")
    _compose_up(stack, "n8n-main", "n8n-worker")


def _set_signature_mode(stack, mode: str) -> None:
    _set_n8n_env(stack, "META_SIGNATURE_REQUIRED", mode)


def _redis_cli(stack, *words: str) -> None:
    """redis-cli in the redis container, authenticated with the deployed password when it asks for one."""
    stack.ssh("docker", "exec", "resto-redis-1", "sh", "-c", 'REDISCLI_AUTH="$REDIS_PASSWORD" exec redis-cli "$@"',
              "redis-cli", *words)


def _mounted(stack, container: str, destination: str, name: str) -> str:
    """The host file ``name`` in what ``container`` mounts at ``destination``: the copy under configs/ it
    reads (the release directory's own file is not what a container sees)."""
    template = '{{range .Mounts}}{{if eq .Destination "%s"}}{{.Source}}{{end}}{{end}}' % destination
    source = stack.ssh("docker", "inspect", "--format", template, container).stdout.strip()
    assert source, f"{container} mounts nothing at {destination}"
    return f"{source}/{name}"


def _alertmanager_yml(stack) -> str:
    return _mounted(stack, "resto-alertmanager-1", "/etc/alertmanager", "alertmanager.yml")


def _traefik_dynamic_yml(stack) -> str:
    return _mounted(stack, "resto-traefik-1", "/etc/traefik/dynamic", "dynamic.yml")


def _restart_n8n_main(stack) -> None:
    stack.ssh("docker", "restart", "resto-n8n-main-1", timeout=180)
    _compose_up(stack, "n8n-main")


def _console_from_outside(stack) -> str:
    """The status the console answers a client outside console.ip_allowlist, probed as the checklist
    item does (the VPS connects to its own address with that address as source)."""
    addresses = golive.parse_ip_addr(stack.ssh("ip", "-o", "-4", "addr", "show").stdout)
    outside = golive.addresses_outside(stack.settings["console"]["ip_allowlist"], addresses)
    assert outside, f"every address of the VPS ({', '.join(addresses)}) is in the console allowlist"
    name = f"console.{stack.settings['domains']['domain']}"
    return stack.ssh("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                     "--interface", outside[0], "--connect-to", f"{name}:443:{outside[0]}:443", f"https://{name}/",
                     check=False).stdout.strip()


def _console_answers_outside(stack, refused: bool) -> None:
    """Wait until Traefik has reloaded the dynamic file: the console refuses (403) or lets in a client outside."""
    poll(lambda: _console_from_outside(stack), until=lambda status: (status == "403") == refused, timeout=60,
         what=f"the console {'refusing' if refused else 'answering'} a client outside the allowlist")


N8N_METRICS_NETWORK = "resto_n8n-metrics"


def _n8n_target(stack) -> str:
    """The health Prometheus gives n8n-main's /metrics now."""
    answer = stack.ssh("docker", "exec", "resto-prometheus-1", "wget", "-q", "-O", "-",
                       "http://127.0.0.1:9090/api/v1/targets?state=active").stdout
    return next((health for name, health in golive.scrape_targets(answer).items() if name.startswith("n8n ")), "")


def _n8n_metrics_cut(stack, cut: bool) -> None:
    """Prometheus cut from (or joined back to) the network it scrapes n8n over; waited for until a scrape shows it."""
    stack.ssh("docker", "network", "disconnect" if cut else "connect", N8N_METRICS_NETWORK, "resto-prometheus-1",
              check=not cut)
    poll(lambda: _n8n_target(stack), until=lambda health: health == ("down" if cut else "up"), timeout=120,
         interval=2, what=f"n8n's /metrics {'down' if cut else 'up'} in Prometheus")


BREAKAGES = {
    "signature-warn": (
        lambda s: _set_signature_mode(s, "warn"),
        lambda s: _set_signature_mode(s, "enforce"),
        "signature", ["signature mode is enforce", "bad signature is refused and recorded"],
    ),
    "container-stopped": (
        lambda s: s.ssh("docker", "stop", "resto-n8n-worker-1"),
        lambda s: _compose_up(s, "n8n-worker"),
        "service_is_running", ["service is running and healthy [e2e-vps-n8n-worker]"],
    ),
    "port-published": (
        lambda s: s.ssh("docker", "run", "--detach", "--name", "resto-checks-leak", "--publish", "6379:6379",
                        s.settings["images"]["redis"]),
        lambda s: s.ssh("docker", "rm", "--force", "resto-checks-leak", check=False),
        "port or publishes or listen", ["internal port is closed from outside [e2e-vps-redis]",
                                        "only traefik publishes ports", "only public ports listen"],
    ),
    "firewall-port-allowed": (
        lambda s: s.ssh("ufw", "allow", "8081/tcp"),
        lambda s: s.ssh("ufw", "delete", "allow", "8081/tcp", check=False),
        "firewall", ["firewall allows only the configured ports"],
    ),
    "backup-stale": (
        lambda s: s.ssh("sh", "-c", "f=/opt/resto/backups/scheduled/last-success; "
                        "cp -p $f $f.checks-saved && touch -d '3 days ago' $f"),
        lambda s: s.ssh("sh", "-c", "f=/opt/resto/backups/scheduled/last-success; "
                        "[ -e $f.checks-saved ] && touch -r $f.checks-saved $f && rm -f $f.checks-saved", check=False),
        "newer_than", ["latest backup is newer than its period"],
    ),
    "env-file-644": (
        lambda s: s.ssh("chmod", "644", f"{CURRENT}/env/n8n.env"),
        lambda s: s.ssh("chmod", "600", f"{CURRENT}/env/n8n.env"),
        "env_file or world_readable", ["env file is private to the deploy user [e2e-vps-n8n.env]",
                                       "no secret in world readable files"],
    ),
    "legacy-token-accepted": (
        lambda s: _set_n8n_env(s, "LEGACY_SHARED_TOKEN", "legacychecks" + "x1" * 20),
        lambda s: _set_n8n_env(s, "LEGACY_SHARED_TOKEN", ""),
        "legacy", ["no legacy shared token is accepted"],
    ),
    "redis-password-cleared": (
        lambda s: _redis_cli(s, "CONFIG", "SET", "requirepass", ""),
        lambda s: s.ssh("docker", "exec", "resto-redis-1", "sh", "-c",
                        'redis-cli CONFIG SET requirepass "$REDIS_PASSWORD"', check=False),
        "redis_refuses", ["redis refuses a client without the password"],
    ),
    "owner-reset": (
        lambda s: s.ssh("docker", "exec", "resto-n8n-main-1", "n8n", "user-management:reset", timeout=180),
        _restart_n8n_main,
        "owner", ["n8n owner is set up by the deploy", "owner setup is closed inside n8n"],
    ),
    "console-allowlist-opened": (
        lambda s: (s.ssh("sh", "-c", f"f={_traefik_dynamic_yml(s)}; cp -p $f /tmp/checks-dynamic.yml && "
                         "sed -i 's|sourceRange:|sourceRange:\\n          - \"0.0.0.0/0\"|' $f"),
                   _console_answers_outside(s, refused=False)),
        lambda s: (s.ssh("sh", "-c", f"[ -e /tmp/checks-dynamic.yml ] && cat /tmp/checks-dynamic.yml > "
                         f"{_traefik_dynamic_yml(s)} && rm /tmp/checks-dynamic.yml", check=False),
                   _console_answers_outside(s, refused=True)),
        "allowlist", ["console refuses an address outside the allowlist"],
    ),
    "prometheus-stopped": (
        lambda s: s.ssh("docker", "stop", "resto-prometheus-1"),
        lambda s: _compose_up(s, "prometheus"),
        "alert_rule_is_loaded", ["runbook alert rule is loaded in prometheus"],
    ),
    "n8n-metrics-unreachable": (
        lambda s: _n8n_metrics_cut(s, cut=True),
        lambda s: _n8n_metrics_cut(s, cut=False),
        "scrape_target", ["every scrape target is up"],
    ),
    "alerts-routed-elsewhere": (
        lambda s: s.ssh("sh", "-c", f"f={_alertmanager_yml(s)}; cp -p $f $f.checks-saved && "
                        "sed -i 's#/alerts#/elsewhere#' $f"),
        lambda s: s.ssh("sh", "-c", f"f={_alertmanager_yml(s)}; [ -e $f.checks-saved ] && mv $f.checks-saved $f",
                        check=False),
        "routed_to_the_alert_destination", ["runbook alert is routed to the alert destination"],
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_item_fails(deployed_stack, inventory, breakage, request):
    breaks, restores, select, must_fail = BREAKAGES[breakage]
    request.addfinalizer(lambda: restores(deployed_stack))
    breaks(deployed_stack)
    code, rows, output = run_checklist(inventory, select)
    assert code == 1, f"the checklist exited {code} with {breakage}\n{output[-3000:]}"
    for fragment in must_fail:
        for row in outcome(rows, fragment):
            assert row.outcome == "FAIL", f"{row.item} is {row.outcome} ({row.reason}) with {breakage}"


def test_certificate_nearer_than_the_minimum_fails(deployed_stack):
    """Pebble's certificates last 5 years: a minimum of 2000 days makes them "near expiry"."""
    near = checklist_inventory(deployed_stack, "checks-near-expiry", monitoring={"certificate_min_days": 2000})
    code, rows, output = run_checklist(near, "expiring")
    assert code == 1, output[-2000:]
    for row in outcome(rows, "certificate is not expiring soon"):
        assert row.outcome == "FAIL" and "days" in row.reason, row


def test_checklist_selection_leaves_the_deselected_items_out(inventory):
    """-k selects items as pytest does (its wall time is bench/bench_checks.py's figure, not a test's)."""
    _, rows, output = run_checklist(inventory, "not signed_message")
    assert rows and not [row.item for row in rows if "signed message" in row.item], output[-2000:]


def test_checklist_without_inventory_is_refused():
    proc = subprocess.run([sys.executable, "-m", "restobot.golive"], cwd=REPO_ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--inventory" in proc.stderr


def _quote(argv):  # for messages
    return shlex.join(argv)
