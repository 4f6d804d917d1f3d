"""Versions pinned in one place: the production image tags and the local test
images both read them from here."""

N8N_VERSION = "2.40.5"
POSTGRES_MAJOR = 17
TRAEFIK_VERSION = "3.7.15"
