#!/usr/bin/env bash
# Entrypoint of the MLflow image: the hosts and browser origins the server accepts follow the
# configuration. `mlflow server` answers 403 to a request whose Host header is not allowed
# ("Invalid Host header", DNS-rebinding protection) and to a state-changing API call from a
# browser origin that is not allowed (the UI's run search is a POST), so remote access needs both.
# Allowed:
# - always: the in-network name (mlflow, mlflow:<port>) and loopback (localhost, 127.0.0.1);
# - BIND_HOST=0.0.0.0 (ports open to the network): private-network addresses (MLflow's own
#   default list: 10.*, 172.16-31.*, 192.168.*), so http://<server's LAN IP>:<MLFLOW_PORT> works;
# - BIND_HOST=<one address>: that address;
# - MLFLOW_ALLOWED_HOSTS: more names or patterns, comma-separated (a DNS name, a public IP, or *).
# Added as --allowed-hosts / --cors-allowed-origins to `mlflow server` unless the command sets them.
#
# Authentication: with MLFLOW_AUTH_DATABASE_URI set, the server runs MLflow's basic-auth app
# (--app-name basic-auth). Its configuration file (the auth database's URI, so mode 600, in the
# container's home) and the accounts of .env (admin, the platform's, the model server's
# read-only one, written into the user store) come from mlflow-accounts.py --auth-ini before the
# server starts: the same code renders both natively (chicago_crime/devtools/mlflow_accounts.py),
# and no default admin ever exists.
set -euo pipefail

if [[ "${1:-}" == "mlflow" && "${2:-}" == "server" && -n "${MLFLOW_AUTH_DATABASE_URI:-}" ]]; then
  export MLFLOW_AUTH_CONFIG_PATH="${HOME:-/home/mlflow}/basic_auth.ini"
  python /usr/local/lib/mlflow-accounts.py --auth-ini "${MLFLOW_AUTH_CONFIG_PATH}"
  [[ " $* " == *" --app-name"* ]] || set -- "$@" "--app-name=basic-auth"
fi

hosts=(mlflow localhost 127.0.0.1)
case "${BIND_HOST:-127.0.0.1}" in
  127.*|localhost) ;;
  0.0.0.0) hosts+=("10.*" "192.168.*" "172.1[6-9].*" "172.2[0-9].*" "172.3[01].*") ;;
  *) hosts+=("${BIND_HOST}") ;;
esac
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then
  IFS=, read -r -a extra <<<"${MLFLOW_ALLOWED_HOSTS}"
  hosts+=("${extra[@]}")
fi

allowed="" origins=""
for h in "${hosts[@]}"; do
  h="${h// /}"
  [[ -n "${h}" ]] || continue
  if [[ "${h}" == "*" ]]; then
    allowed+=",*" origins+=",*"
    continue
  fi
  allowed+=",${h},${h}:*"
  origins+=",http://${h},http://${h}:*,https://${h},https://${h}:*"
done

if [[ "${1:-}" == "mlflow" && "${2:-}" == "server" ]]; then
  args=" $* "
  [[ "${args}" == *" --allowed-hosts"* ]] || set -- "$@" "--allowed-hosts=${allowed#,}"
  [[ "${args}" == *" --cors-allowed-origins"* ]] || set -- "$@" "--cors-allowed-origins=${origins#,}"
fi
exec "$@"
