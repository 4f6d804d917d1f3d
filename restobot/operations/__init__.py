"""pyinfra operations and deploys of the Resto Bot stack, usable in a pyinfra deploy of your own.

Each is named for the state it ensures, reads facts, and does nothing when that
state already holds (see examples/pyinfra_deploy.py)::

    from restobot.operations import compose_plugin_uploaded, firewall_default_deny

    firewall_default_deny(name="Ensure the firewall denies all but SSH and HTTPS", allowed_tcp_ports=[22, 443])
"""

from restobot.operations.backup import backups_scheduled, offsite_stanza_created
from restobot.operations.cleanup import cleanup_scheduled
from restobot.operations.database import api_client_present, database_backed_up, schema_migrated
from restobot.operations.images import images_present, migrate_image_built, postgres_image_built
from restobot.operations.provision import (
    compose_plugin_uploaded,
    firewall_default_deny,
    host_provisioned,
    swap_file_active,
)
from restobot.operations.release import release_unpacked, releases_pruned
from restobot.operations.stack import release_serving

__all__ = [
    "api_client_present",
    "backups_scheduled",
    "cleanup_scheduled",
    "compose_plugin_uploaded",
    "database_backed_up",
    "firewall_default_deny",
    "host_provisioned",
    "images_present",
    "migrate_image_built",
    "offsite_stanza_created",
    "postgres_image_built",
    "release_serving",
    "release_unpacked",
    "releases_pruned",
    "schema_migrated",
    "swap_file_active",
]
