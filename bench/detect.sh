#!/usr/bin/env bash
# Detection benchmark: decode + detect throughput on one core over stored WAL (what the vault
# does with every byte it receives), side by side with pg_waldump over the same files, in one run.
#   1. once: >= WAL_MB (1100) MB of pgbench WAL (pgbench -i, then TPC-B runs with frequent
#      checkpoints, so full-page images as in production), archived into a cache directory
#   2. holdfast: crates/capture/examples/detect_wal (release) pinned to one CPU
#   3. pg_waldump over the same segments: printing to /dev/null, and --quiet (decode only)
#
# One command (as root, Debian 12 with Rust): bench/detect.sh   (also: ./run bench detect)
# Env: WAL_MB=1100 DETECT_WAL_CACHE=/var/tmp/holdfast-bench/detect-wal (kept between runs)
#      RUNS=3 (best of)
# Writes bench-out/detect.md.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WAL_MB="${WAL_MB:-1100}"
CACHE="${DETECT_WAL_CACHE:-/var/tmp/holdfast-bench/detect-wal}"
RUNS="${RUNS:-3}"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (PostgreSQL runs as the postgres user)"
PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"

# --- 1. the WAL sample, made once ----------------------------------------------------------------
if [ ! -f "$CACHE/.complete" ]; then
  log "generating >= $WAL_MB MB of pgbench WAL into $CACHE (once)"
  rm -rf "$CACHE"; mkdir -p "$CACHE/wal"
  W="$(mktemp -d /tmp/holdfast-detect.XXXXXX)"; chmod 755 "$W"
  mkdir -p "$W/sock"; chown -R postgres: "$W" "$CACHE"
  PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  trap 'runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m immediate -w stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
  runuser -u postgres -- "$PGBIN/initdb" -D "$W/data" --no-sync -A trust -U postgres >/dev/null
  cat >> "$W/data/postgresql.conf" <<EOF
listen_addresses = ''
port = $PORT
unix_socket_directories = '$W/sock'
wal_level = replica
archive_mode = on
archive_command = 'cp %p $CACHE/wal/%f'
fsync = off
synchronous_commit = off
checkpoint_timeout = 30s
max_wal_size = 512MB
shared_buffers = 128MB
EOF
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -l "$W/pg.log" -w start >/dev/null
  PSQL=(runuser -u postgres -- "$PGBIN/psql" -h "$W/sock" -p "$PORT" -U postgres -XAtq)
  BENCH=(runuser -u postgres -- "$PGBIN/pgbench" -h "$W/sock" -p "$PORT" -U postgres)
  "${BENCH[@]}" -i -s 20 -q postgres >/dev/null 2>&1
  start_lsn="$("${PSQL[@]}" -c 'select pg_current_wal_lsn()')"
  while :; do
    bytes="$("${PSQL[@]}" -c "select pg_current_wal_lsn() - '0/0'::pg_lsn")"
    [ "${bytes%.*}" -ge $((WAL_MB * 1000000)) ] && break
    log "  WAL so far: $((${bytes%.*} / 1000000)) MB"
    "${BENCH[@]}" -n -c 4 -j 2 -T 30 postgres >/dev/null 2>&1
  done
  "${PSQL[@]}" -c 'select pg_switch_wal()' >/dev/null
  "${PSQL[@]}" -c 'checkpoint' >/dev/null
  # Wait until the last segment is archived.
  last="$("${PSQL[@]}" -c 'select last_archived_wal from pg_stat_archiver')"
  for _ in $(seq 60); do
    cur="$("${PSQL[@]}" -c 'select pg_walfile_name(pg_current_wal_lsn())')"
    [ -n "$last" ] && [ "$last" \< "$cur" ] && break
    sleep 1; last="$("${PSQL[@]}" -c 'select last_archived_wal from pg_stat_archiver')"
  done
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/data" -m fast -w stop >/dev/null
  # Keep only the complete, consecutive run of segments from the first one.
  echo "$start_lsn" > "$CACHE/start_lsn"
  touch "$CACHE/.complete"
  trap - EXIT; rm -rf "$W"
fi
SEGS=$(ls "$CACHE/wal" | grep -E '^[0-9A-F]{24}$' | sort)
NSEG=$(echo "$SEGS" | wc -l)
FIRST=$(echo "$SEGS" | head -1); LAST=$(echo "$SEGS" | tail -1)
BYTES=$(( NSEG * 16 * 1024 * 1024 ))
log "WAL sample: $NSEG segments ($((BYTES / 1000000)) MB), $FIRST .. $LAST"
[ "$BYTES" -ge 1000000000 ] || die "the WAL sample is under 1 GB; remove $CACHE and rerun"

# --- 2. holdfast ---------------------------------------------------------------------------------
log "building the decode+detect example (release)"
(cd "$ROOT" && cargo build --release -q -p capture --example detect_wal)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/detect_wal"
cat "$CACHE"/wal/* > /dev/null  # page cache warm for both tools
best() { sort -n | head -1; }
hf_times=() ; hf_json=""
for _ in $(seq "$RUNS"); do
  hf_json="$(taskset -c 0 "$BIN" "$CACHE/wal")"
  hf_times+=("$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['seconds'])" "$hf_json")")
done
HF_S=$(printf '%s\n' "${hf_times[@]}" | best)
log "holdfast: $hf_json"

# --- 3. pg_waldump -------------------------------------------------------------------------------
# A pg_waldump that fails is a failed benchmark, never a fast time: the only error accepted is
# the end of the WAL written so far inside the last segment (a zeroed record header), which is
# where pg_waldump stops reading; anything else stops the script with pg_waldump's own words.
WD_ERR="$OUT/pg_waldump.stderr"
waldump_ok() {
  local rc=$1
  [ "$rc" = 0 ] && return 0
  if grep -qE "invalid record length at [0-9A-F]+/[0-9A-F]+: (wanted|expected at least) 24, got 0" "$WD_ERR" \
    && [ "$(grep -c . "$WD_ERR")" -le 1 ]; then
    return 0
  fi
  die "pg_waldump failed (exit $rc): $(head -5 "$WD_ERR")"
}
time_it() {
  local s e rc=0
  s=$(date +%s.%N)
  "$@" > /dev/null 2> "$WD_ERR" || rc=$?
  e=$(date +%s.%N)
  waldump_ok "$rc"
  python3 -c "print(round($e - $s, 3))"
}
wd_times=(); wq_times=()
for _ in $(seq "$RUNS"); do
  # `|| exit 1`: a failure inside $(…) ends only the subshell.
  t=$(time_it taskset -c 0 "$PGBIN/pg_waldump" -p "$CACHE/wal" "$FIRST" "$LAST") || exit 1
  wd_times+=("$t")
  t=$(time_it taskset -c 0 "$PGBIN/pg_waldump" --quiet -p "$CACHE/wal" "$FIRST" "$LAST") || exit 1
  wq_times+=("$t")
done
WD_S=$(printf '%s\n' "${wd_times[@]}" | best)
WQ_S=$(printf '%s\n' "${wq_times[@]}" | best)
RECORDS=$(python3 -c "import json,sys; print(json.loads(sys.argv[1])['records'])" "$hf_json")
rc=0; "$PGBIN/pg_waldump" --stats -p "$CACHE/wal" "$FIRST" "$LAST" > "$OUT/pg_waldump.stats" 2> "$WD_ERR" || rc=$?
waldump_ok "$rc"
WD_RECORDS=$(awk '/^Total/ {print $2; exit}' "$OUT/pg_waldump.stats")
[ -n "$WD_RECORDS" ] || die "pg_waldump --stats printed no total: $(head -5 "$OUT/pg_waldump.stats")"

mbs() { python3 -c "print(round($BYTES / 1e6 / $1, 1))"; }
ratio() { python3 -c "print(round($1 / $2, 2))"; }
REPORT="$OUT/detect.md"
{
  echo "# Decode + detect throughput, one core ($(date -u +%F))"
  echo
  echo "WAL: $NSEG segments of pgbench (scale 20 init + TPC-B, checkpoints every 30 s), $((BYTES / 1000000)) MB, $RECORDS records (pg_waldump --stats: $WD_RECORDS). Best of $RUNS, page cache warm, \`taskset -c 0\`."
  echo
  echo "| tool | seconds | MB/s | speed ÷ holdfast |"
  echo "|---|---|---|---|"
  echo "| holdfast decode + CRC + detect (\`detect_wal\`) | $HF_S | $(mbs "$HF_S") | 1.00 |"
  echo "| pg_waldump --quiet (decode + CRC only) | $WQ_S | $(mbs "$WQ_S") | $(ratio "$HF_S" "$WQ_S") |"
  echo "| pg_waldump (decode + print to /dev/null) | $WD_S | $(mbs "$WD_S") | $(ratio "$HF_S" "$WD_S") |"
  echo
  echo "holdfast output: \`$hf_json\`"
} > "$REPORT"
cat "$REPORT"
