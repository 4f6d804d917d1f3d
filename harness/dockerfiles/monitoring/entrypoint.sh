#!/bin/sh
# Runs the packaged binary with the official image's default arguments when none are given.
set -eu
binary="/bin/${UPSTREAM_NAME}"
if [ "$#" -eq 0 ]; then
    case "$UPSTREAM_NAME" in
        prometheus) set -- --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus ;;
        alertmanager) set -- --config.file=/etc/alertmanager/alertmanager.yml --storage.path=/alertmanager ;;
        blackbox_exporter) set -- --config.file=/etc/blackbox_exporter/config.yml ;;
    esac
fi
exec "$binary" "$@"
