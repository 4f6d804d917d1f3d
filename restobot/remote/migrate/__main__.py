"""``python -m restobot.remote.migrate``: the db-migrate container's entrypoint."""

import sys

from restobot.remote.migrate.runner import main

sys.exit(main())
