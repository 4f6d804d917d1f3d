#!/bin/sh
# Same contract as the official image's docker-entrypoint.sh: arguments go to
# n8n (`command: worker` runs `n8n worker`); no arguments runs n8n's default
# command (start). Certificates dropped in /opt/custom-certificates are trusted.
if [ -d /opt/custom-certificates ]; then
  echo "Trusting custom certificates from /opt/custom-certificates."
  export NODE_OPTIONS="--use-openssl-ca $NODE_OPTIONS"
  export SSL_CERT_DIR=/opt/custom-certificates
fi

if [ "$#" -gt 0 ]; then
  exec n8n "$@"
else
  exec n8n
fi
