#!/bin/sh
# The official traefik image's entrypoint: flags (`--configFile=...`) and
# traefik subcommands (`version`, `healthcheck`) run traefik; anything else runs as is.
set -e

if [ "${1#-}" != "$1" ]; then
    set -- traefik "$@"
fi

if traefik "$1" --help >/dev/null 2>&1; then
    set -- traefik "$@"
else
    echo "= '$1' is not a Traefik command: assuming shell execution." 1>&2
fi

exec "$@"
