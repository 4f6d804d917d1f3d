"""Staging: a second VPS that receives `develop` before production gets `main`."""

from restobot.hosts import vps

SETTINGS = {
    "stage": "staging",
    "ssh": {
        "host": "203.0.113.20",
        "user": "root",
        # The VPS's SSH host key, pinned: an unknown or changed key stops the deploy
        # before anything is sent. This one is a THROWAWAY example key (no real host
        # has it): replace it with your VPS's key, recorded on purpose with
        # `ssh-keyscan -t ed25519 203.0.113.20` and its fingerprint checked against the
        # provider's console. Or leave it out and give the CI secret
        # SSH_KNOWN_HOSTS (known_hosts lines) instead. A public key is not a secret.
        "host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJuh+gzCgRpvPSKLFtLS0xll0landin0VR0B95o12WGn",
    },
    "domains": {"domain": "staging.resto.example.com"},
    "acme": {
        "email": "ops@resto.example.com",
        # Let's Encrypt's staging directory: no rate limits, untrusted chain.
        "directory_url": "https://acme-staging-v02.api.letsencrypt.org/directory",
    },
    "meta": {
        "signature_required": "enforce",
        "wa_phone_number_id": "100000000000011",
    },
    "restaurant": {
        "name": "Chez Resto (staging)",
        "address": "1 rue de l'Exemple, 75001 Paris",
        "hours": "Tue-Sat 12:00-14:30, 19:00-22:30",
        "menu_url": "https://staging.resto.example.com/menu",
    },
    "database": {},
    "n8n": {"owner_email": "owner@resto.example.com"},
    "redis": {},
    "admin": {},
    "console": {"ip_allowlist": ["198.51.100.0/24"]},
    "host": {"docker_source": "docker", "compose_plugin": "docker-repository"},
}

staging = [vps(SETTINGS, name="resto-staging")]
