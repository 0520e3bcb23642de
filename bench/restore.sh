#!/usr/bin/env bash
# Restore / RTO benchmark: point-in-time recovery to just before a destructive transaction,
# holdfast's warm standby and cold restore side by side with pgBackRest and with
# pg_basebackup + a plain `cp` restore_command, at two database sizes, in one run. Per size:
#   1. source: pgbench -i -s SCALE (track_commit_timestamp on); the holdfast vault streams it and
#      keeps a warm standby (`[[standby]]`, apply_delay APPLY_DELAY); archive_command pushes every
#      segment to pgBackRest (archive-async) AND copies it into a plain WAL archive directory
#   2. base backups: holdfast backup, pgBackRest full, pg_basebackup -Fp (plain directory)
#      plus a shop database (merchants, customers, orders, order_items, stored_value_cards, every
#      row with its merchant_id; SHOP_MERCHANTS merchants, 100 orders of 2 items each)
#   3. pgbench write load (-N -c CLIENTS -j 2) for DURATION s, and the shop taking orders
#      (SHOP_RATE/s: an order, its item and a gift-card debit per transaction); 15 s before it
#      ends an insider runs `TRUNCATE pgbench_accounts` (one transaction, xid X) while the load goes on
#   4. the warm standby: seconds from the TRUNCATE's return until the vault has it paused,
#      read-only, just before X (GET /v1/standbys every 50 ms: paused, ready, before the incident;
#      then its rows are read), and until `holdfast standby promote` has opened it for writes
#   5. cold restores to just before X, each into a fresh empty directory, page cache dropped
#      before each, timed from command start until the restored server is promoted:
#        holdfast restore --before-incident N --start --promote | pgbackrest restore --type=xid
#        --target=X --target-exclusive + pg_ctl start | cp -a of the pg_basebackup dir +
#        restore_command 'cp' + recovery_target_xid = X, recovery_target_inclusive = off
#   Every restored server (the promoted standby too) is checked: all of pgbench_accounts there,
#   sum(abalance) = sum(delta) of pgbench_history (each pgbench transaction whole), every row of
#   pgbench_history committed more than 50 ms before X there and none committed more than 50 ms
#   after it (by commit timestamp); in the shop, the same for orders, every order with its items
#   and the gift cards' balances equal to the initial total less one cent per order placed.
#
# One command (as root, on Debian 12 with Rust): bench/restore.sh    (also: ./run bench restore)
# Env: SIZES="10 50" (pgbench scales; ~165 MB and ~790 MB; SCALE=N: one size) DURATION=60 (s of writes)
#      CLIENTS=2 APPLY_DELAY=20s (the standby's delay; production would use minutes)
#      SHOP_MERCHANTS=<100 x scale> (0: no shop) SHOP_RATE=100 (shop orders per second)
#      BACKUP_WAL_SHARE=0.5 (the cluster's backup_wal_share, as in the example vault.toml: the vault
#      takes a base backup whenever the WAL since the newest exceeds that share of its size, also
#      during the load; empty: backups on demand only. pgBackRest and pg_basebackup have one
#      backup each, taken before the load, as their users would by schedule)
#      STANDBY_BACKUP_WAL_SHARE= (the [[standby]]'s backup_wal_share: empty: the vault's default, 0.1 —
#      a base backup from the warm standby, production asked only for a CHECKPOINT, whenever the
#      WAL since the newest backup exceeds that share of its size; 0: none, every backup from
#      production as before). The catalog login (holdfast_rep) is granted pg_checkpoint.
#      BACKUP_REPLAY_BUDGET= (the cluster's backup_replay_budget_seconds: a base backup whenever
#      replaying the WAL since the newest would take longer than that many seconds, at the speed
#      the vault measured or its conservative default (32 MiB/s); from the standby when close
#      enough behind, else from production; empty: off)
#      BACKUP_MIN_INTERVAL= (the cluster's backup_min_interval_seconds: WAL-triggered backups start
#      at least that far apart; empty: the vault's default, 60 s)
#      KEEP=1 (keep the work dirs)  HF=<holdfast binary> (default: target/release/holdfast, built)
# Writes bench-out/restore.md (report), bench-out/restore-sSCALE.json (raw, per size),
# bench-out/restore-sSCALE-vault.log, and the servers' logs (restore-sSCALE-*-server.log).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$ROOT/bench-out"
PY="$ROOT/bench/restore.py"
mkdir -p "$OUT"
. "$ROOT/bench/lib.sh"
require_root "it installs packages and runs PostgreSQL as the postgres user"

# --- the outer run: one inner run per size, then the report over all of them ----------------------
if [ -z "${_RESTORE_ONE_SIZE:-}" ]; then
  SIZES="${SIZES:-${SCALE:-10 50}}"   # SCALE=N alone: that one size
  # One binary for every size (built once here, not per size).
  ensure_holdfast
  export HF
  jsons=()
  for s in $SIZES; do
    [[ "$s" =~ ^[0-9]+$ ]] || die "SIZES must be pgbench scales (integers), got '$s'"
    log "=== size: pgbench scale $s ==="
    rm -f "$OUT/restore-s$s.json"
    _RESTORE_ONE_SIZE=1 SCALE="$s" bash "$0" || log "the run at scale $s failed (its figures, if any, are in the report)"
    [ -s "$OUT/restore-s$s.json" ] && jsons+=("$OUT/restore-s$s.json")
  done
  [ ${#jsons[@]} -gt 0 ] || die "no size produced figures"
  python3 "$PY" report "$OUT/restore.md" "SIZES=\"$SIZES\" DURATION=${DURATION:-60} CLIENTS=${CLIENTS:-2} APPLY_DELAY=${APPLY_DELAY:-20s} bash bench/restore.sh" "${jsons[@]}"
  exit 0
fi

DURATION="${DURATION:-60}"
CLIENTS="${CLIENTS:-2}"
APPLY_DELAY="${APPLY_DELAY:-20s}"
BACKUP_WAL_SHARE="${BACKUP_WAL_SHARE-0.5}"
STANDBY_BACKUP_WAL_SHARE="${STANDBY_BACKUP_WAL_SHARE:-}"
BACKUP_REPLAY_BUDGET="${BACKUP_REPLAY_BUDGET:-}"
BACKUP_MIN_INTERVAL="${BACKUP_MIN_INTERVAL:-}"
KEEP="${KEEP:-0}"
SHOP_MERCHANTS="${SHOP_MERCHANTS:-$((SCALE * 100))}"
SHOP_RATE="${SHOP_RATE:-100}"
BEFORE_END=15
[ "$DURATION" -ge 30 ] || die "DURATION must be at least 30 seconds"

# --- prerequisites -----------------------------------------------------------------------------
ensure_prereqs
ensure_holdfast

# --- work area -------------------------------------------------------------------------------
W="$(mktemp -d /tmp/holdfast-rto.XXXXXX)"
chmod 755 "$W"
DATA="$W/pg/data" SOCK="$W/pg/sock" V="$W/vault" PBR="$W/pgbackrest"
PBRCONF="$PBR/pgbackrest.conf"
ARCH="$W/walarchive"      # the plain `cp` WAL archive
PGBB="$W/pgbb"            # the pg_basebackup -Fp copy
RDIR="$W/restore"         # restored data directories (one at a time)
RSOCK="$W/rsock"          # sockets of the restored servers started by this script
SB="$W/standby"           # the vault's warm standby (created by the vault)
RES="$W/results.tsv"
: > "$RES"
mkdir -p "$SOCK" "$PBR"/{repo,log,lock,spool} "$W/pgtmp" "$ARCH" "$RDIR" "$RSOCK"
chown -R postgres: "$W/pg" "$PBR" "$W/pgtmp" "$ARCH" "$RDIR" "$RSOCK"
PGPORT="$(free_port)"
SB_PORT="$(free_port)"
new_replication_password

VPID="" BENCH_PID=""
cleanup() {
  set +e
  [ -n "$BENCH_PID" ] && kill "$BENCH_PID" 2>/dev/null
  [ -n "${SHOP_PID:-}" ] && kill "$SHOP_PID" 2>/dev/null
  for pid_file in "$RDIR"/*/postmaster.pid; do
    [ -f "$pid_file" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid_file")" -m immediate -w stop >/dev/null 2>&1
  done
  [ -n "${HF_SOCKDIR:-}" ] && rm -rf "$HF_SOCKDIR"
  if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; fi
  # The vault leaves its standby running on purpose (a warm copy): stop it here, after the vault.
  [ -f "$SB/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$SB" -m immediate -w stop >/dev/null 2>&1
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  [ -f "$W/vault.log" ] && cp "$W/vault.log" "$OUT/restore-s$SCALE-vault.log"
  [ -f "$SB/holdfast_standby.log" ] && cp "$SB/holdfast_standby.log" "$OUT/restore-s$SCALE-standby-server.log"
  if [ -s "$RES" ]; then python3 "$PY" size-json "$RES" "$OUT/restore-s$SCALE.json" || log "could not write restore-s$SCALE.json"; fi
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

DROP_CACHES=no
drop_caches() {
  sync
  if echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then DROP_CACHES=yes; else DROP_CACHES=no; fi
}
# Other work on these shared cores shows here (recorded before each timed phase).
loadavg() { rec "${1}_loadavg" "\"$(cut -d' ' -f1-3 /proc/loadavg)\""; }

rec_versions
rec mem_mb "$(awk '/^MemTotal/ {print int($2/1024)}' /proc/meminfo)"
rec scale "$SCALE"
rec duration "$DURATION"
rec clients "$CLIENTS"
rec apply_delay "\"$APPLY_DELAY\""
rec backup_wal_share "\"${BACKUP_WAL_SHARE:-none}\""
rec standby_backup_wal_share "\"${STANDBY_BACKUP_WAL_SHARE:-default}\""
rec backup_replay_budget "\"${BACKUP_REPLAY_BUDGET:-none}\""
rec backup_min_interval "\"${BACKUP_MIN_INTERVAL:-default}\""
rec filesystem "$(jstr "$(df -PT "$W" | awk 'NR==2 {print $1" "$2}')")"

# --- PostgreSQL ------------------------------------------------------------------------------
# track_commit_timestamp: the check of a restored cluster compares pgbench_history rows by the
# commit timestamp of their transaction with the destructive transaction's.
start_source "track_commit_timestamp = on"
# The vault asks for a CHECKPOINT before a base backup from its standby (PostgreSQL 15+).
psql_ "GRANT pg_checkpoint TO holdfast_rep" >/dev/null
ACCOUNTS=$((SCALE * 100000))
rec input_bytes "$(( $(size_of "$DATA") - $(size_of "$DATA/pg_wal") ))"
rec db_bytes "$(psql_ "SELECT pg_database_size('postgres')")"
# The shop: multi-tenant rows beside pgbench's (the shape of the 2020 incident's data).
shop_() { timeout 1800 "$PGBIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d shop -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
rec shop_merchants "$SHOP_MERCHANTS"
if [ "$SHOP_MERCHANTS" -gt 0 ]; then
  log "shop: $SHOP_MERCHANTS merchants"
  M=$SHOP_MERCHANTS
  psql_ "CREATE DATABASE shop" >/dev/null
  shop_ "$(shop_schema_sql "$M")" >/dev/null
  SHOP_CARDS0="$(shop_ "SELECT sum(balance_cents) FROM stored_value_cards")"
  SHOP_ORDERS0=$((M * 100))
  # One order a transaction: the order, its item, a debit of one cent on the merchant's first card.
  printf '%s\n' "\\set m random(1, $M)" "BEGIN;" \
    "INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES (:m, :m, 4200);" \
    "INSERT INTO order_items VALUES (currval('orders_order_id_seq'), :m, 'bench', 1, 4200);" \
    "UPDATE stored_value_cards SET balance_cents = balance_cents - 1 WHERE card_id = :m;" "END;" > "$W/shop-order.sql"
  chown postgres: "$W/shop-order.sql"
  psql_ "CHECKPOINT"
  rec shop_bytes "$(psql_ "SELECT pg_database_size('shop')")"
fi

# --- pgBackRest + the plain cp archive ---------------------------------------------------------
log "pgBackRest stanza (archive-async, process-max=2) + cp archive"
write_pgbr_conf "repo1-path=$PBR/repo" "archive-async=y"
ARCHIVE_COMMAND="pgbackrest --config=$PBRCONF --stanza=bench archive-push %p && cp %p $ARCH/%f.tmp && mv -f $ARCH/%f.tmp $ARCH/%f"
pgbr_stanza "$ARCHIVE_COMMAND"
rec cmd_archive_command "$(jstr "$ARCHIVE_COMMAND")"

# --- the vault and its warm standby ---------------------------------------------------------------
log "vault init + serve (warm standby: apply_delay $APPLY_DELAY, port $SB_PORT)"
vault_init "first_backup = false
${BACKUP_WAL_SHARE:+backup_wal_share = $BACKUP_WAL_SHARE}
${BACKUP_REPLAY_BUDGET:+backup_replay_budget_seconds = $BACKUP_REPLAY_BUDGET}
${BACKUP_MIN_INTERVAL:+backup_min_interval_seconds = $BACKUP_MIN_INTERVAL}

[[standby]]
cluster = \"bench\"
data_dir = \"$SB\"
apply_delay = \"$APPLY_DELAY\"
port = $SB_PORT${STANDBY_BACKUP_WAL_SHARE:+
backup_wal_share = $STANDBY_BACKUP_WAL_SHARE}"
RUST_LOG=info "$HF" vault serve --config "$V/vault.toml" --listen 127.0.0.1:0 --ready-file "$V/ready.json" >> "$W/vault.log" 2>&1 &
VPID=$!
for _ in $(seq 1 600); do [ -s "$V/ready.json" ] && break; kill -0 "$VPID" 2>/dev/null || die "vault serve exited: $(tail -5 "$W/vault.log")"; sleep 0.1; done
[ -s "$V/ready.json" ] || die "vault serve not ready after 60 s: $(tail -5 "$W/vault.log")"
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$V/ready.json")"
"$HF" vault token create --url "$URL" --ca "$CA" --token-file "$V/admin.token" --scope read --label bench --out "$W/read.token" >/dev/null
rec cmd_vault_config "$(python3 -c 'import json,sys; t=open(sys.argv[1]).read(); print(json.dumps(t[t.index("[[cluster]]"):]))' "$V/vault.toml")"
hf_admin() { "$HF" "$@" --url "$URL" --ca "$CA" --token-file "$V/admin.token"; }
hf_read() { "$HF" "$@" --url "$URL" --ca "$CA" --token-file "$W/read.token"; }
# standby_json: the standby's status as one JSON object (exit 3 of `standby status` = not well).
standby_json() {
  { hf_read standby status --json 2>/dev/null || true; } | python3 -c 'import json,sys
try: print(json.dumps(json.load(sys.stdin)["standbys"][0]))
except Exception: print("{}")'
}
jget() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]).get(sys.argv[2]); print("" if v is None else (json.dumps(v) if isinstance(v, bool) else v))' "$1" "$2"; }

# settle: every WAL segment so far in pgBackRest's repository, in the cp archive and durable in
# the vault (archive_command succeeds only once both pgBackRest and cp have the segment).
settle() {
  switch_and_wait_archived 20 || die "segment $SEG not archived after 20 min: $(psql_ 'SELECT * FROM pg_stat_archiver')"
  [ -f "$ARCH/$SEG" ] || die "archive_command reported $SEG archived but $ARCH/$SEG is missing"
  wait_vault 1200 || die "the vault's durable_lsn did not reach the server's flush LSN within 20 min (see the vault log)"
}
log "waiting for the vault to stream"
wait_vault 120 || die "the vault does not stream WAL: $(tail -5 "$W/vault.log")"

# --- base backups (timed for information) ---------------------------------------------------------
log "base backups: holdfast, pgBackRest full, pg_basebackup -Fp"
settle
t0=$(now)
hf_admin backup --cluster bench --json > "$W/hf-backup.json" 2> "$W/hf-backup.err" \
  || die "holdfast backup failed: $(cat "$W/hf-backup.err"); vault log: $(tail -20 "$W/vault.log")"
rec hf_backup_seconds "$(elapsed "$t0" "$(now)")"
t0=$(now)
pgbr --type=full backup 2> "$W/pbr-backup.err" || die "pgBackRest backup failed: $(cat "$W/pbr-backup.err")"
rec pbr_backup_seconds "$(elapsed "$t0" "$(now)")"
mkdir -p "$PGBB"; chown postgres: "$PGBB"; chmod 700 "$PGBB"
t0=$(now)
pg env PGPASSWORD="$REPPW" "$PGBIN/pg_basebackup" -h 127.0.0.1 -p "$PGPORT" -U holdfast_rep -D "$PGBB" -Fp -X stream -c fast 2> "$W/pgbb.err" \
  || die "pg_basebackup failed: $(cat "$W/pgbb.err")"
rec pgbb_backup_seconds "$(elapsed "$t0" "$(now)")"

log "waiting for the warm standby to follow (built by the vault from the newest backup)"
t0=$(now)
SBJ="{}"
for _ in $(seq 1 1200); do
  SBJ="$(standby_json)"
  [ "$(jget "$SBJ" state)" = following ] && [ "$(jget "$SBJ" ready)" = true ] && break
  sleep 0.5
done
[ "$(jget "$SBJ" state)" = following ] || die "the warm standby is not following after 10 min: $SBJ"
rec standby_following_after_backups_seconds "$(elapsed "$t0" "$(now)")"

# --- write load, the insider, the warm standby ---------------------------------------------------
LSN0="$(psql_ "SELECT pg_current_wal_lsn()")"
log "pgbench write load: -N -c $CLIENTS -j 2 -T $DURATION"
pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" -N postgres > "$W/pgbench.out" 2>&1 &
BENCH_PID=$!
rec cmd_pgbench "\"pgbench -h SOCKDIR -p \$PORT -U postgres -c $CLIENTS -j 2 -T $DURATION -N postgres\""
SHOP_PID=""
if [ "$SHOP_MERCHANTS" -gt 0 ]; then
  pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -n -c 1 -j 1 -R "$SHOP_RATE" -T "$DURATION" -f "$W/shop-order.sql" shop > "$W/shop-load.out" 2>&1 &
  SHOP_PID=$!
  rec cmd_shop_load "$(jstr "pgbench -h SOCKDIR -p \$PORT -U postgres -n -c 1 -j 1 -R $SHOP_RATE -T $DURATION -f shop-order.sql shop   # $(tr '\n' ' ' < "$W/shop-order.sql")")"
fi
sleep $((DURATION - BEFORE_END))
SBJ="$(standby_json)"
rec standby_before "$SBJ"
[ "$(jget "$SBJ" state)" = following ] || fail standby_not_following "before the TRUNCATE the standby was: $SBJ"
KNOWN="$(hf_read incidents --cluster bench --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
log "the insider: TRUNCATE pgbench_accounts (load still running)"
loadavg standby
# Watches the vault from before the TRUNCATE: until
# the standby is paused, ready, before a new incident (at most 120 s), every 50 ms over one
# connection to the vault.
python3 "$PY" watch-standby "$URL" "$CA" "$W/read.token" bench "$KNOWN" "$W/t-destroyed" 150 "$W/watch.json" &
WATCH_PID=$!
sleep 0.5
XID="$(timeout 600 "$PGBIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 \
  -c "BEGIN" -c "SELECT txid_current()" -c "TRUNCATE pgbench_accounts" -c "COMMIT")" || die "the TRUNCATE failed"
TD=$(now)
echo "$TD" > "$W/t-destroyed"
XID="$(echo "$XID" | grep -E '^[0-9]+$' | head -1)"
rec destructive_xid "$XID"
rec cmd_destructive "\"BEGIN; SELECT txid_current(); TRUNCATE pgbench_accounts; COMMIT;   # while pgbench runs\""
log "TRUNCATE committed as xid $XID; watching the standby and the incidents"

N="" T_INCIDENT="" T_PAUSED=""
wait "$WATCH_PID" || true
SBJ="$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["standby"]))' "$W/watch.json" 2>/dev/null || echo '{}')"
IS="$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["incident_seconds"]; print("" if v is None else v)' "$W/watch.json" 2>/dev/null || true)"
PA="$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["paused_at"]; print("" if v is None else v)' "$W/watch.json" 2>/dev/null || true)"
[ -n "$IS" ] && T_INCIDENT="$(python3 -c "print($TD + $IS)")"
pb="$(jget "$SBJ" paused_before_incident)"
if [ -n "$PA" ] && [ -n "$pb" ] && [ "$pb" -gt "$KNOWN" ]; then T_PAUSED="$PA"; N="$pb"; fi
if [ -z "$N" ]; then
  N="$(hf_read incidents --cluster bench --json 2>/dev/null | python3 -c 'import json,sys
l = json.load(sys.stdin); k = int(sys.argv[1])
print(next((str(i + 1) for i in range(k, len(l)) if l[i].get("restore_target")), ""))' "$KNOWN" 2>/dev/null || true)"
fi
rec standby_paused_status "$SBJ"
[ -n "$T_INCIDENT" ] && rec incident_seconds "$(elapsed "$TD" "$T_INCIDENT")"
[ -n "$N" ] && rec incident "$(hf_read incidents --cluster bench --json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[int(sys.argv[1]) - 1]))' "$N")"
sb_sql() { timeout 600 "$PGBIN/psql" -h "$SB" -p "$SB_PORT" -U postgres -d postgres -XAtq -c "$1"; }
if [ -n "$T_PAUSED" ]; then
  # What a person sees at once, read-only: the accounts still there (the first 1000, by index:
  # a look, not a scan; the full check follows once promoted).
  got="$(sb_sql "SET lock_timeout = '5s'; SELECT pg_is_in_recovery(), count(*) FROM pgbench_accounts WHERE aid <= 1000" 2>&1 || true)"
  T_READ=$(now)
  rec standby_paused_seconds "$(elapsed "$TD" "$T_PAUSED")"
  rec standby_read_seconds "$(elapsed "$TD" "$T_READ")"
  rec standby_paused_got "$(jstr "$got")"
  [ "$got" = "t|1000" ] || fail standby_paused "paused standby answered '$got', expected 't|1000'"
  log "standby: paused read-only before incident $N $(elapsed "$TD" "$T_PAUSED") s after the TRUNCATE returned ($got)"
  t0=$(now)
  if hf_admin standby promote --cluster bench --before-incident "$N" --json > "$W/promote.json" 2> "$W/promote.err"; then
    for _ in $(seq 1 3000); do [ "$(sb_sql "SELECT pg_is_in_recovery()" 2>/dev/null || true)" = f ] && break; sleep 0.1; done
    T_PROM=$(now)
    if [ "$(sb_sql "SELECT pg_is_in_recovery()" 2>/dev/null || true)" = f ]; then
      rec standby_promote_command_seconds "$(elapsed "$t0" "$T_PROM")"
      rec standby_promoted_seconds "$(elapsed "$TD" "$T_PROM")"
      log "standby: promoted $(elapsed "$TD" "$T_PROM") s after the TRUNCATE returned (promote $(elapsed "$t0" "$T_PROM") s)"
    else
      fail standby_promote "the standby is still in recovery 5 min after promote"
    fi
  else
    fail standby_promote "$(cat "$W/promote.err")"
  fi
else
  fail standby_pause "the standby was not paused before a new incident within 120 s: $SBJ"
fi
rec cmd_standby "\"GET /v1/standbys every 50 ms (one keep-alive connection) until paused + ready; psql -h STANDBY_DIR -p $SB_PORT -c 'SELECT pg_is_in_recovery(), count(*) FROM pgbench_accounts WHERE aid <= 1000'; holdfast standby promote --cluster bench --before-incident N --json; poll pg_is_in_recovery() until f\""

wait "$BENCH_PID" || die "pgbench failed: $(tail -5 "$W/pgbench.out")"
BENCH_PID=""
if [ -n "$SHOP_PID" ]; then
  wait "$SHOP_PID" || die "the shop's load failed: $(tail -5 "$W/shop-load.out")"
  SHOP_PID=""
  rec shop_tps "$(awk '/^tps = / {print $3}' "$W/shop-load.out")"
fi
rec load_tps "$(awk '/^tps = / {print $3}' "$W/pgbench.out")"
rec load_wal_bytes "$(psql_ "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0')")"

# The reference: rows of pgbench_history by their commit timestamp against the TRUNCATE's. Commit
# timestamps are taken just before the commit record is written, so a transaction committing
# within microseconds of the TRUNCATE may be ordered either way: 50 ms either side are not judged.
DTS="$(psql_ "SELECT pg_xact_commit_timestamp('$XID'::xid)")"
[ -n "$DTS" ] || die "no commit timestamp for xid $XID"
TS="pg_xact_commit_timestamp(xmin)"
IFS='|' read -r REF_EARLY REF_LATE <<< "$(psql_ "SELECT count(*) FILTER (WHERE $TS < '$DTS'::timestamptz - interval '50 ms'),
  count(*) FILTER (WHERE $TS > '$DTS'::timestamptz + interval '50 ms') FROM pgbench_history")"
[ "$REF_LATE" -gt 0 ] || die "no pgbench transaction committed after the TRUNCATE: the check would prove nothing"
rec destructive_commit_ts "\"$DTS\""
rec ref_history_rows_before "$REF_EARLY"
rec history_rows_after "$REF_LATE"
log "reference: $REF_EARLY history rows committed before the TRUNCATE ($DTS), $REF_LATE after it"
VERIFY_SQL="SELECT pg_is_in_recovery(), (SELECT count(*) FROM pgbench_accounts),
  (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
  count(*) FILTER (WHERE $TS < '$DTS'::timestamptz - interval '50 ms'), count(*) FILTER (WHERE $TS > '$DTS'::timestamptz + interval '50 ms')
  FROM pgbench_history"
EXPECT="f|$ACCOUNTS|t|$REF_EARLY|0"
SHOP_SQL="" SHOP_EXPECT=""
if [ "$SHOP_MERCHANTS" -gt 0 ]; then
  IFS='|' read -r SHOP_EARLY SHOP_LATE <<< "$(shop_ "SELECT count(*) FILTER (WHERE $TS < '$DTS'::timestamptz - interval '50 ms'),
    count(*) FILTER (WHERE $TS > '$DTS'::timestamptz + interval '50 ms') FROM orders")"
  rec ref_shop_orders_before "$SHOP_EARLY"
  rec shop_orders_after "$SHOP_LATE"
  SHOP_SQL="SELECT count(*) FILTER (WHERE $TS < '$DTS'::timestamptz - interval '50 ms'), count(*) FILTER (WHERE $TS > '$DTS'::timestamptz + interval '50 ms'),
    (SELECT sum(balance_cents) FROM stored_value_cards) = $SHOP_CARDS0 - (count(*) - $SHOP_ORDERS0),
    NOT EXISTS (SELECT 1 FROM orders o WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.order_id))
    FROM orders"
  SHOP_EXPECT="$SHOP_EARLY|0|t|t"
  log "shop reference: $SHOP_EARLY orders committed before the TRUNCATE, $SHOP_LATE after it"
fi
# verify KEY SOCKDIR PORT: the restored server holds the state just before the TRUNCATE, promoted.
verify() {
  local got shop=""
  got="$(timeout 600 "$PGBIN/psql" -h "$2" -p "$3" -U postgres -d postgres -XAtq -c "$VERIFY_SQL" 2>&1 || true)"
  [ -n "$SHOP_SQL" ] && shop="$(timeout 600 "$PGBIN/psql" -h "$2" -p "$3" -U postgres -d shop -XAtq -c "$SHOP_SQL" 2>&1 || true)"
  rec "${1}_got" "$(jstr "$got${shop:+ shop $shop}")"
  if [ "$got" = "$EXPECT" ] && [ "$shop" = "$SHOP_EXPECT" ]; then rec "${1}_verified" '"yes"'; log "$1 verified"; else
    rec "${1}_verified" '"no"'; fail "${1}_verify" "got '$got' shop '$shop', expected '$EXPECT' (in_recovery|accounts|balances match history|history rows before|after) shop '$SHOP_EXPECT' (orders before|after|cards match orders|every order has items)"; fi
}
rec verify_expect "\"$EXPECT\""
if [ -n "${T_PROM:-}" ]; then verify standby "$SB" "$SB_PORT"; fi
# The promoted standby no longer follows the vault and is not restarted by it: stop it so the
# cold restores have the machine.
[ -f "$SB/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$SB" -m fast -w stop >/dev/null 2>&1

settle
rec wal_segments_archived "$(ls "$ARCH" | grep -c '^[0-9A-F]\{24\}$')"
log "stopping the source cluster (a disaster: the restores need only the backups)"
psql_ "CHECKPOINT"
pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null

# --- cold restores -----------------------------------------------------------------------------
start_restored() {
  pg "$PGBIN/pg_ctl" -D "$1" -l "$W/pgtmp/$(basename "$1").log" -o "-p $2 -k $RSOCK -c listen_addresses=''" -W start >/dev/null
}
stop_restored() {
  [ -f "$1/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1
  # The restored server's log (where its time went: start, sync, redo, pause), kept in bench-out.
  for l in "$1/holdfast_restore.log" "$W/pgtmp/$(basename "$1").log"; do
    [ -f "$l" ] && cp "$l" "$OUT/restore-s$SCALE-$(basename "$1")-server.log"
  done
  rm -rf "$1"
}

rec hf_backups "$(python3 "$PY" count-backups "$URL" "$CA" "$W/read.token" bench 2>/dev/null || echo null)"
rec hf_standby_backups "$(grep -c 'base backup taken from the warm standby' "$W/vault.log" || true)"
if [ -n "$N" ]; then
  log "restore 1/3: holdfast restore --before-incident $N --start --promote"
  D="$RDIR/holdfast" P="$(free_port)"
  drop_caches
  loadavg hf
  t0=$(now)
  if /usr/bin/time -v -o "$W/hf-restore.time" "$HF" restore --cluster bench --before-incident "$N" --target-dir "$D" --start --port "$P" --promote --json \
      --url "$URL" --ca "$CA" --token-file "$W/read.token" > "$W/hf-restore.json" 2> "$W/hf-restore.err"; then
    rec hf_rto "$(elapsed "$t0" "$(now)")"
    rec hf_rss_kb "$(maxrss_kb "$W/hf-restore.time")"
    rec hf_report "$(cat "$W/hf-restore.json")"
    HF_SOCKDIR="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket_dir"])' "$W/hf-restore.json")"
    verify hf "$HF_SOCKDIR" "$P"
    log "holdfast: RTO $(awk -F'\t' '$1=="hf_rto" {print $2}' "$RES") s"
  else
    fail hf_restore "$(tail -c 1500 "$W/hf-restore.err") $(cat "$W/hf-restore.json")"
  fi
  stop_restored "$D"
  [ -n "${HF_SOCKDIR:-}" ] && rm -rf "$HF_SOCKDIR"
  rec hf_drop_caches "\"$DROP_CACHES\""
  rec cmd_holdfast_restore "\"holdfast restore --cluster bench --before-incident $N --target-dir DIR --start --port P --promote --json --url \$URL --ca V/tls/cert.pem --token-file read.token\""
else
  fail hf_restore "no incident was raised for the TRUNCATE: nothing to restore before"
fi

log "restore 2/3: pgbackrest restore --type=xid --target=$XID --target-exclusive + pg_ctl start"
D="$RDIR/pgbackrest" P="$(free_port)"
mkdir -p "$D"; chown postgres: "$D"; chmod 700 "$D"
drop_caches
loadavg pbr
t0=$(now)
if pg /usr/bin/time -v -o "$W/pgtmp/pbr-restore.time" pgbackrest --config="$PBRCONF" --stanza=bench --pg1-path="$D" \
    --type=xid --target="$XID" --target-exclusive --target-action=promote --archive-mode=off restore 2> "$W/pbr-restore.err"; then
  t1=$(now)
  start_restored "$D" "$P"
  if wait_promoted "$RSOCK" "$P" "$D"; then
    t2=$(now)
    rec pbr_rto "$(elapsed "$t0" "$t2")"
    rec pbr_base_seconds "$(elapsed "$t0" "$t1")"
    rec pbr_rss_kb "$(maxrss_kb "$W/pgtmp/pbr-restore.time")"
    verify pbr "$RSOCK" "$P"
    log "pgBackRest: RTO $(elapsed "$t0" "$t2") s"
  else
    fail pbr_recovery "the restored server did not finish recovery: $(tail -20 "$W/pgtmp/pgbackrest.log")"
  fi
else
  fail pbr_restore "$(cat "$W/pbr-restore.err")"
fi
stop_restored "$D"
rec pbr_drop_caches "\"$DROP_CACHES\""
rec cmd_pgbackrest_restore "\"pgbackrest --config=pgbackrest.conf --stanza=bench --pg1-path=DIR --type=xid --target=$XID --target-exclusive --target-action=promote --archive-mode=off restore; pg_ctl -W start; poll pg_is_in_recovery() every 100 ms until f\""

log "restore 3/3: cp -a of the pg_basebackup copy + restore_command 'cp' + recovery_target_xid"
D="$RDIR/pgbb" P="$(free_port)"
drop_caches
loadavg pgbb
t0=$(now)
cp -a "$PGBB" "$D"
cat >> "$D/postgresql.auto.conf" <<EOF
restore_command = 'cp $ARCH/%f %p'
recovery_target_xid = '$XID'
recovery_target_inclusive = off
recovery_target_action = 'promote'
archive_mode = 'off'
EOF
touch "$D/recovery.signal"
chown postgres: "$D/postgresql.auto.conf" "$D/recovery.signal"
t1=$(now)
start_restored "$D" "$P"
if wait_promoted "$RSOCK" "$P" "$D"; then
  t2=$(now)
  rec pgbb_rto "$(elapsed "$t0" "$t2")"
  rec pgbb_base_seconds "$(elapsed "$t0" "$t1")"
  verify pgbb "$RSOCK" "$P"
  log "pg_basebackup + cp: RTO $(elapsed "$t0" "$t2") s"
else
  fail pgbb_recovery "the restored server did not finish recovery: $(tail -20 "$W/pgtmp/pgbb.log")"
fi
stop_restored "$D"
rec pgbb_drop_caches "\"$DROP_CACHES\""
rec cmd_pgbb_restore "\"cp -a PGBB DIR; append restore_command = 'cp ARCHIVE/%f %p', recovery_target_xid = '$XID', recovery_target_inclusive = off, recovery_target_action = 'promote', archive_mode = 'off' to DIR/postgresql.auto.conf; touch DIR/recovery.signal; pg_ctl -W start; poll pg_is_in_recovery() every 100 ms until f\""
log "scale $SCALE done"
