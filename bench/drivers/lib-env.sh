# Shared by every driver script (sourced, not run): root, the Debian packages the driver needs
# (DRIVER_APT, set by the caller) and PostgreSQL 15, the holdfast binary (HOLDFAST_BIN, else a
# debug build), a work dir W (/tmp/holdfast-DRIVER_NAME.XXXXXX), three free ports PGPORT, GPORT
# and CPORT, and a cleanup on exit that kills PIDS and stops the server in $W/pg.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KEEP="${KEEP:-0}"
. "$ROOT/bench/lib.sh"
require_root "it installs packages and runs PostgreSQL as the postgres user"
need_apt=("${DRIVER_APT[@]}")
ls -d /usr/lib/postgresql/15/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15 postgresql-client-15)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PGBIN=/usr/lib/postgresql/15/bin
if [ -n "${HOLDFAST_BIN:-}" ]; then
  HF="$HOLDFAST_BIN"
else
  log "building holdfast"
  (cd "$ROOT" && cargo build -p holdfast -q)
  HF="$ROOT/target/debug/holdfast"
fi

W="$(mktemp -d "/tmp/holdfast-${DRIVER_NAME:-driver}.XXXXXX")"
chmod 755 "$W"
PGPORT="$(free_port)" GPORT="$(free_port)" CPORT="$(free_port)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  su postgres -c "$PGBIN/pg_ctl -D $W/pg -m immediate stop" >/dev/null 2>&1 || true
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
