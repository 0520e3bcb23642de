# Shared by the driver smoke scripts (sourced, not run): a real PostgreSQL 15 with an `orders`
# table of 100 rows and a real `holdfast gate serve` in front of it (TLS with its self-signed
# certificate, row limit 5, approval_parameters = "shown"; alice connects, bob approves with a
# TOTP code). Sets W, PGBIN, PGPORT, GPORT, CPORT, HF, CA, BOB_TOTP; stops everything on exit.
# The caller sets DRIVER_APT (Debian packages it needs) before sourcing; see lib-env.sh.
. "$(dirname "${BASH_SOURCE[0]}")/lib-env.sh"

log "PostgreSQL 15 on 127.0.0.1:$PGPORT with a shop table"
mkdir -p "$W/pg" && chown postgres: "$W/pg"
su postgres -c "$PGBIN/initdb -D $W/pg -A trust -U postgres --no-sync -E UTF8 --locale=C" >/dev/null
printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$PGPORT" "$W/pg" >> "$W/pg/postgresql.conf"
su postgres -c "$PGBIN/pg_ctl -D $W/pg -l $W/pg/server.log -w start" >/dev/null
"$PGBIN/psql" -h "$W/pg" -p "$PGPORT" -U postgres -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE ROLE shop_app LOGIN PASSWORD 'app-secret';
CREATE TABLE orders (id int PRIMARY KEY, merchant int NOT NULL, total numeric NOT NULL);
INSERT INTO orders SELECT g, g % 7, g * 1.5 FROM generate_series(1, 100) g;
GRANT ALL ON orders TO shop_app;
SQL

log "gate on 127.0.0.1:$GPORT (TLS; row limit 5; bob approves)"
mkdir -p "$W/gate"
echo app-secret > "$W/gate/app.pw"
printf 'row_guard_max_rows = 5\n' > "$W/gate/policy.toml"
ALICE_TOTP=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ BOB_TOTP=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
cat > "$W/gate/gate.toml" <<CONF
listen = "127.0.0.1:$GPORT"
control_listen = "127.0.0.1:$CPORT"
state_dir = "state"
policy = "policy.toml"
approval_timeout = "60s"
approval_parameters = "shown"
[upstream]
host = "$W/pg"
port = $PGPORT
user = "shop_app"
password_file = "app.pw"
sslmode = "disable"
[[person]]
name = "alice"
scram = "$(echo alice-password | "$HF" gate hash-password)"
totp_secret = "$ALICE_TOTP"
[[person]]
name = "bob"
scram = "$(echo bob-password | "$HF" gate hash-password)"
totp_secret = "$BOB_TOTP"
approver = true
CONF
(cd "$W/gate" && exec "$HF" gate serve --config gate.toml 2> "$W/gate.log") &
PIDS+=("$!")
for _ in $(seq 100); do grep -q "gate listening" "$W/gate.log" 2>/dev/null && break; sleep 0.2; done
grep -q "gate listening" "$W/gate.log" || { cat "$W/gate.log" >&2; die "the gate did not start"; }

CA="$W/gate/state/tls/cert.pem"
