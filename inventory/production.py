"""Production: the Hostinger VPS that serves the restaurant's customers.

Secrets are not here: export them (META_APP_SECRET, ...) or write them to the
git-ignored secrets/production.env (see README.md).
"""

from restobot.inventory import vps

SETTINGS = {
    "stage": "production",
    "ssh": {"host": "203.0.113.10", "user": "root"},
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
    "n8n": {},
    "admin": {},
    "console": {"ip_allowlist": ["198.51.100.7/32"]},
    "pipeline": {"alert_webhook_url": "https://hooks.example.com/resto-alerts"},
    # Docker's own repository: a current engine and the compose v2 plugin.
    "host": {"docker_source": "docker", "compose_plugin": "docker-repository"},
}

production = [vps(SETTINGS, name="resto-prod")]
