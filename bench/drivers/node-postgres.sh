#!/usr/bin/env bash
# node-postgres (the `pg` package from npm) through a real `holdfast gate serve` in front of a
# real PostgreSQL 15: connect over TLS (verifying the gate's certificate), parameterised
# SELECT/INSERT/UPDATE (the extended protocol, row-guarded), then a DELETE over the row limit
# that is held, approved by a second person through the CLI and run; and one that is held and
# rejected, after which every row is still there. Prints each step; exits non-zero on any failure.
#
# One command (as root, Debian 12 with Rust and Node.js): bench/drivers/node-postgres.sh
# (also: ./run drivers node-postgres). Env: HOLDFAST_BIN (else `cargo build -p holdfast`),
# PG_VERSION_NPM (default 8.13.1), KEEP=1 keeps the work dir.
set -euo pipefail

DRIVER_APT=()
command -v node >/dev/null || DRIVER_APT+=(nodejs)
command -v npm >/dev/null || DRIVER_APT+=(npm)
source "$(dirname "$0")/lib-shop.sh"
log "installing pg@${PG_VERSION_NPM:=8.13.1} from npm"
(cd "$W" && npm init -y >/dev/null && npm install --silent --no-audit --no-fund "pg@$PG_VERSION_NPM" >/dev/null)
cat > "$W/smoke.js" <<'JS'
// node-postgres through the gate: what an application and a DBA's tool do.
const { Client } = require("pg");
const fs = require("fs");
const { execFileSync } = require("child_process");
const env = process.env;
const assert = (ok, what) => { if (!ok) { console.error("FAILED: " + what); process.exit(1); } console.log("ok: " + what); };
const cli = (args, extra) => JSON.parse(execFileSync(env.HF, ["gate", ...args], {
  env: { ...env, HOLDFAST_GATE_URL: `https://127.0.0.1:${env.CPORT}`, HOLDFAST_GATE_CA: env.CA, ...extra } }).toString() || "{}");
const bob = (args) => execFileSync(env.HF, ["gate", ...args], { env: { ...env,
  HOLDFAST_GATE_URL: `https://127.0.0.1:${env.CPORT}`, HOLDFAST_GATE_CA: env.CA, HOLDFAST_GATE_USER: "bob",
  HOLDFAST_GATE_PASSWORD: "bob-password",
  HOLDFAST_GATE_TOTP: execFileSync(env.HF, ["gate", "totp-code"], { env: { ...env, HOLDFAST_GATE_TOTP_SECRET: env.BOB_TOTP } }).toString().trim() } });
const pending = async (sql) => {
  for (let i = 0; i < 200; i++) {
    const v = cli(["pending", "--json"], { HOLDFAST_GATE_USER: "alice", HOLDFAST_GATE_PASSWORD: "alice-password" });
    const r = (v.requests || []).find((r) => r.state.state === "pending" && r.ask.sql === sql);
    if (r) return r;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error("no pending request for " + sql);
};
(async () => {
  const c = new Client({ host: "127.0.0.1", port: +env.GPORT, user: "alice", password: "alice-password", database: "postgres",
    ssl: { ca: fs.readFileSync(env.CA), servername: "localhost" } });
  await c.connect();
  assert(c.connection.stream.encrypted === true, "connected over TLS, the gate's certificate verified");
  let r = await c.query("SELECT count(*)::int AS n FROM orders WHERE merchant = $1", [3]);
  assert(r.rows[0].n === 14, "parameterised SELECT: 14 orders of merchant 3");
  r = await c.query("INSERT INTO orders VALUES ($1, $2, $3)", [101, 3, "9.99"]);
  assert(r.rowCount === 1, "parameterised INSERT");
  r = await c.query("UPDATE orders SET total = total + $1 WHERE id = $2", ["1.00", 101]);
  assert(r.rowCount === 1, "parameterised UPDATE (row-guarded, one row, not held)");
  r = await c.query("SELECT total::text FROM orders WHERE id = $1", [101]);
  assert(r.rows[0].total === "10.99", "the UPDATE is there");
  // Ten rows: over the limit of 5, rolled back and held; bob approves; it runs.
  const del1 = "DELETE FROM orders WHERE id > $1 AND id <= 100";
  const notices = [];
  c.on("notice", (n) => notices.push(n.message));
  const q1 = c.query(del1, [90]);
  const req1 = await pending(del1);
  assert(req1.ask.parameters && req1.ask.parameters.count === 1 && req1.ask.parameters.values[0] === "90",
    "the approval request shows the SQL and its parameter (" + JSON.stringify(req1.ask.parameters) + ")");
  bob(["approve", req1.id]);
  r = await q1;
  assert(r.rowCount === 10, "held DELETE approved by bob: 10 rows deleted");
  assert(notices.some((m) => m.includes("held for approval")), "the client was told it waits for approval");
  // Fifty rows: held, rejected; the error reaches the driver and nothing is deleted.
  const del2 = "DELETE FROM orders WHERE id > $1 AND id <= 100";
  const q2 = c.query(del2, [40]).then(() => null, (e) => e);
  const req2 = await pending(del2);
  bob(["reject", req2.id, "--reason", "not today"]);
  const e = await q2;
  assert(e && /rejected/.test(e.message), "held DELETE rejected: the driver gets an error (" + (e && e.message) + ")");
  r = await c.query("SELECT count(*)::int AS n FROM orders");
  assert(r.rows[0].n === 91, "91 rows: 100 + 1 inserted - 10 approved; the rejected DELETE removed nothing");
  await c.end();
})().catch((e) => { console.error("FAILED:", e); process.exit(1); });
JS
log "node-postgres smoke through the gate"
(cd "$W" && HF="$HF" GPORT="$GPORT" CPORT="$CPORT" CA="$CA" BOB_TOTP="$BOB_TOTP" node smoke.js)
N="$("$PGBIN/psql" -h "$W/pg" -p "$PGPORT" -U postgres -X -At -c 'SELECT count(*) FROM orders')"
[ "$N" = 91 ] || die "the database has $N rows, not 91"
log "node-postgres through the gate: all steps passed (the database itself has $N rows)"
