"""The go-live checklist: run the suite in ``checks/`` against a stage and print a report.

The runbook's "Checklist Go-Live", its healthchecks and the host's hardening,
as pytest-testinfra checks run from the operator's machine (or CI) against the
hosts of a stage's inventory: the very file the deploy uses, so there is no
second list of hosts or secrets. Each item passes, fails with its reason, or
is ``manual`` (pytest skip whose reason starts with ``manual:``): something a
human must confirm, never counted as a pass.

    python -m restobot.golive --inventory inventory/production.py
    python -m restobot.golive --inventory inventory/production.py --junit reports/checks.xml
    python -m restobot.golive --inventory inventory/staging.py -k tls   # a subset

Exit status: 0 when every item passed (manual items listed), 1 when any failed
or errored, 2 when none ran; ``--strict-manual`` also exits 1 on manual items.

This module also holds the checks' pure parts (parsers of ``ufw status``,
``sshd -T``, ``ss``; TLS and HTTP probes that connect to an override address
like ``curl --connect-to``), unit-tested by value in tests/unit/test_golive.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import ipaddress
import json
import os
import re
import runpy
import shlex
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKS_DIR = REPO_ROOT / "checks"
MANUAL_PREFIX = "manual:"

# The runbook's monitoring table: the alert thresholds the settings may not exceed.
RUNBOOK_THRESHOLDS: dict[str, int] = {
    "cpu_percent": 80,
    "memory_percent": 85,
    "disk_percent": 90,
    "redis_queue_length": 1000,
    "errors_per_hour": 10,
}

# The runbook's recommended alerts -> the Prometheus rules (templates/monitoring/alerts.yml.j2) that raise them.
RUNBOOK_ALERT_RULES: dict[str, tuple[str, ...]] = {
    "container-down": ("RestobotContainerDown",),
    "healthcheck-fail": ("RestobotContainerUnhealthy", "RestobotPublicProbeFailing"),
    "signature-errors": ("RestobotSignatureErrors",),
    "rate-limit": ("RestobotRateLimitExcessive",),
    "disk": ("RestobotDiskFull",),
}
# Alertmanager's one receiver (templates/monitoring/alertmanager.yml.j2) and its config key per format.
ALERT_RECEIVER = "alert-destination"
RECEIVER_CONFIGS = {"webhook": ("webhook_configs", "url"), "slack": ("slack_configs", "api_url"),
                    "discord": ("discord_configs", "webhook_url")}

# --- inventory ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InventoryHost:
    """One host of an inventory file: its name and pyinfra data (``resto`` is the settings tree)."""

    name: str
    data: Mapping[str, Any]


def inventory_hosts(namespace: Mapping[str, Any]) -> list[InventoryHost]:
    """The hosts of an executed inventory file: every group list of ``(name, data)`` holding ``resto``."""
    hosts: list[InventoryHost] = []
    seen: set[str] = set()
    for key, value in namespace.items():
        if key.startswith("_") or not isinstance(value, list):
            continue
        for entry in value:
            if (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], Mapping) and "resto" in entry[1] and entry[0] not in seen):
                seen.add(entry[0])
                hosts.append(InventoryHost(entry[0], entry[1]))
    return hosts


def load_inventory_file(path: Path) -> list[InventoryHost]:
    """Execute a pyinfra inventory file as pyinfra does and return its hosts."""
    if not path.is_file():
        raise SystemExit(f"--inventory: {path} is not a file (e.g. inventory/production.py)")
    hosts = inventory_hosts(runpy.run_path(str(path)))
    if not hosts:
        raise SystemExit(f"--inventory: {path} defines no host made with restobot.hosts.vps(SETTINGS)")
    return hosts


def connect(data: Mapping[str, Any]):
    """A testinfra host over paramiko, the host key checked against the inventory's known_hosts file."""
    import paramiko
    import testinfra

    user, hostname, port = data.get("ssh_user", "root"), data["ssh_hostname"], int(data.get("ssh_port", 22))
    spec = f"paramiko://{user}@{hostname}:{port}"
    if data.get("ssh_key"):
        spec += f"?ssh_identity_file={data['ssh_key']}"
    host = testinfra.get_host(spec)
    client = paramiko.SSHClient()
    client.load_system_host_keys()
    if data.get("ssh_known_hosts_file"):
        client.load_host_keys(str(data["ssh_known_hosts_file"]))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(hostname=hostname, port=port, username=user, key_filename=data.get("ssh_key"),
                   timeout=10, allow_agent=not data.get("ssh_key"), look_for_keys=not data.get("ssh_key"))
    host.backend.__dict__["client"] = client  # testinfra's cached_property, now strict on host keys
    return host


def run_with_stdin(host, command: str, data: bytes, timeout: float = 60) -> tuple[int, bytes, bytes]:
    """Run ``command`` on a testinfra paramiko host with ``data`` on its stdin (secrets never in argv)."""
    channel = host.backend.client.get_transport().open_session()
    channel.settimeout(timeout)
    channel.exec_command(command)
    channel.sendall(data)
    channel.shutdown_write()
    stdout = b"".join(iter(lambda: channel.recv(65536), b""))
    stderr = b"".join(iter(lambda: channel.recv_stderr(65536), b""))
    return channel.recv_exit_status(), stdout, stderr


# --- HTTP and TLS from outside ------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"`` -> ``("127.0.0.1", 8443)``; ``"[::1]:443"`` -> ``("::1", 443)``."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


@dataclasses.dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    tls_version: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def tls_context(ca_bundle: Path | None, *, verify: bool = True) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Connection(http.client.HTTPSConnection):
    """HTTPS (or plain HTTP when ``context`` is None) to ``name`` through ``address`` (curl --connect-to)."""

    def __init__(self, name: str, address: tuple[str, int], context: ssl.SSLContext | None, timeout: float):
        super().__init__(name, address[1], timeout=timeout, context=context or ssl.create_default_context())
        self._address = address
        self._tls = context is not None
        self.tls_version: str | None = None

    def connect(self) -> None:
        self.sock = socket.create_connection(self._address, self.timeout)
        if self._tls:
            self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)
            self.tls_version = self.sock.version()


def http_request(name: str, path: str, *, address: tuple[str, int], tls: bool = True, method: str = "GET",
                 body: bytes | None = None, headers: Mapping[str, str] | None = None,
                 ca_bundle: Path | None = None, verify: bool = True, timeout: float = 5.0) -> Response:
    """One request to ``https://name/path`` (or http) sent to ``address``; redirects are not followed."""
    connection = _Connection(name, address, tls_context(ca_bundle, verify=verify) if tls else None, timeout)
    try:
        connection.request(method, path, body=body, headers={"Host": name, "Connection": "close", **(headers or {})})
        answer = connection.getresponse()
        return Response(answer.status, {key.lower(): value for key, value in answer.getheaders()},
                        answer.read(), connection.tls_version)
    finally:
        connection.close()


@dataclasses.dataclass(frozen=True)
class Certificate:
    """What the TLS handshake with one public name showed."""

    verified: bool
    error: str | None
    not_after: datetime.datetime | None
    subject_names: tuple[str, ...]
    tls_version: str | None

    def days_left(self, now: datetime.datetime) -> float | None:
        return None if self.not_after is None else (self.not_after - now).total_seconds() / 86400


def _peer_certificate(name: str, address: tuple[str, int], context: ssl.SSLContext, timeout: float):
    with socket.create_connection(address, timeout) as raw, context.wrap_socket(raw, server_hostname=name) as tls:
        return tls.getpeercert(binary_form=True), tls.version()


def inspect_certificate(name: str, address: tuple[str, int], ca_bundle: Path | None,
                        timeout: float = 5.0) -> Certificate:
    """Handshake with ``name`` at ``address``: is the chain valid for the name, and until when."""
    from cryptography import x509

    error = None
    try:
        der, version = _peer_certificate(name, address, tls_context(ca_bundle), timeout)
        verified = True
    except ssl.SSLCertVerificationError as failure:
        verified, error = False, failure.verify_message or str(failure)
        der, version = _peer_certificate(name, address, tls_context(None, verify=False), timeout)
    certificate = x509.load_der_x509_certificate(der)
    try:
        sans = tuple(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
                     .value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        sans = ()
    return Certificate(verified, error, certificate.not_valid_after_utc, sans, version)


def legacy_tls_refused(name: str, address: tuple[str, int], timeout: float = 5.0) -> tuple[bool, str]:
    """Offer only TLS 1.0/1.1: True when the SERVER refuses (an alert), False when it accepts.

    A refusal by this machine's own OpenSSL (no legacy protocol available) is
    not a server refusal: it raises, so the check errors instead of passing.
    """
    import warnings

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(address, timeout) as raw:
        try:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                return False, f"server accepted {tls.version()}"
        except ssl.SSLError as error:
            reason = error.reason or str(error)
            if "ALERT" in reason.upper() or "WRONG_VERSION" in reason.upper() or "UNSUPPORTED_PROTOCOL" in reason.upper():
                return True, f"server refused: {reason}"
            raise RuntimeError(f"this machine cannot offer TLS 1.0/1.1 ({reason}): the check proves nothing") from error


def port_open(address: str, port: int, timeout: float = 1.5) -> bool:
    """True when a TCP connection to ``address:port`` is accepted within ``timeout``."""
    try:
        with socket.create_connection((address, port), timeout):
            return True
    except OSError:
        return False


def hsts_max_age(value: str | None) -> int | None:
    """The max-age of a Strict-Transport-Security header (None when absent or without one)."""
    if not value:
        return None
    match = re.search(r"max-age\s*=\s*\"?(\d+)", value, re.IGNORECASE)
    return int(match.group(1)) if match else None


# --- host outputs -------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class UfwStatus:
    active: bool
    default_incoming: str | None
    allowed: frozenset[str]  # "22/tcp", "80/tcp"... (v6 duplicates folded)


def parse_ufw_status(text: str) -> UfwStatus:
    """Parse ``ufw status verbose``."""
    active = bool(re.search(r"^Status:\s*active\s*$", text, re.MULTILINE))
    default = re.search(r"^Default:\s*(\w+)\s*\(incoming\)", text, re.MULTILINE)
    allowed: set[str] = set()
    for line in text.splitlines():
        match = re.match(r"^(\S+)(?:\s+\(v6\))?\s+(ALLOW|LIMIT)(?:\s+IN)?\s+", line)
        if match:
            allowed.add(match.group(1) if "/" in match.group(1) else f"{match.group(1)}/any")
    return UfwStatus(active, default.group(1) if default else None, frozenset(allowed))


def allowed_ports(status: UfwStatus) -> set[int]:
    ports: set[int] = set()
    for rule in status.allowed:
        spec = rule.split("/")[0]
        for part in spec.split(","):
            if ":" in part:
                low, high = (int(bound) for bound in part.split(":"))
                ports.update(range(low, high + 1))
            elif part.isdigit():
                ports.add(int(part))
    return ports


def parse_sshd_t(text: str) -> dict[str, str]:
    """``sshd -T`` output -> {keyword: value} (lower-case keywords, first value wins)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key.lower() not in values:
            values[key.lower()] = value.strip()
    return values


# sshd -T prints the historical alias of prohibit-password.
SSHD_ALIASES = {"without-password": "prohibit-password"}


def sshd_value(values: Mapping[str, str], key: str) -> str | None:
    value = values.get(key)
    return SSHD_ALIASES.get(value, value) if value is not None else None


def parse_listeners(ss_output: str) -> set[tuple[str, int]]:
    """``ss -Hltn`` -> {(local address, port)}."""
    listeners: set[tuple[str, int]] = set()
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        local = fields[3]
        address, _, port = local.rpartition(":")
        if port.isdigit():
            listeners.add((address.strip("[]").split("%")[0], int(port)))
    return listeners


def external_listener_ports(listeners: Iterable[tuple[str, int]]) -> set[int]:
    """Ports listened on by something other than loopback (0.0.0.0, ::, a real address)."""
    ports = set()
    for address, port in listeners:
        try:
            if ipaddress.ip_address(address).is_loopback:
                continue
        except ValueError:
            pass  # "*"
        ports.add(port)
    return ports


def published_ports(docker_ps: str) -> dict[str, list[str]]:
    """``docker ps --format '{{.Names}}\\t{{.Ports}}'`` -> {container: ["0.0.0.0:80->80/tcp", ...]} (published only)."""
    published: dict[str, list[str]] = {}
    for line in docker_ps.splitlines():
        name, _, ports = line.partition("\t")
        bound = [part.strip() for part in ports.split(",") if "->" in part]
        if name and bound:
            published[name.strip()] = bound
    return published


def beyond_loopback(published: dict[str, list[str]]) -> dict[str, list[str]]:
    """The published ports bound to an address other than the VPS's loopback (``127.0.0.1:9090->...`` is not)."""
    beyond = {name: [entry for entry in entries if not entry.startswith(("127.0.0.1:", "[::1]:"))]
              for name, entries in published.items()}
    return {name: entries for name, entries in beyond.items() if entries}


def loaded_alert_rules(rules_api: str) -> dict[str, str]:
    """Prometheus's ``/api/v1/rules`` answer -> {alert name: its health ("ok", "err", "unknown")}."""
    data = json.loads(rules_api)
    return {rule["name"]: rule.get("health", "unknown")
            for group in data.get("data", {}).get("groups", []) for rule in group.get("rules", [])
            if rule.get("type") == "alerting"}


def scrape_targets(targets_api: str) -> dict[str, str]:
    """Prometheus's ``/api/v1/targets`` answer -> {"job instance": its health ("up", "down", "unknown")}."""
    data = json.loads(targets_api)
    return {f"{target.get('labels', {}).get('job', '?')} {target.get('labels', {}).get('instance', '?')}":
            target.get("health", "unknown") for target in data.get("data", {}).get("activeTargets", [])}


def routed_receivers(amtool_output: str) -> list[str]:
    """``amtool config routes test`` output (``alert-destination``, or several comma-separated) -> names."""
    return [name.strip() for name in amtool_output.strip().split(",") if name.strip()]


def receiver_urls(alertmanager_yml: str, receiver: str, alert_format: str) -> list[str]:
    """The destination URLs the ``receiver`` of an alertmanager.yml posts to in ``alert_format``'s receiver."""
    key, field = RECEIVER_CONFIGS[alert_format]
    config = yaml.safe_load(alertmanager_yml) or {}
    [wanted] = [item for item in config.get("receivers", []) if item.get("name") == receiver] or [{}]
    return [str(entry.get(field)) for entry in wanted.get(key) or [] if entry.get("send_resolved")]


def addresses_outside(allowlist: Sequence[str], addresses: Iterable[str]) -> list[str]:
    """The IPv4 addresses not in any allowlisted network (loopback excluded), in the given order."""
    networks = [ipaddress.ip_network(entry) for entry in allowlist]
    outside = []
    for text in addresses:
        address = ipaddress.ip_address(text)
        if address.version == 4 and not address.is_loopback and not any(address in net for net in networks):
            outside.append(text)
    return outside


def parse_ip_addr(text: str) -> list[str]:
    """``ip -o -4 addr`` -> addresses (without prefix length)."""
    return re.findall(r"\binet\s+(\d+\.\d+\.\d+\.\d+)/\d+", text)


# --- the report ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Row:
    item: str
    outcome: str  # pass | FAIL | ERROR | manual | skip
    reason: str
    seconds: float = 0.0


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip()
        if line:
            return re.sub(r"^(AssertionError|Failed): ", "", line)
    return ""


def item_name(classname: str, name: str) -> str:
    """``checks.test_edge`` + ``test_healthz_answers_ok[e2e-vps]`` -> ``edge: healthz answers ok [e2e-vps]``."""
    module = classname.rsplit(".", 1)[-1].removeprefix("test_")
    base, _, params = name.partition("[")
    words = base.removeprefix("test_").replace("_", " ")
    return f"{module}: {words}" + (f" [{params.rstrip(']')}]" if params else "")


def rows_from_junit(path: Path) -> list[Row]:
    """One row per test case of a JUnit XML report."""
    rows = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = item_name(case.get("classname", ""), case.get("name", ""))
        seconds = float(case.get("time", "0") or 0)
        evidence = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        failure, error, skipped = case.find("failure"), case.find("error"), case.find("skipped")
        if failure is not None:
            rows.append(Row(name, "FAIL", _first_line(failure.get("message")) or _first_line(failure.text), seconds))
        elif error is not None:
            rows.append(Row(name, "ERROR", _first_line(error.get("message")) or _first_line(error.text), seconds))
        elif skipped is not None:
            message = (skipped.get("message") or "").strip()
            if MANUAL_PREFIX in message:
                reason = message[message.index(MANUAL_PREFIX) + len(MANUAL_PREFIX):].strip()
                rows.append(Row(name, "manual", reason, seconds))
            else:
                rows.append(Row(name, "skip", message, seconds))
        else:
            rows.append(Row(name, "pass", evidence.get("evidence", ""), seconds))
    return rows


def exit_status(rows: Sequence[Row], *, strict_manual: bool = False) -> int:
    if not rows:
        return 2
    bad = {"FAIL", "ERROR", "skip"} | ({"manual"} if strict_manual else set())
    return 1 if any(row.outcome in bad for row in rows) else 0


def format_table(rows: Sequence[Row], width: int = 100) -> str:
    """The operator's report: item, outcome, reason; failures first, then manual, then passes."""
    order = {"FAIL": 0, "ERROR": 0, "skip": 1, "manual": 2, "pass": 3}
    ordered = sorted(rows, key=lambda row: (order.get(row.outcome, 9), row.item))
    item_width = min(max((len(row.item) for row in rows), default=4), 70)
    lines = [f"{'ITEM':<{item_width}}  {'RESULT':<6}  REASON", f"{'-' * item_width}  ------  {'-' * 40}"]
    for row in ordered:
        reason = row.reason if len(row.reason) <= width else row.reason[: width - 3] + "..."
        lines.append(f"{row.item:<{item_width}}  {row.outcome:<6}  {reason}")
    counts = {outcome: sum(1 for row in rows if row.outcome == outcome)
              for outcome in ("pass", "FAIL", "ERROR", "manual", "skip")}
    summary = ", ".join(f"{count} {outcome.lower()}" for outcome, count in counts.items() if count)
    lines.append("")
    lines.append(f"{len(rows)} items: {summary}" + (" (manual items are NOT passes: a human must confirm them)"
                                                     if counts["manual"] else ""))
    return "\n".join(lines)


META_CHECKS = "test_meta.py"
"""The checklist's Meta items (webhook handshakes, signatures, a signed message answered): ``smoke --meta``."""


class ChecklistNotRun(RuntimeError):
    """pytest wrote no report: the checks did not run (the message says how it was called)."""


def pytest_argv(inventory: Path, junit: Path, *, workers: int, select: str | None,
                extra: Sequence[str] = (), modules: Sequence[str] = ()) -> list[str]:
    paths = [str(CHECKS_DIR / module) for module in modules] or [str(CHECKS_DIR)]
    argv = [sys.executable, "-m", "pytest", *paths, "-c", str(CHECKS_DIR / "pytest.ini"),
            "--rootdir", str(CHECKS_DIR), "--inventory", str(inventory), f"--junitxml={junit}",
            "-p", "no:cacheprovider", "-q", "--no-header", "-rN", "--tb=no"]
    if workers > 0:
        argv += ["-n", str(workers)]
    if select:
        argv += ["-k", select]
    return [*argv, *extra]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m restobot.golive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inventory", required=True, type=Path,
                        help="the stage's pyinfra inventory, the one the deploy uses (inventory/production.py)")
    parser.add_argument("--junit", type=Path, help="also write the JUnit XML report there (for CI)")
    parser.add_argument("--workers", type=int, default=int(os.environ.get("RESTOBOT_CHECK_WORKERS", "4")),
                        help="checks run in parallel by this many pytest-xdist workers (0: in this process order)")
    parser.add_argument("-k", dest="select", help="only the items matching this pytest -k expression")
    parser.add_argument("--strict-manual", action="store_true", help="exit 1 while any item is manual")
    parser.add_argument("--verbose", action="store_true", help="also print pytest's own output")
    args, extra = parser.parse_known_args(argv)

    started = time.monotonic()
    try:
        rows = run_checklist(args.inventory, junit=args.junit, workers=args.workers, select=args.select,
                             extra=extra, verbose=args.verbose)
    except ChecklistNotRun as error:
        print(error, file=sys.stderr)
        return 2
    print(format_table(rows))
    print(f"checklist wall time: {time.monotonic() - started:.1f} s")
    return exit_status(rows, strict_manual=args.strict_manual)


def run_checklist(inventory: Path, *, junit: Path | None = None, workers: int = 4, select: str | None = None,
                  extra: Sequence[str] = (), modules: Sequence[str] = (), verbose: bool = False) -> list[Row]:
    """Run the checklist's items (all, or those of ``modules`` of checks/) against the inventory's host;
    one row per item. Raises ChecklistNotRun when pytest wrote no report."""
    if not CHECKS_DIR.is_dir():
        raise ChecklistNotRun(f"the checklist is not here ({CHECKS_DIR} is missing): run it from a checkout "
                              "of the project, the one the deploy runs from")
    with tempfile.TemporaryDirectory(prefix="restobot-checks-") as scratch:
        report = junit or Path(scratch) / "checks.xml"
        report.parent.mkdir(parents=True, exist_ok=True)
        command = pytest_argv(inventory.resolve(), report.resolve(), workers=workers, select=select,
                              extra=extra, modules=modules)
        proc = subprocess.run(command, cwd=REPO_ROOT, text=True, capture_output=True)
        if verbose or not report.exists():
            print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n", file=sys.stderr)
        if not report.exists():
            raise ChecklistNotRun(f"the checks did not run (pytest exited {proc.returncode}): {shlex.join(command)}")
        return rows_from_junit(report)


if __name__ == "__main__":
    sys.exit(main())
