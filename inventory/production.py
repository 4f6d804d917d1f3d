"""Production: the Hostinger VPS that serves the restaurant's customers.

Secrets are not here: export them (META_APP_SECRET, ...) or write them to the
git-ignored secrets/production.env (see README.md).
"""

from restobot.hosts import vps

SETTINGS = {
    "stage": "production",
    "ssh": {
        "host": "203.0.113.10",
        "user": "root",
        # The VPS's SSH host key, pinned: an unknown or changed key stops the deploy
        # before anything is sent. This one is a THROWAWAY example key (no real host
        # has it): replace it with your VPS's key, recorded on purpose with
        # `ssh-keyscan -t ed25519 203.0.113.10` and its fingerprint checked against the
        # provider's console. Or leave it out and give the CI secret
        # SSH_KNOWN_HOSTS (known_hosts lines) instead. A public key is not a secret.
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIEwTIAkrLil+gGv3t3cKkjfxOaU4E/sUqu935MZGZmc",
    },
    "domains": {"domain": "resto.example.com"},
    "acme": {"email": "ops@resto.example.com"},
    "meta": {
        "signature_required": "enforce",
        "wa_phone_number_id": "100000000000001",
        "ig_account_id": "17841400000000001",
        "msg_page_id": "100000000000002",
    },
    "restaurant": {
        "name": "Chez Resto",
        "address": "1 rue de l'Exemple, 75001 Paris",
        "hours": "Tue-Sat 12:00-14:30, 19:00-22:30",
        "menu_url": "https://resto.example.com/menu",
        "default_locale": "fr",
    },
    "database": {"name": "n8n", "user": "n8n"},
    "n8n": {"owner_email": "owner@resto.example.com"},
    "redis": {},
    "admin": {},
    "console": {"ip_allowlist": ["198.51.100.7/32"]},
    "pipeline": {
        "alert_webhook_url": "https://hooks.example.com/resto-alerts",
        # A reply whose worker died between Meta's answer and its record, and for which Meta posted no
        # status within its lease: send it again (the customer may get it twice) or "park" it in the DLQ
        # (the customer may get none until a dlq replay).
        "on_uncertain_send": "resend",
    },
    # Docker's own repository: a current engine and the compose v2 plugin.
    "host": {"docker_source": "docker", "compose_plugin": "docker-repository"},
}

production = [vps(SETTINGS, name="resto-prod")]
