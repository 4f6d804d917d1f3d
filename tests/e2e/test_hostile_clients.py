"""Hostile clients at the public edge: each request is refused before n8n, and n8n's own counters prove it.

A raw HTTP/1.1 client (harness/rawhttp.py) sends each request exactly as
written, through Traefik's published :443 with SNI api.<domain>. For every
hostile case the test asserts two things:

1. the edge refused it: a refusal status (400/403/404/405/411/413/414/421/431/501)
   or a closed connection, and the exact status where the gateway's contract
   names one;
2. n8n never saw it. Four sentinels, read in one SSH round trip before and after:
   + n8n's own request counters, scraped from n8n-main's /metrics and summed over
     their labels. In n8n 2.40.5 (dist/metrics/prometheus/route-metrics.service.js,
     dist/abstract-server.js) ``n8n_http_request_duration_seconds`` counts /rest/ and
     /api/ only: it is mounted after the /webhook/*, /form/* and /webhook-test/*
     routes, which end the request first. Those are counted in
     ``n8n_webhook_request_duration_seconds`` (and form POSTs in
     ``n8n_form_submission_duration_seconds``) when N8N_METRICS_INCLUDE_WEBHOOK_METRICS
     is true; test_n8n_counts_the_verify_handshake_in_its_request_counter says whether it is;
   + executions a client can start: an AFTER INSERT trigger installed for this
     module records every execution_entity row (n8n writes one for every
     execution it starts, saved or not, then deletes the unsaved ones), and the
     rows of modes other than the scheduler's ('trigger') and sub-workflows'
     ('integrated') are counted. The execution id sequence alone cannot serve:
     W3_OUTBOUND_SENDER's 10-second schedule advances it all the time;
   + security_events: no new row, none holding the case's marker;
   + the gateway's access log: lines whose upstream address is not "-" (nginx
     forwarded the request to n8n): it covers the paths n8n counts nowhere
     (/, /signin, /assets/*, /healthz/readiness, /metrics).

Absence is proven with a sentinel, never a sleep: after the hostile request a
valid verify handshake is sent, and the check waits (bounded) until ITS effect
shows in every counter; then each counter must have moved by exactly that one
request. Positive controls show that each counter can move.

Cases that n8n must see (a probe header or forwarding headers set by the
client on an otherwise valid request) are checked on n8n's answer and on the
security_events row they leave instead.
"""

from __future__ import annotations

import dataclasses
import secrets
import urllib.parse
import uuid
from collections.abc import Callable, Sequence

import pytest

from harness.poll import poll
from harness.rawhttp import Answer, Edge, exchange, fetch_root
from restobot import meta_payloads
from restobot.commands import container_exec, psql
from restobot.settings import Settings, load_settings

pytestmark = pytest.mark.e2e

CHANNELS = ("whatsapp", "instagram", "messenger")
# 421 Misdirected Request: Traefik's answer to a Host that the connection's SNI does not serve.
REFUSALS = frozenset({400, 403, 404, 405, 411, 413, 414, 421, 431, 501})
BAD_REQUEST = '{"error":"bad_request"}'
NOT_FOUND = '{"error":"not_found"}'
FORBIDDEN = '{"error":"forbidden"}'
KIB = 1024
SENTINEL_TIMEOUT = 30.0
POLL_INTERVAL = 0.3
# Execution modes no client request can start: the scheduler's and sub-workflows'.
BACKGROUND_MODES = ("trigger", "integrated")


# --- building requests ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Names:
    api: str
    console: str


def message(start: str, host: str | None, *, marker: str, headers: Sequence[str] = (),
            body: bytes | None = None, user_agent: str | None = None, close: bool = True) -> bytes:
    """Request bytes: ``start`` line, Host, User-Agent carrying the marker, ``headers`` verbatim, body.

    ``headers`` are raw lines (they may hold a bare LF or an obs-fold on purpose);
    a body gets its Content-Length unless a header already frames it.
    """
    lines = [start]
    if host is not None:
        lines.append(f"Host: {host}")
    lines.append(f"User-Agent: {user_agent or f'hostile-client {marker}'}")
    lines += headers
    framed = any(line.lower().startswith(("content-length:", "transfer-encoding:")) for line in headers)
    if body is not None and not framed:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def verify_query(marker: str) -> str:
    """A verify-handshake query with no token: W0 records hub.mode (the marker) if it ever runs."""
    return f"hub.mode={marker}&hub.challenge={marker}"


def smuggled_verify(names: Names, marker: str, *, complete: bool = True) -> bytes:
    """A second request hidden in a body: if anything forwards it, W0 records the marker."""
    start = f"GET /v1/inbound/whatsapp?{verify_query(marker)} HTTP/1.1\r\nHost: {names.api}\r\n"
    return (start + "\r\n" if complete else start + "X-Ignore: ").encode()


def owner_setup_body(marker: str) -> bytes:
    return (f'{{"email":"{marker}@example.test","firstName":"Hostile","lastName":"Client",'
            f'"password":"Hostile-{marker[-8:]}A1"}}').encode()  # pragma: allowlist secret - a throwaway claim


def signed_looking_post(path: str, body: bytes, marker: str, names: Names) -> bytes:
    """A POST carrying a (wrong) signature, so only the case's own hostile part can stop it."""
    return message(f"POST {path} HTTP/1.1", names.api, marker=marker, body=body,
                   headers=["Content-Type: application/json", "X-Hub-Signature-256: sha256=" + "0" * 64])


@dataclasses.dataclass(frozen=True)
class Expect:
    """What the edge must answer: one of ``statuses`` (None: a closed connection) and,
    when ``body`` is given, that body unless Traefik answered first (``traefik_may_refuse``)."""

    statuses: frozenset[int | None]
    body: str | None = None
    traefik_may_refuse: bool = False

    def problems(self, answer: Answer) -> list[str]:
        if answer.outcome == "timeout":
            return ["the edge neither answered nor closed the connection before the deadline"]
        if answer.status not in self.statuses:
            return [f"want {self.describe()}"]
        if self.body is not None and answer.text != self.body and not (
                self.traefik_may_refuse and answered_by_traefik(answer)):
            return [f"want the body {self.body!r}"]
        return []

    def describe(self) -> str:
        wanted = sorted("closed" if status is None else str(status) for status in self.statuses)
        return "/".join(wanted) + (f" {self.body}" if self.body else "")


def exactly(status: int, body: str | None = None, *, traefik_may_refuse: bool = False) -> Expect:
    return Expect(frozenset({status}), body, traefik_may_refuse)


ANY_REFUSAL = Expect(frozenset({*REFUSALS, None}))
# The gateway's 400 for an encoded or dotted target; Traefik may refuse some first with its own 400.
TARGET_REFUSED = exactly(400, BAD_REQUEST, traefik_may_refuse=True)


def answered_by_traefik(answer: Answer) -> bool:
    """Traefik's own refusals (Go's HTTP server, no router) lack the api router's security headers."""
    return answer.status is not None and answer.header("strict-transport-security") is None


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile request: ``build(names, marker)`` gives its bytes, ``expect`` the edge's answer.

    ``linger``: seconds to keep reading after the answer (a second answer on the
    same connection means the edge read a smuggled request).
    """

    id: str
    build: Callable[[Names, str], bytes]
    expect: Expect
    linger: float = 0.0


def _get(target: str, *headers: str) -> Callable[[Names, str], bytes]:
    return lambda names, marker: message(f"GET {target.format(q=verify_query(marker), marker=marker)} HTTP/1.1",
                                         names.api, marker=marker, headers=headers)


ENCODED_TARGETS = [
    Case("crlf-header-in-admin-path",
         lambda n, m: message("POST /v1/admin/dlq/replay%0d%0aX:%20y HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json", f"X-Api-Token: {m}"],
                              body=b'{"dry_run":true}'),
         TARGET_REFUSED),
    Case("crlf-header-in-inbound-path", _get("/v1/inbound/whatsapp%0d%0aX-Restobot-Probe:%20deploy?{q}"),
         TARGET_REFUSED),
    Case("request-smuggled-in-path",
         _get("/v1/inbound/whatsapp%0d%0aContent-Length:%200%0d%0a%0d%0aPOST%20/rest/owner/setup%20HTTP/1.1"
              "%0d%0aHost:%20n8n-main%0d%0aContent-Length:%200%0d%0aX-Marker:%20{marker}%0d%0a%0d%0a?{q}"),
         TARGET_REFUSED),
    Case("crlf-in-query", _get("/v1/inbound/whatsapp?{q}%0d%0aX-Restobot-Probe:%20deploy"), TARGET_REFUSED),
    Case("lf-in-query", _get("/v1/inbound/whatsapp?{q}%0a%0aGET%20/rest/settings"), TARGET_REFUSED),
    Case("nul-in-query", _get("/v1/inbound/whatsapp?{q}%00"), TARGET_REFUSED),
    Case("del-in-query", _get("/v1/inbound/whatsapp?{q}%7f"), TARGET_REFUSED),
    # nginx's URL parser refuses it before any location: its own 400 page, not the gateway's JSON.
    Case("nul-in-path", _get("/v1/inbound/whatsapp%00?{q}"), exactly(400)),
    Case("encoded-slash-in-path",
         lambda n, m: signed_looking_post("/v1%2finbound/whatsapp", b"{}", m, n), TARGET_REFUSED),
    Case("backslash-in-path", _get("/v1\\inbound/whatsapp?{q}"), TARGET_REFUSED),
    Case("dot-segments-to-owner-setup", _get("/v1/inbound/../../rest/owner/setup?{q}"), TARGET_REFUSED),
    Case("single-dot-segment", _get("/v1/inbound/./whatsapp?{q}"), TARGET_REFUSED),
    Case("encoded-dot-segments-to-settings", _get("/v1/inbound/%2e%2e/%2e%2e/rest/settings?{q}"),
         TARGET_REFUSED),
]

ABSOLUTE_FORM = [
    Case("absolute-form-console-owner-setup",
         lambda n, m: message(f"POST https://{n.console}/rest/owner/setup HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json"], body=owner_setup_body(m)),
         # The console router has TLS options of its own: a console target on the api's TLS name is misdirected.
         exactly(421)),
    Case("absolute-form-api-owner-setup",
         lambda n, m: message(f"POST https://{n.api}/rest/owner/setup HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json"], body=owner_setup_body(m)),
         exactly(404, NOT_FOUND)),
]

# Unsigned POSTs (refused by the gateway in enforce mode) whose framing or headers try to
# slip a second request or a signature header past the edge; the connection is kept open
# and read a little longer, so a second answer would show.
FRAMING_AND_HEADERS = [
    Case("duplicate-content-length",
         lambda n, m: message("POST /v1/inbound/whatsapp HTTP/1.1", n.api, marker=m, close=False,
                              headers=["Content-Type: application/json", "Content-Length: 0",
                                       f"Content-Length: {len(smuggled_verify(n, m))}"],
                              body=smuggled_verify(n, m)),
         ANY_REFUSAL, linger=2.0),
    Case("chunked-with-content-length",
         lambda n, m: message("POST /v1/inbound/whatsapp HTTP/1.1", n.api, marker=m, close=False,
                              headers=["Content-Type: application/json", "Transfer-Encoding: chunked",
                                       f"Content-Length: {5 + len(smuggled_verify(n, m, complete=False))}"],
                              body=b"0\r\n\r\n" + smuggled_verify(n, m, complete=False)),
         ANY_REFUSAL, linger=2.0),
    Case("encoded-line-break-in-header-value",
         lambda n, m: message("POST /v1/inbound/whatsapp HTTP/1.1", n.api, marker=m, body=b"{}",
                              user_agent=f"hostile {m}%0d%0aX-Hub-Signature-256:%20sha256={'0' * 64}"),
         ANY_REFUSAL),
    Case("obs-fold-in-header-value",
         lambda n, m: message("POST /v1/inbound/whatsapp HTTP/1.1", n.api, marker=m, body=b"{}",
                              user_agent=f"hostile {m}\r\n X-Hub-Signature-256: sha256={'0' * 64}"),
         ANY_REFUSAL),
]

OVERSIZED = [
    Case("header-of-64-kib", _get("/v1/inbound/whatsapp?{q}", "X-Pad: " + "a" * (64 * KIB)), ANY_REFUSAL),
    Case("meta-body-of-300-kib",
         lambda n, m: signed_looking_post("/v1/inbound/whatsapp", b"[" + b"0," * (150 * KIB) + b"0]", m, n),
         exactly(413)),
    Case("meta-body-just-over-64-kib",
         lambda n, m: signed_looking_post("/v1/inbound/instagram", b'"' + b"a" * (64 * KIB - 1) + b'"', m, n),
         exactly(413)),
    Case("admin-body-of-64-kib",
         lambda n, m: message("POST /v1/admin/dlq/replay HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json", f"X-Api-Token: {m}"],
                              body=b'"' + b"a" * (64 * KIB - 2) + b'"'),
         exactly(413)),
    Case("admin-body-just-over-8-kib",
         lambda n, m: message("POST /v1/admin/dlq/replay HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json", f"X-Api-Token: {m}"],
                              body=b'"' + b"a" * (8 * KIB - 1) + b'"'),
         exactly(413)),
]

HTTP10 = [
    Case("http-1.0-without-host",
         lambda n, m: message(f"GET /v1/inbound/whatsapp?{verify_query(m)} HTTP/1.0", None, marker=m),
         ANY_REFUSAL),
]

WRONG_METHODS = [
    Case(f"{method.lower()}-on-{channel}",
         lambda n, m, method=method, channel=channel: message(
             f"{method} /v1/inbound/{channel}?{verify_query(m)} HTTP/1.1", n.api, marker=m,
             body=b"" if method in ("PUT", "DELETE") else None),
         exactly(405))
    for channel in CHANNELS for method in ("TRACE", "PUT", "OPTIONS", "DELETE")
]

N8N_PATHS = [
    Case("n8n-rest-owner-setup",
         lambda n, m: message("POST /rest/owner/setup HTTP/1.1", n.api, marker=m,
                              headers=["Content-Type: application/json"], body=owner_setup_body(m)),
         exactly(404, NOT_FOUND)),
    *[Case(f"n8n-path-{path.strip('/').replace('/', '-').replace('.', '-') or 'root'}",
           _get(f"{path}?{{q}}"), exactly(404, NOT_FOUND))
      for path in ("/rest/settings", "/webhook/v1/inbound/whatsapp", "/webhook-test/x", "/form/x",
                   "/form-waiting/1", "/healthz/readiness", "/_n8n_ready", "/metrics", "/", "/signin",
                   "/assets/x.js")],
    Case("n8n-webhook-post-whatsapp",
         lambda n, m: signed_looking_post("/webhook/v1/inbound/whatsapp", b"{}", m, n),
         exactly(404, NOT_FOUND)),
]

UNSIGNED = [
    *[Case(f"unsigned-post-to-{channel}",
           lambda n, m, channel=channel: message(
               f"POST /v1/inbound/{channel} HTTP/1.1", n.api, marker=m, headers=["Content-Type: application/json"],
               body=meta_payloads.encode(meta_payloads.whatsapp_text(m) if channel == "whatsapp"
                                         else meta_payloads.messaging_text(channel, m))),
           exactly(403, FORBIDDEN))
      for channel in CHANNELS],
    Case("client-probe-header-on-an-empty-unsigned-post",
         lambda n, m: message("POST /v1/inbound/whatsapp HTTP/1.1", n.api, marker=m, body=b"",
                              headers=["X-Restobot-Probe: deploy"]),
         exactly(403, FORBIDDEN)),
]

EDGE_CASES = [*ENCODED_TARGETS, *ABSOLUTE_FORM, *FRAMING_AND_HEADERS, *OVERSIZED, *HTTP10, *WRONG_METHODS,
              *N8N_PATHS, *UNSIGNED]


# --- n8n's side: the sentinels ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sentinels:
    """What n8n and the gateway have seen so far (see the module docstring)."""

    n8n_requests: int
    webhooks_counted: int
    client_executions: int
    execution_ids: int
    security_events: int
    marked_events: int
    nginx_forwards: int

    def minus(self, before: Sentinels) -> dict[str, int]:
        return {field.name: getattr(self, field.name) - getattr(before, field.name)
                for field in dataclasses.fields(self)}


SENTINEL_SCRIPT = r"""
set -eu
docker exec resto-n8n-main-1 wget -qO- http://127.0.0.1:5678/metrics | awk '
  /^# HELP n8n_webhook_request_duration_seconds / {webhooks = 1}
  /^n8n_(http_request|webhook_request|form_submission)_duration_seconds_count[{ ]/ {sum += $NF}
  END {printf "n8n_requests=%d\nwebhooks_counted=%d\n", sum, webhooks}'
printf '%s\n' "$1" | docker exec -i resto-postgres-1 sh -c \
  'exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" --set=marker="$0"' "$2"
docker logs resto-nginx-1 2>/dev/null | awk '$NF != "-" {n++} END {printf "nginx_forwards=%d\n", n}'
"""


# The marker travels as the psql variable :'marker' (empty: no case marker to look for).
SENTINEL_QUERY = (
    "select 'security_events=' || count(*) from security_events "
    "union all select 'marked_events=' || count(*) from security_events e "
    "where :'marker' <> '' and strpos(e::text, :'marker') > 0 "
    "union all select 'client_executions=' || count(*) from e2e_hostile_execution_audit "
    "where mode not in ('trigger', 'integrated') "
    "union all select 'execution_ids=' || last_value from execution_entity_id_seq"
)


AUDIT_INSTALL = """
create unlogged table if not exists e2e_hostile_execution_audit (
    id bigint, workflow_id text, mode text, seen_at timestamptz not null default clock_timestamp());
create or replace function e2e_hostile_execution_audit_record() returns trigger language plpgsql as $$
begin
    insert into e2e_hostile_execution_audit (id, workflow_id, mode) values (new.id, new."workflowId", new.mode);
    return null;
end $$;
create or replace trigger e2e_hostile_execution_audit_trigger after insert on execution_entity
    for each row execute function e2e_hostile_execution_audit_record();
"""
AUDIT_REMOVE = """
drop trigger if exists e2e_hostile_execution_audit_trigger on execution_entity;
drop function if exists e2e_hostile_execution_audit_record();
drop table if exists e2e_hostile_execution_audit;
"""


class N8nSide:
    """Reads the sentinels on the VPS (one SSH round trip) and waits, bounded, for them to move."""

    def __init__(self, stack) -> None:
        self.stack = stack

    def sql(self, query: str, variables: dict[str, str] | None = None) -> str:
        """``query`` in the stack's database; values as psql variables (``:'name'``)."""
        return self.stack.ssh(*container_exec("resto-postgres-1", psql(query, variables))).stdout.strip()

    def read(self, marker: str | None = None) -> Sentinels:
        output = self.stack.ssh("sh", "-c", SENTINEL_SCRIPT, "sentinels", SENTINEL_QUERY, marker or "").stdout
        values = dict(line.split("=", 1) for line in output.split() if "=" in line)
        return Sentinels(**{field.name: int(values[field.name]) for field in dataclasses.fields(Sentinels)})

    def wait_for(self, marker: str | None, done: Callable[[Sentinels], bool], what: str,
                 timeout: float = SENTINEL_TIMEOUT) -> Sentinels:
        return poll(lambda: self.read(marker), until=done, timeout=timeout, interval=POLL_INTERVAL, what=what)

    def sql_until(self, query: str, done: Callable[[str], bool], what: str,
                  timeout: float = SENTINEL_TIMEOUT, variables: dict[str, str] | None = None) -> str:
        return poll(lambda: self.sql(query, variables), until=done, timeout=timeout, interval=POLL_INTERVAL,
                    what=what)


# --- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings(deployed_stack) -> Settings:
    """The stack's validated settings, secrets included (secrets/local.env)."""
    return load_settings(deployed_stack.settings)


@pytest.fixture(scope="module")
def names(settings) -> Names:
    return Names(settings.domains.api_host, settings.domains.console_host)


@pytest.fixture(scope="module")
def edge(deployed_stack, names) -> Edge:
    acme = deployed_stack.acme
    root = fetch_root(acme.roots_url, acme.ca_pem_path_on_host, deployed_stack.workdir / "hostile-pebble-root.pem")
    return Edge(("127.0.0.1", deployed_stack.endpoint.https_port), names.api, root)


@pytest.fixture(scope="module")
def n8n(deployed_stack):
    """The sentinels, with the execution audit trigger installed for this module only."""
    side = N8nSide(deployed_stack)
    side.sql(AUDIT_INSTALL)
    yield side
    side.sql(AUDIT_REMOVE)


def new_marker(case: str) -> str:
    return f"hostile-{case}-{uuid.uuid4().hex[:8]}"


def verify_handshake(edge: Edge, settings: Settings, channel: str = "whatsapp") -> tuple[Answer, str]:
    challenge = f"control-{secrets.token_hex(6)}"
    query = urllib.parse.urlencode({"hub.mode": "subscribe", "hub.challenge": challenge,
                                    "hub.verify_token": settings.meta.verify_token.get_secret_value()})
    request = message(f"GET /v1/inbound/{channel}?{query} HTTP/1.1", edge.server_name, marker=challenge)
    return exchange(edge, request), challenge


def send_control(edge: Edge, settings: Settings) -> None:
    """The sentinel request: a valid verify handshake, which n8n must count once."""
    answer, challenge = verify_handshake(edge, settings)
    assert (answer.status, answer.text) == (200, challenge), (
        f"the control handshake failed ({answer.describe()}): the sentinels cannot prove anything")


def control_seen(before: Sentinels) -> Callable[[Sentinels], bool]:
    """True once one webhook request shows in every counter that counts it."""
    return lambda now: (now.nginx_forwards > before.nginx_forwards and now.client_executions > before.client_executions
                        and (now.n8n_requests > before.n8n_requests or not before.webhooks_counted))


def unseen_by_n8n(before: Sentinels, after: Sentinels) -> list[str]:
    """What moved beyond the one control handshake (empty: n8n never saw the hostile request).

    n8n counts the control in its request counter only when it counts webhook
    requests at all (test_n8n_counts_webhook_requests says whether it does).
    """
    moved = after.minus(before)
    wanted = {"n8n_requests": before.webhooks_counted, "client_executions": 1, "nginx_forwards": 1,
              "security_events": 0}
    problems = [f"{name} moved by {moved[name]}, the control alone accounts for {count}"
                for name, count in wanted.items() if moved[name] != count]
    if after.marked_events:
        problems.append(f"{after.marked_events} security_events row(s) hold the marker")
    return problems


def sign(body: bytes, settings: Settings) -> str:
    return meta_payloads.sign(body, settings.meta.app_secret.get_secret_value())


def whatsapp_body(settings: Settings, text: str) -> bytes:
    sender = settings.checks.test_recipients.get("whatsapp", "33600000099")
    return meta_payloads.encode(meta_payloads.whatsapp_text(
        text, sender=sender, phone_number_id=settings.meta.wa_phone_number_id))


# --- the precondition -----------------------------------------------------------------------


@pytest.mark.parametrize("service", ["n8n-main", "n8n-worker"])
def test_stage_runs_signature_mode_enforce(deployed_stack, service):
    """The gateway's 403 for unsigned POSTs exists only in enforce mode (harness/stage.py)."""
    mode = deployed_stack.ssh("docker", "exec", f"resto-{service}-1", "printenv", "META_SIGNATURE_REQUIRED").stdout
    assert (deployed_stack.settings["meta"]["signature_required"], mode.strip()) == ("enforce", "enforce")


# --- positive controls: each sentinel can move ------------------------------------------------

WEBHOOK_COUNTER_HINT = (
    "n8n does not count webhook requests: n8n 2.40.5 mounts its API-endpoint counter "
    "(N8N_METRICS_INCLUDE_API_ENDPOINTS) after the /webhook/* and /form/* routes (dist/abstract-server.js start() "
    "registers them before configure() mounts route-metrics), so only /rest/ and /api/ are counted there; webhook "
    "requests are counted in n8n_webhook_request_duration_seconds, with N8N_METRICS_INCLUDE_WEBHOOK_METRICS=true"
)


def test_n8n_counts_the_verify_handshake_in_its_request_counter(edge, settings, n8n):
    before = n8n.read()
    send_control(edge, settings)
    assert before.webhooks_counted, WEBHOOK_COUNTER_HINT
    after = n8n.wait_for(None, control_seen(before), "the handshake in n8n's counters")
    assert after.n8n_requests - before.n8n_requests == 1


def test_n8n_counts_a_console_rest_request_in_its_request_counter(edge, names, n8n):
    """This machine is inside the console allowlist (172.16.0.0/12): /rest/ there is n8n's own."""
    console = dataclasses.replace(edge, server_name=names.console)
    before = n8n.read()
    answer = exchange(console, message("GET /rest/settings HTTP/1.1", names.console, marker="control-rest"))
    assert answer.status == 200, answer.describe()
    after = n8n.wait_for(None, lambda now: now.n8n_requests > before.n8n_requests, "the REST request in n8n's counter")
    assert after.n8n_requests - before.n8n_requests == 1


def test_verify_handshake_starts_one_client_execution_through_the_gateway(edge, settings, n8n):
    before = n8n.read()
    send_control(edge, settings)
    moved = n8n.wait_for(None, control_seen(before), "the handshake in n8n's counters").minus(before)
    assert (moved["client_executions"], moved["nginx_forwards"], moved["security_events"]) == (1, 1, 0)


def test_n8n_writes_a_row_for_an_unsaved_execution_then_deletes_it(edge, settings, n8n):
    """Why the audit trigger counts executions: W0 saves nothing, yet its row is written (and later erased)."""
    last = n8n.sql("select coalesce(max(id), 0) from e2e_hostile_execution_audit")
    send_control(edge, settings)
    execution = n8n.sql_until("select min(id) from e2e_hostile_execution_audit "
                              "where id > :'last'::bigint and mode = 'webhook'",
                              lambda found: found != "", "the handshake's execution row", variables={"last": last})
    n8n.sql_until("select count(*) from execution_entity where id = :'id'::bigint", lambda count: count == "0",
                  f"execution {execution} (saved: none) erased from execution_entity", timeout=150,
                  variables={"id": execution})


def test_signed_post_moves_the_request_counter_and_starts_one_client_execution(edge, settings, n8n):
    body = whatsapp_body(settings, "Bonjour, quels sont vos horaires ?")
    before = n8n.read()
    answer = exchange(edge, message("POST /v1/inbound/whatsapp HTTP/1.1", edge.server_name, marker="control-signed",
                                    headers=["Content-Type: application/json",
                                             f"X-Hub-Signature-256: {sign(body, settings)}"], body=body))
    assert answer.status == 200, answer.describe()
    after = n8n.wait_for(None, control_seen(before), "the signed POST in n8n's counters")
    moved = after.minus(before)
    assert before.webhooks_counted, WEBHOOK_COUNTER_HINT
    assert (moved["n8n_requests"], moved["client_executions"], moved["security_events"]) == (1, 1, 0)


def signature_invalid_rows(n8n: N8nSide) -> int:
    return int(n8n.sql("select count(*) from security_events where event_type = 'SIGNATURE_INVALID'"))


def test_wrongly_signed_post_reaches_n8n_is_refused_and_recorded(edge, settings, n8n):
    body = whatsapp_body(settings, "wrong signature")
    signature = meta_payloads.sign(body, secrets.token_hex(16))
    before, invalid_before = n8n.read(), signature_invalid_rows(n8n)
    answer = exchange(edge, message("POST /v1/inbound/whatsapp HTTP/1.1", edge.server_name, marker="control-wrong",
                                    headers=["Content-Type: application/json", f"X-Hub-Signature-256: {signature}"],
                                    body=body))
    after = n8n.wait_for(None, lambda now: control_seen(before)(now) and now.security_events > before.security_events,
                         "the wrongly signed POST in n8n's counters and security_events")
    assert (answer.status, answer.text) == (403, FORBIDDEN)
    assert (after.client_executions - before.client_executions, signature_invalid_rows(n8n) - invalid_before) == (1, 1)


# --- hostile requests refused at the edge --------------------------------------------------------


@pytest.mark.parametrize("case", EDGE_CASES, ids=[case.id for case in EDGE_CASES])
def test_edge_refuses_it_and_n8n_never_sees_it(case, edge, settings, n8n, names):
    marker = new_marker(case.id)
    request = case.build(names, marker)
    before = n8n.read(marker)
    answer = exchange(edge, request, linger=case.linger)
    print(f"edge answer: {answer.describe()}")  # the table of answers: pytest -rA
    send_control(edge, settings)
    after = n8n.wait_for(marker, control_seen(before), "the control handshake in n8n's counters")
    problems = case.expect.problems(answer) + unseen_by_n8n(before, after)
    if answer.after:
        problems.append(f"a second answer came on the same connection: {answer.after[:200]!r}")
    assert not problems, (
        f"{case.id}: the edge answered {answer.describe()}\n  " + "\n  ".join(problems)
        + f"\nrequest (first 400 bytes): {request[:400]!r}")


# --- hostile parts of requests that n8n must see: without effect ----------------------------------


def event_of(n8n: N8nSide, marker: str) -> str:
    """'event_type|source_ip' of the security_events row holding ``marker`` (bounded wait)."""
    return n8n.sql_until("select event_type || '|' || coalesce(host(source_ip), '') from security_events e "
                         "where strpos(e::text, :'marker') > 0", lambda row: row != "",
                         f"a security_events row holding {marker}", variables={"marker": marker})


def recorded_refusal(edge: Edge, n8n: N8nSide, names: Names, case: str, *headers: str) -> tuple[Answer, str, str]:
    """A verify GET without a token (W0 refuses and records it): its answer, event type and source_ip."""
    marker = new_marker(case)
    answer = exchange(edge, message(f"GET /v1/inbound/whatsapp?{verify_query(marker)} HTTP/1.1", names.api,
                                    marker=marker, headers=headers))
    event_type, _, source_ip = event_of(n8n, marker).partition("|")
    return answer, event_type, source_ip


def test_client_probe_header_on_a_verify_get_is_not_honoured(edge, n8n, names):
    """GET passes the gateway: W0 must treat it as a stranger (403, recorded), not answer the deploy's probe."""
    answer, event_type, _ = recorded_refusal(edge, n8n, names, "probe-get", "X-Restobot-Probe: deploy")
    assert (answer.status, answer.text, event_type) == (403, "forbidden", "VERIFY_TOKEN_INVALID"), answer.describe()


def test_client_probe_header_on_an_empty_signed_looking_post_is_not_honoured(edge, n8n, names):
    """With a signature header the gateway lets it through: W1 must refuse it, not answer the deploy's probe."""
    before, invalid_before = n8n.read(), signature_invalid_rows(n8n)
    answer = exchange(edge, message("POST /v1/inbound/whatsapp HTTP/1.1", names.api, marker="probe-post", body=b"",
                                    headers=["X-Restobot-Probe: deploy", "X-Hub-Signature-256: sha256=" + "0" * 64]))
    n8n.wait_for(None, lambda now: now.security_events > before.security_events, "the refused POST in security_events")
    assert (answer.status, answer.text, signature_invalid_rows(n8n) - invalid_before) == (403, FORBIDDEN, 1)


SPOOFED = {
    "x-forwarded-for": ["X-Forwarded-For: 203.0.113.7"],
    "x-real-ip": ["X-Real-IP: 203.0.113.8"],
    "forwarded": ["Forwarded: for=203.0.113.9;proto=https"],
    "all-three": ["X-Real-IP: 203.0.113.10", "X-Forwarded-For: 203.0.113.11, 203.0.113.12",
                  "Forwarded: for=203.0.113.13"],
}


@pytest.fixture(scope="module")
def own_source_ip(edge, n8n, names) -> str:
    """The address n8n records for this machine when the request carries no forwarding header."""
    answer, event_type, source_ip = recorded_refusal(edge, n8n, names, "own-address")
    assert (answer.status, event_type) == (403, "VERIFY_TOKEN_INVALID") and source_ip, answer.describe()
    return source_ip


@pytest.mark.parametrize("spoof", sorted(SPOOFED))
def test_client_forwarding_headers_do_not_set_the_recorded_source_ip(spoof, edge, n8n, names, own_source_ip):
    answer, event_type, source_ip = recorded_refusal(edge, n8n, names, f"spoof-{spoof}", *SPOOFED[spoof])
    assert (answer.status, event_type, source_ip) == (403, "VERIFY_TOKEN_INVALID", own_source_ip), (
        f"{answer.describe()}, recorded {event_type} from {source_ip!r}; spoofed {SPOOFED[spoof]}")


# --- what the edge normalises: the same request as a plain one, treated as such ------------------


def test_percent_encoded_letter_is_the_plain_route(edge, n8n, names):
    """RFC 3986: %61 is "a". Traefik decodes unreserved characters, so this is the verify route itself:
    W0 answers it as any verify without a token (403, recorded), nothing more."""
    marker = new_marker("encoded-letter")
    answer = exchange(edge, message(f"GET /v1/inbound/whats%61pp?{verify_query(marker)} HTTP/1.1", names.api,
                                    marker=marker))
    event_type, _, _ = event_of(n8n, marker).partition("|")
    assert (answer.status, answer.text, event_type) == (403, "forbidden", "VERIFY_TOKEN_INVALID"), answer.describe()


def test_bare_lf_inside_a_header_is_a_header_of_its_own(edge, n8n, names):
    """RFC 9112 lets a server end a header line at a bare LF; Traefik does, and re-writes the headers
    cleanly (no desync). What follows the LF is then a (wrong) signature header: W1 refuses and records it."""
    before, invalid_before = n8n.read(), signature_invalid_rows(n8n)
    answer = exchange(edge, message("POST /v1/inbound/whatsapp HTTP/1.1", names.api, marker="bare-lf", body=b"{}",
                                    user_agent=f"hostile bare-lf\nX-Hub-Signature-256: sha256={'0' * 64}"))
    n8n.wait_for(None, lambda now: now.security_events > before.security_events, "the refused POST in security_events")
    assert (answer.status, answer.text, signature_invalid_rows(n8n) - invalid_before) == (403, FORBIDDEN, 1)
