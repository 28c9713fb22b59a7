#!/usr/bin/env bash
# Make sure what the tests and `make run` need is on this machine, installing it from Debian
# packages when missing (as root), and starting a Docker engine when none answers.
#
#   scripts/ensure-services.sh [redis] [docker] [busybox] [prometheus] [chromium]
#
# REDIS_URL / DOCKER_HOST set by the caller mean "use that one": nothing is installed for it.
set -euo pipefail

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(redis docker busybox)

log() { printf '[ensure-services] %s\n' "$*" >&2; }
is_root() { [ "$(id -u)" -eq 0 ]; }

missing_pkgs=()
need_pkg() { missing_pkgs+=("$1"); }

for item in "${want[@]}"; do
  case "$item" in
    redis)
      # Tests start private redis-server processes; `make run` starts one too.
      command -v redis-server >/dev/null 2>&1 || need_pkg redis-server ;;
    docker)
      if [ -z "${DOCKER_HOST:-}" ] && ! command -v dockerd >/dev/null 2>&1; then
        need_pkg docker.io
      fi ;;
    busybox)
      # The test image is a static busybox imported with `docker import` (no registry here).
      # (ldd fails on a static binary)
      if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
        need_pkg busybox-static
      fi ;;
    prometheus)
      command -v promtool >/dev/null 2>&1 || need_pkg prometheus
      command -v prometheus-alertmanager >/dev/null 2>&1 || need_pkg prometheus-alertmanager ;;
    chromium)
      command -v chromium >/dev/null 2>&1 || need_pkg chromium ;;
    compose) ;;  # handled below: Compose v2 is not packaged for bookworm
    *) log "unknown item: $item"; exit 2 ;;
  esac
done

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  if ! is_root; then
    log "missing: ${missing_pkgs[*]} — install them (apt-get install ${missing_pkgs[*]}) or run as root"
    exit 1
  fi
  log "installing ${missing_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps the packages from starting system services we do not want.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

docker_ok() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

for item in "${want[@]}"; do
  [ "$item" = docker ] || continue
  if [ -n "${DOCKER_HOST:-}" ]; then
    docker_ok || { log "DOCKER_HOST=$DOCKER_HOST does not answer"; exit 1; }
    continue
  fi
  if docker_ok; then continue; fi
  if ! is_root; then
    log "no Docker engine answers and we are not root: start dockerd or set DOCKER_HOST"
    exit 1
  fi
  log "starting dockerd (log: /var/log/hemostat-dockerd.log)"
  nohup setsid dockerd >/var/log/hemostat-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker_ok && break
    sleep 0.5
  done
  docker_ok || { log "dockerd did not come up:"; tail -20 /var/log/hemostat-dockerd.log >&2; exit 1; }
  log "dockerd is up: $(docker version --format '{{.Server.Version}}')"
done

install_compose() {
  # Compose v2 is packaged from Debian 13 (trixie) on; its binary needs only libc6 (>= 2.34),
  # which bookworm has. Installed through apt from Debian's signed trixie repository, for this
  # one package only (pinned low, and the source removed again afterwards): no file fetched by
  # hand, nothing installed without apt checking Debian's signatures.
  local list=/etc/apt/sources.list.d/hemostat-trixie.sources pin=/etc/apt/preferences.d/hemostat-trixie
  log "installing Docker Compose v2 (docker-compose from Debian trixie, through apt)"
  printf 'Types: deb\nURIs: %s\nSuites: trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" > "$list"
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$pin"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose/trixie >/dev/null
  rm -f "$list" "$pin"
  apt-get update -qq
}

for item in "${want[@]}"; do
  [ "$item" = compose ] || continue
  docker compose version >/dev/null 2>&1 && continue
  is_root || { log "docker compose v2 is missing; install it"; exit 1; }
  install_compose
  docker compose version >&2
done
