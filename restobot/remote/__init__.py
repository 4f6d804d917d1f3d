"""Programs that run on the VPS: standard library and psycopg only.

They reach the host by one route, the release archive (restobot/release_archive.py
ships this tree and ``restobot/__init__.py``, nothing else of ``restobot``):

* ``migrate``: the migration runner, run by the migrate image built from the release
  (docker/migrate/Dockerfile: ``python3 -m restobot.remote.migrate``);
* ``workflows``: the n8n workflow importer, run as ``python3 RELEASE/restobot/remote/workflows.py``;
* ``backup``: the scheduled backups' helper, copied from the release to
  ``{base_dir}/bin/restobot_backup.py`` (restobot/operations/backup.py).

The operator's side imports their pure parts too, so they import nothing outside the
standard library, psycopg and this package (tests/unit/test_remote_imports.py). The
two that run as a lone file (``workflows``, ``backup``) import nothing of this package.
"""
