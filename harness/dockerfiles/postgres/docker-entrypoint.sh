#!/usr/bin/env bash
# The official postgres image's entrypoint contract, reimplemented for Debian's
# postgresql-17. On an empty PGDATA: initdb (scram-sha-256 for host connections),
# create POSTGRES_DB, run /docker-entrypoint-initdb.d/* in order; then exec
# postgres as the postgres user (PID 1, so `docker stop` reaches it).
set -Eeo pipefail

# file_env VAR [DEFAULT]: VAR may come from VAR or from the file named by VAR_FILE.
file_env() {
    local var="$1" file_var="${1}_FILE" def="${2:-}" val
    if [ "${!var:-}" ] && [ "${!file_var:-}" ]; then
        echo >&2 "error: both $var and $file_var are set (but are exclusive)"
        exit 1
    fi
    val="$def"
    if [ "${!var:-}" ]; then
        val="${!var}"
    elif [ "${!file_var:-}" ]; then
        val="$(< "${!file_var}")"
    fi
    export "$var"="$val"
    unset "$file_var"
}

docker_setup_env() {
    file_env POSTGRES_PASSWORD
    file_env POSTGRES_USER postgres
    file_env POSTGRES_DB "$POSTGRES_USER"
    file_env POSTGRES_INITDB_ARGS
    : "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"
    DATABASE_ALREADY_EXISTS=
    if [ -s "$PGDATA/PG_VERSION" ]; then
        DATABASE_ALREADY_EXISTS=true
    fi
}

docker_create_db_directories() {
    mkdir -p "$PGDATA"
    chmod 00700 "$PGDATA" || :
    mkdir -p /var/run/postgresql
    chmod 03775 /var/run/postgresql || :
    if [ "$(id -u)" = 0 ]; then
        find "$PGDATA" \! -user postgres -exec chown postgres '{}' +
        find /var/run/postgresql \! -user postgres -exec chown postgres '{}' +
    fi
}

docker_verify_minimum_env() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        cat >&2 <<-'EOM'
		error: Database is uninitialized and superuser password is not specified.
		       Set POSTGRES_PASSWORD (or POSTGRES_PASSWORD_FILE) to a non-empty value,
		       or POSTGRES_HOST_AUTH_METHOD=trust to allow connections without one.
		EOM
        exit 1
    fi
}

docker_init_database_dir() {
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" --pwfile=<(printf '%s\n' "$POSTGRES_PASSWORD") \
        $POSTGRES_INITDB_ARGS
}

pg_setup_hba_conf() {
    {
        printf '\n'
        if [ "$POSTGRES_HOST_AUTH_METHOD" = trust ]; then
            printf '# warning: trust is enabled for all connections\n'
        fi
        printf 'host all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD"
    } >> "$PGDATA/pg_hba.conf"
}

docker_temp_server_start() {
    # Unix socket only while the init scripts run.
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432" -w start
}

docker_temp_server_stop() {
    PGUSER="$POSTGRES_USER" pg_ctl -D "$PGDATA" -m fast -w stop
}

docker_setup_db() {
    local exists
    # Statements on stdin: psql interpolates :'db' there, not in -c.
    exists="$(PGPASSWORD='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
        --dbname postgres -tA -v db="$POSTGRES_DB" \
        <<<"SELECT 1 FROM pg_database WHERE datname = :'db';")"
    if [ -z "$exists" ]; then
        PGPASSWORD='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password \
            --dbname postgres -v db="$POSTGRES_DB" <<<'CREATE DATABASE :"db";'
        echo
    fi
}

docker_process_init_files() {
    local f
    printf '\n'
    for f in "$@"; do
        case "$f" in
            *.sh)
                if [ -x "$f" ]; then
                    printf '%s: running %s\n' "$0" "$f"
                    "$f"
                else
                    printf '%s: sourcing %s\n' "$0" "$f"
                    # shellcheck disable=SC1090
                    . "$f"
                fi
                ;;
            *.sql)    printf '%s: running %s\n' "$0" "$f"; docker_process_sql -f "$f"; printf '\n' ;;
            *.sql.gz) printf '%s: running %s\n' "$0" "$f"; gunzip -c "$f" | docker_process_sql; printf '\n' ;;
            *)        printf '%s: ignoring %s\n' "$0" "$f" ;;
        esac
    done
}

# docker_process_sql [psql args]: run SQL as POSTGRES_USER on POSTGRES_DB.
docker_process_sql() {
    PGHOST='' PGHOSTADDR='' PGPASSWORD='' psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" \
        --no-password --no-psqlrc --dbname "$POSTGRES_DB" "$@"
}

main() {
    if [ "${1:0:1}" = '-' ]; then
        set -- postgres "$@"
    fi

    if [ "$1" = postgres ]; then
        docker_setup_env
        docker_create_db_directories
        if [ "$(id -u)" = 0 ]; then
            exec gosu postgres "${BASH_SOURCE[0]}" "$@"
        fi

        if [ -z "$DATABASE_ALREADY_EXISTS" ]; then
            docker_verify_minimum_env
            docker_init_database_dir
            pg_setup_hba_conf
            export PGPASSWORD="${PGPASSWORD:-$POSTGRES_PASSWORD}"
            docker_temp_server_start
            docker_setup_db
            shopt -s nullglob
            docker_process_init_files /docker-entrypoint-initdb.d/*
            shopt -u nullglob
            docker_temp_server_stop
            unset PGPASSWORD
            printf '\nPostgreSQL init process complete; ready for start up.\n\n'
        else
            printf '\nPostgreSQL Database directory appears to contain a database; Skipping initialization\n\n'
        fi
    fi

    exec "$@"
}

main "$@"
