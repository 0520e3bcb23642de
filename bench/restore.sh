#!/usr/bin/env bash
# Restore / RTO benchmark: point-in-time restore to a time near the end of a pgbench write load,
# holdfast side by side with pgBackRest and with pg_basebackup + a plain `cp` restore_command,
# on one PostgreSQL cluster, in one run:
#   1. source: pgbench -i -s SCALE; the holdfast vault streams it; archive_command pushes every
#      segment to pgBackRest (archive-async) AND copies it into a plain WAL archive directory
#   2. base backups: holdfast backup, pgBackRest full, pg_basebackup -Fp (plain directory)
#   3. pgbench write load (-N -c 4 -j 2) for DURATION s; the target time is taken ~5 s before it
#      ends (whole seconds, UTC); the reference (pgbench_history rows committed by the target,
#      sum of their deltas, sum(abalance) at the target) is computed from commit timestamps
#   4. the disk's sequential write speed (dd, O_DIRECT and fdatasync) on the restore filesystem
#   5. three restores to the target, each into a fresh empty directory, page cache dropped before
#      each, timed from command start until the restored server accepts connections, promoted:
#        holdfast restore --start --promote | pgbackrest restore (process-max=2, async
#        archive-get) + pg_ctl start | cp -a of the pg_basebackup dir + restore_command 'cp'
#      each verified against the reference; peak RSS of the restoring process (and the vault's)
#
# One command (as root, on Debian 12 with Rust): bench/restore.sh    (also: ./run bench restore)
# Env: SCALE=100 (pgbench scale) DURATION=300 (seconds of pgbench write load) CLIENTS=4
#      BENCH_WORK=<dir> (default: a new dir under /tmp, removed at exit unless KEEP=1)
#      BASE_SYNC=1 (also: holdfast restore without --start, then `sync`, timed: base data on disk)
# Writes bench-out/restore.md (report), bench-out/restore.json (raw), bench-out/restore-vault.log.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCALE="${SCALE:-100}"
DURATION="${DURATION:-300}"
CLIENTS="${CLIENTS:-4}"
BASE_SYNC="${BASE_SYNC:-1}"
KEEP="${KEEP:-0}"
OUT="$ROOT/bench-out"
PY="$ROOT/bench/restore.py"
mkdir -p "$OUT"

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and runs PostgreSQL as the postgres user)"
[ "$DURATION" -ge 4 ] || die "DURATION must be at least 4 seconds"

# --- prerequisites -----------------------------------------------------------------------------
need_apt=()
command -v pgbackrest >/dev/null || need_apt+=(pgbackrest)
[ -x /usr/bin/time ] || need_apt+=(time)
command -v python3 >/dev/null || need_apt+=(python3)
ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql-15 postgresql-client-15)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"

log "building holdfast (release)"
(cd "$ROOT" && cargo build --release -p holdfast -q)
HF="$ROOT/target/release/holdfast"

# --- work area -------------------------------------------------------------------------------
if [ -n "${BENCH_WORK:-}" ]; then W="$BENCH_WORK"; rm -rf "$W"; mkdir -p "$W"; else W="$(mktemp -d /tmp/holdfast-rto.XXXXXX)"; fi
chmod 755 "$W"
DATA="$W/pg/data" SOCK="$W/pg/sock" V="$W/vault" PBR="$W/pgbackrest"
PBRCONF="$PBR/pgbackrest.conf"
ARCH="$W/walarchive"      # the plain `cp` WAL archive
PGBB="$W/pgbb"            # the pg_basebackup -Fp copy
RDIR="$W/restore"         # restored data directories (one at a time)
RSOCK="$W/rsock"          # sockets of the restored servers started by this script
RES="$W/results.tsv"
: > "$RES"
mkdir -p "$SOCK" "$PBR"/{repo,log,lock,spool} "$W/pgtmp" "$ARCH" "$RDIR" "$RSOCK"
chown -R postgres: "$W/pg" "$PBR" "$W/pgtmp" "$ARCH" "$RDIR" "$RSOCK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PGPORT="${PGPORT:-$(free_port)}"
REPPW="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
echo "$REPPW" > "$W/rep.password"
chmod 600 "$W/rep.password"

VPID="" BENCH_PID=""
cleanup() {
  set +e
  [ -n "$BENCH_PID" ] && kill "$BENCH_PID" 2>/dev/null
  # Restored servers (started by holdfast restore or by this script) under $RDIR.
  for pid_file in "$RDIR"/*/postmaster.pid; do
    [ -f "$pid_file" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid_file")" -m immediate -w stop >/dev/null 2>&1
  done
  [ -n "${HF_SOCKDIR:-}" ] && rm -rf "$HF_SOCKDIR"
  if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; fi
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  [ -f "$W/vault.log" ] && cp "$W/vault.log" "$OUT/restore-vault.log"
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

# rec KEY VALUE: one raw figure (VALUE is JSON if it parses, else a string).
rec() { printf '%s\t%s\n' "$1" "$2" >> "$RES"; }
fail() { log "FAILURE: $1: $2"; rec "failure_$1" "$(echo "$2" | tr '\n\t' '  ' | cut -c1-600)"; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(round($2 - $1, 3))"; }
size_of() { du -sb "$1" | cut -f1; }
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
pg() { runuser -u postgres -- "$@"; }
psql_() { timeout 1800 "$PGBIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -XAtq -c "$1"; }
pgbr() { pg pgbackrest --config="$PBRCONF" --stanza=bench "$@"; }
vmhwm_reset() { echo 5 > "/proc/$VPID/clear_refs"; }
vmhwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$VPID/status"; }
maxrss_kb() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }
# CPU seconds: of a /usr/bin/time -v run (user + system, with the children it waited for), of
# a live process so far, and of the whole machine so far (every process, other work included).
time_cpu_s() { awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$1"; }
proc_cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
machine_cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
ticks_s() { python3 -c "import os; print(round(($2 - $1) / os.sysconf('SC_CLK_TCK'), 2))"; }
DROP_CACHES=no
drop_caches() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROP_CACHES=yes; else DROP_CACHES=no; fi
}
# Other work on these shared cores shows here (recorded before each restore).
loadavg() { rec "${1}_loadavg" "\"$(cut -d' ' -f1-3 /proc/loadavg)\""; }

rec started "\"$(date -u +%FT%TZ)\""
rec cores "$(nproc)"
rec mem_mb "$(awk '/^MemTotal/ {print int($2/1024)}' /proc/meminfo)"
rec scale "$SCALE"
rec duration "$DURATION"
rec clients "$CLIENTS"
rec pg_version "\"$("$PGBIN/postgres" --version | awk '{print $3}')\""
rec pgbackrest_version "\"$(pgbackrest version | awk '{print $2}')\""
rec holdfast_version "\"$("$HF" --version | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo ?)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo '+dirty'))\""
rec invocation "\"SCALE=$SCALE DURATION=$DURATION CLIENTS=$CLIENTS bash bench/restore.sh\""
rec filesystem "$(jstr "$(df -PT "$W" | awk 'NR==2 {print $1" "$2}')")"

# --- PostgreSQL ------------------------------------------------------------------------------
log "initdb (port $PGPORT) + pgbench -i -s $SCALE"
pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
# track_commit_timestamp: the reference for "restored to the target" is the set of
# pgbench_history rows whose transaction committed at or before it, by commit timestamp (the
# same timestamp recovery_target_time compares against).
cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 256MB
max_wal_size = 4GB
track_commit_timestamp = on
archive_mode = on
archive_command = '/bin/true'
EOF
pg "$PGBIN/pg_ctl" -D "$DATA" -l "$W/pg/log" -w start >/dev/null
psql_ "CREATE ROLE holdfast_rep LOGIN REPLICATION PASSWORD '$REPPW'"
pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1 >&2
psql_ "CHECKPOINT"
rec input_bytes "$(( $(size_of "$DATA") - $(size_of "$DATA/pg_wal") ))"
rec db_bytes "$(psql_ "SELECT pg_database_size('postgres')")"

# --- pgBackRest + the plain cp archive ---------------------------------------------------------
log "pgBackRest stanza (archive-async, process-max=2) + cp archive"
cat > "$PBRCONF" <<EOF
[global]
repo1-path=$PBR/repo
repo1-retention-full=9
log-path=$PBR/log
lock-path=$PBR/lock
spool-path=$PBR/spool
compress-type=zst
process-max=2
archive-async=y
start-fast=y
log-level-console=warn
log-level-file=info

[bench]
pg1-path=$DATA
pg1-port=$PGPORT
pg1-socket-path=$SOCK
pg1-user=postgres
EOF
chown postgres: "$PBRCONF"
ARCHIVE_COMMAND="pgbackrest --config=$PBRCONF --stanza=bench archive-push %p && cp %p $ARCH/%f.tmp && mv -f $ARCH/%f.tmp $ARCH/%f"
psql_ "ALTER SYSTEM SET archive_command = '$ARCHIVE_COMMAND'"
psql_ "SELECT pg_reload_conf()" >/dev/null
pgbr stanza-create
pgbr check
rec cmd_archive_command "$(jstr "$ARCHIVE_COMMAND")"
rec cmd_pgbackrest_conf "$(jstr "$(cat "$PBRCONF")")"

# --- the vault -------------------------------------------------------------------------------
log "vault init + serve"
RECIPIENT="$("$HF" escrow-keygen --out "$W/escrow.key" 2>/dev/null | grep -o 'age1[0-9a-z]*' | head -1)"
"$HF" vault init --dir "$V" --escrow-recipient "$RECIPIENT" --listen 127.0.0.1:0 --admin-token-file "$V/admin.token" >/dev/null 2>&1
cat >> "$V/vault.toml" <<EOF

[[cluster]]
name = "bench"
hosts = ["127.0.0.1:$PGPORT"]
user = "holdfast_rep"
password_file = "$W/rep.password"
synchronous = false
EOF
CA="$V/tls/cert.pem"
rm -f "$V/ready.json"
RUST_LOG=info "$HF" vault serve --config "$V/vault.toml" --listen 127.0.0.1:0 --ready-file "$V/ready.json" >> "$W/vault.log" 2>&1 &
VPID=$!
for _ in $(seq 1 300); do [ -s "$V/ready.json" ] && break; kill -0 "$VPID" 2>/dev/null || die "vault serve exited: $(tail -5 "$W/vault.log")"; sleep 0.1; done
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$V/ready.json")"
"$HF" vault token create --url "$URL" --ca "$CA" --token-file "$V/admin.token" --scope read --label bench --out "$W/read.token" >/dev/null
rec cmd_vault_cluster "$(python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.dumps(t[t.index("[[cluster]]"):]))' "$V/vault.toml")"

# wait_vault TIMEOUT: until the vault streams and its durable_lsn reaches the server's flush LSN.
wait_vault() {
  python3 "$PY" wait-durable "$URL" "$CA" "$W/read.token" bench "$(psql_ "SELECT pg_current_wal_flush_lsn()")" "${1:-600}"
}
# settle: every WAL segment so far in pgBackRest's repository, in the cp archive and durable in
# the vault (archive_command succeeds only once both pgBackRest and cp have the segment).
settle() {
  local seg last
  # A record first: pg_switch_wal() on an empty segment switches nothing.
  psql_ "SELECT pg_create_restore_point('bench-settle')" >/dev/null
  seg="$(psql_ "SELECT pg_walfile_name(pg_switch_wal())")"
  log "settle: waiting for archive_command to have archived $seg, then for the vault's durable_lsn"
  for _ in $(seq 1 2400); do
    last="$(psql_ "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")"
    [[ "$last" > "$seg" || "$last" == "$seg" ]] && break
    sleep 0.5
  done
  [[ "$last" > "$seg" || "$last" == "$seg" ]] || die "segment $seg not archived after 20 min: $(psql_ 'SELECT * FROM pg_stat_archiver')"
  [ -f "$ARCH/$seg" ] || die "archive_command reported $seg archived but $ARCH/$seg is missing"
  pgbr archive-get "$seg" "$W/pgtmp/check-$seg" >/dev/null 2>&1 || die "pgBackRest's repository does not serve $seg"
  rm -f "$W/pgtmp/check-$seg"
  wait_vault 1200 || die "the vault's durable_lsn did not reach the server's flush LSN within 20 min (see restore-vault.log)"
  echo "$seg"
}
log "waiting for the vault to stream"
wait_vault 120 || die "the vault does not stream WAL: $(python3 "$PY" status "$URL" "$CA" "$W/read.token" bench 2>&1 | cut -c1-600)"

# --- base backups (timed for information; the subject here is the restore) ----------------------
log "base backups: holdfast, pgBackRest full, pg_basebackup -Fp"
settle >/dev/null
t0=$(now)
HF_BACKUP="$("$HF" backup --cluster bench --url "$URL" --ca "$CA" --token-file "$V/admin.token" --json 2> "$W/hf-backup.err")" \
  || die "holdfast backup failed: $(cat "$W/hf-backup.err"); vault log: $(tail -20 "$W/vault.log")"
rec hf_backup_seconds "$(elapsed "$t0" "$(now)")"
rec hf_backup "$HF_BACKUP"
t0=$(now)
pgbr --type=full backup 2> "$W/pbr-backup.err" || die "pgBackRest backup failed: $(cat "$W/pbr-backup.err")"
rec pbr_backup_seconds "$(elapsed "$t0" "$(now)")"
rec pbr_backup_size "$(pgbr info --output=json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["info"]["size"])')"
mkdir -p "$PGBB"; chown postgres: "$PGBB"; chmod 700 "$PGBB"
t0=$(now)
pg env PGPASSWORD="$REPPW" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U holdfast_rep -D "$PGBB" -Fp -X stream -c fast 2> "$W/pgbb.err" \
  || die "pg_basebackup failed: $(cat "$W/pgbb.err")"
rec pgbb_backup_seconds "$(elapsed "$t0" "$(now)")"
rec pgbb_bytes "$(size_of "$PGBB")"
rec cmd_holdfast_backup "\"holdfast backup --cluster bench --url \$URL --ca V/tls/cert.pem --token-file V/admin.token --json\""
rec cmd_pgbackrest_backup "\"pgbackrest --config=pgbackrest.conf --stanza=bench --type=full backup\""
rec cmd_pg_basebackup "\"pg_basebackup -h 127.0.0.1 -p \$PORT -U holdfast_rep -D PGBB -Fp -X stream -c fast\""

# --- write load and the target -----------------------------------------------------------------
LSN0="$(psql_ "SELECT pg_current_wal_lsn()")"
log "pgbench write load: -N -c $CLIENTS -j 2 -T $DURATION"
pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" -N postgres > "$W/pgbench.out" 2>&1 &
BENCH_PID=$!
rec cmd_pgbench "\"pgbench -h SOCKDIR -p \$PORT -U postgres -c $CLIENTS -j 2 -T $DURATION -N postgres\""
BEFORE_END=5; [ "$DURATION" -lt 10 ] && BEFORE_END=$((DURATION / 2))
sleep $((DURATION - BEFORE_END))
# Whole seconds, UTC: holdfast restore --time takes RFC 3339 with whole seconds.
TARGET="$(psql_ "SELECT to_char(date_trunc('second', now()) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')")"
TARGET_PG="$(sed 's/T/ /; s/Z$/+00/' <<< "$TARGET")"
log "target time: $TARGET"
wait "$BENCH_PID" || die "pgbench failed: $(tail -5 "$W/pgbench.out")"
BENCH_PID=""
rec target "\"$TARGET\""
rec load_tps "$(awk '/^tps = / {print $3}' "$W/pgbench.out")"
rec load_wal_bytes "$(psql_ "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0')")"

# The reference, from commit timestamps (recovery_target_time stops before the first commit
# later than the target; commits at the target are included, recovery_target_inclusive = on).
TS="pg_xact_commit_timestamp(xmin)"
REF_SQL="SELECT count(*) FILTER (WHERE $TS <= '$TARGET_PG'), coalesce(sum(delta) FILTER (WHERE $TS <= '$TARGET_PG'), 0),
  count(*) FILTER (WHERE $TS > '$TARGET_PG'), coalesce(sum(delta) FILTER (WHERE $TS > '$TARGET_PG'), 0),
  count(*) FILTER (WHERE $TS IS NULL), (SELECT sum(abalance) FROM pgbench_accounts) FROM pgbench_history"
IFS='|' read -r REF_ROWS REF_DELTA AFTER_ROWS AFTER_DELTA NULL_TS NOW_ABAL <<< "$(psql_ "$REF_SQL")"
[ "$NULL_TS" = 0 ] || die "$NULL_TS pgbench_history rows have no commit timestamp: the reference cannot be computed"
[ "$AFTER_ROWS" -gt 0 ] || die "no pgbench transaction committed after the target $TARGET: the check would prove nothing"
REF_ABAL=$((NOW_ABAL - AFTER_DELTA))
rec ref_rows "$REF_ROWS"
rec ref_delta "$REF_DELTA"
rec ref_abalance "$REF_ABAL"
rec after_target_rows "$AFTER_ROWS"
log "reference at $TARGET: $REF_ROWS history rows (delta sum $REF_DELTA, sum(abalance) $REF_ABAL); $AFTER_ROWS rows committed after it"

SEG="$(settle)"
rec last_segment "\"$SEG\""
rec wal_segments_archived "$(ls "$ARCH" | grep -c '^[0-9A-F]\{24\}$')"
rec vault_status_before_restore "$(python3 "$PY" status "$URL" "$CA" "$W/read.token" bench)"
log "stopping the source cluster (a disaster: the restores need only the backups)"
psql_ "CHECKPOINT"
pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null

# --- disk sequential write speed, same filesystem as the restore targets -------------------------
INPUT_BYTES="$(awk -F'\t' '$1=="input_bytes" {print $2}' "$RES")"
DD_COUNT=$(( (INPUT_BYTES > 2147483648 ? INPUT_BYTES : 2147483648) / 16777216 + 1 ))
dd_speed() { # dd_speed FLAG: MB/s (1e6) of writing DD_COUNT x 16 MiB of zeros
  local t0 t1 bytes=$((DD_COUNT * 16777216))
  drop_caches
  t0=$(now)
  dd if=/dev/zero of="$RDIR/dd.bin" bs=16M count="$DD_COUNT" "$1" 2> "$W/dd.err" || die "dd $1: $(cat "$W/dd.err")"
  t1=$(now)
  rm -f "$RDIR/dd.bin"
  python3 -c "print(round($bytes / ($t1 - $t0) / 1e6, 1))"
}
log "disk sequential write speed (dd, $DD_COUNT x 16 MiB)"
rec dd_bytes "$((DD_COUNT * 16777216))"
rec dd_direct_mbs "$(dd_speed oflag=direct)"
rec dd_fdatasync_mbs "$(dd_speed conv=fdatasync)"
rec cmd_dd "\"dd if=/dev/zero of=RESTORE_FS/dd.bin bs=16M count=$DD_COUNT oflag=direct   (and conv=fdatasync); page cache dropped before each\""
log "dd: O_DIRECT $(awk -F'\t' '$1=="dd_direct_mbs" {print $2}' "$RES") MB/s, fdatasync $(awk -F'\t' '$1=="dd_fdatasync_mbs" {print $2}' "$RES") MB/s"

# --- the restores ------------------------------------------------------------------------------
VERIFY_SQL="SELECT pg_is_in_recovery(), count(*), coalesce(sum(delta), 0), count(*) FILTER (WHERE $TS > '$TARGET_PG'),
  (SELECT sum(abalance) FROM pgbench_accounts) FROM pgbench_history"
# verify KEY SOCKDIR PORT: the restored server holds exactly the reference, promoted.
verify() {
  local key=$1 got inrec rows delta after abal ok=no
  if got="$(timeout 600 "$PGBIN/psql" -h "$2" -p "$3" -U postgres -d postgres -XAtq -c "$VERIFY_SQL" 2> "$W/$key.verify.err")"; then
    IFS='|' read -r inrec rows delta after abal <<< "$got"
    [ "$inrec" = f ] && [ "$rows" = "$REF_ROWS" ] && [ "$delta" = "$REF_DELTA" ] && [ "$after" = 0 ] && [ "$abal" = "$REF_ABAL" ] && ok=yes
    rec "${key}_got" "$(jstr "in_recovery=$inrec rows=$rows delta=$delta after_target=$after sum_abalance=$abal")"
  else
    rec "${key}_got" "$(jstr "query failed: $(cat "$W/$key.verify.err")")"
  fi
  rec "${key}_verified" "\"$ok\""
  log "$key verified: $ok ($got; reference rows=$REF_ROWS delta=$REF_DELTA sum_abalance=$REF_ABAL)"
  [ "$ok" = yes ] || fail "${key}_verify" "restored state differs from the reference: $got"
}
# wait_promoted SOCKDIR PORT DATADIR: until pg_is_in_recovery() is false (polled every 100 ms,
# as holdfast restore --start does); fails if the server stops or 60 min pass.
wait_promoted() {
  local i v
  for i in $(seq 1 36000); do
    v="$("$PGBIN/psql" -h "$1" -p "$2" -U postgres -d postgres -XAtq -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)"
    [ "$v" = f ] && return 0
    if [ "$i" -gt 50 ] && [ ! -f "$3/postmaster.pid" ]; then return 1; fi
    sleep 0.1
  done
  return 1
}
# start_restored DIR PORT: pg_ctl start without waiting (-W), like holdfast restore --start.
start_restored() {
  pg "$PGBIN/pg_ctl" -D "$1" -l "$W/pgtmp/$(basename "$1").log" -o "-p $2 -k $RSOCK -c listen_addresses=''" -W start >/dev/null
}
stop_restored() {
  [ -f "$1/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1
  rm -rf "$1"
}

# 1. holdfast
log "restore 1/3: holdfast restore --time $TARGET --start --promote"
D="$RDIR/holdfast" P="$(free_port)"
drop_caches
loadavg hf
vmhwm_reset
c0=$(machine_cpu_ticks) v0=$(proc_cpu_ticks "$VPID")
t0=$(now)
set +e
RUST_LOG=restore=debug,info /usr/bin/time -v -o "$W/hf-restore.time" "$HF" restore --cluster bench --time "$TARGET" --target-dir "$D" --start --port "$P" --promote --json \
  --url "$URL" --ca "$CA" --token-file "$W/read.token" > "$W/hf-restore.json" 2> "$W/hf-restore.err"
rc=$?
set -e
t1=$(now)
rec hf_machine_cpu_s "$(ticks_s "$c0" "$(machine_cpu_ticks)")"
rec hf_vault_cpu_s "$(ticks_s "$v0" "$(proc_cpu_ticks "$VPID")")"
rec hf_proc_cpu_s "$(time_cpu_s "$W/hf-restore.time")"
rec hf_prefetch_dropped "$(grep -c 'dropped a segment replay has passed' "$W/hf-restore.err" || true)"
rec hf_rto "$(elapsed "$t0" "$t1")"
rec hf_vault_vmhwm_kb "$(vmhwm_kb)"
rec hf_rss_kb "$(maxrss_kb "$W/hf-restore.time")"
rec hf_drop_caches "\"$DROP_CACHES\""
grep -E ' (WARN|ERROR) ' "$W/hf-restore.err" | head -20 > "$W/hf-restore.warn" || true
[ -s "$W/hf-restore.warn" ] && rec hf_warnings "$(jstr "$(cat "$W/hf-restore.warn")")"
if [ "$rc" = 0 ] && [ -s "$W/hf-restore.json" ]; then
  rec hf_report "$(cat "$W/hf-restore.json")"
  HF_SOCKDIR="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket_dir"])' "$W/hf-restore.json")"
  verify hf "$HF_SOCKDIR" "$P"
  log "holdfast: RTO $(elapsed "$t0" "$t1") s — $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["verdict"])' "$W/hf-restore.json")"
else
  fail hf_restore "exit $rc: $(tail -c 1500 "$W/hf-restore.err") $(cat "$W/hf-restore.json")"
  rec hf_verified '"no"'
fi
[ -f "$D/holdfast_restore.log" ] && rec hf_pglog "$(python3 "$PY" pglog "$D/holdfast_restore.log")"
stop_restored "$D"
[ -n "${HF_SOCKDIR:-}" ] && rm -rf "$HF_SOCKDIR"
rec cmd_holdfast_restore "\"RUST_LOG=restore=debug,info /usr/bin/time -v holdfast restore --cluster bench --time $TARGET --target-dir DIR --start --port P --promote --json --url \$URL --ca V/tls/cert.pem --token-file read.token   # RTO = command start -> exit (it exits once the server is promoted and its self-check ran)\""

# 1b. holdfast base data only, then sync: the base phase including its writeback to disk.
if [ "$BASE_SYNC" = 1 ]; then
  log "extra: holdfast restore without --start, then sync (base data on disk)"
  D="$RDIR/holdfast-base"
  drop_caches
  t0=$(now)
  if "$HF" restore --cluster bench --time "$TARGET" --target-dir "$D" --json \
      --url "$URL" --ca "$CA" --token-file "$W/read.token" > "$W/hf-base.json" 2> "$W/hf-base.err"; then
    t1=$(now)
    sync
    t2=$(now)
    rec hfbase_report "$(cat "$W/hf-base.json")"
    rec hfbase_command_seconds "$(elapsed "$t0" "$t1")"
    rec hfbase_sync_seconds "$(elapsed "$t1" "$t2")"
  else
    fail hf_base_only "$(tail -c 1500 "$W/hf-base.err")"
  fi
  rm -rf "$D"
  rec cmd_holdfast_base_sync "\"holdfast restore --cluster bench --time $TARGET --target-dir DIR --json ...; sync   # timed separately\""
fi

# 2. pgBackRest
log "restore 2/3: pgbackrest restore --type=time (process-max=2, archive-async) + pg_ctl start"
D="$RDIR/pgbackrest" P="$(free_port)"
mkdir -p "$D"; chown postgres: "$D"; chmod 700 "$D"
drop_caches
loadavg pbr
c0=$(machine_cpu_ticks)
t0=$(now)
if pg /usr/bin/time -v -o "$W/pgtmp/pbr-restore.time" pgbackrest --config="$PBRCONF" --stanza=bench --pg1-path="$D" \
    --type=time --target="$TARGET_PG" --target-action=promote --archive-mode=off restore 2> "$W/pbr-restore.err"; then
  t1=$(now)
  start_restored "$D" "$P"
  if wait_promoted "$RSOCK" "$P" "$D"; then
    t2=$(now)
    rec pbr_machine_cpu_s "$(ticks_s "$c0" "$(machine_cpu_ticks)")"
    rec pbr_proc_cpu_s "$(time_cpu_s "$W/pgtmp/pbr-restore.time")"
    rec pbr_rto "$(elapsed "$t0" "$t2")"
    rec pbr_base_seconds "$(elapsed "$t0" "$t1")"
    rec pbr_replay_seconds "$(elapsed "$t1" "$t2")"
    rec pbr_rss_kb "$(maxrss_kb "$W/pgtmp/pbr-restore.time")"
    rec pbr_drop_caches "\"$DROP_CACHES\""
    rec pbr_recovery_conf "$(jstr "$(grep -v '^#' "$D/postgresql.auto.conf" | grep -E 'restore_command|recovery_target|archive_mode' || true)")"
    log "pgBackRest: RTO $(elapsed "$t0" "$t2") s (restore $(elapsed "$t0" "$t1") s, recovery $(elapsed "$t1" "$t2") s)"
    verify pbr "$RSOCK" "$P"
  else
    fail pbr_recovery "the restored server did not finish recovery: $(tail -20 "$W/pgtmp/pgbackrest.log")"
    rec pbr_verified '"no"'
  fi
else
  fail pbr_restore "$(cat "$W/pbr-restore.err")"
  rec pbr_verified '"no"'
fi
[ -f "$W/pgtmp/pgbackrest.log" ] && rec pbr_pglog "$(python3 "$PY" pglog "$W/pgtmp/pgbackrest.log")"
stop_restored "$D"
rec cmd_pgbackrest_restore "\"/usr/bin/time -v pgbackrest --config=pgbackrest.conf --stanza=bench --pg1-path=DIR --type=time --target='$TARGET_PG' --target-action=promote --archive-mode=off restore; pg_ctl -D DIR -o \\\"-p P -k SOCK -c listen_addresses=''\\\" -W start; poll SELECT pg_is_in_recovery() every 100 ms until f   # RTO = restore start -> f\""

# 3. pg_basebackup + cp
log "restore 3/3: cp -a of the pg_basebackup copy + restore_command 'cp' + pg_ctl start"
D="$RDIR/pgbb" P="$(free_port)"
drop_caches
loadavg pgbb
c0=$(machine_cpu_ticks)
t0=$(now)
/usr/bin/time -v -o "$W/pgtmp/cp.time" cp -a "$PGBB" "$D"
cat >> "$D/postgresql.auto.conf" <<EOF
restore_command = 'cp $ARCH/%f %p'
recovery_target_time = '$TARGET_PG'
recovery_target_action = 'promote'
archive_mode = 'off'
EOF
touch "$D/recovery.signal"
chown postgres: "$D/postgresql.auto.conf" "$D/recovery.signal"
t1=$(now)
start_restored "$D" "$P"
if wait_promoted "$RSOCK" "$P" "$D"; then
  t2=$(now)
  rec pgbb_machine_cpu_s "$(ticks_s "$c0" "$(machine_cpu_ticks)")"
  rec pgbb_proc_cpu_s "$(time_cpu_s "$W/pgtmp/cp.time")"
  rec pgbb_rto "$(elapsed "$t0" "$t2")"
  rec pgbb_base_seconds "$(elapsed "$t0" "$t1")"
  rec pgbb_replay_seconds "$(elapsed "$t1" "$t2")"
  rec pgbb_rss_kb "$(maxrss_kb "$W/pgtmp/cp.time")"
  rec pgbb_drop_caches "\"$DROP_CACHES\""
  log "pg_basebackup + cp: RTO $(elapsed "$t0" "$t2") s (cp -a $(elapsed "$t0" "$t1") s, recovery $(elapsed "$t1" "$t2") s)"
  verify pgbb "$RSOCK" "$P"
else
  fail pgbb_recovery "the restored server did not finish recovery: $(tail -20 "$W/pgtmp/pgbb.log")"
  rec pgbb_verified '"no"'
fi
[ -f "$W/pgtmp/pgbb.log" ] && rec pgbb_pglog "$(python3 "$PY" pglog "$W/pgtmp/pgbb.log")"
stop_restored "$D"
rec cmd_pgbb_restore "\"/usr/bin/time -v cp -a PGBB DIR; append restore_command = 'cp $ARCH/%f %p', recovery_target_time = '$TARGET_PG', recovery_target_action = 'promote', archive_mode = 'off' to DIR/postgresql.auto.conf; touch DIR/recovery.signal; pg_ctl -W start; poll pg_is_in_recovery() every 100 ms until f\""

grep -E ' (ERROR|WARN) ' "$W/vault.log" | grep -v -E 'cannot reach PostgreSQL|the database system is shutting down' | head -20 > "$W/vault-warnings.txt" || true
[ -s "$W/vault-warnings.txt" ] && rec vault_log_warnings "$(jstr "$(cat "$W/vault-warnings.txt")")"

log "report"
python3 "$PY" report "$RES" "$OUT/restore.md" "$OUT/restore.json"
