#!/bin/sh
# Stand-in for the official valkey image's entrypoint (same documented behaviour): flags or a
# *.conf first -> valkey-server; no config file -> --protected-mode no; as root, own the working
# directory and re-exec as the valkey user; umask 0077.
set -e
case "$1" in
  -*|*.conf) set -- valkey-server "$@" ;;
esac
if [ "$1" = "valkey-server" ]; then
  case "$2" in
    *.conf) ;;
    *) set -- "$@" --protected-mode no ;;
  esac
  if [ "$(id -u)" = "0" ]; then
    find . \! -user valkey -exec chown valkey '{}' +
    exec setpriv --reuid=valkey --regid=valkey --clear-groups -- "$0" "$@"
  fi
  umask 0077
fi
exec "$@"
