"""What a client on the internet sees: TLS, headers, redirects, smoke tests, the console allowlist.

Made from the operator's machine through the public names (or the
``checks.public_address`` override where the names do not resolve).
"""

from __future__ import annotations

import datetime
import shlex

import pytest
from conftest import NAMES, manual

from restobot import golive

pytestmark = pytest.mark.outside

HSTS_MIN_SECONDS = 31_536_000  # one year (FIELD_NOTES.md)


def _path(which: str) -> str:
    return "/healthz" if which == "api" else "/"


@pytest.mark.parametrize("which", NAMES)
def test_certificate_chain_is_valid_for_the_name(target, which, evidence):
    name = target.public_name(which)
    cert = golive.inspect_certificate(name, target.address_for(which), target.settings.checks.ca_bundle)
    assert cert.verified, f"{name}: chain does not verify: {cert.error} (SANs {', '.join(cert.subject_names)})"
    assert name in cert.subject_names, f"{name} is not among the certificate's SANs {cert.subject_names}"
    evidence(f"verified, SANs {', '.join(cert.subject_names)}")


@pytest.mark.parametrize("which", NAMES)
def test_certificate_is_not_expiring_soon(target, which, evidence):
    name = target.public_name(which)
    minimum = target.settings.monitoring.certificate_min_days
    cert = golive.inspect_certificate(name, target.address_for(which), target.settings.checks.ca_bundle)
    days = cert.days_left(datetime.datetime.now(datetime.timezone.utc))
    assert days is not None and days >= minimum, (
        f"{name}: certificate expires {cert.not_after:%Y-%m-%d %H:%M} UTC, in {days:.1f} days "
        f"(< {minimum}); check Traefik's ACME renewal"
    )
    evidence(f"expires {cert.not_after:%Y-%m-%d} ({days:.0f} days left)")


@pytest.mark.parametrize("which", NAMES)
def test_tls_below_1_2_is_refused(target, which, evidence):
    refused, detail = golive.legacy_tls_refused(target.public_name(which), target.address_for(which))
    assert refused, f"{target.public_name(which)}: {detail} (minVersion must be TLS 1.2)"
    evidence(detail)


@pytest.mark.parametrize("which", NAMES)
def test_hsts_is_set_for_at_least_a_year(target, which, evidence):
    answer = target.request(which, _path(which))
    value = answer.header("strict-transport-security")
    age = golive.hsts_max_age(value)
    assert age is not None and age >= HSTS_MIN_SECONDS, (
        f"https://{target.public_name(which)}{_path(which)} answered {answer.status} with "
        f"Strict-Transport-Security {value!r} (want max-age >= {HSTS_MIN_SECONDS})"
    )
    evidence(f"Strict-Transport-Security: {value}")


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}


@pytest.mark.parametrize("header", sorted(SECURITY_HEADERS))
@pytest.mark.parametrize("which", NAMES)
def test_security_header_is_set(target, which, header, evidence):
    answer = target.request(which, _path(which))
    value = answer.header(header)
    assert value is not None and value.lower() == SECURITY_HEADERS[header].lower(), (
        f"https://{target.public_name(which)}{_path(which)}: {header} is {value!r}, "
        f"want {SECURITY_HEADERS[header]!r}"
    )
    evidence(f"{header}: {value}")


@pytest.mark.parametrize("which", NAMES)
def test_referrer_policy_is_set(target, which, evidence):
    value = target.request(which, _path(which)).header("referrer-policy")
    assert value, f"https://{target.public_name(which)}{_path(which)} sends no Referrer-Policy"
    evidence(f"Referrer-Policy: {value}")


@pytest.mark.parametrize("which", NAMES)
def test_no_server_version_is_disclosed(target, which, evidence):
    answer = target.request(which, _path(which))
    leaks = {name: answer.header(name) for name in ("server", "x-powered-by") if answer.header(name)}
    assert not leaks, f"https://{target.public_name(which)}{_path(which)} discloses {leaks}"
    evidence("no Server / X-Powered-By header")


@pytest.mark.parametrize("which", NAMES)
def test_http_redirects_to_https(target, which, evidence):
    answer = target.request(which, _path(which), tls=False)
    location = answer.header("location") or ""
    want = f"https://{target.public_name(which)}"
    assert answer.status in (301, 308) and location.startswith(want), (
        f"http://{target.public_name(which)}{_path(which)} answered {answer.status} Location {location!r} "
        f"(want a permanent redirect to {want})"
    )
    evidence(f"{answer.status} -> {location}")


def test_healthz_answers_ok(target, evidence):
    answer = target.request("api", "/healthz")
    assert (answer.status, answer.text.strip()) == (200, "ok"), (
        f"https://{target.public_name('api')}/healthz answered {answer.status} {answer.text[:80]!r}"
    )
    evidence("200 ok")


def test_console_shows_its_login_page(target, evidence):
    answer = target.request("console", "/")
    assert answer.status == 200, (
        f"https://{target.public_name('console')}/ answered {answer.status} {answer.text[:80]!r}"
        + (" (is this machine's address in console.ip_allowlist?)" if answer.status == 403 else "")
    )
    assert "<title>n8n" in answer.text or "n8n.io" in answer.text, (
        f"https://{target.public_name('console')}/ answered 200 but not n8n's page: {answer.text[:120]!r}"
    )
    evidence("200, n8n's editor/login page")


def test_console_refuses_an_address_outside_the_allowlist(target, evidence):
    """From an address of the VPS outside console.ip_allowlist, through Traefik's published 443.

    The VPS connects to its own address with that address as source: Docker's
    DNAT hands the connection to Traefik with the source unchanged, exactly
    as a client from that address on the internet would arrive.
    """
    allowlist = target.settings.console.ip_allowlist
    addresses = golive.parse_ip_addr(target.run("ip", "-o", "-4", "addr", "show").stdout)
    outside = golive.addresses_outside(allowlist, addresses)
    if not outside:
        manual(f"every address of the VPS ({', '.join(addresses)}) is in the allowlist: from a network outside "
               f"{', '.join(allowlist)}, open https://{target.public_name('console')}/ and confirm a 403")
    source = outside[0]
    name = target.public_name("console")
    result = target.host.run(shlex.join([
        "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "--interface", source,
        "--connect-to", f"{name}:443:{source}:443", f"https://{name}/",
    ]))
    assert result.stdout.strip() == "403", (
        f"console answered {result.stdout.strip() or 'nothing'} to {source}, outside {', '.join(allowlist)} "
        f"(want 403){': ' + result.stderr.strip()[-200:] if result.rc else ''}"
    )
    evidence(f"403 from {source} (outside {', '.join(allowlist)})")
