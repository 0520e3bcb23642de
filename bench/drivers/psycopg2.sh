#!/usr/bin/env bash
# psycopg2 2.9.10's own test suite run twice against one real PostgreSQL 15: straight to the
# server, then through a real `holdfast gate serve` in front of it. Prints both pass counts and
# every test whose outcome differs (the gate must be as transparent to a real driver as the
# README says; each remaining difference is explained in the README's gate section).
#
# The gate runs with the example policy's defaults and the test person in break-glass: the suite
# creates and drops its own tables hundreds of times, which would otherwise wait for a second
# person on every DROP. Break-glass only skips approvals: every statement is still parsed,
# classified, audited durably before it runs, and every write still runs under the row guard's
# savepoint and counters, which is the machinery a driver could trip over.
#
# One command (as root, Debian 12 with Rust and python3): bench/drivers/psycopg2.sh
# (also: ./run drivers psycopg2). Env: PSYCOPG2_SDIST=/path/to/psycopg2-2.9.10.tar.gz (else
# downloaded from PyPI with pip), HOLDFAST_BIN (else `cargo build -p holdfast`), KEEP=1 keeps
# the work dir, TESTS="test_lobject test_notify" runs only those modules.
# Writes bench-out/drivers-psycopg2.md and exits non-zero if the gate run lost a test.
set -euo pipefail

DRIVER_NAME=psycopg2 DRIVER_APT=()
dpkg -s libpq-dev >/dev/null 2>&1 || DRIVER_APT+=(libpq-dev)
command -v python3 >/dev/null || DRIVER_APT+=(python3 python3-venv)
. "$(dirname "$0")/lib-env.sh"
OUT="$ROOT/bench-out"
mkdir -p "$OUT"

SDIST="${PSYCOPG2_SDIST:-}"
if [ -z "$SDIST" ]; then
  log "downloading psycopg2 2.9.10 (sdist) from PyPI"
  python3 -m pip download -q --no-deps --no-binary :all: -d "$W/dl" psycopg2==2.9.10
  SDIST="$(ls "$W"/dl/psycopg2-2.9.10.tar.gz)"
fi
log "building psycopg2 from $SDIST in a venv"
python3 -m venv "$W/venv"
"$W/venv/bin/pip" install -q --no-deps --no-build-isolation "$SDIST" 2>"$W/pip.log" \
  || "$W/venv/bin/pip" install -q --no-deps "$SDIST" || { cat "$W/pip.log" >&2; die "building psycopg2 failed"; }
tar xzf "$SDIST" -C "$W"
SRC="$W/psycopg2-2.9.10"

log "PostgreSQL 15 on 127.0.0.1:$PGPORT"
mkdir -p "$W/pg" && chown postgres: "$W/pg"
echo "psycopg-pw" > "$W/pw" && chown postgres: "$W/pw"
su postgres -c "$PGBIN/initdb -D $W/pg -A scram-sha-256 -U postgres --pwfile=$W/pw --no-sync -E UTF8 --locale=C" >/dev/null
cat >> "$W/pg/postgresql.conf" <<CONF
port = $PGPORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$W/pg'
max_prepared_transactions = 10
fsync = off
CONF
su postgres -c "$PGBIN/pg_ctl -D $W/pg -l $W/pg/server.log -w start" >/dev/null
export PGPASSWORD=psycopg-pw
# The suite's own role, the same directly and behind the gate (the gate logs in as it).
# Superuser: the suite creates extensions (hstore) and reads server settings.
"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -X -q -c "CREATE ROLE psycopg LOGIN SUPERUSER PASSWORD 'psycopg-pw'" \
  -c "CREATE DATABASE psycopg2_test OWNER psycopg"

log "gate on 127.0.0.1:$GPORT (example policy defaults; break-glass for the suite's person)"
VERIFIER="$(echo psycopg-pw | "$HF" gate hash-password)"
TOTP_SECRET=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP
mkdir -p "$W/gate"
cp "$W/pw" "$W/gate/pw"
: > "$W/gate/policy.toml"
cat > "$W/gate/gate.toml" <<CONF
listen = "127.0.0.1:$GPORT"
control_listen = "127.0.0.1:$CPORT"
state_dir = "state"
require_tls = false
policy = "policy.toml"
approval_timeout = "5s"
[upstream]
host = "127.0.0.1"
port = $PGPORT
user = "psycopg"
password_file = "pw"
sslmode = "disable"
[[person]]
name = "psycopg"
scram = "$VERIFIER"
totp_secret = "$TOTP_SECRET"
CONF
(cd "$W/gate" && exec "$HF" gate serve --config gate.toml 2> "$W/gate.log") &
PIDS+=("$!")
for _ in $(seq 100); do grep -q "gate listening" "$W/gate.log" 2>/dev/null && break; sleep 0.2; done
grep -q "gate listening" "$W/gate.log" || { cat "$W/gate.log" >&2; die "the gate did not start"; }
HOLDFAST_GATE_TOTP="$(HOLDFAST_GATE_TOTP_SECRET=$TOTP_SECRET "$HF" gate totp-code)" \
HOLDFAST_GATE_URL="https://127.0.0.1:$CPORT" HOLDFAST_GATE_CA="$W/gate/state/tls/cert.pem" \
HOLDFAST_GATE_USER=psycopg HOLDFAST_GATE_PASSWORD=psycopg-pw \
  "$HF" gate break-glass --for 4h --reason "psycopg2 test suite through the gate" >/dev/null

# Runs the suite (or the modules in TESTS) and writes each test's outcome as JSON lines.
cat > "$W/runner.py" <<'PY'
import json, os, sys, unittest
sys.path.insert(0, os.environ["SRC"])
out = open(sys.argv[1], "w")
class R(unittest.TextTestResult):
    def _w(self, t, s):
        out.write(json.dumps({"test": t.id(), "outcome": s}) + "\n"); out.flush()
    def addSuccess(self, t): super().addSuccess(t); self._w(t, "pass")
    def addFailure(self, t, e): super().addFailure(t, e); self._w(t, "fail")
    def addError(self, t, e): super().addError(t, e); self._w(t, "error")
    def addSkip(self, t, r): super().addSkip(t, r); self._w(t, "skip")
    def addExpectedFailure(self, t, e): super().addExpectedFailure(t, e); self._w(t, "pass")
    def addUnexpectedSuccess(self, t): super().addUnexpectedSuccess(t); self._w(t, "fail")
import tests
mods = os.environ.get("TESTS", "").split()
if mods:
    suite = unittest.TestSuite(unittest.defaultTestLoader.loadTestsFromName("tests." + m) for m in mods)
else:
    suite = tests.test_suite()
unittest.TextTestRunner(stream=sys.stderr, verbosity=1, resultclass=R).run(suite)
PY

run_suite() { # name port
  log "psycopg2's suite via $1"
  local start=$SECONDS
  (cd "$SRC" && SRC="$SRC" PSYCOPG2_TESTDB=psycopg2_test PSYCOPG2_TESTDB_HOST=127.0.0.1 \
    PSYCOPG2_TESTDB_PORT="$2" PSYCOPG2_TESTDB_USER=psycopg PSYCOPG2_TESTDB_PASSWORD=psycopg-pw \
    timeout 1800 "$W/venv/bin/python" "$W/runner.py" "$W/$1.jsonl" 2> "$W/$1.log") || true
  echo $((SECONDS - start)) > "$W/$1.secs"
}
run_suite direct "$PGPORT"
run_suite gate "$GPORT"

python3 - "$W" "$OUT/drivers-psycopg2.md" <<'PY'
import json, sys
w, out = sys.argv[1:]
def load(n):
    r = {}
    for l in open(f"{w}/{n}.jsonl"):
        j = json.loads(l); r[j["test"]] = j["outcome"]
    return r
d, g = load("direct"), load("gate")
secs = {n: open(f"{w}/{n}.secs").read().strip() for n in ("direct", "gate")}
def counts(r):
    c = {k: 0 for k in ("pass", "fail", "error", "skip")}
    for v in r.values(): c[v] += 1
    return c
cd, cg = counts(d), counts(g)
lines = ["# psycopg2 2.9.10's test suite: direct vs through the holdfast gate", "",
         "| path | tests | pass | fail | error | skip | seconds |", "|---|---|---|---|---|---|---|"]
for n, r, c in (("direct", d, cd), ("gate", g, cg)):
    lines.append(f"| {n} | {len(r)} | {c['pass']} | {c['fail']} | {c['error']} | {c['skip']} | {secs[n]} |")
diff = sorted(t for t in set(d) | set(g) if d.get(t) != g.get(t))
lines += ["", f"{len(diff)} tests differ:" if diff else "No test differs."]
for t in diff:
    lines.append(f"- {t}: direct {d.get(t, 'not run')}, gate {g.get(t, 'not run')}")
open(out, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
lost = [t for t in diff if d.get(t) == "pass"]
sys.exit(1 if lost else 0)
PY
