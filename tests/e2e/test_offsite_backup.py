"""The off-site backup, deployed: PostgreSQL on the VPS archives its WAL to another host, encrypted.

A stack of this module's own is deployed with ``offsite_backup`` configured. The off-site host is a second
container (SFTP only, harness/offsite.py's image) on a docker network of this module, which the VPS container
joins before the deploy, as a storage box reached over the internet; its ECDSA host key is read out of band and
pinned, its login key generated here. Messages sent through the stack reach the off-site repository within
``archive_timeout`` without a WAL switch of ours, and the repository's files hold no plain text of them.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from harness.deploys import changed_operations, public_request, sql
from harness.offsite import (
    REPOSITORY_PATH,
    OffsiteHost,
    attached_to,
    remove_offsite_host,
    start_offsite_host,
)
from harness.poll import poll
from restobot import meta_payloads
from restobot.commands import (
    DRILL_CONTAINER,
    POSTGRES_CONTAINER,
    HostLayout,
    pgbackrest,
)
from restobot.operations.backup import DRILL_CRON_FILE, OFFSITE_CRON_FILE, BackupPaths
from restobot.settings import REPO_ROOT, read_env_file, secrets_file
from tests.e2e.conftest import harness_must_deliver

pytestmark = pytest.mark.e2e

REPO_PATH = REPOSITORY_PATH
ARCHIVE_TIMEOUT = 10
# The WAL segment is switched after ARCHIVE_TIMEOUT, then pushed over SFTP: a generous margin.
ARCHIVE_MARGIN = 60
STANZA_OPERATION = "Ensure the off-site repository holds the database"
PATHS = BackupPaths(HostLayout())
METRICS = f"{HostLayout().textfile_dir}/restobot_containers.prom"


def docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args[:4])}... exited {result.returncode}:\n{result.stderr[-2000:]}")
    return result


@pytest.fixture(scope="module")
def offsite_host(tmp_path_factory) -> Iterator[tuple[OffsiteHost, dict]]:
    """The SFTP-only off-site host on a network of its own, and the ``offsite_backup`` settings that reach it."""
    network = f"resto-offsite-e2e-{secrets.token_hex(4)}"
    try:
        with harness_must_deliver("the off-site host did not start"):
            host = start_offsite_host(network, tmp_path_factory.mktemp("offsite-login"), ARCHIVE_TIMEOUT)
        yield host, host.settings
    finally:
        # The stack's teardown removed the VPS container by now (stack is torn down first: fixture order).
        remove_offsite_host(network)


@pytest.fixture(scope="module")
def stack(offsite_host, tmp_path_factory, local_secrets):
    """A stack of this module's own, its VPS joined to the off-site host's network, deployed with offsite_backup."""
    host, _ = offsite_host

    with harness_must_deliver("the stack with an off-site backup did not come up") as deploys:
        names = deploys.stack_names("offsite")
        deployed = deploys.bring_up_stack(names, tmp_path_factory.mktemp("offsite-stack"), release="e2e-offsite",
                                          prepare=attached_to(host))
    yield deployed
    deploys.tear_down_stack(names)


def offsite_files(host: OffsiteHost) -> list[str]:
    return docker("exec", host.container, "find", REPO_PATH, "-type", "f", "-size", "+0").stdout.split()


def send_message(stack, text: str, sender: str) -> int:
    """One signed WhatsApp text message through the public edge; the status Meta would see."""
    payload = meta_payloads.whatsapp_text(text, sender=sender,
                                          phone_number_id=stack.settings["meta"]["wa_phone_number_id"])
    body = meta_payloads.encode(payload)
    secret = read_env_file(secrets_file("local"))["META_APP_SECRET"]
    response, _ = public_request(stack, "POST", "/v1/inbound/whatsapp", body, {
        "Content-Type": "application/json", "X-Hub-Signature-256": meta_payloads.sign(body, secret)})
    return response.status


def in_postgres(stack, *argv: str) -> str:
    return stack.ssh("docker", "exec", POSTGRES_CONTAINER, *argv).stdout


@dataclass(frozen=True)
class Sent:
    marker: str
    segment: str


@pytest.fixture(scope="module")
def sent(stack) -> Sent:
    """Messages carrying a marker, answered 200 and stored; the WAL segment that holds them."""
    marker = f"OFFSITE-MARKER-{secrets.token_hex(8)}"
    run = secrets.randbelow(10_000)  # one sender each: no rate limit of one conversation in the way
    statuses = [send_message(stack, f"Une table pour ce soir ? {marker} {number}", f"3365{run:04d}{number:04d}")
                for number in range(3)]
    assert statuses == [200, 200, 200]
    poll(lambda: sql(stack, f"select count(*) from inbound_messages where payload::text like '%{marker}%'"),
         until=lambda count: count == "3", timeout=60, what="the three messages stored")
    segment = sql(stack, "select pg_walfile_name(pg_current_wal_lsn())")
    return Sent(marker, segment)


def test_the_first_deploy_creates_the_stanza_and_a_full_backup(stack, offsite_host):
    assert STANZA_OPERATION in stack.first_deploy.changed
    host, _ = offsite_host
    files = offsite_files(host)
    assert any("/backup/restobot/" in path for path in files), files


def test_postgres_archives_with_pgbackrest(stack):
    assert sql(stack, "show archive_mode") == "on"
    assert sql(stack, "show archive_command") == "pgbackrest --stanza=restobot archive-push %p"
    assert sql(stack, "show archive_timeout") == f"{ARCHIVE_TIMEOUT}s"


@pytest.mark.parametrize("path", ["/etc/pgbackrest/pgbackrest.conf", "/etc/pgbackrest/sftp_key"])
def test_the_configuration_and_the_key_are_the_postgres_users_only(stack, path):
    assert in_postgres(stack, "stat", "-c", "%a %U", path).strip() == "600 postgres"


@pytest.mark.parametrize("path", ["pgbackrest/pgbackrest.conf", "pgbackrest/sftp_key"])
def test_the_release_ships_them_readable_by_their_owner_only(stack, path):
    mode = stack.ssh("stat", "-c", "%a", f"/opt/resto/current/{path}").stdout.strip()
    assert mode == "600"


def test_the_passphrase_and_the_key_are_in_no_deploy_output(stack, offsite_host):
    passphrase = read_env_file(secrets_file("local"))["OFFSITE_BACKUP_PASSPHRASE"]
    key_body = open(offsite_host[1]["sftp"]["key_path"]).read().splitlines()[1]
    assert passphrase not in stack.first_deploy.output
    assert key_body not in stack.first_deploy.output


def archived_up_to(stack, segment: str) -> None:
    """Wait until PostgreSQL reports ``segment`` archived; archive_timeout alone must close it (no WAL switch here)."""
    poll(lambda: sql(stack, "select coalesce(last_archived_wal, '') from pg_stat_archiver"),
         until=lambda archived: archived >= segment, timeout=ARCHIVE_TIMEOUT + ARCHIVE_MARGIN,
         what=f"WAL segment {segment} (the messages) archived")


def test_messages_reach_the_offsite_host_within_the_archive_timeout(stack, sent):
    archived_up_to(stack, sent.segment)
    [stanza] = json.loads(stack.ssh(*pgbackrest("restobot", "--output=json", "info")).stdout)
    assert stanza["status"]["message"] == "ok", stanza
    assert max(archive["max"] for archive in stanza["archive"]) >= sent.segment, stanza


def test_the_offsite_host_holds_no_plain_text_of_the_messages(stack, offsite_host, sent):
    host, _ = offsite_host
    # The marker is in the VPS's own database files in plain text: the grep below could find it there.
    assert in_postgres(stack, "grep", "-rl", sent.marker, "/var/lib/postgresql/data/pg_wal")
    archived_up_to(stack, sent.segment)
    files = offsite_files(host)
    assert any("/archive/restobot/" in path for path in files), files
    found = docker("exec", host.container, "grep", "-rl", sent.marker, REPO_PATH, check=False)
    assert (found.returncode, found.stdout) == (1, "")


def test_resto_backup_offsite_info_shows_the_repository(stack, sent):
    archived_up_to(stack, sent.segment)
    proc = subprocess.run([sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), "local",
                           "backup", "offsite", "info", "--json", "--check"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["status"], info["cipher"], info["healthy"]) == ("ok", "aes-256-cbc", True)
    # The deploy's full backup, then the first nightly run's incremental (the full is not a week old).
    assert [backup["type"] for backup in info["backups"]] == ["full", "incr"]
    assert info["wal_max"] >= sent.segment


def test_a_second_deploy_changes_nothing(stack):
    run = stack.deploy(release="e2e-offsite")
    assert run.returncode == 0, run.output_tail()
    assert changed_operations(run) == [], run.output_tail()


def postgres_started_at(stack) -> str:
    return stack.ssh("docker", "inspect", "--format", "{{.State.StartedAt}}", POSTGRES_CONTAINER).stdout.strip()


def test_a_restore_drill_restores_every_archived_message_into_a_scratch_instance_and_leaves_the_live_one(stack, sent):
    """bin/offsite-restore-drill: the repository's latest point, restored into a one-off container that is
    gone afterwards, holds every row the live database had when the drill began; the live postgres was
    not restarted and customers are answered."""
    live_since = postgres_started_at(stack)

    drill = stack.ssh(PATHS.drill_script, check=False, timeout=900)

    assert drill.returncode == 0, drill.stderr[-4000:]
    report = json.loads(drill.stdout.splitlines()[-1])
    live, restored = report["tables"]["inbound_messages"]
    assert report["ok"] is True and restored >= live >= 3, report
    assert report["restored_to"] and report["backup"], report
    assert stack.ssh("cat", PATHS.drill_last_run).stdout.split()[1:] == ["ok"]
    assert stack.ssh("docker", "ps", "--all", "--quiet", "--filter", f"name={DRILL_CONTAINER}").stdout == ""
    assert postgres_started_at(stack) == live_since
    assert send_message(stack, "after the drill", "33677700003") == 200


def stored_marker(stack, text: str) -> str:
    """One message carrying ``text``, answered 200, waited for in inbound_messages; its WAL segment."""
    assert send_message(stack, f"Réservation {text}", f"3366{secrets.randbelow(10**8):08d}") == 200
    poll(lambda: sql(stack, f"select count(*) from inbound_messages where payload::text like '%{text}%'"),
         until=lambda count: count == "1", timeout=60, what=f"the message {text} stored")
    return sql(stack, "select pg_walfile_name(pg_current_wal_lsn())")


def holds(stack, text: str) -> bool:
    return sql(stack, f"select count(*) from inbound_messages where payload::text like '%{text}%'") != "0"


def resto_restore(stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), "local",
                           "backup", "offsite", "restore", *args, "--yes", "--json"],
                          capture_output=True, text=True, timeout=1800, cwd=REPO_ROOT)


PGBACKREST_CONF = "/etc/pgbackrest/pgbackrest.conf"


def test_a_wrong_passphrase_refuses_the_restore_naming_it_and_changes_nothing(stack, sent):
    """The postgres container's pgBackRest given another passphrase than the repository's (as a VPS deployed
    with a mistyped OFFSITE_BACKUP_PASSPHRASE would be): the restore is refused before anything changes, and
    says the passphrase is wrong rather than quoting pgBackRest's undecrypted bytes."""
    started = postgres_started_at(stack)
    edit = (f"cp -p {PGBACKREST_CONF} {PGBACKREST_CONF}.saved && "
            f"sed -i 's/^repo1-cipher-pass=.*/repo1-cipher-pass={secrets.token_hex(24)}/' {PGBACKREST_CONF}")
    stack.ssh("docker", "exec", "-u", "postgres", POSTGRES_CONTAINER, "sh", "-c", edit)
    try:
        refused = resto_restore(stack, "--to", "latest")
    finally:
        stack.ssh("docker", "exec", "-u", "postgres", POSTGRES_CONTAINER, "mv", f"{PGBACKREST_CONF}.saved",
                  PGBACKREST_CONF)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "do not decrypt with this stage's OFFSITE_BACKUP_PASSPHRASE" in refused.stderr, refused.stderr[-3000:]
    assert "nothing changed" in refused.stderr
    assert postgres_started_at(stack) == started and holds(stack, sent.marker)


def test_a_restore_to_a_time_brings_back_the_rows_of_then_and_not_those_written_after(stack, sent):
    before = f"PITR-BEFORE-{secrets.token_hex(6)}"
    after = f"PITR-AFTER-{secrets.token_hex(6)}"
    stored_marker(stack, before)
    time.sleep(2)  # the target falls strictly between the two commits
    target = sql(stack, "select to_char(now() at time zone 'utc', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")
    time.sleep(2)
    archived_up_to(stack, stored_marker(stack, after))  # the archive holds a commit past the target

    proc = resto_restore(stack, "--to", target)

    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(proc.stdout)
    assert data["restored_to"] == target and data["safety_dump"].startswith("/opt/resto/backups/before-restore-")
    assert all(check["passed"] for check in data["smoke"]), data["smoke"]
    assert (holds(stack, before), holds(stack, after), holds(stack, sent.marker)) == (True, False, True)
    assert sql(stack, "select pg_is_in_recovery()") == "f"
    assert send_message(stack, "after the restore", "33677700001") == 200  # customers answered again


def test_the_first_deploy_runs_the_nightly_offsite_backup_once_and_schedules_it(stack):
    assert any("Ensure an off-site run has succeeded on this host" in name for name in stack.first_deploy.changed)
    assert stack.ssh("cat", PATHS.offsite_last_run).stdout.split()[1:] == ["ok"]
    assert stack.ssh("cat", PATHS.offsite_last_success).stdout.split()[1:] == ["incr"]
    cron = stack.ssh("cat", OFFSITE_CRON_FILE).stdout
    user = stack.settings.get("host", {}).get("deploy_user", "deploy")
    assert cron.splitlines()[-1] == f"37 3 * * * {user} {PATHS.offsite_script} >/dev/null", cron


def test_the_first_deploy_passes_a_restore_drill_and_schedules_it_weekly(stack):
    assert any("Ensure a restore drill has passed on this host" in name for name in stack.first_deploy.changed)
    assert stack.ssh("cat", PATHS.drill_last_success).stdout.split()[1:] == ["ok"]
    cron = stack.ssh("cat", DRILL_CRON_FILE).stdout
    user = stack.settings.get("host", {}).get("deploy_user", "deploy")
    assert cron.splitlines()[-1] == f"7 5 * * 0 {user} {PATHS.drill_script} >/dev/null", cron


def test_the_container_states_report_the_offsite_run_for_its_alerts(stack):
    text = poll(lambda: stack.ssh("cat", METRICS, check=False).stdout,
                until=lambda text: "restobot_offsite_backup_last_run_success 1" in text, timeout=90, interval=5,
                what="the off-site run reported in the container states")
    assert "restobot_offsite_backup_last_success_timestamp_seconds " in text
    assert "restobot_offsite_restore_drill_last_run_success 1" in text
    assert "restobot_offsite_restore_drill_last_success_timestamp_seconds " in text
    rules = stack.ssh("cat", "/opt/resto/current/monitoring/prometheus/alerts.yml").stdout
    assert all(f"alert: {name}" in rules for name in (
        "RestobotOffsiteBackupFailed", "RestobotOffsiteBackupTooOld", "RestobotRestoreDrillFailed",
        "RestobotRestoreDrillTooOld"))


def test_an_unreachable_offsite_host_fails_the_run_records_it_and_the_stack_keeps_serving(stack, offsite_host):
    """The VPS cut from the off-site host's network: the nightly run fails and says why, its outcome is
    recorded failed (RestobotOffsiteBackupFailed), customers are still answered; reconnected, the next run
    succeeds."""
    host, _ = offsite_host
    resolver = docker("exec", stack.endpoint.container, "cat", "/etc/resolv.conf").stdout

    def keep_resolver() -> None:  # docker rewrites it on a network change (see the stack fixture)
        subprocess.run(["docker", "exec", "-i", stack.endpoint.container, "sh", "-c", "cat > /etc/resolv.conf"],
                       input=resolver, text=True, check=True, timeout=60)

    docker("network", "disconnect", host.network, stack.endpoint.container)
    try:
        keep_resolver()
        failed = stack.ssh(PATHS.offsite_script, check=False, timeout=600)
        recorded = stack.ssh("cat", PATHS.offsite_last_run).stdout.split()[1:]
        served = send_message(stack, "e2e offsite unreachable", "33611100099")
    finally:
        docker("network", "connect", host.network, stack.endpoint.container)
        keep_resolver()
    assert failed.returncode == 1 and failed.stderr.startswith("offsite-backup: "), failed.stderr
    assert recorded == ["failed"]
    assert served == 200
    again = stack.ssh(PATHS.offsite_script, check=False, timeout=600)
    assert again.returncode == 0, again.stderr
    assert stack.ssh("cat", PATHS.offsite_last_run).stdout.split()[1:] == ["ok"]


# --- the VPS lost: last in the module, it destroys the module's VPS ----------------------------------------


def repository_listing(host: OffsiteHost) -> list[str]:
    """Every file of the repository with its size and modification time: any write shows."""
    return sorted(docker("exec", host.container, "find", REPO_PATH, "-type", "f", "-printf", "%p %s %T@\n")
                  .stdout.splitlines())


@dataclass(frozen=True)
class Rebuilt:
    markers: tuple[str, ...]
    stack: object
    untouched: bool
    restore: subprocess.CompletedProcess[str]
    seconds: dict[str, float]


@pytest.fixture(scope="module")
def rebuilt(stack, offsite_host, tmp_path_factory) -> Iterator[Rebuilt]:
    """Messages answered 200 and archived within archive_timeout + 60 s; then the VPS and its volumes
    destroyed; a fresh VPS deployed with the same settings (deploy.py, once); then one restore command,
    to the end of the archive."""
    host, _ = offsite_host
    markers = tuple(f"LOST-VPS-{secrets.token_hex(6)}-{number}" for number in range(3))
    segment = ""
    for marker in markers:
        segment = stored_marker(stack, marker)
    archived_up_to(stack, segment)
    with harness_must_deliver("the VPS could not be destroyed") as deploys:
        deploys.tear_down_stack(stack.names)
    lost = time.monotonic()
    before = repository_listing(host)
    names = deploys.stack_names("offsite-rebuilt")
    try:
        with harness_must_deliver("the fresh VPS with the lost one's settings did not come up") as deploys:
            fresh = deploys.bring_up_stack(names, tmp_path_factory.mktemp("offsite-rebuilt"), release="e2e-offsite",
                                           prepare=attached_to(host))
        deployed = time.monotonic()
        untouched = repository_listing(host) == before
        restore = resto_restore(fresh)
        yield Rebuilt(markers, fresh, untouched, restore,
                      {"deploy": deployed - lost, "restore": time.monotonic() - deployed})
    finally:
        deploys.tear_down_stack(names)


def test_a_fresh_vps_deploys_over_the_lost_ones_repository_saying_to_restore_and_writing_nothing(rebuilt):
    output = rebuilt.stack.first_deploy.output
    assert "the off-site repository holds the backups of another database" in output, rebuilt.stack.first_deploy.output_tail()
    assert "`resto local backup offsite restore`, then deploy again" in output
    assert rebuilt.untouched


def test_one_restore_brings_back_every_message_answered_before_the_loss(rebuilt, capsys):
    with capsys.disabled():  # the RTO of a small database, into the run's log
        print(f"\nVPS lost: fresh VPS deployed in {rebuilt.seconds['deploy']:.0f} s, "
              f"restored in {rebuilt.seconds['restore']:.0f} s")
    assert rebuilt.restore.returncode == 0, rebuilt.restore.stderr[-4000:]
    data = json.loads(rebuilt.restore.stdout)
    assert data["restored_to"] == "the end of the archive" and all(check["passed"] for check in data["smoke"]), data
    assert [holds(rebuilt.stack, marker) for marker in rebuilt.markers] == [True, True, True]
    assert sql(rebuilt.stack, "select pg_is_in_recovery()") == "f"
    assert send_message(rebuilt.stack, "after the VPS was lost", "33677700002") == 200


def test_the_restore_takes_the_restored_databases_first_offsite_backup_and_restore_drill(rebuilt):
    data = json.loads(rebuilt.restore.stdout)
    assert data["offsite_run"].startswith("ok"), data["offsite_run"]
    assert rebuilt.stack.ssh("cat", PATHS.offsite_last_run).stdout.split()[1:] == ["ok"]
    assert data["restore_drill"].startswith("ok"), data["restore_drill"]
    assert rebuilt.stack.ssh("cat", PATHS.drill_last_run).stdout.split()[1:] == ["ok"]
