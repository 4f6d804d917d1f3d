"""Release a deploy lock left by a killed deploy or rollback, on purpose.

    pyinfra inventory/production.py unlock.py

Prints who held it and since when, records the release in the audit log.
Run it only when no deploy is running: the lock is what stops two at once.
"""

from pyinfra import host, logger

from restobot.commands import HostLayout
from restobot.facts.deploy import DeployState
from restobot.operations import lock
from restobot.settings import settings_for

settings = settings_for(host)
layout = HostLayout(settings.host.base_dir)
held = host.get_fact(DeployState, base_dir=layout.base_dir).lock

if held is None:
    logger.info(f"{host.name}: no deploy lock is held")
else:
    logger.warning(f"{host.name}: releasing the deploy lock ({held})")
    lock.audit_logged(
        name=lock.AUDIT, layout=layout, actor=lock.Actor.current(), action="unlock", release="-",
        result=f"released lock ({held})",
    )
    lock.deploy_lock_released(name=lock.RELEASE_LOCK, layout=layout)
