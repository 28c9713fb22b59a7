#!/usr/bin/env bash
# The README's two commands as a newcomer runs them, with nothing cached, timed:
#
#   1. a clean clone of this repository's HEAD in a temporary folder;
#   2. every cache the two commands fill is removed: no .venv, no .state, an empty pip cache,
#      and none of the images the project builds or imports (stand-ins, test image, hemostat);
#   3. `make run` until every agent has started and the dashboard answers, then Ctrl-C;
#   4. `make test`.
#
# Debian packages that are already installed stay (removing docker.io would stop every engine on
# the machine); on a machine without them, both commands install them first. The host's dockerd
# is left running for the same reason. Exit status: make test's.
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/hemostat-fresh-XXXXXX)
log() { printf '[fresh-machine] %s\n' "$*" >&2; }
elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

log "clean clone of $(git -C "$src" rev-parse --short HEAD) in $work/hemostat"
git clone -q "$src" "$work/hemostat"
cd "$work/hemostat"

if timeout 10 docker info >/dev/null 2>&1; then
  images=$(docker images --format '{{.Repository}}:{{.Tag}}' | grep -E \
    '^(hemostat:|hemostat-offline/|hemostat-test/|python:3\.11-slim|redis:7-alpine|prom/prometheus:v2\.53\.0|prom/alertmanager:v0\.27\.0|busybox:1\.36)' || true)
  if [ -n "$images" ]; then
    log "removing cached images: $(echo "$images" | tr '\n' ' ')"
    # shellcheck disable=SC2086
    docker rmi -f $images >/dev/null
  fi
  docker image prune -f >/dev/null
fi
export PIP_CACHE_DIR="$work/pip-cache"  # every wheel is downloaded again

log "make run (until every agent has started and the dashboard answers)"
t0=$SECONDS
setsid make run >"$work/make-run.log" 2>&1 &
run_pid=$!
ready=""
while [ $((SECONDS - t0)) -lt 900 ] && kill -0 "$run_pid" 2>/dev/null; do
  started=0
  for agent in monitor analyzer responder alert metrics; do
    grep -qs '"agent.started"\|agent.started' ".state/logs/$agent.log" && started=$((started + 1))
  done
  if [ "$started" -eq 5 ] && curl -fs -o /dev/null http://127.0.0.1:8501/_stcore/health; then
    ready=yes
    break
  fi
  sleep 2
done
run_s=$((SECONDS - t0))
kill -INT -- "-$run_pid" 2>/dev/null || true
wait "$run_pid" 2>/dev/null || true
if [ -z "$ready" ]; then
  log "make run did not come up within $(elapsed "$run_s"); its output:"
  tail -40 "$work/make-run.log" >&2
  exit 1
fi
log "make run: every agent started and the dashboard answered after $(elapsed "$run_s")"

log "make test"
t1=$SECONDS
set +e
make test 2>&1 | tee "$work/make-test.log"
rc=${PIPESTATUS[0]}
set -e
test_s=$((SECONDS - t1))
summary=$(grep -E '^=+ .*(passed|failed).* =+$' "$work/make-test.log" | tail -1 || true)
log "make run ready in $(elapsed "$run_s"); make test rc=$rc in $(elapsed "$test_s"): $summary"
log "machine: $(hostname) $(uname -m) $(nproc) cpus; $(date -u '+%Y-%m-%d %H:%M UTC'); logs in $work"
exit "$rc"
