#!/usr/bin/env bash
# The container engine for `make test-compose`: Debian's dockerd, loopback only, started and
# stopped by this script (never Debian's own service, which would create the docker0 bridge).
# See ../shared/notes/container-engine.md. Source it, then:
#
#   engine_install            # apt: docker.io + debootstrap (the package's service is not started)
#   trap engine_stop EXIT     # stops dockerd by its PID on every exit path, unmounts its netns
#   engine_start              # dockerd --bridge=none ...; exports DOCKER_HOST
#
# State: COMPOSE_TEST_HOME (images persist there between runs: the build cache), the daemon's
# runtime files (socket, pid, netns) under COMPOSE_TEST_RUN.

COMPOSE_TEST_HOME="${COMPOSE_TEST_HOME:-/var/lib/chicago-crime-compose}"
COMPOSE_TEST_RUN="${COMPOSE_TEST_RUN:-/run/chicago-crime-docker}"
ENGINE_PKGS=(docker.io debootstrap)

engine_log() { printf '[engine] %s\n' "$*" >&2; }

engine_install() {
  if dpkg -s "${ENGINE_PKGS[@]}" >/dev/null 2>&1; then
    return 0
  fi
  engine_log "installing ${ENGINE_PKGS[*]} (apt)"
  # policy-rc.d exit 101 = "do not start services": Debian's docker.service would create the
  # docker0 bridge. Machines of this kind ship one; make sure of it for the install.
  local own_policy=""
  if [[ ! -x /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${ENGINE_PKGS[@]}" >/dev/null
  if [[ -n "${own_policy}" ]]; then rm -f /usr/sbin/policy-rc.d; fi
}

engine_pid() {
  local pidfile="${COMPOSE_TEST_RUN}/dockerd.pid"
  [[ -s "${pidfile}" ]] && cat "${pidfile}"
}

engine_start() {
  mkdir -p "${COMPOSE_TEST_HOME}/docker" "${COMPOSE_TEST_RUN}"
  export DOCKER_HOST="unix://${COMPOSE_TEST_RUN}/docker.sock"
  local pid
  pid="$(engine_pid || true)"
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
    engine_log "dockerd already running (pid ${pid}); stop it first: a second run would share it"
    return 1
  fi
  engine_log "starting dockerd (no bridge, no iptables; data in ${COMPOSE_TEST_HOME}/docker)"
  dockerd --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --userland-proxy=false --storage-driver=overlay2 \
    --data-root="${COMPOSE_TEST_HOME}/docker" --exec-root="${COMPOSE_TEST_RUN}" \
    -H "${DOCKER_HOST}" --pidfile="${COMPOSE_TEST_RUN}/dockerd.pid" \
    >"${COMPOSE_TEST_HOME}/dockerd.log" 2>&1 &
  ENGINE_DOCKERD_PID=$!
  local i
  for i in $(seq 1 60); do
    if docker version >/dev/null 2>&1; then
      engine_log "dockerd ready (pid ${ENGINE_DOCKERD_PID}, $(docker version -f '{{.Server.Version}}'))"
      return 0
    fi
    if ! kill -0 "${ENGINE_DOCKERD_PID}" 2>/dev/null; then
      engine_log "dockerd exited while starting; last lines of ${COMPOSE_TEST_HOME}/dockerd.log:"
      tail -n 20 "${COMPOSE_TEST_HOME}/dockerd.log" >&2
      return 1
    fi
    sleep 0.5
  done
  engine_log "dockerd did not answer within 30 s (see ${COMPOSE_TEST_HOME}/dockerd.log)"
  return 1
}

engine_stop() {
  local pid="${ENGINE_DOCKERD_PID:-}"
  [[ -n "${pid}" ]] || pid="$(engine_pid || true)"
  if [[ -n "${pid}" ]] && kill -0 "${pid}" 2>/dev/null; then
    engine_log "stopping dockerd (pid ${pid})"
    kill -TERM "${pid}" 2>/dev/null || true
    local i
    for i in $(seq 1 60); do
      kill -0 "${pid}" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "${pid}" 2>/dev/null; then
      engine_log "dockerd did not stop within 30 s: killing it"
      kill -KILL "${pid}" 2>/dev/null || true
    fi
  fi
  if mountpoint -q "${COMPOSE_TEST_RUN}/netns/default" 2>/dev/null; then
    umount "${COMPOSE_TEST_RUN}/netns/default" || true
  fi
  rm -f "${COMPOSE_TEST_RUN}/dockerd.pid"
}
