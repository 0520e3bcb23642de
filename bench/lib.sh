# bench/lib.sh: what the comparison benchmarks (capture.sh, restore.sh, s3.sh) share, written
# once: logging, the root check, prerequisites, the holdfast binary, the small helpers over the
# work area, the source cluster (initdb + pgbench -i) and pgBackRest's config. Sourced, not run:
#   ROOT=…; OUT="$ROOT/bench-out"; . "$ROOT/bench/lib.sh"
# Helpers read the caller's globals when called: RES (figures file), PGBIN, DATA, SOCK, PGPORT,
# W (work dir), REPPW (replication password), SCALE, PBR and PBRCONF (pgBackRest).

log() { echo "[$(date +%T)] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# require_root WHY: stop unless root (the benches install packages, run PostgreSQL as postgres…).
require_root() { [ "$(id -u)" = 0 ] || die "run as root ($1)"; }

# ensure_prereqs [DEBIAN_PACKAGE…]: installs what is missing of pgBackRest, GNU time, python3,
# PostgreSQL 15 and the packages named; sets PGBIN to the newest PostgreSQL's bin directory.
ensure_prereqs() {
  local need=() p
  command -v pgbackrest >/dev/null || need+=(pgbackrest)
  [ -x /usr/bin/time ] || need+=(time)
  command -v python3 >/dev/null || need+=(python3)
  ls -d /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql-15 postgresql-client-15)
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
}

# ensure_holdfast: HF is the holdfast binary given, or target/release/holdfast, built now.
ensure_holdfast() {
  if [ -z "${HF:-}" ]; then
    log "building holdfast (release)"
    (cd "$ROOT" && cargo build --release -p holdfast -q)
    HF="$ROOT/target/release/holdfast"
  fi
  [ -x "$HF" ] || die "no holdfast binary at $HF"
}

# rec KEY VALUE: one raw figure (VALUE is JSON if it parses, else a string).
rec() { printf '%s\t%s\n' "$1" "$2" >> "$RES"; }
fail() { log "FAILURE: $1: $2"; rec "failure_$1" "$(echo "$2" | tr '\n\t' '  ' | cut -c1-600)"; }
now() { date +%s.%N; }
elapsed() { python3 -c "print(round($2 - $1, 3))"; }
size_of() { du -sb "$1" | cut -f1; }
jstr() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg() { runuser -u postgres -- "$@"; }
psql_() { timeout 1800 "$PGBIN/psql" -h "$SOCK" -p "$PGPORT" -U postgres -d postgres -XAtq -c "$1"; }
pgbr() { pg pgbackrest --config="$PBRCONF" --stanza=bench "$@"; }
maxrss_kb() { awk -F': ' '/Maximum resident set size/ {print $2}' "$1"; }

# new_replication_password: REPPW, random, also in $W/rep.password (0600) for the vault.
new_replication_password() {
  REPPW="$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
  echo "$REPPW" > "$W/rep.password"
  chmod 600 "$W/rep.password"
}

# rec_versions: when the run started, the machine's cores, and the versions compared.
rec_versions() {
  rec started "\"$(date -u +%FT%TZ)\""
  rec cores "$(nproc)"
  rec pg_version "\"$("$PGBIN/postgres" --version | awk '{print $3}')\""
  rec pgbackrest_version "\"$(pgbackrest version | awk '{print $2}')\""
  rec holdfast_version "\"$("$HF" --version | awk '{print $2}') ($(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo ?)$(cd "$ROOT" && git diff --quiet 2>/dev/null || echo '+dirty'))\""
}

# start_source [EXTRA_POSTGRESQL_CONF]: the cluster the benches back up — initdb into $DATA,
# listening on 127.0.0.1:$PGPORT and in $SOCK, wal_level replica, archive_mode on (the
# archive_command a no-op until pgBackRest's stanza exists), the replication role holdfast_rep
# with $REPPW, pgbench -i -s $SCALE, then a CHECKPOINT.
start_source() {
  log "initdb (port $PGPORT) + pgbench -i -s $SCALE"
  pg "$PGBIN/initdb" -D "$DATA" -U postgres --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
  cat >> "$DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$SOCK'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
shared_buffers = 256MB
max_wal_size = 4GB
archive_mode = on
archive_command = '/bin/true'
${1:-}
EOF
  pg "$PGBIN/pg_ctl" -D "$DATA" -l "$W/pg/log" -w start >/dev/null
  psql_ "CREATE ROLE holdfast_rep LOGIN REPLICATION PASSWORD '$REPPW'"
  pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -i -s "$SCALE" -q postgres 2>&1 | tail -1 >&2
  psql_ "CHECKPOINT"
}

# write_pgbr_conf REPO_LINES [GLOBAL_LINES]: pgBackRest's config in $PBRCONF (owned by postgres,
# 0600: an S3 repository's lines hold its key) for stanza `bench` on the source cluster, zstd,
# two processes, logs/locks/spool under $PBR.
write_pgbr_conf() {
  cat > "$PBRCONF" <<EOF
[global]
$1
repo1-retention-full=9
log-path=$PBR/log
lock-path=$PBR/lock
spool-path=$PBR/spool
compress-type=zst
process-max=2
${2:-}
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
  chmod 600 "$PBRCONF"
}

# wait_vault [SECONDS]: waits (600 s unless said) until the vault at $URL (CA $CA, read token
# $W/read.token) has the server's current flush LSN durable for cluster `bench`.
wait_vault() {
  python3 "$ROOT/bench/capture.py" wait-durable "$URL" "$CA" "$W/read.token" bench "$(psql_ "SELECT pg_current_wal_flush_lsn()")" "${1:-600}"
}

# switch_and_wait_archived MINUTES: ends the current WAL segment — after a restore point, since
# pg_switch_wal() on a segment with nothing in it switches nothing and that segment would not be
# archived until it fills — and waits up to MINUTES for the server's archiver to report it
# archived. SEG is that segment; non-zero if it was not archived in time.
switch_and_wait_archived() {
  local last
  psql_ "SELECT pg_create_restore_point('bench-settle')" >/dev/null
  SEG="$(psql_ "SELECT pg_walfile_name(pg_switch_wal())")"
  for _ in $(seq 1 $(($1 * 120))); do
    last="$(psql_ "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")"
    [[ "$last" > "$SEG" || "$last" == "$SEG" ]] && return 0
    sleep 0.5
  done
  return 1
}

# pgbr_stanza ARCHIVE_COMMAND: the source archives with ARCHIVE_COMMAND (pgBackRest's
# archive-push, perhaps with more), and pgBackRest's stanza is created and checked.
pgbr_stanza() {
  psql_ "ALTER SYSTEM SET archive_command = '$1'"
  psql_ "SELECT pg_reload_conf()" >/dev/null
  pgbr stanza-create || die "pgbackrest stanza-create failed (see $PBR/log)"
  pgbr check || die "pgbackrest check failed (see $PBR/log)"
}

# wait_promoted SOCKDIR PORT DATADIR: until the server there answers out of recovery (an hour at
# most); non-zero if it did not, or its postmaster went away.
wait_promoted() { # SOCKDIR PORT DATADIR
  local i v
  for i in $(seq 1 36000); do
    v="$("$PGBIN/psql" -h "$1" -p "$2" -U postgres -d postgres -XAtq -c "SELECT pg_is_in_recovery()" 2>/dev/null || true)"
    [ "$v" = f ] && return 0
    if [ "$i" -gt 50 ] && [ ! -f "$3/postmaster.pid" ]; then return 1; fi
    sleep 0.1
  done
  return 1
}

# vault_init [MORE]: an escrow key in $W, `holdfast vault init` in $V (admin token in
# $V/admin.token) and its cluster `bench`: the source, through holdfast_rep with
# $W/rep.password, asynchronous; MORE is appended after that table (more keys of it, more
# tables). CA is the vault's certificate.
vault_init() {
  local recipient
  recipient="$("$HF" escrow-keygen --out "$W/escrow.key" 2>/dev/null | grep -o 'age1[0-9a-z]*' | head -1)"
  "$HF" vault init --dir "$V" --escrow-recipient "$recipient" --listen 127.0.0.1:0 --admin-token-file "$V/admin.token" >/dev/null 2>&1
  cat >> "$V/vault.toml" <<EOF

[[cluster]]
name = "bench"
hosts = ["127.0.0.1:$PGPORT"]
user = "holdfast_rep"
password_file = "$W/rep.password"
synchronous = false
${1:-}
EOF
  CA="$V/tls/cert.pem"
}

# The shop's tables (DESIGN.md §4) with $1 merchants, each with 20 customers, 100 orders of two
# items and 10 gift cards: the SQL, for restore.sh's and repair.sh's shop databases.
shop_schema_sql() {
  local M=$1
  cat <<SQL
CREATE TABLE merchants (merchant_id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE customers (customer_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, name text NOT NULL, phone text);
CREATE TABLE orders (order_id bigserial PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, customer_id bigint NOT NULL REFERENCES customers,
  total_cents int NOT NULL, note text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE order_items (order_id bigint NOT NULL REFERENCES orders ON DELETE CASCADE, merchant_id int NOT NULL, product text NOT NULL, qty int NOT NULL, price_cents int NOT NULL);
CREATE TABLE stored_value_cards (card_id bigint PRIMARY KEY, merchant_id int NOT NULL REFERENCES merchants, customer_id bigint NOT NULL REFERENCES customers, balance_cents bigint NOT NULL);
INSERT INTO merchants SELECT g, 'merchant ' || g FROM generate_series(1, $M) g;
INSERT INTO customers SELECT g, 1 + (g - 1) % $M, 'customer ' || g, '138' || lpad(g::text, 8, '0') FROM generate_series(1, $M * 20) g;
INSERT INTO orders (order_id, merchant_id, customer_id, total_cents, note)
  SELECT g, 1 + (g - 1) % $M, 1 + (g - 1) % $M + $M * (g % 20), 100 + g % 50000, repeat('x', 200) FROM generate_series(1, $M * 100) g;
SELECT setval('orders_order_id_seq', $M * 100);
INSERT INTO order_items SELECT order_id, merchant_id, 'product ' || order_id % 97, 1 + order_id % 3, total_cents FROM orders;
INSERT INTO order_items SELECT order_id, merchant_id, 'bag', 1, 10 FROM orders;
INSERT INTO stored_value_cards SELECT g, 1 + (g - 1) % $M, 1 + (g - 1) % $M, 10000 + g % 90000 FROM generate_series(1, $M * 10) g;
CREATE INDEX ON orders (merchant_id); CREATE INDEX ON order_items (order_id); CREATE INDEX ON order_items (merchant_id);
ANALYZE;
SQL
}
