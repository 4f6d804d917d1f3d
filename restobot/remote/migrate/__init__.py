"""Apply the bot's SQL migrations to PostgreSQL: fail fast, never half-apply.

The runner behind the compose ``db-migrate`` service and the runbook's manual
commands. It is shaped like dbmate and depends on psycopg 3 and the standard
library only, because it runs inside a small container (the migrate image,
docker/migrate/Dockerfile, copies restobot/remote/ from the release).

Modules, each importing only the ones above it:

* ``lexer``: migration files as text (names, versions, statements, header markers);
* ``plan``: the files against the ledger (pending, changed, unknown, tolerated);
* ``runner``: the database (connection, lock, ledger, apply, status) and the CLI.

Usage::

    python -m restobot.remote.migrate status [--exit-code]
    python -m restobot.remote.migrate apply [--dry-run] [--lock-timeout SECONDS] [--allow-out-of-order]

    common flags (before or after the command):
      --database-url URL   (env DATABASE_URL)
      --dir PATH           (env MIGRATIONS_DIR; default: the migrations/ directory
                            beside the restobot/ package, in the repo or a release)

Exit codes: 0 done / up to date; 1 a migration failed or the run was refused
(edited file, unknown applied file, out-of-order file, lock timeout, connection
failure); 2 usage error; 3 ``status --exit-code`` found pending migrations.

Rules:

* Files are ``NNNN_description.sql`` (4+ digits, lowercase description), applied
  in version order. The runner owns its ledger table ``schema_migrations``
  (filename, checksum = sha256 of the file's bytes, applied_at, duration_ms) and
  creates it on the first apply: no migration file creates it.
* Each file and its ledger row commit in one transaction: a failing file leaves
  nothing of itself behind, and the run stops there.
* A file whose header (the comment lines before its first statement) holds
  ``-- migrate:no-transaction`` runs statement by statement outside a
  transaction (e.g. ``CREATE INDEX CONCURRENTLY``); it must be re-runnable.
* One run at a time per database: a session-level advisory lock taken with
  ``pg_try_advisory_lock`` on a dedicated connection, polled until
  ``--lock-timeout``. It is never a transaction-level lock, so a
  ``CONCURRENTLY`` file cannot deadlock against it.
* Refused before anything runs: an applied file whose checksum changed, an
  applied file this release does not know (a rollback to an older release), a
  pending file older than the newest applied one (unless
  ``--allow-out-of-order``).
"""
