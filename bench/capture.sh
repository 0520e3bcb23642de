#!/usr/bin/env bash
# Capture benchmark: holdfast (a vault pulling base backups and WAL over the replication
# protocol) side by side with pg_basebackup and pgBackRest, on one PostgreSQL cluster, in one run:
#   1. full base backup: seconds, MB/s, stored bytes (holdfast, pg_basebackup -Ft, pgBackRest zst)
#   2. incremental after a 5 % UPDATE: holdfast's second backup vs pgBackRest --type=incr
#   3. WAL latency under pgbench load: server flush LSN -> vault durable_lsn, p50/p99/max
#   4. TPS with no synchronous standby, the vault as synchronous standby, pg_receivewal --synchronous
#   5. peak RSS of the vault process during the base backups
#
# One command (as root, on Debian 12 with Rust): bench/capture.sh    (also: ./run bench capture)
# Env: SCALE=100 (pgbench scale) DURATION=30 (seconds per pgbench run) CLIENTS=8
#      BENCH_WORK=<dir> (default: a new dir under /tmp, removed at exit unless KEEP=1)
#      EXTRA_INCR=1 (also a localized 5 % update + third incremental) RECEIVEWAL=1 PGBB_ZSTD=1
#      HF=<holdfast binary> (default: target/release/holdfast, built)
#      VAULT_RUST_LOG=info,capture=debug (the vault's log filter: debug shows each WAL piece's
#      bytes, seal and fsync times)
#      SYNC_ONLY=1 (only part 4, on a fresh cluster: no backups, no pgBackRest)
#      SYNC_ROUNDS=3 (part 4 repeated, alternating none / pg_receivewal / holdfast, each mode's median reported)
#      RECEIVEWAL_SLOT=1 (part 4 also runs pg_receivewal --synchronous with a replication slot,
#      after the one without, each round: tps_receivewal_slot_rN in the raw figures)
# Writes bench-out/capture.md (report), bench-out/capture.json (raw), bench-out/capture-vault.log,
# bench-out/capture-threads-{before,after}[_rN].txt (the vault's threads: id, name, context switches).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCALE="${SCALE:-100}"
DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-8}"
EXTRA_INCR="${EXTRA_INCR:-1}"
RECEIVEWAL="${RECEIVEWAL:-1}"
RECEIVEWAL_SLOT="${RECEIVEWAL_SLOT:-0}"
PGBB_ZSTD="${PGBB_ZSTD:-1}"
KEEP="${KEEP:-0}"
SYNC_ONLY="${SYNC_ONLY:-0}"
SYNC_ROUNDS="${SYNC_ROUNDS:-1}"
OUT="$ROOT/bench-out"
PY="$ROOT/bench/capture.py"
mkdir -p "$OUT"
. "$ROOT/bench/lib.sh"
require_root "it installs packages and runs PostgreSQL as the postgres user"

# --- prerequisites -----------------------------------------------------------------------------
ensure_prereqs
ensure_holdfast

# --- work area -------------------------------------------------------------------------------
if [ -n "${BENCH_WORK:-}" ]; then W="$BENCH_WORK"; rm -rf "$W"; mkdir -p "$W"; else W="$(mktemp -d /tmp/holdfast-capture.XXXXXX)"; fi
chmod 755 "$W"
DATA="$W/pg/data" SOCK="$W/pg/sock" V="$W/vault" PBR="$W/pgbackrest"
PBRCONF="$PBR/pgbackrest.conf"
RES="$W/results.tsv"
: > "$RES"
mkdir -p "$W/pg/sock" "$PBR"/{repo,log,lock,spool} "$W/pgtmp"
chown -R postgres: "$W/pg" "$PBR" "$W/pgtmp"
PGPORT="${PGPORT:-$(free_port)}"
new_replication_password

VPID="" RECV_PID="" SPID="" VSPID=""
cleanup() {
  set +e
  for p in $SPID $VSPID $RECV_PID; do kill "$p" 2>/dev/null; done
  if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; fi
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  [ -f "$W/vault.log" ] && cp "$W/vault.log" "$OUT/capture-vault.log"
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

vmhwm_reset() { echo 5 > "/proc/$VPID/clear_refs"; }
vmhwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$VPID/status"; }

rec_versions
rec scale "$SCALE"
rec duration "$DURATION"
rec clients "$CLIENTS"
rec invocation "\"SCALE=$SCALE DURATION=$DURATION CLIENTS=$CLIENTS SYNC_ONLY=$SYNC_ONLY SYNC_ROUNDS=$SYNC_ROUNDS VAULT_RUST_LOG=${VAULT_RUST_LOG:-info} bench/capture.sh\""
rec sync_only "$SYNC_ONLY"
rec sync_rounds "$SYNC_ROUNDS"

# --- PostgreSQL ------------------------------------------------------------------------------
start_source
rec input_bytes "$(( $(size_of "$DATA") - $(size_of "$DATA/pg_wal") ))"
rec db_bytes "$(psql_ "SELECT pg_database_size('postgres')")"

# --- pgBackRest ------------------------------------------------------------------------------
if [ "$SYNC_ONLY" != 1 ]; then
log "pgBackRest stanza"
write_pgbr_conf "repo1-path=$PBR/repo"
pgbr_stanza "pgbackrest --config=$PBRCONF --stanza=bench archive-push %p"
rec cmd_pgbackrest_conf "$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$PBRCONF")"
fi

# --- the vault -------------------------------------------------------------------------------
log "vault init + serve"
vault_init
start_vault() {
  rm -f "$V/ready.json"
  RUST_LOG="${VAULT_RUST_LOG:-info}" "$HF" vault serve --config "$V/vault.toml" --listen 127.0.0.1:0 --ready-file "$V/ready.json" >> "$W/vault.log" 2>&1 &
  VPID=$!
  for _ in $(seq 1 300); do [ -s "$V/ready.json" ] && break; kill -0 "$VPID" 2>/dev/null || die "vault serve exited: $(tail -5 "$W/vault.log")"; sleep 0.1; done
  URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$V/ready.json")"
}
stop_vault() { kill -TERM "$VPID"; wait "$VPID" || true; VPID=""; }
start_vault
"$HF" vault token create --url "$URL" --ca "$CA" --token-file "$V/admin.token" --scope read --label bench --out "$W/read.token" >/dev/null
rec cmd_vault_serve "\"RUST_LOG=${VAULT_RUST_LOG:-info} holdfast vault serve --config V/vault.toml --listen 127.0.0.1:0 --ready-file V/ready.json\""
rec cmd_vault_cluster "$(python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.dumps(t[t.index("[[cluster]]"):]))' "$V/vault.toml")"

# wait_vault TIMEOUT: until the vault streams and its durable_lsn reaches the server's flush LSN.
# settle: every WAL segment so far archived by pgBackRest and durable in the vault.
settle() {
  log "settle: waiting for pgBackRest to archive the current segment, then for the vault's durable_lsn"
  [ "$SYNC_ONLY" = 1 ] || switch_and_wait_archived 10 || fail archiver "segment $SEG not archived after 10 min: $(psql_ 'SELECT * FROM pg_stat_archiver')"
  wait_vault 900 || fail vault_catch_up "the vault's durable_lsn did not reach the server's flush LSN within 15 min (see capture-vault.log)"
}
log "waiting for the vault to stream"
wait_vault 120 || die "the vault does not stream WAL: $(python3 "$PY" status "$URL" "$CA" "$W/read.token" bench 2>&1 | cut -c1-600)"

warm() { find "$DATA" -type f -exec cat {} + > /dev/null 2>&1 || true; }

# holdfast_backup N: base backup through the vault; store growth, summary, peak RSS.
holdfast_backup() {
  local n=$1 before after t0 t1 out
  settle
  warm
  before=$(size_of "$V/store")
  vmhwm_reset
  t0=$(now)
  if out=$(timeout 3600 "$HF" backup --cluster bench --url "$URL" --ca "$CA" --token-file "$V/admin.token" --json 2> "$W/hf$n.err"); then
    t1=$(now)
    rec "hf${n}_vmhwm_kb" "$(vmhwm_kb)"
    settle
    after=$(size_of "$V/store")
    echo "$out" > "$W/hf$n.json"
    rec "hf${n}_seconds" "$(elapsed "$t0" "$t1")"
    rec "hf${n}_stored" "$((after - before))"
    rec "hf${n}_summary" "$out"
    rec "hf${n}_bytes" "$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("bytes"))' <<< "$out")"
    rec "hf${n}_stored_bytes" "$(python3 -c 'import json,sys; print(json.load(sys.stdin).get("stored_bytes"))' <<< "$out")"
    log "holdfast backup $n: $(elapsed "$t0" "$t1") s, store +$((after - before)) bytes, VmHWM $(vmhwm_kb) kB"
  else
    fail "holdfast_backup_$n" "exit $?: $(cat "$W/hf$n.err") $out; vault log tail: $(tail -20 "$W/vault.log")"
  fi
}

# pgbackrest_backup N TYPE
pgbackrest_backup() {
  local n=$1 type=$2 before after t0 t1 info
  settle
  warm
  before=$(size_of "$PBR/repo")
  t0=$(now)
  if pg timeout 3600 /usr/bin/time -v -o "$W/pgtmp/pbr$n.time" pgbackrest --config="$PBRCONF" --stanza=bench --type="$type" backup 2> "$W/pbr$n.err"; then
    t1=$(now)
    settle
    after=$(size_of "$PBR/repo")
    rec "pbr${n}_seconds" "$(elapsed "$t0" "$t1")"
    rec "pbr${n}_stored" "$((after - before))"
    rec "pbr${n}_rss_kb" "$(maxrss_kb "$W/pgtmp/pbr$n.time")"
    info="$(pgbr info --output=json)"
    rec "pbr${n}_info_size" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["info"]["size"])' <<< "$info")"
    rec "pbr${n}_info_repo_size" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["info"]["repository"]["size"])' <<< "$info")"
    rec "pbr${n}_info_repo_delta" "$(python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backup"][-1]["info"]["repository"]["delta"])' <<< "$info")"
    log "pgBackRest $type backup $n: $(elapsed "$t0" "$t1") s, repo +$((after - before)) bytes"
  else
    fail "pgbackrest_backup_$n" "$(cat "$W/pbr$n.err")"
  fi
}

# pg_basebackup KEY EXTRA_ARGS...
basebackup() {
  local key=$1 dir="$W/$1" t0 t1; shift
  rm -rf "$dir"; mkdir -p "$dir"; chown postgres: "$dir"
  warm
  t0=$(now)
  if pg env PGPASSWORD="$REPPW" /usr/bin/time -v -o "$W/pgtmp/$key.time" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U holdfast_rep \
      -D "$dir" -Ft -X none -c fast "$@" 2> "$W/$key.err"; then
    t1=$(now)
    rec "${key}_seconds" "$(elapsed "$t0" "$t1")"
    rec "${key}_stored" "$(size_of "$dir")"
    rec "${key}_rss_kb" "$(maxrss_kb "$W/pgtmp/$key.time")"
    log "pg_basebackup $*: $(elapsed "$t0" "$t1") s, $(size_of "$dir") bytes"
  else
    fail "$key" "$(cat "$W/$key.err")"
  fi
  rm -rf "$dir"
}

if [ "$SYNC_ONLY" != 1 ]; then
# --- 1. full base backups ----------------------------------------------------------------------
log "1. full base backups"
holdfast_backup 1
basebackup pgbb
[ "$PGBB_ZSTD" = 1 ] && basebackup pgbbz --compress=client-zstd
pgbackrest_backup 1 full
rec cmd_holdfast_backup "\"holdfast backup --cluster bench --url \$URL --ca V/tls/cert.pem --token-file V/admin.token --json   # stored = du -sb V/store growth\""
rec cmd_pg_basebackup "\"pg_basebackup -h 127.0.0.1 -p \$PORT -U holdfast_rep -D DIR -Ft -X none -c fast [--compress=client-zstd]   # stored = du -sb DIR\""
rec cmd_pgbackrest_full "\"pgbackrest --config=pgbackrest.conf --stanza=bench --type=full backup   # stored = du -sb repo growth (backup + archived WAL)\""

# --- 2. incremental -----------------------------------------------------------------------------
log "2. incremental after a 5 % update"
UPDATE_SQL="UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 20 = 0"
rec update_sql "\"$UPDATE_SQL\""
rec update_pages_total "$(psql_ "SELECT pg_relation_size('pgbench_accounts') / 8192")"
rec update_pages_changed "$(psql_ "SELECT count(DISTINCT (ctid::text::point)[0]) FROM pgbench_accounts WHERE aid % 20 = 0")"
psql_ "$UPDATE_SQL"
rec update_rows "$(psql_ "SELECT count(*) FROM pgbench_accounts WHERE aid % 20 = 0")"
psql_ "CHECKPOINT"
holdfast_backup 2
pgbackrest_backup 2 incr
rec cmd_incremental "\"psql -c '$UPDATE_SQL'; psql -c CHECKPOINT; holdfast backup …; pgbackrest --type=incr backup\""
if [ "$EXTRA_INCR" = 1 ]; then
  log "2b. localized 5 % update"
  UPDATE3_SQL="UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $((SCALE * 100000 / 20))"
  rec update3_sql "\"$UPDATE3_SQL\""
  psql_ "$UPDATE3_SQL"
  rec update3_rows "$((SCALE * 100000 / 20))"
  psql_ "CHECKPOINT"
  holdfast_backup 3
  pgbackrest_backup 3 incr
fi

fi

PGBENCH=("$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" -N postgres)
rec cmd_pgbench "\"pgbench -h SOCKDIR -p \$PORT -U postgres -c $CLIENTS -j 2 -T $DURATION -N postgres\""
# run_pgbench KEY: TPS and mean latency into the results; a hung run (a standby that never
# acknowledges) is cut off after DURATION + 90 s.
run_pgbench() {
  local key=$1 out
  if out=$(pg timeout $((DURATION + 90)) "${PGBENCH[@]}" 2>&1); then
    echo "$out" > "$W/$key.pgbench"
    rec "$key" "$(awk '/^tps = / {print $3}' <<< "$out")"
    rec "${key}_lat_ms" "$(awk '/^latency average = / {print $4}' <<< "$out")"
    log "$key: $(grep '^tps' <<< "$out")"
  else
    fail "$key" "pgbench failed or hung: $(tail -5 <<< "$out")"
  fi
}

if [ "$SYNC_ONLY" != 1 ]; then
# --- 3. WAL latency under load (async) -----------------------------------------------------------
log "3. WAL latency under load"
settle
rm -f "$W/stop-sampling"
python3 "$PY" sample "$URL" "$CA" "$W/read.token" bench "$W/vault-samples.txt" "$W/stop-sampling" 0.02 &
VSPID=$!
"$PGBIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -XAtq > "$W/server-samples.txt" 2> "$W/server-samples.err" <<'EOF' &
SELECT extract(epoch FROM clock_timestamp()), pg_current_wal_flush_lsn(), (SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'holdfast_bench') \watch 0.1
EOF
SPID=$!
sleep 2
LSN0="$(psql_ "SELECT pg_current_wal_flush_lsn()")"
T0=$(now)
run_pgbench lat_tps
T1=$(now)
LSN1="$(psql_ "SELECT pg_current_wal_flush_lsn()")"
rec lat_wal_bytes "$(psql_ "SELECT pg_wal_lsn_diff('$LSN1', '$LSN0')")"
sleep 2
kill "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
wait_vault 60 || fail latency_catch_up "the vault did not catch up within 60 s after pgbench"
touch "$W/stop-sampling"; wait "$VSPID" || true; VSPID=""
LAT="$(python3 "$PY" latency "$W/server-samples.txt" "$W/vault-samples.txt" "$T0" "$T1" 2>&1)" || fail latency "computing latency: $LAT"
rec latency "$LAT"
log "latency: $LAT"
rec cmd_latency_server_sampler "\"psql -XAtq <<< \\\"SELECT extract(epoch FROM clock_timestamp()), pg_current_wal_flush_lsn(), (SELECT flush_lsn FROM pg_stat_replication WHERE application_name = 'holdfast_bench') \\\\watch 0.1\\\"\""
rec cmd_latency_vault_sampler "\"python3 bench/capture.py sample \$URL V/tls/cert.pem read.token bench OUT STOPFILE 0.02   # GET /v1/status, keep-alive\""

fi

# --- 4. synchronous-mode TPS cost ----------------------------------------------------------------
# wait_sync APP: until the server lists APP as its synchronous standby.
wait_sync() {
  for _ in $(seq 1 300); do
    [ "$(psql_ "SELECT sync_state FROM pg_stat_replication WHERE application_name = '$1'")" = sync ] && return 0
    sleep 0.1
  done
  return 1
}
set_sync() { psql_ "ALTER SYSTEM SET synchronous_standby_names = '$1'"; psql_ "SELECT pg_reload_conf()" >/dev/null; }
# vault_mode true|false: the vault restarted with `synchronous = MODE` in its cluster table.
vault_mode() {
  grep -q "^synchronous = $1\$" "$V/vault.toml" && return 0
  stop_vault
  sed -i "s/^synchronous = .*\$/synchronous = $1/" "$V/vault.toml"
  start_vault
  wait_vault 120 || fail vault_mode_restart "the vault did not stream again after the restart with synchronous = $1"
}
# vault_ctxt: context switches (voluntary + involuntary) of the vault's threads so far — how
# often its threads sleep and are woken, the cost of each hop between threads.
vault_ctxt() { cat /proc/"$VPID"/task/*/status 2>/dev/null | awk '/_ctxt_switches:/ {s += $2} END {print s + 0}'; }
# vault_threads FILE: each thread of the vault, its name and context switches (for the report's reader).
vault_threads() { for t in /proc/"$VPID"/task/*; do echo "$(basename "$t") $(cat "$t/comm" 2>/dev/null) $(awk '/_ctxt_switches:/ {s += $2} END {print s + 0}' "$t/status" 2>/dev/null)"; done > "$1"; }
# journal_appends: journal appends (one write + fdatasync each) in the vault's log so far (needs
# VAULT_RUST_LOG=info,capture=debug; 0 without).
journal_appends() { grep -c 'in the journal' "$W/vault.log" || true; }
# Each round: no synchronous standby (the vault streaming async), pg_receivewal, the vault.
for round in $(seq 1 "$SYNC_ROUNDS"); do
  sfx=""; [ "$SYNC_ROUNDS" -gt 1 ] && sfx="_r$round"
  log "4a. TPS, no synchronous standby (round $round)"
  vault_mode false
  settle
  rec "uptime_none$sfx" "\"$(uptime)\""
  run_pgbench "tps_none$sfx"

  if [ "$RECEIVEWAL" = 1 ]; then
    log "4c. TPS, pg_receivewal --synchronous as synchronous standby (round $round)"
    settle
    mkdir -p "$W/receivewal"
    PGPASSWORD="$REPPW" "$PGBIN/pg_receivewal" -d "host=127.0.0.1 port=$PGPORT user=holdfast_rep application_name=pg_receivewal" \
      -D "$W/receivewal" --synchronous --no-loop 2> "$W/receivewal.err" &
    RECV_PID=$!
    set_sync pg_receivewal
    if wait_sync pg_receivewal; then
      rec "uptime_receivewal$sfx" "\"$(uptime)\""
      run_pgbench "tps_receivewal$sfx"
    else
      fail receivewal "pg_receivewal never became the synchronous standby: $(cat "$W/receivewal.err")"
    fi
    set_sync ''
    kill "$RECV_PID"; wait "$RECV_PID" 2>/dev/null || true; RECV_PID=""
    rm -rf "$W/receivewal"
  fi

  if [ "$RECEIVEWAL" = 1 ] && [ "$RECEIVEWAL_SLOT" = 1 ]; then
    # The same with a physical replication slot, as pg_receivewal's documentation advises and
    # as the vault always streams (the slot's restart_lsn is moved at every flush reply).
    log "4c'. TPS, pg_receivewal --synchronous --slot as synchronous standby (round $round)"
    settle
    mkdir -p "$W/receivewal"
    psql_ "SELECT pg_create_physical_replication_slot('bench_receivewal') WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = 'bench_receivewal')" >/dev/null
    PGPASSWORD="$REPPW" "$PGBIN/pg_receivewal" -d "host=127.0.0.1 port=$PGPORT user=holdfast_rep application_name=pg_receivewal" \
      -D "$W/receivewal" --synchronous --no-loop --slot=bench_receivewal 2> "$W/receivewal.err" &
    RECV_PID=$!
    set_sync pg_receivewal
    if wait_sync pg_receivewal; then
      rec "uptime_receivewal_slot$sfx" "\"$(uptime)\""
      run_pgbench "tps_receivewal_slot$sfx"
    else
      fail receivewal_slot "pg_receivewal --slot never became the synchronous standby: $(cat "$W/receivewal.err")"
    fi
    set_sync ''
    kill "$RECV_PID"; wait "$RECV_PID" 2>/dev/null || true; RECV_PID=""
    rm -rf "$W/receivewal"
    # Drop it: a slot nobody streams from would hold WAL for the rest of the run.
    psql_ "SELECT pg_drop_replication_slot('bench_receivewal')" >/dev/null
  fi

  log "4b. TPS, the vault as synchronous standby (round $round)"
  settle
  vault_mode true
  set_sync holdfast_bench
  if wait_sync holdfast_bench; then
    rec "uptime_hf_sync$sfx" "\"$(uptime)\""
    c0=$(vault_ctxt) p0=$(journal_appends)
    vault_threads "$OUT/capture-threads-before$sfx.txt"
    run_pgbench "tps_hf_sync$sfx"
    vault_threads "$OUT/capture-threads-after$sfx.txt"
    rec "ctxt_hf_sync$sfx" "$(( $(vault_ctxt) - c0 ))"
    rec "appends_hf_sync$sfx" "$(( $(journal_appends) - p0 ))"
    rec "txns_hf_sync$sfx" "$(awk '/^number of transactions actually processed: / {print $6}' "$W/tps_hf_sync$sfx.pgbench" 2>/dev/null || echo 0)"
  else
    fail hf_sync "the vault never became the synchronous standby: $(psql_ 'SELECT application_name, state, sync_state FROM pg_stat_replication')"
  fi
  set_sync ''
done
[ "$RECEIVEWAL" = 1 ] && rec cmd_receivewal "\"pg_receivewal -d 'host=127.0.0.1 port=\$PORT user=holdfast_rep application_name=pg_receivewal' -D DIR --synchronous --no-loop; synchronous_standby_names = 'pg_receivewal'\""
rec cmd_sync "\"synchronous = true in the [[cluster]] table, vault restarted; ALTER SYSTEM SET synchronous_standby_names = 'holdfast_bench'; SELECT pg_reload_conf()\""
[ "$SYNC_ONLY" = 1 ] || psql_ "SELECT failed_count FROM pg_stat_archiver" | grep -qx 0 || fail archiver "pg_stat_archiver.failed_count = $(psql_ 'SELECT failed_count FROM pg_stat_archiver')"
grep -E ' (ERROR|WARN) ' "$W/vault.log" | head -20 > "$W/vault-warnings.txt" || true
[ -s "$W/vault-warnings.txt" ] && rec vault_log_warnings "$(python3 -c 'import json,sys; print(json.dumps(open(sys.argv[1]).read()))' "$W/vault-warnings.txt")"

log "report"
python3 "$PY" report "$RES" "$OUT/capture.md" "$OUT/capture.json"
