"""Remote commands as data: pure builders that return argv lists.

Every command the deploy runs on the VPS is built here and tested by exact
value (tests/unit/test_commands.py); operations and facts only decide which to
run and in what order. ``shell()`` turns an argv into a pyinfra command with
every part quoted: no command is glued together by hand.

Commands that run inside a container are built as the container's own argv
(``psql``, ``pg_dump``...) and wrapped by the way the container is reached:
``compose_exec`` (through a release's compose project) or ``container_exec``
(by container name).

SQL is fixed text. Values reach it as psql variables (``psql(sql, {"name": value})``
with ``:'name'`` for a literal and ``:"name"`` for an identifier in the text),
never through string formatting. No secret goes on a command line: a value
given to ``psql`` is an argument of the remote command, so only hashes and
names belong there.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pyinfra.api import QuoteString, StringCommand

COMPOSE_PROJECT = "resto"
LONG_RUNNING_SERVICES = ("postgres", "redis", "n8n-main", "n8n-worker", "nginx", "traefik")
MONITORING_SERVICES = ("prometheus", "alertmanager", "node-exporter", "postgres-exporter", "redis-exporter",
                       "blackbox-exporter")
PSQL_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- quoting -----------------------------------------------------------------------


def shell(argv: Sequence[str]) -> StringCommand:
    """A pyinfra command running ``argv`` with every argument shell-quoted."""
    return StringCommand(*(QuoteString(part) for part in argv))


def shell_text(argv: Sequence[str]) -> str:
    """``argv`` as one shell-quoted line, for a fact's script or a pipeline."""
    return shlex.join(argv)


# --- where things live -------------------------------------------------------------


@dataclass(frozen=True)
class HostLayout:
    """Where things live on the VPS."""

    base_dir: str = "/opt/resto"

    @property
    def releases_dir(self) -> str:
        return f"{self.base_dir}/releases"

    @property
    def incoming_dir(self) -> str:
        return f"{self.base_dir}/incoming"

    @property
    def current(self) -> str:
        return f"{self.base_dir}/current"

    @property
    def backups_dir(self) -> str:
        return f"{self.base_dir}/backups"

    @property
    def state_dir(self) -> str:
        return f"{self.base_dir}/state"

    @property
    def textfile_dir(self) -> str:
        """Where the host writes ``*.prom`` files that node-exporter's textfile collector reads."""
        return f"{self.base_dir}/metrics"

    @property
    def workflows_stamp(self) -> str:
        """The hash of the workflows last imported (written once they serve)."""
        return f"{self.state_dir}/workflows.sha256"

    @property
    def migration_logs_dir(self) -> str:
        return f"{self.base_dir}/logs/migrations"

    def migration_log(self, identifier: str) -> str:
        """What the migration runner printed when release ``identifier`` migrated the database."""
        return f"{self.migration_logs_dir}/{identifier}.log"

    @property
    def lock_dir(self) -> str:
        return f"{self.base_dir}/deploy.lock"

    @property
    def lock_info(self) -> str:
        return f"{self.lock_dir}/info"

    @property
    def audit_log(self) -> str:
        return f"{self.base_dir}/audit.log"

    def release_dir(self, name: str) -> str:
        return f"{self.releases_dir}/{name}"

    @property
    def configs_dir(self) -> str:
        """Where the release directories containers mount are copied, each named by its content."""
        return f"{self.base_dir}/configs"

    def config_dir(self, name: str) -> str:
        return f"{self.configs_dir}/{name}"

    def predeploy_backup(self, identifier: str) -> str:
        """The dump taken before release ``identifier`` migrated the database."""
        return f"{self.backups_dir}/before-{identifier}.dump"

    def safety_dump(self, stamp: str) -> str:
        """The dump of the database a restore replaces, taken at ``stamp`` (``20250102T030405Z``)."""
        return f"{self.backups_dir}/before-restore-{stamp}.dump"

    @property
    def safety_dumps(self) -> str:
        """A shell pattern matching every safety dump (never a pre-deploy backup: release ids end in hex)."""
        return f"{self.backups_dir}/before-restore-*Z.dump"


def container_name(service: str, number: int | str = 1) -> str:
    """The container compose names for ``service`` of the project (one replica)."""
    return f"{COMPOSE_PROJECT}-{service}-{number}"


POSTGRES_CONTAINER = container_name("postgres")


# --- files -------------------------------------------------------------------------


def make_directory(path: str, parents: bool = False) -> list[str]:
    """``mkdir``: without ``parents`` it fails when ``path`` exists (the lock relies on it)."""
    return ["mkdir", "-p", path] if parents else ["mkdir", path]


def private_directory(path: str) -> list[str]:
    """A directory only its owner can enter (mode 700), created with its parents."""
    return ["install", "-d", "-m", "700", path]


def remove_tree(path: str) -> list[str]:
    return ["rm", "-rf", path]


def remove_file(path: str) -> list[str]:
    return ["rm", "-f", path]


def read_file(path: str) -> list[str]:
    return ["cat", path]


def write_file(path: str, content: str) -> list[str]:
    """Replace ``path`` with ``content`` (mode 600 when created); the content is an argument, not shell."""
    return ["sh", "-c", 'umask 077; printf "%s" "$1" > "$0"', path, content]


def append_to_file(path: str, text: str) -> list[str]:
    """Append ``text`` to ``path`` (created when missing)."""
    return ["sh", "-c", 'printf "%s" "$1" >> "$0"', path, text]


def file_age_seconds(path: str) -> list[str]:
    """Print how many seconds ago ``path`` was last written, by the host's clock."""
    return ["sh", "-c", 'echo $(( $(date +%s) - $(stat -c %Y "$0") ))', path]


def run_script(path: str, *args: str) -> list[str]:
    """Run an installed script."""
    return [path, *args]


# --- releases ----------------------------------------------------------------------


def copy_directory(source: str, target: str) -> list[list[str]]:
    """Copy ``source`` to ``target`` with its modes and owners, the copy appearing whole in one rename."""
    partial = f"{target}.partial"
    return [remove_tree(partial), ["cp", "-a", "-T", source, partial], ["mv", "-T", partial, target]]


def unpack_release(layout: HostLayout, archive: str, identifier: str, sha256: str, owner: str,
                   container_owned: Mapping[str, int] | None = None) -> list[list[str]]:
    """Unpack into a partial directory, stamp it with the archive hash, then rename it into place in one step.

    Files are the deploy user's, but those in ``container_owned`` (release path -> uid): a container
    running as that uid reads them (a 0600 file it could not read otherwise)."""
    container_owned = container_owned or {}
    final = layout.release_dir(identifier)
    partial = f"{final}.partial"
    return [
        remove_tree(partial),
        make_directory(partial, parents=True),
        ["tar", "--no-same-owner", "-xzf", archive, "-C", partial],
        ["chown", "-R", f"{owner}:{owner}", partial],
        *(["chown", f"{uid}:{uid}", f"{partial}/{path}"] for path, uid in container_owned.items()),
        ["sh", "-c", 'printf "%s\\n" "$1" > "$0"', f"{partial}/.release.sha256", sha256],
        ["mv", "-T", partial, final],
        remove_file(archive),
    ]


def switch_current(layout: HostLayout, identifier: str) -> list[list[str]]:
    """Point ``current`` at a release with a rename, which is atomic."""
    return [
        ["ln", "-sfn", f"releases/{identifier}", f"{layout.current}.next"],
        ["mv", "-T", f"{layout.current}.next", layout.current],
    ]


def workflow_import(release_dir: str, workflows_dir: str | None = None) -> list[str]:
    """Run the release's own importer on the host: it imports what changed, restarts n8n main
    if anything did, and returns only once every webhook answers from its workflow.
    ``workflows_dir``: import these workflow files instead of the release's own.

    It runs as a lone file (restobot/remote/workflows.py imports nothing of ``restobot``):
    ``python3 -m`` would put the SSH session's working directory first on ``sys.path``,
    and ``-P`` needs Python 3.11 on the host."""
    return [
        "python3", f"{release_dir}/restobot/remote/workflows.py", "import",
        "--dir", workflows_dir or f"{release_dir}/workflows",
        "--compose-dir", release_dir, "--compose-file", f"{release_dir}/compose.yml",
    ]


WORKFLOW_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
# Each release kept on the host that holds workflows/NAME.json: ``MTIME SHA256 RELEASE`` a line.
WORKFLOW_VERSIONS_SCRIPT = (
    'for d in "$0"/*/; do f="${d}workflows/$1.json"; [ -f "$f" ] || continue; '
    'printf "%s %s %s\\n" "$(stat -c %Y "$d")" "$(sha256sum < "$f" | cut -c1-64)" "$(basename "$d")"; done; exit 0'
)


def workflow_versions(releases_dir: str, name: str) -> list[str]:
    """The version of workflow file ``NAME.json`` in each release on the host (``WORKFLOW_VERSIONS_SCRIPT``)."""
    if not WORKFLOW_NAME.match(name):
        raise ValueError(f"workflow {name!r}: a file name of workflows/ without .json (letters, digits, _ and -)")
    return ["sh", "-c", WORKFLOW_VERSIONS_SCRIPT, releases_dir, name]


def workflows_with_one_from(scratch: str, workflows_dir: str, chosen: str) -> list[str]:
    """``scratch``: a copy of ``workflows_dir`` with the file ``chosen`` (another release's) in place
    of its namesake, so that an import changes that one workflow and unpublishes none."""
    return ["sh", "-c", 'rm -rf "$0" && mkdir -p "$0" && cp "$1"/*.json "$0"/ && cp "$2" "$0"/', scratch,
            workflows_dir, chosen]


def smoke_checks(release_dir: str, attempts: int) -> list[str]:
    """The release's smoke script: one ``PASS name detail`` or ``FAIL name detail`` line per check."""
    return run_script(f"{release_dir}/bin/smoke", str(attempts))


# --- docker compose ----------------------------------------------------------------


def compose(release_dir: str, *args: str) -> list[str]:
    """``docker compose`` for one release directory of the single project."""
    return [
        "docker", "compose",
        "--project-name", COMPOSE_PROJECT,
        "--project-directory", release_dir,
        "--file", f"{release_dir}/compose.yml",
        *args,
    ]


def compose_up(release_dir: str, *services: str, timeout: int = 300) -> list[str]:
    """Start (or converge) services and wait until they are healthy or completed."""
    return compose(release_dir, "up", "--detach", "--wait", "--wait-timeout", str(timeout), "--remove-orphans", *services)


def compose_stop(release_dir: str, *services: str) -> list[str]:
    return compose(release_dir, "stop", *services)


def compose_run_migrations(release_dir: str, *args: str) -> list[str]:
    """Run the release's db-migrate once, outside ``up``, so a failure leaves n8n untouched."""
    return compose(release_dir, "run", "--rm", "--no-TTY", "db-migrate", *args)


def output_kept(path: str, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` with its output (both streams) written to ``path``, then printed; its exit status kept
    (a ``compose run --rm`` container is gone afterwards, and its output with it)."""
    return ["sh", "-c", '"$@" > "$0" 2>&1; status=$?; cat "$0"; exit "$status"', path, *argv]


def latest_migration_log(layout: HostLayout) -> list[str]:
    """The newest migration log's path on the first line, then its text; nothing when there is none."""
    script = 'f=$(ls -1t "$0"/*.log 2>/dev/null | head -n 1); [ -z "$f" ] || { echo "$f"; cat "$f"; }'
    return ["sh", "-c", script, layout.migration_logs_dir]


def compose_build_migrate(release_dir: str) -> list[str]:
    """Build the release's migrate image on the host."""
    # Compose would hand the build to buildx (bake), which Debian's docker.io lacks.
    return ["env", "COMPOSE_BAKE=false", *compose(release_dir, "build", "--quiet", "db-migrate")]


def compose_build_postgres(release_dir: str) -> list[str]:
    """Build the release's postgres image with pgBackRest on the host (offsite_backup enabled)."""
    return ["env", "COMPOSE_BAKE=false", *compose(release_dir, "build", "--quiet", "postgres")]


def pgbackrest(stanza: str, *args: str) -> list[str]:
    """pgBackRest in the running postgres container, as the postgres user (it reads /etc/pgbackrest)."""
    return ["docker", "exec", "--user", "postgres", POSTGRES_CONTAINER, "pgbackrest", f"--stanza={stanza}", *args]


# $0 container, $1 stanza, $2 the backup helper, $3 the stage. pgBackRest's info and the cluster's
# system identifier (pg_controldata, no login needed) handed to the helper, which exits 3, saying why,
# when the repository backs up another database (a VPS rebuilt after a loss, before its restore).
OFFSITE_OWNER_SCRIPT = (
    'info=$(docker exec --user postgres "$0" pgbackrest --stanza="$1" --output=json info) || exit 1\n'
    'id=$(docker exec --user postgres "$0" sh -c \'pg_controldata "$PGDATA"\' '
    '| sed -n "s/^Database system identifier: *//p")\n'
    '[ -n "$id" ] || { echo "cannot read the database system identifier (pg_controldata in $0)" >&2; exit 1; }\n'
    'printf "%s" "$info" | python3 "$2" offsite-owner --system-id "$id" --stage "$3"'
)


def offsite_repository_is_this_databases(stanza: str, helper: str, stage: str) -> list[str]:
    """Exit 0 when the off-site repository holds no stanza yet or this database's; 3, saying why, when
    it backs up another database (pgBackRest would refuse to archive into it)."""
    return ["sh", "-c", OFFSITE_OWNER_SCRIPT, POSTGRES_CONTAINER, stanza, helper, stage]


def compose_logs(release_dir: str, service: str, lines: int = 30) -> list[str]:
    return compose(release_dir, "logs", "--no-color", "--tail", str(lines), service)


def compose_ps(release_dir: str) -> list[str]:
    """Every service of the release, one JSON object a line."""
    return compose(release_dir, "ps", "--all", "--format", "json")


def compose_exec(release_dir: str, service: str, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` in a running service of the release, without a TTY (binary-safe stdin and stdout)."""
    return compose(release_dir, "exec", "-T", service, *argv)


# --- docker ------------------------------------------------------------------------


def container_exec(container: str, argv: Sequence[str]) -> list[str]:
    """Run ``argv`` in a container by name (no TTY, no stdin)."""
    return ["docker", "exec", container, *argv]


def container_health(container: str) -> list[str]:
    """The container's last healthcheck results, as JSON."""
    return ["docker", "inspect", "--format", "{{json .State.Health}}", container]


def project_containers() -> list[str]:
    """Every service container of the project (``compose run`` one-offs left out), whatever
    release directory started it: service, working directory, state, status, name and
    replica number, tab-separated."""
    fields = "\t".join(
        [
            '{{.Label "com.docker.compose.service"}}',
            '{{.Label "com.docker.compose.project.working_dir"}}',
            "{{.State}}",
            "{{.Status}}",
            "{{.Names}}",
            '{{.Label "com.docker.compose.container-number"}}',
        ]
    )
    return [
        "docker", "ps", "--all",
        "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}",
        "--filter", "label=com.docker.compose.oneoff=False",
        "--format", fields,
    ]


def service_containers(service: str) -> list[str]:
    """Every container of one service of the project, whatever its name: ``name state`` a line."""
    return [
        "docker", "ps", "--all",
        "--filter", f"label=com.docker.compose.project={COMPOSE_PROJECT}",
        "--filter", f"label=com.docker.compose.service={service}",
        "--filter", "label=com.docker.compose.oneoff=False",
        "--format", "{{.Names}} {{.State}}",
    ]


def container_start(*names: str) -> list[str]:
    """Start stopped containers as they were created (not converged on any release)."""
    return ["docker", "start", *names]


def container_rename(name: str, new_name: str) -> list[str]:
    return ["docker", "rename", name, new_name]


def image_load(path: str) -> list[str]:
    return ["docker", "load", "--quiet", "--input", path]


def image_pull(image: str) -> list[str]:
    return ["docker", "pull", "--quiet", image]


def bundle_file_name(image: str) -> str:
    """The file a local image bundle is saved under: ``repo/name:tag`` -> ``repo_name_tag.tar``."""
    return image.replace("/", "_").replace(":", "_") + ".tar"


def image_fetch(image: str, bundle_dir: str | None) -> list[str]:
    """Load ``image`` from its bundle in ``bundle_dir`` (the local stage: no registry), else pull it."""
    if bundle_dir:
        return image_load(f"{bundle_dir.rstrip('/')}/{bundle_file_name(image)}")
    return image_pull(image)


# --- PostgreSQL (argv inside the postgres container) --------------------------------

# psql reads the SQL on stdin, where it substitutes variables (it does not in ``-c``).
# The connection defaults come from the container's environment; options given
# after them (``--username``, ``--dbname``) win, as psql keeps the last one.
PSQL_SCRIPT = 'printf "%s\\n" "$0" | exec psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" "$@"'


def psql(
    sql: str,
    variables: Mapping[str, str] | None = None,
    *,
    database: str | None = None,
    user: str | None = None,
    separator: str | None = None,
) -> list[str]:
    """
    Run one SQL text with ``psql`` in the postgres container: unaligned tuples only,
    stopping (exit 3) at the first error.

    + sql: fixed SQL text; ``:'name'`` is a variable as a literal, ``:"name"`` as an identifier
    + variables: the values, passed as ``--set=name=value`` (never on a line with a secret)
    + database: connect to this database instead of ``$POSTGRES_DB`` (``postgres`` to drop one)
    + user: connect as this role instead of ``$POSTGRES_USER``
    + separator: the field separator of the output (psql's default: ``|``)

    **Example:**

    .. code:: python

        compose_exec(release_dir, "postgres", psql("SELECT scopes FROM api_clients WHERE name = :'name'",
                                                   {"name": "admin"}))
    """
    options = [f"--field-separator={separator}"] if separator is not None else []
    options += [f"--username={user}"] if user is not None else []
    options += [f"--dbname={database}"] if database is not None else []
    for name, value in sorted((variables or {}).items()):
        if not PSQL_VARIABLE.match(name):
            raise ValueError(f"psql variable {name!r}: must be a letter or '_' then letters, digits or '_'")
        options.append(f"--set={name}={value}")
    return ["sh", "-c", PSQL_SCRIPT, sql, *options]


def pg_dump() -> list[str]:
    """A custom-format dump of ``$POSTGRES_DB`` on stdout (no TTY: -t would corrupt the binary output)."""
    return ["sh", "-c", 'exec pg_dump -Fc -U "$POSTGRES_USER" -d "$POSTGRES_DB"']


def pg_dumpall_globals() -> list[str]:
    """The cluster's roles and tablespaces as SQL on stdout."""
    return ["sh", "-c", 'exec pg_dumpall --globals-only -U "$POSTGRES_USER"']


def pg_restore() -> list[str]:
    """Restore a custom-format dump read from stdin into ``$POSTGRES_DB``, replacing existing objects."""
    return [
        "sh", "-c",
        'exec pg_restore --clean --if-exists --exit-on-error --no-owner -U "$POSTGRES_USER" -d "$POSTGRES_DB"',
    ]


def dump_to_file(container: str, dump: Sequence[str], path: str) -> list[str]:
    """Write a dump made in ``container`` under a temporary name, check it is not empty, then rename it."""
    producer = shell_text(container_exec(container, dump))
    return ["sh", "-c", f'set -e; umask 077; {producer} > "$0.partial"; test -s "$0.partial"; mv "$0.partial" "$0"', path]


def dump_contents(release_dir: str, path: str) -> list[str]:
    """``pg_restore --list`` of the dump at ``path``: its header (when it was made) and what it holds;
    fails on a file that is not a custom-format archive."""
    return ["sh", "-c", f'{shell_text(compose_exec(release_dir, "postgres", ["pg_restore", "--list"]))} < "$0"', path]


def restore_from_file(release_dir: str, path: str) -> list[str]:
    """Feed the dump at ``path`` (on the host) to ``pg_restore`` in the release's postgres service."""
    return ["sh", "-c", f'{shell_text(compose_exec(release_dir, "postgres", pg_restore()))} < "$0"', path]


# --- the deploy's database steps --------------------------------------------------

UPSERT_API_CLIENT_SQL = (
    "INSERT INTO api_clients (name, token_hash, scopes, enabled, description) "
    "VALUES (:'name', :'token_hash', string_to_array(:'scopes', ','), true, 'managed by the deploy') "
    "ON CONFLICT (name) DO UPDATE SET token_hash = EXCLUDED.token_hash, scopes = EXCLUDED.scopes, enabled = true"
)
DROP_DATABASE_SQL = 'DROP DATABASE IF EXISTS :"database" WITH (FORCE)'
CREATE_DATABASE_SQL = 'CREATE DATABASE :"database" OWNER :"owner"'


def predeploy_backup(layout: HostLayout, identifier: str, metadata_json: str) -> list[list[str]]:
    """Dump the roles and the database before ``identifier`` migrates it, then write the metadata.

    Files: ``{dump}.globals.sql``, ``{dump}`` (custom format) and ``{dump}.json``, where
    ``{dump}`` is ``layout.predeploy_backup(identifier)``.
    """
    path = layout.predeploy_backup(identifier)
    return [
        private_directory(layout.backups_dir),
        dump_to_file(POSTGRES_CONTAINER, pg_dumpall_globals(), f"{path}.globals.sql"),
        dump_to_file(POSTGRES_CONTAINER, pg_dump(), path),
        write_file(f"{path}.json", metadata_json),
    ]


def remove_predeploy_backup(path: str) -> list[str]:
    """Remove a pre-deploy backup and the files written with it (``predeploy_backup``)."""
    return ["rm", "-f", path, f"{path}.json", f"{path}.globals.sql"]


def api_client_upsert(release_dir: str, client: str, token_hash: str, scopes: Sequence[str]) -> list[str]:
    """Insert or update an API client by name; only the token's hash reaches the host.

    Scopes travel as one comma-separated variable: a scope may not hold a comma.
    """
    if any("," in scope for scope in scopes):
        raise ValueError(f"api client {client}: a scope may not contain ',' (scopes: {', '.join(scopes)})")
    variables = {"name": client, "token_hash": token_hash, "scopes": ",".join(scopes)}
    return compose_exec(release_dir, "postgres", psql(UPSERT_API_CLIENT_SQL, variables))


N8N_SERVICES = ("n8n-main", "n8n-worker")
ROW_COUNTS_SQL = (
    "SELECT 'inbound_messages', count(*) FROM inbound_messages "
    "UNION ALL SELECT 'outbound_messages', count(*) FROM outbound_messages"
)


def row_counts(release_dir: str) -> list[str]:
    """The rows a restore puts at stake, ``table<TAB>count`` a line."""
    return compose_exec(release_dir, "postgres", psql(ROW_COUNTS_SQL, separator="\t"))


def n8n_stopped(release_dir: str) -> list[str]:
    """Stop the database's writers."""
    return compose_stop(release_dir, *N8N_SERVICES)


def n8n_started_again() -> list[str]:
    """Start the n8n containers a restore stopped, as they were (whatever release created them)."""
    return container_start(*(container_name(service) for service in N8N_SERVICES))


# --- the off-site restore (restobot/offsite_restore.py decides, resto STAGE backup offsite restore runs) ---

RECOVERY_SQL = "SELECT pg_is_in_recovery()"
# The service's data volume, as compose.yml mounts it (render.PGDATA).
SERVICE_PGDATA = "/var/lib/postgresql/data"


def postgres_stopped(release_dir: str) -> list[str]:
    """Stop PostgreSQL (its writers already stopped): a restore replaces its files."""
    return compose_stop(release_dir, "postgres")


def postgres_started_again() -> list[str]:
    """Start the postgres container the restore stopped, as it was created (its archiving arguments)."""
    return container_start(POSTGRES_CONTAINER)


def offsite_restore(release_dir: str, stanza: str, options: Sequence[str]) -> list[str]:
    """pgBackRest's restore into the stopped service's data volume, from a one-off container of the service
    (its volume, its networks, its configuration installed by its entrypoint), as the postgres user;
    ``--delta`` rewrites only the files that differ, ``options`` say where recovery stops."""
    return compose(release_dir, "run", "--rm", "--no-deps", "--no-TTY", "postgres",
                   "gosu", "postgres", "pgbackrest", f"--stanza={stanza}", "--delta", *options, "restore")


# The restore drill (templates/backup/offsite-restore-drill.sh.j2 runs it through restobot/remote/backup.py):
# the repository's latest point restored into a scratch instance that shares nothing with the live one.
DRILL_CONTAINER = "restobot-restore-drill"
# Run as postgres in a one-off container of the service, with $1 the stanza, $2 the seconds recovery may
# take, $3 the SQL whose one-line JSON answer is the drill's result. The data directory is a
# subdirectory of an anonymous volume that replaces the service's (postgres wants it 0700); the instance
# listens on no TCP port and archives nothing: no client, and not the repository, can reach it.
DRILL_SCRIPT = r"""set -eu
stanza=$1 seconds=$2 sql=$3
data=/var/lib/postgresql/data/drill log=/var/lib/postgresql/data/drill.log
mkdir -m 700 "$data"
pgbackrest --stanza="$stanza" --pg1-path="$data" --archive-mode=off --log-level-console=warn restore >&2
pg_ctl -D "$data" -l "$log" -w -t "$seconds" -o "-c listen_addresses='' -c archive_mode=off" start >&2 \
    || { tail -n 20 "$log" >&2; exit 1; }
deadline=$(( $(date +%s) + seconds ))
until [ "$(psql -X -At -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c 'SELECT pg_is_in_recovery()')" = f ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "the restored instance was still replaying the archive after $seconds s" >&2
        tail -n 20 "$log" >&2
        exit 1
    fi
    sleep 1
done
psql -X -At -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -c "$sql"
pg_dump -U "$POSTGRES_USER" -d "$POSTGRES_DB" --format=custom >/dev/null
pg_ctl -D "$data" -m fast stop >&2
"""


def offsite_restore_drill(release_dir: str) -> list[str]:
    """The restore drill's scratch instance (``DRILL_SCRIPT``; the caller appends its three arguments): a
    one-off container of the postgres service (its image, configuration and route to the repository)
    whose data volume is replaced by an anonymous one, removed with the container."""
    return compose(release_dir, "run", "--rm", "--no-deps", "--no-TTY", "--name", DRILL_CONTAINER,
                   "--volume", SERVICE_PGDATA, "postgres",
                   "gosu", "postgres", "sh", "-c", DRILL_SCRIPT, "restore-drill")


def data_directory_emptied(release_dir: str) -> list[str]:
    """Empty the stopped service's data volume, so that its next start initialises a new cluster (from
    the env file's user, password and database): the way back from a restore that failed half-way."""
    return compose(release_dir, "run", "--rm", "--no-deps", "--no-TTY", "--entrypoint", "find", "postgres",
                   SERVICE_PGDATA, "-mindepth", "1", "-delete")


def in_recovery() -> list[str]:
    """``t`` while PostgreSQL replays the archive, ``f`` once it has promoted (fails while it starts)."""
    return container_exec(POSTGRES_CONTAINER, psql(RECOVERY_SQL, database="postgres"))


def safety_dump(layout: HostLayout, path: str) -> list[list[str]]:
    """Dump the database a restore is about to replace (0600, in the 0700 backups directory)."""
    return [private_directory(layout.backups_dir), dump_to_file(POSTGRES_CONTAINER, pg_dump(), path)]


def database_replaced(release_dir: str, dump: str, database: str, user: str) -> list[list[str]]:
    """Recreate the database empty, restore the dump, analyze (the writers already stopped).

    The database is dropped rather than cleaned so that objects created by later
    migrations (absent from the dump) do not survive the restore.
    """
    admin = {"database": database}
    return [
        compose_exec(release_dir, "postgres", psql(DROP_DATABASE_SQL, admin, database="postgres", user=user)),
        compose_exec(release_dir, "postgres",
                     psql(CREATE_DATABASE_SQL, {**admin, "owner": user}, database="postgres", user=user)),
        restore_from_file(release_dir, dump),
        compose_exec(release_dir, "postgres", psql("ANALYZE")),
    ]


# --- the operator's tool (restobot/cli.py) -------------------------------------------
#
# Every read answers in one command. The database reads print one JSON document
# (``json_agg`` of the rows) so that no separator in a value can shift a column;
# counts, windows and names reach the SQL as psql variables.

PROJECT_LABEL = f"label=com.docker.compose.project={COMPOSE_PROJECT}"
NOT_ONE_OFF = "label=com.docker.compose.oneoff=False"

CONTAINER_INSPECT_FORMAT = (
    '{"service":{{json (index .Config.Labels "com.docker.compose.service")}},'
    '"name":{{json .Name}},"state":{{json .State.Status}},'
    '"health":{{if .State.Health}}{{json .State.Health.Status}}{{else}}null{{end}},'
    '"started_at":{{json .State.StartedAt}},"restart_count":{{json .RestartCount}},'
    '"image":{{json .Config.Image}}}'
)
CONTAINER_STATS_FORMAT = "{{json .}}"


def project_containers_inspected() -> list[str]:
    """Every service container of the project (one-offs left out), one JSON object a line:
    service, name, state, health (null without a healthcheck), started_at, restart_count, image."""
    script = 'ids=$(docker ps --all --quiet --filter "$0" --filter "$1"); [ -z "$ids" ] || exec docker inspect --format "$2" $ids'
    return ["sh", "-c", script, PROJECT_LABEL, NOT_ONE_OFF, CONTAINER_INSPECT_FORMAT]


def project_container_stats() -> list[str]:
    """``docker stats`` once for the project's running containers, one JSON object a line."""
    script = 'ids=$(docker ps --quiet --filter "$0" --filter "$1"); [ -z "$ids" ] || exec docker stats --no-stream --format "$2" $ids'
    return ["sh", "-c", script, PROJECT_LABEL, NOT_ONE_OFF, CONTAINER_STATS_FORMAT]


def disk_usage(path: str) -> list[str]:
    """``df`` of the file system holding ``path``, in POSIX format (1024-byte blocks)."""
    return ["df", "-P", "-k", path]


def compose_logs_tail(release_dir: str, services: Sequence[str], lines: int, follow: bool = False) -> list[str]:
    """The last ``lines`` log lines of ``services`` (all when empty), timestamped, each prefixed by its
    container; ``follow``: then the new lines as they come, until the connection closes."""
    return compose(release_dir, "logs", "--no-color", "--timestamps", "--tail", str(lines),
                   *(["--follow"] if follow else []), *services)


def compose_service_action(release_dir: str, action: str, *services: str) -> list[str]:
    """``docker compose start|stop|restart SERVICE...`` on the release's project (containers as they
    are; compose orders several services by their dependencies)."""
    if action not in ("start", "stop", "restart"):
        raise ValueError(f"compose action {action!r}: must be start, stop or restart")
    if not services:
        raise ValueError(f"compose {action}: name the services (none would mean every one, one-shot ones too)")
    return compose(release_dir, action, *services)


def lock_status(layout: HostLayout) -> list[str]:
    """``held`` then the lock's info lines when the deploy lock is held; nothing when it is free."""
    return ["sh", "-c", 'if [ -d "$0" ]; then echo held; cat "$0/info" 2>/dev/null; fi; exit 0', layout.lock_dir]


def audit_tail(layout: HostLayout, lines: int) -> list[str]:
    """The last ``lines`` lines of the audit log (nothing when there is none yet)."""
    return ["sh", "-c", '[ ! -f "$0" ] || exec tail -n "$1" "$0"', layout.audit_log, str(lines)]


def current_release(layout: HostLayout) -> list[str]:
    """The release ``current`` points at (``releases/NAME``); nothing when none."""
    return ["sh", "-c", 'readlink "$0" || true', layout.current]


def json_rows(query: str) -> str:
    """``query``'s rows as one JSON array (``[]`` for none), what the tool's reads print."""
    # ``query`` is one of the fixed texts below, never a value: values travel as psql variables.
    return f"SELECT coalesce(json_agg(row_to_json(r)), '[]'::json) FROM ({query}) r"  # nosec B608 # fixed SQL texts only


EXECUTIONS_SQL = json_rows(
    # n8n keeps the workflow's id on the execution, never its name: join workflow_entity.
    'SELECT e.id, e."workflowId" AS workflow_id, w.name AS workflow_name, e.status, e.mode, '
    'e."startedAt" AS started_at, e."stoppedAt" AS stopped_at '
    'FROM execution_entity e LEFT JOIN workflow_entity w ON w.id = e."workflowId" '
    "WHERE e.\"deletedAt\" IS NULL AND (:'failed' = 'no' OR e.status IN ('error', 'crashed')) "
    "ORDER BY e.id DESC LIMIT (:'limit')::int"
)
OUTBOUND_TROUBLE_SQL = json_rows(
    "SELECT id, channel, msg_id, status, retry_count, next_retry_at, error_code, error_message, created_at "
    "FROM outbound_messages WHERE status IN ('RETRY', 'DLQ') ORDER BY created_at DESC, id DESC LIMIT (:'limit')::int"
)
SECURITY_EVENTS_SQL = json_rows(
    "SELECT event_type, count(*) AS count, max(created_at) AS last_at FROM security_events "
    "WHERE created_at > now() - make_interval(secs => (:'seconds')::int) "
    "GROUP BY event_type ORDER BY count DESC, event_type"
)
FLOODING_SQL = json_rows(
    "SELECT conversation_key, count(*) AS count, max(received_at) AS last_at FROM inbound_messages "
    "WHERE received_at > now() - make_interval(secs => (:'seconds')::int) "
    "GROUP BY conversation_key HAVING count(*) > (:'more_than')::int ORDER BY count DESC, conversation_key"
)
DLQ_COUNT_SQL = json_rows(
    "SELECT channel, count(*) AS count FROM outbound_messages WHERE status = 'DLQ' GROUP BY channel ORDER BY channel"
)
DLQ_LIST_SQL = json_rows(
    "SELECT id, channel, msg_id, error_code, error_message, retry_count, created_at FROM outbound_messages "
    "WHERE status = 'DLQ' AND (:'channel' = '' OR channel = :'channel') "
    "ORDER BY created_at DESC, id DESC LIMIT (:'limit')::int"
)
TABLE_SIZES_SQL = json_rows(
    "SELECT relname AS table, pg_total_relation_size(relid) AS bytes, "
    "pg_size_pretty(pg_total_relation_size(relid)) AS size, n_live_tup AS rows_estimate "
    "FROM pg_catalog.pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC, relname LIMIT (:'limit')::int"
)
DATABASE_SIZE_SQL = json_rows(
    "SELECT current_database() AS database, pg_database_size(current_database()) AS bytes, "
    "pg_size_pretty(pg_database_size(current_database())) AS size"
)
LEDGER_ROWS_SQL = json_rows(
    "SELECT filename, checksum, applied_at, duration_ms, backward_compatible FROM schema_migrations ORDER BY filename"
)

# A workflow that saves no execution (W0, W1, W9: their data would hold the request's tokens) still
# has one kept when a restart interrupts it (n8n marks it crashed and keeps its data): such an
# execution goes at the next cleanup, whatever its age. Those that ended (success, error) are n8n's
# to delete, which it does moments later: counting them would race it. One still there 10 minutes
# after it ended is one n8n will never delete (a restart came between its end and the delete; a CI
# run found a W0 success, the verify token in its data, an hour later): it goes too.
LEFT_BY_AN_INTERRUPTION = (
    "(status IN ('crashed', 'canceled', 'unknown') "
    "OR (status IN ('success', 'error') AND \"stoppedAt\" < now() - interval '10 minutes')) "
    "AND \"workflowId\" IN (SELECT id FROM workflow_entity "
    "WHERE settings ->> 'saveDataSuccessExecution' = 'none' AND settings ->> 'saveDataErrorExecution' = 'none')"
)
# What ``cleanup`` deletes: each table's rows past their retention (settings.retention, n8n's executions
# after n8n.executions_max_age_hours, only those that ended); the ages travel as psql variables.
PAST_RETENTION = {
    "inbound_messages": "FROM inbound_messages WHERE received_at < now() - make_interval(days => (:'inbound_days')::int)",
    "outbound_messages": "FROM outbound_messages WHERE created_at < now() - make_interval(days => (:'outbound_days')::int)",
    "security_events": "FROM security_events WHERE created_at < now() - make_interval(days => (:'security_days')::int)",
    "execution_entity": 'FROM execution_entity WHERE "stoppedAt" < now() - make_interval(hours => (:\'executions_hours\')::int) '
                        f"OR ({LEFT_BY_AN_INTERRUPTION})",
    # An expired entry refuses nothing; it goes with the security events that name its sender.
    "quarantine": "FROM quarantine WHERE expires_at < now() - make_interval(days => (:'security_days')::int)",
}
CLEANUP_COUNT_SQL = "SELECT json_build_object({})".format(  # nosec B608 # fixed SQL texts only
    ", ".join(f"'{table}', (SELECT count(*) {rows})" for table, rows in PAST_RETENTION.items()))
# One statement: every table's rows go in one transaction (n8n's execution_data and metadata follow
# their execution by their foreign keys' ON DELETE CASCADE; outbound replies lose their inbound link).
CLEANUP_SQL = "WITH {} SELECT json_build_object({})".format(  # nosec B608 # fixed SQL texts only
    ", ".join(f"gone_{table} AS (DELETE {rows} RETURNING 1)" for table, rows in PAST_RETENTION.items()),
    ", ".join(f"'{table}', (SELECT count(*) FROM gone_{table})" for table in PAST_RETENTION))  # nosec B608

# The quarantine (migrations/0007): W1 refuses the messages of these senders and records one
# QUARANTINED security event per message (detail: sender, msg_id), counted here since the entry began.
QUARANTINE_LIST_SQL = json_rows(
    "SELECT q.channel, q.sender, q.reason, q.created_at, q.created_by, q.expires_at, "
    "(q.expires_at IS NOT NULL AND q.expires_at <= now()) AS expired, "
    "(SELECT count(*) FROM security_events e WHERE e.event_type = 'QUARANTINED' AND e.channel = q.channel "
    "AND e.detail ->> 'sender' = q.sender AND e.created_at >= q.created_at) AS dropped "
    "FROM quarantine q ORDER BY q.created_at DESC, q.id DESC"
)
# Adding a sender already there replaces its entry (reason, expiry, who, since when); ``added`` says which.
# ``seconds`` empty: until removed (NULL, as now() + NULL is).
QUARANTINE_ADD_SQL = (
    "WITH r AS (INSERT INTO quarantine (channel, sender, reason, created_by, expires_at) "
    "VALUES (:'channel', :'sender', NULLIF(:'reason', ''), :'created_by', "
    "now() + make_interval(secs => NULLIF(:'seconds', '')::int)) "
    "ON CONFLICT (channel, sender) DO UPDATE SET reason = EXCLUDED.reason, created_by = EXCLUDED.created_by, "
    "created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at "
    "RETURNING channel, sender, reason, created_at, created_by, expires_at, (xmax = 0) AS added) "
    "SELECT coalesce(json_agg(row_to_json(r)), '[]'::json) FROM r"
)
QUARANTINE_REMOVE_SQL = (
    "WITH r AS (DELETE FROM quarantine WHERE channel = :'channel' AND sender = :'sender' "
    "RETURNING channel, sender, reason, created_at, created_by, expires_at) "
    "SELECT coalesce(json_agg(row_to_json(r)), '[]'::json) FROM r"
)


def role_password_set() -> list[str]:
    """``psql`` in the postgres container reading its statement on stdin: how ``ALTER ROLE ... PASSWORD``
    reaches the server without its value on a command line (``ps``, docker's events)."""
    return ["docker", "exec", "-i", POSTGRES_CONTAINER, "sh", "-c",
            'exec psql -X -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB"']


def database_read(sql: str, variables: Mapping[str, str] | None = None) -> list[str]:
    """A fixed read of the live database (``psql`` in the postgres container), its values as variables."""
    return container_exec(POSTGRES_CONTAINER, psql(sql, variables))


# Every dump in the backups directory and its scheduled/ subdirectory: the host's clock first
# (``now EPOCH``), then ``dump MTIME SIZE MODE PATH`` a dump, each followed by ``meta JSON`` when
# its metadata file exists (``resto-<time>.json`` beside a scheduled dump, ``<dump>.json`` beside
# a pre-deploy one). JSON escapes line breaks inside strings: removing the raw ones keeps it valid.
BACKUPS_LISTED_SCRIPT = (
    'printf "now %s\\n" "$(date -u +%s)"; '
    'for f in "$0"/*.dump "$1"/*.dump; do [ -f "$f" ] || continue; '
    'printf "dump %s %s\\n" "$(stat -c "%Y %s %a" "$f")" "$f"; '
    'for m in "${f%.dump}.json" "$f.json"; do [ ! -f "$m" ] || printf "meta %s\\n" "$(tr -d "\\n" < "$m")"; done; '
    "done; exit 0"
)


def backups_listed(backups_dir: str, scheduled_dir: str) -> list[str]:
    """Every dump on the host with its time, size, mode and metadata (``BACKUPS_LISTED_SCRIPT``'s lines)."""
    return ["sh", "-c", BACKUPS_LISTED_SCRIPT, backups_dir, scheduled_dir]


def backup_verified(verify_script: str, dump: str | None = None) -> list[str]:
    """The installed ``bin/backup-verify``: restores the newest scheduled dump, or ``dump``, into the
    scratch database and prints one JSON report (exit 1 unless every count matches)."""
    return run_script(verify_script, *([dump] if dump else []))


ADMIN_DLQ_REPLAY_PATH = "/v1/admin/dlq/replay"


def admin_api_post(api_host: str, path: str, body: str) -> list[str]:
    """POST the JSON ``body`` to the admin API through the host's own edge (Traefik on 127.0.0.1:443,
    as the smoke checks reach it): the answer's body, then its HTTP status alone on the last line.

    The token is not here: it comes on stdin as curl configuration (:func:`admin_token_config`),
    never on a command line. TLS is not verified (``-k``): the request never leaves the host."""
    return ["curl", "-sS", "-k", "--max-time", "120", "--resolve", f"{api_host}:443:127.0.0.1", "--config", "-",
            "--request", "POST", "--header", "Content-Type: application/json", "--data-binary", body,
            "--write-out", "\\n%{http_code}", f"https://{api_host}{path}"]


def admin_token_config(token: str) -> str:
    """The curl configuration (read on stdin) that sends the admin token; secrets hold no quote,
    backslash or line break (settings.secret_rule), so the quoted value is taken as it is."""
    return f'header = "x-api-token: {token}"\n'
