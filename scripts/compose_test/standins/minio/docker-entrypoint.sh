#!/bin/sh
# Stand-in for MinIO's docker-entrypoint.sh (same documented behaviour): any command that is not
# `minio` gets `minio` prepended (`server /data` -> `minio server /data`).
set -e
if [ "${1}" != "minio" ] && [ -n "${1}" ]; then
  set -- minio "$@"
fi
exec "$@"
