#!/usr/bin/env bash
# Build local stand-ins for the public images docker-compose.yml uses, from Debian packages, for
# machines that cannot reach a container registry (CI here; any air-gapped site). Each stand-in is
# tagged with the name the compose file uses and keeps that image's entrypoint, command and paths,
# so the compose file itself stays unchanged. Grafana has no Debian package: there is no stand-in.
#
#   scripts/offline-images.sh [python] [redis] [prometheus] [alertmanager] [busybox] [wheels]
#
# With no argument, everything. Images that already exist are kept (delete one to rebuild it).
# `wheels` fills deploy/wheelhouse/ so the HemoStat image builds with PIP_NO_INDEX=1.
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian), OFFLINE_CACHE (.state/offline).
set -euo pipefail
cd "$(dirname "$0")/.."

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(python redis prometheus alertmanager busybox wheels)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${OFFLINE_CACHE:-.state/offline}
BASE=hemostat-offline/base:bookworm
PACKAGES=ca-certificates,python3,python3-pip,python3-venv,redis-server,prometheus,prometheus-alertmanager,wget,procps,passwd

log() { printf '[offline-images] %s\n' "$*" >&2; }
have() { docker image inspect "$1" >/dev/null 2>&1; }
export DOCKER_BUILDKIT=0  # the classic builder: FROM a local image, never a pull

base() {
  have "$BASE" && return
  command -v debootstrap >/dev/null || {
    [ "$(id -u)" -eq 0 ] || { log "debootstrap is missing; install it"; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  }
  local root="$CACHE/rootfs"
  log "debootstrap bookworm with $PACKAGES (about a minute)"
  rm -rf "$root" && mkdir -p "$root"
  debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
  # Like the official python image: pip installs system-wide, `python` exists.
  rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python3"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/*
  printf '#!/bin/sh\nexec "$@"\n' > "$root/usr/local/bin/docker-entrypoint.sh"
  cp "$root/usr/local/bin/docker-entrypoint.sh" "$root/docker-entrypoint.sh"
  chmod +x "$root/usr/local/bin/docker-entrypoint.sh" "$root/docker-entrypoint.sh"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$BASE" >/dev/null
  rm -rf "$root"
  log "built $BASE"
}

standin() {  # tag, Dockerfile body (FROM base is added)
  local tag=$1 body=$2
  have "$tag" && { log "$tag exists"; return; }
  base
  local ctx="$CACHE/ctx"
  mkdir -p "$ctx"
  printf 'FROM %s\n%s\n' "$BASE" "$body" > "$ctx/Dockerfile"
  docker build -q -t "$tag" "$ctx" >/dev/null
  log "built $tag (stand-in)"
}

busybox_image() {
  local tag=busybox:1.36
  have "$tag" && { log "$tag exists"; return; }
  local bb=/bin/busybox root="$CACHE/busybox"
  { [ -x "$bb" ] && ! ldd "$bb" >/dev/null 2>&1; } || { log "needs a static /bin/busybox (busybox-static)"; exit 1; }
  rm -rf "$root" && mkdir -p "$root/bin" "$root/tmp" "$root/etc"
  cp "$bb" "$root/bin/busybox"
  for applet in $("$bb" --list); do [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"; done
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
  tar -C "$root" -c . | docker import -c 'ENV PATH=/bin' -c 'CMD ["sh"]' - "$tag" >/dev/null
  rm -rf "$root"
  log "built $tag (stand-in)"
}

wheels() {
  local py=${PYTHON:-.venv/bin/python}
  [ -x "$py" ] || py=python3
  log "building the wheelhouse (deploy/wheelhouse)"
  # setuptools and wheel: pip needs them to build HemoStat itself without an index.
  # async-timeout: redis needs it on Python < 3.11.3, which Debian's python3 (3.11.2) is.
  "$py" -m pip wheel --quiet --wheel-dir deploy/wheelhouse . setuptools wheel async-timeout 2>&1 | grep -v "^WARNING: Location" >&2 || true
  ls deploy/wheelhouse/hemostat-*.whl >/dev/null
}

mkdir -p "$CACHE"
for item in "${want[@]}"; do
  case "$item" in
    python) standin python:3.11-slim 'CMD ["python3"]' ;;
    redis) standin redis:7-alpine 'WORKDIR /data
VOLUME /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]' ;;
    prometheus) standin prom/prometheus:v2.53.0 'RUN mkdir -p /prometheus /etc/prometheus
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]' ;;
    alertmanager) standin prom/alertmanager:v0.27.0 'RUN ln -sf /usr/bin/prometheus-alertmanager /bin/alertmanager && mkdir -p /alertmanager /etc/alertmanager
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/bin/alertmanager"]
CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]' ;;
    busybox) busybox_image ;;
    wheels) wheels ;;
    *) log "unknown item: $item"; exit 2 ;;
  esac
done
