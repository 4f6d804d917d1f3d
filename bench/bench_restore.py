"""RTO of a lost VPS, restored from the off-site repository onto a fresh one: prints figures, asserts nothing.

    flock /tmp/restobot-heavy.lock .venv/bin/python bench/bench_restore.py [--size-mib 1024] [--keep]

As tests/e2e/test_offsite_backup.py's lost-VPS test, with a database of --size-mib:
  1. an SFTP-only off-site host (harness/offsite.py's image) on a docker network of its own, its ECDSA
     host key pinned and a login key generated here; a fresh local VPS joined to it, the stack deployed
     with ``offsite_backup`` (harness.deploys.bring_up_stack, deploy.py through the real pyinfra CLI);
  2. inbound_messages grown to --size-mib of rows (answered messages, in chunks), its WAL archived,
     then a full off-site backup (pgBackRest in the postgres container) and ``pgbackrest check``: timed;
  3. one signed message through the edge, answered, and its WAL segment archived (the marker);
  4. the VPS container and its volume destroyed (the ACME server and the Meta double stay: Let's Encrypt
     and the Graph API outlive a VPS, and a new double would number its message ids from 1 again, which
     the restored replies' provider ids already hold); a fresh VPS deployed with the same settings, then
     ``resto local backup offsite restore --to latest --yes --json``, then the go-live checklist
     (python -m restobot.golive): each timed; the marker and the row counts checked.
Goal (issue #15): RTO = deploy + restore + checklist <= 600 s for a 1 GiB database, the checklist green.
A missed goal still exits 0 (it says MISSED); a step that fails outright exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness.deploys import (
    DeployedStack,
    HarnessError,
    RemoteCommandFailed,
    bring_up_stack,
    checklist_inventory,
    make_checkout,
    public_request,
    sql,
    stack_names,
    stop_vps,
    tear_down_stack,
)
from harness.offsite import (
    OffsiteHost,
    attached_to,
    remove_offsite_host,
    start_offsite_host,
)
from harness.poll import PollTimeout, poll
from harness.traffic import stored_rows
from restobot import golive, meta_payloads
from restobot.commands import POSTGRES_CONTAINER, container_exec, pgbackrest, psql
from restobot.secrets import ensure_secrets_file
from restobot.settings import OffsiteBackupSettings, read_env_file, secrets_file

GOAL_SECONDS = 600
MIB = 1024 * 1024
STAGE = "local"
STANZA = OffsiteBackupSettings().stanza  # the settings below leave it at its default
ARCHIVE_TIMEOUT = 10  # as the e2e module: the marker's segment is closed within 10 s
ARCHIVE_MARGIN = 60  # then pushed over SFTP
FIRST_CHUNK_ROWS = 10_000  # measures the bytes a row takes; the next chunks are sized from it
CHUNKS = 16  # the growth in about this many chunks (each at least MIN_CHUNK_MIB)
MIN_CHUNK_MIB = 8
PADDING_MD5S = 8  # 8 distinct md5s in each message's text (and its payload): about as compressible as text
STEP_TIMEOUT = 3600

GROW_SQL = """\
INSERT INTO inbound_messages (channel, msg_id, conversation_key, sender, text, payload, sent_at, received_at,
                              status, processed_at)
SELECT 'whatsapp', m.wamid, 'whatsapp:' || :'phone_number_id' || ':' || m.sender, m.sender, m.body,
       jsonb_build_object('from', m.sender, 'id', m.wamid, 'timestamp', extract(epoch FROM m.at)::bigint::text,
                          'type', 'text', 'text', jsonb_build_object('body', m.body)),
       m.at, m.at, 'PROCESSED', m.at
FROM (SELECT 'wamid.BENCH' || lpad(n::text, 12, '0') AS wamid, (33690000000 + n % 5000)::text AS sender,
             'Bonjour, une table pour ' || (n % 8 + 1) || ' ce soir ? '
                 || (SELECT string_agg(md5(n || ':' || k), ' ') FROM generate_series(1, :padding) AS k) AS body,
             now() - interval '1 hour' - (n % 1209600) * interval '1 second' AS at
      FROM generate_series(:first, :last) AS n) AS m"""
DATABASE_BYTES_SQL = "SELECT pg_database_size(current_database())"
CURRENT_SEGMENT_SQL = "SELECT pg_walfile_name(pg_current_wal_lsn())"
ARCHIVED_SQL = "SELECT coalesce(last_archived_wal, '') || ' ' || failed_count FROM pg_stat_archiver"
COUNTS_SQL = "SELECT (SELECT count(*) FROM inbound_messages) || ' ' || (SELECT count(*) FROM outbound_messages)"


class StepFailed(RuntimeError):
    """A step of the benchmark failed outright: no figure for it; the message says which and why."""


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Run a step: a harness error, a failed remote command or a wait that timed out fails it, named."""
    try:
        yield
    except (HarnessError, RemoteCommandFailed, PollTimeout, subprocess.CalledProcessError,
            subprocess.TimeoutExpired) as error:
        detail = getattr(error, "stderr", None) or ""
        raise StepFailed(f"{what}: {error}\n{detail}".strip()) from None


# --- the database --------------------------------------------------------------------------------------


def in_postgres(stack: DeployedStack, query: str, timeout: float = 120, **variables: str) -> str:
    """``query`` in the stack's database (psql -At), values as psql variables; its output stripped."""
    argv = container_exec(POSTGRES_CONTAINER, psql(query, variables))
    return stack.ssh(*argv, timeout=timeout).stdout.strip()


def database_bytes(stack: DeployedStack) -> int:
    return int(in_postgres(stack, DATABASE_BYTES_SQL))


def message_counts(stack: DeployedStack) -> dict[str, int]:
    inbound, outbound = in_postgres(stack, COUNTS_SQL).split()
    return {"inbound_messages": int(inbound), "outbound_messages": int(outbound)}


def insert_rows(stack: DeployedStack, first: int, count: int) -> None:
    in_postgres(stack, GROW_SQL, timeout=STEP_TIMEOUT, first=str(first), last=str(first + count - 1),
                padding=str(PADDING_MD5S), phone_number_id=stack.settings["meta"]["wa_phone_number_id"])


def grow_database(stack: DeployedStack, size_mib: int) -> int:
    """inbound_messages grown (answered messages, spread over the last two weeks) until the database
    holds ``size_mib``; progress a line a chunk. The rows inserted."""
    target = size_mib * MIB
    chunk_bytes = max(MIN_CHUNK_MIB * MIB, target // CHUNKS)
    size, inserted, rows = database_bytes(stack), 0, FIRST_CHUNK_ROWS
    print(f"  database before: {size / MIB:8.1f} MiB; growing to {size_mib} MiB", flush=True)
    while size < target:
        started = time.monotonic()
        insert_rows(stack, inserted + 1, rows)
        inserted += rows
        now = database_bytes(stack)
        grown, size = now - size, now
        seconds = time.monotonic() - started
        print(f"  {inserted:>10,} rows  {size / MIB:8.1f} MiB  (+{grown / MIB:6.1f} MiB in {seconds:5.1f} s, "
              f"{grown / MIB / seconds:5.1f} MiB/s)", flush=True)
        bytes_per_row = max(1, grown) / rows
        rows = max(1000, int(min(chunk_bytes, target - size) / bytes_per_row) + 1)
    return inserted


def current_segment(stack: DeployedStack) -> str:
    return in_postgres(stack, CURRENT_SEGMENT_SQL)


def archived_up_to(stack: DeployedStack, segment: str, timeout: float) -> str:
    """Wait until PostgreSQL reports ``segment`` archived (archive_timeout closes it); the last answer."""
    return poll(lambda: sql(stack, ARCHIVED_SQL), until=lambda answer: answer.split()[0] >= segment,
                timeout=timeout, interval=2, what=f"WAL segment {segment} archived (last archived, failures)")


# --- the off-site backup ---------------------------------------------------------------------------------


def timed_in_vps(stack: DeployedStack, *argv: str) -> float:
    started = time.monotonic()
    stack.ssh(*argv, timeout=STEP_TIMEOUT)
    return time.monotonic() - started


def resto(stack: DeployedStack, *args: str) -> list[str]:
    """The operator's CLI against the stack's inventory (``resto local ...``)."""
    return [sys.executable, "-m", "restobot.cli", "--inventory", str(stack.inventory), STAGE, *args]


def repository_info(stack: DeployedStack) -> dict[str, Any]:
    """``resto local backup offsite info --json``: the repository's status and backups."""
    proc = subprocess.run(resto(stack, "backup", "offsite", "info", "--json"), cwd=REPO, capture_output=True,
                          text=True, timeout=300, check=True)
    return json.loads(proc.stdout)


# --- the marker message ------------------------------------------------------------------------------------


def send_marker(stack: DeployedStack) -> str:
    """One signed WhatsApp message through the edge, answered 200; its wamid."""
    marker = f"RTO-MARKER-{secrets.token_hex(6)}"
    payload = meta_payloads.whatsapp_text(f"Une table pour ce soir ? {marker}",
                                          sender=f"3367{secrets.randbelow(10**8):08d}",
                                          phone_number_id=stack.settings["meta"]["wa_phone_number_id"])
    body = meta_payloads.encode(payload)
    signature = meta_payloads.sign(body, read_env_file(secrets_file(STAGE))["META_APP_SECRET"])
    response, answer = public_request(stack, "POST", "/v1/inbound/whatsapp", body, {
        "Content-Type": "application/json", "X-Hub-Signature-256": signature})
    if response.status != 200:
        raise StepFailed(f"the marker message was answered {response.status}: {answer[:300]!r}")
    return payload["entry"][0]["changes"][0]["value"]["messages"][0]["id"]


def stored_and_replied(stack: DeployedStack, wamid: str) -> bool:
    stored, replies = stored_rows(stack, [wamid])
    return stored[wamid] == 1 and replies.get(wamid) == "SENT"


# --- the lost VPS back --------------------------------------------------------------------------------------


@dataclasses.dataclass
class RestoreRun:
    returncode: int
    seconds: float
    serving_after: float | None  # when the restored stack passed its smoke checks (before its first off-site run)
    document: dict[str, Any] | None
    stderr_tail: str


FIRST_OFFSITE_RUN_LINE = "no off-site run on this host yet"  # what the restore says after its smoke checks


def restore_latest(stack: DeployedStack) -> RestoreRun:
    """``resto local backup offsite restore --to latest --yes --json``, its progress printed with the time."""
    serving_after, lines = None, []
    with tempfile.TemporaryFile("w+") as out:
        started = time.monotonic()
        proc = subprocess.Popen(resto(stack, "backup", "offsite", "restore", "--to", "latest", "--yes", "--json"),
                                cwd=REPO, stdout=out, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            elapsed = time.monotonic() - started
            lines.append(line)
            print(f"  [{elapsed:6.1f} s] {line.rstrip()}", flush=True)
            if serving_after is None and line.startswith(FIRST_OFFSITE_RUN_LINE):
                serving_after = elapsed
        returncode = proc.wait()
        seconds = time.monotonic() - started
        out.seek(0)
        text = out.read()
    try:
        document = json.loads(text) if returncode == 0 else None
    except json.JSONDecodeError:
        document = None
    return RestoreRun(returncode, seconds, serving_after, document, "".join(lines)[-4000:])


@dataclasses.dataclass
class ChecklistRun:
    returncode: int
    seconds: float
    rows: list[golive.Row]

    @property
    def green(self) -> bool:
        return self.returncode == 0 and all(row.outcome in ("pass", "manual") for row in self.rows)

    def summary(self) -> str:
        counts = {outcome: sum(row.outcome == outcome for row in self.rows)
                  for outcome in ("pass", "manual", "FAIL", "ERROR", "skip")}
        return ", ".join(f"{count} {outcome}" for outcome, count in counts.items() if count) or "no item ran"


def go_live_checklist(stack: DeployedStack) -> ChecklistRun:
    """The go-live checklist (python -m restobot.golive) against the stack, as the e2e tier runs it."""
    inventory = checklist_inventory(stack, "checks")
    junit = stack.workdir / "checks.xml"
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "restobot.golive", "--inventory", str(inventory),
                           "--junit", str(junit)], cwd=REPO, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                          check=False)
    seconds = time.monotonic() - started
    return ChecklistRun(proc.returncode, seconds, golive.rows_from_junit(junit) if junit.exists() else [])


# --- the benchmark -----------------------------------------------------------------------------------------------


def seconds_of(action) -> tuple[float, Any]:
    started = time.monotonic()
    result = action()
    return time.monotonic() - started, result


def prepared_stack(host: OffsiteHost, names, workdir: Path, source: Path, keep: bool) -> DeployedStack:
    with step(f"the stack with an off-site backup ({names.vps})"):
        return bring_up_stack(names, workdir, release=None, source=source, group="bench", host_name="bench-vps",
                              keep_on_failure=keep, prepare=attached_to(host))


def loaded_and_backed_up(stack: DeployedStack, size_mib: int) -> dict[str, Any]:
    """Step 2: the database grown, its WAL archived, a full off-site backup and pgbackrest check."""
    with step("growing the database"):
        grow_seconds, rows = seconds_of(lambda: grow_database(stack, size_mib))
        size = database_bytes(stack)
    print(f"database: {size / MIB:.1f} MiB (pg_database_size), {rows:,} rows inserted in {grow_seconds:.0f} s",
          flush=True)
    with step("archiving the load's WAL"):
        archive_seconds, answer = seconds_of(
            lambda: archived_up_to(stack, current_segment(stack), timeout=max(600, 3 * size_mib)))
    last_archived, failures = answer.split()
    print(f"the load's WAL archived off-site {archive_seconds:.0f} s after the load (up to {last_archived}; "
          f"pg_stat_archiver.failed_count {failures} since the cluster started)", flush=True)
    with step("the full off-site backup"):
        backup_seconds = timed_in_vps(stack, *pgbackrest(STANZA, "--type=full", "backup"))
        check_seconds = timed_in_vps(stack, *pgbackrest(STANZA, "check"))
        newest = repository_info(stack)["backups"][-1]
    print(f"full off-site backup: {backup_seconds:.0f} s ({newest['database_bytes'] / MIB:.1f} MiB of database, "
          f"{newest['repository_bytes'] / MIB:.1f} MiB in the repository); pgbackrest check: {check_seconds:.0f} s",
          flush=True)
    return {"database_bytes": size, "rows_inserted": rows, "grow_s": round(grow_seconds, 1),
            "wal_archived_after_load_s": round(archive_seconds, 1), "backup_s": round(backup_seconds, 1),
            "check_s": round(check_seconds, 1), "repository_bytes": newest["repository_bytes"]}


def answered_and_archived_marker(stack: DeployedStack) -> str:
    """Step 3: the marker message answered (its reply sent) and its WAL segment archived; its wamid."""
    with step("the marker message"):
        wamid = send_marker(stack)
        poll(lambda: stored_and_replied(stack, wamid), timeout=120, interval=1,
             what=f"the marker message {wamid} stored and replied")
        archived_up_to(stack, current_segment(stack), timeout=ARCHIVE_TIMEOUT + ARCHIVE_MARGIN)
    print(f"marker message {wamid}: answered, replied, archived", flush=True)
    return wamid


def print_figures(figures: dict[str, Any], goal_met: bool) -> None:
    print(f"database size:          {figures['database_bytes'] / MIB:8.1f} MiB")
    print(f"full off-site backup:   {figures['backup_s']:8.1f} s  (pgbackrest check {figures['check_s']:.1f} s)")
    print(f"new VPS up:             {figures['new_vps_s']:8.1f} s  "
          "(its container started, the ACME server and the Meta double joined: not in the RTO)")
    print(f"deploy (deploy.py):     {figures['deploy_s']:8.1f} s")
    serving = figures["serving_after_restore_s"]
    print(f"restore (one command):  {figures['restore_s']:8.1f} s"
          + (f"  (serving again after {serving:.1f} s; the rest: the first off-site runs on this host)"
             if serving is not None else ""))
    print(f"checklist:              {figures['checklist_s']:8.1f} s  ({figures['checklist']})")
    print(f"data back:              marker {'yes' if figures['marker_back'] else 'NO'}, row counts "
          f"{'equal' if figures['counts_equal'] else 'DIFFER'} {figures['counts_after']}")
    print(f"RTO = deploy + restore + checklist: {figures['rto_s']:.1f} s; goal <= {GOAL_SECONDS} s with the "
          f"checklist green and the data back: {'met' if goal_met else 'MISSED'}")
    print(json.dumps(figures))


def benchmark(size_mib: int, keep: bool, workdir: Path) -> int:
    token = f"bench-restore-{os.getpid()}"
    source = make_checkout(workdir / "checkouts", "bench-restore", {}, None)
    names = stack_names("bench-restore")
    host: OffsiteHost | None = None
    try:
        with step("the off-site host"):
            host = start_offsite_host(f"restobot-offsite-{token}", workdir, ARCHIVE_TIMEOUT)
        print(f"off-site host {host.container} on {host.network}; deploying {names.vps} ...", flush=True)
        stack = prepared_stack(host, names, workdir / "lost", source, keep)
        print(f"first deploy (with the off-site backup): {stack.first_deploy.seconds:.0f} s", flush=True)
        figures = loaded_and_backed_up(stack, size_mib)
        wamid = answered_and_archived_marker(stack)
        with step("counting the messages before the loss"):
            counts_before = message_counts(stack)

        print(f"losing {names.vps} and its volume ...", flush=True)
        stop_vps(names.vps)
        bring_up_seconds, fresh = seconds_of(lambda: prepared_stack(host, names, workdir / "fresh", source, keep))
        deploy_seconds = fresh.first_deploy.seconds
        print(f"a fresh {names.vps} deployed: {deploy_seconds:.0f} s; restoring ...", flush=True)
        restore = restore_latest(fresh)
        if restore.returncode != 0:
            raise StepFailed(f"the restore exited {restore.returncode}:\n{restore.stderr_tail}")
        with step("reading the restored data"):  # before the checklist: its test messages add rows
            marker_back = stored_and_replied(fresh, wamid)
            counts_after = message_counts(fresh)
        print(f"restored in {restore.seconds:.0f} s; the go-live checklist ...", flush=True)
        checklist = go_live_checklist(fresh)
        for row in checklist.rows:
            if row.outcome not in ("pass", "manual"):
                print(f"  {row.outcome}: {row.item}: {row.reason}", flush=True)
        figures.update({
            "new_vps_s": round(bring_up_seconds - deploy_seconds, 1),
            "deploy_s": round(deploy_seconds, 1), "restore_s": round(restore.seconds, 1),
            "serving_after_restore_s": None if restore.serving_after is None else round(restore.serving_after, 1),
            "checklist_s": round(checklist.seconds, 1), "checklist": checklist.summary(),
            "checklist_green": checklist.green, "marker_back": marker_back, "counts_before": counts_before,
            "counts_after": counts_after, "counts_equal": counts_after == counts_before,
            "rto_s": round(deploy_seconds + restore.seconds + checklist.seconds, 1), "goal_s": GOAL_SECONDS,
        })
        data_back = marker_back and figures["counts_equal"]
        goal_met = figures["rto_s"] <= GOAL_SECONDS and checklist.green and data_back
        print_figures({**figures, "goal_met": goal_met}, goal_met)
        if not (checklist.green and data_back):
            missing = [what for what, ok in (("the checklist is not green", checklist.green),
                                              ("restored data is missing", data_back)) if not ok]
            raise StepFailed(f"the lost VPS is not back: {'; '.join(missing)}")
        return 0
    finally:
        if keep:
            print(f"kept: {names.vps}, {names.acme}, {names.meta}, {host.container if host else 'no off-site host'}, "
                  f"{workdir}", flush=True)
        else:
            tear_down_stack(names)
            remove_offsite_host(f"restobot-offsite-{token}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024,
                        help="grow the database to this many MiB of messages before the backup (issue #15: 1024)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the containers (VPS, ACME, Meta double, off-site host) and the work directory")
    args = parser.parse_args(argv)
    if args.size_mib < 1:
        parser.error("--size-mib must be 1 or more")

    ensure_secrets_file(secrets_file(STAGE))
    workdir = REPO / ".cache" / f"bench-restore-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return benchmark(args.size_mib, args.keep, workdir)
    except StepFailed as failure:
        print(f"FAILED: {failure}", file=sys.stderr, flush=True)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
