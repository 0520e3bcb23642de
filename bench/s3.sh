#!/usr/bin/env bash
# S3 benchmark: holdfast's vault on a Ceph RADOS Gateway bucket with Object Lock, side by side
# with pgBackRest's `repo1-type=s3` repository on the same RGW (another bucket), in one run:
#   1. a throw-away Ceph cluster started here (one MON, one memstore OSD, RGW serving HTTPS on
#      127.0.0.1; the same settings as testkit::ceph), one S3 user, two buckets: one created with
#      Object Lock for holdfast (`[store] kind = "s3"`), one plain for pgBackRest
#   2. source: pgbench -i -s SCALE; the vault streams its WAL into its bucket; archive_command
#      pushes every segment to pgBackRest (archive-async, process-max=2, zstd)
#   3. full base backups, one after the other: `holdfast backup` (done = every object in the
#      bucket) and `pgbackrest --type=full backup`: time, objects and bytes in each bucket
#      (`radosgw-admin bucket stats`), S3 requests per bucket (RGW's usage log)
#   4. LOAD seconds of pgbench writes, then the source is stopped (a disaster)
#   5. restore from each bucket into a fresh directory to the end of the WAL, promoted:
#      `holdfast restore --latest --start --promote` (the vault reads its bucket) and
#      `pgbackrest restore` + pg_ctl start; each verified against the source's last state
#   6. Object Lock, seen: with the vault's S3 credential, DELETE of one of holdfast's objects
#      and of its version (also with the GOVERNANCE bypass header) — refused by RGW; DELETE of
#      one of pgBackRest's objects (no lock on its bucket) — it is gone
#
# One command (as root, Debian 12 with Rust): bench/s3.sh    (also: ./run bench s3)
# Env: SCALE=30 (pgbench scale) LOAD=20 (seconds of pgbench writes after the backups)
#      MEMSTORE_GB=8 (RAM the OSD may use) KEEP=1 (keep the work dir and logs)
#      HF=<holdfast binary> (default: target/release/holdfast, built)
# Writes bench-out/s3.md (report) and bench-out/s3.json (raw figures).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SCALE="${SCALE:-30}"
LOAD="${LOAD:-20}"
MEMSTORE_GB="${MEMSTORE_GB:-8}"
KEEP="${KEEP:-0}"
OUT="$ROOT/bench-out"
PY="$ROOT/bench/s3.py"
mkdir -p "$OUT"
. "$ROOT/bench/lib.sh"
require_root "it installs packages, starts Ceph and runs PostgreSQL as the postgres user"

# --- prerequisites -----------------------------------------------------------------------------
ensure_prereqs openssl util-linux ceph-mon ceph-osd radosgw ceph-common
ensure_holdfast

# --- work area and cleanup -------------------------------------------------------------------------
W="$(mktemp -d /tmp/holdfast-s3-bench.XXXXXX)"
chmod 755 "$W"
DATA="$W/pg/data" SOCK="$W/pg/sock" V="$W/vault" PBR="$W/pgbackrest" C="$W/ceph"
PBRCONF="$PBR/pgbackrest.conf"
RDIR="$W/restore" RSOCK="$W/rsock"
RES="$W/results.tsv"
: > "$RES"
mkdir -p "$SOCK" "$PBR"/{log,lock,spool} "$W/pgtmp" "$RDIR" "$RSOCK" "$C"/{mon,osd,rgw,run}
chown -R postgres: "$W/pg" "$PBR" "$W/pgtmp" "$RDIR" "$RSOCK"

VPID="" MON_PID="" OSD_PID="" RGW_PID="" LOAD_PID=""
stop_pid() { # stop_pid PID: SIGTERM, then SIGKILL after 10 s
  local p=$1 i
  kill -TERM "$p" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$p" 2>/dev/null || true
}
cleanup() {
  set +e
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
  for pid_file in "$RDIR"/*/postmaster.pid; do
    [ -f "$pid_file" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$(dirname "$pid_file")" -m immediate -w stop >/dev/null 2>&1
  done
  [ -n "${HF_SOCKDIR:-}" ] && rm -rf "$HF_SOCKDIR"
  if [ -n "$VPID" ]; then kill -TERM "$VPID" 2>/dev/null; wait "$VPID" 2>/dev/null; fi
  [ -f "$DATA/postmaster.pid" ] && runuser -u postgres -- "$PGBIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null 2>&1
  # Ceph: RGW first, then the OSD, then the MON (stopping the OSD under a running RGW hangs it).
  for p in "$RGW_PID" "$OSD_PID" "$MON_PID"; do [ -n "$p" ] && stop_pid "$p"; done
  [ -f "$W/vault.log" ] && cp "$W/vault.log" "$OUT/s3-vault.log"
  if [ "$KEEP" = 1 ]; then log "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT


rec_versions
rec loadavg_start "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
rec scale "$SCALE"
rec load_seconds "$LOAD"
rec ceph_version "\"$(ceph --version | awk '{print $3}')\""
rec invocation "\"SCALE=$SCALE LOAD=$LOAD bash bench/s3.sh\""

# --- Ceph: MON, memstore OSD, RGW (HTTPS) ------------------------------------------------------------
log "starting Ceph (MON, memstore OSD of $MEMSTORE_GB GiB, RGW with HTTPS) in $C"
# A throw-away CA and RGW's certificate signed by it (rustls refuses a self-signed CA certificate
# used as the server's own); both clients trust ca.pem.
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$C/rgw.ext"
{ openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=holdfast-bench-ca -keyout "$C/ca.key" -out "$C/ca.pem" &&
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$C/rgw.key" -out "$C/rgw.csr" &&
  openssl x509 -req -in "$C/rgw.csr" -CA "$C/ca.pem" -CAkey "$C/ca.key" -CAcreateserial -days 2 -extfile "$C/rgw.ext" -out "$C/rgw.pem"
} >/dev/null 2>&1 || die "openssl could not make the RGW certificate"
chmod 644 "$C/ca.pem"
MON_PORT="$(free_port)" RGW_PORT="$(free_port)" RGW_TLS_PORT="$(free_port)"
FSID="$(cat /proc/sys/kernel/random/uuid)"
cat > "$C/ceph.conf" <<EOF
[global]
fsid = $FSID
mon host = [v2:127.0.0.1:$MON_PORT]
mon initial members = a
keyring = $C/keyring
run dir = $C/run
admin socket = $C/run/\$name.asok
pid file = $C/run/\$name.pid
log file = $C/\$name.log
mon cluster log file = $C/mon-cluster.log
ms bind ipv4 = true
ms bind ipv6 = false
public network = 127.0.0.0/8
cluster network = 127.0.0.0/8
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon max pg per osd = 1000
osd crush chooseleaf type = 0
paxos propose interval = 0.1
bdev aio poll ms = 10
auth allow insecure global id reclaim = false
[mon]
mon data = $C/mon
mon data avail crit = 0
mon data avail warn = 0
[osd]
osd data = $C/osd
public addr = 127.0.0.1
cluster addr = 127.0.0.1
osd objectstore = memstore
memstore device bytes = $((MEMSTORE_GB * 1073741824))
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT ssl_endpoint=127.0.0.1:$RGW_TLS_PORT ssl_certificate=$C/rgw.pem ssl_private_key=$C/rgw.key
rgw data = $C/rgw
rgw dns name = localhost
# Requests per bucket for the report (radosgw-admin usage show), flushed every second.
rgw enable usage log = true
rgw usage log tick interval = 1
rgw usage log flush threshold = 1
EOF
K="$C/keyring"
ceph-authtool "$K" --create-keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$K" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
ceph-authtool "$K" --gen-key -n osd.0 --cap mon 'allow profile osd' --cap osd 'allow *' >/dev/null
ceph-authtool "$K" --gen-key -n client.rgw.a --cap mon 'allow rw' --cap osd 'allow rwx' >/dev/null
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$C/monmap" >/dev/null
ceph-mon -c "$C/ceph.conf" --mkfs -i a --monmap "$C/monmap" --keyring "$K" >/dev/null 2>&1 || die "ceph-mon --mkfs failed"
# The daemons run in the foreground as children of this script, with PR_SET_PDEATHSIG: they die
# with it even if the trap cannot run (SIGKILL).
setpriv --pdeathsig KILL -- ceph-mon -c "$C/ceph.conf" -f -i a > "$C/ceph-mon.stdout" 2>&1 &
MON_PID=$!
OSD_UUID="$(cat /proc/sys/kernel/random/uuid)"
OSD_ID="$(ceph -c "$C/ceph.conf" --connect-timeout 30 osd new "$OSD_UUID")" || die "ceph osd new failed: $(tail -5 "$C/mon.a.log")"
[ "$OSD_ID" = 0 ] || die "expected OSD id 0, got $OSD_ID"
ceph-osd -c "$C/ceph.conf" -i 0 --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1 || die "ceph-osd --mkfs failed"
setpriv --pdeathsig KILL -- ceph-osd -c "$C/ceph.conf" -f -i 0 > "$C/ceph-osd.stdout" 2>&1 &
OSD_PID=$!
setpriv --pdeathsig KILL -- radosgw -c "$C/ceph.conf" -f -n client.rgw.a > "$C/radosgw.stdout" 2>&1 &
RGW_PID=$!
S3_KEY="HOLDFASTBENCHACCESS1" S3_SECRET="$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')"
timeout 120 radosgw-admin -c "$C/ceph.conf" user create --uid=bench --display-name="holdfast bench" \
  --access-key="$S3_KEY" --secret-key="$S3_SECRET" >/dev/null 2>&1 || die "radosgw-admin user create failed: $(tail -5 "$C/client.rgw.a.log" 2>/dev/null)"
for _ in $(seq 1 600); do
  curl -s -o /dev/null --cacert "$C/ca.pem" "https://localhost:$RGW_TLS_PORT/" && break
  kill -0 "$RGW_PID" 2>/dev/null || die "radosgw exited: $(tail -5 "$C/radosgw.stdout")"
  sleep 0.1
done
curl -s -o /dev/null --cacert "$C/ca.pem" "https://localhost:$RGW_TLS_PORT/" || die "RGW does not answer HTTPS on 127.0.0.1:$RGW_TLS_PORT"
export S3_ENDPOINT="https://localhost:$RGW_TLS_PORT" S3_CA="$C/ca.pem" S3_KEY S3_SECRET
HFB=holdfast-bench PBB=pgbackrest-bench
python3 "$PY" mkbucket "$HFB" 1
python3 "$PY" mkbucket "$PBB" 0
rec hf_bucket "\"$HFB\""
rec pbr_bucket "\"$PBB\""
log "Ceph RGW at $S3_ENDPOINT; buckets $HFB (Object Lock) and $PBB"
usage() { sleep 2; python3 "$PY" usage "$C/ceph.conf" bench; }
bstats() { python3 "$PY" bucketstats "$C/ceph.conf" "$1"; }

# --- PostgreSQL --------------------------------------------------------------------------------
PGPORT="$(free_port)"
new_replication_password
start_source
rec db_bytes "$(psql_ "SELECT pg_database_size('postgres')")"

# --- pgBackRest on the RGW ---------------------------------------------------------------------------
log "pgBackRest stanza on s3://$PBB"
write_pgbr_conf "repo1-type=s3
repo1-path=/repo
repo1-s3-bucket=$PBB
repo1-s3-endpoint=localhost
repo1-storage-port=$RGW_TLS_PORT
repo1-storage-ca-file=$C/ca.pem
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-s3-key=$S3_KEY
repo1-s3-key-secret=$S3_SECRET" "archive-async=y"
pgbr_stanza "pgbackrest --config=$PBRCONF --stanza=bench archive-push %p"
rec cmd_pgbackrest_conf "$(jstr "$(sed "s/^repo1-s3-key-secret=.*/repo1-s3-key-secret=[redacted]/" "$PBRCONF")")"

# --- the vault on the locked bucket ------------------------------------------------------------------
log "vault init --store-config (kind = \"s3\", bucket $HFB) + serve"
printf 'aws_access_key_id = %s\naws_secret_access_key = %s\n' "$S3_KEY" "$S3_SECRET" > "$W/s3.credentials"
chmod 600 "$W/s3.credentials"
cat > "$W/store.toml" <<EOF
[store]
kind = "s3"
endpoint = "$S3_ENDPOINT"
bucket = "$HFB"
prefix = "bench/"
credentials_file = "$W/s3.credentials"
ca_file = "$C/ca.pem"
EOF
rec cmd_holdfast_store "$(jstr "$(cat "$W/store.toml")")"
RECIPIENT="$("$HF" escrow-keygen --out "$W/escrow.key" 2>/dev/null | grep -o 'age1[0-9a-z]*' | head -1)"
"$HF" vault init --dir "$V" --escrow-recipient "$RECIPIENT" --listen 127.0.0.1:0 --admin-token-file "$W/admin.token" \
  --store-config "$W/store.toml" > /dev/null 2> "$W/vault-init.err" || die "vault init on the bucket failed: $(cat "$W/vault-init.err")"
cat >> "$V/vault.toml" <<EOF

[[cluster]]
name = "bench"
hosts = ["127.0.0.1:$PGPORT"]
user = "holdfast_rep"
password_file = "$W/rep.password"
first_backup = false
EOF
CA="$V/tls/cert.pem"
RUST_LOG=info "$HF" vault serve --config "$V/vault.toml" --listen 127.0.0.1:0 --ready-file "$W/ready.json" >> "$W/vault.log" 2>&1 &
VPID=$!
for _ in $(seq 1 600); do [ -s "$W/ready.json" ] && break; kill -0 "$VPID" 2>/dev/null || die "vault serve exited: $(tail -5 "$W/vault.log")"; sleep 0.1; done
[ -s "$W/ready.json" ] || die "vault serve not ready after 60 s: $(tail -5 "$W/vault.log")"
URL="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$W/ready.json")"
"$HF" vault token create --url "$URL" --ca "$CA" --token-file "$W/admin.token" --scope read --label bench --out "$W/read.token" >/dev/null
# settle: every segment so far archived by pgBackRest and durable in the vault.
settle() {
  switch_and_wait_archived 10 || die "segment $SEG not archived by pgBackRest after 10 min"
  wait_vault 600 || die "the vault's durable_lsn did not reach the server's flush LSN within 10 min (see s3-vault.log)"
}
log "waiting for the vault to stream"
wait_vault 120 || die "the vault does not stream WAL: $(tail -5 "$W/vault.log")"
settle

# --- full backups ------------------------------------------------------------------------------------
log "backup 1/2: holdfast backup (vault on s3://$HFB)"
rec hf_usage_before_backup "$(usage)"
rec hf_stats_before_backup "$(bstats "$HFB")"
t0=$(now)
"$HF" backup --cluster bench --url "$URL" --ca "$CA" --token-file "$W/admin.token" --json > "$W/hf-backup.json" 2> "$W/hf-backup.err" \
  || die "holdfast backup failed: $(cat "$W/hf-backup.err"); vault log: $(tail -20 "$W/vault.log")"
rec hf_backup_seconds "$(elapsed "$t0" "$(now)")"
rec hf_backup "$(python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)))' < "$W/hf-backup.json")"
rec hf_usage_after_backup "$(usage)"
rec hf_stats_after_backup "$(bstats "$HFB")"
log "holdfast backup: $(awk -F'\t' '$1=="hf_backup_seconds" {print $2}' "$RES") s"

log "backup 2/2: pgbackrest --type=full backup (repo s3://$PBB)"
rec pbr_usage_before_backup "$(usage)"
rec pbr_stats_before_backup "$(bstats "$PBB")"
t0=$(now)
pgbr --type=full backup 2> "$W/pbr-backup.err" || die "pgBackRest backup failed: $(cat "$W/pbr-backup.err")"
rec pbr_backup_seconds "$(elapsed "$t0" "$(now)")"
rec pbr_usage_after_backup "$(usage)"
rec pbr_stats_after_backup "$(bstats "$PBB")"
rec pbr_backup_info "$(pgbr info --output=json | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)[0]["backup"][-1]["info"]))')"
log "pgBackRest backup: $(awk -F'\t' '$1=="pbr_backup_seconds" {print $2}' "$RES") s"
rec cmd_holdfast_backup "\"holdfast backup --cluster bench --url \$URL --ca V/tls/cert.pem --token-file admin.token --json\""
rec cmd_pgbackrest_backup "\"pgbackrest --config=pgbackrest.conf --stanza=bench --type=full backup\""

# --- writes after the backups, then the disaster -----------------------------------------------------
log "pgbench write load: -N -c 2 -j 2 -T $LOAD"
pg "$PGBIN/pgbench" -h "$SOCK" -p "$PGPORT" -U postgres -c 2 -j 2 -T "$LOAD" -N postgres > "$W/pgbench.out" 2>&1 || die "pgbench failed: $(tail -5 "$W/pgbench.out")"
rec cmd_pgbench "\"pgbench -c 2 -j 2 -T $LOAD -N postgres\""
settle
REF_SQL="SELECT (SELECT count(*) FROM pgbench_history), (SELECT coalesce(sum(delta), 0) FROM pgbench_history),
  (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(hashtext(a::text)::bigint) FROM pgbench_accounts a)"
REF="$(psql_ "$REF_SQL")"
rec reference "$(jstr "$REF")"
log "reference (history rows | sum delta | sum abalance | accounts hash): $REF"
log "stopping the source cluster (a disaster: the restores need only the buckets)"
pg "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null

verify() { # verify KEY SOCKDIR PORT
  local got
  got="$(timeout 600 "$PGBIN/psql" -h "$2" -p "$3" -U postgres -d postgres -XAtq -c "SELECT pg_is_in_recovery()" -c "$REF_SQL" 2>&1 | tr '\n' ' ' | sed 's/ $//')" || true
  rec "${1}_got" "$(jstr "$got")"
  if [ "$got" = "f $REF" ]; then rec "${1}_verified" '"yes"'; log "$1 verified: yes"; else
    rec "${1}_verified" '"no"'; fail "${1}_verify" "got '$got', expected 'f $REF'"; fi
}
stop_restored() {
  [ -f "$1/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$1" -m fast -w stop >/dev/null 2>&1
  rm -rf "$1"
}

# --- restores ----------------------------------------------------------------------------------------
log "restore 1/2: holdfast restore --latest --start --promote (from s3://$HFB)"
D="$RDIR/holdfast" P="$(free_port)"
rec hf_usage_before_restore "$(usage)"
rec hf_loadavg "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
t0=$(now)
if "$HF" restore --cluster bench --latest --target-dir "$D" --start --port "$P" --promote --json \
    --url "$URL" --ca "$CA" --token-file "$W/read.token" > "$W/hf-restore.json" 2> "$W/hf-restore.err"; then
  rec hf_rto "$(elapsed "$t0" "$(now)")"
  rec hf_report "$(cat "$W/hf-restore.json")"
  HF_SOCKDIR="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["socket_dir"])' "$W/hf-restore.json")"
  verify hf "$HF_SOCKDIR" "$P"
else
  fail hf_restore "$(tail -c 1500 "$W/hf-restore.err")"
fi
rec hf_usage_after_restore "$(usage)"
stop_restored "$D"
rec cmd_holdfast_restore "\"holdfast restore --cluster bench --latest --target-dir DIR --start --port P --promote --json --url \$URL --ca V/tls/cert.pem --token-file read.token\""

log "restore 2/2: pgbackrest restore + pg_ctl start (from s3://$PBB)"
D="$RDIR/pgbackrest" P="$(free_port)"
mkdir -p "$D"; chown postgres: "$D"; chmod 700 "$D"
rec pbr_usage_before_restore "$(usage)"
rec pbr_loadavg "\"$(cut -d' ' -f1-3 /proc/loadavg)\""
t0=$(now)
if pg pgbackrest --config="$PBRCONF" --stanza=bench --pg1-path="$D" --archive-mode=off restore 2> "$W/pbr-restore.err"; then
  pg "$PGBIN/pg_ctl" -D "$D" -l "$W/pgtmp/pbr.log" -o "-p $P -k $RSOCK -c listen_addresses=''" -W start >/dev/null
  if wait_promoted "$RSOCK" "$P" "$D"; then
    rec pbr_rto "$(elapsed "$t0" "$(now)")"
    verify pbr "$RSOCK" "$P"
  else
    fail pbr_recovery "the restored server did not finish recovery: $(tail -20 "$W/pgtmp/pbr.log")"
  fi
else
  fail pbr_restore "$(cat "$W/pbr-restore.err")"
fi
rec pbr_usage_after_restore "$(usage)"
stop_restored "$D"
rec cmd_pgbackrest_restore "\"pgbackrest --config=pgbackrest.conf --stanza=bench --pg1-path=DIR --archive-mode=off restore; pg_ctl -D DIR -W start; poll pg_is_in_recovery() every 100 ms until f\""

# --- Object Lock, seen ---------------------------------------------------------------------------------
log "Object Lock: deleting objects with the S3 credential"
python3 "$PY" lockcheck "$HFB" "$W/lock.json" >/dev/null || fail lockcheck "$(cat "$W/lock.json" 2>/dev/null)"
[ -s "$W/lock.json" ] && rec hf_lockcheck "$(cat "$W/lock.json")"
python3 "$PY" deletecheck "$PBB" repo/backup/bench/backup.info.copy "$W/del.json" >/dev/null || fail deletecheck "$(cat "$W/del.json" 2>/dev/null)"
[ -s "$W/del.json" ] && rec pbr_deletecheck "$(cat "$W/del.json")"

log "report"
python3 "$PY" report "$RES" "$OUT/s3.md" "$OUT/s3.json"
