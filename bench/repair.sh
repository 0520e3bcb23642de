#!/usr/bin/env bash
# Repair vs full PITR, in one run: an insider deletes one merchant's orders (items cascade) and
# zeroes its gift cards in one transaction while the shop takes orders; then
#   1. holdfast repair --incident N --tenant merchant_id=V, with the shop still taking orders:
#      time until the merchant's data is back (command start → COMMIT verified), and the work
#      done since the incident that is lost (orders placed after it and missing afterwards);
#   2. holdfast restore --before-incident N --start --promote (the full point-in-time restore a
#      user would otherwise run): time until the restored server answers, and the orders placed
#      after the incident that it does not have (all of them — what switching to it would lose).
# Both results are checked: the repair must bring back every deleted order and item of the
# merchant and keep every order placed since; the restore must hold every order of the merchant.
#
# One command (as root, Debian 12 with PostgreSQL 15 and Rust): bench/repair.sh   (./run bench repair)
# Env: MERCHANTS=2000 (each: 20 customers, 100 orders of 2 items, 10 cards; ~1 GB at 20000)
#      VICTIM=7  AFTER=20 (seconds of orders after the incident before repairing)  RATE=200 (orders/s)
#      HF=<holdfast binary> (default: target/release/holdfast, built)  KEEP=1 (keep the work dir)
# Writes bench-out/repair.md and bench-out/repair.json.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MERCHANTS="${MERCHANTS:-2000}"
VICTIM="${VICTIM:-7}"
AFTER="${AFTER:-20}"
RATE="${RATE:-200}"
KEEP="${KEEP:-0}"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"
. "$ROOT/bench/lib.sh"
require_root "PostgreSQL runs as the postgres user"
PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
export PATH="$PGBIN:$PATH"
ensure_holdfast

W="$(mktemp -d /tmp/holdfast-repair-bench.XXXXXX)"
chmod 755 "$W"
DATA="$W/pg/data" SOCK="$W/pg/sock" V="$W/vault"
mkdir -p "$SOCK" && chown -R postgres: "$W/pg"
PGPORT="$(free_port)"
VPID="" LOAD_PID=""
cleanup() {
  set +e
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
  [ -f "$W/pitr/postmaster.pid" ] && runuser -u postgres -- pg_ctl -D "$W/pitr" -m immediate -w stop >/dev/null 2>&1
  if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; fi
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- pg_ctl -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
# The shop's database, not lib.sh's `postgres`.
psql_() { psql -h "$SOCK" -p "$PGPORT" -U postgres -d shop -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
secs() { python3 -c "print(round($2 - $1, 2))"; }

log "PostgreSQL on port $PGPORT, shop of $MERCHANTS merchants"
runuser -u postgres -- initdb -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 256MB
max_wal_size = 4GB
EOF
runuser -u postgres -- pg_ctl -D "$DATA" -l "$W/pg/log" -w start >/dev/null
psql -h "$SOCK" -p "$PGPORT" -U postgres -XAtq -c "CREATE DATABASE shop" -c "CREATE ROLE holdfast_rep LOGIN REPLICATION PASSWORD 'rep'"
M=$MERCHANTS
psql_ "$(shop_schema_sql "$M")" >/dev/null
DB_BYTES="$(psql_ "SELECT pg_database_size('shop')")"
log "shop: $((DB_BYTES >> 20)) MiB"

log "vault"
RECIPIENT="$("$HF" escrow-keygen --out "$W/escrow.key" 2>/dev/null | grep -o 'age1[0-9a-z]*' | head -1)"
"$HF" vault init --dir "$V" --escrow-recipient "$RECIPIENT" --listen 127.0.0.1:0 --admin-token-file "$V/admin.token" >/dev/null 2>&1
echo rep > "$W/rep.password"
cat >> "$V/vault.toml" <<EOF

[[cluster]]
name = "shop"
hosts = ["127.0.0.1:$PGPORT"]
user = "holdfast_rep"
password_file = "$W/rep.password"
catalog_refresh_seconds = 2
# One merchant is a small share of the shop: an incident from 100 rows deleted in one transaction.
mass_delete_rows = 100
EOF
RUST_LOG=warn "$HF" vault serve --config "$V/vault.toml" --listen 127.0.0.1:0 --ready-file "$V/ready.json" >> "$W/vault.log" 2>&1 &
VPID=$!
for _ in $(seq 1 300); do [ -s "$V/ready.json" ] && break; sleep 0.1; done
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$V/ready.json")"
export HOLDFAST_VAULT_URL="$URL" HOLDFAST_VAULT_CA="$V/tls/cert.pem"
HOLDFAST_TOKEN_FILE="$V/admin.token" "$HF" vault token create --scope read --label bench --out "$W/read.token" >/dev/null
export HOLDFAST_TOKEN_FILE="$W/read.token"
HOLDFAST_TOKEN_FILE="$V/admin.token" "$HF" backup --cluster shop --json >/dev/null || die "backup failed: $(tail -5 "$W/vault.log")"

log "the shop takes orders ($RATE/s) for every merchant"
cat > "$W/order.sql" <<EOF
\set m random(1, $M)
INSERT INTO orders (merchant_id, customer_id, total_cents) VALUES (:m, :m, 4200);
EOF
chown postgres: "$W/order.sql"
runuser -u postgres -- pgbench -h "$SOCK" -p "$PGPORT" -U postgres -n -c 2 -j 1 -R "$RATE" -T 100000 -f "$W/order.sql" shop > "$W/pgbench.log" 2>&1 &
LOAD_PID=$!
sleep 3
KNOWN="$("$HF" incidents --cluster shop --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')"
log "the insider: merchant $VICTIM's orders (items cascade) and its cards, one transaction"
# What the transaction deleted, read inside it: the orders (ids, checksum), their items, and the
# newest order id it could see.
IFS='|' read -r VICTIM_ORDERS VICTIM_SUM VICTIM_IDS VICTIM_ITEMS MAX_AT <<< "$(psql_ "BEGIN;
  WITH d AS (DELETE FROM orders WHERE merchant_id = $VICTIM RETURNING *)
    SELECT count(*), md5(string_agg(d::text, ',' ORDER BY order_id)), string_agg(order_id::text, ',' ORDER BY order_id),
      (SELECT count(*) FROM order_items WHERE merchant_id = $VICTIM), (SELECT max(order_id) FROM orders) FROM d;
  UPDATE stored_value_cards SET balance_cents = 0 WHERE merchant_id = $VICTIM;
  COMMIT" | head -1)"
[ "${VICTIM_ORDERS:-0}" -gt 0 ] || die "the insider's transaction deleted nothing"
cat > "$W/new_incident.py" <<'PY'
import json, sys
known = int(sys.argv[1])
l = json.load(sys.stdin)
print(next((str(k + 1) for k in range(known, len(l)) if l[k]["kind"] == "mass_delete"), ""))
PY
N=""
for _ in $(seq 1 300); do
  N="$("$HF" incidents --cluster shop --json | python3 "$W/new_incident.py" "$KNOWN")"
  [ -n "$N" ] && break
  sleep 0.2
done
[ -n "$N" ] || die "no incident for the insider's transaction"
log "incident $N; orders go on for $AFTER s"
sleep "$AFTER"

log "1. holdfast repair --incident $N --tenant merchant_id=$VICTIM (orders still coming in)"
DSN="host=$SOCK port=$PGPORT dbname=shop user=postgres"
t0=$(now)
"$HF" repair --cluster shop --incident "$N" --tenant "merchant_id=$VICTIM" --dsn "$DSN" --report "$W/repair.json" > "$W/repair.out" 2> "$W/repair.err" \
  || die "repair failed: $(tail -5 "$W/repair.err")"
REPAIR_S="$(secs "$t0" "$(now)")"
BACK_ORDERS="$(psql_ "SELECT count(*) FROM orders WHERE order_id IN ($VICTIM_IDS)")"
BACK_SUM="$(psql_ "SELECT md5(string_agg(t::text, ',' ORDER BY order_id)) FROM orders t WHERE order_id IN ($VICTIM_IDS)")"
[ "$BACK_SUM" = "$VICTIM_SUM" ] || die "the repair did not bring back merchant $VICTIM's orders as they were ($BACK_ORDERS of $VICTIM_ORDERS)"
kill "$LOAD_PID"; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=""
SINCE="$(psql_ "SELECT count(*) FROM orders WHERE order_id > $MAX_AT")"
log "repair: ${REPAIR_S} s; $SINCE orders placed since the incident, all still there"

log "2. holdfast restore --before-incident $N --start --promote (full PITR)"
t0=$(now)
"$HF" restore --cluster shop --before-incident "$N" --target-dir "$W/pitr" --start --promote --json > "$W/pitr.json" 2> "$W/pitr.err" \
  || die "restore failed: $(tail -5 "$W/pitr.err")"
PITR_S="$(secs "$t0" "$(now)")"
PITR_READY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["ready_seconds"])' "$W/pitr.json")"
RSOCK="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket_dir"])' "$W/pitr.json")"
RPORT="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$W/pitr.json")"
rq() { psql -h "$RSOCK" -p "$RPORT" -U postgres -d shop -XAtq -c "$1"; }
PITR_SUM="$(rq "SELECT md5(string_agg(t::text, ',' ORDER BY order_id)) FROM orders t WHERE order_id IN ($VICTIM_IDS)")"
[ "$PITR_SUM" = "$VICTIM_SUM" ] || die "the PITR copy does not hold merchant $VICTIM's orders"
PITR_HAS_SINCE="$(rq "SELECT count(*) FROM orders WHERE order_id > $MAX_AT")"
PITR_LOST=$((SINCE - PITR_HAS_SINCE))

python3 - "$OUT/repair.json" "$W/repair.json" <<EOF
import json, sys
r = json.load(open(sys.argv[2]))
json.dump({"merchants": $M, "db_bytes": $DB_BYTES, "victim": $VICTIM, "incident": $N,
  "victim_orders": $VICTIM_ORDERS, "victim_items": $VICTIM_ITEMS, "orders_since_incident": $SINCE,
  "repair": {"seconds": $REPAIR_S, "restore_seconds": r["restore_seconds"], "plan_seconds": r["plan_seconds"],
             "apply_seconds": r["apply_seconds"], "reinserted": sum(t["reinserted"] for t in r["tables"]),
             "reverted": sum(t["reverted"] for t in r["tables"]), "conflicts": sum(len(t["conflicts"]) for t in r["tables"]),
             "orders_since_lost": 0},
  "pitr": {"seconds": $PITR_S, "ready_seconds": $PITR_READY, "orders_since_lost": $PITR_LOST}}, open(sys.argv[1], "w"), indent=1)
EOF
cat > "$OUT/repair.md" <<EOF
# Repair of one merchant vs full point-in-time restore

$(date -u +%FT%TZ), $(nproc) cores, PostgreSQL $(postgres --version | awk '{print $3}'), holdfast $(cd "$ROOT" && git rev-parse --short HEAD).
Shop: $M merchants, $((DB_BYTES >> 20)) MiB. Merchant $VICTIM lost $VICTIM_ORDERS orders and $VICTIM_ITEMS items (cascade) and had its cards zeroed in one
transaction (incident $N); the shop took orders at $RATE/s for every merchant throughout; $SINCE orders were placed after the incident.

| | time to the merchant's data back | orders placed since the incident lost |
|---|---|---|
| \`holdfast repair --incident $N --tenant merchant_id=$VICTIM\` (live, shop open) | $REPAIR_S s | 0 of $SINCE |
| \`holdfast restore --before-incident $N --start --promote\` (full PITR) | $(printf "%.2f" "$PITR_READY") s to a server answering ($PITR_S s command) | $PITR_LOST of $SINCE |

The repair's time is its whole command: two scratch restores, the three-way comparison, the one
verified transaction (breakdown in bench-out/repair.json). The PITR's server would still have to
replace production, and every order placed since the incident would have to be re-entered.
Command: \`MERCHANTS=$M AFTER=$AFTER RATE=$RATE bench/repair.sh\`.
EOF
cat "$OUT/repair.md"
