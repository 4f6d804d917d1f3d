# Managed by restobot (templates/provision/docker-default.sh): sourced by
# /etc/init.d/docker, which starts dockerd on hosts without systemd.
#
# The init script raises the open-files limit with `ulimit -n 1048576` under
# `set -e`. Where the hard limit cannot be raised (a container without
# CAP_SYS_RESOURCE, such as the local VPS) that aborts the start. This wrapper
# keeps the attempt and reports a refusal instead of failing; where the limit
# can be raised nothing changes.
ulimit() {
    command ulimit "$@" 2>/dev/null \
        || echo "docker init: 'ulimit $*' refused on this host; keeping $(command ulimit -n) open files" >&2
}
