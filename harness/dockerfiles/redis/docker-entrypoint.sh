#!/bin/sh
# The official redis image's contract: `redis-server ARGS` (or bare flags, or a
# .conf file) runs the server as the redis user in /data. The official build
# defaults protected-mode to "no"; Debian's defaults to "yes", so
# `--protected-mode no` is appended unless the arguments or a config file set it.
set -e

if [ "${1#-}" != "$1" ] || [ "${1%.conf}" != "$1" ]; then
    set -- redis-server "$@"
fi

if [ "$1" = "redis-server" ]; then
    sets_protected_mode=no
    for arg in "$@"; do
        case "$arg" in
            --protected-mode) sets_protected_mode=yes ;;
            *.conf) grep -qiE '^[[:space:]]*protected-mode' "$arg" 2>/dev/null && sets_protected_mode=yes ;;
        esac
    done
    if [ "$sets_protected_mode" = no ]; then
        set -- "$@" --protected-mode no
    fi
    if [ "$(id -u)" = "0" ]; then
        find . \! -user redis -exec chown redis '{}' + 2>/dev/null || true
        exec setpriv --reuid=redis --regid=redis --init-groups "$@"
    fi
fi

exec "$@"
