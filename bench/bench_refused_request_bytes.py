"""What a refused request costs PostgreSQL: bytes added per request, by kind. Figures only, no pass/fail.

    .venv/bin/python bench/bench_refused_request_bytes.py [--requests 200]
    .venv/bin/python bench/bench_refused_request_bytes.py --vps restobot-vps-e2e-1234   # a kept e2e stack

Without --vps it starts a fresh VPS container with the local ACME server and the
Meta double, deploys the stack with the real deploy.py (a few minutes) and
removes it all at the end. With --vps it uses a stack that is already deployed
(RESTOBOT_KEEP_E2E_STACK=1 keeps the e2e tier's; its ACME server is the
container named like the VPS with "acme" for "vps", or --acme).

Three measures, each between two CHECKPOINTs:
  * idle: nothing sent for as long as the unsigned batch took (the scheduler's
    own executions write meanwhile: the floor under the other figures);
  * unsigned POSTs (no X-Hub-Signature-256, no x-api-token): refused by the
    gateway in enforce mode, never seen by n8n;
  * wrongly signed POSTs: they reach n8n, W1 refuses them 403 and records one
    SIGNATURE_INVALID row each; measured right after the batch and again once
    n8n has erased the batch's unsaved executions (they are written while they
    run, then hard-deleted within about a minute); then a second batch, to
    show whether the space the first left behind is reused.
Per measure: pg_database_size, the sum of pg_total_relation_size over the
tables, the WAL written, all per request, and the tables that grew. Goal: 0
bytes per request beyond one security_events row (its average size is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import acme as harness_acme
from harness import vps as harness_vps
from harness.deploys import (
    HarnessError,
    StackNames,
    bring_up_stack,
    stack_names,
    tear_down_stack,
    vps_exec,
)
from harness.rawhttp import Edge, exchange, fetch_root
from harness.stage import local_stage_tree
from restobot import meta_payloads
from restobot.commands import container_exec, psql
from restobot.secrets import ensure_secrets_file
from restobot.settings import Settings, load_settings, secrets_file

TABLE_SIZES = ("select c.relname, pg_total_relation_size(c.oid) from pg_class c "
               "join pg_namespace n on n.oid = c.relnamespace "
               "where c.relkind in ('r', 'p', 'm') and n.nspname = 'public'")
SETTLE_SECONDS = 150
# Only this bench's requests start webhook executions here; n8n erases unsaved ones within about a minute.
WEBHOOK_EXECUTIONS_LEFT = "select count(*) from execution_entity where mode = 'webhook'"


@dataclasses.dataclass(frozen=True)
class Sizes:
    database: int
    tables: dict[str, int]
    wal_lsn: str
    security_events: int
    last_execution_id: int

    @property
    def tables_total(self) -> int:
        return sum(self.tables.values())


@dataclasses.dataclass
class Stack:
    endpoint: object
    settings: Settings

    def sql(self, query: str, variables: dict[str, str] | None = None) -> str:
        """``query`` in the stack's database; values as psql variables (``:'name'``)."""
        return vps_exec(self.endpoint, *container_exec("resto-postgres-1", psql(query, variables)),
                        timeout=120).stdout.strip()

    def sizes(self) -> Sizes:
        """After a CHECKPOINT: sizes, the WAL position, the security_events rows, the last execution id."""
        self.sql("checkpoint")
        tables = dict(line.split("|") for line in self.sql(TABLE_SIZES).splitlines())
        database, lsn, events, last = self.sql(
            "select pg_database_size(current_database()), pg_current_wal_lsn(), "
            "(select count(*) from security_events), (select last_value from execution_entity_id_seq)").split("|")
        return Sizes(int(database), {name: int(size) for name, size in tables.items()}, lsn, int(events), int(last))

    def wal_bytes(self, since: str) -> int:
        return int(float(self.sql("select pg_wal_lsn_diff(pg_current_wal_lsn(), :'since'::pg_lsn)", {"since": since})))


# --- the requests ------------------------------------------------------------------------------


def whatsapp_post(stack: Stack, edge: Edge, signature: str | None, number: int) -> bytes:
    payload = meta_payloads.whatsapp_text(f"refused {number}", sender="33600000098",
                                          phone_number_id=stack.settings.meta.wa_phone_number_id)
    body = meta_payloads.encode(payload)
    headers = ["Content-Type: application/json"]
    if signature is not None:
        headers.append(f"X-Hub-Signature-256: {meta_payloads.sign(body, signature)}")
    head = ["POST /v1/inbound/whatsapp HTTP/1.1", f"Host: {edge.server_name}", "User-Agent: bench-refused",
            *headers, f"Content-Length: {len(body)}", "Connection: close"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def send_batch(stack: Stack, edge: Edge, count: int, signed_wrongly: bool) -> tuple[float, dict[int | None, int]]:
    """Send ``count`` refused POSTs one after another; return the seconds taken and the statuses seen."""
    statuses: dict[int | None, int] = {}
    started = time.monotonic()
    for number in range(count):
        secret = secrets.token_hex(16) if signed_wrongly else None
        status = exchange(edge, whatsapp_post(stack, edge, secret, number)).status
        statuses[status] = statuses.get(status, 0) + 1
    return time.monotonic() - started, statuses


def wait(predicate: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(2)
    return predicate()


# --- the figures -------------------------------------------------------------------------------


def grown_tables(before: Sizes, after: Sizes, top: int = 6) -> str:
    grown = sorted(((after.tables.get(name, 0) - size, name) for name, size in before.tables.items()), reverse=True)
    shown = [f"{name} +{delta}" for delta, name in grown[:top] if delta > 0]
    return ", ".join(shown) or "none"


def report(label: str, stack: Stack, before: Sizes, after: Sizes, requests: int) -> dict:
    per = max(requests, 1)
    figures = {
        "database_bytes_per_request": (after.database - before.database) / per,
        "tables_bytes_per_request": (after.tables_total - before.tables_total) / per,
        "wal_bytes_per_request": stack.wal_bytes(before.wal_lsn) / per,
        "security_events_rows": after.security_events - before.security_events,
        "executions_started": after.last_execution_id - before.last_execution_id,
    }
    print(f"{label:34} database {figures['database_bytes_per_request']:9.1f} B/req | tables "
          f"{figures['tables_bytes_per_request']:9.1f} B/req | WAL {figures['wal_bytes_per_request']:9.1f} B/req | "
          f"security_events +{figures['security_events_rows']} | executions started "
          f"{figures['executions_started']} | grew: {grown_tables(before, after)}")
    return figures


def security_event_row_bytes(stack: Stack) -> tuple[float, float]:
    """Average tuple size of a security_events row, and the table's total size (indexes too) per row."""
    average, total, rows = stack.sql(
        "select coalesce(avg(pg_column_size(e.*)), 0), pg_total_relation_size('security_events'), count(*) "
        "from security_events e").split("|")
    return float(average), int(total) / max(int(rows), 1)


def wrong_signature_batch(stack: Stack, edge: Edge, requests: int, label: str) -> None:
    """One batch of wrongly signed POSTs: figures right after it, then once n8n erased its executions."""
    before = stack.sizes()
    _, statuses = send_batch(stack, edge, requests, signed_wrongly=True)
    wanted = before.security_events + requests
    wait(lambda: int(stack.sql("select count(*) from security_events")) >= wanted, 60)
    report(f"{label} x{requests} {statuses}", stack, before, stack.sizes(), requests)
    erased = wait(lambda: stack.sql(WEBHOOK_EXECUTIONS_LEFT) == "0", SETTLE_SECONDS)
    report(f"  same, after n8n's prune ({'done' if erased else 'not done'})", stack, before, stack.sizes(), requests)


def measure(stack: Stack, edge: Edge, requests: int) -> None:
    before = stack.sizes()
    seconds, unsigned_statuses = send_batch(stack, edge, requests, signed_wrongly=False)
    report(f"unsigned x{requests} {unsigned_statuses}", stack, before, stack.sizes(), requests)

    before = stack.sizes()
    time.sleep(seconds)
    report(f"idle {seconds:.0f} s (per {requests} slots)", stack, before, stack.sizes(), requests)

    wrong_signature_batch(stack, edge, requests, "wrong signature")
    # A second batch shows whether the space the first one left (dead rows) is reused or keeps growing.
    wrong_signature_batch(stack, edge, requests, "wrong signature, again")
    average, with_indexes = security_event_row_bytes(stack)
    print(f"one security_events row: {average:.0f} B on average (tuple), {with_indexes:.0f} B per row with "
          f"the table's pages and indexes")
    print("goal: 0 B per refused request beyond one security_events row (wrong signature) and 0 B (unsigned)")


# --- reaching a stack --------------------------------------------------------------------------


def edge_for(endpoint, settings: Settings, acme, workdir: Path) -> Edge:
    root = fetch_root(acme.roots_url, acme.ca_pem_path_on_host, workdir / "pebble-root.pem")
    return Edge(("127.0.0.1", endpoint.https_port), settings.domains.api_host, root)


def kept_stack(vps_name: str, acme_name: str, workdir: Path) -> tuple[Stack, Edge]:
    endpoint = harness_vps.vps_endpoint(container=vps_name)
    acme = harness_acme.LocalAcme.from_json(harness_acme.state_path(acme_name).read_text())
    settings = load_settings(local_stage_tree(endpoint))
    return Stack(endpoint, settings), edge_for(endpoint, settings, acme, workdir)


def fresh_stack(names: StackNames, workdir: Path) -> tuple[Stack, Edge]:
    """harness.deploys.bring_up_stack: a fresh VPS, the local ACME server, the Meta double, deploy.py once."""
    try:
        deployed = bring_up_stack(names, workdir, release="bench-refused", group="bench", host_name="bench-vps")
    except HarnessError as error:
        raise SystemExit(str(error)) from None
    settings = load_settings(deployed.settings)
    return Stack(deployed.endpoint, settings), edge_for(deployed.endpoint, settings, deployed.acme, workdir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="refused requests per kind (bounded: <= 2000)")
    parser.add_argument("--vps", help="a deployed VPS container to use (default: deploy a fresh one, then remove it)")
    parser.add_argument("--acme", help="its ACME server's container (default: the VPS's name with acme for vps)")
    args = parser.parse_args()
    requests = max(1, min(args.requests, 2000))
    ensure_secrets_file(secrets_file("local"))
    workdir = REPO / ".cache" / f"bench-refused-{os.getpid()}"
    workdir.mkdir(parents=True, exist_ok=True)
    names = stack_names("bench")
    try:
        if args.vps:
            stack, edge = kept_stack(args.vps, args.acme or args.vps.replace("-vps-", "-acme-", 1), workdir)
        else:
            stack, edge = fresh_stack(names, workdir)
        print(f"stack {args.vps or names.vps}, {requests} refused requests per kind, sizes after CHECKPOINT")
        measure(stack, edge, requests)
    finally:
        if not args.vps:
            tear_down_stack(names)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
